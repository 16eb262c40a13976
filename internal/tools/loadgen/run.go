package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/adpulse/adpulse/internal/clicktoken"
)

// Options configure a run. DefaultOptions fills in everything but Target and AdminKey.
type Options struct {
	Target      string // base URL of the adpulse API, e.g. http://127.0.0.1:8080
	MetricsURL  string // base URL of /metrics and /metrics/top; default Target
	AdminKey    string
	ClickSecret string // keyring spec: when set, click tokens are signed here, not by the server
	AllowRemote bool   // permit a target that is not a loopback address

	Setup             bool // create (upsert) the layout's advertisers, campaigns and ads first
	Layout            Layout
	DailyBudgetMicros int64 // campaigns' daily budget when Setup; 0 is unlimited

	Seed  uint64 // every choice of the traffic derives from it
	RunID string // distinguishes this run's impression ids from earlier runs'; default from the clock
	Model Model

	// Open model when Rate > 0: a request every 1/Rate s for Duration, at most MaxInFlight
	// at a time. Closed model when Rate == 0: Concurrency workers send back to back.
	Rate        float64
	Duration    time.Duration
	MaxInFlight int
	Concurrency int
	// Requests, when positive, is exactly how many requests the run sends, instead of
	// Duration's worth: in the open model on the Rate schedule however late it runs, in the
	// closed model back to back. A run's content then does not depend on the machine's speed
	// (tests use it).
	Requests int64
	Timeout  time.Duration // of one request

	Check          CheckMode
	CatchUpTimeout time.Duration // how long to wait for /metrics to count everything acknowledged

	Progress      io.Writer // progress lines every ProgressEvery; nil for none
	ProgressEvery time.Duration

	Client *http.Client // default: one sized for MaxInFlight / Concurrency; redirects are never followed
}

// DefaultOptions are the defaults of `adpulse loadgen`.
func DefaultOptions() Options {
	return Options{
		Target:         "http://127.0.0.1:8080",
		Layout:         Layout{Ads: 1000, Campaigns: 100, Advertisers: 10, Prefix: "lg"},
		Model:          DefaultModel(),
		Rate:           1000,
		Duration:       30 * time.Second,
		MaxInFlight:    256,
		Concurrency:    64,
		Timeout:        10 * time.Second,
		Check:          CheckAuto,
		CatchUpTimeout: 60 * time.Second,
		ProgressEvery:  5 * time.Second,
	}
}

func (o *Options) validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	u, err := url.Parse(o.Target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		add("target %q must be an http(s) URL", o.Target)
	}
	if o.MetricsURL != "" {
		if u, err := url.Parse(o.MetricsURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add("metrics URL %q must be an http(s) URL", o.MetricsURL)
		}
	}
	if o.AdminKey == "" {
		add("an admin key is required")
	}
	if err := o.Layout.validate(); err != nil {
		errs = append(errs, err)
	}
	if err := o.Model.validate(); err != nil {
		errs = append(errs, err)
	}
	if o.RunID != "" && (len(o.RunID) > 12 || !validIDChars(o.RunID)) {
		add("run id must be 1-12 characters of [A-Za-z0-9._-]")
	}
	switch {
	case o.Rate < 0 || o.Rate > 1e6:
		add("rate must be 0 (closed model) to 1000000 requests/s")
	case o.Duration <= 0 || o.Duration > 24*time.Hour:
		add("duration must be within (0, 24h]")
	case o.Rate > 0 && (o.MaxInFlight < 1 || o.MaxInFlight > 100_000):
		add("max in-flight must be 1-100000")
	case o.Rate == 0 && (o.Concurrency < 1 || o.Concurrency > 100_000):
		add("concurrency must be 1-100000")
	case o.Timeout <= 0:
		add("timeout must be positive")
	case o.CatchUpTimeout < 0:
		add("catch-up timeout must not be negative")
	case o.DailyBudgetMicros < 0:
		add("daily budget must not be negative")
	}
	if o.Model.Lateness+o.Duration > 6*24*time.Hour {
		add("lateness + duration must stay under 6 days (/metrics answers at most 10000 points)")
	}
	return errors.Join(errs...)
}

