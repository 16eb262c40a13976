package bench

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/clicktoken"
	"github.com/adpulse/adpulse/internal/config"
	"github.com/adpulse/adpulse/internal/server"
	"github.com/adpulse/adpulse/internal/tools/bench/baseline"
)

const testSecret = "k1:0123456789abcdef0123456789abcdef"

// tinyOptions make a run of every scenario take seconds, even under -race.
func tinyOptions() Options {
	o := QuickOptions()
	o.ClickAds = 20
	o.ClickRate, o.ClickDuration, o.ClickConns = 300, time.Second, 16
	o.SatDuration, o.SatConns, o.SatMaxRate = time.Second, 4, 3000
	o.EventsDuration, o.EventsBatch, o.EventsConns, o.EventsAds = time.Second, 200, 2, 20
	o.FreshSamples, o.FreshLoadRate = 3, 100
	o.HistoryAds, o.HistoryPerAd, o.Queries, o.QueryConns = 300, 2, 10, 2
	o.RecoveryRate, o.RecoveryAfter = 300, time.Second
	o.CatchUp = 30 * time.Second
	o.Seed = 42
	return o
}

// memStore is a baseline.Store in memory whose mistakes can be switched on, to show that
// the check catches them.
type memStore struct {
	mu        sync.Mutex
	first     map[[2]string]baseline.Event // (kind, imp) -> first event
	loseEvery int                          // drop every n-th new click (0: none)
	double    bool                         // count duplicates again
	n         int
}

func newMemStore() *memStore { return &memStore{first: map[[2]string]baseline.Event{}} }

func (m *memStore) Record(_ context.Context, evs []baseline.Event) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	acc := 0
	for _, e := range evs {
		k := [2]string{e.Kind.String(), e.ImpressionID}
		if _, dup := m.first[k]; dup && !m.double {
			continue
		} else if dup {
			k[1] += "#" + time.Now().String()
		}
		m.n++
		if m.loseEvery > 0 && e.Kind == baseline.Click && m.n%m.loseEvery == 0 {
			acc++
			continue
		}
		m.first[k] = e
		acc++
	}
	return acc, nil
}

func (m *memStore) Series(_ context.Context, ads []string, from, to time.Time, step time.Duration) (map[string]map[int64]baseline.Counts, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]map[int64]baseline.Counts{}
	for _, e := range m.first {
		if !slices.Contains(ads, e.AdID) || e.Time.Before(from) || !e.Time.Before(to) {
			continue
		}
		b := e.Time.Truncate(step).Unix()
		if out[e.AdID] == nil {
			out[e.AdID] = map[int64]baseline.Counts{}
		}
		c := out[e.AdID][b]
		c[e.Kind]++
		out[e.AdID][b] = c
	}
	return out, nil
}

func (m *memStore) Top(_ context.Context, kind baseline.Kind, n int, from, to time.Time) ([]baseline.TopItem, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sum := map[string]int64{}
	for _, e := range m.first {
		if e.Kind == kind && !e.Time.Before(from) && e.Time.Before(to) {
			sum[e.AdID]++
		}
	}
	var items []baseline.TopItem
	for id, v := range sum {
		items = append(items, baseline.TopItem{AdID: id, Value: v})
	}
	return baseline.SortTop(items, n), nil
}

func (m *memStore) Close() error { return nil }

