// Package billing is the charging stage of the pipeline and what is built on it: it consumes
// the partitions of the event log it owns, charges each valid click against its campaign's budget
// exactly once, keeps the ledger and per-campaign spend, feeds spend into the metric store,
// computes serving status, budgets and pacing (the serving feed), and counts user views.
//
// # Charging rules
//
// A valid click (event.TypeClick, Invalid == event.ReasonNone) charges
// min(price, remaining daily budget, remaining total budget), where price is the click
// token's price if positive, else the ad's current bid, and the budget day is the one that
// contains the click's event time. A budget day is a real interval [start, end): the
// advertiser's local calendar day (23 or 25 hours across DST), and a time zone change takes
// effect at the next local midnight of the zone in force when it was made, so the day in
// progress keeps its end and no hours get a second daily budget (budgetday.go). The zone
// history comes from the catalog with the time of each change, so a decision replayed from
// the log uses the zone that was in force at the click's time. Spend is kept per budget day
// by its start. A click on a paused campaign (status at charge time), or outside the campaign's
// schedule (at the click's event time), charges 0. Every valid click gets a ledger entry keyed
// by its idempotency key (event.Key: "c:" + impression id, or "e:" + event_id for a click
// sent without an impression id), zero charges included, so a click is decided once: a
// second click with the same key is never charged, even after a budget is raised. Lookups
// and refunds name a click by the id the client sent (its impression id or event_id) and
// try both keys, the impression's first.
//
// # Invariants
//
//   - A budget is never exceeded, not by one micro, however many nodes charge: every charge
//     and refund is a ledger transaction that reads the spend it decides on with a lock held
//     until commit (package ledger), and remaining budgets are clamped at 0 (a budget lowered
//     below spend leaves nothing to spend).
//   - Spend equals the ledger: for each campaign, the total spend and the sum of its daily
//     spends equal the sum of ChargedMicros of its ledger entries in state charged.
//   - Exactly once, across crashes and takeovers: a round's ledger entries, spend, view
//     counts, consumed log offsets and its journal entry are one ledger transaction (a synced
//     Pebble batch, or one SQL transaction). A crash before the commit replays the round from
//     the log (the decisions may then differ, but none of the first attempt's survived); after
//     it, the round is never replayed. The offsets are fenced by the partition's epoch, so a
//     node that lost a partition (ownership.go) cannot commit it.
//   - /metrics spend_micros equals the sum of charges, exactly once, through the journal:
//     every transaction that changes spend also writes journal entry seq = n (the minute spend
//     deltas at ad, campaign and advertiser level; seqs are taken in commit order, under a
//     lock held until commit), and any node's publisher applies entries to the
//     metric store in seq order as consumer "charge", with the offset range
//     [from, to) of the virtual partition JournalPartition, so the store's fence refuses any
//     entry twice. On start the store's checkpoint tells which entries are in; the rest are
//     applied again. A crash between the ledger commit and Apply therefore loses nothing (the
//     entry is durable) and doubles nothing (the fence), and neither do two nodes publishing
//     at once. Applied entries are deleted lazily.
//   - A refund is booked where its charge was, at the click's event-time minute (not at the
//     refund's time), so every bucket at every interval shows the net spend of the clicks in
//     it. A click older than the metric store's minute retention (--minute-retention) has
//     only its hour and day buckets left: the store applies the refund to those and never
//     writes into an expired bucket (no negative minute row appears, even if the retention is
//     raised later). So /metrics spend equals the sum of the remaining charges over every
//     interval that can still be queried.
//   - Status is never cached: serving_status and budget are computed from the catalog's
//     current values and committed spend on every call, so raising a budget or un-pausing
//     brings a campaign back at once, and a new budget day starts at its start (the
//     advertiser's local midnight, or the instant a time zone change takes effect). Status,
//     budget.day and pacing use the same budget day as charging.
//   - User views count each valid impression with a user and catalog id once, in the same
//     transaction as the offsets it came from. An impression that reached the log twice (a retry
//     whose first attempt had an unknown outcome, a dedup store that lost keys) is dropped
//     by a per-partition dedup.Window over DedupSpan, rebuilt from the log when the partition
//     is assigned, so the count does not depend on crashes, takeovers or timing.
//
// # Scale-out
//
// Charging happens where the spend is: in the ledger (package ledger). Embedded, one Charger
// claims every partition of the log and keeps the ledger in Pebble. With several process
// nodes, each has a Charger on one shared SQL ledger and consumes the partitions a Kafka
// consumer group gives it (Options.Group, Assign, Revoke: ownership.go); two nodes charging
// one campaign are serialised by the spend rows' locks, refunds through any node lock the
// click's entry, and every node reads statuses and clicks from the committed ledger, so all
// answer alike. Within a node, a round processes its partitions' messages in a deterministic
// merged order (append time, then partition, then offset); across nodes, who gets a budget's
// last micros depends on commit order, and no budget is ever exceeded.
//
// Lock order: Charger.pubMu, then writer.mu, then pacer.mu or Charger.mu. writer.mu is held
// for a whole round, and by Assign and Revoke while they change the owned partitions.
package billing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/adpulse/adpulse/internal/billing/ledger"
	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/metricstore"
)