func validIDChars(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return s != ""
}

// checkLoopback refuses targets that are not loopback addresses: a load generator pointed at
// someone else's server by a typo is an attack.
func checkLoopback(ctx context.Context, target string) error {
	u, err := url.Parse(target)
	if err != nil {
		return err
	}
	host := u.Hostname()
	if ip := net.ParseIP(host); ip != nil {
		if !ip.IsLoopback() {
			return fmt.Errorf("target %s is not a loopback address (use --allow-remote to load a remote server)", host)
		}
		return nil
	}
	addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		return fmt.Errorf("resolve target host %s: %w", host, err)
	}
	for _, a := range addrs {
		if !a.IP.IsLoopback() {
			return fmt.Errorf("target %s resolves to %s, not a loopback address (use --allow-remote to load a remote server)", host, a.IP)
		}
	}
	return nil
}

// Run sets up (optionally), sends the traffic, checks /metrics against what was acknowledged
// and reports. It returns an error only when the run could not be made (bad options, setup
// failed, ads missing); a failed check is in the Report (Report.OK).
func Run(ctx context.Context, o Options) (*Report, error) {
	r, err := newRunner(o)
	if err != nil {
		return nil, err
	}
	if err := r.prepare(ctx); err != nil {
		return nil, err
	}
	r.traffic(ctx)
	r.check(ctx)
	return r.report(), nil
}

// runner is one run.
type runner struct {
	o      Options
	api    *api
	client *http.Client
	keys   *clicktoken.Keyring
	ledger *ledger
	gen    *generator
	genMu  sync.Mutex // the generator, in the closed model
	st     *stats

	started, sendEnd, finished time.Time
	baseline                   [numLevels]observed // counts already there before the run; nil when zero
	checkRes                   CheckResult
	truth                      Truth
	skipCheck                  string // why the check cannot run, found before the traffic
	baselineErr                error  // /metrics failed before the traffic
}

func newRunner(o Options) (*runner, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.RunID == "" {
		o.RunID = strconv.FormatInt(time.Now().UnixMilli(), 36)
	}
	o.Target = strings.TrimRight(o.Target, "/")
	if o.MetricsURL == "" {
		o.MetricsURL = o.Target
	}
	o.MetricsURL = strings.TrimRight(o.MetricsURL, "/")
	r := &runner{o: o, st: newStats()}
	if o.ClickSecret != "" {
		kr, err := clicktoken.ParseKeyring(o.ClickSecret)
		if err != nil {
			return nil, fmt.Errorf("click secret: %w", err)
		}
		r.keys = kr
	}
	if o.Client != nil {
		// Never follow a click's redirect: the landing page is someone else's server.
		c := *o.Client
		c.CheckRedirect = noRedirect
		r.client = &c
	} else {
		conns := o.MaxInFlight
		if o.Rate == 0 {
			conns = o.Concurrency
		}
		r.client = newHTTPClient(conns + 16)
	}
	a, err := newAPI(o.Target, o.MetricsURL, o.AdminKey, r.client)
	if err != nil {
		return nil, err
	}
	r.api = a
	return r, nil
}

// newHTTPClient never follows redirects: a 302 is the answer to a click, not a place to go.
func newHTTPClient(conns int) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        conns,
			MaxIdleConnsPerHost: conns,
			IdleConnTimeout:     30 * time.Second,
			DisableCompression:  true,
		},
		CheckRedirect: noRedirect,
	}
}

func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

func (r *runner) logf(format string, args ...any) {
	if r.o.Progress != nil {
		fmt.Fprintf(r.o.Progress, "loadgen: "+format+"\n", args...)
	}
}

