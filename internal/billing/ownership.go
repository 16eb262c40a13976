package billing

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/adpulse/adpulse/internal/eventlog"
)

// Partition ownership. A Charger consumes only the partitions it owns. Embedded (Options.Group
// false), Open claims every partition of the log. With a consumer group (Options.Group true),
// the server calls Assign and Revoke from the group's callbacks:
//
//   - Assign(ctx, ps) claims ps in the ledger (bumping their epochs, so that the previous
//     owner's next commit for them fails with ledger.ErrFenced and writes nothing), loads
//     their committed offsets, rebuilds their impressions' duplicate filters from the log and
//     then adds them to the rounds. It may be called before Run.
//   - Revoke(ps) waits for a round in progress to end, then removes ps: nothing more is
//     committed for them once it returns. Revoking a partition not owned does nothing.
//
// Assign and Revoke are meant to be called from one goroutine (a consumer group calls its
// callbacks in order): a Revoke that overtakes the Assign of the same partition does not undo
// it.
//
// A Charger that missed its Revoke (a zombie: the group moved on without it) keeps reading its
// old partitions, but its next round including one of them is fenced: it drops them (stats
// Fenced) and goes on with the rest. A round is all or nothing, so a fenced round commits no
// partition's messages; the others are read again in the next round.

// Assign claims partitions and starts consuming them (see the ownership rules above).
func (c *Charger) Assign(ctx context.Context, partitions []int32) error {
	if c.closed.Load() {
		return ErrClosed
	}
	ps := slices.Clone(partitions)
	slices.Sort(ps)
	ps = slices.Compact(ps)
	n := int32(c.opts.Log.Partitions())
	for _, p := range ps {
		if p < 0 || p >= n {
			return fmt.Errorf("billing: partition %d: the log has %d", p, n)
		}
	}
	start := time.Now()
	claims, err := c.store.Claim(ctx, ps)
	if err != nil {
		return fmt.Errorf("billing: claim partitions %v: %w", ps, err)
	}
	owned := make(map[int32]*ownedPartition, len(claims))
	for _, cl := range claims {
		p := int(cl.Partition)
		start, end, err := c.opts.Log.Offsets(ctx, p)
		if err != nil {
			return fmt.Errorf("offsets of partition %d: %w", p, err)
		}
		next := cl.Next
		if !cl.Committed {
			next = start
		}
		if next < start {
			// Clicks were deleted by log retention before they were charged: spend can no
			// longer be exact, and only an operator can decide what to do about it.
			return fmt.Errorf("billing: partition %d: committed offset %d is before the log's first retained offset %d: %w", p, next, start, eventlog.ErrOffsetOutOfRange)
		}
		if next > end {
			return fmt.Errorf("billing: partition %d: committed offset %d is past the log's end %d (was the log replaced?): %w", p, next, end, eventlog.ErrOffsetOutOfRange)
		}
		// The impression window is rebuilt by the first round that reads the partition
		// (buildViewDups), not here: it reads the log back over the dedup span, which takes
		// seconds, and an embedded Charger assigns in Open, on the process's path to ready.
		owned[cl.Partition] = &ownedPartition{epoch: cl.Epoch, next: next, dupsPending: true}
	}
	c.w.mu.Lock()
	for p, op := range owned {
		c.w.parts[p] = op
	}
	c.setCommitted(c.w.parts)
	c.w.mu.Unlock()
	c.mu.Lock()
	c.stats.Claims += int64(len(owned))
	c.mu.Unlock()
	c.opts.Logger.Info("billing: partitions assigned", "partitions", ps, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// Revoke stops consuming partitions; once it returns, nothing more is committed for them.
func (c *Charger) Revoke(partitions []int32) {
	c.w.mu.Lock()
	for _, p := range partitions {
		delete(c.w.parts, p)
	}
	c.setCommitted(c.w.parts)
	c.w.mu.Unlock()
	c.opts.Logger.Info("billing: partitions revoked", "partitions", partitions)
}

// Owned returns the partitions this Charger consumes, sorted.
func (c *Charger) Owned() []int32 {
	c.w.mu.Lock()
	defer c.w.mu.Unlock()
	out := make([]int32, 0, len(c.w.parts))
	for p := range c.w.parts {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// setCommitted copies the owned partitions' committed offsets for Stats. Called with w.mu held.
func (c *Charger) setCommitted(parts map[int32]*ownedPartition) {
	m := make(map[int32]int64, len(parts))
	for p, op := range parts {
		m[p] = op.next
	}
	c.mu.Lock()
	c.committed = m
	c.mu.Unlock()
}
