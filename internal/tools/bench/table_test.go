package bench

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func fakeResult() *Result {
	ad := &TargetResult{
		Name:           "adpulse",
		ClicksFixed:    &RunStats{Requests: 200000, OK: 200000, Elapsed: 10, Throughput: 20000, Latency: Latency{P50: 400, P99: 4000, P999: 9000}, Load1: 1.5},
		ClicksSat:      &RunStats{Requests: 400000, OK: 400000, Elapsed: 10, Throughput: 40000, Latency: Latency{P50: 1500, P99: 8000, P999: 12000}, Load1: 1.7},
		ClickCheck:     &CheckResult{Status: "ok", Acknowledged: 600000, Ads: 1000},
		Events:         &EventsStats{Accepted: 5_000_000, Elapsed: 10, PerSecond: 500_000, BatchLatency: Latency{P99: 90_000}},
		EventsCheck:    &CheckResult{Status: "ok"},
		Freshness:      &FreshnessStats{Samples: 50, Latency: Latency{P50: 150_000, P99: 400_000}, AckToVisible: Latency{P50: 2_000, P99: 9_000}},
		History:        &HistoryStats{Ads: 100_000, Events: 200_000, Accepted: 200_000, CatalogSeconds: 2, EventsSeconds: 1},
		Queries:        &QueryStats{Metrics: Latency{P50: 700, P99: 3000}, Top: Latency{P50: 400, P99: 25_000}},
		Recovery:       &RecoveryStats{RestartToReady: 2.5, Check: CheckResult{Status: "ok"}},
		RSSWithHistory: 500 << 20, RSSPeak: 600 << 20, CPUClicks: 50, CPUEvents: 2,
	}
	ch := &TargetResult{
		Name:        "clickhouse",
		ClicksFixed: &RunStats{Requests: 100000, OK: 50000, Elapsed: 10, Throughput: 5000, Latency: Latency{P50: 100_000, P99: 2_000_000}},
		ClicksSat:   &RunStats{Throughput: 600, Latency: Latency{P99: 110_000}},
		ClickCheck:  &CheckResult{Status: "failed", Lost: 3},
		Queries:     &QueryStats{Metrics: Latency{P50: 5000, P99: 9000}, Top: Latency{P50: 400, P99: 25_000}},
		RSSPeak:     300 << 20,
		Errors:      []string{"events: boom"},
	}
	rd := &TargetResult{Name: "redis", Errors: []string{"redis 127.0.0.1:6379: connection refused"}}
	return &Result{Started: time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC), Size: "quick", Command: "adpulse bench", Seed: 7,
		Machine: Machine{CPU: "Test CPU", Cores: 2, MemBytes: 24 << 30}, Targets: []*TargetResult{ad, ch, rd}}
}

func rowByID(t *testing.T, rows []Row, id string) Row {
	t.Helper()
	for _, r := range rows {
		if r.ID == id {
			return r
		}
	}
	t.Fatalf("no row %q", id)
	return Row{}
}

