package bench

import (
	"bytes"
	"os"
	"testing"
)

// runBaseline runs the click, events, freshness and query scenarios, tiny, against a baseline
// served in-process, and requires its /metrics and top-N to be exact.
func runBaseline(t *testing.T, name string, set func(*Options)) {
	o := tinyOptions()
	o.BaselineInProcess = true
	o.Scenarios = []string{ScenarioClicksFixed, ScenarioClicksSat, ScenarioEvents, ScenarioFreshness, ScenarioQueries}
	set(&o)
	var progress bytes.Buffer
	o.Progress = &progress
	r := &runner{o: o, runID: "t" + randomHex(4), workDir: t.TempDir()}
	tg, stop, err := r.startBaseline(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	tr := r.runTarget(t.Context(), tg)
	if len(tr.Errors) > 0 {
		t.Fatalf("errors: %v\n%s", tr.Errors, progress.String())
	}
	for what, c := range map[string]*CheckResult{"clicks": tr.ClickCheck, "events": tr.EventsCheck} {
		if c == nil || !c.ok() || c.Acknowledged == 0 {
			t.Errorf("%s check: %+v", what, c)
		}
	}
	if tr.Freshness == nil || tr.Freshness.TimedOut != 0 || tr.Freshness.Samples != o.FreshSamples {
		t.Errorf("freshness: %+v", tr.Freshness)
	}
	if q := tr.Queries; q == nil || q.MetricsFailed+q.TopFailed != 0 {
		t.Errorf("queries: %+v", q)
	}
	if tr.RSSPeak == 0 {
		t.Errorf("no RSS of the %s server", name)
	}
	t.Logf("%s", progress.String())
}

func TestClickHouseBaseline(t *testing.T) {
	addr := os.Getenv("ADPULSE_TEST_CLICKHOUSE_ADDR")
	if addr == "" {
		t.Skip("ADPULSE_TEST_CLICKHOUSE_ADDR is not set (scripts/install-baselines.sh starts ClickHouse on 127.0.0.1:19000)")
	}
	runBaseline(t, BaselineClickHouse, func(o *Options) { o.ClickHouseAddr = addr })
}

func TestRedisBaseline(t *testing.T) {
	addr := os.Getenv("ADPULSE_TEST_REDIS_ADDR")
	if addr == "" {
		t.Skip("ADPULSE_TEST_REDIS_ADDR is not set")
	}
	runBaseline(t, BaselineRedis, func(o *Options) { o.RedisAddr = addr })
}

func TestBareBaseline(t *testing.T) {
	runBaseline(t, BaselineBare, func(*Options) {})
}