// DefaultConsumer is the metric store consumer name spend is committed under.
const DefaultConsumer = "charge"

// JournalPartition is the virtual partition of the billing journal in the metric store's
// checkpoint of the charge consumer: its offset is the next journal entry to apply. It is not
// a log partition; the charger's log offsets live in the ledger.
const JournalPartition int32 = math.MaxInt32

// Catalog is what billing reads from the catalog. *catalog.Catalog implements it.
type Catalog interface {
	Ad(id string) (catalog.AdInfo, bool)
	Campaign(id string) (catalog.CampaignInfo, bool)
	Advertiser(id string) (catalog.AdvertiserInfo, bool)
}

// CampaignLister enumerates every campaign id. The serving feed lists the campaigns of a
// Catalog that implements it; without it, the feed only knows campaigns that have had an
// event in the log (a new campaign would not be served until it had one).
type CampaignLister interface {
	CampaignIDs() []string
}

// Options configure a Charger. Log, Catalog and Metrics are required, and Ledger or Dir.
type Options struct {
	// Ledger is the billing storage (ledger.OpenPebble, ledger.OpenSQL); the caller closes it
	// after the Charger. Without it, Open opens a Pebble ledger in Dir and Close closes it.
	Ledger ledger.Store
	Dir    string // the embedded billing database when Ledger is nil; created if missing
	// Group: partitions are given by Assign and Revoke (a Kafka consumer group); without it
	// Open claims every partition of the log.
	Group bool
	// Node names this process in the shared ledger (its traffic profile row); "" for one node.
	Node string
	// RoundTimeout bounds one ledger transaction (a round, a refund), a read, and one publish
	// of the journal (default 30s).
	RoundTimeout time.Duration
	Log          eventlog.Log
	Catalog      Catalog
	Metrics      metricstore.Store
	// Consumer is the metric store consumer name (default "charge").
	Consumer string
	// Publisher, if set, receives the serving feed every FeedInterval (the Redis seam).
	Publisher Publisher
	// OnViews, if set, receives after each commit that counted user views the committed
	// totals of the counts it changed (the Redis seam for views). The writer calls it in
	// commit order, after the commit, so it must not block: queue and return.
	OnViews func([]ViewCount)
	// ViewRetentionDays is how many UTC days of user views are kept, today included (default 7).
	ViewRetentionDays int
	// DedupSpan is how long the user views' duplicate filter remembers an impression key
	// (ingest's --dedup-window; default 24h; negative turns it off): an impression whose key
	// the partition already held within the span is not counted again (dedup.Window).
	DedupSpan time.Duration
	// Slack is how far receive times may run out of order within a partition (default 5s).
	Slack time.Duration
	// ReadBytes bounds one read of one partition (default 1 MiB).
	ReadBytes int
	// PollInterval is the pause when every partition is caught up (default 20ms).
	PollInterval time.Duration
	// FeedInterval is how often Run publishes the serving feed (default 10s).
	FeedInterval time.Duration
	// PacingInterval is the pacing controller's step (default 1 minute).
	PacingInterval time.Duration
	// PacingHorizon is how far ahead the controller aims to be back on the target spend curve
	// (default 1 hour).
	PacingHorizon time.Duration
	// MinPacing is the lowest pacing given to an active campaign (default 0.01).
	MinPacing float64
	Now       func() time.Time // default time.Now
	Logger    *slog.Logger

	hooks *testHooks // fault injection for crash tests; nil in production
}

