// Package aggregate is the aggregation stage: it consumes every partition of the event log,
// counts each event in its one-minute event-time bucket at ad, campaign and advertiser level,
// and commits the counts to the metric store together with the log offsets they came from.
//
// Invariants:
//   - Exactly once: each commit is one metricstore.Apply holding the deltas of offsets
//     [From, To) of each partition and the new offsets, fenced on From. On start the
//     aggregator resumes from the store's offsets, so a crash anywhere (before, during or
//     after a commit) replays only what was not committed and changes no count.
//   - Deterministic: what an event adds depends only on the log, never on timing, batching
//     or restarts. In particular the duplicate filter (dedup.Window) is a function of the
//     partition's events received within DedupSpan before each event, and is rebuilt from
//     the log on start.
//   - Counting: a valid click adds to clicks; a click with an invalid reason adds to
//     invalid_clicks and its reason, never to clicks; a valid impression to impressions; a
//     valid interaction to its name. Invalid impressions and interactions are not counted
//     (Stats.Uncounted). Spend is not this stage's: charging commits spend deltas to the same
//     store under its own consumer name and offsets (metricstore.Commit.Consumer), which is the
//     seam for it.
//   - Finality: FinalBefore only grows, and is committed with the counts. A bucket ending at
//     or before it will get no more events, provided ingest keeps its contract (event time
//     at least receive time minus MaxLateness) and receive times within a partition are out
//     of order by at most Slack. An event that breaks that is still counted (late data is
//     corrected, not dropped) and shows in Stats.LateAfterFinal.
//   - Live: what is counted but not committed is readable by queries (Pending, live.go) with
//     the offsets it came from, so a query adds it exactly once to a store snapshot; and given
//     to OnCount once per event. A log that is an eventlog.Notifier wakes Run on each commit.
//
// Concurrency: each round of reads fetches (reads, decodes and filters) the partitions on up
// to GOMAXPROCS goroutines, and Run's goroutine accumulates them in partition order (read.go);
// one committer goroutine turns an accumulator into deltas and applies it while the next one
// fills, so commits stay in offset order (at most one is in flight). Queries read both
// accumulators under live.mu, which the runner holds while it adds a read's events and hands
// an accumulator over, and the committer while it withdraws the one it applied.
package aggregate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/adpulse/adpulse/internal/dedup"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/metricstore"
)

// DefaultConsumer is the name the aggregator commits its offsets under.
const DefaultConsumer = "aggregate"

// Options configure an Aggregator. Log and Store are required.
type Options struct {
	Log   eventlog.Log
	Store metricstore.Store
	// Consumer names this stage's offsets in the store (default "aggregate").
	Consumer string
	// Partitions are the log partitions this aggregator consumes (default: all). Process
	// nodes that share the log run one aggregator per partition they own (see Shared).
	Partitions []int32
	// Epoch is this aggregator's ownership epoch of its partitions (metricstore.Commit.Epoch;
	// 0 for a single writer).
	Epoch uint64
	// CommitInterval is how often counts are committed (default 200ms): data is visible in
	// the store within about this plus a commit's latency.
	CommitInterval time.Duration
	// MaxLateness is ingest's --max-lateness (default 24h): how far event time may trail
	// receive time. It decides finality and the time span of the duplicate filter.
	MaxLateness time.Duration
	// Slack is how far out of order receive times may be within a partition, and how far the
	// ingest clocks may trail this one (default 5s). The watermark is held back by it.
	Slack time.Duration
	// DedupSpan is how long the duplicate filter remembers a key: ingest's --dedup-window
	// (default 24h; 20-28 bytes per event received in it; negative turns the filter off).
	// An event is dropped when the partition holds an earlier event with the same key
	// received at most DedupSpan before it, so a retry whose first attempt reached the log
	// with an unknown outcome counts once however long after it comes.
	DedupSpan time.Duration
	// ReadBytes bounds one log read (default 1 MiB).
	ReadBytes int
	// PollInterval is the pause when every partition is caught up (default 20ms). A log that
	// is an eventlog.Notifier (locallog) wakes the aggregator as soon as it publishes new
	// records, so this only paces commits and the watermark of an idle log.
	PollInterval time.Duration
	// MaxPending is how many distinct (ad, minute) entries make a commit due before its
	// interval (default 1<<17), bounding commit size and so visibility, and memory in a replay.
	MaxPending int
	// OnCount, if set, is given the clicks and impressions counted in each round of reads
	// at the ad, campaign and advertiser levels, before they are committed (the embedded
	// top-N index, which this makes as fresh as Pending). Each counted event reaches it
	// once; it must not retain the slice. It is for a single process: an aggregator that
	// stops without committing what it gave here must take the process down with it (as
	// Run's error does in adpulse serve), since a restart replays it.
	OnCount func([]metricstore.Delta)
	// Now is the clock for the watermark of idle partitions (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
}