// prepare checks the target, sets up the catalog and measures the baseline.
func (r *runner) prepare(ctx context.Context) error {
	if !r.o.AllowRemote {
		for _, t := range []string{r.o.Target, r.o.MetricsURL} {
			if err := checkLoopback(ctx, t); err != nil {
				return err
			}
		}
	}
	lay := r.o.Layout
	if r.o.Setup {
		t0 := time.Now()
		if err := r.api.setup(ctx, lay, r.o.DailyBudgetMicros); err != nil {
			return fmt.Errorf("setup: %w", err)
		}
		r.logf("setup: %d advertisers, %d campaigns, %d ads in %v", lay.Advertisers, lay.Campaigns, lay.Ads, time.Since(t0).Round(time.Millisecond))
	}
	if err := r.api.preflight(ctx, lay); err != nil {
		return err
	}
	if r.o.Check != CheckOff {
		switch err := r.measureBaseline(ctx); {
		case err == nil:
		case r.o.Check == CheckOn:
			return fmt.Errorf("baseline: %w", err)
		case errors.Is(err, errNoMetrics):
			r.skipCheck = err.Error()
			r.logf("check will be skipped: %v", err)
		default:
			// The load is still worth running; the check reports the error.
			r.baselineErr = err
			r.logf("baseline failed, the check will fail: %v", err)
		}
	}
	return nil
}

// A request is late when it is handed to a worker more than this after its intended send
// time: the in-flight bound was reached, or the client ran out of CPU.
const lateAfter = 5 * time.Millisecond

// traffic sends the load and records it.
func (r *runner) traffic(ctx context.Context) {
	r.started = time.Now()
	base := floorDiv(r.started.Unix(), 60) - int64(r.o.Model.Lateness/time.Minute) - 5
	r.ledger = newLedger(base)
	r.gen = newGenerator(r.o.Seed, r.o.Model, r.o.Layout, r.keys, r.ledger, r.o.RunID, time.Now)
	mode := fmt.Sprintf("open model, %g requests/s, at most %d in flight", r.o.Rate, r.o.MaxInFlight)
	if r.o.Rate == 0 {
		mode = fmt.Sprintf("closed model, %d workers", r.o.Concurrency)
	}
	r.logf("run %s, seed %d: %s for %v against %s", r.o.RunID, r.o.Seed, mode, r.o.Duration, r.o.Target)

	stopProgress := r.startProgress()
	if r.o.Rate > 0 {
		r.openLoop(ctx)
	} else {
		r.closedLoop(ctx)
	}
	stopProgress()
	r.finished = time.Now()
}

type job struct {
	req      *request
	intended time.Time
}

// openLoop sends request i at start + i/rate, whatever the answers do. Latency counts from
// that intended time, so a stalled server shows in the percentiles instead of silently
// slowing the load (no coordinated omission).
func (r *runner) openLoop(ctx context.Context) {
	start := time.Now().Add(10 * time.Millisecond)
	end := start.Add(r.o.Duration)
	total := int64(r.o.Duration.Seconds() * r.o.Rate)
	if r.o.Requests > 0 {
		// A fixed count: every request is sent on the schedule, however late a loaded
		// machine makes it, so the run's content does not depend on the machine's speed.
		total, end = r.o.Requests, start.Add(24*time.Hour)
	}
	nsPer := float64(time.Second) / r.o.Rate
	work := make(chan job)
	var wg sync.WaitGroup
	for range r.o.MaxInFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				r.exec(ctx, j.req, j.intended)
			}
		}()
	}
	endTimer := time.NewTimer(time.Until(end))
	defer endTimer.Stop()
	sleep := time.NewTimer(time.Hour)
	defer sleep.Stop()
loop:
	for i := int64(0); i < total; i++ {
		t := start.Add(time.Duration(float64(i) * nsPer))
		if d := time.Until(t); d > 0 {
			sleep.Reset(d)
			select {
			case <-sleep.C:
			case <-ctx.Done():
				r.st.unsent.Add(total - i)
				break loop
			}
		}
		j := job{req: r.gen.next(), intended: t}
		select {
		case work <- j:
		default:
			r.st.blocked.Add(1)
			select {
			case work <- j:
			case <-ctx.Done():
				r.st.unsent.Add(total - i)
				break loop
			case <-endTimer.C:
				r.st.unsent.Add(total - i)
				break loop
			}
		}
		if time.Since(t) > lateAfter {
			r.st.late.Add(1)
		}
	}
	r.sendEnd = time.Now()
	close(work)
	wg.Wait()
}

