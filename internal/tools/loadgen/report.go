package loadgen

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// maxLatencyMicros is the largest latency the histograms hold (longer is clamped).
const maxLatencyMicros = 300_000_000

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(1, maxLatencyMicros, 3) }

type kindStats struct {
	hist               *hdrhistogram.Histogram
	requests, ok, dups int64
	status             map[string]int64
}

// stats collects what the workers measure. Histograms and per-kind counts are under mu;
// the counters the dispatcher and progress line touch are atomic.
type stats struct {
	mu                                    sync.Mutex
	kinds                                 [numKinds]kindStats
	window                                *hdrhistogram.Histogram // every kind, since the last progress line
	completed, errors                     int64
	batches, lines, accepted, dups, rejed int64

	inflight, late, blocked, unsent atomic.Int64
	eventsAcked                     atomic.Int64 // events acknowledged (lines accepted or duplicate, single events answered)
	falseDuplicates, doubleAccepts  atomic.Int64
}

func newStats() *stats {
	s := &stats{window: newHist()}
	for i := range s.kinds {
		s.kinds[i] = kindStats{hist: newHist(), status: make(map[string]int64)}
	}
	return s
}

// record counts one finished request. Latency runs from the intended send time, so it
// includes any wait for a free in-flight slot or for the view's token.
func (s *stats) record(req *request, intended, done time.Time, status string, ok bool) {
	us := min(max(done.Sub(intended).Microseconds(), 1), maxLatencyMicros)
	s.mu.Lock()
	defer s.mu.Unlock()
	k := &s.kinds[req.kind]
	k.requests++
	if ok {
		k.ok++
	} else {
		s.errors++
	}
	if req.dup != dupNone {
		k.dups++
	}
	k.status[status]++
	_ = k.hist.RecordValue(us) // clamped into range: cannot fail
	_ = s.window.RecordValue(us)
	s.completed++
}

func (s *stats) addLines(n, accepted, dups, rejected int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batches++
	s.lines += int64(n)
	s.accepted += int64(accepted)
	s.dups += int64(dups)
	s.rejed += int64(rejected)
}

type progressSnap struct {
	completed, errors int64
	p50, p99, max     int64
}

// progress returns the totals and the latency of the requests since the last call.
func (s *stats) progress() progressSnap {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := progressSnap{completed: s.completed, errors: s.errors, p50: s.window.ValueAtQuantile(50), p99: s.window.ValueAtQuantile(99), max: s.window.Max()}
	s.window.Reset()
	return p
}

func fmtMicros(us int64) string {
	d := time.Duration(us) * time.Microsecond
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", us)
	case d < 10*time.Second:
		return fmt.Sprintf("%.1fms", float64(us)/1000)
	}
	return d.Round(100 * time.Millisecond).String()
}

// Report is the outcome of a run: what was sent, how fast it was answered, what was
// acknowledged and whether /metrics counts exactly that.
type Report struct {
	RunID           string    `json:"run_id"`
	Seed            uint64    `json:"seed"`
	Target          string    `json:"target"`
	LoadModel       string    `json:"load_model"` // "open" or "closed"
	TargetRate      float64   `json:"target_rate"`
	MaxInFlight     int       `json:"max_inflight,omitempty"`
	Concurrency     int       `json:"concurrency,omitempty"`
	DurationSeconds float64   `json:"duration_s"`
	Started         time.Time `json:"started"`
	ElapsedSeconds  float64   `json:"elapsed_s"` // from the first send to the last answer

	Requests        int64   `json:"requests"`
	Throughput      float64 `json:"throughput"`   // answered requests per second
	EventsPerSecond float64 `json:"events_per_s"` // acknowledged events per second
	// Late requests were handed to a worker more than 5ms after their intended time;
	// Blocked of them waited for a free in-flight slot; Unsent were still waiting when the
	// duration ended.
	Late    int64 `json:"late"`
	Blocked int64 `json:"blocked"`
	Unsent  int64 `json:"unsent"`

	Kinds  []KindReport     `json:"kinds"`
	Errors map[string]int64 `json:"errors"` // failed requests by status ("503", "timeout", "no_token", ...)

	Duplicates DuplicatesReport `json:"duplicates"`
	Events     EventsReport     `json:"events"`
	Truth      Truth            `json:"acknowledged"`
	Ingest     IngestReport     `json:"ingest"`
	Check      CheckResult      `json:"check"`
	OK         bool             `json:"ok"`
}