func (o *Options) setDefaults() {
	if o.Consumer == "" {
		o.Consumer = DefaultConsumer
	}
	if o.CommitInterval <= 0 {
		o.CommitInterval = 200 * time.Millisecond
	}
	if o.MaxLateness <= 0 {
		o.MaxLateness = 24 * time.Hour
	}
	if o.Slack <= 0 {
		o.Slack = 5 * time.Second
	}
	if o.DedupSpan == 0 {
		o.DedupSpan = 24 * time.Hour
	}
	if o.ReadBytes <= 0 {
		o.ReadBytes = 1 << 20
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 20 * time.Millisecond
	}
	if o.MaxPending <= 0 {
		o.MaxPending = 1 << 17
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Stats are the aggregator's counters since New.
type Stats struct {
	EventsConsumed int64 // log messages processed, of every kind below
	EventsCounted  int64
	Duplicates     int64 // dropped by the duplicate filter
	Uncounted      int64 // invalid impressions and interactions
	Corrupt        int64 // messages that do not decode, skipped
	OutOfRange     int64 // event time before 1970 or absurdly far ahead, skipped
	LateAfterFinal int64 // counted in a bucket already declared final
	Replayed       int64 // messages read on start to rebuild the duplicate filter
	Fenced         int64 // partitions resumed from the store after another process committed them (Shared)

	Commits            int64
	LastCommitLatency  time.Duration // of the last Apply, including deltas and sync
	MaxCommitLatency   time.Duration
	TotalCommitLatency time.Duration
	PendingEntries     int // (ad, minute) entries waiting for the next commit
	DedupKeys          int

	Watermark      time.Time     // receive time up to which every partition is consumed
	WatermarkDelay time.Duration // Now minus Watermark
	FinalBefore    time.Time     // committed: buckets ending at or before it are final
	Partitions     []PartitionStats
}

// PartitionStats describe one partition.
type PartitionStats struct {
	Partition int
	Committed int64 // next offset in the store
	Consumed  int64 // next offset to read
	End       int64 // log end offset, as of the last commit
	Lag       int64 // End - Consumed
	LastRecv  time.Time
	CaughtUp  bool
}

// Aggregator is the aggregation stage.
type Aggregator struct {
	opts Options

	started atomic.Bool
	abort   chan struct{} // closed by Close
	done    chan struct{} // closed when Run returns
	once    sync.Once

	mu    sync.Mutex // guards stats
	stats Stats

	live live // what queries read of the uncommitted counts (live.go)
}

// New checks opts and returns an Aggregator; Run starts it.
func New(opts Options) (*Aggregator, error) {
	if opts.Log == nil || opts.Store == nil {
		return nil, errors.New("aggregate: Options.Log and Options.Store are required")
	}
	opts.setDefaults()
	return &Aggregator{opts: opts, abort: make(chan struct{}), done: make(chan struct{})}, nil
}

// ErrClosed is returned by Run after Close.
var ErrClosed = errors.New("aggregate: closed")

// Run consumes the log until ctx is done, then commits what it has consumed and returns
// nil. It returns an error, without committing further, if reading the log or applying a
// commit fails; the store then holds a consistent prefix and a new Aggregator resumes from
// it. Run may be called once.
func (a *Aggregator) Run(ctx context.Context) error {
	if !a.started.CompareAndSwap(false, true) {
		return errors.New("aggregate: Run called twice")
	}
	defer close(a.done)
	select {
	case <-a.abort:
		return ErrClosed
	default:
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-a.abort:
			cancel()
		case <-rctx.Done():
		}
	}()
	r, err := a.newRunner(rctx)
	if err != nil {
		if a.aborted() || ctx.Err() != nil {
			return nil
		}
		return err
	}
	return r.run(rctx)
}

// Close stops Run abruptly, without committing what it consumed since its last commit (a
// restart replays it), and waits for it to return. For an orderly stop, cancel Run's
// context first.
func (a *Aggregator) Close() error {
	a.once.Do(func() { close(a.abort) })
	if a.started.Load() {
		<-a.done
	}
	return nil
}

func (a *Aggregator) aborted() bool {
	select {
	case <-a.abort:
		return true
	default:
		return false
	}
}

// Stats returns a snapshot of the counters.
func (a *Aggregator) Stats() Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.stats
	s.Partitions = append([]PartitionStats(nil), a.stats.Partitions...)
	if !s.Watermark.IsZero() {
		s.WatermarkDelay = a.opts.Now().Sub(s.Watermark)
	}
	return s
}

