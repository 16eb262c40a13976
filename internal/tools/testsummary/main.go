// Command testsummary reads `go test -json` on stdin, prints what `go test` would print
// without -v (package results, and the full output of failed tests), and ends with one line
// per integration group whose tests were skipped, saying how to enable it. scripts/test runs
// the tests through it, so a run without the services says what it did not test.
//
// A skip belongs to a group when its message names the group's switch (an environment
// variable, or chromium); other skips (-short, a missing /proc) are counted on one line.
// It exits 1 when the input reports a failure, so a pipe with pipefail fails as go test does.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// group is an integration group: the switch a skip message names and how to turn it on.
type group struct {
	name, needle, enable string
}

var groups = []group{
	{"Redis", "ADPULSE_TEST_REDIS_ADDR", "ADPULSE_TEST_REDIS_ADDR=127.0.0.1:6379"},
	{"PostgreSQL", "ADPULSE_TEST_POSTGRES_DSN", "ADPULSE_TEST_POSTGRES_DSN='postgres://postgres@127.0.0.1:5432/test?sslmode=disable'"},
	{"MySQL/MariaDB", "ADPULSE_TEST_MYSQL_DSN", "ADPULSE_TEST_MYSQL_DSN='root@tcp(127.0.0.1:3306)/test'"},
	{"ClickHouse", "ADPULSE_TEST_CLICKHOUSE_ADDR", "ADPULSE_TEST_CLICKHOUSE_ADDR=127.0.0.1:19000 (scripts/install-baselines.sh starts one)"},
	{"browser (Chromium)", "chromium", "apt-get install -y chromium, or ADPULSE_TEST_CHROMIUM=/path/to/chrome"},
	{"bench child process", "ADPULSE_BENCH_BINARY", "ADPULSE_BENCH_BINARY=$PWD/adpulse after go build ./cmd/adpulse"},
}

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string
}

type skip struct{ pkg, test string }

func main() {
	failed, err := run(os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(2)
	}
	if failed {
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) (failed bool, err error) {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20) // a test may print long lines
	testOut := map[skip]*strings.Builder{}
	skipped := map[string][]skip{}
	var otherSkips int
	for sc.Scan() {
		line := sc.Bytes()
		var ev event
		if json.Unmarshal(line, &ev) != nil || ev.Action == "" {
			fmt.Fprintln(out, string(line)) // not test2json (a build error printed as is)
			continue
		}
		key := skip{ev.Package, ev.Test}
		switch {
		case ev.Action == "build-output":
			fmt.Fprint(out, ev.Output)
		case ev.Action == "build-fail":
			failed = true
		case ev.Test == "" && ev.Action == "output":
			if !strings.HasPrefix(ev.Output, "=== ") && ev.Output != "PASS\n" {
				fmt.Fprint(out, ev.Output)
			}
		case ev.Test == "" && ev.Action == "fail":
			failed = true
		case ev.Action == "output":
			b := testOut[key]
			if b == nil {
				b = &strings.Builder{}
				testOut[key] = b
			}
			if b.Len() < 1<<20 {
				b.WriteString(ev.Output)
			}
		case ev.Action == "fail":
			failed = true
			if b := testOut[key]; b != nil {
				fmt.Fprint(out, b.String())
			}
			delete(testOut, key)
		case ev.Action == "skip":
			msg := ""
			if b := testOut[key]; b != nil {
				msg = b.String()
			}
			if g := groupOf(msg); g != "" {
				skipped[g] = append(skipped[g], key)
			} else {
				otherSkips++
			}
			delete(testOut, key)
		case ev.Action == "pass":
			delete(testOut, key)
		}
	}
	writeSummary(out, skipped, otherSkips)
	if err := sc.Err(); err != nil {
		return true, err
	}
	return failed, nil
}

// groupOf is the group whose switch the skip message names, or "".
func groupOf(msg string) string {
	for _, g := range groups {
		if strings.Contains(msg, g.needle) {
			return g.name
		}
	}
	return ""
}

func writeSummary(out io.Writer, skipped map[string][]skip, otherSkips int) {
	if len(skipped) == 0 && otherSkips == 0 {
		fmt.Fprintln(out, "skipped: nothing")
		return
	}
	for _, g := range groups {
		s := skipped[g.name]
		if len(s) == 0 {
			continue
		}
		pkgs := map[string]bool{}
		for _, k := range s {
			pkgs[shortPkg(k.pkg)] = true
		}
		names := make([]string, 0, len(pkgs))
		for p := range pkgs {
			names = append(names, p)
		}
		sort.Strings(names)
		fmt.Fprintf(out, "skipped: %s tests (%d in %s); to run them: %s\n", g.name, len(s), strings.Join(names, ", "), g.enable)
	}
	if otherSkips > 0 {
		fmt.Fprintf(out, "skipped: %d other tests (-short, or a platform feature missing; see go test -v)\n", otherSkips)
	}
}

func shortPkg(p string) string {
	return strings.TrimPrefix(p, "github.com/adpulse/adpulse/")
}
