package billing

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
)

// The journal is the outbox between the billing database and the metric store (see the
// package comment for the protocol). Entries [applied, journalNext) are durable in the
// ledger and not yet in the store; the publisher applies them in order, many per
// Apply, fenced by the store on the JournalPartition offset.

// maxApplyEntries bounds the journal entries merged into one Apply.
const maxApplyEntries = 1024

// hookError marks a failure injected by a test hook: a simulated crash, which ends Run.
type hookError struct{ err error }

func (e hookError) Error() string { return "injected: " + e.err.Error() }
func (e hookError) Unwrap() error { return e.err }

// runPublisher applies the journal after every commit that wrote to it, and retries failed
// Applies with backoff. A metric store that is down delays spend in /metrics; it never loses
// or doubles it, and charging goes on meanwhile.
func (c *Charger) runPublisher(ctx context.Context) error {
	const minBackoff, maxBackoff = 50 * time.Millisecond, 5 * time.Second
	backoff := minBackoff
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		wait := time.Second // a safety net; commits kick
		if err := c.publish(ctx); err != nil {
			var he hookError
			switch {
			case errors.As(err, &he):
				return err
			case ctx.Err() != nil:
				return nil
			}
			c.mu.Lock()
			c.stats.MetricApplyErrors++
			c.mu.Unlock()
			c.opts.Logger.Warn("billing: applying spend to the metric store failed; retrying", "err", err, "retry_in", backoff)
			wait, backoff = backoff, min(2*backoff, maxBackoff)
		} else {
			backoff = minBackoff
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-c.kick:
		case <-timer.C:
		}
	}
}

// publish applies every journal entry committed so far to the metric store. Several nodes of
// a shared ledger may publish at once: the store's fence takes each entry once, and a node
// that loses the race adopts the store's checkpoint instead of retrying its range.
//
// With a consumer group, only the owner of partition 0 publishes, and its commits carry that
// partition's epoch: the journal consumer then has one writer at a time, and a new owner
// takes over from a dead or fenced one at once, instead of racing the other nodes' publishers
// (in ClickHouse two writers of one consumer wait for each other's lease).
func (c *Charger) publish(ctx context.Context) error {
	c.pubMu.Lock()
	defer c.pubMu.Unlock()
	var epoch uint64
	if c.opts.Group {
		c.w.mu.Lock()
		op := c.w.parts[0]
		c.w.mu.Unlock()
		if op == nil {
			return nil
		}
		epoch = uint64(op.epoch)
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.RoundTimeout) // a stalled ledger or store is retried, not waited for
	defer cancel()
	next, err := c.store.JournalNext(ctx)
	if err != nil {
		return fmt.Errorf("read journal seq: %w", c.readErr(err))
	}
	c.noteJournal(next)
	for {
		from := c.applied.Load()
		if from >= next {
			return c.dropApplied(ctx, from)
		}
		to := min(next, from+maxApplyEntries)
		sums := make(map[deltaKey]int64)
		want := from
		err := c.store.Journal(ctx, from, to, func(seq uint64, v []byte) error {
			if seq != want {
				return fmt.Errorf("%w: journal entry %d missing (found %d)", errCorrupt, want, seq)
			}
			want++
			return decodeJournal(v, sums)
		})
		if err == nil && want != to {
			err = fmt.Errorf("%w: journal entries %d..%d missing", errCorrupt, want, to)
		}
		if err != nil {
			// Another node may have applied and dropped them: the checkpoint says so.
			if m, ok := c.storeApplied(ctx); ok && m > int64(from) {
				c.noteJournal(uint64(m))
				c.applied.Store(uint64(m))
				c.mu.Lock()
				c.stats.MetricConflicts++
				c.mu.Unlock()
				continue
			}
			return fmt.Errorf("read journal [%d, %d): %w", from, to, c.readErr(err))
		}
		commit := &metricstore.Commit{
			Consumer: c.opts.Consumer,
			Epoch:    epoch,
			Ranges:   []metricstore.OffsetRange{{Partition: JournalPartition, From: int64(from), To: int64(to)}},
			Deltas:   make([]metricstore.Delta, 0, len(sums)),
		}
		for k, v := range sums {
			if v != 0 {
				commit.Deltas = append(commit.Deltas, metricstore.Delta{Level: k.level, ID: k.id, Minute: k.minute, Counts: metricstore.Counts{SpendMicros: v}})
			}
		}
		slices.SortFunc(commit.Deltas, func(a, b metricstore.Delta) int {
			return cmp.Or(cmp.Compare(a.Level, b.Level), cmp.Compare(a.ID, b.ID), cmp.Compare(a.Minute, b.Minute))
		})
		if h := c.opts.hooks; h != nil && h.beforeApply != nil {
			if err := h.beforeApply(); err != nil {
				return hookError{err}
			}
		}
		err = c.opts.Metrics.Apply(ctx, commit)
		if errors.Is(err, metricstore.ErrConflict) {
			// An earlier Apply went in though we did not hear so (a timeout, a crash), or
			// another node published these entries: the store's checkpoint says how far.
			cp, cerr := c.opts.Metrics.Checkpoint(ctx, c.opts.Consumer)
			if cerr != nil {
				return fmt.Errorf("apply journal [%d, %d): %w; reading the checkpoint: %w", from, to, err, cerr)
			}
			m, ok := cp.Offsets[JournalPartition]
			if !ok || m <= int64(from) {
				return fmt.Errorf("apply journal [%d, %d): the store's journal offset is %d (present %v): %w", from, to, m, ok, err)
			}
			if m > int64(next) { // other nodes committed and published more meanwhile
				c.noteJournal(uint64(m))
				next = uint64(m)
			}
			c.opts.Logger.Debug("billing: journal entries were already in the metric store", "from", from, "to", m)
			to = uint64(m)
			c.mu.Lock()
			c.stats.MetricConflicts++
			c.mu.Unlock()
		} else if err != nil {
			return fmt.Errorf("apply journal [%d, %d): %w", from, to, err)
		} else if h := c.opts.hooks; h != nil && h.afterApply != nil {
			if err := h.afterApply(); err != nil {
				return hookError{err}
			}
		}
		c.applied.Store(to)
		c.mu.Lock()
		c.stats.MetricApplies++
		c.mu.Unlock()
		if err := c.dropApplied(ctx, to); err != nil {
			return err
		}
	}
}

// storeApplied reads the metric store's journal offset.
func (c *Charger) storeApplied(ctx context.Context) (int64, bool) {
	cp, err := c.opts.Metrics.Checkpoint(ctx, c.opts.Consumer)
	if err != nil {
		return 0, false
	}
	m, ok := cp.Offsets[JournalPartition]
	return m, ok
}

// dropApplied deletes the journal entries below to, which are in the metric store. Called
// with pubMu held.
func (c *Charger) dropApplied(ctx context.Context, to uint64) error {
	if c.journalLow >= to {
		return nil
	}
	if err := c.store.DropJournal(ctx, to); err != nil {
		return fmt.Errorf("drop applied journal entries: %w", c.readErr(err))
	}
	c.journalLow = to
	return nil
}
