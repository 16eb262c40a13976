// Package topn is the in-memory index behind GET /metrics/top: the exact top N ads, campaigns
// or advertisers by clicks, impressions or spend over any window of whole minutes within the
// last Retention (24 h), fast enough to answer from ten million ads in milliseconds.
//
// It is fed the committed minute-bucket deltas of the metric store (Add, called right after
// each successful metricstore.Store.Apply, so it sees committed data exactly once) and, in the
// embedded deployment, the aggregator's counts as it makes them (aggregate.Options.OnCount,
// instead of its commits, so top-N is fresh within milliseconds), and on start it is rebuilt
// from the store's minute buckets (Rebuild).
//
// Layout. Per level, ids are interned to dense numbers. Every (level, minute) has a block of
// number -> (clicks, impressions, spend) totals, and every (level, UTC hour) a block of the
// hour's totals plus, per metric, a top set: a superset of the hour's highest ids with a
// cutoff that bounds every other id (topSet). Blocks are compressed once they stop changing
// (frozen, about 2-4 bytes per entry); recent or late changes sit in small maps above them.
//
// Queries use the threshold algorithm (Fagin et al.): a window [From, To) is split at hour
// boundaries into whole hours and at most two partial hours. Each piece's sorted access is its
// hour's top set (for a partial hour the whole hour's value is an upper bound of the part);
// each candidate's exact value is its hour total, or the sum of its minutes in the part (or
// the hour minus the other minutes, whichever reads fewer blocks). The scan stops when the
// N-th best exact value exceeds the sum of the pieces' bounds. If the top sets run out first
// (rare: tiny windows, ties, negative sums, selective filters) the answer is computed from the
// blocks by brute force or from the filter's members, so the result is always exact.
//
// Memory. Exactness at any minute boundary needs every (id, minute) value of the retained
// range (the sum of an id over [a, hour end) cannot be recovered from hour totals), so minutes
// are kept for the whole 24 h, compressed; hours are the coarser rollup that keeps queries to
// at most 24 hour lookups plus two partial hours per candidate. Measured with BenchmarkMemory
// (ten million ads, Zipf s=1, 700k impressions and 70k clicks a minute, 100 ads per campaign,
// 24 h): 506 million (level, id, minute) entries at 3.3 bytes each in minute blocks (1.6 GiB),
// hour blocks and top sets 0.46 GiB, ten million interned ids 0.40 GiB: 2.4 GiB of heap, 5.1
// bytes per minute entry in all, 2.6 GiB RSS after a GC (the garbage of compactions, and of a
// Rebuild, comes on top unless the process sets a memory limit: a 24 h Rebuild peaked at 6.6
// GiB RSS with GOGC=100). Impressions, about 235k distinct ads a minute against 33k for
// clicks, are most of it.
//
// Invariants:
//   - Exact: for every window within the retained range, Top returns exactly the N ids with
//     the highest positive sums of the metric over the window's minute buckets, ties broken
//     by id ascending, as the metric store holds them (given Add sees every committed delta
//     once, and Rebuild ran before the first Add).
//   - A block's layers hold totals, never deltas; an hour's totals equal the sum of its
//     minutes; both are changed together under the write lock.
//   - topSet: every non-member of a top set has a value <= its cut.
//   - Minutes and hours are evicted together, whole hours at a time, once the hour ends more
//     than Retention+Slack ago; floor (the oldest minute still complete) only grows, and
//     Add drops deltas below it.
//   - Ids are never forgotten: an id keeps its number (about 40 bytes with its bytes, hash
//     slot and ownership group, 4 more in the byte order of ids) for the life of the index,
//     so memory grows with the number of distinct ids ever seen. A Rebuild (a restart)
//     starts over.
//
// Concurrency: Add only appends to a pending queue (its own mutex), so the aggregator's commit
// path never waits for a query. The queue is applied under the write lock by Top (before it
// reads, so a query sees every Add that returned before it), by Maintain, and by Add itself
// when the queue grows large. Queries share the read lock. Compaction merges a sealed layer
// into a new frozen layer without the lock and swaps it in under it. Lock order: maintMu,
// then mu, then pendMu.
package topn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
)

