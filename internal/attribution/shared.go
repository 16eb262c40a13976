package attribution

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/metricstore"
)

// TouchesTopicSuffix names the touches topic after the log's topic ("events-touches").
const TouchesTopicSuffix = "-touches"

// TouchesConsumer is the metric store consumer name prefix of the republishers.
const TouchesConsumer = "attribute-touches"

// PartitionConsumer is the consumer name of a partition's stage ("attribute/p3") or
// republisher ("attribute-touches/p3") in shared processing.
func PartitionConsumer(base string, p int32) string { return base + "/p" + strconv.Itoa(int(p)) }

// ClaimFunc claims partitions for this node and returns their new ownership epochs
// (catalog.ClaimPartitions).
type ClaimFunc func(ctx context.Context, partitions []int32) (map[int32]uint64, error)

// SharedOptions configure a Shared stage.
type SharedOptions struct {
	// Options are every partition stage's: Dir is the directory under which each owned
	// partition has its database ("p3"), rebuilt from the log whenever it is taken.
	Options
	// Touches is the touches topic: as many partitions as Log, touches keyed by user.
	Touches eventlog.Log
	// Claim raises the epochs of the partitions this node takes (nil: epoch 0, the offset
	// fence alone).
	Claim ClaimFunc
}

// Shared is the attribution stage of a process node that shares the log with other nodes
// (kafkalog.Membership): for each log partition it owns, a republisher and a partition
// stage (partition.go). Fencing is the metric store's, as for aggregate.Shared: a commit
// that does not continue the stored offsets fails with ErrConflict, and the consumer is
// restarted from the store (the partition stage rebuilds its state); a later epoch's write
// (ErrFenced) stops it for good.
type Shared struct {
	o SharedOptions

	ctx  context.Context
	stop context.CancelFunc

	mu       sync.Mutex
	running  map[int32]*sharedPart
	fatal    chan error
	past     Stats
	restarts int64
	fenced   int64
	copied   int64
}

type sharedPart struct {
	cancel context.CancelFunc
	done   chan struct{}
	stage  *Stage // the current one, for Stats; nil between restarts
	rep    *republisher
}

var _ eventlog.Assignee = (*Shared)(nil)

// NewShared returns a Shared stage owning no partition yet.
func NewShared(o SharedOptions) (*Shared, error) {
	if o.Dir == "" || o.Log == nil || o.Metrics == nil || o.Touches == nil {
		return nil, errors.New("attribution: Dir, Log, Touches and Metrics are required")
	}
	if o.Touches.Partitions() != o.Log.Partitions() {
		return nil, fmt.Errorf("attribution: the touches topic has %d partitions, the log %d", o.Touches.Partitions(), o.Log.Partitions())
	}
	o.setDefaults()
	s := &Shared{o: o, running: make(map[int32]*sharedPart), fatal: make(chan error, 1)}
	s.ctx, s.stop = context.WithCancel(context.Background())
	return s, nil
}

// Assign claims the partitions and starts their republishers and stages.
func (s *Shared) Assign(ctx context.Context, parts []int32) error {
	epochs := map[int32]uint64{}
	if s.o.Claim != nil {
		var err error
		if epochs, err = s.o.Claim(ctx, parts); err != nil {
			return fmt.Errorf("attribution: claim partitions %v: %w", parts, err)
		}
	}
	for _, p := range parts {
		s.Revoke([]int32{p}) // still running from before: stop it before the new epoch starts
		s.mu.Lock()
		if s.ctx.Err() != nil {
			s.mu.Unlock()
			return ErrClosed
		}
		s.startLocked(p, epochs[p])
		s.mu.Unlock()
	}
	return nil
}

func (s *Shared) startLocked(p int32, epoch uint64) {
	ctx, cancel := context.WithCancel(s.ctx)
	sp := &sharedPart{cancel: cancel, done: make(chan struct{})}
	s.running[p] = sp
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.runStage(ctx, p, epoch, sp) }()
	go func() { defer wg.Done(); s.runRepublisher(ctx, p, epoch, sp) }()
	go func() {
		wg.Wait()
		s.mu.Lock()
		if s.running[p] == sp {
			delete(s.running, p)
		}
		s.mu.Unlock()
		close(sp.done)
	}()
}

// runStage runs partition p's stage, rebuilding it after a conflict, until ctx ends or a
// later owner fences it.
func (s *Shared) runStage(ctx context.Context, p int32, epoch uint64, sp *sharedPart) {
	o := s.o.Options
	o.Dir = o.FS.PathJoin(s.o.Dir, "p"+strconv.Itoa(int(p)))
	o.Logger = o.Logger.With("partition", p)
	consumer := PartitionConsumer(o.Consumer, p)
	for ctx.Err() == nil {
		st, err := openPartition(ctx, o, s.o.Touches, int(p), consumer, epoch)
		if err == nil {
			s.mu.Lock()
			sp.stage = st
			s.mu.Unlock()
			err = st.Run(ctx)
			s.mu.Lock()
			sp.stage = nil
			stats := st.Stats()
			addStats(&s.past, &stats)
			s.mu.Unlock()
			if cerr := st.Close(); err == nil {
				err = cerr
			}
		}
		if !s.again(ctx, p, "stage", err) {
			return
		}
	}
}