// memTarget serves a baseline handler over store on a loopback port.
func memTarget(t *testing.T, store baseline.Store) *target {
	t.Helper()
	keys, err := clicktoken.ParseKeyring(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	h := baseline.NewHandler(baseline.Options{Store: store, Tokens: keys, AdminKey: "key", Landing: func(ad string) (string, bool) {
		return "https://shop.example/" + ad, true
	}})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &target{name: "mem", base: srv.URL, adminKey: "key", keys: keys, client: newAPIClient(16)}
}

// TestClicksAndCheck runs the click driver (open and closed model, with double clicks)
// against a correct store and against stores that lose or double-count, and requires the
// check to tell them apart.
func TestClicksAndCheck(t *testing.T) {
	ctx := t.Context()
	for _, tc := range []struct {
		name       string
		loseEvery  int
		double     bool
		wantStatus string
	}{
		{"exact", 0, false, "ok"},
		{"loses", 50, false, "failed"},
		{"doubles", 0, true, "failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := newMemStore()
			store.loseEvery, store.double = tc.loseEvery, tc.double
			tg := memTarget(t, store)
			lay := newLayout("t"+tc.name, 10)
			cs, err := newClickSet(tg.keys, lay, "r1", 400, 0.1, 1, 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(cs.order) <= 400 {
				t.Fatalf("no double clicks in the send order (%d sends)", len(cs.order))
			}
			e := newExpectation("clicks", lay.prefix)
			e.from = time.Now().Add(-time.Minute).Truncate(time.Minute)
			rs, next := cs.openLoop(ctx, tg.ingestAddrs(), 0, 2000, 100*time.Millisecond, 8)
			if rs.OK == 0 || rs.Requests != int64(next) {
				t.Fatalf("open loop: %+v, stopped at %d", rs, next)
			}
			rs2, end := cs.closedLoop(ctx, tg.ingestAddrs(), next, 5*time.Second, 4)
			if end != len(cs.order) || rs2.OK != rs2.Requests {
				t.Fatalf("closed loop sent %d of %d: %+v", end, len(cs.order), rs2)
			}
			cs.addExpected(e)
			e.to = time.Now().Add(2 * time.Minute).Truncate(time.Minute)
			var acked int64
			for _, b := range e.ads {
				acked += b.Lo
			}
			if acked != 400 {
				t.Fatalf("ground truth: %d acknowledged, want each of the 400 tokens once", acked)
			}
			r := check(ctx, tg, e, time.Second)
			if r.Status != tc.wantStatus {
				t.Fatalf("check %s (%s), want %s; problems %v", r.Status, r.Reason, tc.wantStatus, r.Problems)
			}
			if tc.loseEvery > 0 && (r.Lost == 0 || r.Double != 0) || tc.double && (r.Double == 0 || r.Lost != 0) {
				t.Errorf("check: lost %d, double %d", r.Lost, r.Double)
			}
		})
	}
}

func TestBatchBodyStamp(t *testing.T) {
	lay := newLayout("tb", 5)
	bb := newBatchBody(lay, "r", 3, 4, newTestRand())
	bb.stamp(42)
	first := string(bb.body)
	bb.stamp(43)
	if first == string(bb.body) || strings.Count(first, "000000000042-") != 4 || strings.Count(string(bb.body), "000000000043-") != 4 {
		t.Fatalf("stamp did not renumber every line:\n%s", bb.body)
	}
	for _, line := range strings.Split(strings.TrimSpace(first), "\n") {
		if !strings.HasPrefix(line, `{"type":"impression","impression_id":"tb-r-w3-000000000042-`) || !strings.HasSuffix(line, "}") {
			t.Errorf("line %q", line)
		}
	}
}

func TestProcReadsSelf(t *testing.T) {
	st, err := readProc(os.Getpid())
	if err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	if st.RSS <= 0 || st.HWM < st.RSS || st.CPU < 0 {
		t.Fatalf("proc stat of self: %+v", st)
	}
	if l := loadAvg(); l < 0 {
		t.Errorf("load average %v", l)
	}
	if m := readMachine(); m.Cores < 1 || m.MemBytes <= 0 {
		t.Errorf("machine %+v", m)
	}
}

// TestBenchSmoke runs every scenario with tiny sizes against an in-process adpulse (the
// --target mode: RSS, CPU and recovery rows are skipped) and requires the checks to pass.
func TestBenchSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an adpulse server; skipped with -short")
	}
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.Listen, cfg.OpsListen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.AdminKey, cfg.ClickSecret = "adp_admin_bench-test-key", testSecret
	cfg.HotAdSalts, cfg.HotAdMinEvents = 4, 50 // as the bench starts its child for the hot scenario
	app, err := server.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("adpulse: %v", err)
		}
	})
	select {
	case <-app.Ready():
	case err := <-done:
		t.Fatalf("adpulse stopped: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("adpulse not ready after 30s")
	}

	o := tinyOptions()
	o.Target, o.OpsURL = "http://"+app.APIAddr(), "http://"+app.OpsAddr()
	o.AdminKey, o.ClickSecret = cfg.AdminKey, cfg.ClickSecret
	o.ProfileDir, o.ProfileSeconds = t.TempDir(), 1
	o.EventsDuration = 2 * time.Second // a 1s profile needs a scenario of 2s
	var progress bytes.Buffer
	o.Progress = &progress
	res, err := Run(ctx, o)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, progress.String())
	}
	tr := res.Targets[0]
	if len(tr.Errors) > 0 {
		t.Fatalf("errors: %v\n%s", tr.Errors, progress.String())
	}
	if tr.Hot == nil || tr.Hot.Hot.OK == 0 || tr.Hot.SaltedEvents == 0 {
		t.Errorf("hot scenario: %+v", tr.Hot)
	} else if !tr.Hot.Check.ok() {
		t.Errorf("hot check: %+v", tr.Hot.Check)
	}
	for name, c := range map[string]*CheckResult{"clicks": tr.ClickCheck, "events": tr.EventsCheck} {
		if c == nil || !c.ok() {
			t.Errorf("%s check: %+v", name, c)
		}
	}
	if tr.ClicksFixed == nil || tr.ClicksFixed.OK == 0 || tr.ClicksSat == nil || tr.ClicksSat.OK == 0 {
		t.Errorf("click runs: %+v %+v", tr.ClicksFixed, tr.ClicksSat)
	}
	if tr.Freshness == nil || tr.Freshness.Samples != o.FreshSamples || tr.Freshness.TimedOut != 0 {
		t.Errorf("freshness: %+v", tr.Freshness)
	}
	if tr.Queries == nil || tr.Queries.MetricsFailed+tr.Queries.TopFailed != 0 || tr.Queries.Metrics.N != int64(o.Queries) {
		t.Errorf("queries: %+v", tr.Queries)
	}
	if tr.Recovery != nil || tr.RSSPeak != 0 {
		t.Errorf("--target mode measured what it cannot: recovery %+v, rss %d", tr.Recovery, tr.RSSPeak)
	}
	// Settling before the queries waits for a --target server to go idle, read from its ops
	// listener as the bench cannot see its process.
	ops := &target{ops: o.OpsURL, client: newAPIClient(1)}
	if cpu, ok := (&runner{o: o}).cpuSeconds(ctx, ops); !ok || cpu <= 0 {
		t.Errorf("the target's CPU time from its ops listener: %v, %v", cpu, ok)
	}
	if tr.ProfileEvents == "" || tr.ProfileHeap == "" {
		t.Errorf("events profile %q, heap profile %q:\n%s", tr.ProfileEvents, tr.ProfileHeap, progress.String())
	}
	var table bytes.Buffer
	res.WriteTable(&table)
	for _, id := range []string{"clicks_fixed_p99", "clicks_sat_rate", "clicks_exact", "hot_rate_ratio", "hot_exact", "events_rate", "fresh_p99", "fresh_ack_p99", "metrics_p99", "top_p99"} {
		if r := rowByID(t, res.Rows, id); r.Cells[0].Value == nil {
			t.Errorf("row %s not measured", id)
		}
	}
	t.Logf("\n%s", table.String())
}