// Metric is what the index ranks by.
type Metric uint8

// Metrics.
const (
	Clicks Metric = iota
	Impressions
	SpendMicros
	Conversions           // credited by attribution
	ConversionValueMicros // their value
	numMetrics            = 5
)

// ParseMetric maps the API names "clicks", "impressions", "spend_micros", "conversions" and
// "conversion_value_micros" to a Metric.
func ParseMetric(s string) (Metric, bool) {
	switch s {
	case "clicks":
		return Clicks, true
	case "impressions":
		return Impressions, true
	case "spend_micros":
		return SpendMicros, true
	case "conversions":
		return Conversions, true
	case "conversion_value_micros":
		return ConversionValueMicros, true
	}
	return 0, false
}

func (m Metric) String() string {
	switch m {
	case Clicks:
		return "clicks"
	case Impressions:
		return "impressions"
	case SpendMicros:
		return "spend_micros"
	case Conversions:
		return "conversions"
	case ConversionValueMicros:
		return "conversion_value_micros"
	}
	return fmt.Sprintf("metric(%d)", uint8(m))
}

// valsOf picks what the index ranks by out of a delta.
func valsOf(d *metricstore.Delta) vals {
	return vals{Clicks: d.Clicks, Impressions: d.Impressions, SpendMicros: d.SpendMicros,
		Conversions: d.Conversions, ConversionValueMicros: d.ConversionValueMicros}
}

// Owners tells who owns what, for filters. Advertiser ownership must never change (the catalog
// refuses to move a campaign, or an ad, to another advertiser); an ad may move between the
// campaigns of its advertiser, and the campaign filter follows its current campaign.
type Owners interface {
	AdCampaign(adID string) (campaignID string, ok bool)
	AdAdvertiser(adID string) (advertiserID string, ok bool)
	CampaignAdvertiser(campaignID string) (advertiserID string, ok bool)
}

// MinuteScanner is what Rebuild reads: a metric store that can list its minute buckets.
// pebblestore implements it with one scan of the minute key partitions covering the range.
type MinuteScanner interface {
	// ScanMinutes calls fn once for every stored minute bucket (any level and id) whose
	// minute is in [from, to), with that bucket's totals in d, from one consistent snapshot,
	// in any order. fn does not retain d or d.ID (which may alias the scanner's buffers).
	// A non-nil error from fn stops the scan and is returned (wrapped).
	ScanMinutes(ctx context.Context, from, to int64, fn func(d *metricstore.Delta) error) error
}

// Errors of Top.
var (
	ErrInvalidQuery = errors.New("topn: invalid query")
	// ErrOutOfRange: the window starts before the oldest minute the index holds.
	ErrOutOfRange = errors.New("topn: window starts before the retained range")
	// ErrNoOwners: a filter needs Options.Owners.
	ErrNoOwners = errors.New("topn: filters need an Owners")
)

// MaxN is the largest N a query may ask for.
const MaxN = 1000

// Options configure an Index. The zero value is usable.
type Options struct {
	// Retention is how far back windows may start (default 24h); Slack is kept on top of it
	// (default 1h) so that a window at the edge never races eviction.
	Retention time.Duration
	Slack     time.Duration
	// TopLimit is the number of ids per hour and metric whose rank is kept (default 8192;
	// between TopLimit and twice that are held). Larger costs memory and Add time; smaller
	// makes queries fall back to brute force more often. It should be well above MaxN.
	TopLimit int
	// Owners resolves ownership for filters (nil: filters are refused with ErrNoOwners).
	Owners Owners
	// MaintainInterval is how often Run compacts and evicts (default 1s).
	MaintainInterval time.Duration
	Now              func() time.Time
	Logger           *slog.Logger
}