// KindReport is one request kind. Latencies are in microseconds from the intended send time
// and include failed requests; Histogram is the HDR histogram (V2 compressed, base64), for
// merging runs.
type KindReport struct {
	Kind       string           `json:"kind"`
	Requests   int64            `json:"requests"`
	OK         int64            `json:"ok"`
	Errors     int64            `json:"errors"`
	Duplicates int64            `json:"duplicates"` // deliberate repeats: double clicks and client retries
	Status     map[string]int64 `json:"status"`
	Latency    Latency          `json:"latency_us"`
	Histogram  string           `json:"hdr_histogram"`
}

// Latency percentiles in microseconds.
type Latency struct {
	P50  int64   `json:"p50"`
	P90  int64   `json:"p90"`
	P99  int64   `json:"p99"`
	P999 int64   `json:"p999"`
	Max  int64   `json:"max"`
	Mean float64 `json:"mean"`
}

// DuplicatesReport counts what was sent twice on purpose and what the server called a
// duplicate.
type DuplicatesReport struct {
	DoubleClicks     int64 `json:"double_clicks"`
	Retries          int64 `json:"retries"`
	ServerDuplicates int64 `json:"server_duplicates"` // /events lines answered as duplicates
}

// EventsReport sums the POST /events answers.
type EventsReport struct {
	Batches    int64 `json:"batches"`
	Lines      int64 `json:"lines"`
	Accepted   int64 `json:"accepted"`
	Duplicates int64 `json:"duplicates"`
	Rejected   int64 `json:"rejected"`
	LateLines  int64 `json:"late_lines"` // sent with an event_time in the past
}

// IngestReport checks each /events answer against the ledger: a line never sent before (and
// sent by nobody else meanwhile) must be accepted; a line acknowledged before must be a
// duplicate.
type IngestReport struct {
	FalseDuplicates int64 `json:"false_duplicates"` // new lines answered as duplicates: would be lost
	DoubleAccepts   int64 `json:"double_accepts"`   // acknowledged lines accepted again: would count twice
}

func (r *runner) report() *Report {
	rep := &Report{
		RunID: r.o.RunID, Seed: r.o.Seed, Target: r.o.Target, TargetRate: r.o.Rate,
		DurationSeconds: r.o.Duration.Seconds(), Started: r.started.UTC(),
		ElapsedSeconds: r.finished.Sub(r.started).Seconds(),
		Late:           r.st.late.Load(), Blocked: r.st.blocked.Load(), Unsent: r.st.unsent.Load(),
		Errors: make(map[string]int64),
		Truth:  r.truth, Check: r.checkRes,
		Ingest: IngestReport{FalseDuplicates: r.st.falseDuplicates.Load(), DoubleAccepts: r.st.doubleAccepts.Load()},
	}
	if r.o.Rate > 0 {
		rep.LoadModel, rep.MaxInFlight = "open", r.o.MaxInFlight
	} else {
		rep.LoadModel, rep.Concurrency = "closed", r.o.Concurrency
	}
	st := r.st
	st.mu.Lock()
	defer st.mu.Unlock()
	rep.Requests = st.completed
	if rep.ElapsedSeconds > 0 {
		rep.Throughput = float64(st.completed) / rep.ElapsedSeconds
		rep.EventsPerSecond = float64(st.eventsAcked.Load()) / rep.ElapsedSeconds
	}
	for k := range numKinds {
		ks := &st.kinds[k]
		if ks.requests == 0 {
			continue
		}
		h := ks.hist
		kr := KindReport{
			Kind: k.String(), Requests: ks.requests, OK: ks.ok, Errors: ks.requests - ks.ok, Duplicates: ks.dups,
			Status: maps.Clone(ks.status),
			Latency: Latency{P50: h.ValueAtQuantile(50), P90: h.ValueAtQuantile(90), P99: h.ValueAtQuantile(99),
				P999: h.ValueAtQuantile(99.9), Max: h.Max(), Mean: h.Mean()},
		}
		if enc, err := h.Encode(hdrhistogram.V2CompressedEncodingCookieBase); err == nil {
			kr.Histogram = string(enc)
		}
		rep.Kinds = append(rep.Kinds, kr)
		for status, n := range ks.status {
			if !okStatus(k, status) {
				rep.Errors[status] += n
			}
		}
	}
	rep.Events = EventsReport{Batches: st.batches, Lines: st.lines, Accepted: st.accepted, Duplicates: st.dups, Rejected: st.rejed}
	if r.gen != nil {
		rep.Events.LateLines = r.gen.stats.lateLines
		rep.Duplicates = DuplicatesReport{DoubleClicks: r.gen.stats.doubleClicks, Retries: r.gen.stats.retries}
	}
	rep.Duplicates.ServerDuplicates = st.dups
	rep.OK = rep.Check.Status != CheckFailed && rep.Check.Status != CheckError &&
		rep.Ingest.FalseDuplicates == 0 && rep.Ingest.DoubleAccepts == 0
	return rep
}