// FinalBefore returns the committed finality horizon: every bucket that ends at or before
// it is final. Zero until the first commit that could declare one.
func (a *Aggregator) FinalBefore() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stats.FinalBefore
}

// Final reports whether the bucket ending at end is final. Readers of the store get the
// same answer per point from metricstore.Point.Final.
func (a *Aggregator) Final(end time.Time) bool {
	fb := a.FinalBefore()
	return !fb.IsZero() && !end.After(fb)
}

// maxEventMicros bounds event times the store can hold (year 2500).
const maxEventMicros = 16725225600 * 1e6

// partState is one partition's reading state, owned by the runner.
type partState struct {
	id        int   // the log partition
	next      int64 // next offset to read
	handed    int64 // offsets below it are in a commit handed to the committer
	committed int64 // offsets below it are in the store
	lastRecv  int64 // max receive time consumed (micros)
	caughtUp  bool  // the last read found nothing: idle and at the end
	idleSince int64 // micros, when that read was made
	end       int64
	dedup     *dedup.Window
	batch     *partBatch // the partition's last read (read.go)
}

// job is one commit for the committer.
type job struct {
	acc         *accumulator
	ranges      []metricstore.OffsetRange
	finalBefore time.Time
}

type jobResult struct {
	job     job
	err     error
	latency time.Duration
}

// runner is the state of one Run.
type runner struct {
	a     *Aggregator
	opts  *Options
	parts []partState   // the partitions consumed, in Options.Partitions order
	index map[int32]int // partition -> index in parts

	acc      *accumulator
	spare    *accumulator // the other accumulator, when the committer is idle
	inflight bool
	jobs     chan job
	results  chan jobResult

	fed []metricstore.Delta // OnCount's buffer

	watermark   int64 // micros, monotone
	finalBefore int64 // computed, micros, monotone
	lastHandoff time.Time

	// counters published to Aggregator.stats after every round
	consumed, counted, dups, uncounted, corrupt, outOfRange, late, replayed int64
	commits                                                                 int64
	lastLat, maxLat, totLat                                                 time.Duration
	committedFB                                                             time.Time
}

