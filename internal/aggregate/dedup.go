package aggregate

// dedupWindow is the aggregator's second line of defence against duplicates, for one
// partition.
//
// Rule: the event at offset o is a duplicate iff, among the events at offsets [o-size, o) of
// the same partition, the latest one with the same idempotency key (by 64-bit hash) was
// received no more than lateness before it. The decision depends only on those size events,
// so after a restart, replaying offsets [O-size, O) before the committed offset O (without
// counting) rebuilds exactly the state an uninterrupted run had: decisions are the same with
// or without crashes. Duplicates always land in the same partition (the log is partitioned by
// ad, hot ads salted by impression id), so a per-partition window misses none.
//
// Memory is fixed at construction: a ring of size (hash, receive time) pairs and an
// open-addressing table of 2*size rounded up to a power of two (hash, offset) pairs, 16 bytes
// each, so 48 to 80 bytes per slot. Duplicates further apart than size events are not caught
// here; the dedup stage before the log is the first line and catches them.
//
// The table is hand-rolled because this runs once per event at a million events a second:
// a Go map costs three hashed operations per event (look up, insert, evict), the table a few
// probes of one cache line.
type dedupWindow struct {
	size     int64
	lateness int64    // micros
	ring     []slot   // by offset % size; hash 0 = empty
	tab      []tabEnt // hash -> offset of its latest occurrence in the window; hash 0 = empty
	mask     uint64
	n        int
}

type slot struct {
	hash uint64
	recv int64
}

type tabEnt struct {
	hash uint64
	off  int64
}

func newDedupWindow(size int, latenessMicros int64) *dedupWindow {
	c := 1
	for c < 2*size {
		c <<= 1
	}
	return &dedupWindow{
		size:     int64(size),
		lateness: latenessMicros,
		ring:     make([]slot, size),
		tab:      make([]tabEnt, c),
		mask:     uint64(c - 1),
	}
}

// find returns the table index holding h, or the empty index where it would go.
func (w *dedupWindow) find(h uint64) (int, bool) {
	i := h & w.mask
	for {
		e := &w.tab[i]
		if e.hash == h {
			return int(i), true
		}
		if e.hash == 0 {
			return int(i), false
		}
		i = (i + 1) & w.mask
	}
}

// remove deletes index i with backward-shift deletion, so probes need no tombstones. It
// returns the index left empty: entries only move backwards, so that is the one new gap.
func (w *dedupWindow) remove(i int) int {
	w.n--
	j := i
	for {
		j = (j + 1) & int(w.mask)
		h := w.tab[j].hash
		if h == 0 {
			break
		}
		// Move j back to i unless its home lies cyclically in (i, j].
		home := int(h & w.mask)
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			w.tab[i] = w.tab[j]
			i = j
		}
	}
	w.tab[i] = tabEnt{}
	return i
}

// between reports whether x lies cyclically in [lo, hi) of the table.
func (w *dedupWindow) between(x, lo, hi int) bool {
	return (x-lo)&int(w.mask) < (hi-lo)&int(w.mask)
}

// observe records the event at offset off (offsets must be given densely, in increasing
// order) and reports whether it is a duplicate. ok false (no key, or not an event) only
// advances the window.
func (w *dedupWindow) observe(off int64, h uint64, recv int64, ok bool) bool {
	if h == 0 {
		h = 1 // 0 marks an empty slot
	}
	dup := false
	var ti int
	var found bool
	if ok {
		if ti, found = w.find(h); found {
			prev := w.tab[ti].off
			dup = prev >= off-w.size && recv-w.ring[prev%w.size].recv <= w.lateness
		}
	}
	// The slot of off holds offset off-size, which leaves the window now.
	s := &w.ring[off%w.size]
	if old := s.hash; old != 0 {
		if oi, f := w.find(old); f && w.tab[oi].off == off-w.size {
			gap := w.remove(oi)
			switch {
			case found && w.tab[ti].hash != h:
				ti, _ = w.find(h) // the removal moved h's entry back
			case !found && w.between(gap, int(h&w.mask), ti):
				ti = gap // the new gap comes first on h's probe path
			}
		}
		*s = slot{}
	}
	if ok {
		*s = slot{h, recv}
		if !found {
			w.n++
		}
		w.tab[ti] = tabEnt{h, off}
	}
	return dup
}

func (w *dedupWindow) len() int { return w.n }
