// Package deploy holds the compose file and Kubernetes manifests of a split adpulse
// deployment; its test checks that every flag and ADPULSE_* variable they use exists in
// `adpulse serve`, so the examples cannot drift from the binary.
package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v4"
)

// serveFlags returns the flag names of `adpulse serve`, read from its -h output.
func serveFlags(t *testing.T) map[string]bool {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "adpulse")
	build := exec.Command("go", "build", "-o", bin, "./cmd/adpulse")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out, _ := exec.Command(bin, "serve", "-h").CombinedOutput() // -h exits non-zero
	flags := map[string]bool{}
	re := regexp.MustCompile(`^\s+-([a-z0-9-]+)`)
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			flags[m[1]] = true
		}
	}
	if len(flags) < 10 || !flags["roles"] || !flags["event-log"] {
		t.Fatalf("could not read the flags of adpulse serve from:\n%s", out)
	}
	return flags
}

// uses collects the flags (from adpulse command lines) and ADPULSE_* variables (from environment
// maps and lists) anywhere in a YAML document.
type uses struct {
	flags, envs map[string][]string // name -> where
}

func (u *uses) walk(n any, where string) {
	switch v := n.(type) {
	case map[string]any:
		for k, c := range v {
			if strings.HasPrefix(k, "ADPULSE_") {
				u.envs[k] = append(u.envs[k], where)
			}
			if k == "name" {
				if s, ok := c.(string); ok && strings.HasPrefix(s, "ADPULSE_") {
					u.envs[s] = append(u.envs[s], where)
				}
			}
			u.walk(c, where+"."+k)
		}
	case []any:
		if len(v) > 0 && v[0] == "serve" { // an adpulse command line
			for _, c := range v {
				if s, ok := c.(string); ok && strings.HasPrefix(s, "--") {
					name, _, _ := strings.Cut(strings.TrimPrefix(s, "--"), "=")
					u.flags[name] = append(u.flags[name], where)
				}
			}
			return
		}
		for _, c := range v {
			u.walk(c, where)
		}
	}
}

func TestManifestsUseOnlyRealFlags(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	flags := serveFlags(t)
	files := []string{"compose.yaml", "kubernetes/adpulse.yaml"}
	for _, file := range files {
		t.Run(file, func(t *testing.T) {
			f, err := os.Open(file)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			u := &uses{flags: map[string][]string{}, envs: map[string][]string{}}
			dec := yaml.NewDecoder(f)
			for doc := 0; ; doc++ {
				var n any
				if err := dec.Decode(&n); errors.Is(err, io.EOF) {
					break
				} else if err != nil {
					t.Fatalf("document %d: %v", doc, err)
				}
				u.walk(n, file)
			}
			if len(u.flags) == 0 || len(u.envs) == 0 {
				t.Fatalf("found no flags (%d) or ADPULSE_* variables (%d): is the file parsed?", len(u.flags), len(u.envs))
			}
			for name, where := range u.flags {
				if !flags[name] {
					t.Errorf("--%s (in %s) is not a flag of adpulse serve", name, where[0])
				}
			}
			for env, where := range u.envs {
				name := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(env, "ADPULSE_")), "_", "-")
				if !flags[name] {
					t.Errorf("%s (in %s) names no flag of adpulse serve (--%s)", env, where[0], name)
				}
			}
			t.Logf("%s: %d flags and %d variables, all known", file, len(u.flags), len(u.envs))
		})
	}
}
