package topn

import (
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
//  1. gather every (number, value) of the window's blocks into one slice, decoding a block's
//     frozen layer in place (frozen.appendMetric) and adding, for the few ids a late update
//     put in a layer above it, the difference between their newest total and the frozen one;
//  2. add up each number's values, keeping positive sums that pass the filter: in an array
//     over the numbers' range when they are dense, else split by the numbers' high bits into
//     buckets whose range fits a small array in the processor's cache (sumSparse);
//  3. find the N-th highest value T with a heap of values alone;
//  4. every sum above T is in; among the sums equal to T, the ids that sort first by their
//     bytes fill the rest, found by walking the level's byte order of ids where it has one
//     (order.go) and by a heap comparing their bytes otherwise.

// bruteBuf is brute force's scratch. The index keeps one between queries (an hour's window of
// ten million ads gathers a few hundred thousand entries: megabytes a query otherwise); a
// sync.Pool would drop it at every garbage collection, which a busy server runs often.
type bruteBuf struct {
	a, b    []topItem
	dense   []int64
	bucket  []int64                      // sumSparse's sums, all zeros between calls
	touched [1 << bucketBits / 64]uint64 // sumSparse's numbers with an entry, zeros between calls
	marks   []uint64                     // firstByOrder's tied numbers, zeros between calls
	best    []uint32
	counts  []int
	vals    []int64
	ids     []uint32
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
	// The scratch is kept for the next query only after a normal return: a panic (in an
	// Owners callback, say) could leave sumSparse's arrays, which must be zero, half written.
	done := false
	defer func() {
		if done {
			r.ix.bruteSpare.Store(buf)
		}
	}()
	m := r.m
	all := slices.Grow(buf.a[:0], r.bruteSize())
	lo, hi := uint32(math.MaxUint32), uint32(0)
	gatherBlock := func(b *block) {
		var bl, bh uint32
		all, bl, bh = appendBlock(all, b, m)
		lo, hi = min(lo, bl), max(hi, bh)
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
	for _, id := range r.firstByBytes(buf, ties, r.q.N-len(r.best.items)) {
		r.offer(id, t)
	}
	done = true // (an early return drops the scratch too: rare, and only an allocation)
	return nil
}

// appendBlock appends to all, for every id of b whose metric m is not zero, entries that add
// up to its total, and returns the appended entries' lowest and highest number (MaxUint32
// and 0 when none). It decodes the frozen layer in place; for the few ids a late update put
// in a newer layer (a cold block not compacted yet) it adds the difference between their
// newest total and their frozen one: a lookup in the frozen layer per update instead of a map
// lookup per frozen entry, which reading the block whole (each) costs. A block mostly in
// newer layers is read whole.
func appendBlock(all []topItem, b *block, m int) (out []topItem, lo, hi uint32) {
	lo, hi = math.MaxUint32, 0
	add := func(id uint32, v int64) {
		all = append(all, topItem{id: id, v: v})
		lo, hi = min(lo, id), max(hi, id)
	}
	newer := len(b.live) + len(b.sealed)
	if newer > 0 && newer > b.base.entries()/8 {
		b.each(func(id uint32, v *vals) {
			if v[m] != 0 {
				add(id, v[m])
			}
		})
		return all, lo, hi
	}
	n := len(all)
	all = b.base.appendMetric(all, m)
	if len(all) > n { // in number order: the first and the last are the range
		lo, hi = all[n].id, all[len(all)-1].id
	}
	correct := func(id uint32, v *vals) {
		old, _ := b.base.get(id)
		if d := v[m] - old[m]; d != 0 {
			add(id, d)
		}
	}
	for id, v := range b.sealed {
		if _, ok := b.live[id]; !ok { // live shadows sealed
			correct(id, &v)
		}
	}
	for id, v := range b.live {
		correct(id, &v)
	}
	return all, lo, hi
}

// sumByID returns the positive sums per number of all (numbers in [lo, hi]) that pass the
// filter, in all's memory, in number order. When the numbers are dense (ids first seen close
// together in time) they are added up in one array spanning [lo, hi], an update a sequential
// walk; otherwise by sumSparse.
func (r *run) sumByID(buf *bruteBuf, all []topItem, lo, hi uint32) []topItem {
	if len(all) == 0 {
		return all
	}
	span := int(hi-lo) + 1
	if span > 4*len(all) {
		return r.sumSparse(buf, all, lo, hi)
	}
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

// bucketBits is the width of sumSparse's buckets: 2^15 numbers, whose array of sums (256 KiB)
// stays in the processor's cache.
const bucketBits = 15

// sumSparse adds up all's values per number when the numbers spread over a range too wide for
// one array (a window's ids first seen at any time): one counting pass splits all by the
// numbers' high bits into buckets (in buf.b), then each bucket is added up in one small array
// (buf.bucket) while a bitmap marks the numbers seen, and the sums are read out by the bitmap,
// in number order.
func (r *run) sumSparse(buf *bruteBuf, all []topItem, lo, hi uint32) []topItem {
	nb := int((hi-lo)>>bucketBits) + 1
	next := slices.Grow(buf.counts[:0], nb)[:nb]
	clear(next)
	for _, it := range all {
		next[(it.id-lo)>>bucketBits]++
	}
	start := 0
	for b, n := range next {
		next[b], start = start, start+n
	}
	if cap(buf.b) < len(all) {
		buf.b = make([]topItem, len(all), cap(all))
	}
	split := buf.b[:len(all)]
	for _, it := range all {
		b := (it.id - lo) >> bucketBits
		split[next[b]] = it
		next[b]++
	}
	buf.counts = next[:0] // next[b] is now where bucket b ends
	if len(buf.bucket) != 1<<bucketBits {
		buf.bucket = make([]int64, 1<<bucketBits)
	}
	acc, touched := buf.bucket, &buf.touched
	out := all[:0]
	from := 0
	for b, end := range next {
		base := lo + uint32(b)<<bucketBits
		part := split[from:end]
		from = end
		for _, it := range part {
			i := it.id - base
			acc[i] += it.v
			touched[i/64] |= 1 << (i % 64)
		}
		// Read the sums out in number order, as the dense path does, and leave the array and
		// the bitmap zero for the next bucket.
		for w, word := range touched {
			if word == 0 {
				continue
			}
			touched[w] = 0
			for ; word != 0; word &= word - 1 {
				i := uint32(w*64 + bits.TrailingZeros64(word))
				s := acc[i]
				acc[i] = 0
				if id := base + i; s > 0 && r.pass(id) {
					out = append(out, topItem{id: id, v: s})
				}
			}
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
