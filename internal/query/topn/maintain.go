package topn

import (
	"context"
	"time"
)

// Run applies queued deltas, compacts and evicts every MaintainInterval until ctx is done. It
// returns nil when ctx is done.
func (ix *Index) Run(ctx context.Context) error {
	t := time.NewTicker(ix.opts.MaintainInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		ix.Maintain()
	}
}

// Close releases nothing (the index is memory only); it is here so the server can treat the
// index like its other long-lived parts.
func (ix *Index) Close() error { return nil }

// Compaction thresholds.
const (
	// coldMinLive: a block that no longer changes much is recompacted once its maps hold this
	// many entries, or an eighth of its frozen layer, whichever is more. Below that, late
	// updates stay in a small map while they keep coming; once a maintain interval passes
	// without a write to the block it is compacted whatever its size, because reading a block
	// whole (brute force) looks every frozen entry up in the live map: a third of a top query
	// on a settled store of a million ads. The blocks that take late updates at all are
	// bounded by the aggregator's lateness.
	coldMinLive = 256
	// hotMaxLive bounds the map of an hour still being written: past max(hotMaxLive, half
	// the frozen layer) it is compacted anyway, so the current hour of ten million ads does
	// not sit in a map of millions of entries (about 48 bytes each, against 3 frozen). Not
	// less: every compaction makes the ids written next pay a frozen lookup again.
	hotMaxLive = 1 << 18
	// hotMinuteMaxLive is the same for a minute still being written; a minute is small, so
	// it waits until it is cold unless something extraordinary happens.
	hotMinuteMaxLive = 1 << 20
	// resolveBatch bounds the ids whose owner one Maintain retries.
	resolveBatch = 4096
)

// Maintain applies queued deltas, evicts expired hours, retries unresolved owners, starts
// byte order builds that are due (order.go) and compacts blocks that are due. The merging
// runs without the lock; only the swaps take it.
func (ix *Index) Maintain() {
	ix.maintMu.Lock()
	defer ix.maintMu.Unlock()
	now := ix.nowMinute()

	ix.mu.Lock()
	ix.applyPendingLocked()
	ix.evictLocked(now)
	ix.retryOwnersLocked()
	for _, lv := range ix.st.levels { // every id may tie: order a large level before a query waits for it
		ix.needOrder(lv, lv.ids.len())
	}
	jobs := ix.sealLocked(now)
	ix.mu.Unlock()

	for _, b := range jobs {
		start := time.Now()
		// Only this goroutine (holding maintMu) writes base and sealed, and Add only writes
		// live, so both can be read here without the lock while queries read them too.
		merged := mergeFrozen(b.base, b.sealed)
		ix.mu.Lock()
		b.base = merged
		b.sealed = nil
		if len(b.live) == 0 {
			b.neg = merged.negOrZero()
		}
		ix.mu.Unlock()
		ix.compactions.Add(1)
		ix.compactionNanos.Add(time.Since(start).Nanoseconds())
	}
}

func (f *frozen) negOrZero() vals {
	if f == nil {
		return vals{}
	}
	return f.neg
}

// evictLocked drops whole hours that end before the retained range.
func (ix *Index) evictLocked(now int64) {
	cut := ix.evictBefore(now)
	st := ix.st
	if cut <= st.floor {
		return
	}
	for _, lv := range st.levels {
		for h := range lv.hours {
			if h*60+60 <= cut {
				delete(lv.hours, h)
			}
		}
		for m := range lv.minutes {
			if m < cut {
				delete(lv.minutes, m)
			}
		}
	}
	st.floor = cut
}

// retryOwnersLocked resolves ids whose owner was unknown when they were first seen.
func (ix *Index) retryOwnersLocked() {
	if ix.opts.Owners == nil {
		return
	}
	st := ix.st
	for l := range 2 {
		lv := st.levels[l]
		n := min(len(lv.unresolved), resolveBatch)
		if n == 0 {
			continue
		}
		batch := lv.unresolved[:n]
		rest := lv.unresolved[n:]
		// resolve appends failures to unresolved, so detach the batch first.
		lv.unresolved = append(make([]uint32, 0, len(rest)+n), rest...)
		for _, num := range batch {
			st.resolve(levelOf(l), num, ix.opts.Owners)
		}
	}
}

// sealLocked seals the live layer of every block due for compaction and returns them.
func (ix *Index) sealLocked(now int64) []*block {
	var jobs []*block
	due := func(b *block, cold bool, hotMax int) bool {
		quiet := !b.written
		b.written = false
		if b.sealed != nil || len(b.live) == 0 {
			return false
		}
		n := b.base.entries()
		if cold {
			return b.base == nil || quiet || len(b.live) >= max(coldMinLive, n/8)
		}
		return len(b.live) >= max(hotMax, n/2)
	}
	for _, lv := range ix.st.levels {
		for m, b := range lv.minutes {
			if due(b, m < now-1, hotMinuteMaxLive) {
				b.sealed, b.live = b.live, nil
				jobs = append(jobs, b)
			}
		}
		for h, hb := range lv.hours {
			if due(&hb.block, h*60+60 < now-1, hotMaxLive) {
				hb.sealed, hb.live = hb.live, nil
				jobs = append(jobs, &hb.block)
			}
		}
	}
	return jobs
}
