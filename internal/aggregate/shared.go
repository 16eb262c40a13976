package aggregate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/metricstore"
)

// Shared is the aggregation stage of a process node that shares the log with other nodes
// (kafkalog.Membership): one Aggregator per partition the node owns, each committing under its
// own consumer name (PartitionConsumer), so a partition moves between nodes with its offsets,
// duplicate filter and finality, independently of the others.
//
// Fencing: the new owner resumes from the store's checkpoint of the partition's consumer. If
// the old owner commits after that read (it had not yet seen the revocation, or it was paused),
// the new owner's next Apply does not continue the stored offsets and fails with
// metricstore.ErrConflict; Shared then restarts that partition's aggregator from the store, so
// the late commit is counted once and nothing is counted twice. The old owner's own next
// Apply fails the same way, and it drops the partition.
type Shared struct {
	base  Options
	claim ClaimFunc

	ctx  context.Context // lives until Run returns; the aggregators run under it
	stop context.CancelFunc

	mu       sync.Mutex
	running  map[int32]*sharedPart
	fatal    chan error
	past     Stats // counters of aggregators that stopped, kept for the totals
	restarts int64 // aggregators restarted after another node committed their partition
	fenced   int64 // aggregators stopped because a later owner wrote their partition
}

type sharedPart struct {
	agg    *Aggregator
	cancel context.CancelFunc
	done   chan struct{}
	revoke bool // set by Revoke: its end is expected
	epoch  uint64
}

// ClaimFunc claims partitions for this node and returns their new ownership epochs
// (catalog.ClaimPartitions). Commits carry the epoch, so the store refuses a previous
// owner's late writes and does not wait for its unfinished ones.
type ClaimFunc func(ctx context.Context, partitions []int32) (map[int32]uint64, error)

// PartitionConsumer is the consumer name of partition p's aggregator in a Shared stage.
func PartitionConsumer(base string, p int32) string {
	if base == "" {
		base = DefaultConsumer
	}
	return base + "/p" + strconv.Itoa(int(p))
}

// NewShared returns a Shared stage; base configures every partition's Aggregator (its
// Partitions, Consumer and Epoch are set per partition). claim may be nil (epoch 0: the
// offset fence alone).
func NewShared(base Options, claim ClaimFunc) (*Shared, error) {
	if base.Log == nil || base.Store == nil {
		return nil, errors.New("aggregate: Options.Log and Options.Store are required")
	}
	s := &Shared{base: base, claim: claim, running: make(map[int32]*sharedPart), fatal: make(chan error, 1)}
	s.ctx, s.stop = context.WithCancel(context.Background())
	return s, nil
}

var _ eventlog.Assignee = (*Shared)(nil)

