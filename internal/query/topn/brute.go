package topn

import (
	"bytes"
	"context"
	"math"
	"math/bits"
	"slices"
)

// Brute force: the window's blocks summed outright. It answers short windows (cheaper than
// the threshold algorithm there) and every window whose top sets cannot prove the answer,
// which is the usual case when many ids tie: a day in which each ad was clicked about once
// leaves hundreds of thousands of ads at one click in any hour, and the top N among them is
// decided by id. So brute force is built for that case, in passes that each stream through
// memory instead of one hash-map update and one id comparison per entry:
//
//  1. gather every (number, value) of the window's blocks into one slice, decoding a settled
//     block's frozen layer in place (frozen.appendMetric);
//  2. add up each number's values, keeping positive sums that pass the filter: in an array
//     over the numbers' range when they are dense, else by sorting the slice by number (a
//     radix sort: two or three passes) and adding up each number's run;
//  3. find the N-th highest value T with a heap of values alone;
//  4. every sum above T is in; among the sums equal to T, the ids that sort first by their
//     bytes fill the rest. Ids are numbered in the order they were first seen, and the
//     arena holds their bytes in that order, so reading the tied ids in number order walks
//     the arena forward instead of jumping through it.

// bruteBuf is brute force's scratch. The index keeps one between queries (an hour's window of
// ten million ads gathers a few hundred thousand entries: megabytes a query otherwise); a
// sync.Pool would drop it at every garbage collection, which a busy server runs often.
type bruteBuf struct {
	a, b  []topItem
	dense []int64
	vals  []int64
	ids   []uint32
}

// takeBruteBuf returns the kept scratch, or a new one while another query holds it.
func (ix *Index) takeBruteBuf() *bruteBuf {
	if b := ix.bruteSpare.Swap(nil); b != nil {
		return b
	}
	return &bruteBuf{}
}

// brute sums every entry of the window's blocks and offers the top N.
func (r *run) brute(ctx context.Context) error {
	buf := r.ix.takeBruteBuf()
	defer r.ix.bruteSpare.Store(buf)
	m := r.m
	all := slices.Grow(buf.a[:0], r.bruteSize())
	lo, hi := uint32(math.MaxUint32), uint32(0)
	gather := func(id uint32, v *vals) {
		if v[m] != 0 {
			all = append(all, topItem{id: id, v: v[m]})
			lo, hi = min(lo, id), max(hi, id)
		}
	}
	gatherBlock := func(b *block) {
		if !b.settled() {
			b.each(gather)
			return
		}
		n := len(all)
		all = b.base.appendMetric(all, m)
		if len(all) > n { // in number order: the first and the last are the block's range
			lo, hi = min(lo, all[n].id), max(hi, all[len(all)-1].id)
		}
	}
	for i := range r.comps {
		if err := ctx.Err(); err != nil {
			return err
		}
		c := &r.comps[i]
		if c.full {
			gatherBlock(&c.hour.block)
			continue
		}
		for _, b := range c.direct {
			gatherBlock(b)
		}
	}
	buf.a = all[:0]
	sums := r.sumByID(buf, all, lo, hi)

	var t int64 // the N-th highest sum; 0 while there are fewer than N
	buf.vals = buf.vals[:0]
	for _, it := range sums {
		buf.vals = pushTopValue(buf.vals, it.v, r.q.N)
	}
	if len(buf.vals) == r.q.N {
		t = buf.vals[0]
	}
	ties := buf.ids[:0]
	for _, it := range sums {
		switch {
		case it.v > t:
			r.offer(it.id, it.v)
		case it.v == t:
			ties = append(ties, it.id)
		}
	}
	buf.ids = ties
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, id := range r.firstByBytes(ties, r.q.N-len(r.best.items)) {
		r.offer(id, t)
	}
	return nil
}