func (a *Aggregator) newRunner(ctx context.Context) (*runner, error) {
	o := &a.opts
	cp, err := o.Store.Checkpoint(ctx, o.Consumer)
	if err != nil {
		return nil, fmt.Errorf("read %s checkpoint: %w", o.Consumer, err)
	}
	r := &runner{
		a: a, opts: o,
		index:       make(map[int32]int),
		acc:         newAccumulator(),
		spare:       newAccumulator(),
		jobs:        make(chan job),
		results:     make(chan jobResult, 1),
		lastHandoff: time.Now(),
		committedFB: cp.FinalBefore,
	}
	if !cp.FinalBefore.IsZero() {
		r.finalBefore = cp.FinalBefore.UnixMicro()
		r.watermark = r.finalBefore + o.MaxLateness.Microseconds()
	}
	n := o.Log.Partitions()
	ids := o.Partitions
	if ids == nil {
		for p := range n {
			ids = append(ids, int32(p))
		}
	}
	for _, id := range ids {
		if id < 0 || int(id) >= n {
			return nil, fmt.Errorf("partition %d: %w", id, eventlog.ErrBadPartition)
		}
		if _, dup := r.index[id]; dup {
			return nil, fmt.Errorf("aggregate: partition %d listed twice", id)
		}
		r.index[id] = len(r.parts)
		r.parts = append(r.parts, partState{id: int(id), batch: newPartBatch()})
	}
	for i := range r.parts {
		ps := &r.parts[i]
		p := ps.id
		start, end, err := o.Log.Offsets(ctx, p)
		if err != nil {
			return nil, fmt.Errorf("offsets of partition %d: %w", p, err)
		}
		next, ok := cp.Offsets[int32(p)]
		if !ok {
			next = start
		}
		if next < start {
			// Events were deleted by log retention before they were counted: counts cannot be
			// exact any more, and only an operator can decide what to do about it.
			return nil, fmt.Errorf("partition %d: committed offset %d is before the log's first retained offset %d: %w", p, next, start, eventlog.ErrOffsetOutOfRange)
		}
		if next > end {
			return nil, fmt.Errorf("partition %d: committed offset %d is past the log's end %d (was the log replaced?): %w", p, next, end, eventlog.ErrOffsetOutOfRange)
		}
		ps.next, ps.handed, ps.committed, ps.end = next, next, next, end
		if o.DedupSpan > 0 {
			ps.dedup = dedup.NewWindow(o.DedupSpan.Microseconds(), o.Slack.Microseconds())
			from, err := r.replayStart(ctx, p, start, next)
			if err != nil {
				return nil, err
			}
			if err := r.replay(ctx, p, from, next); err != nil {
				return nil, err
			}
		}
	}
	r.acc.track, r.spare.track = o.OnCount != nil, o.OnCount != nil
	l := &a.live
	l.mu.Lock()
	l.parts = l.parts[:0]
	for i := range r.parts {
		l.parts = append(l.parts, int32(r.parts[i].id))
	}
	for i := range l.segs {
		l.segs[i] = liveSeg{from: make([]int64, len(r.parts)), to: make([]int64, len(r.parts))}
		for j := range r.parts {
			l.segs[i].from[j], l.segs[i].to[j] = r.parts[j].next, r.parts[j].next
		}
	}
	l.segs[0].acc = r.acc
	l.counted = make([]int64, len(r.parts))
	for j := range r.parts {
		l.counted[j] = r.parts[j].next
	}
	l.running = true
	l.mu.Unlock()
	o.Logger.Info("aggregator starting", "partitions", len(r.parts), "replayed", r.replayed, "final_before", cp.FinalBefore)
	r.publish()
	return r, nil
}

// replayStart is the first offset of partition p the duplicate filter must see again before
// consuming from next: the events appended since dedup.ReplayFrom of the last consumed one.
func (r *runner) replayStart(ctx context.Context, p int, start, next int64) (int64, error) {
	if next <= start {
		return next, nil
	}
	msgs, err := r.opts.Log.Read(ctx, p, next-1, 1)
	if err != nil || len(msgs) == 0 {
		return 0, fmt.Errorf("replay partition %d: read offset %d: %v", p, next-1, err)
	}
	from := dedup.ReplayFrom(msgs[0].Time.UnixMicro(), r.opts.DedupSpan.Microseconds(), r.opts.Slack.Microseconds())
	off, err := r.opts.Log.OffsetForTime(ctx, p, time.UnixMicro(from))
	if err != nil {
		return 0, fmt.Errorf("replay partition %d: %w", p, err)
	}
	return max(start, min(off, next)), nil
}

