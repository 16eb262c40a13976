// Package bench is `adpulse bench`: it measures adpulse on this machine with standard
// scenarios and the same scenarios against two baselines (raw rows in ClickHouse, counters in
// Redis; see bench/baseline), and prints one table of figures, goals and ratios.
//
// It stands outside the pipeline like loadgen does: every figure comes from HTTP requests
// over loopback. By default it starts the adpulse binary itself (`serve` on a temporary data
// dir and free loopback ports) so it can read the server's RSS and CPU time from /proc and
// kill it with SIGKILL; --target uses a running server instead, without those rows.
//
// Scenarios (each selectable):
//
//	clicks-fixed  GET /c/{token}, open model at a fixed rate (latency from the intended send time)
//	clicks-sat    GET /c/{token}, closed model: acknowledged clicks/s at saturation
//	              (both click runs are then checked against /metrics and /metrics/top)
//	hot           clicks-sat on fresh ads, Zipf, then with one ad taking half of the clicks
//	              (the server salts hot ads): throughput, aggregation lag, exact counts
//	events        POST /events, big pre-built NDJSON batches from several connections, checked
//	freshness     one click at a time, poll /metrics until it counts it, under background load
//	queries       a synthetic day of history on many ads, then /metrics and /metrics/top latency
//	recovery      kill -9 during a click load, restart, time to /readyz 200, check the clicks
//	restart       SIGUSR2 (restart in place) during a click load: clicks failed, then checked
//
// Invariants:
//   - Every figure is measured, never assumed; a scenario that fails leaves its rows empty
//     with the error, and the rest still run.
//   - Only loopback: the bench starts what it measures, or refuses a non-loopback --target.
//   - Every loop is bounded by a duration and a count; the whole run by the context.
//   - Click tokens are signed before a run starts, event bodies are built before it, and the
//     click client writes requests by hand, so the client spends little of the two cores the
//     server shares with it.
package bench

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/adpulse/adpulse/internal/clicktoken"
)

// Scenario names, in the order they run.
const (
	ScenarioClicksFixed = "clicks-fixed"
	ScenarioClicksSat   = "clicks-sat"
	ScenarioHot         = "hot"
	ScenarioEvents      = "events"
	ScenarioFreshness   = "freshness"
	ScenarioQueries     = "queries"
	ScenarioRecovery    = "recovery"
	ScenarioRestart     = "restart"
)

// AllScenarios lists every scenario in run order.
var AllScenarios = []string{ScenarioClicksFixed, ScenarioClicksSat, ScenarioHot, ScenarioEvents, ScenarioFreshness, ScenarioQueries, ScenarioRecovery, ScenarioRestart}

// Baseline names.
const (
	BaselineClickHouse = "clickhouse"
	BaselineRedis      = "redis"
	// BaselineBare is the physical reference of the click rows: token check, group-commit
	// fsynced append, 302, and nothing else (baseline/barebase).
	BaselineBare = "bare"
)

// Options configure a bench run. QuickOptions and FullOptions are the two presets.
type Options struct {
	// The adpulse under test: started from Binary (default: this executable) unless Target
	// is set, in which case AdminKey and ClickSecret must be too.
	Binary    string
	ServeArgs []string    // extra `serve` flags
	Soak      SoakOptions // the soak scenario (ScenarioSoak)
	Target    string
	OpsURL    string // ops listener of Target, for profiles
	// Split also measures the split deployment (split.go) in the same run, on RedisAddr,
	// ClickHouseAddr and SplitCatalogDSN (PostgreSQL or MySQL).
	Split           bool
	SplitCatalogDSN string
	AdminKey        string
	ClickSecret     string
	WorkDir         string // data dir and logs of the started servers; default a temp dir
	Keep            bool   // keep WorkDir

	// BaselineInProcess serves the baselines' HTTP handler in this process instead of a child
	// `adpulse bench --serve-baseline` (for tests, whose binary is not adpulse). Their RSS
	// and CPU rows then cover the backing server only.
	BaselineInProcess bool

	Scenarios []string
	Baselines []string

	ClickHouseAddr  string
	ClickHouseFlush time.Duration
	RedisAddr       string
	BaselineDedup   time.Duration // dedup window of both baselines

	ClickAds      int     // ads the click scenarios spread over (Zipf)
	DupShare      float64 // share of clicks sent twice
	ClickRate     float64
	ClickDuration time.Duration
	ClickConns    int // most in flight, open model
	SatDuration   time.Duration
	SatConns      int     // workers, closed model
	SatMaxRate    float64 // tokens signed for the closed model: SatMaxRate x SatDuration

	EventsDuration time.Duration
	EventsBatch    int
	EventsConns    int
	EventsAds      int

	FreshSamples  int
	FreshLoadRate float64

	HistoryAds       int
	HistoryPerAd     int // events per ad (impressions and clicks alternately)
	Queries          int // of each kind
	QueryConns       int
	QueryMaxDuration time.Duration // bound of each query loop (a slow baseline stops early)
	MetricsAds       int           // ads per /metrics request
	TopN             int
	TopMinutes       int
	RecoveryRate     float64
	RecoveryAfter    time.Duration

	CatchUp        time.Duration // how long the checks wait for /metrics to catch up
	MaxRSS         int64         // kill the adpulse child above this RSS (a shared machine must not swap)
	ProfileDir     string        // write CPU profiles of adpulse (clicks-sat, events, top queries) and its settled heap here
	ProfileSeconds int

	Size     string // name of the preset, for the report
	Seed     uint64
	Command  string    // the command line, for the report
	Progress io.Writer // progress lines; nil for none
}

