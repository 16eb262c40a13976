package attribution

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/ingest"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/cockroachdb/pebble"
)

// One partition's attribution in shared processing.
//
// The owner of log partition p runs two consumers, each with its own offsets in the metric
// store and fenced by p's epoch:
//
//   - the republisher ("attribute-touches/p<p>") copies the valid touches of log partition p
//     to the touches topic, each to the partition of its user (ingest.Partition of the user
//     id, the partition the user's conversions are in), then commits the offset it reached;
//   - the partition stage ("attribute/p<p>") reads the conversions of log partition p and the
//     touches of touches partition p (range 0 and range 1 of its commits) and commits each
//     round's credits to the metric store with the offsets they came from, in one Apply
//     that names both ranges (an empty one too, so that the fence checks both).
//
// A crash between the republisher's append and its commit copies the same touches again:
// the stage keeps a touch key once, so a copy changes nothing. The partition stage keeps its
// touches and decisions in a Pebble database it rebuilds on every start: it replays the
// touches for as long as touches are remembered (TouchRetention) and the conversions for
// ConversionRetention before the last committed message, up to the committed offsets,
// without emitting anything (the store has those credits), then goes on live. Since a
// decision is Policy.Choose over the set of touches, the rebuilt decisions of every
// conversion a late touch can still move are the ones whose credits the store holds, so a
// later late touch moves exactly what was counted.

// sharedMode is what a partition stage does differently from the embedded one.
type sharedMode struct {
	consumer string
	epoch    uint64
	// limit is where the metric store's checkpoint was when the stage started: offsets
	// below it are replayed without emitting credits.
	limit     []int64
	replaying bool
}

// replayDone ends the replay once every source has reached its limit.
func (m *sharedMode) replayDone(next []int64) {
	if !m.replaying {
		return
	}
	for i := range next {
		if next[i] < m.limit[i] {
			return
		}
	}
	m.replaying = false
}

// wants reports whether source i is read this round: while replaying, only up to its limit,
// so that a round is all replay or all live.
func (m *sharedMode) wants(i int, next int64) bool { return !m.replaying || next < m.limit[i] }

// trim cuts what a round read: while replaying, at the limits; and to the earliest last
// append time among the sources that returned messages, so that one source cannot run
// ahead of the other in time (the touches topic holds far fewer bytes per second than the
// log, so its reads reach further ahead in time, and a conversion should meet the touches
// that reached the log before it). The source with that earliest time keeps everything it
// returned, so every round progresses.
func (m *sharedMode) trim(got [][]eventlog.Message) {
	if m.replaying {
		for i, msgs := range got {
			j := len(msgs)
			for j > 0 && msgs[j-1].Offset >= m.limit[i] {
				j--
			}
			got[i] = msgs[:j]
		}
	}
	var cut time.Time
	n := 0
	for _, msgs := range got {
		if len(msgs) == 0 {
			continue
		}
		if t := msgs[len(msgs)-1].Time; n == 0 || t.Before(cut) {
			cut = t
		}
		n++
	}
	if n < 2 {
		return
	}
	for i, msgs := range got {
		j := len(msgs)
		for j > 0 && msgs[j-1].Time.After(cut) {
			j--
		}
		got[i] = msgs[:j]
	}
}

// applyError is a metric store Apply that failed: the round was not committed anywhere.
type applyError struct{ err error }

func (e applyError) Error() string { return e.err.Error() }
func (e applyError) Unwrap() error { return e.err }

