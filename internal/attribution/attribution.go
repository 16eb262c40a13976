// Package attribution is the conversion attribution stage of the pipeline: it consumes every
// partition of the event log, remembers each user's valid touches (impressions and clicks,
// with the ad's catalog), and credits every conversion (event.TypeConversion: an order sent
// by a shop's checkout with a user, a catalog and a value, but no ad) to the touch a Policy
// chooses, by default LastTouch: the latest click within the click window before the
// conversion, else the latest view within the view window. Credited conversions and their
// value reach the metric store at the credited ad, campaign and advertiser, in the minute of
// the conversion's time.
//
// # Invariants
//
//   - Deterministic: a conversion's credit is Policy.Choose over the set of the user's
//     touches on the catalog that the log holds (first copy of each touch key in its
//     partition's order), so it depends on what the log holds, not on the order partitions
//     were read in or on crashes. A touch that arrives after a conversion it beats (a late
//     touch; ingest bounds lateness by --max-lateness) moves the credit: the old ad's bucket
//     loses the conversion and the new one gains it, in the conversion's minute, as late
//     events correct old buckets in the rest of the pipeline.
//   - Each conversion once: a conversion is keyed by its event_id (the order id); a second
//     copy in the log is not counted again.
//   - Exactly once across crashes: a round's touches, decisions, consumed log offsets and
//     its journal entry (the round's metric deltas) are one Pebble batch committed with
//     sync. The journal is applied to the metric store in sequence order as consumer
//     "attribute" with the offset range [seq, seq+1) of the virtual partition
//     JournalPartition, so the store's fence refuses an entry twice, and a crash between
//     the two commits loses nothing.
//   - Bounded: at most MaxTouches touches per user and catalog (the oldest goes first), and
//     touches are forgotten once no conversion the pipeline can still accept may be
//     credited to them (older than the policy's horizon plus the accepted lateness);
//     decisions are kept for ConversionRetention, for the explanation API.
//
// # Scale-out
//
// The log is partitioned by ad id (conversions by user id), so one user's touches are spread
// over every partition. Embedded, one stage reads all partitions. With several process nodes
// (Shared), the owner of each log partition republishes its touches to a touches topic keyed
// by user, and runs a stage over its partition's conversions and the touches topic's
// partition of the same number, so all of a user's touches and conversions meet in one stage
// that decides with this same code (partition.go: its state is rebuilt from the log on every
// takeover, and its commits carry their offsets and the partition's epoch).
package attribution

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/pebbleutil"
	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/vfs"
)

// DefaultConsumer is the metric store consumer name conversions are committed under.
const DefaultConsumer = "attribute"

// JournalPartition is the virtual partition of the journal in the metric store's checkpoint
// of the consumer: its offset is the next journal entry to apply.
const JournalPartition int32 = math.MaxInt32

// Options configure a Stage. Dir, Log and Metrics are required.
type Options struct {
	Dir     string
	Log     eventlog.Log
	Metrics metricstore.Store
	// Policy chooses the credited touch (default LastTouch with DefaultWindows).
	Policy Policy
	// Consumer is the metric store consumer name (default "attribute").
	Consumer string
	// MaxLateness is how late an event may arrive (ingest's --max-lateness, default 1h);
	// with Slack it decides how long touches and conversions must be remembered.
	MaxLateness time.Duration
	// Slack is how far append times may run out of order between partitions (default 5s).
	Slack time.Duration
	// MaxTouches bounds the touches remembered per user and catalog (default 64).
	MaxTouches int
	// ConversionRetention is how long decisions are kept for GET /api/v1/conversions
	// (default 30 days, never less than what late touches need).
	ConversionRetention time.Duration
	ReadBytes           int // one read of one partition (default 1 MiB)
	// CacheBytes is Pebble's block cache (default 64 MiB): every event seeks the user's
	// touches, and a cache smaller than the hot users' blocks decompresses one per seek.
	CacheBytes   int64
	PollInterval time.Duration // pause when caught up (default 20ms)
	// FS is the file system; nil means the operating system's.
	FS     vfs.FS
	Logger *slog.Logger

	hooks *testHooks
}