// QuickOptions take about a minute for adpulse alone, three with both baselines.
func QuickOptions() Options {
	return Options{
		Scenarios:        slices.Clone(AllScenarios),
		ClickHouseAddr:   "127.0.0.1:19000",
		ClickHouseFlush:  100 * time.Millisecond,
		RedisAddr:        "127.0.0.1:6379",
		BaselineDedup:    time.Hour,
		ClickAds:         1000,
		DupShare:         0.02,
		ClickRate:        20_000,
		ClickDuration:    10 * time.Second,
		ClickConns:       1024,
		SatDuration:      10 * time.Second,
		SatConns:         256,
		SatMaxRate:       80_000,
		EventsDuration:   10 * time.Second,
		EventsBatch:      5000,
		EventsConns:      4,
		EventsAds:        1000,
		FreshSamples:     50,
		FreshLoadRate:    2000,
		HistoryAds:       100_000,
		HistoryPerAd:     2,
		Queries:          300,
		QueryConns:       2,
		QueryMaxDuration: time.Minute,
		MetricsAds:       10,
		TopN:             100,
		TopMinutes:       60,
		RecoveryRate:     5000,
		RecoveryAfter:    3 * time.Second,
		CatchUp:          60 * time.Second,
		MaxRSS:           16 << 30,
		ProfileSeconds:   10,
		Size:             "quick",
	}
}

// FullOptions are the sizes: 10 million ads with a day of data, 30 s runs; about 12
// minutes for adpulse alone and 25 with both baselines (loading 20 million history events into
// each takes most of it).
func FullOptions() Options {
	o := QuickOptions()
	o.ClickDuration, o.SatDuration, o.EventsDuration = 30*time.Second, 30*time.Second, 30*time.Second
	o.FreshSamples = 200
	o.HistoryAds = 10_000_000
	o.Queries = 2000
	o.RecoveryAfter = 5 * time.Second
	// A bound, not a wait: a settled server is measured at once. Three minutes were too few
	// for a two-core machine to absorb the history before the query rows.
	o.CatchUp = 10 * time.Minute
	o.Size = "full"
	return o
}