// run is the main loop. rctx is cancelled by Close (abort) or by Run's ctx (orderly stop).
func (r *runner) run(rctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.committer()
	}()
	defer func() {
		close(r.jobs)
		wg.Wait()
		r.publish()
		// What was not committed is gone with this runner (a new one replays it): queries
		// show the committed state only.
		l := &r.a.live
		l.mu.Lock()
		l.segs[0].acc, l.segs[1].acc = nil, nil
		l.running = false
		if l.progress != nil {
			close(l.progress)
			l.progress = nil
		}
		l.mu.Unlock()
	}()
	poll := time.NewTimer(r.opts.PollInterval)
	defer poll.Stop()
	notifier, _ := r.opts.Log.(eventlog.Notifier)
	for rctx.Err() == nil {
		// Taken before reading: a commit after the reads closes it, so the wait below never
		// sleeps through records that arrived meanwhile.
		var appended <-chan struct{}
		if notifier != nil {
			appended = notifier.Appended()
		}
		progressed, err := r.readRound(rctx)
		if rctx.Err() != nil {
			break
		}
		if err != nil {
			return err
		}
		if progressed {
			r.feed()
			r.markCounted()
		}
		if err := r.maybeCommit(false); err != nil {
			return err
		}
		r.publish()
		if !progressed {
			poll.Reset(r.opts.PollInterval)
			select {
			case <-rctx.Done():
			case <-appended:
			case <-poll.C:
			case res := <-r.results:
				if err := r.finish(res); err != nil {
					return err
				}
			}
		}
	}
	if r.a.aborted() {
		return nil // abrupt: whatever was not committed is replayed on restart
	}
	// Orderly stop: wait for the commit in flight, then commit the rest.
	r.feed()
	if r.inflight {
		if err := r.finish(<-r.results); err != nil {
			return err
		}
	}
	if err := r.maybeCommit(true); err != nil {
		return err
	}
	if r.inflight {
		if err := r.finish(<-r.results); err != nil {
			return err
		}
	}
	return nil
}

// maybeCommit hands the accumulator to the committer when a commit is due (or force) and the
// committer is free; it blocks for the committer only when the accumulator is full.
func (r *runner) maybeCommit(force bool) error {
	full := r.acc.len() >= r.opts.MaxPending
	if !force && !full && time.Since(r.lastHandoff) < r.opts.CommitInterval {
		return nil
	}
	if r.inflight {
		select {
		case res := <-r.results:
			if err := r.finish(res); err != nil {
				return err
			}
		default:
			if !full {
				return nil
			}
			if err := r.finish(<-r.results); err != nil {
				return err
			}
		}
	}
	r.advanceWatermark()
	var ranges []metricstore.OffsetRange
	for i := range r.parts {
		ps := &r.parts[i]
		if ps.next != ps.handed {
			ranges = append(ranges, metricstore.OffsetRange{Partition: int32(ps.id), From: ps.handed, To: ps.next})
		}
	}
	fb := time.UnixMicro(r.finalBefore).UTC()
	if len(ranges) == 0 && r.acc.len() == 0 && (r.finalBefore == 0 || !fb.After(r.committedFB)) {
		r.lastHandoff = time.Now()
		return nil // nothing new to say
	}
	for i := range r.parts {
		ps := &r.parts[i]
		if _, end, err := r.opts.Log.Offsets(context.Background(), ps.id); err == nil {
			ps.end = end
		}
		ps.handed = ps.next
	}
	j := job{acc: r.acc, ranges: ranges}
	if r.finalBefore > 0 {
		j.finalBefore = fb
	}
	l := &r.a.live
	l.mu.Lock()
	l.segs[0], l.segs[1] = l.segs[1], l.segs[0] // the filling one goes in flight, offsets and all
	l.segs[0].acc = r.spare
	for i := range r.parts {
		l.segs[0].from[i], l.segs[0].to[i] = r.parts[i].next, r.parts[i].next
	}
	l.mu.Unlock()
	r.acc, r.spare = r.spare, nil
	r.inflight = true
	r.lastHandoff = time.Now()
	r.jobs <- j
	return nil
}

// feed gives Options.OnCount what was counted since the last feed; it runs before every
// handoff, so each counted event reaches it once.
func (r *runner) feed() {
	if r.opts.OnCount == nil {
		return
	}
	if r.fed = r.acc.feed(r.fed[:0]); len(r.fed) > 0 {
		r.opts.OnCount(r.fed)
		clear(r.fed)
	}
}