// closedLoop runs Concurrency workers that each send the next request as soon as their
// previous one was answered, until Duration is over or Requests were sent.
func (r *runner) closedLoop(ctx context.Context) {
	end := time.Now().Add(r.o.Duration)
	var sent atomic.Int64
	var wg sync.WaitGroup
	for range r.o.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && time.Now().Before(end) {
				if r.o.Requests > 0 && sent.Add(1) > r.o.Requests {
					return
				}
				r.genMu.Lock()
				req := r.gen.next()
				r.genMu.Unlock()
				r.exec(ctx, req, time.Now())
			}
		}()
	}
	wg.Wait()
	r.sendEnd = time.Now()
}

// exec sends one request and records its outcome in the ledger and the stats.
func (r *runner) exec(ctx context.Context, req *request, intended time.Time) {
	r.st.inflight.Add(1)
	defer r.st.inflight.Add(-1)
	ctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	defer cancel()

	var (
		method = http.MethodPost
		u      string
		ctype  string
		auth   bool
	)
	switch req.kind {
	case KindPixel, KindClick:
		select {
		case <-req.tok.done:
		case <-ctx.Done():
		}
		tok := ""
		select {
		case <-req.tok.done:
			tok = req.tok.tok
		default:
		}
		if tok == "" {
			r.st.record(req, intended, time.Now(), "no_token", false)
			return
		}
		method = http.MethodGet
		if req.kind == KindPixel {
			u = r.o.Target + "/i/" + tok
		} else {
			u = r.o.Target + "/c/" + tok
		}
	case KindAppClick:
		u, ctype = r.o.Target+"/click", "application/json"
	case KindEvents:
		u, ctype, auth = r.o.Target+"/events", "application/x-ndjson", true
	case KindClickURL:
		u, ctype, auth = r.o.Target+"/api/v1/click-urls", "application/json", true
	}
	var body io.Reader
	if req.body != nil {
		body = bytes.NewReader(req.body)
	}
	hreq, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		r.st.record(req, intended, time.Now(), "bad_request", false)
		if req.tok != nil && req.kind == KindClickURL {
			req.tok.set("")
		}
		return
	}
	hreq.Header.Set("User-Agent", req.ua)
	if ctype != "" {
		hreq.Header.Set("Content-Type", ctype)
	}
	if auth {
		hreq.Header.Set("Authorization", "Bearer "+r.o.AdminKey)
	}
	var before []uint8
	if len(req.lines) > 0 {
		before = make([]uint8, len(req.lines))
		r.ledger.begin(req.lines, time.Now(), before)
	}
	resp, err := r.client.Do(hreq)
	var answer []byte
	if err == nil {
		answer, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
	}
	done := time.Now()
	if err != nil {
		key := "conn_error"
		var ne net.Error
		if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
			key = "timeout"
		} else if errors.Is(err, context.Canceled) {
			key = "canceled"
		}
		if len(req.lines) > 0 {
			r.ledger.finish(req.lines, before, outUnknown, done, nil)
		}
		if req.kind == KindClickURL {
			req.tok.set("")
		}
		r.st.record(req, intended, done, key, false)
		return
	}
	status := strconv.Itoa(resp.StatusCode)
	out := outNotRecorded
	switch {
	case resp.StatusCode >= 500:
		out = outUnknown
	case resp.StatusCode < 400:
		out = outAcked
	}
	ok := false
	switch req.kind {
	case KindPixel:
		ok = resp.StatusCode == http.StatusOK
	case KindClick, KindAppClick:
		ok = resp.StatusCode == http.StatusFound
	case KindClickURL:
		tok := ""
		if resp.StatusCode == http.StatusOK {
			tok = tokenFromClickURL(answer)
		}
		if ok = tok != ""; !ok && resp.StatusCode == http.StatusOK {
			status = "bad_response"
		}
		req.tok.set(tok)
	case KindEvents:
		if resp.StatusCode == http.StatusOK {
			ok = r.finishBatch(req, before, answer, done)
			if !ok {
				status = "bad_response"
			}
			r.st.record(req, intended, done, status, ok)
			return
		}
	}
	if len(req.lines) > 0 {
		if out == outAcked && !ok { // a 2xx/3xx that is not the contract's answer: unknown
			out = outUnknown
		}
		r.ledger.finish(req.lines, before, out, done, nil)
		if ok {
			r.st.eventsAcked.Add(int64(len(req.lines)))
		}
	}
	r.st.record(req, intended, done, status, ok)
}