func (o *Options) setDefaults() {
	if o.Policy == nil {
		o.Policy = LastTouch{}
	}
	if o.Consumer == "" {
		o.Consumer = DefaultConsumer
	}
	if o.MaxLateness <= 0 {
		o.MaxLateness = time.Hour
	}
	if o.Slack <= 0 {
		o.Slack = 5 * time.Second
	}
	if o.MaxTouches <= 0 {
		o.MaxTouches = 64
	}
	if o.ConversionRetention <= 0 {
		o.ConversionRetention = 30 * 24 * time.Hour
	}
	o.ConversionRetention = max(o.ConversionRetention, o.MaxLateness+o.Slack+o.Policy.Horizon())
	if o.ReadBytes <= 0 {
		o.ReadBytes = 1 << 20
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 20 * time.Millisecond
	}
	if o.CacheBytes <= 0 {
		o.CacheBytes = 64 << 20
	}
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// testHooks let crash tests fail the stage at chosen points; an error ends Run as a crash.
type testHooks struct {
	beforeCommit func() error // the round's batch is built, not committed
	afterCommit  func() error // committed, journal not yet applied
	afterApply   func() error // applied, applied-counter not yet advanced
}

// Sentinel errors.
var (
	ErrNotFound = errors.New("attribution: not found")
	ErrClosed   = errors.New("attribution: closed")
	// ErrJournalGap: the metric store's checkpoint of the consumer points at journal entries
	// the database no longer has (the two were restored from different moments). Applying
	// anything would count conversions twice or never, so Run stops.
	ErrJournalGap = errors.New("attribution: the metric store and the attribution database are from different moments")
)

// Stats are the stage's counters since Open, for Prometheus.
type Stats struct {
	EventsConsumed       int64
	Corrupt              int64
	Touches              int64 // touches remembered
	DuplicateTouches     int64 // a touch key the user's catalog already held
	TouchesEvicted       int64 // dropped for MaxTouches
	TouchesExpired       int64 // forgotten past the horizon
	Conversions          int64 // distinct conversions decided
	DuplicateConversions int64
	CreditedClick        int64
	CreditedView         int64
	Uncredited           int64
	Reattributed         int64 // credits moved by a late touch
	ConversionsExpired   int64
	Commits              int64
	JournalNext          uint64
	JournalApplied       uint64
	MetricApplyErrors    int64
	LastRoundMicros      int64 // processing time of the last round, commit included
	DiskBytes            uint64
	Partitions           []PartitionStats
}

// PartitionStats describe one log partition (in shared processing, Touches marks a
// partition of the touches topic).
type PartitionStats struct {
	Partition int
	Touches   bool
	Committed int64
	End       int64
	Lag       int64
}

// Stage is the attribution stage. Run processes the log; Conversion reads decisions.
type Stage struct {
	o  Options
	db *pebble.DB

	// src are the log partitions the stage reads: embedded, every partition of Log (source i
	// is partition i); shared, its partition's conversions and its touches (shared.go).
	src []source
	sh  *sharedMode // nil embedded

	// Owned by Run (and Open before it). next and got are indexed like src.
	next        []int64
	journalNext uint64
	applied     uint64
	clock       int64     // the latest append time seen in the log (not the touches topic), Unix microseconds
	lagAt       time.Time // when lag was last read (at most once a second: Kafka asks the brokers)
	refs        []msgRef
	got         [][]eventlog.Message
	ev          event.Event

	mu     sync.Mutex
	stats  Stats
	closed bool
}

type msgRef struct{ part, i int }

// Open opens (or creates) the stage's database and reads where it left off.
func Open(ctx context.Context, o Options) (*Stage, error) {
	if o.Dir == "" || o.Log == nil || o.Metrics == nil {
		return nil, errors.New("attribution: Dir, Log and Metrics are required")
	}
	o.setDefaults()
	db, err := openDB(&o)
	if err != nil {
		return nil, err
	}
	srcs := make([]source, o.Log.Partitions())
	for p := range srcs {
		srcs[p] = source{log: o.Log, part: p}
	}
	s := newStage(o, db, srcs)
	if err := s.load(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// openDB creates o.Dir if needed and opens the Pebble database in it.
func openDB(o *Options) (*pebble.DB, error) {
	if err := pebbleutil.CreateDir(o.FS, o.Dir, "attribution"); err != nil {
		return nil, err
	}
	cache := pebble.NewCache(o.CacheBytes)
	defer cache.Unref()
	db, err := pebble.Open(o.Dir, &pebble.Options{FS: o.FS, FormatMajorVersion: pebble.FormatNewest, Cache: cache, Logger: pebbleutil.Logger(o.Logger, "attribution-pebble")})
	if err != nil {
		return nil, fmt.Errorf("attribution: open %s: %w", o.Dir, err)
	}
	return db, nil
}

func newStage(o Options, db *pebble.DB, srcs []source) *Stage {
	return &Stage{o: o, db: db, src: srcs, next: make([]int64, len(srcs)), got: make([][]eventlog.Message, len(srcs))}
}

// source is one log partition the stage reads, and which of its events it takes.
type source struct {
	log  eventlog.Log
	part int
	only sourceKind
}

type sourceKind uint8

const (
	takeAll         sourceKind = iota // touches and conversions (embedded)
	takeConversions                   // a main log partition in shared processing
	takeTouches                       // a partition of the touches topic
)

func (s *Stage) load(ctx context.Context) error {
	for p := range s.next {
		v, ok, err := s.get(offsetKey(p))
		if err != nil {
			return err
		}
		if ok {
			d := dec{b: v}
			s.next[p] = d.num()
			if d.err != nil {
				return fmt.Errorf("attribution: offset of partition %d: %w", p, d.err)
			}
			continue
		}
		start, _, err := s.src[p].log.Offsets(ctx, s.src[p].part)
		if err != nil {
			return fmt.Errorf("attribution: offsets of partition %d: %w", p, err)
		}
		s.next[p] = start
	}
	v, ok, err := s.get([]byte(keyJournalNext))
	if err != nil {
		return err
	}
	if ok {
		d := dec{b: v}
		s.journalNext = uint64(d.num())
	}
	cp, err := s.o.Metrics.Checkpoint(ctx, s.o.Consumer)
	if err != nil {
		return fmt.Errorf("attribution: metric store checkpoint: %w", err)
	}
	s.applied = uint64(cp.Offsets[JournalPartition])
	if s.applied > s.journalNext {
		return fmt.Errorf("attribution: the metric store has journal entries up to %d, the database only %d (was the database replaced?)", s.applied, s.journalNext)
	}
	s.stats.JournalNext, s.stats.JournalApplied = s.journalNext, s.applied
	return nil
}

// get reads a committed key.
func (s *Stage) get(k []byte) ([]byte, bool, error) {
	v, closer, err := s.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("attribution: read: %w", err)
	}
	defer closer.Close()
	return slices.Clone(v), true, nil
}

// Run consumes the log until ctx ends or a step fails.
func (s *Stage) Run(ctx context.Context) error {
	const minBackoff, maxBackoff = 50 * time.Millisecond, 5 * time.Second
	backoff := minBackoff
	timer := time.NewTimer(0)
	defer timer.Stop()
	for ctx.Err() == nil {
		wait := s.o.PollInterval
		n, err := s.round(ctx)
		var ae applyError
		switch {
		case err == nil:
		case ctx.Err() != nil:
			return nil
		case errors.As(err, &ae) && !errors.Is(err, metricstore.ErrConflict):
			// Shared: the round was not committed anywhere; it is read and decided again.
			s.mu.Lock()
			s.stats.MetricApplyErrors++
			s.mu.Unlock()
			s.o.Logger.Warn("attribution: committing conversions to the metric store failed; retrying", "err", err, "retry_in", backoff)
			timer.Reset(backoff)
			backoff = min(2*backoff, maxBackoff)
			select {
			case <-ctx.Done():
				return nil
			case <-timer.C:
			}
			continue
		default:
			return err
		}
		if err := s.publish(ctx); err != nil {
			var he hookError
			if errors.As(err, &he) || errors.Is(err, ErrJournalGap) {
				return err
			}
			if ctx.Err() != nil {
				return nil
			}
			s.mu.Lock()
			s.stats.MetricApplyErrors++
			s.mu.Unlock()
			s.o.Logger.Warn("attribution: applying conversions to the metric store failed; retrying", "err", err, "retry_in", backoff)
			wait, backoff = backoff, min(2*backoff, maxBackoff)
		} else {
			backoff = minBackoff
			if n > 0 {
				continue
			}
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
	}
	return nil
}

// Close closes the database. Run must have returned.
func (s *Stage) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return s.db.Close()
}

// Stats returns a snapshot of the counters.
func (s *Stage) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Partitions = slices.Clone(s.stats.Partitions)
	if !s.closed {
		st.DiskBytes = s.db.Metrics().DiskSpaceUsage()
	}
	return st
}

// Conversion returns the committed decision of the conversion with this event_id.
func (s *Stage) Conversion(eventID string) (Conversion, error) {
	// Held across the read so that Close cannot close the database under it.
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Conversion{}, ErrClosed
	}
	key := (&event.Event{Type: event.TypeConversion, EventID: eventID}).Key()
	v, ok, err := s.get(conversionKey(key))
	if err != nil {
		return Conversion{}, err
	}
	if !ok {
		return Conversion{}, ErrNotFound
	}
	return decodeConversion(v)
}

