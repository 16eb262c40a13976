package server

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/adpulse/adpulse/internal/config"
	yaml "go.yaml.in/yaml/v4"
)

// TestDashboardsUseExportedMetrics: every adpulse_* metric the Grafana dashboard and the
// Prometheus alert rules under deploy/ name is exported by a running server, so neither can
// silently drift into showing nothing.
func TestDashboardsUseExportedMetrics(t *testing.T) {
	app, base := startApp(t, func(c *config.Config) {
		d := config.Default()
		c.RateLimitIP, c.RateLimitKey = d.RateLimitIP, d.RateLimitKey
	})
	// One request, so the per-route HTTP series exist.
	if resp, err := http.Get(base + "/c/not-a-token"); err == nil {
		resp.Body.Close()
	}
	resp, err := http.Get("http://" + app.OpsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	exported := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	name := regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*`)
	for sc.Scan() {
		if line := sc.Text(); !strings.HasPrefix(line, "#") {
			exported[name.FindString(line)] = true
		}
	}

	used := map[string][]string{} // metric -> files
	ref := regexp.MustCompile(`\badpulse_[a-z0-9_]+`)
	collect := func(file, text string) {
		for _, m := range ref.FindAllString(text, -1) {
			used[m] = append(used[m], file)
		}
	}
	// The alert rules must be valid YAML with an expr per rule; the dashboard valid JSON.
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	b, err := os.ReadFile("../../deploy/prometheus/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatalf("alerts.yaml: %v", err)
	}
	n := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" {
				t.Errorf("alerts.yaml: a rule without alert or expr: %+v", r)
			}
			collect("alerts.yaml "+r.Alert, r.Expr)
			n++
		}
	}
	f, err := os.Open("../../deploy/grafana/adpulse.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	raw, _ := io.ReadAll(f)
	var dash map[string]any
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("adpulse.json: %v", err)
	}
	collect("grafana/adpulse.json", string(raw))
	if n < 5 || len(used) < 10 {
		t.Fatalf("found %d alert rules and %d metric names: are the files read?", n, len(used))
	}
	for m, where := range used {
		if !exported[m] {
			t.Errorf("%s (used in %s) is not exported by a running adpulse", m, where[0])
		}
	}
	t.Logf("%d alert rules; %d metric names used, all exported", n, len(used))
}