func (o *Options) setDefaults() {
	if o.Retention <= 0 {
		o.Retention = 24 * time.Hour
	}
	if o.Slack <= 0 {
		o.Slack = time.Hour
	}
	if o.TopLimit <= 0 {
		o.TopLimit = 8192
	}
	if o.MaintainInterval <= 0 {
		o.MaintainInterval = time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Index is the top-N index.
type Index struct {
	opts Options

	maintMu sync.Mutex   // one Maintain or Rebuild at a time
	mu      sync.RWMutex // guards st and everything it points to
	st      *state

	pendMu  sync.Mutex
	pending []pendingDelta
	spare   []pendingDelta

	// Query plan thresholds (bruteEntries, memberDirect by default); tests lower them (-1:
	// never) to drive every path with little data.
	bruteLimit, memberLimit int
	bruteSpare              atomic.Pointer[bruteBuf]
	// orderMinTies is how many tied ids start a byte order build (-1: never); orderWG
	// counts the builds running, for tests to wait on.
	orderMinTies int
	orderWG      sync.WaitGroup

	adds, deltas, dropped, queries, taQueries, fallbacks, bruteQueries, memberQueries atomic.Int64
	candidates, compactions, compactionNanos, rebuildNanos, rebuildDeltas             atomic.Int64
	orderBuilds, orderNanos                                                           atomic.Int64
}

// pendingDelta is the part of a metricstore.Delta the index keeps.
type pendingDelta struct {
	level  metricstore.Level
	minute int64
	id     string
	v      vals
}

// drainAt is the queue length at which Add applies the queue itself if the index is free;
// past drainHard (about 60 MB of queue) it waits for it.
const (
	drainAt   = 1 << 16
	drainHard = 1 << 20
)

// futureMinutes bounds how far ahead of the clock a delta may be (more than any clock skew
// ingest accepts); further ones are dropped.
const futureMinutes = 24 * 60

type state struct {
	levels [3]*level
	advs   *internTable // advertiser ids of the ad and campaign levels' groups
	floor  int64        // minutes: every delta for a minute >= floor is in the index
}

// level is one of ad, campaign, advertiser.
type level struct {
	ids *internTable
	// group (ad and campaign levels) is per number the owning advertiser's number in
	// state.advs plus one; 0 while unresolved. Advertiser ownership never changes, so it is
	// resolved once.
	group      []uint32
	members    [][]uint32 // per advertiser number: numbers of this level it owns
	unresolved []uint32
	minutes    map[int64]*block
	hours      map[int64]*hourBlock
	order      ordering // byte order of the ids, for brute force's ties (order.go)
}

func newState(floor int64) *state {
	st := &state{advs: newInternTable(), floor: floor}
	for i := range st.levels {
		st.levels[i] = &level{ids: newInternTable(), minutes: make(map[int64]*block), hours: make(map[int64]*hourBlock)}
	}
	return st
}

// New returns an empty index. If the metric store already holds data, call Rebuild before the
// first Add.
func New(opts Options) *Index {
	opts.setDefaults()
	return &Index{opts: opts, st: newState(minInt64), bruteLimit: bruteEntries, memberLimit: memberDirect, orderMinTies: orderMinTies}
}

const minInt64 = -1 << 63

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

func (ix *Index) nowMinute() int64 { return floorDiv(ix.opts.Now().Unix(), 60) }

// evictBefore is the first minute kept at clock minute now: whole hours ending more than
// Retention+Slack ago go.
func (ix *Index) evictBefore(now int64) int64 {
	keep := int64((ix.opts.Retention + ix.opts.Slack) / time.Minute)
	return floorDiv(now-keep, 60) * 60
}

// Add queues committed deltas; they are visible to every Top that starts after Add returns.
// It keeps only the level, id, minute, clicks, impressions and spend of each delta and does
// not retain deltas. It is cheap: it copies. When neither queries nor Run drained the queue
// for drainAt deltas it applies them itself, but only if no query holds the index (so a slow
// query never stalls the aggregator's commits), and waits only past drainHard.
func (ix *Index) Add(deltas []metricstore.Delta) {
	ix.adds.Add(1)
	ix.pendMu.Lock()
	for i := range deltas {
		d := &deltas[i]
		v := valsOf(d)
		if v.isZero() {
			continue
		}
		ix.pending = append(ix.pending, pendingDelta{level: d.Level, minute: d.Minute, id: d.ID, v: v})
	}
	n := len(ix.pending)
	ix.pendMu.Unlock()
	switch {
	case n >= drainHard:
		ix.drain()
	case n >= drainAt:
		if ix.mu.TryLock() {
			ix.applyPendingLocked()
			ix.mu.Unlock()
		}
	}
}

func (ix *Index) hasPending() bool {
	ix.pendMu.Lock()
	defer ix.pendMu.Unlock()
	return len(ix.pending) > 0
}

func (ix *Index) drain() {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.applyPendingLocked()
}

// applyPendingLocked applies the queue; ix.mu is held for writing.
func (ix *Index) applyPendingLocked() {
	ix.pendMu.Lock()
	p := ix.pending
	ix.pending, ix.spare = ix.spare, nil
	ix.pendMu.Unlock()
	if len(p) == 0 {
		ix.pendMu.Lock()
		ix.spare = p
		ix.pendMu.Unlock()
		return
	}
	now := ix.nowMinute()
	lo := max(ix.st.floor, ix.evictBefore(now))
	hi := now + futureMinutes
	var added, dropped int64
	var lastLv *level
	var lastMin, lastHour int64 = minInt64, minInt64
	var mb *block
	var hb *hourBlock
	for i := range p {
		d := &p[i]
		if !d.level.Valid() || d.minute < lo || d.minute >= hi || d.id == "" || len(d.id) > 255 {
			dropped++
			continue
		}
		lv := ix.st.levels[d.level-1]
		id := ix.st.intern(d.level, d.id, ix.opts.Owners)
		if lv != lastLv || d.minute != lastMin {
			mb = lv.minutes[d.minute]
			if mb == nil {
				mb = &block{}
				lv.minutes[d.minute] = mb
			}
			lastMin = d.minute
		}
		if h := floorDiv(d.minute, 60); lv != lastLv || h != lastHour {
			hb = lv.hours[h]
			if hb == nil {
				hb = &hourBlock{}
				lv.hours[h] = hb
			}
			lastHour = h
		}
		lastLv = lv
		mb.add(id, &d.v)
		hb.add(id, &d.v, ix.opts.TopLimit)
		added++
	}
	ix.deltas.Add(added)
	ix.dropped.Add(dropped)
	clear(p)
	ix.pendMu.Lock()
	ix.spare = p[:0]
	ix.pendMu.Unlock()
}

// intern returns the number of id at level l, resolving the owner of a new ad or campaign.
func (st *state) intern(l metricstore.Level, id string, owners Owners) uint32 {
	lv := st.levels[l-1]
	num, added := lv.ids.intern(id)
	if !added || l == metricstore.LevelAdvertiser {
		return num
	}
	lv.group = append(lv.group, 0)
	st.resolve(l, num, owners)
	return num
}

// resolve looks the advertiser of number num up and files it in its group.
func (st *state) resolve(l metricstore.Level, num uint32, owners Owners) bool {
	lv := st.levels[l-1]
	adv, ok := "", false
	if owners != nil {
		if l == metricstore.LevelAd {
			adv, ok = owners.AdAdvertiser(lv.ids.str(num))
		} else {
			adv, ok = owners.CampaignAdvertiser(lv.ids.str(num))
		}
	}
	if !ok {
		lv.unresolved = append(lv.unresolved, num)
		return false
	}
	g, _ := st.advs.intern(adv)
	lv.group[num] = g + 1
	for len(lv.members) <= int(g) {
		lv.members = append(lv.members, nil)
	}
	lv.members[g] = append(lv.members[g], num)
	return true
}

// Stats are the index's counters and sizes.
type Stats struct {
	Adds          int64 // Add calls
	DeltasApplied int64
	DeltasDropped int64 // outside the retained range (or invalid)
	Pending       int   // deltas queued, not yet applied

	Queries       int64
	TAQueries     int64 // answered by the threshold algorithm
	Fallbacks     int64 // threshold algorithm ran out of ranked ids; answered otherwise
	BruteQueries  int64 // answered by summing every entry of the window
	MemberQueries int64 // answered by evaluating a filter's members
	Candidates    int64 // ids whose exact value queries computed

	Compactions     int64
	CompactionNanos int64
	RebuildNanos    int64
	RebuildDeltas   int64
	OrderBuilds     int64 // byte order builds started (order.go)
	OrderNanos      int64 // time they took

	IDs           [3]int // interned ids per level (ad, campaign, advertiser)
	MinuteBlocks  int
	HourBlocks    int
	FrozenEntries int64 // (id, minute) and (id, hour) entries in compressed blocks
	LiveEntries   int64 // entries in maps above them
	MinuteEntries int64 // (id, minute) entries, all layers (an upper bound)
	MinuteBytes   int64 // memory of minute blocks
	HourBytes     int64 // memory of hour blocks, top sets included
	IDBytes       int64 // memory of the intern tables and groups
	Bytes         int64 // all of the above: the index's estimated heap
	Floor         time.Time
}

// Stats returns current counters and sizes (walking the blocks; cheap, but not free).
func (ix *Index) Stats() Stats {
	s := Stats{
		Adds: ix.adds.Load(), DeltasApplied: ix.deltas.Load(), DeltasDropped: ix.dropped.Load(),
		Queries: ix.queries.Load(), TAQueries: ix.taQueries.Load(), Fallbacks: ix.fallbacks.Load(),
		BruteQueries: ix.bruteQueries.Load(), MemberQueries: ix.memberQueries.Load(), Candidates: ix.candidates.Load(),
		Compactions: ix.compactions.Load(), CompactionNanos: ix.compactionNanos.Load(),
		RebuildNanos: ix.rebuildNanos.Load(), RebuildDeltas: ix.rebuildDeltas.Load(),
		OrderBuilds: ix.orderBuilds.Load(), OrderNanos: ix.orderNanos.Load(),
	}
	ix.pendMu.Lock()
	s.Pending = len(ix.pending)
	ix.pendMu.Unlock()
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	st := ix.st
	if st.floor != minInt64 {
		s.Floor = time.Unix(st.floor*60, 0).UTC()
	}
	s.IDBytes = st.advs.memBytes()
	for i, lv := range st.levels {
		s.IDs[i] = lv.ids.len()
		s.IDBytes += lv.ids.memBytes() + int64(cap(lv.group))*4 + int64(cap(lv.unresolved))*4
		if ord := lv.order.cur.Load(); ord != nil {
			s.IDBytes += int64(cap(ord.order)) * 4
		}
		for _, m := range lv.members {
			s.IDBytes += int64(cap(m))*4 + 24
		}
		for _, b := range lv.minutes {
			s.MinuteBlocks++
			s.FrozenEntries += int64(b.base.entries())
			s.LiveEntries += int64(len(b.sealed) + len(b.live))
			s.MinuteEntries += int64(b.size())
			s.MinuteBytes += b.memBytes()
		}
		for _, h := range lv.hours {
			s.HourBlocks++
			s.FrozenEntries += int64(h.base.entries())
			s.LiveEntries += int64(len(h.sealed) + len(h.live))
			s.HourBytes += h.memBytes()
			for m := range h.top {
				s.HourBytes += h.top[m].memBytes()
			}
		}
	}
	s.Bytes = s.IDBytes + s.MinuteBytes + s.HourBytes
	return s
}