// hookError marks a failure injected by a test hook.
type hookError struct{ err error }

func (e hookError) Error() string { return "injected: " + e.err.Error() }
func (e hookError) Unwrap() error { return e.err }

func hook(f func() error) error {
	if f == nil {
		return nil
	}
	if err := f(); err != nil {
		return hookError{err}
	}
	return nil
}

// publish applies every committed journal entry the metric store does not have, in order.
func (s *Stage) publish(ctx context.Context) error {
	const maxEntries = 256
	for s.applied < s.journalNext {
		from, to := s.applied, min(s.journalNext, s.applied+maxEntries)
		var deltas []metricstore.Delta
		for seq := from; seq < to; seq++ {
			v, ok, err := s.get(journalKey(seq))
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("%w: journal entry %d is missing (the store wants entries from %d, the database writes %d next)", ErrJournalGap, seq, from, s.journalNext)
			}
			ds, err := decodeDeltas(v)
			if err != nil {
				return fmt.Errorf("attribution: journal entry %d: %w", seq, err)
			}
			deltas = append(deltas, ds...)
		}
		c := &metricstore.Commit{
			Consumer: s.o.Consumer,
			Ranges:   []metricstore.OffsetRange{{Partition: JournalPartition, From: int64(from), To: int64(to)}},
			Deltas:   mergeDeltas(deltas),
		}
		if err := s.o.Metrics.Apply(ctx, c); err != nil {
			if !errors.Is(err, metricstore.ErrConflict) {
				return fmt.Errorf("attribution: apply journal [%d, %d): %w", from, to, err)
			}
			// Someone (this stage before a crash) applied part of it: resume where the store is.
			cp, cerr := s.o.Metrics.Checkpoint(ctx, s.o.Consumer)
			if cerr != nil {
				return fmt.Errorf("attribution: apply journal [%d, %d): %w; checkpoint: %w", from, to, err, cerr)
			}
			at := uint64(cp.Offsets[JournalPartition])
			if at <= from || at > s.journalNext {
				return fmt.Errorf("attribution: apply journal [%d, %d): %w (the store is at %d)", from, to, err, at)
			}
			to = at
		} else if err := hook(s.o.hooks.afterApplyFn()); err != nil {
			return err
		}
		if err := s.db.DeleteRange(journalKey(from), journalKey(to), pebble.NoSync); err != nil {
			return fmt.Errorf("attribution: drop applied journal: %w", err)
		}
		s.applied = to
		s.mu.Lock()
		s.stats.JournalApplied = to
		s.mu.Unlock()
	}
	return nil
}

func (h *testHooks) afterApplyFn() func() error {
	if h == nil {
		return nil
	}
	return h.afterApply
}

// mergeDeltas sums deltas of the same bucket, in a stable order.
func mergeDeltas(ds []metricstore.Delta) []metricstore.Delta {
	type k struct {
		l      metricstore.Level
		id     string
		minute int64
	}
	idx := make(map[k]int, len(ds))
	var out []metricstore.Delta
	for i := range ds {
		key := k{ds[i].Level, ds[i].ID, ds[i].Minute}
		if j, ok := idx[key]; ok {
			out[j].Counts.Add(&ds[i].Counts)
			continue
		}
		idx[key] = len(out)
		out = append(out, ds[i])
	}
	out = slices.DeleteFunc(out, func(d metricstore.Delta) bool { return d.IsZero() })
	slices.SortFunc(out, func(a, b metricstore.Delta) int {
		if c := cmp.Compare(a.Level, b.Level); c != 0 {
			return c
		}
		if c := cmp.Compare(a.ID, b.ID); c != 0 {
			return c
		}
		return cmp.Compare(a.Minute, b.Minute)
	})
	return out
}
