package main

import (
	"bytes"
	"strings"
	"testing"
)

const sample = `{"Action":"start","Package":"github.com/adpulse/adpulse/internal/a"}
{"Action":"run","Package":"github.com/adpulse/adpulse/internal/a","Test":"TestRedis"}
{"Action":"output","Package":"github.com/adpulse/adpulse/internal/a","Test":"TestRedis","Output":"=== RUN   TestRedis\n"}
{"Action":"output","Package":"github.com/adpulse/adpulse/internal/a","Test":"TestRedis","Output":"    a_test.go:9: no test Redis: set ADPULSE_TEST_REDIS_ADDR=host:port\n"}
{"Action":"skip","Package":"github.com/adpulse/adpulse/internal/a","Test":"TestRedis"}
{"Action":"run","Package":"github.com/adpulse/adpulse/internal/a","Test":"TestBrowser"}
{"Action":"output","Package":"github.com/adpulse/adpulse/internal/a","Test":"TestBrowser","Output":"    b_test.go:3: browser tests skipped: no chromium on PATH\n"}
{"Action":"skip","Package":"github.com/adpulse/adpulse/internal/a","Test":"TestBrowser"}
{"Action":"run","Package":"github.com/adpulse/adpulse/internal/a","Test":"TestShort"}
{"Action":"output","Package":"github.com/adpulse/adpulse/internal/a","Test":"TestShort","Output":"    c_test.go:3: skipped with -short\n"}
{"Action":"skip","Package":"github.com/adpulse/adpulse/internal/a","Test":"TestShort"}
{"Action":"run","Package":"github.com/adpulse/adpulse/internal/a","Test":"TestBroken"}
{"Action":"output","Package":"github.com/adpulse/adpulse/internal/a","Test":"TestBroken","Output":"    d_test.go:7: got 1, want 2\n"}
{"Action":"fail","Package":"github.com/adpulse/adpulse/internal/a","Test":"TestBroken"}
{"Action":"output","Package":"github.com/adpulse/adpulse/internal/a","Output":"FAIL\tgithub.com/adpulse/adpulse/internal/a\t0.01s\n"}
{"Action":"fail","Package":"github.com/adpulse/adpulse/internal/a"}
`

func TestSummaryGroupsSkipsAndShowsFailures(t *testing.T) {
	var out bytes.Buffer
	failed, err := run(strings.NewReader(sample), &out)
	if err != nil || !failed {
		t.Fatalf("failed %v, err %v; want a failure reported", failed, err)
	}
	got := out.String()
	for _, want := range []string{
		"d_test.go:7: got 1, want 2",
		"FAIL\tgithub.com/adpulse/adpulse/internal/a",
		"skipped: Redis tests (1 in internal/a); to run them: ADPULSE_TEST_REDIS_ADDR=127.0.0.1:6379\n",
		"skipped: browser (Chromium) tests (1 in internal/a); to run them: apt-get install -y chromium",
		"skipped: 1 other tests",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "=== RUN") {
		t.Errorf("output shows verbose lines:\n%s", got)
	}
	lines := strings.Split(strings.TrimSpace(got), "\n")
	if !strings.HasPrefix(lines[len(lines)-1], "skipped:") {
		t.Errorf("the summary is not at the end:\n%s", got)
	}
}

func TestSummaryPassingRun(t *testing.T) {
	var out bytes.Buffer
	in := `{"Action":"output","Package":"p","Output":"ok  \tp\t0.1s\n"}` + "\n" + `{"Action":"pass","Package":"p"}` + "\n"
	failed, err := run(strings.NewReader(in), &out)
	if err != nil || failed {
		t.Fatalf("failed %v err %v", failed, err)
	}
	if out.String() != "ok  \tp\t0.1s\nskipped: nothing\n" {
		t.Errorf("output %q", out.String())
	}
}

// FuzzSummary: any input, JSON or not, is passed through or summarized without a panic.
func FuzzSummary(f *testing.F) {
	f.Add(sample)
	f.Add("not json\n{\"Action\":\n")
	f.Add(`{"Action":"skip","Package":"p","Test":"T"}`)
	f.Fuzz(func(t *testing.T, in string) {
		var out bytes.Buffer
		_, _ = run(strings.NewReader(in), &out)
		if !strings.Contains(out.String(), "skipped:") {
			t.Fatalf("no summary line for %q", in)
		}
	})
}