func (o *Options) validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	for _, s := range o.Scenarios {
		if !slices.Contains(AllScenarios, s) && s != ScenarioSoak {
			add("unknown scenario %q (have %s)", s, strings.Join(AllScenarios, ","))
		}
	}
	for _, b := range o.Baselines {
		if b != BaselineClickHouse && b != BaselineRedis && b != BaselineBare {
			add("unknown baseline %q (have bare, clickhouse, redis)", b)
		}
	}
	if o.Target != "" {
		if o.AdminKey == "" || o.ClickSecret == "" {
			add("--target needs --admin-key and --click-secret (or --data-dir of that server)")
		}
		if err := checkLoopback(o.Target); err != nil {
			errs = append(errs, err)
		}
	}
	pos := func(name string, v float64) {
		if !(v > 0) {
			add("%s must be positive", name)
		}
	}
	pos("click ads", float64(o.ClickAds))
	pos("click rate", o.ClickRate)
	pos("click duration", o.ClickDuration.Seconds())
	pos("click conns", float64(o.ClickConns))
	pos("saturation duration", o.SatDuration.Seconds())
	pos("saturation conns", float64(o.SatConns))
	pos("saturation max rate", o.SatMaxRate)
	pos("events duration", o.EventsDuration.Seconds())
	pos("events batch", float64(o.EventsBatch))
	pos("events conns", float64(o.EventsConns))
	pos("events ads", float64(o.EventsAds))
	pos("freshness samples", float64(o.FreshSamples))
	pos("history ads", float64(o.HistoryAds))
	pos("history events per ad", float64(o.HistoryPerAd))
	pos("queries", float64(o.Queries))
	pos("query conns", float64(o.QueryConns))
	pos("query max duration", o.QueryMaxDuration.Seconds())
	pos("recovery rate", o.RecoveryRate)
	pos("recovery kill after", o.RecoveryAfter.Seconds())
	switch {
	case o.DupShare < 0 || o.DupShare > 0.5:
		add("dup share must be within [0, 0.5]")
	case o.HistoryAds > 20_000_000:
		add("history ads: at most 20,000,000")
	case o.ClickRate*o.ClickDuration.Seconds() > 20_000_000 || o.SatMaxRate*o.SatDuration.Seconds() > 20_000_000:
		add("click runs: at most 20,000,000 pre-signed tokens")
	case o.MetricsAds < 1 || o.MetricsAds > 1000:
		add("metrics ads must be 1-1000")
	case o.TopN < 1 || o.TopN > 1000:
		add("top n must be 1-1000")
	case o.TopMinutes < 1 || o.TopMinutes > 1440:
		add("top minutes must be 1-1440")
	case o.EventsBatch > 100_000:
		add("events batch: at most 100,000 lines")
	}
	return errors.Join(errs...)
}

func checkLoopback(target string) error {
	u, err := url.Parse(target)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return fmt.Errorf("target %q must be an http:// URL", target)
	}
	ips, err := net.LookupIP(u.Hostname())
	if err != nil {
		return fmt.Errorf("target %s: %w", u.Hostname(), err)
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return fmt.Errorf("target %s is not a loopback address: the bench only loads this machine", u.Hostname())
		}
	}
	return nil
}

func (o *Options) has(s string) bool { return slices.Contains(o.Scenarios, s) }

// Run measures adpulse and then each baseline, and returns the result with its table rows.
func Run(ctx context.Context, o Options) (*Result, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.Seed == 0 {
		o.Seed = uint64(time.Now().UnixNano())
	}
	b := &runner{o: o, res: &Result{Started: time.Now().UTC(), Size: o.Size, Command: o.Command, Seed: o.Seed, Machine: readMachine(), Scenarios: o.Scenarios}}
	b.runID = strconv.FormatInt(time.Now().Unix()%1_000_000_000, 36)
	b.logf("run %s, seed %d, scenarios %s, baselines %s", b.runID, o.Seed, strings.Join(o.Scenarios, ","), strings.Join(o.Baselines, ","))
	t0 := time.Now()

	dir := o.WorkDir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "adpulse-bench-"); err != nil {
			return nil, err
		}
	} else if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	b.workDir = dir
	defer func() {
		if !o.Keep && o.WorkDir == "" {
			_ = os.RemoveAll(dir)
		} else {
			b.logf("kept %s", dir)
		}
	}()

	ad, stop, err := b.startAdpulse(ctx)
	if err != nil {
		return nil, err
	}
	b.res.Targets = append(b.res.Targets, b.runTarget(ctx, ad))
	stop()
	if o.Split && ctx.Err() == nil {
		t, stop, err := b.startSplit(ctx)
		if err != nil {
			b.logf("split: %v", err)
			b.res.Targets = append(b.res.Targets, &TargetResult{Name: "adpulse split", Errors: []string{err.Error()}})
		} else {
			b.res.Targets = append(b.res.Targets, b.runTarget(ctx, t))
			stop()
		}
	}
	for _, name := range o.Baselines {
		if ctx.Err() != nil {
			break
		}
		t, stop, err := b.startBaseline(ctx, name)
		if err != nil {
			b.logf("%s: %v", name, err)
			b.res.Targets = append(b.res.Targets, &TargetResult{Name: name, Errors: []string{err.Error()}})
			continue
		}
		b.res.Targets = append(b.res.Targets, b.runTarget(ctx, t))
		stop()
	}
	b.res.ElapsedSeconds = time.Since(t0).Seconds()
	b.res.Rows = BuildRows(b.res)
	return b.res, ctx.Err()
}