// tokenFromClickURL takes the token out of a click-urls answer: the last path element of
// click_url (whose host is the server's public URL, which need not be our target).
func tokenFromClickURL(answer []byte) string {
	var resp struct {
		ClickURL string `json:"click_url"`
	}
	if json.Unmarshal(answer, &resp) != nil {
		return ""
	}
	u, err := url.Parse(resp.ClickURL)
	if err != nil {
		return ""
	}
	i := strings.LastIndex(u.Path, "/c/")
	if i < 0 {
		return ""
	}
	return u.Path[i+len("/c/"):]
}

type eventsAnswer struct {
	Accepted   int `json:"accepted"`
	Duplicates int `json:"duplicates"`
	Rejected   int `json:"rejected"`
	Errors     []struct {
		Line int `json:"line"`
	} `json:"errors"`
}

// finishBatch records a 200 answer to POST /events. Every accepted or duplicate line is
// acknowledged; listed rejected lines are not. It reports false when the answer is not the
// contract's (then every line is treated as possibly recorded).
func (r *runner) finishBatch(req *request, before []uint8, answer []byte, done time.Time) bool {
	var a eventsAnswer
	n := len(req.lines)
	if err := json.Unmarshal(answer, &a); err != nil || a.Accepted < 0 || a.Duplicates < 0 || a.Rejected < 0 ||
		a.Accepted+a.Duplicates+a.Rejected != n || len(a.Errors) > a.Rejected {
		r.ledger.finish(req.lines, before, outUnknown, done, nil)
		return false
	}
	rejected := make(map[int]bool, len(a.Errors))
	for _, e := range a.Errors {
		rejected[e.Line-1] = true
	}
	r.st.addLines(n, a.Accepted, a.Duplicates, a.Rejected)
	if len(rejected) < a.Rejected {
		// More lines were rejected than listed: which of the others were acknowledged is
		// unknown, so they may or may not count.
		r.ledger.finish(req.lines, before, outUnknown, done, func(i int) bool { return rejected[i] })
		return true
	}
	mustAccept, mustDup := r.ledger.finish(req.lines, before, outAcked, done, func(i int) bool { return rejected[i] })
	if a.Accepted < mustAccept {
		r.st.falseDuplicates.Add(int64(mustAccept - a.Accepted))
	}
	if a.Duplicates < mustDup {
		r.st.doubleAccepts.Add(int64(mustDup - a.Duplicates))
	}
	r.st.eventsAcked.Add(int64(a.Accepted + a.Duplicates))
	return true
}

// startProgress prints a line every ProgressEvery until the returned func is called.
func (r *runner) startProgress() (stop func()) {
	if r.o.Progress == nil || r.o.ProgressEvery <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(r.o.ProgressEvery)
		defer t.Stop()
		var lastDone int64
		last := time.Now()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				p := r.st.progress()
				rate := float64(p.completed-lastDone) / now.Sub(last).Seconds()
				lastDone, last = p.completed, now
				r.logf("%5.0fs  done %d (%.0f/s)  in flight %d  errors %d  late %d  p50 %s  p99 %s  max %s",
					now.Sub(r.started).Seconds(), p.completed, rate, r.st.inflight.Load(), p.errors, r.st.late.Load(),
					fmtMicros(p.p50), fmtMicros(p.p99), fmtMicros(p.max))
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}