// runRepublisher runs partition p's republisher, restarting it from the store after a
// conflict, until ctx ends or a later owner fences it.
func (s *Shared) runRepublisher(ctx context.Context, p int32, epoch uint64, sp *sharedPart) {
	consumer := PartitionConsumer(TouchesConsumer, p)
	logger := s.o.Logger.With("partition", p)
	for ctx.Err() == nil {
		r, err := openRepublisher(ctx, &s.o.Options, s.o.Touches, int(p), consumer, epoch)
		if err == nil {
			s.mu.Lock()
			sp.rep = r
			s.mu.Unlock()
			err = r.run(ctx, s.o.PollInterval, func(err error) {
				logger.Warn("attribution: republishing touches failed; retrying", "err", err)
				s.mu.Lock()
				s.past.MetricApplyErrors++
				s.mu.Unlock()
			})
			s.mu.Lock()
			sp.rep = nil
			s.copied += r.copied.Load()
			s.mu.Unlock()
		}
		if !s.again(ctx, p, "republisher", err) {
			return
		}
	}
}

// again decides what follows the end of a consumer: nothing after ctx's end or a fence, a
// restart from the store after a conflict (or a failure to open, after a pause), and for
// anything else the stage's failure.
func (s *Shared) again(ctx context.Context, p int32, what string, err error) bool {
	switch {
	case ctx.Err() != nil:
		return false
	case errors.Is(err, metricstore.ErrFenced):
		s.mu.Lock()
		s.fenced++
		s.mu.Unlock()
		s.o.Logger.Warn("attribution: partition taken over by another process; stopped", "partition", p, "consumer", what, "err", err)
		return false
	case errors.Is(err, metricstore.ErrConflict):
		s.mu.Lock()
		s.restarts++
		s.mu.Unlock()
		s.o.Logger.Warn("attribution: partition committed elsewhere; resuming from the store", "partition", p, "consumer", what, "err", err)
		return true
	case err == nil:
		return false
	}
	s.o.Logger.Error("attribution: partition failed", "partition", p, "consumer", what, "err", err)
	select {
	case s.fatal <- fmt.Errorf("attribution: partition %d %s: %w", p, what, err):
	default:
	}
	return false
}

// Revoke stops the partitions' consumers; an Apply under way ends with its context, so
// nothing more is written for them once Revoke returns (or 5 s passed, after which a late
// write is fenced by the next owner).
func (s *Shared) Revoke(parts []int32) {
	var wait []*sharedPart
	s.mu.Lock()
	for _, p := range parts {
		if sp, ok := s.running[p]; ok {
			sp.cancel()
			delete(s.running, p)
			wait = append(wait, sp)
		}
	}
	s.mu.Unlock()
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	for _, sp := range wait {
		select {
		case <-sp.done:
		case <-deadline.C:
			return
		}
	}
}

// Run waits until ctx is done or a partition fails, then stops every partition.
func (s *Shared) Run(ctx context.Context) error {
	var err error
	select {
	case <-ctx.Done():
	case err = <-s.fatal:
	}
	s.Close()
	return err
}

// Close stops every partition and waits for them (at most 5 s).
func (s *Shared) Close() error {
	s.mu.Lock()
	parts := sortedParts(s.running)
	s.mu.Unlock()
	s.Revoke(parts)
	s.stop()
	return nil
}

// Owned returns the partitions this node runs.
func (s *Shared) Owned() []int32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return sortedParts(s.running)
}

// Stats sums the counters of every partition stage this node ran.
func (s *Shared) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.past
	out.Partitions = nil
	for _, sp := range s.running {
		if sp.stage == nil {
			continue
		}
		st := sp.stage.Stats()
		addStats(&out, &st)
		out.DiskBytes += st.DiskBytes
		out.Partitions = append(out.Partitions, st.Partitions...)
	}
	return out
}

// SharedStats are the figures of shared processing only.
type SharedStats struct {
	Restarts      int64 // consumers restarted after another node committed their partition
	Fenced        int64 // consumers stopped by a later owner
	TouchesCopied int64 // touches republished to the touches topic
}

// SharedStats returns the figures of shared processing.
func (s *Shared) SharedStats() SharedStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	copied := s.copied
	for _, sp := range s.running {
		if sp.rep != nil {
			copied += sp.rep.copied.Load()
		}
	}
	return SharedStats{Restarts: s.restarts, Fenced: s.fenced, TouchesCopied: copied}
}

// addStats adds st's counters to out.
func addStats(out, st *Stats) {
	out.EventsConsumed += st.EventsConsumed
	out.Corrupt += st.Corrupt
	out.Touches += st.Touches
	out.DuplicateTouches += st.DuplicateTouches
	out.TouchesEvicted += st.TouchesEvicted
	out.TouchesExpired += st.TouchesExpired
	out.Conversions += st.Conversions
	out.DuplicateConversions += st.DuplicateConversions
	out.CreditedClick += st.CreditedClick
	out.CreditedView += st.CreditedView
	out.Uncredited += st.Uncredited
	out.Reattributed += st.Reattributed
	out.ConversionsExpired += st.ConversionsExpired
	out.Commits += st.Commits
	out.MetricApplyErrors += st.MetricApplyErrors
	out.LastRoundMicros = max(out.LastRoundMicros, st.LastRoundMicros)
}