// Assign claims the partitions and starts an aggregator for each.
func (s *Shared) Assign(ctx context.Context, parts []int32) error {
	epochs := map[int32]uint64{}
	if s.claim != nil {
		var err error
		if epochs, err = s.claim(ctx, parts); err != nil {
			return fmt.Errorf("aggregate: claim partitions %v: %w", parts, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx.Err() != nil {
		return ErrClosed
	}
	for _, p := range parts {
		if sp, ok := s.running[p]; ok {
			// Still running from before (a revocation we were not told about): stop it
			// before the new epoch's aggregator resumes from the store.
			sp.revoke = true
			sp.cancel()
			s.mu.Unlock()
			<-sp.done
			s.mu.Lock()
		}
		if err := s.startLocked(p, epochs[p]); err != nil {
			return err
		}
	}
	return nil
}

func (s *Shared) startLocked(p int32, epoch uint64) error {
	o := s.base
	o.Partitions = []int32{p}
	o.Epoch = epoch
	o.Consumer = PartitionConsumer(s.base.Consumer, p)
	if o.Logger != nil {
		o.Logger = o.Logger.With("partition", p)
	}
	agg, err := New(o)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(s.ctx)
	sp := &sharedPart{agg: agg, cancel: cancel, done: make(chan struct{}), epoch: epoch}
	s.running[p] = sp
	go func() {
		defer close(sp.done)
		err := agg.Run(ctx)
		s.ended(p, sp, err)
	}()
	return nil
}

// ended handles an aggregator's return: expected after Revoke or Run's end; after a fence,
// a restart from the store; anything else is fatal for the stage.
func (s *Shared) ended(p int32, sp *sharedPart, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := sp.agg.Stats()
	addCounters(&s.past, &st)
	if s.running[p] == sp {
		delete(s.running, p)
	}
	switch {
	case sp.revoke || s.ctx.Err() != nil:
	case errors.Is(err, metricstore.ErrFenced):
		// A later owner has written the partition: it is not ours any more, whatever the
		// group has told us so far. Its revocation is on its way.
		s.fenced++
		if s.base.Logger != nil {
			s.base.Logger.Warn("aggregate: partition taken over by another process; stopped", "partition", p, "err", err)
		}
	case errors.Is(err, metricstore.ErrConflict):
		// Another node committed this partition after we resumed it: start again from
		// what the store holds now. If we no longer own it, Revoke is on its way, and the
		// restarted aggregator is stopped by it before it can commit anything stale (its
		// own first Apply would be fenced the same way).
		if s.base.Logger != nil {
			s.base.Logger.Warn("aggregate: partition committed elsewhere; resuming from the store", "partition", p, "err", err)
		}
		s.restarts++
		if rerr := s.startLocked(p, sp.epoch); rerr != nil {
			s.fail(fmt.Errorf("aggregate: restart partition %d: %w", p, rerr))
		}
	case err != nil:
		s.fail(fmt.Errorf("aggregate: partition %d: %w", p, err))
	}
}

func (s *Shared) fail(err error) {
	select {
	case s.fatal <- err:
	default:
	}
}

// Revoke stops the aggregators of parts: each commits what it consumed (fenced, so a commit
// that lost the race to the new owner changes nothing) within a few seconds, or is stopped
// without committing (the new owner replays it).
func (s *Shared) Revoke(parts []int32) {
	var wait []*sharedPart
	s.mu.Lock()
	for _, p := range parts {
		if sp, ok := s.running[p]; ok {
			sp.revoke = true
			sp.cancel()
			wait = append(wait, sp)
		}
	}
	s.mu.Unlock()
	deadline := time.After(5 * time.Second)
	for _, sp := range wait {
		select {
		case <-sp.done:
		case <-deadline:
			sp.agg.Close()
		}
	}
}

// Run waits until ctx is done, then stops every aggregator in order (each commits what it
// consumed). It returns the first error that is fatal for the stage.
func (s *Shared) Run(ctx context.Context) error {
	var err error
	select {
	case <-ctx.Done():
	case err = <-s.fatal:
	}
	s.mu.Lock()
	var parts []int32
	for p := range s.running {
		parts = append(parts, p)
	}
	s.mu.Unlock()
	s.Revoke(parts)
	s.stop()
	return err
}

// Close stops every aggregator abruptly.
func (s *Shared) Close() error {
	s.stop()
	s.mu.Lock()
	var aggs []*Aggregator
	for _, sp := range s.running {
		aggs = append(aggs, sp.agg)
	}
	s.mu.Unlock()
	for _, a := range aggs {
		a.Close()
	}
	return nil
}

// Owned returns the partitions with a running aggregator.
func (s *Shared) Owned() []int32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(func(yield func(int32) bool) {
		for p := range s.running {
			if !yield(p) {
				return
			}
		}
	})
}

// Stats sums the counters of every aggregator this stage ran; the watermark and finality are
// the least of the running ones (zero when it owns none).
func (s *Shared) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out Stats
	addCounters(&out, &s.past)
	out.Fenced = s.restarts + s.fenced
	first := true
	for _, sp := range s.running {
		st := sp.agg.Stats()
		addCounters(&out, &st)
		out.PendingEntries += st.PendingEntries
		out.DedupKeys += st.DedupKeys
		out.Partitions = append(out.Partitions, st.Partitions...)
		if first || st.Watermark.Before(out.Watermark) {
			out.Watermark, out.WatermarkDelay = st.Watermark, st.WatermarkDelay
		}
		if first || st.FinalBefore.Before(out.FinalBefore) {
			out.FinalBefore = st.FinalBefore
		}
		first = false
	}
	slices.SortFunc(out.Partitions, func(a, b PartitionStats) int { return a.Partition - b.Partition })
	return out
}

func addCounters(out, st *Stats) {
	out.EventsConsumed += st.EventsConsumed
	out.EventsCounted += st.EventsCounted
	out.Duplicates += st.Duplicates
	out.Uncounted += st.Uncounted
	out.Corrupt += st.Corrupt
	out.OutOfRange += st.OutOfRange
	out.LateAfterFinal += st.LateAfterFinal
	out.Replayed += st.Replayed
	out.Commits += st.Commits
	out.TotalCommitLatency += st.TotalCommitLatency
	out.MaxCommitLatency = max(out.MaxCommitLatency, st.MaxCommitLatency)
	if st.LastCommitLatency > 0 {
		out.LastCommitLatency = st.LastCommitLatency
	}
}