type runner struct {
	o       Options
	res     *Result
	runID   string
	workDir string // adpulse's data dir and every log
}

func (b *runner) logf(format string, args ...any) {
	if b.o.Progress != nil {
		fmt.Fprintf(b.o.Progress, "bench: "+format+"\n", args...)
	}
}

func randomHex(n int) string {
	buf := make([]byte, n)
	_, _ = crand.Read(buf)
	return hex.EncodeToString(buf)
}

// startAdpulse starts the adpulse child (or connects to --target) and returns its target and
// a cleanup that stops it.
func (b *runner) startAdpulse(ctx context.Context) (*target, func(), error) {
	o := b.o
	if o.Target != "" {
		keys, err := clicktoken.ParseKeyring(o.ClickSecret)
		if err != nil {
			return nil, nil, fmt.Errorf("--click-secret: %w", err)
		}
		t := &target{name: "adpulse", base: strings.TrimRight(o.Target, "/"), ops: strings.TrimRight(o.OpsURL, "/"), adminKey: o.AdminKey,
			keys: keys, catalog: true, client: newAPIClient(64)}
		return t, func() {}, nil
	}
	bin, err := b.binary()
	if err != nil {
		return nil, nil, err
	}
	secret := "bench:" + randomHex(32)
	keys, err := clicktoken.ParseKeyring(secret)
	if err != nil {
		return nil, nil, err
	}
	extra := o.ServeArgs
	if o.has(ScenarioSoak) {
		extra = append(slices.Clone(extra), "--ivt-rules") // the soak runs every stage, the invalid-traffic one too
	}
	if o.has(ScenarioHot) && !slices.ContainsFunc(extra, func(a string) bool { return strings.Contains(a, "hot-ad-salts") }) {
		extra = append(slices.Clone(extra), "--hot-ad-salts=4", "--hot-ad-min-events=100") // the hot scenario measures salting
	}
	c := &child{bin: bin, dataDir: filepath.Join(b.workDir, "data"), logDir: b.workDir, adminKey: "adp_admin_bench_" + randomHex(16), secret: secret, extra: extra}
	b.logf("starting %s serve, data in %s", bin, c.dataDir)
	d, err := c.start(ctx)
	if err != nil {
		return nil, nil, err
	}
	b.logf("adpulse ready in %v: api %s, ops %s", d.Round(time.Millisecond), c.api, c.ops)
	t := &target{name: "adpulse", base: "http://" + c.api, ops: "http://" + c.ops, adminKey: c.adminKey, keys: keys, catalog: true, proc: c, client: newAPIClient(64)}
	return t, func() {
		if err := c.stop(); err != nil {
			b.logf("adpulse stop: %v", err)
		}
	}, nil
}

// startBaseline serves a baseline on a loopback port: in a child process of its own
// (`adpulse bench --serve-baseline`), so its RSS and CPU are measured like adpulse's, or in
// this process when Options.BaselineInProcess is set (tests).
func (b *runner) startBaseline(ctx context.Context, name string) (*target, func(), error) {
	o := b.o
	c := baselineConfig{name: name, id: b.runID, clickhouseAddr: o.ClickHouseAddr, clickhouseFlush: o.ClickHouseFlush,
		redisAddr: o.RedisAddr, dedup: o.BaselineDedup, adminKey: "baseline_" + randomHex(16), clickSecret: "bench:" + randomHex(32)}
	keys, err := clicktoken.ParseKeyring(c.clickSecret)
	if err != nil {
		return nil, nil, err
	}
	t := &target{name: name, adminKey: c.adminKey, keys: keys, client: newAPIClient(64)}
	// backing is the process of the baseline's storage server; bare has none.
	backing := func(context.Context) []int {
		switch name {
		case BaselineClickHouse:
			return []int{findProcess("clickhouse-serv")}
		case BaselineRedis:
			return []int{findRedis(ctx, o.RedisAddr)}
		}
		return nil
	}
	if o.BaselineInProcess {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, err
		}
		sctx, stop := context.WithCancel(context.Background())
		readyC, errC := make(chan struct{}), make(chan error, 1)
		go func() { errC <- serveBaseline(sctx, c, ln, func() { close(readyC) }) }()
		select {
		case <-readyC:
		case err := <-errC:
			stop()
			return nil, nil, err
		}
		t.base = "http://" + ln.Addr().String()
		t.pids = func(ctx context.Context) []int { return backing(ctx) }
		t.resNote = "the " + name + " server process only (the Go handler runs inside the bench process here)"
		if name == BaselineBare {
			// No server of its own: its log and handler live in the bench process.
			t.pids = func(context.Context) []int { return []int{os.Getpid()} }
			t.resNote = "the bench process, which serves the bare baseline here"
		}
		b.logf("%s baseline serving in-process on %s", name, ln.Addr())
		return t, func() { stop(); <-errC }, nil
	}
	bin, err := b.binary()
	if err != nil {
		return nil, nil, err
	}
	addr, cmd, done, err := startBaselineChild(ctx, bin, b.workDir, c)
	if err != nil {
		return nil, nil, err
	}
	t.base = "http://" + addr
	t.pids = func(ctx context.Context) []int { return append([]int{cmd.Process.Pid}, backing(ctx)...) }
	t.resNote = "sum of the Go handler process (adpulse bench --serve-baseline) and the " + name + " server process"
	if name == BaselineBare {
		t.resNote = "the Go handler process (adpulse bench --serve-baseline), which holds the bare log itself"
	}
	b.logf("%s baseline serving on %s (pid %d)", name, addr, cmd.Process.Pid)
	return t, func() { stopChild(cmd, done) }, nil
}