func TestBuildRowsGoalsAndRatios(t *testing.T) {
	res := fakeResult()
	rows := BuildRows(res)
	for _, tc := range []struct {
		id, met string
	}{
		{"clicks_fixed_p99", "yes"}, {"clicks_sat_rate", "yes"}, {"clicks_exact", "yes"}, {"events_rate", "no"},
		{"fresh_p99", "yes"}, {"fresh_ack_p99", "no"}, {"metrics_p99", "yes"}, {"top_p99", "no"}, {"rss_history", "yes"}, {"recovery_exact", "yes"},
		{"clicks_fixed_p50", ""},
	} {
		if got := rowByID(t, rows, tc.id).Met; got != tc.met {
			t.Errorf("%s: met %q, want %q", tc.id, got, tc.met)
		}
	}
	r := rowByID(t, rows, "clicks_sat_rate")
	if len(r.Cells) != 3 {
		t.Fatalf("cells %d, want one per target", len(r.Cells))
	}
	if c := r.Cells[1]; c.Ratio == nil || *c.Ratio < 66 || *c.Ratio > 67 || c.Ahead != "yes" {
		t.Errorf("sat rate vs clickhouse: %+v", c)
	}
	if c := r.Cells[2]; c.Value != nil || c.Text != "-" || c.Ratio != nil {
		t.Errorf("redis was not measured, got %+v", c)
	}
	// Lower is better for latencies: 4 ms against 2 s is ahead.
	if c := rowByID(t, rows, "clicks_fixed_p99").Cells[1]; c.Ahead != "yes" || *c.Ratio != 0.002 {
		t.Errorf("p99 vs clickhouse: %+v ratio %v", c, *c.Ratio)
	}
	// Equal is equal, not ahead.
	if c := rowByID(t, rows, "top_p50").Cells[1]; c.Ahead != "equal" {
		t.Errorf("equal top p50: %+v", c)
	}
	// A check that found 3 lost counts them; adpulse's 0 is ahead (ratio undefined).
	if c := rowByID(t, rows, "clicks_exact").Cells[1]; c.Text != "3" || c.Ahead != "yes" || c.Ratio != nil {
		t.Errorf("exactness vs clickhouse: %+v", c)
	}
	// Rows nobody measured are left out.
	res.Targets = res.Targets[:1]
	res.Targets[0].Recovery = nil
	for _, r := range BuildRows(res) {
		if strings.HasPrefix(r.ID, "recovery") {
			t.Errorf("row %s without a figure", r.ID)
		}
	}
}

func TestWriteTableMarkdown(t *testing.T) {
	res := fakeResult()
	res.Rows = BuildRows(res)
	var b bytes.Buffer
	res.WriteTable(&b)
	out := b.String()
	for _, want := range []string{
		"| figure | goal | adpulse | met? | clickhouse | adpulse/clickhouse | redis | adpulse/redis | load 1m |",
		"|---|---|---|---|---|---|---|---|---|",
		"| GET /c acknowledged clicks/s at saturation (closed model) | >= 30,000/s | 40,000/s | yes | 600/s | 66.67x ahead | - | - | 1.70 |",
		"| GET /c p99 latency at the fixed rate | <= 10.0 ms | 4.00 ms | yes | 2.00 s | 0.00x ahead | - | - | 1.50 |",
		"Test CPU, 2 cores, 24.00 GiB RAM",
		"ERROR events: boom",
		"ERROR redis 127.0.0.1:6379: connection refused",
		"time to load the history (100,000 ads, a day of data)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	// Every table line has the same number of columns.
	var cols int
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "|") {
			continue
		}
		n := strings.Count(line, " | ")
		if cols == 0 {
			cols = n
		} else if n != cols && !strings.HasPrefix(line, "|---") {
			t.Errorf("ragged line (%d separators, want %d): %s", n, cols, line)
		}
	}
}

func TestWriteJSONRoundTrip(t *testing.T) {
	res := fakeResult()
	res.Rows = BuildRows(res)
	path := filepath.Join(t.TempDir(), "bench.json")
	if err := res.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var back Result
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Targets) != 3 || back.Targets[0].ClicksSat.Throughput != 40000 || len(back.Rows) != len(res.Rows) {
		t.Fatalf("round trip lost data: %d targets, %d rows", len(back.Targets), len(back.Rows))
	}
	var raw map[string]any
	_ = json.Unmarshal(b, &raw)
	for _, k := range []string{"machine", "rows", "targets", "seed", "command"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("JSON lacks %q", k)
		}
	}
}