// advanceWatermark recomputes the watermark: the lowest receive time any partition could
// still deliver. A partition that is caught up and idle holds it back only to the time it
// was found idle.
func (r *runner) advanceWatermark() {
	wm := int64(1<<63 - 1)
	for i := range r.parts {
		ps := &r.parts[i]
		v := ps.lastRecv
		if ps.caughtUp {
			v = max(v, ps.idleSince)
		}
		wm = min(wm, v)
	}
	if len(r.parts) == 0 || wm <= 0 {
		return
	}
	wm -= r.opts.Slack.Microseconds()
	if wm > r.watermark {
		r.watermark = wm
	}
	if fb := r.watermark - r.opts.MaxLateness.Microseconds(); fb > r.finalBefore {
		r.finalBefore = fb
	}
}

// finish takes a committer result back.
func (r *runner) finish(res jobResult) error {
	r.inflight = false
	r.spare = res.job.acc
	if res.err != nil {
		return fmt.Errorf("commit offsets %v: %w", res.job.ranges, res.err)
	}
	for _, rg := range res.job.ranges {
		r.parts[r.index[rg.Partition]].committed = rg.To
	}
	if !res.job.finalBefore.IsZero() {
		r.committedFB = res.job.finalBefore
	}
	r.commits++
	r.lastLat = res.latency
	r.maxLat = max(r.maxLat, res.latency)
	r.totLat += res.latency
	return nil
}

// committer applies jobs in order. It uses a context without cancellation: an Apply that
// started is allowed to finish, so an orderly stop never half-commits (a crash may, and the
// store's atomicity covers that).
func (r *runner) committer() {
	var deltas []metricstore.Delta
	var scratch [2]map[levelKey]int
	ctx := context.Background()
	for j := range r.jobs {
		start := time.Now()
		deltas = j.acc.deltas(deltas[:0], &scratch)
		err := r.opts.Store.Apply(ctx, &metricstore.Commit{
			Consumer:    r.opts.Consumer,
			Epoch:       r.opts.Epoch,
			Ranges:      j.ranges,
			Deltas:      deltas,
			FinalBefore: j.finalBefore,
		})
		clear(deltas) // drop references to strings and maps before reuse
		// In the store now (or, after an error, never from this runner, which is ending):
		// withdraw it from what queries add, before it is reset and reused.
		r.a.live.mu.Lock()
		if r.a.live.segs[1].acc == j.acc {
			r.a.live.segs[1].acc = nil
		}
		r.a.live.mu.Unlock()
		j.acc.reset()
		r.results <- jobResult{job: j, err: err, latency: time.Since(start)}
	}
}

// publish copies the runner's counters to the Aggregator for Stats.
func (r *runner) publish() {
	a := r.a
	a.mu.Lock()
	defer a.mu.Unlock()
	s := &a.stats
	s.EventsConsumed, s.EventsCounted, s.Duplicates = r.consumed, r.counted, r.dups
	s.Uncounted, s.Corrupt, s.OutOfRange, s.LateAfterFinal, s.Replayed = r.uncounted, r.corrupt, r.outOfRange, r.late, r.replayed
	s.Commits, s.LastCommitLatency, s.MaxCommitLatency, s.TotalCommitLatency = r.commits, r.lastLat, r.maxLat, r.totLat
	s.PendingEntries = r.acc.len()
	s.DedupKeys = 0
	if r.watermark > 0 {
		s.Watermark = time.UnixMicro(r.watermark).UTC()
	}
	s.FinalBefore = r.committedFB
	if len(s.Partitions) != len(r.parts) {
		s.Partitions = make([]PartitionStats, len(r.parts))
	}
	for i := range r.parts {
		ps := &r.parts[i]
		if ps.dedup != nil {
			s.DedupKeys += ps.dedup.Len()
		}
		st := PartitionStats{Partition: ps.id, Committed: ps.committed, Consumed: ps.next, End: max(ps.end, ps.next), CaughtUp: ps.caughtUp}
		st.Lag = st.End - st.Consumed
		if ps.lastRecv > 0 {
			st.LastRecv = time.UnixMicro(ps.lastRecv).UTC()
		}
		s.Partitions[i] = st
	}
}
