package topn

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
)

func levelOf(i int) metricstore.Level { return metricstore.Level(i + 1) }

// Rebuild replaces the index's contents with the minute buckets of src from the start of the
// retained range (Retention+Slack before the clock, floored to an hour) on. Call it before the
// first Add: deltas added before or during a Rebuild are discarded, because src already has
// them or Add will bring them. Queries keep reading the old contents until it is done.
//
// It is a bulk load, not a replay of Add: minutes are staged in small maps spilled to sorted
// runs, each minute is merged once, and each hour is merged from its minutes, so memory stays
// near the final size and time near linear.
func (ix *Index) Rebuild(ctx context.Context, src MinuteScanner) error {
	ix.maintMu.Lock()
	defer ix.maintMu.Unlock()
	start := time.Now()
	now := ix.nowMinute()
	from := ix.evictBefore(now)
	st := newState(from)
	ld := loader{st: st, owners: ix.opts.Owners}
	for i := range ld.stages {
		ld.stages[i] = make(map[int64]*stage)
	}
	var n int64
	// A store scans an id's minutes one after another; interning once per run of them saves
	// a lookup in a table of millions per bucket.
	var lastLevel metricstore.Level
	var lastID string
	var lastNum uint32
	err := src.ScanMinutes(ctx, from, now+futureMinutes, func(d *metricstore.Delta) error {
		v := valsOf(d)
		if v.isZero() || !d.Level.Valid() || d.ID == "" || len(d.ID) > 255 || d.Minute < from || d.Minute >= now+futureMinutes {
			return nil
		}
		n++
		if n%(1<<16) == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if d.Level != lastLevel || d.ID != lastID {
			lastLevel, lastID = d.Level, strings.Clone(d.ID) // d.ID may alias the scanner's buffer
			lastNum = st.intern(d.Level, d.ID, ix.opts.Owners)
		}
		ld.add(d.Level, lastNum, d.Minute, &v)
		return nil
	})
	if err != nil {
		return fmt.Errorf("rebuild top-N index from minute %d: %w", from, err)
	}
	if err := ld.finish(ctx, ix.opts.TopLimit); err != nil {
		return fmt.Errorf("rebuild top-N index: %w", err)
	}
	ix.mu.Lock()
	ix.st = st
	ix.pendMu.Lock()
	clear(ix.pending)
	ix.pending = ix.pending[:0]
	ix.pendMu.Unlock()
	ix.mu.Unlock()
	ix.rebuildNanos.Add(time.Since(start).Nanoseconds())
	ix.rebuildDeltas.Add(n)
	ix.opts.Logger.Info("top-N index rebuilt", "minute_buckets", n, "ads", st.levels[0].ids.len(), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// stageSpill is the size at which a minute's staging map is spilled to a sorted run; small, so
// that the maps of all 1500 minutes together stay small whatever order the scan has.
const stageSpill = 2048

type stage struct {
	live map[uint32]vals // partial sums
	runs []*frozen       // sorted runs of partial sums
}

type loader struct {
	st     *state
	owners Owners
	stages [3]map[int64]*stage
}

func (ld *loader) add(l metricstore.Level, id uint32, minute int64, v *vals) {
	s := ld.stages[l-1][minute]
	if s == nil {
		s = &stage{live: make(map[uint32]vals)}
		ld.stages[l-1][minute] = s
	}
	x := s.live[id]
	x.add(v)
	s.live[id] = x
	if len(s.live) >= stageSpill {
		s.spill()
	}
}

// spill turns the staging map into a sorted run. Runs are merged eight at a time once eight of
// a size class pile up (a size-tiered scheme), so a minute holds a handful of compact runs
// rather than hundreds of small ones whose sum outweighs the final block, and each entry is
// merged about log8(entries/stageSpill) times.
func (s *stage) spill() {
	if len(s.live) > 0 {
		s.runs = append(s.runs, mergeFrozen(nil, s.live))
		clear(s.live)
	}
	tier := func(f *frozen) int {
		t := 0
		for n := f.entries() / stageSpill; n >= 8; n /= 8 {
			t++
		}
		return t
	}
	for len(s.runs) >= 8 {
		last := tier(s.runs[len(s.runs)-1])
		k := len(s.runs) - 8
		same := true
		for _, r := range s.runs[k:] {
			if tier(r) != last {
				same = false
				break
			}
		}
		if !same {
			return
		}
		merged := mergeSum(s.runs[k:])
		clear(s.runs[k:])
		s.runs = append(s.runs[:k], merged)
	}
}

func (ld *loader) finish(ctx context.Context, limit int) error {
	for i, stages := range ld.stages {
		lv := ld.st.levels[i]
		byHour := make(map[int64][]*frozen)
		for _, minute := range slices.Sorted(maps.Keys(stages)) {
			if err := ctx.Err(); err != nil {
				return err
			}
			s := stages[minute]
			if len(s.live) > 0 {
				s.runs = append(s.runs, mergeFrozen(nil, s.live))
			}
			base := mergeSum(s.runs)
			s.runs, s.live = nil, nil
			delete(stages, minute)
			if base == nil {
				continue
			}
			lv.minutes[minute] = &block{base: base, neg: base.neg}
			h := floorDiv(minute, 60)
			byHour[h] = append(byHour[h], base)
		}
		for h, ms := range byHour {
			if err := ctx.Err(); err != nil {
				return err
			}
			base := mergeSum(ms)
			hb := &hourBlock{block: block{base: base, neg: base.negOrZero()}}
			hb.loadTop(limit)
			lv.hours[h] = hb
		}
	}
	return nil
}

// loadTop fills the hour's top sets from its frozen layer: per metric the limit highest
// positive values, cut at the highest value left out.
func (h *hourBlock) loadTop(limit int) {
	for m := 0; m < numMetrics; m++ {
		best := bestHeap{less: func(a, b topItem) bool { return a.v < b.v }}
		var cut int64
		it := h.base.iter()
		for it.next() {
			v := it.v[m]
			if v <= 0 {
				continue
			}
			if len(best.items) < limit {
				best.push(topItem{it.id, v})
				continue
			}
			if v <= best.items[0].v {
				cut = max(cut, v)
				continue
			}
			cut = max(cut, best.items[0].v)
			best.items[0] = topItem{it.id, v}
			best.down(0)
		}
		t := &h.top[m]
		t.items = best.items
		t.cut = cut
		t.pos = make(map[uint32]int32, len(best.items))
		for i, x := range best.items {
			t.pos[x.id] = int32(i)
		}
		t.version++
	}
}

// mergeSum merges sorted blocks, summing the values of equal numbers.
func mergeSum(fs []*frozen) *frozen {
	switch len(fs) {
	case 0:
		return nil
	case 1:
		return fs[0]
	}
	total := 0
	its := make([]frozenIter, 0, len(fs))
	for _, f := range fs {
		it := f.iter()
		if it.next() {
			its = append(its, it)
			total += f.n
		}
	}
	// A min-heap of iterators by current number.
	h := iterHeap(its)
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
	b := newFrozenBuilder(total)
	for len(h) > 0 {
		id := h[0].id
		var sum vals
		for len(h) > 0 && h[0].id == id {
			sum.add(&h[0].v)
			if h[0].next() {
				h.down(0)
			} else {
				h[0] = h[len(h)-1]
				h = h[:len(h)-1]
				if len(h) > 0 {
					h.down(0)
				}
			}
		}
		b.add(id, &sum)
	}
	return b.finish()
}

type iterHeap []frozenIter

func (h iterHeap) down(i int) {
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		c := l
		if r := l + 1; r < n && h[r].id < h[l].id {
			c = r
		}
		if h[c].id >= h[i].id {
			return
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
}
