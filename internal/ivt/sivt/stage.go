// Package sivt is the behavioural invalid-traffic stage of the pipeline (sophisticated
// invalid traffic, in the IAB/MRC sense): rules that need history, decided in the stream.
// Ingest's general rules (internal/ivt) judge one request; these judge a click by what came
// before it:
//
//   - flood_user, flood_ip, flood_device: more clicks from one user id, source address or
//     device within a window than a person makes;
//   - no_impression: a click on an ad whose impressions are tracked (it had one within the
//     impression window) with no impression of its impression id;
//   - too_fast: a click sooner after its impression than a person can click;
//   - many_ads: one source (user id, else address) clicking more distinct ads within a window
//     than a person browsing does.
//
// A flood or many_ads rule fires on the click that crosses its limit, and then also flags the
// earlier clicks of that source within the window ("late" verdicts): those were charged when
// billing consumed them, so the stage credits every flagged click back through billing's
// refund (Refunder) and keeps an audit trail per advertiser (Credits). In the metric store it
// moves each flagged click from clicks to invalid_clicks under the rule's reason, at the
// click's event-time minute.
//
// # Invariants
//
//   - Deterministic on replay. The stage consumes every partition in one merged order (append
//     time, partition, offset) and only messages appended at least Holdback ago, so the order
//     does not depend on read timing. The rules' state is a function of the set of events
//     received within the longest window of the latest one (plus which of them have a
//     verdict), never of the order they came in: a restarted stage rebuilds it by reading the
//     log again from that far back (and the duplicate filter's span), and decides as a stage
//     that never stopped would. A new stage starts at the rules' span before the clock and
//     commits that point before judging, so a restart never moves it.
//   - Each click is judged once and moved once. A round's verdicts, credits, metric journal
//     entry and consumed offsets are one Pebble batch committed with sync; a click whose key
//     has a verdict is never flagged again. Clicks that reached the log twice are dropped by
//     the same per-partition dedup.Window the aggregation uses, so the stage moves only clicks
//     the aggregation counted.
//   - The metric store sees each move once: the journal is applied in seq order as consumer
//     Consumer ("ivt") on the virtual partition JournalPartition, whose fence refuses an entry
//     twice (the scheme of internal/billing).
//   - Every flagged click is credited back exactly once: the credit is pending until billing
//     has charged the click (a click the stage saw first is retried) and billing's refund is
//     idempotent, so a crash between the refund and the record only repeats a no-op.
//
// Memory. Per source (a user id, address or device with a click within a rule's window), each
// rule window holds at most 4×limit receive times (8 bytes each), a many_ads window also the
// 4×limit ads clicked last (16 bytes each), and both the source's clicks without a verdict,
// which a late verdict may still flag: a 4-byte index per window into one slab of 24-byte
// click records, and the click's key in a byte arena (ads, campaigns and advertisers are
// interned to integer ids). A window is one small object and one pointer-free buffer; the
// records and keys are pointer-free slabs, so the garbage collector does not scan what the
// rules hold per click. Once a source is over a flood limit
// each of its clicks gets its verdict on arrival and keeps no record, so the windows of a
// flood of a million clicks hold what those of a source at its limit hold: O(limit), not
// O(clicks) (the repeat check below still keeps each click's key hash for the span). (Without the flood
// rule of its many_ads source, a source clicking few ads keeps the record of every click in
// the many_ads window.) A source within the limits holds its clicks' records until they leave
// the longest window (many_ads, 10 minutes by default): BenchmarkHeldBytesPerClick measures
// 104 bytes per click for sources that click often and 173 for ivtgen's people, who click
// twice or so each and pay for their windows. Besides: 16 bytes per click key of the rules'
// span (the repeat check, by 64-bit hash), about 48 per impression of the impression window,
// and the duplicate filter (see dedup.Window).
//
// Evidence counts are exact up to 4×limit; beyond, count is 4×limit, meaning "at least", and
// first_click_time is that of the oldest click counted (of the newest 4×limit).
package sivt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/adpulse/adpulse/internal/dedup"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/pebbleutil"
	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/vfs"
)

// DefaultConsumer is the metric store consumer name the stage's moves are committed under.
const DefaultConsumer = "ivt"

// JournalPartition is the virtual partition of the stage's journal in the metric store's
// checkpoint of its consumer.
const JournalPartition int32 = math.MaxInt32

// ErrNotCharged is what a Refunder returns for a click it has no ledger entry for (yet).
var ErrNotCharged = errors.New("sivt: click not charged yet")

// ErrClosed is returned after Close.
var ErrClosed = errors.New("sivt: closed")