func TestFormatting(t *testing.T) {
	for _, tc := range []struct {
		v    float64
		unit string
		want string
	}{
		{31234.6, "/s", "31,235/s"}, {1_000_000, "/s", "1,000,000/s"}, {999, "us", "999 µs"}, {1500, "us", "1.50 ms"},
		{25_000, "us", "25.0 ms"}, {2_500_000, "us", "2.50 s"}, {2 << 30, "bytes", "2.00 GiB"}, {300 << 20, "bytes", "300 MiB"},
		{0, "count", "0"}, {2.345, "s", "2.35 s"},
	} {
		if got := formatValue(tc.v, tc.unit); got != tc.want {
			t.Errorf("formatValue(%v, %s) = %q, want %q", tc.v, tc.unit, got, tc.want)
		}
	}
}

func TestPresetAndFlags(t *testing.T) {
	env := func(m map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
	}
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{nil, nil, "quick"}, {[]string{"--size", "full"}, nil, "full"}, {[]string{"-size=full"}, nil, "full"},
		{nil, map[string]string{"ADPULSE_SIZE": "full"}, "full"}, {[]string{"--size=quick"}, map[string]string{"ADPULSE_SIZE": "full"}, "quick"},
	} {
		if got := presetName(tc.args, env(tc.env)); got != tc.want {
			t.Errorf("presetName(%q, %v) = %q, want %q", tc.args, tc.env, got, tc.want)
		}
	}
	if got := redact([]string{"--admin-key", "k", "--click-secret=s", "--target", "http://x"}); !slices.Equal(got, []string{"--admin-key", "REDACTED", "--click-secret=REDACTED", "--target", "http://x"}) {
		t.Errorf("redact: %q", got)
	}
	if got := splitList(" clicks-fixed, ,events,"); !slices.Equal(got, []string{"clicks-fixed", "events"}) {
		t.Errorf("splitList: %q", got)
	}
	full := FullOptions()
	if full.HistoryAds != 10_000_000 || full.ClickDuration != 30*time.Second {
		t.Errorf("full preset: %+v", full)
	}
}

func TestOptionsValidate(t *testing.T) {
	o := QuickOptions()
	if err := o.validate(); err != nil {
		t.Fatalf("quick preset invalid: %v", err)
	}
	o = FullOptions()
	if err := o.validate(); err != nil {
		t.Fatalf("full preset invalid: %v", err)
	}
	for name, mutate := range map[string]func(*Options){
		"scenario":  func(o *Options) { o.Scenarios = []string{"nope"} },
		"baseline":  func(o *Options) { o.Baselines = []string{"mysql"} },
		"remote":    func(o *Options) { o.Target, o.AdminKey, o.ClickSecret = "http://192.0.2.1:8080", "k", "s" },
		"no key":    func(o *Options) { o.Target = "http://127.0.0.1:8080" },
		"rate":      func(o *Options) { o.ClickRate = 0 },
		"dup share": func(o *Options) { o.DupShare = 0.9 },
		"top n":     func(o *Options) { o.TopN = 5000 },
		"tokens":    func(o *Options) { o.SatMaxRate, o.SatDuration = 1e6, time.Hour },
	} {
		o := QuickOptions()
		mutate(&o)
		if err := o.validate(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestCommandRejectsBadFlags(t *testing.T) {
	noEnv := func(string) (string, bool) { return "", false }
	var out, errOut bytes.Buffer
	if err := Command(t.Context(), []string{"--size", "huge"}, &out, &errOut, noEnv); err == nil {
		t.Error("--size huge accepted")
	}
	if err := Command(t.Context(), []string{"--scenarios", "bogus", "--target", "http://127.0.0.1:1", "--admin-key", "k", "--click-secret", "k1:0123456789abcdef0123456789abcdef"}, &out, &errOut, noEnv); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("unknown scenario: %v", err)
	}
	if err := Command(t.Context(), []string{"--serve-baseline", "redis", "--baseline-id", "a/b"}, &out, &errOut, noEnv); err == nil {
		t.Error("bad baseline id accepted")
	}
	if err := Command(t.Context(), []string{"--serve-flag", "dedup-window=20m"}, &out, &errOut, noEnv); err == nil || !strings.Contains(err.Error(), "dedup-window") {
		t.Errorf("--serve-flag without its dashes: %v", err)
	}
}