func (b *runner) binary() (string, error) {
	if b.o.Binary != "" {
		return b.o.Binary, nil
	}
	bin, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find the adpulse binary: %w (give --adpulse-bin)", err)
	}
	return bin, nil
}

// runTarget runs the selected scenarios against t.
func (b *runner) runTarget(ctx context.Context, t *target) *TargetResult {
	o := b.o
	tr := &TargetResult{Name: t.name, ResourceNote: t.resNote}
	var errMu sync.Mutex // fail is also called by the RSS watchdog
	fail := func(scenario string, err error) {
		msg := scenario + ": " + err.Error()
		b.logf("%s: %s", t.name, msg)
		errMu.Lock()
		tr.Errors = append(tr.Errors, msg)
		errMu.Unlock()
	}
	if t.proc != nil && o.MaxRSS > 0 {
		stop := b.watchRSS(t, o.MaxRSS, func(rss int64) {
			fail("memory", fmt.Errorf("adpulse RSS %s passed --max-rss %s: killed it to protect the machine", fmtBytes(rss), fmtBytes(o.MaxRSS)))
		})
		defer stop()
	}
	prefix := "b" + b.runID
	seed := b.o.Seed
	rng := rand.New(rand.NewPCG(seed, 1))

	// Clicks: fixed rate, then saturation, both checked together.
	if o.has(ScenarioClicksFixed) || o.has(ScenarioClicksSat) {
		lay := newLayout(prefix+"c", o.ClickAds)
		e := newExpectation("clicks", lay.prefix)
		e.from = time.Now().Add(-time.Minute).Truncate(time.Minute)
		var sets []*clickSet
		err := t.setupAds(ctx, lay)
		if err != nil {
			fail("clicks", err)
		}
		if err == nil && o.has(ScenarioClicksFixed) {
			cs, err := newClickSet(t.keys, lay, b.runID+"f", int(o.ClickRate*o.ClickDuration.Seconds()), o.DupShare, rng.Uint64(), 0)
			if err != nil {
				fail(ScenarioClicksFixed, err)
			} else {
				sets = append(sets, cs)
				b.logf("%s: clicks at %g/s for %v (open model, at most %d in flight)", t.name, o.ClickRate, o.ClickDuration, o.ClickConns)
				load := loadAvg()
				p0, c0 := b.proc(ctx, t), selfCPU()
				rs, _ := cs.openLoop(ctx, t.ingestAddrs(), 0, o.ClickRate, o.ClickDuration, o.ClickConns)
				rs.Load1, rs.ClientCPU = load, selfCPU()-c0
				tr.ClicksFixed = &rs
				tr.CPUClicksFixed = cpuPerMillion(p0, b.proc(ctx, t), rs.OK)
				b.logf("%s: %.0f clicks/s acknowledged, p50 %s p99 %s p99.9 %s, errors %v", t.name, rs.Throughput, fmtUS(rs.Latency.P50), fmtUS(rs.Latency.P99), fmtUS(rs.Latency.P999), errorsOf(rs.Status))
			}
		}
		if err == nil && o.has(ScenarioClicksSat) {
			cs, err := newClickSet(t.keys, lay, b.runID+"s", int(o.SatMaxRate*o.SatDuration.Seconds()), o.DupShare, rng.Uint64(), 0)
			if err != nil {
				fail(ScenarioClicksSat, err)
			} else {
				sets = append(sets, cs)
				b.logf("%s: clicks at saturation for %v (closed model, %d workers)", t.name, o.SatDuration, o.SatConns)
				stopProf := b.profile(ctx, t, "clicks", o.SatDuration)
				load := loadAvg()
				p0, c0 := b.proc(ctx, t), selfCPU()
				rs, _ := cs.closedLoop(ctx, t.ingestAddrs(), 0, o.SatDuration, o.SatConns)
				rs.Load1, rs.ClientCPU = load, selfCPU()-c0
				tr.ClicksSat = &rs
				tr.CPUClicks = cpuPerMillion(p0, b.proc(ctx, t), rs.OK)
				tr.ProfileClicks = stopProf()
				b.logf("%s: %.0f clicks/s acknowledged at saturation, p50 %s p99 %s, errors %v", t.name, rs.Throughput, fmtUS(rs.Latency.P50), fmtUS(rs.Latency.P99), errorsOf(rs.Status))
			}
		}
		if len(sets) > 0 {
			for _, cs := range sets {
				cs.addExpected(e)
			}
			e.to = time.Now().Add(2 * time.Minute).Truncate(time.Minute)
			r := check(ctx, t, e, o.CatchUp)
			tr.ClickCheck = &r
			b.logf("%s: click check %s: %d acknowledged on %d ads, lost %d, double-counted %d %s", t.name, r.Status, r.Acknowledged, r.Ads, r.Lost+r.TopLost, r.Double+r.TopDouble, r.Reason)
		}
		b.sampleRSS(ctx, t, tr)
	}

	if o.has(ScenarioHot) && t.name == "adpulse" {
		hs, err := b.runHot(ctx, t, rng)
		if err != nil {
			fail(ScenarioHot, err)
		}
		tr.Hot = hs
	}
	if o.has(ScenarioEvents) {
		lay := newLayout(prefix+"e", o.EventsAds)
		if err := t.setupAds(ctx, lay); err != nil {
			fail(ScenarioEvents, err)
		} else {
			b.logf("%s: POST /events for %v, %d connections, %d lines a batch", t.name, o.EventsDuration, o.EventsConns, o.EventsBatch)
			e := newExpectation("impressions", lay.prefix)
			e.from = time.Now().Add(-time.Minute).Truncate(time.Minute)
			stopProf := b.profile(ctx, t, "events", o.EventsDuration)
			p0, c0 := b.proc(ctx, t), selfCPU()
			es := runEvents(ctx, t, lay, b.runID, o.EventsDuration, o.EventsBatch, o.EventsConns, rng.Uint64(), e)
			es.ClientCPU = selfCPU() - c0
			tr.CPUEvents = cpuPerMillion(p0, b.proc(ctx, t), es.Accepted)
			tr.ProfileEvents = stopProf()
			tr.Events = es
			b.logf("%s: %.0f events/s accepted (%d batches, %d failed), batch p50 %s p99 %s", t.name, es.PerSecond, es.Batches, es.FailedBodies, fmtUS(es.BatchLatency.P50), fmtUS(es.BatchLatency.P99))
			e.to = time.Now().Add(2 * time.Minute).Truncate(time.Minute)
			r := check(ctx, t, e, o.CatchUp)
			tr.EventsCheck = &r
			b.logf("%s: events check %s: %d acknowledged, lost %d, double-counted %d %s", t.name, r.Status, r.Acknowledged, r.Lost+r.TopLost, r.Double+r.TopDouble, r.Reason)
		}
		b.sampleRSS(ctx, t, tr)
	}

	if o.has(ScenarioFreshness) {
		lay := newLayout(prefix+"f", 1)
		bgLay := newLayout(prefix+"g", 100)
		err := t.setupAds(ctx, lay)
		if err == nil {
			err = t.setupAds(ctx, bgLay)
		}
		var cs, bg *clickSet
		if err == nil {
			cs, err = newClickSet(t.keys, lay, b.runID+"fr", o.FreshSamples, 0, rng.Uint64(), 0)
		}
		if err == nil && o.FreshLoadRate > 0 {
			bg, err = newClickSet(t.keys, bgLay, b.runID+"bg", int(o.FreshLoadRate*(float64(o.FreshSamples)*0.5+10)), 0, rng.Uint64(), 0)
		}
		if err != nil {
			fail(ScenarioFreshness, err)
		} else {
			b.logf("%s: freshness, %d samples with %g clicks/s in the background", t.name, o.FreshSamples, o.FreshLoadRate)
			fs := runFreshness(ctx, t, lay, cs, bg, o.FreshLoadRate, 64)
			tr.Freshness = fs
			b.logf("%s: click-to-visible p50 %s p99 %s (%d timed out)", t.name, fmtUS(fs.Latency.P50), fmtUS(fs.Latency.P99), fs.TimedOut)
		}
	}

	if o.has(ScenarioQueries) {
		lay := newLayout(prefix+"h", o.HistoryAds)
		b.logf("%s: loading a day of history: %d ads x %d events", t.name, o.HistoryAds, o.HistoryPerAd)
		hs, err := loadHistory(ctx, t, lay, b.runID, o.HistoryPerAd, rng.Uint64(), b.logf)
		if err != nil {
			fail(ScenarioQueries, err)
		} else {
			tr.History = hs
			b.logf("%s: history loaded: catalog %.1fs, %d events in %.1fs (%.0f/s)", t.name, hs.CatalogSeconds, hs.Accepted, hs.EventsSeconds, hs.EventsPerSec)
			// Let the aggregate catch up with the history before timing the queries: the
			// figure is a query on a settled store, not one competing with ingestion.
			d, ok := b.settle(ctx, t, lay)
			hs.SettleSeconds, hs.Settled = d.Seconds(), ok
			b.logf("%s: settled %v after %.1fs", t.name, ok, d.Seconds())
			b.sampleRSS(ctx, t, tr)
			tr.RSSWithHistory = tr.RSSNow
			tr.ProfileHeap = b.heapProfile(ctx, t)
			load := loadAvg()
			metricsPath := func(r *rand.Rand) string {
				ids := make([]string, o.MetricsAds)
				for i := range ids {
					ids[i] = lay.adID(r.IntN(lay.ads))
				}
				now := time.Now()
				return "/metrics?ad_ids=" + strings.Join(ids, ",") + "&start_time=" + fmtTime(now.Add(-24*time.Hour)) + "&end_time=" + fmtTime(now) + "&interval=1h"
			}
			topPath := func(*rand.Rand) string {
				return "/metrics/top?n=" + strconv.Itoa(o.TopN) + "&minutes=" + strconv.Itoa(o.TopMinutes) + "&metric=clicks&by=ad"
			}
			ml, mf, me := queryLatency(ctx, t, o.Queries, o.QueryConns, o.QueryMaxDuration, metricsPath, rng.Uint64())
			stopProf := b.profile(ctx, t, "top", time.Duration(min(o.ProfileSeconds, 5)+1)*time.Second)
			tl, tf, te := queryLatency(ctx, t, o.Queries, o.QueryConns, o.QueryMaxDuration, topPath, rng.Uint64())
			tr.ProfileTop = stopProf()
			tr.Queries = &QueryStats{Metrics: ml, MetricsFailed: mf, MetricsError: me, Top: tl, TopFailed: tf, TopError: te, Load1: load,
				MetricsQuery: fmt.Sprintf("%d random ads, last 24h, interval 1h", o.MetricsAds), TopQuery: fmt.Sprintf("top %d ads by clicks over %d minutes", o.TopN, o.TopMinutes)}
			b.logf("%s: /metrics p50 %s p99 %s (%d failed); /metrics/top p50 %s p99 %s (%d failed)", t.name, fmtUS(ml.P50), fmtUS(ml.P99), mf, fmtUS(tl.P50), fmtUS(tl.P99), tf)
		}
	}

	if o.has(ScenarioRecovery) && t.proc != nil {
		lay := newLayout(prefix+"r", 100)
		cs, err := newClickSet(t.keys, lay, b.runID+"r", int(o.RecoveryRate*(o.RecoveryAfter.Seconds()+1)), 0, rng.Uint64(), 0)
		if err == nil {
			err = t.setupAds(ctx, lay)
		}
		if err != nil {
			fail(ScenarioRecovery, err)
		} else {
			b.logf("%s: kill -9 after %v of %g clicks/s, restart", t.name, o.RecoveryAfter, o.RecoveryRate)
			rs, err := runRecovery(ctx, t, cs, o.RecoveryRate, 64, o.RecoveryAfter, o.CatchUp)
			tr.Recovery = rs
			if err != nil {
				fail(ScenarioRecovery, err)
			} else {
				b.logf("%s: ready %.2fs after restart (%.2fs after the kill, data dir %s); check %s: lost %d, double %d", t.name, rs.RestartToReady, rs.KillToReady,
					fmtBytes(rs.DataDirBytes), rs.Check.Status, rs.Check.Lost+rs.Check.TopLost, rs.Check.Double+rs.Check.TopDouble)
			}
		}
	}
	if o.has(ScenarioRestart) && t.proc != nil {
		// The recovery scenario's rate and timing: RecoveryAfter of load, SIGUSR2, the new
		// process, RecoveryAfter more.
		lay := newLayout(prefix+"u", 100)
		cs, err := newClickSet(t.keys, lay, b.runID+"u", int(o.RecoveryRate*(2*o.RecoveryAfter.Seconds()+60)), 0, rng.Uint64(), 0)
		if err == nil {
			err = t.setupAds(ctx, lay)
		}
		if err != nil {
			fail(ScenarioRestart, err)
		} else {
			b.logf("%s: SIGUSR2 (restart in place) after %v of %g clicks/s", t.name, o.RecoveryAfter, o.RecoveryRate)
			rs, err := runRestart(ctx, t, cs, o.RecoveryRate, 256, o.RecoveryAfter, o.CatchUp)
			tr.Restart = rs
			if err != nil {
				fail(ScenarioRestart, err)
			} else {
				b.logf("%s: restart: %d of %d clicks failed, new process ready %.2fs after SIGUSR2; check %s: lost %d, double %d", t.name, rs.Failed, rs.Load.Requests,
					rs.SignalToReady, rs.Check.Status, rs.Check.Lost+rs.Check.TopLost, rs.Check.Double+rs.Check.TopDouble)
			}
		}
	}
	if o.has(ScenarioSoak) {
		lay := newLayout(prefix+"k", o.ClickAds)
		if err := t.setupAds(ctx, lay); err != nil {
			fail(ScenarioSoak, err)
		} else {
			b.logf("%s: soak for %v at %g clicks/s with a %gx spike", t.name, o.Soak.Duration, o.Soak.Rate, o.Soak.Spike)
			tr.Soak = b.runSoak(ctx, t, lay, t.keys, rng.Uint64(), o.Soak)
		}
	}
	b.sampleRSS(ctx, t, tr)
	return tr
}