func okStatus(k Kind, status string) bool {
	switch k {
	case KindClick, KindAppClick:
		return status == "302"
	}
	return status == "200"
}

// WriteText writes the report as a human-readable table.
func (rep *Report) WriteText(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("adpulse loadgen  run %s  seed %d  target %s", rep.RunID, rep.Seed, rep.Target)
	if rep.LoadModel == "open" {
		p("open model: %g requests/s for %gs, at most %d in flight", rep.TargetRate, rep.DurationSeconds, rep.MaxInFlight)
	} else {
		p("closed model: %d workers for %gs", rep.Concurrency, rep.DurationSeconds)
	}
	p("%d requests in %.1fs: %.1f requests/s, %.1f events/s acknowledged; late %d (blocked %d), unsent %d",
		rep.Requests, rep.ElapsedSeconds, rep.Throughput, rep.EventsPerSecond, rep.Late, rep.Blocked, rep.Unsent)
	p("")
	p("%-10s %9s %9s %7s %7s %9s %9s %9s %9s %9s", "kind", "requests", "ok", "errors", "dups", "p50", "p90", "p99", "p99.9", "max")
	for _, k := range rep.Kinds {
		l := k.Latency
		p("%-10s %9d %9d %7d %7d %9s %9s %9s %9s %9s", k.Kind, k.Requests, k.OK, k.Errors, k.Duplicates,
			fmtMicros(l.P50), fmtMicros(l.P90), fmtMicros(l.P99), fmtMicros(l.P999), fmtMicros(l.Max))
	}
	p("")
	if len(rep.Errors) == 0 {
		p("errors by status: none")
	} else {
		var parts []string
		for _, s := range slices.Sorted(maps.Keys(rep.Errors)) {
			parts = append(parts, fmt.Sprintf("%s: %d", s, rep.Errors[s]))
		}
		p("errors by status: %s", strings.Join(parts, ", "))
	}
	e := rep.Events
	p("events: %d batches, %d lines: %d accepted, %d duplicates, %d rejected (%d lines late)", e.Batches, e.Lines, e.Accepted, e.Duplicates, e.Rejected, e.LateLines)
	p("duplicates sent: %d double clicks, %d client retries", rep.Duplicates.DoubleClicks, rep.Duplicates.Retries)
	t := rep.Truth
	p("acknowledged (distinct): %d impressions, %d clicks, %d invalid clicks, %d add_to_cart, %d order on %d ads; %d bot impressions (not counted); %d uncertain",
		t.Impressions, t.Clicks, t.InvalidClicks, t.AddToCart, t.Order, t.AdsTouched, t.BotImpressions, t.Uncertain)
	if rep.Ingest.FalseDuplicates+rep.Ingest.DoubleAccepts > 0 {
		p("INGEST: %d new lines answered as duplicates, %d acknowledged lines accepted again", rep.Ingest.FalseDuplicates, rep.Ingest.DoubleAccepts)
	}
	rep.Check.writeText(w)
}
