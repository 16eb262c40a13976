// Package metricstore defines the metric store: where the aggregation stage keeps per-minute
// counts of ads, campaigns and advertisers, and where GET /metrics reads its series.
//
// Data model: for each (level, id, minute bucket) a Counts of additive counters. Writers
// (aggregate now, charging later for spend) send Commits: deltas plus the log offset ranges
// they were computed from. Readers ask for series of ids over a time range at an interval.
//
// Invariants every implementation keeps (the suite in metricstoretest checks them):
//   - Apply is atomic: either all deltas of a Commit and its consumer's new offsets are
//     durable, or none of them is. A crash between Applies loses nothing that was applied.
//   - Apply is fenced: a Commit whose ranges do not start where the consumer's stored offsets
//     end fails with ErrConflict and changes nothing, so replaying a commit (a zombie writer,
//     a retried request) never counts twice.
//   - Counts are sums: applying deltas d1 then d2 reads the same as applying d1+d2, whatever
//     interval or time zone the query uses.
//   - Query returns one series per requested id, in request order, with every bucket of the
//     aligned range present (zeros included), oldest first.
//   - A point is Final only if its end is at or before the FinalBefore of every consumer that
//     declared one; FinalBefore never moves backwards.
//   - A point is Reconciled only if every UTC hour it overlaps was marked by a commit's
//     ReconciledHours and no later commit changed a counter other than spend in that hour
//     (reconciled.go).
package metricstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/adpulse/adpulse/internal/event"
)

// Store is the metric store.
type Store interface {
	// Apply adds c's deltas and records c's offsets for c.Consumer in one atomic, durable
	// write. It fails with ErrConflict if a range's From is not the consumer's stored offset
	// for that partition (a partition never committed before accepts any From). The store
	// does not retain c or anything it points to after Apply returns.
	Apply(ctx context.Context, c *Commit) error
	// Checkpoint returns what consumer has committed: the next offset of each partition
	// (absent partitions were never committed) and its FinalBefore.
	Checkpoint(ctx context.Context, consumer string) (Checkpoint, error)
	// Query returns the series of q.IDs at q.Level: one per id in request order (repeated ids
	// included), every bucket of the aligned range, oldest first, zeros included, each point
	// flagged Final or not. It fails with ErrInvalidQuery for a malformed query and with
	// ErrExpired when the range needs buckets finer than the store keeps for that time.
	Query(ctx context.Context, q Query) (*Result, error)
	// Close releases the store. Apply, Checkpoint and Query fail with ErrClosed after it.
	Close() error
}

// Sentinel errors.
var (
	ErrConflict = errors.New("metricstore: commit does not continue the stored offsets")
	// ErrFenced (which is also an ErrConflict): a writer of a later Commit.Epoch has
	// written the consumer, so this writer has lost it for good.
	ErrFenced       = fmt.Errorf("%w: a writer of a later epoch owns the consumer", ErrConflict)
	ErrClosed       = errors.New("metricstore: closed")
	ErrInvalidQuery = errors.New("metricstore: invalid query")
	ErrInvalidDelta = errors.New("metricstore: invalid delta")
	// ErrExpired: the query needs buckets finer than what the store still keeps for that time
	// (for example 1m buckets older than the minute retention).
	ErrExpired = errors.New("metricstore: range needs buckets past their retention")
)

// Level is what a series is about.
type Level uint8

// Levels. The numbers are stored on disk.
const (
	LevelAd         Level = 1
	LevelCampaign   Level = 2
	LevelAdvertiser Level = 3
)

// Levels lists every level, in order.
var Levels = [...]Level{LevelAd, LevelCampaign, LevelAdvertiser}

func (l Level) String() string {
	switch l {
	case LevelAd:
		return "ad"
	case LevelCampaign:
		return "campaign"
	case LevelAdvertiser:
		return "advertiser"
	}
	return fmt.Sprintf("level(%d)", uint8(l))
}

// Valid reports whether l is one of the three levels.
func (l Level) Valid() bool { return l >= LevelAd && l <= LevelAdvertiser }