// TestBenchChild runs the default mode (adpulse started as a child, RSS/CPU from /proc,
// kill -9 recovery, the check against the restarted process's new ports) on the adpulse
// binary ADPULSE_BENCH_BINARY names, else on one it builds.
func TestBenchChild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts adpulse; skipped with -short")
	}
	bin := os.Getenv("ADPULSE_BENCH_BINARY")
	if bin == "" {
		bin = filepath.Join(t.TempDir(), "adpulse")
		if out, err := exec.Command("go", "build", "-o", bin, "github.com/adpulse/adpulse/cmd/adpulse").CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
	}
	o := tinyOptions()
	o.Binary = bin
	o.Scenarios = []string{ScenarioClicksSat, ScenarioEvents, ScenarioRecovery}
	var progress bytes.Buffer
	o.Progress = &progress
	res, err := Run(t.Context(), o)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, progress.String())
	}
	tr := res.Targets[0]
	if len(tr.Errors) > 0 {
		t.Fatalf("errors: %v\n%s", tr.Errors, progress.String())
	}
	if tr.RSSPeak == 0 || tr.CPUClicks <= 0 || tr.CPUEvents <= 0 {
		t.Errorf("resources: rss %d, cpu/M clicks %v, events %v", tr.RSSPeak, tr.CPUClicks, tr.CPUEvents)
	}
	if r := tr.Recovery; r == nil || r.RestartToReady <= 0 || !r.Check.ok() || r.LoadBeforeKill.OK == 0 {
		t.Errorf("recovery: %+v", r)
	}
}

func newTestRand() *rand.Rand { return rand.New(rand.NewPCG(1, 2)) }