// Refunder credits a click back (billing's refund). It must be idempotent: a repeat returns
// AlreadyRefunded and credits nothing.
type Refunder interface {
	Refund(ctx context.Context, id string, reason event.Reason) (RefundResult, error)
}

// RefundResult is what a refund did.
type RefundResult struct {
	RefundedMicros  int64
	AlreadyRefunded bool
}

// Options configure a Stage. Dir, Log, Metrics and Refunder are required.
type Options struct {
	Dir      string
	Log      eventlog.Log
	Metrics  metricstore.Store
	Refunder Refunder
	Rules    Rules
	Consumer string // default "ivt"
	// DedupSpan and Slack are the duplicate filter's (--stream-dedup-window and ingest's hold
	// bound); defaults 24h and 5s. A negative DedupSpan turns the filter off.
	DedupSpan, Slack time.Duration
	// Holdback: a message is processed once it was appended this long ago (default 1s), so
	// that no message with an earlier append time can still arrive in another partition.
	Holdback time.Duration
	// ReadBytes bounds one read of one partition (default 1 MiB); PollInterval is the pause
	// when caught up (default 50ms); RefundInterval the pause between retries of pending
	// credits (default 1s); BackendTimeout bounds a refund or metric store call (default 5s).
	ReadBytes                                    int
	PollInterval, RefundInterval, BackendTimeout time.Duration
	FS                                           vfs.FS
	Now                                          func() time.Time
	Logger                                       *slog.Logger
}