// ParseLevel maps "ad", "campaign" and "advertiser" to their Level.
func ParseLevel(s string) (Level, bool) {
	switch s {
	case "ad":
		return LevelAd, true
	case "campaign":
		return LevelCampaign, true
	case "advertiser":
		return LevelAdvertiser, true
	}
	return 0, false
}

// Counts are the additive counters of one bucket. Deltas may be negative (a later verdict
// can take a click or a charge back); stored sums are whatever the deltas add up to.
type Counts struct {
	Impressions int64
	Clicks      int64 // valid clicks only
	// InvalidClicks counts every invalid click; writers keep it equal to the sum of
	// InvalidByReason so the API can show either.
	InvalidClicks   int64
	SpendMicros     int64
	InvalidByReason map[event.Reason]int64 // nil when there are none
	Interactions    map[string]int64       // interaction name -> count; nil when none
	// Conversions credited to the bucket's ads by attribution, counted at the conversion's
	// time, and their value. ViewConversions and ViewConversionValueMicros are the part
	// credited to a view (the rest was credited to a click).
	Conversions               int64
	ConversionValueMicros     int64
	ViewConversions           int64
	ViewConversionValueMicros int64
}

// Add adds d to c.
func (c *Counts) Add(d *Counts) {
	c.Impressions += d.Impressions
	c.Clicks += d.Clicks
	c.InvalidClicks += d.InvalidClicks
	c.SpendMicros += d.SpendMicros
	c.addConversions(d)
	for r, n := range d.InvalidByReason {
		if c.InvalidByReason == nil {
			c.InvalidByReason = make(map[event.Reason]int64, len(d.InvalidByReason))
		}
		c.InvalidByReason[r] += n // the total came with d.InvalidClicks
	}
	for name, n := range d.Interactions {
		c.AddInteraction(name, n)
	}
}

// AddInvalid adds n invalid clicks for reason r (to the total and to the reason).
func (c *Counts) AddInvalid(r event.Reason, n int64) {
	c.InvalidClicks += n
	if c.InvalidByReason == nil {
		c.InvalidByReason = make(map[event.Reason]int64, 2)
	}
	c.InvalidByReason[r] += n
}

// AddInteraction adds n interactions named name.
func (c *Counts) AddInteraction(name string, n int64) {
	if c.Interactions == nil {
		c.Interactions = make(map[string]int64, 2)
	}
	c.Interactions[name] += n
}

// IsZero reports whether every counter is zero (maps may hold zero entries).
func (c *Counts) IsZero() bool {
	if c.Impressions != 0 || c.Clicks != 0 || c.InvalidClicks != 0 || c.SpendMicros != 0 || c.hasConversions() {
		return false
	}
	for _, n := range c.InvalidByReason {
		if n != 0 {
			return false
		}
	}
	for _, n := range c.Interactions {
		if n != 0 {
			return false
		}
	}
	return true
}

// Equal reports whether c and d count the same, treating missing map entries as zero.
func (c *Counts) Equal(d *Counts) bool {
	if c.Impressions != d.Impressions || c.Clicks != d.Clicks || c.InvalidClicks != d.InvalidClicks || c.SpendMicros != d.SpendMicros {
		return false
	}
	if c.Conversions != d.Conversions || c.ConversionValueMicros != d.ConversionValueMicros ||
		c.ViewConversions != d.ViewConversions || c.ViewConversionValueMicros != d.ViewConversionValueMicros {
		return false
	}
	return eqMap(c.InvalidByReason, d.InvalidByReason) && eqMap(c.Interactions, d.Interactions)
}

func (c *Counts) addConversions(d *Counts) {
	c.Conversions += d.Conversions
	c.ConversionValueMicros += d.ConversionValueMicros
	c.ViewConversions += d.ViewConversions
	c.ViewConversionValueMicros += d.ViewConversionValueMicros
}

func (c *Counts) hasConversions() bool {
	return c.Conversions != 0 || c.ConversionValueMicros != 0 || c.ViewConversions != 0 || c.ViewConversionValueMicros != 0
}

func eqMap[K comparable](a, b map[K]int64) bool {
	for k, n := range a {
		if b[k] != n {
			return false
		}
	}
	for k, n := range b {
		if a[k] != n {
			return false
		}
	}
	return true
}

