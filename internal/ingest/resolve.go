package ingest

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/adpulse/adpulse/internal/dedup"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
)

// resolver settles the keys of appends whose outcome was unknown: after a pause long enough
// for anything still on its way to have landed, it reads the log from just before the append
// and commits the keys whose events it finds and releases the others. Until then the keys
// stay reserved, so a retry waits (and gets 503) instead of appending a second copy.
//
// A log that reports a failure of its own (Err) is not trusted to say what is missing: an
// event may be on disk yet unreadable until the log is reopened. Its keys stay held; the
// failing log stops the process, and the restart rebuilds the keys from what the log holds.
type resolver struct {
	log     eventlog.Log
	keys    dedup.Store
	after   time.Duration
	timeout time.Duration
	logger  *slog.Logger
	hot     *hotAds // nil: salting off; else released keys are pinned to their partition

	mu                  sync.Mutex
	batches             []*maybeBatch
	held                int64
	resolved, recovered int64
	wake                chan struct{}
}

// maybeBatch is the keys of one append with an unknown outcome.
type maybeBatch struct {
	keys       map[string]int32 // key -> the partition its event was sent to
	partitions []int32
	started    time.Time // wall clock just before the append
	due        time.Time
}

// failingLog is a log that can report a failure of its own (locallog after a failed
// rollback).
type failingLog interface{ Err() error }

func newResolver(log eventlog.Log, keys dedup.Store, after, timeout time.Duration, logger *slog.Logger) *resolver {
	return &resolver{log: log, keys: keys, after: after, timeout: timeout, logger: logger, wake: make(chan struct{}, 1)}
}

// add takes over the keys of msgs (keys[i] is the key of msgs[i]).
func (r *resolver) add(keys []string, msgs []eventlog.Message, started time.Time) {
	mb := &maybeBatch{keys: make(map[string]int32, len(keys)), started: started, due: time.Now().Add(r.after)}
	seen := map[int32]bool{}
	for i, k := range keys {
		mb.keys[k] = msgs[i].Partition
		if p := msgs[i].Partition; !seen[p] {
			seen[p] = true
			mb.partitions = append(mb.partitions, p)
		}
	}
	r.mu.Lock()
	r.batches = append(r.batches, mb)
	r.held += int64(len(mb.keys))
	r.mu.Unlock()
	r.logger.Warn("append outcome unknown; keys held until the log is checked", "keys", len(keys), "partitions", len(mb.partitions))
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *resolver) stats() (held, resolved, recovered int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.held, r.resolved, r.recovered
}

// run resolves due batches until ctx ends. A batch that cannot be resolved now (the log
// cannot be read, or has failed) is tried again later.
func (r *resolver) run(ctx context.Context) error {
	t := time.NewTicker(max(r.after/4, 50*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-r.wake:
		}
		r.mu.Lock()
		var due []*maybeBatch
		now := time.Now()
		for _, mb := range r.batches {
			if !now.Before(mb.due) {
				due = append(due, mb)
			}
		}
		r.mu.Unlock()
		for _, mb := range due {
			if err := r.resolve(ctx, mb); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				r.logger.Warn("cannot resolve keys with an unknown append outcome yet", "keys", len(mb.keys), "err", err)
				mb.due = time.Now().Add(r.after)
				continue
			}
			r.mu.Lock()
			for i, x := range r.batches {
				if x == mb {
					r.batches = append(r.batches[:i], r.batches[i+1:]...)
					break
				}
			}
			r.held -= int64(len(mb.keys))
			r.mu.Unlock()
		}
	}
}

// resolve looks for mb's events in the log and settles every key.
func (r *resolver) resolve(ctx context.Context, mb *maybeBatch) error {
	if f, ok := r.log.(failingLog); ok {
		if err := f.Err(); err != nil {
			return fmt.Errorf("the log has failed: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*r.timeout)
	defer cancel()
	found := make([]string, 0, len(mb.keys))
	var ev event.Event
	// Append times are set by the log after the append started; a second of margin covers
	// a log whose clock differs a little from ours.
	from := mb.started.Add(-time.Second)
	for _, p := range mb.partitions {
		off, err := r.log.OffsetForTime(ctx, int(p), from)
		if err != nil {
			return err
		}
		for {
			msgs, err := r.log.Read(ctx, int(p), off, 1<<20)
			if err != nil {
				return err
			}
			if len(msgs) == 0 {
				break
			}
			for _, m := range msgs {
				if ev.Decode(m.Value) != nil {
					continue
				}
				if _, ok := mb.keys[ev.Key()]; ok {
					found = append(found, ev.Key())
				}
			}
			off = msgs[len(msgs)-1].Offset + 1
		}
	}
	// A key may be found more than once: an earlier copy may have landed late beside it.
	inLog := make(map[string]struct{}, len(found))
	for _, k := range found {
		inLog[k] = struct{}{}
	}
	missing := make([]string, 0, len(mb.keys)-len(inLog))
	for k := range mb.keys {
		if _, ok := inLog[k]; !ok {
			missing = append(missing, k)
		}
	}
	if len(inLog) > 0 {
		keys := make([]string, 0, len(inLog))
		for k := range inLog {
			keys = append(keys, k)
		}
		// The receive time is lost; the append's start is within MaxHold of it.
		if err := r.keys.Commit(ctx, keys, mb.started); err != nil {
			return err
		}
	}
	if r.hot != nil && len(missing) > 0 {
		// The resolver's pause makes a late landing unlikely, not impossible: a retry of a
		// missing key must go where its first copy went, so that the stages' per-partition
		// duplicate filter sees both if the first one lands after all. Pinned before the
		// release, so no retry can be placed elsewhere.
		parts := make([]int32, len(missing))
		for i, k := range missing {
			parts[i] = mb.keys[k]
		}
		r.hot.pin(missing, parts, time.Now())
	}
	if err := r.keys.Release(ctx, missing); err != nil {
		return err
	}
	r.mu.Lock()
	r.resolved += int64(len(mb.keys))
	r.recovered += int64(len(inLog))
	r.mu.Unlock()
	r.logger.Info("resolved keys with an unknown append outcome", "keys", len(mb.keys), "found_in_log", len(inLog))
	return nil
}