func (o *Options) setDefaults() {
	if o.Consumer == "" {
		o.Consumer = DefaultConsumer
	}
	if o.Rules == (Rules{}) {
		o.Rules = DefaultRules()
	}
	if o.DedupSpan == 0 {
		o.DedupSpan = 24 * time.Hour
	}
	if o.Slack <= 0 {
		o.Slack = 5 * time.Second
	}
	if o.Holdback <= 0 {
		o.Holdback = time.Second
	}
	if o.ReadBytes <= 0 {
		o.ReadBytes = 1 << 20
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 50 * time.Millisecond
	}
	if o.RefundInterval <= 0 {
		o.RefundInterval = time.Second
	}
	if o.BackendTimeout <= 0 {
		o.BackendTimeout = 5 * time.Second
	}
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Stats are the stage's counters since Open, for Prometheus.
type Stats struct {
	EventsConsumed, Corrupt, Duplicates int64
	ClicksJudged                        int64
	Flagged                             map[event.Reason]int64 // verdicts by reason, late ones included
	Late                                int64                  // verdicts on clicks processed before the rule fired
	CreditsPending                      int64                  // flagged clicks not yet credited back
	Credits, MicrosCredited             int64
	RefundErrors                        int64
	JournalNext, JournalApplied         uint64
	MetricApplyErrors                   int64
	// Held by the rules: windows (one per source and rule), the receive times and distinct
	// ads they count and their references to clicks without a verdict (these three as of
	// the last sweep, each flood window of event time), click keys and impressions.
	Sources, Times, Ads, PendingClicks, ClickKeys, Impressions int
	Lag                                                        int64
}

// Stage is the behavioural invalid-traffic stage. It is safe for concurrent use.
type Stage struct {
	opts Options
	db   *pebble.DB

	life   sync.RWMutex // held shared by every use of db outside Run, exclusively by Close
	closed bool

	started   atomic.Bool
	abort     chan struct{} // closed by Close
	done      chan struct{} // closed when Run returns
	closeOnce sync.Once
	kickPub   chan struct{}
	kickRef   chan struct{}

	// The writer (Run's consuming goroutine) owns these.
	next        []int64
	st          *state
	dups        []*dedup.Window
	journalNext uint64
	creditNext  uint64

	journalPub atomic.Uint64 // journalNext as committed
	applied    atomic.Uint64 // journal entries below it are in the metric store
	pubMu      sync.Mutex

	mu    sync.Mutex // guards stats and committed
	stats Stats
	lag   int64
}

// Open opens or creates the stage's database in o.Dir and rebuilds the rules' state from the
// log. Run starts judging.
func Open(ctx context.Context, o Options) (*Stage, error) {
	if o.Dir == "" || o.Log == nil || o.Metrics == nil || o.Refunder == nil {
		return nil, errors.New("sivt: Options.Dir, Log, Metrics and Refunder are required")
	}
	o.setDefaults()
	if err := pebbleutil.CreateDir(o.FS, o.Dir, "ivt"); err != nil {
		return nil, err
	}
	db, err := pebble.Open(o.Dir, &pebble.Options{FS: o.FS, FormatMajorVersion: pebble.FormatNewest, Logger: pebbleutil.Logger(o.Logger, "ivt-pebble")})
	if err != nil {
		return nil, fmt.Errorf("open ivt database in %q: %w", o.Dir, err)
	}
	s := &Stage{opts: o, db: db, abort: make(chan struct{}), done: make(chan struct{}), kickPub: make(chan struct{}, 1), kickRef: make(chan struct{}, 1),
		st: newState(o.Rules), stats: Stats{Flagged: map[event.Reason]int64{}}}
	if err := s.load(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

func (s *Stage) load(ctx context.Context) error {
	parts := s.opts.Log.Partitions()
	s.next = make([]int64, parts)
	var err error
	if s.journalNext, err = getUint(s.db, keyJournalNext); err != nil {
		return err
	}
	if s.creditNext, err = getUint(s.db, keyCreditNext); err != nil {
		return err
	}
	s.journalPub.Store(s.journalNext)
	started := s.db.NewBatch()
	defer started.Close()
	for p := range parts {
		start, end, err := s.opts.Log.Offsets(ctx, p)
		if err != nil {
			return fmt.Errorf("offsets of partition %d: %w", p, err)
		}
		next, ok, err := getUintOK(s.db, offsetKey(p))
		if err != nil {
			return err
		}
		if !ok {
			// A new stage judges the recent past only: flagging (and refunding) a whole
			// history at the first start of an upgraded deployment would surprise everyone.
			from := s.opts.Now().Add(-s.opts.Rules.span())
			off, err := s.opts.Log.OffsetForTime(ctx, p, from)
			if err != nil {
				return fmt.Errorf("sivt: partition %d: %w", p, err)
			}
			next = uint64(max(off, start))
			// The starting point depends on the clock: commit it before judging anything,
			// or a stage restarted before its first round would start later (and never
			// judge the clicks in between) instead of deciding as one that never stopped.
			if err := setUint(started, offsetKey(p), next); err != nil {
				return err
			}
		}
		if int64(next) < start || int64(next) > end {
			return fmt.Errorf("sivt: partition %d: committed offset %d is outside the log's [%d, %d]: %w", p, next, start, end, eventlog.ErrOffsetOutOfRange)
		}
		s.next[p] = int64(next)
	}
	if !started.Empty() {
		if err := started.Commit(pebble.Sync); err != nil {
			return fmt.Errorf("commit ivt starting offsets: %w", err)
		}
	}
	if err := s.rebuild(ctx); err != nil {
		return err
	}
	pending, err := countPrefix(s.db, prefixPending)
	if err != nil {
		return err
	}
	s.stats.CreditsPending = pending

	cp, err := s.opts.Metrics.Checkpoint(ctx, s.opts.Consumer)
	if err != nil {
		return fmt.Errorf("read metric store checkpoint of %s: %w", s.opts.Consumer, err)
	}
	first, err := firstSeq(s.db, prefixJournal, s.journalNext)
	if err != nil {
		return err
	}
	applied, ok := cp.Offsets[JournalPartition]
	switch {
	case !ok:
		s.applied.Store(first)
	case applied < 0 || uint64(applied) > s.journalNext:
		return fmt.Errorf("sivt: the metric store has applied journal entries up to %d but this database has written only %d: the data does not belong to this metric store", applied, s.journalNext)
	case uint64(applied) < first:
		return fmt.Errorf("sivt: the metric store needs journal entry %d but the oldest left is %d", applied, first)
	default:
		s.applied.Store(uint64(applied))
	}
	return nil
}

// rebuild feeds the duplicate filters and the rules the events they must hold: each
// partition from the earliest append time a later decision can look back to, up to its
// committed offset, without deciding anything.
func (s *Stage) rebuild(ctx context.Context) error {
	span, slack := s.opts.DedupSpan.Microseconds(), s.opts.Slack.Microseconds()
	s.dups = make([]*dedup.Window, len(s.next))
	last := make([]int64, len(s.next))
	var lastAll int64
	for p, next := range s.next {
		if s.opts.DedupSpan >= 0 {
			s.dups[p] = dedup.NewWindow(span, slack)
		}
		last[p] = math.MinInt64
		start, _, err := s.opts.Log.Offsets(ctx, p)
		if err != nil {
			return fmt.Errorf("offsets of partition %d: %w", p, err)
		}
		if next <= start {
			continue
		}
		msgs, err := s.opts.Log.Read(ctx, p, next-1, 1)
		if err != nil || len(msgs) == 0 {
			return fmt.Errorf("sivt: read partition %d at %d: %v", p, next-1, err)
		}
		last[p] = msgs[0].Time.UnixMicro()
		lastAll = max(lastAll, last[p])
	}
	rulesFrom := lastAll - s.opts.Rules.span().Microseconds() - 2*slack
	// Clicks one more span back only register their keys (state.repeat looks that far).
	keysFrom := rulesFrom - s.opts.Rules.span().Microseconds() - slack
	var ev event.Event
	for p, next := range s.next {
		if last[p] == math.MinInt64 {
			continue
		}
		from := keysFrom
		if s.dups[p] != nil {
			from = min(from, dedup.ReplayFrom(last[p], span, slack))
		}
		start, _, _ := s.opts.Log.Offsets(ctx, p)
		off, err := s.opts.Log.OffsetForTime(ctx, p, time.UnixMicro(from))
		if err != nil {
			return fmt.Errorf("sivt: partition %d: %w", p, err)
		}
		for off = max(off, start); off < next; {
			msgs, err := s.opts.Log.Read(ctx, p, off, s.opts.ReadBytes)
			if err != nil {
				return fmt.Errorf("sivt: replay partition %d at %d: %w", p, off, err)
			}
			if len(msgs) == 0 {
				return fmt.Errorf("sivt: replay partition %d: log ends at %d, before the committed offset %d", p, off, next)
			}
			for i := range msgs {
				m := &msgs[i]
				if m.Offset >= next {
					break
				}
				off = m.Offset + 1
				if ev.Decode(m.Value) != nil || s.repeat(p, &ev) {
					continue
				}
				if m.Time.UnixMicro() < keysFrom || ev.Invalid != event.ReasonNone {
					continue
				}
				if m.Time.UnixMicro() < rulesFrom {
					if ev.Type == event.TypeClick {
						s.st.seen(&ev)
					}
					continue
				}
				switch ev.Type {
				case event.TypeImpression:
					s.st.impression(&ev)
				case event.TypeClick:
					flagged, err := has(s.db, verdictKey(ev.Key()))
					if err != nil {
						return err
					}
					s.st.click(&ev, flagged, false)
				}
			}
		}
	}
	return nil
}

// repeat passes an event through its partition's duplicate filter.
func (s *Stage) repeat(p int, ev *event.Event) bool {
	if s.dups[p] == nil {
		return false
	}
	k := ev.Key()
	return k != "" && s.dups[p].Observe(hashKey(k), ev.RecvTime)
}

// Run judges until ctx is done and returns nil, or returns the first error of a log read or
// a database commit (what was committed is consistent; a new Stage resumes from it). Metric
// store and refund failures are retried, not returned. Run may be called once.
func (s *Stage) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("sivt: Run called twice")
	}
	defer close(s.done)
	select {
	case <-s.abort:
		return ErrClosed
	default:
	}
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-s.abort:
			cancel(ErrClosed)
		case <-rctx.Done():
		}
	}()
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	for _, f := range []func(context.Context) error{s.runWriter, s.runPublisher, s.runRefunds} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(rctx); err != nil {
				errc <- err
				cancel(err)
			}
		}()
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// Close stops Run (a round not yet committed is replayed at the next start) and releases the
// database.
func (s *Stage) Close() error {
	s.closeOnce.Do(func() { close(s.abort) })
	if s.started.Load() {
		<-s.done
	}
	s.life.Lock()
	defer s.life.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close ivt database: %w", err)
	}
	return nil
}

// read runs f on a snapshot of the committed state.
func (s *Stage) read(f func(r pebble.Reader) error) error {
	s.life.RLock()
	defer s.life.RUnlock()
	if s.closed {
		return ErrClosed
	}
	snap := s.db.NewSnapshot()
	defer snap.Close()
	return f(snap)
}

// Stats returns a snapshot of the counters.
func (s *Stage) Stats() Stats {
	s.mu.Lock()
	st := s.stats
	st.Flagged = make(map[event.Reason]int64, len(s.stats.Flagged))
	for _, r := range Reasons {
		st.Flagged[r] = s.stats.Flagged[r]
	}
	st.Lag = s.lag
	s.mu.Unlock()
	st.JournalNext, st.JournalApplied = s.journalPub.Load(), s.applied.Load()
	return st
}

// Reasons are the reasons the stage gives, in number order.
var Reasons = []event.Reason{event.ReasonFloodUser, event.ReasonFloodIP, event.ReasonFloodDevice,
	event.ReasonNoImpression, event.ReasonTooFast, event.ReasonManyAds}

func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