func (o *Options) setDefaults() {
	if o.Consumer == "" {
		o.Consumer = DefaultConsumer
	}
	if o.ViewRetentionDays <= 0 {
		o.ViewRetentionDays = 7
	}
	if o.DedupSpan == 0 {
		o.DedupSpan = 24 * time.Hour
	}
	if o.Slack <= 0 {
		o.Slack = 5 * time.Second
	}
	if o.ReadBytes <= 0 {
		o.ReadBytes = 1 << 20
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 20 * time.Millisecond
	}
	if o.FeedInterval <= 0 {
		o.FeedInterval = 10 * time.Second
	}
	if o.PacingInterval <= 0 {
		o.PacingInterval = time.Minute
	}
	if o.PacingHorizon <= 0 {
		o.PacingHorizon = time.Hour
	}
	if o.MinPacing <= 0 || o.MinPacing > 1 {
		o.MinPacing = 0.01
	}
	if o.RoundTimeout <= 0 {
		o.RoundTimeout = 30 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// testHooks let crash tests fail the charger at chosen points. A non-nil error makes the
// step fail as a crash would (Run returns it).
type testHooks struct {
	beforeCommit func() error // writes built inside the ledger transaction, not committed
	afterCommit  func() error // batch committed, journal not yet published
	beforeApply  func() error // journal entries read, Apply not called
	afterApply   func() error // Apply returned nil, bookkeeping not done
}

// Sentinel errors.
var (
	ErrClosed     = errors.New("billing: closed")
	ErrNotRunning = errors.New("billing: the charger is not running")
	ErrNotFound   = errors.New("billing: not found")
)

// Stats are the charger's counters since Open, for Prometheus.
type Stats struct {
	EventsConsumed  int64
	Corrupt         int64 // messages that do not decode, skipped
	ClicksCharged   int64 // valid clicks that charged more than 0
	MicrosCharged   int64
	PartialCharges  int64            // clicks charged less than their price (the budget's last micros)
	ZeroCharge      map[string]int64 // valid clicks that charged 0, by reason
	DuplicateClicks int64            // valid clicks whose key was already in the ledger
	Refunds         int64            // refunds that credited a click (repeats excluded)
	MicrosRefunded  int64
	ViewsCounted    int64
	ViewDuplicates  int64 // impressions already in the log within the dedup span, not counted

	Claims  int64 // partitions claimed (Assign, or Open when embedded)
	Fenced  int64 // rounds refused because another owner claimed one of their partitions
	Retries int64 // ledger transactions run again after a conflict (SQL deadlocks, races)

	Commits            int64
	LastCommitLatency  time.Duration // of the last ledger commit, including the sync
	MaxCommitLatency   time.Duration
	TotalCommitLatency time.Duration

	JournalNext       uint64 // next journal entry to be written
	JournalApplied    uint64 // entries below it are in the metric store
	MetricApplies     int64
	MetricApplyErrors int64
	MetricConflicts   int64 // Applies refused because the entries were in already (another node)

	Partitions []PartitionStats
}

// PartitionStats describe one owned log partition.
type PartitionStats struct {
	Partition int
	Committed int64 // next offset to consume, as committed
	End       int64 // log end offset
	Lag       int64 // End - Committed
}

// Charger is the charging stage. It is safe for concurrent use.
type Charger struct {
	opts      Options
	store     ledger.Store
	ownsStore bool // opened by Open from Dir: Close closes it
	cat       Catalog
	lister    CampaignLister // nil when the catalog cannot list
	pacer     *pacer
	w         *writer

	closed    atomic.Bool
	started   atomic.Bool
	abort     chan struct{} // closed by Close
	done      chan struct{} // closed when Run returns
	closeOnce sync.Once
	kick      chan struct{} // wakes the publisher after a commit

	journalNext atomic.Uint64 // the highest journal next seen (own commits, the ledger's counter)
	pubMu       sync.Mutex    // serialises publish; guards journalLow and writes of applied
	applied     atomic.Uint64 // journal entries below it are in the metric store
	journalLow  uint64        // journal entries below it were deleted

	mu        sync.Mutex // guards stats, committed, known
	stats     Stats
	committed map[int32]int64 // owned partitions' committed next offsets, for Stats
	known     map[string]struct{}
}

// Open opens the ledger (Options.Ledger, or a Pebble ledger in o.Dir) and checks it against
// the metric store; embedded (not Group), it claims every partition of the log. Run starts
// charging.
func Open(ctx context.Context, o Options) (*Charger, error) {
	if (o.Dir == "" && o.Ledger == nil) || o.Log == nil || o.Catalog == nil || o.Metrics == nil {
		return nil, errors.New("billing: Options.Ledger or Dir, Log, Catalog and Metrics are required")
	}
	o.setDefaults()
	c := &Charger{
		opts:  o,
		store: o.Ledger,
		cat:   o.Catalog,
		abort: make(chan struct{}),
		done:  make(chan struct{}),
		kick:  make(chan struct{}, 1),
		known: make(map[string]struct{}),
		stats: Stats{ZeroCharge: make(map[string]int64)},
	}
	if c.store == nil {
		st, err := ledger.OpenPebble(o.Dir, ledger.PebbleOptions{Logger: o.Logger})
		if err != nil {
			return nil, err
		}
		c.store, c.ownsStore = st, true
	}
	c.lister, _ = o.Catalog.(CampaignLister)
	c.pacer = newPacer(o.PacingInterval, o.PacingHorizon, o.MinPacing)
	if err := c.load(ctx); err != nil {
		if c.ownsStore {
			c.store.Close()
		}
		return nil, err
	}
	return c, nil
}

// legacyMigrator is a ledger with spend kept under bare local dates to move (ledger.Pebble).
type legacyMigrator interface {
	MigrateLegacyDates(dayStart func(campaign string, date uint32) int64) (int, error)
}

// load reads the writer's state, reconciles the journal with the metric store and, embedded,
// claims every partition.
func (c *Charger) load(ctx context.Context) error {
	if m, ok := c.store.(legacyMigrator); ok {
		n, err := m.MigrateLegacyDates(c.legacyDayStart)
		if err != nil {
			return fmt.Errorf("billing: move legacy spend: %w", err)
		}
		if n > 0 {
			c.opts.Logger.Info("billing: daily spend moved from local dates to budget days", "rows", n)
		}
	}
	w, err := newWriter(ctx, c)
	if err != nil {
		return err
	}
	c.w = w
	// Read in this order, because other nodes of a shared ledger may commit, publish and drop
	// entries meanwhile: entries are dropped only once the store has them, and the store has
	// only committed ones, so first <= applied <= next holds for these three reads.
	first, err := c.store.FirstJournal(ctx)
	if err != nil {
		return fmt.Errorf("read journal: %w", err)
	}
	cp, err := c.opts.Metrics.Checkpoint(ctx, c.opts.Consumer)
	if err != nil {
		return fmt.Errorf("read metric store checkpoint of %s: %w", c.opts.Consumer, err)
	}
	next, err := c.store.JournalNext(ctx)
	if err != nil {
		return fmt.Errorf("read journal seq: %w", err)
	}
	c.journalNext.Store(next)
	applied, ok := cp.Offsets[JournalPartition]
	switch {
	case !ok:
		// The store has never seen this journal: everything still retained goes in.
		if first > 0 {
			c.opts.Logger.Warn("billing: the metric store has no spend from this billing ledger yet; applying the journal from its first retained entry",
				"first", first, "next", next)
		}
		c.applied.Store(first)
	case applied < 0 || uint64(applied) > next:
		return fmt.Errorf("billing: the metric store has applied journal entries up to %d but this billing ledger has written only %d: the billing data does not belong to this metric store", applied, next)
	case uint64(applied) < first:
		return fmt.Errorf("billing: the metric store needs journal entry %d but the oldest left is %d", applied, first)
	default:
		c.applied.Store(uint64(applied))
	}
	c.journalLow = first
	if !c.opts.Group {
		all := make([]int32, c.opts.Log.Partitions())
		for i := range all {
			all[i] = int32(i)
		}
		if err := c.Assign(ctx, all); err != nil {
			return err
		}
	}
	return nil
}

// noteJournal records that journal entries below next exist.
func (c *Charger) noteJournal(next uint64) {
	for {
		cur := c.journalNext.Load()
		if next <= cur || c.journalNext.CompareAndSwap(cur, next) {
			return
		}
	}
}

// Run charges until ctx is done, then publishes what it committed to the metric store (for
// at most a few seconds) and returns nil. It returns the first error of the writer (a log
// read or database commit failure: what was committed is consistent and a new Charger resumes
// from it). Metric store failures are retried, not returned. Run may be called once.
func (c *Charger) Run(ctx context.Context) error {
	if !c.started.CompareAndSwap(false, true) {
		return errors.New("billing: Run called twice")
	}
	defer close(c.done)
	select {
	case <-c.abort:
		return ErrClosed
	default:
	}
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-c.abort:
			cancel(ErrClosed)
		case <-rctx.Done():
		}
	}()

	var wg sync.WaitGroup
	errc := make(chan error, 3)
	for _, f := range []func(context.Context) error{c.w.run, c.runPublisher, c.runFeed} {
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
	if err := <-errc; err != nil {
		return err
	}
	if c.aborted() {
		return nil
	}
	// Orderly stop: what the writer committed goes to the metric store now rather than at the
	// next start (either is correct; this keeps /metrics current across a restart).
	fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer fcancel()
	if err := c.publish(fctx); err != nil {
		c.opts.Logger.Warn("billing: final spend publish failed; it is retried at the next start", "err", err)
	}
	return nil
}

// Close stops Run abruptly (a round not yet committed is replayed at the next start) and
// closes the ledger if Open opened it.
func (c *Charger) Close() error {
	c.closeOnce.Do(func() { close(c.abort) })
	if c.started.Load() {
		<-c.done
	}
	if !c.closed.CompareAndSwap(false, true) || !c.ownsStore {
		return nil
	}
	if err := c.store.Close(); err != nil {
		return fmt.Errorf("close billing ledger: %w", err)
	}
	return nil
}

func (c *Charger) aborted() bool {
	select {
	case <-c.abort:
		return true
	default:
		return false
	}
}

// readErr maps the ledger's closed error to billing's.
func (c *Charger) readErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ledger.ErrClosed) || c.closed.Load() {
		return ErrClosed
	}
	return err
}

// readCtx bounds a read made for a caller that gave no context.
func (c *Charger) readCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), c.opts.RoundTimeout)
}

// Stats returns a snapshot of the counters.
func (c *Charger) Stats() Stats {
	c.mu.Lock()
	s := c.stats
	// Every reason, zero included, so dashboards see each series before its first click.
	s.ZeroCharge = make(map[string]int64, len(zeroReasonNames))
	for _, name := range zeroReasonNames[1:] {
		s.ZeroCharge[name] = 0
	}
	for k, v := range c.stats.ZeroCharge {
		s.ZeroCharge[k] = v
	}
	committed := maps.Clone(c.committed)
	c.mu.Unlock()
	s.JournalApplied = c.applied.Load()
	s.JournalNext = max(c.journalNext.Load(), s.JournalApplied) // another node may have published past what this one saw
	for _, p := range slices.Sorted(maps.Keys(committed)) {
		off := committed[p]
		ps := PartitionStats{Partition: int(p), Committed: off}
		if _, end, err := c.opts.Log.Offsets(context.Background(), int(p)); err == nil {
			ps.End, ps.Lag = end, max(0, end-off)
		}
		s.Partitions = append(s.Partitions, ps)
	}
	return s
}
