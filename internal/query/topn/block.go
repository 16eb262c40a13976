package topn

import (
	"cmp"
	"maps"
	"slices"
	"sync/atomic"
)

// block holds the totals of every id in one minute or one hour, in up to three layers, each
// holding totals (not deltas), newest first:
//
//   - live: ids changed since the last seal; the only layer Add writes.
//   - sealed: the previous live map, read-only while a compaction merges it into base off the
//     lock (so readers and the compaction may read it at the same time).
//   - base: the compressed frozen layer.
//
// get returns the first layer that has the id. A layer holding totals means an id updated
// again and again costs one base lookup per seal, not per delta.
type block struct {
	base   *frozen
	sealed map[uint32]vals
	live   map[uint32]vals
	// neg bounds how negative any value of the block is (-min, or 0): the slack that keeps a
	// partial hour's bound valid should the sums of some minutes be negative (the metric store
	// allows negative deltas). Conservative between compactions, exact after one.
	neg vals
	// written is set by add and cleared by every Maintain: a cold block whose live layer saw
	// no write for a whole maintain interval is compacted whatever its size (sealLocked).
	written bool
}

func (b *block) get(id uint32) vals {
	if v, ok := b.live[id]; ok {
		return v
	}
	return b.getBelowLive(id)
}

func (b *block) getBelowLive(id uint32) vals {
	if v, ok := b.sealed[id]; ok {
		return v
	}
	v, _ := b.base.get(id)
	return v
}

// add adds d to id's totals and returns the new totals.
func (b *block) add(id uint32, d *vals) vals {
	v, ok := b.live[id]
	if !ok {
		if b.live == nil {
			b.live = make(map[uint32]vals, 64)
		}
		v = b.getBelowLive(id)
	}
	v.add(d)
	b.live[id] = v
	b.written = true
	for m := 0; m < numMetrics; m++ {
		if v[m] < 0 && -v[m] > b.neg[m] {
			b.neg[m] = -v[m]
		}
	}
	return v
}

// size is an upper bound of the number of ids with an entry.
func (b *block) size() int { return b.base.entries() + len(b.sealed) + len(b.live) }

// settled reports whether the frozen layer holds the whole block: nothing newer shadows it.
func (b *block) settled() bool { return len(b.live) == 0 && len(b.sealed) == 0 }

// each calls fn with the totals of every id of the block (zeros included when a layer holds
// them). Ids in a newer layer shadow older ones.
func (b *block) each(fn func(id uint32, v *vals)) {
	it := b.base.iter()
	if b.settled() { // nothing shadows the base
		for it.next() {
			fn(it.id, &it.v)
		}
		return
	}
	for it.next() {
		if _, ok := b.live[it.id]; ok {
			continue
		}
		if _, ok := b.sealed[it.id]; ok {
			continue
		}
		fn(it.id, &it.v)
	}
	for id, v := range b.sealed {
		if _, ok := b.live[id]; ok {
			continue
		}
		fn(id, &v)
	}
	for id, v := range b.live {
		fn(id, &v)
	}
}

// mergeFrozen returns base with the totals of upd (which shadow base's) merged in.
func mergeFrozen(base *frozen, upd map[uint32]vals) *frozen {
	keys := slices.Collect(maps.Keys(upd))
	slices.Sort(keys)
	b := newFrozenBuilder(base.entries() + len(keys))
	it := base.iter()
	more := it.next()
	for _, k := range keys {
		for more && it.id < k {
			b.add(it.id, &it.v)
			more = it.next()
		}
		if more && it.id == k {
			more = it.next()
		}
		v := upd[k]
		b.add(k, &v)
	}
	for more {
		b.add(it.id, &it.v)
		more = it.next()
	}
	return b.finish()
}

func (b *block) memBytes() int64 {
	// A Go map slot of uint32 -> [3]int64 is 32 bytes plus a control byte, at a load factor
	// between about 0.44 and 0.88: count 48.
	return b.base.memBytes() + int64(len(b.sealed)+len(b.live))*48 + 64
}

// hourBlock is the block of one UTC hour with, per metric, a top set: the sorted access of the
// threshold algorithm.
type hourBlock struct {
	block
	top [numMetrics]topSet
}

func (h *hourBlock) add(id uint32, d *vals, limit int) {
	v := h.block.add(id, d)
	for m := 0; m < numMetrics; m++ {
		if d[m] != 0 {
			h.top[m].update(id, v[m], limit)
		}
	}
}

// topSet keeps a superset of the ids with the highest values of one metric in one hour.
//
// Invariant: every id that is not a member has a value <= cut. So the members, sorted, are a
// prefix of the hour's ranking down to cut, and cut bounds everything else: exactly what the
// threshold algorithm needs. The members number between limit and 2*limit once the hour has
// that many ids: when they reach 2*limit the lower half is dropped and cut raised to the
// largest dropped value, so keeping the invariant costs O(1) amortised per update, with no
// heap. Decrements keep the invariant too (a member may fall below cut; a non-member only
// falls further).
type topSet struct {
	items   []topItem
	pos     map[uint32]int32 // id -> index in items
	cut     int64
	version uint64 // bumped on every change, under the index's write lock
	// sorted caches items sorted by value, for the version it was made at; queries share it
	// and build it under the read lock, hence atomic.
	sorted atomic.Pointer[sortedTop]
}

type topItem struct {
	id uint32
	v  int64
}

type sortedTop struct {
	version uint64
	items   []topItem // value descending
}

func (t *topSet) update(id uint32, v int64, limit int) {
	if p, ok := t.pos[id]; ok {
		t.items[p].v = v
		t.version++
		return
	}
	if v <= t.cut {
		return
	}
	if t.pos == nil {
		t.pos = make(map[uint32]int32, 64)
	}
	t.pos[id] = int32(len(t.items))
	t.items = append(t.items, topItem{id, v})
	t.version++
	if len(t.items) >= 2*limit {
		t.trim(limit)
	}
}

// trim keeps the limit highest members and raises cut to the largest dropped value.
func (t *topSet) trim(limit int) {
	slices.SortFunc(t.items, func(a, b topItem) int { return cmp.Compare(b.v, a.v) })
	for _, it := range t.items[limit:] {
		t.cut = max(t.cut, it.v)
	}
	t.items = slices.Clip(t.items[:limit])
	clear(t.pos)
	for i, it := range t.items {
		t.pos[it.id] = int32(i)
	}
	t.version++
}

// view returns the members sorted by value, descending. Called under the read lock.
func (t *topSet) view() []topItem {
	if s := t.sorted.Load(); s != nil && s.version == t.version {
		return s.items
	}
	items := slices.Clone(t.items)
	slices.SortFunc(items, func(a, b topItem) int { return cmp.Compare(b.v, a.v) })
	t.sorted.Store(&sortedTop{version: t.version, items: items})
	return items
}

func (t *topSet) memBytes() int64 {
	return int64(cap(t.items))*16 + int64(len(t.pos))*24
}