func (c Counts) String() string {
	if c.hasConversions() {
		return fmt.Sprintf("{imp:%d clk:%d inv:%d %v spend:%d int:%v conv:%d/%d view:%d/%d}", c.Impressions, c.Clicks, c.InvalidClicks, c.InvalidByReason, c.SpendMicros, c.Interactions,
			c.Conversions, c.ConversionValueMicros, c.ViewConversions, c.ViewConversionValueMicros)
	}
	return fmt.Sprintf("{imp:%d clk:%d inv:%d %v spend:%d int:%v}", c.Impressions, c.Clicks, c.InvalidClicks, c.InvalidByReason, c.SpendMicros, c.Interactions)
}

// Delta is a change to one minute bucket.
type Delta struct {
	Level  Level
	ID     string
	Minute int64 // bucket start in minutes since the Unix epoch (UTC); must be >= 0
	Counts
}

// OffsetRange says that a commit covers offsets [From, To) of a log partition.
type OffsetRange struct {
	Partition int32
	From, To  int64
}

// Commit is one atomic write of a consumer: the deltas computed from the given offset ranges.
type Commit struct {
	// Consumer names the writer ("aggregate", "charge"); each has its own offsets.
	Consumer string
	Ranges   []OffsetRange
	Deltas   []Delta
	// FinalBefore, if not zero, declares that no later commit of this consumer will touch a
	// bucket that ends at or before it. A value below the stored one is ignored.
	FinalBefore time.Time
	// Epoch is the writer's ownership epoch of the consumer, when writers of one consumer
	// take turns (process nodes sharing the log claim a partition's epoch in the shared
	// SQL database before they write it). A store that keeps epochs refuses a commit whose
	// epoch is below one already written for the consumer (ErrConflict), and treats an
	// unfinished attempt of a lower epoch as dead at once, so a takeover never waits for a
	// crashed writer's lease. 0 for a single writer.
	Epoch uint64
	// ReconciledHours, if any, are UTC hours (since the Unix epoch) whose stored counts,
	// after this commit, were checked against an independent source (the raw archive):
	// their points read Reconciled until a later commit changes them (reconciled.go).
	ReconciledHours []int64
}

// Checkpoint is what a consumer has committed.
type Checkpoint struct {
	Offsets     map[int32]int64 // partition -> next offset to consume
	FinalBefore time.Time
}

// Query asks for series at one level.
type Query struct {
	Level Level
	IDs   []string
	// Start and End bound the range [Start, End). Start is floored and End ceiled to the
	// bucket grid; Result echoes the aligned values.
	Start, End time.Time
	// Interval is a positive whole number of minutes. Buckets are aligned to multiples of it
	// since the Unix epoch in UTC, unless Location is set and Interval is a whole number of
	// days: then buckets start at local midnights of Location (and may be 23 or 25 hours long
	// across a daylight saving change).
	Interval time.Duration
	Location *time.Location
	// OffsetsOf, if set, asks for that consumer's committed offsets as of the snapshot the
	// result is read from (Result.Offsets), so pending counts can be added exactly
	// (pending.go). A store that cannot tell leaves Result.Offsets nil.
	OffsetsOf string
}

// Result is the answer to a Query.
type Result struct {
	Start, End  time.Time // aligned
	Series      []Series  // one per requested id, in request order
	FinalBefore time.Time // zero when no consumer declared one
	// Offsets are Query.OffsetsOf's committed offsets in the snapshot the series were read
	// from (empty, not nil, when it never committed); nil when not asked or not known.
	Offsets map[int32]int64
}

// Series is the points of one id, oldest first.
type Series struct {
	ID     string
	Points []Point
}

// Point is one bucket.
type Point struct {
	Time  time.Time // bucket start, UTC
	Final bool      // no more events can change it
	// Reconciled: the counts other than spend were confirmed by a reconciliation and
	// nothing changed them since.
	Reconciled bool
	Counts
}

// MaxBuckets bounds the number of buckets one query may ask for per series; the API has its
// own, lower limit.
const MaxBuckets = 1 << 20