// sumByID returns the positive sums per number of all (numbers in [lo, hi]) that pass the
// filter, in number order, in all's memory. When the numbers are dense (ids first seen close
// together in time, as the ads of a window usually are) they are added up in an array
// spanning [lo, hi], an update a sequential walk; otherwise all is sorted by number first.
func (r *run) sumByID(buf *bruteBuf, all []topItem, lo, hi uint32) []topItem {
	if len(all) == 0 {
		return all
	}
	if span := int(hi-lo) + 1; span <= 4*len(all) {
		acc := slices.Grow(buf.dense[:0], span)[:span]
		clear(acc)
		for _, it := range all {
			acc[it.id-lo] += it.v
		}
		buf.dense = acc[:0]
		out := all[:0]
		for i, s := range acc {
			if id := lo + uint32(i); s > 0 && r.pass(id) {
				out = append(out, topItem{id: id, v: s})
			}
		}
		return out
	}
	if cap(buf.b) < len(all) {
		buf.b = make([]topItem, len(all), cap(all))
	}
	sorted, spare := radixSortByID(all, buf.b[:len(all)], hi+1)
	buf.a, buf.b = sorted[:0], spare[:0]
	return r.sumRuns(sorted)
}

// sumRuns adds up the values of each number in items (sorted by number) in place and returns
// the positive sums that pass the filter, in number order.
func (r *run) sumRuns(items []topItem) []topItem {
	out := items[:0]
	for i := 0; i < len(items); {
		id, s := items[i].id, items[i].v
		for i++; i < len(items) && items[i].id == id; i++ {
			s += items[i].v
		}
		if s > 0 && r.pass(id) {
			out = append(out, topItem{id: id, v: s})
		}
	}
	return out
}

// pushTopValue keeps h a min-heap of the n highest values seen.
func pushTopValue(h []int64, v int64, n int) []int64 {
	if len(h) < n {
		h = append(h, v)
		for i := len(h) - 1; i > 0; {
			p := (i - 1) / 2
			if h[p] <= h[i] {
				break
			}
			h[i], h[p] = h[p], h[i]
			i = p
		}
		return h
	}
	if v <= h[0] {
		return h
	}
	h[0] = v
	for i := 0; ; {
		c := 2*i + 1
		if c >= len(h) {
			break
		}
		if c+1 < len(h) && h[c+1] < h[c] {
			c++
		}
		if h[i] <= h[c] {
			break
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
	return h
}

// firstByBytes returns the k numbers of ids whose ids sort first by bytes (all of them when
// there are no more than k), reordering ids. It keeps a max-heap of the k best in ids[:k]
// and compares every other id with the heap's root only, whose bytes it holds.
func (r *run) firstByBytes(ids []uint32, k int) []uint32 {
	if k <= 0 {
		return nil
	}
	if len(ids) <= k {
		return ids
	}
	t := r.lv.ids
	after := func(a, b uint32) bool { return bytes.Compare(t.bytes(a), t.bytes(b)) > 0 }
	h := ids[:k]
	for i := k/2 - 1; i >= 0; i-- {
		siftDownU32(h, i, after)
	}
	root := t.bytes(h[0])
	for _, id := range ids[k:] {
		if bytes.Compare(t.bytes(id), root) >= 0 {
			continue
		}
		h[0] = id
		siftDownU32(h, 0, after)
		root = t.bytes(h[0])
	}
	return h
}

// siftDownU32 restores the heap property of h (every parent greater than its children by
// greater) from i down.
func siftDownU32(h []uint32, i int, greater func(a, b uint32) bool) {
	for {
		c := 2*i + 1
		if c >= len(h) {
			return
		}
		if c+1 < len(h) && greater(h[c+1], h[c]) {
			c++
		}
		if !greater(h[c], h[i]) {
			return
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
}

// radixSortByID sorts items by id, every id below limit, with an LSD radix sort of at most 11
// bits a pass (a pass's counts stay in the first-level cache), using tmp (of the same length)
// as the other buffer. It returns the sorted slice and the other one, each an argument.
func radixSortByID(items, tmp []topItem, limit uint32) (sorted, spare []topItem) {
	width := bits.Len32(max(limit, 1) - 1)
	passes := (width + 10) / 11
	if passes == 0 {
		return items, tmp
	}
	digit := (width + passes - 1) / passes
	mask := uint32(1)<<digit - 1
	var count [1 << 11]int
	for shift := 0; shift < width; shift += digit {
		clear(count[:mask+1])
		for _, it := range items {
			count[it.id>>shift&mask]++
		}
		sum := 0
		for d := range count[:mask+1] {
			count[d], sum = sum, sum+count[d]
		}
		for _, it := range items {
			d := it.id >> shift & mask
			tmp[count[d]] = it
			count[d]++
		}
		items, tmp = tmp, items
	}
	return items, tmp
}