// settle waits, bounded by CatchUp, until the store has absorbed the history: the history's
// clicks on a sample of ads stop changing and, when the bench can read the server's CPU
// time (cpuSeconds), the server has gone (nearly) idle, as the aggregator, billing and compactions finish
// their backlog. It returns how long it waited and whether it settled.
func (b *runner) settle(ctx context.Context, t *target, lay layout) (time.Duration, bool) {
	t0 := time.Now()
	ads := make([]string, 0, 100)
	for i := range min(100, lay.ads) {
		ads = append(ads, lay.adID(i*max(1, lay.ads/100)))
	}
	deadline := t0.Add(b.o.CatchUp)
	var prev map[string]int64
	stable := false
	for !stable && time.Now().Before(deadline) && ctx.Err() == nil {
		got, err := t.totals(ctx, ads, "clicks", time.Now().Add(-26*time.Hour), time.Now().Add(time.Minute))
		if err != nil {
			return time.Since(t0), false
		}
		stable = prev != nil && maps.Equal(prev, got)
		prev = got
		if !stable {
			_ = sleepCtx(ctx, time.Second)
		}
	}
	if !stable {
		return time.Since(t0), false
	}
	last, ok := b.cpuSeconds(ctx, t)
	if !ok {
		return time.Since(t0), true
	}
	const idle = 0.15 // cores
	for time.Now().Before(deadline) && ctx.Err() == nil {
		_ = sleepCtx(ctx, time.Second)
		cur, ok := b.cpuSeconds(ctx, t)
		if !ok {
			return time.Since(t0), false
		}
		busy := cur - last
		last = cur
		if busy < idle {
			return time.Since(t0), true
		}
	}
	return time.Since(t0), false
}

func errorsOf(status map[string]int64) map[string]int64 {
	out := map[string]int64{}
	for s, n := range status {
		if s != "302" {
			out[s] = n
		}
	}
	return out
}