// openPartition opens the stage of partition part in shared processing: a fresh database in
// o.Dir (whatever was there is removed: the log is the source of truth), reading the
// conversions of o.Log's partition and the touches of touches' partition of the same number,
// positioned to replay what the metric store's checkpoint of consumer already holds.
func openPartition(ctx context.Context, o Options, touches eventlog.Log, part int, consumer string, epoch uint64) (*Stage, error) {
	o.setDefaults()
	if err := o.FS.RemoveAll(o.Dir); err != nil {
		return nil, fmt.Errorf("attribution: clear %s: %w", o.Dir, err)
	}
	db, err := openDB(&o)
	if err != nil {
		return nil, err
	}
	s := newStage(o, db, []source{{log: o.Log, part: part, only: takeConversions}, {log: touches, part: part, only: takeTouches}})
	s.sh = &sharedMode{consumer: consumer, epoch: epoch, limit: make([]int64, len(s.src))}
	if err := s.position(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// position sets where each source is read from: the replay start, or the first retained
// offset of a source the store never committed.
func (s *Stage) position(ctx context.Context) error {
	cp, err := s.o.Metrics.Checkpoint(ctx, s.sh.consumer)
	if err != nil {
		return fmt.Errorf("attribution: metric store checkpoint: %w", err)
	}
	starts := make([]int64, len(s.src))
	var last time.Time
	for i := range s.src {
		src := &s.src[i]
		start, _, err := src.log.Offsets(ctx, src.part)
		if err != nil {
			return fmt.Errorf("attribution: offsets of partition %d: %w", src.part, err)
		}
		starts[i] = start
		to, ok := cp.Offsets[int32(i)]
		if !ok {
			to = start
		}
		s.sh.limit[i] = to
		if to > start {
			msgs, err := src.log.Read(ctx, src.part, to-1, 1)
			if err != nil {
				return fmt.Errorf("attribution: read partition %d at %d: %w", src.part, to-1, err)
			}
			if len(msgs) > 0 && msgs[0].Time.After(last) {
				last = msgs[0].Time
			}
		}
	}
	for i := range s.src {
		s.next[i] = s.sh.limit[i]
		if s.sh.limit[i] <= starts[i] {
			continue
		}
		from := last.Add(-s.replayWindow(s.src[i].only))
		off, err := s.src[i].log.OffsetForTime(ctx, s.src[i].part, from)
		if err != nil {
			return fmt.Errorf("attribution: offset for %v: %w", from, err)
		}
		s.next[i] = min(max(off, starts[i]), s.sh.limit[i])
		if s.next[i] < s.sh.limit[i] {
			s.sh.replaying = true
		}
	}
	return nil
}

// ReplayMargin is added to the touches' replay window: a touch's append time may precede its
// event time (clock skew), and the touches it must bring back are chosen by event time.
const ReplayMargin = 24 * time.Hour

// TouchRetention is how long the touches topic must keep a touch so that a partition stage
// rebuilt on takeover has every touch the previous owner still remembered.
func TouchRetention(p Policy, maxLateness, slack time.Duration) time.Duration {
	return p.Horizon() + maxLateness + slack + ReplayMargin
}

// replayWindow is how far before the last committed message a rebuilt stage reads a source
// again: touches for as long as they are remembered; conversions for ConversionRetention, so
// that a copy of one counted before is recognised (only those within the lateness can still
// change credit, and their touches are within the touches' window).
func (s *Stage) replayWindow(k sourceKind) time.Duration {
	if k == takeTouches {
		return TouchRetention(s.o.Policy, s.o.MaxLateness, s.o.Slack)
	}
	return s.o.ConversionRetention
}

// commitShared commits a round of a partition stage: unless it replays, its credits and the
// offsets they came from go to the metric store in one fenced Apply first; then the round's
// state. The database is rebuilt on every start, so it need not be synced; if the Apply
// fails the round is dropped and read again.
func (s *Stage) commitShared(ctx context.Context, r *round) error {
	if !s.sh.replaying && len(r.ranges) > 0 {
		// Every source's range, empty ones too: the store's fence checks only the ranges a
		// commit names, and a round decided without what another writer committed of the
		// other source since this stage read the checkpoint (a previous owner's last write,
		// landing after the claim) must conflict, not land beside it; the stage then
		// rebuilds with that write in.
		c := &metricstore.Commit{Consumer: s.sh.consumer, Epoch: s.sh.epoch, Deltas: mergeDeltas(r.deltas)}
		for i := range s.next {
			to, ok := r.ranges[i]
			if !ok {
				to = s.next[i]
			}
			c.Ranges = append(c.Ranges, metricstore.OffsetRange{Partition: int32(i), From: s.next[i], To: to})
		}
		if err := s.o.Metrics.Apply(ctx, c); err != nil {
			return applyError{fmt.Errorf("attribution: commit to the metric store: %w", err)}
		}
	}
	if err := r.b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("attribution: commit: %w", err)
	}
	for p, next := range r.ranges {
		s.next[p] = next
	}
	r.st.Commits++
	return nil
}

// republisher copies the valid touches of one log partition to the touches topic, keyed by
// user, and commits how far it got to the metric store under its own consumer (no deltas).
type republisher struct {
	log, touches eventlog.Log
	part         int
	store        metricstore.Store
	consumer     string
	epoch        uint64
	readBytes    int
	next         int64
	out          []eventlog.Message
	ev           event.Event
	copied       atomic.Int64 // read by Shared.SharedStats
}

func openRepublisher(ctx context.Context, o *Options, touches eventlog.Log, part int, consumer string, epoch uint64) (*republisher, error) {
	r := &republisher{log: o.Log, touches: touches, part: part, store: o.Metrics, consumer: consumer, epoch: epoch, readBytes: o.ReadBytes}
	cp, err := o.Metrics.Checkpoint(ctx, consumer)
	if err != nil {
		return nil, fmt.Errorf("attribution: metric store checkpoint: %w", err)
	}
	next, ok := cp.Offsets[int32(part)]
	if !ok {
		if next, _, err = o.Log.Offsets(ctx, part); err != nil {
			return nil, fmt.Errorf("attribution: offsets of partition %d: %w", part, err)
		}
	}
	r.next = next
	return r, nil
}

// step copies what the partition has past the committed offset; it returns how many log
// messages it went through.
func (r *republisher) step(ctx context.Context) (int, error) {
	msgs, err := r.log.Read(ctx, r.part, r.next, r.readBytes)
	if err != nil || len(msgs) == 0 {
		return 0, err
	}
	r.out = r.out[:0]
	parts := r.touches.Partitions()
	for i := range msgs {
		ev := &r.ev
		if ev.Decode(msgs[i].Value) != nil || !attributable(ev) || ev.Invalid != event.ReasonNone ||
			(ev.Type != event.TypeClick && ev.Type != event.TypeImpression) {
			continue
		}
		r.out = append(r.out, eventlog.Message{Partition: ingest.Partition(ev.UserID, parts), Value: msgs[i].Value})
	}
	if len(r.out) > 0 {
		if err := r.touches.Append(ctx, r.out); err != nil {
			return 0, fmt.Errorf("attribution: republish touches: %w", err)
		}
	}
	to := msgs[len(msgs)-1].Offset + 1
	c := &metricstore.Commit{Consumer: r.consumer, Epoch: r.epoch, Ranges: []metricstore.OffsetRange{{Partition: int32(r.part), From: r.next, To: to}}}
	if err := r.store.Apply(ctx, c); err != nil {
		return 0, applyError{fmt.Errorf("attribution: commit republished offsets: %w", err)}
	}
	r.next = to
	r.copied.Add(int64(len(r.out)))
	clear(r.out) // do not pin the read's buffers
	return len(msgs), nil
}

// run copies until ctx ends, a write is fenced or conflicts (the caller restarts it from the
// store), or the log fails for good.
func (r *republisher) run(ctx context.Context, poll time.Duration, onRetry func(error)) error {
	const minBackoff, maxBackoff = 50 * time.Millisecond, 5 * time.Second
	backoff := minBackoff
	timer := time.NewTimer(0)
	defer timer.Stop()
	for ctx.Err() == nil {
		n, err := r.step(ctx)
		wait := poll
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, metricstore.ErrConflict):
			return err
		case err != nil:
			// The append or the commit failed: the same messages are copied again (the
			// stage drops the copies of a touch).
			onRetry(err)
			wait, backoff = backoff, min(2*backoff, maxBackoff)
		case n > 0:
			backoff = minBackoff
			continue
		default:
			backoff = minBackoff
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

// sortedParts returns the keys of m in order.
func sortedParts[V any](m map[int32]V) []int32 {
	return slices.Sorted(func(yield func(int32) bool) {
		for p := range m {
			if !yield(p) {
				return
			}
		}
	})
}
