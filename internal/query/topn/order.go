package topn

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"slices"
	"sync/atomic"
	"time"
)

// Byte order: how brute force picks the first of many tied ids without comparing their bytes.
//
// Ties at the N-th value are broken by id bytes. When hundreds of thousands of ids tie (a
// window in which each ad was clicked about once), comparing each with a heap's root means
// reading its record from the intern arena: two dependent cache misses per id once the
// window's ids are spread over the whole number range. A byteOrder lists a level's numbers
// below n in the byte order of their ids. With it, the k first of the tied ids are found by
// marking them in a bitmap over the numbers (n bits: 1.25 MB at ten million ids, which stays
// in the processor's cache) and walking the order until k marked numbers came by: about
// k*n/ties steps, so a hundred among 400,000 ties of ten million ids takes some 2,500 steps
// where a heap read 400,000 records. When ties are too few for the walk to pay (it would
// take more steps than there are ties), a heap by bytes answers instead.
//
// The order is built off the query path, in the background, for a level of at least
// orderMinTies ids that has none or too many numbers past its n: Maintain starts it (so it is
// usually ready before a query needs it), as does a brute-force query that meets that many
// tied ids (which answers by bytes meanwhile). A build sorts only the numbers added since the
// previous order and merges them into it, so keeping up with new ids costs a merge, not a
// sort. Numbers at or past n (interned since) are compared by bytes, so an order is never
// wrong, only partial. It costs 4 bytes per id.
//
// Concurrency: a build reads the intern table's records below n and their arena bytes, which
// interning never changes (it only appends), through slices taken under the index's read
// lock; it publishes the order with an atomic store, and at most one build per level runs.

// byteOrder is the byte order of an intern table's numbers [0, n).
type byteOrder struct {
	n     uint32
	order []uint32 // the numbers below n, their ids in ascending byte order
}

// orderMinTies is how many ids (a level's, or a query's tied ones) make an order build worth it.
const orderMinTies = 4096

// ordering is a level's byte order and its build.
type ordering struct {
	cur      atomic.Pointer[byteOrder]
	building atomic.Bool
}

// needOrder starts a byte order build for lv's ids if ties ids that may tie warrant one, the
// level's order is missing or behind by more than an eighth, and no build runs. The caller
// holds ix.mu (for reading at least: the table's records below its length are then
// immutable).
func (ix *Index) needOrder(lv *level, ties int) {
	if least := ix.orderMinTies; least < 0 || ties < least {
		return
	}
	t := lv.ids
	n := uint32(t.len())
	recent := func(prev *byteOrder) bool { // the share of numbers past it stays small
		return prev != nil && (n-prev.n) <= prev.n/8
	}
	if recent(lv.order.cur.Load()) || !lv.order.building.CompareAndSwap(false, true) {
		return
	}
	// Read the order again now that no build runs: one may have finished since.
	prev := lv.order.cur.Load()
	if recent(prev) {
		lv.order.building.Store(false)
		return
	}
	recs, arena := t.recs[:n:n], t.arena[:len(t.arena):len(t.arena)]
	ix.orderBuilds.Add(1)
	ix.orderWG.Add(1)
	go func() {
		defer ix.orderWG.Done()
		defer lv.order.building.Store(false)
		t0 := time.Now()
		lv.order.cur.Store(buildOrder(prev, recs, arena))
		ix.orderNanos.Add(int64(time.Since(t0)))
	}()
}

// buildOrder returns the byte order of the numbers of recs (offsets of their records in
// arena), merging the numbers past prev.n into prev's order.
func buildOrder(prev *byteOrder, recs []uint32, arena []byte) *byteOrder {
	idOf := func(num uint32) []byte {
		off := recs[num]
		return arena[off+1 : off+1+uint32(arena[off])]
	}
	var old []uint32
	if prev != nil {
		old = prev.order
	}
	fresh := make([]uint32, 0, len(recs)-len(old))
	for num := uint32(len(old)); num < uint32(len(recs)); num++ {
		fresh = append(fresh, num)
	}
	sortByBytes(fresh, idOf)
	order := make([]uint32, 0, len(recs))
	i, j := 0, 0
	for i < len(old) && j < len(fresh) {
		if bytes.Compare(idOf(old[i]), idOf(fresh[j])) < 0 {
			order = append(order, old[i])
			i++
		} else {
			order = append(order, fresh[j])
			j++
		}
	}
	order = append(order, old[i:]...)
	order = append(order, fresh[j:]...)
	return &byteOrder{n: uint32(len(recs)), order: order}
}

// sortByBytes sorts nums by their ids' bytes. Comparing ids in the arena directly costs two
// cache misses per comparison once there are millions, so it sorts (key, number) pairs held
// side by side instead, the key being the 8 bytes of the id after the prefix all of them
// share (ids of one system tend to share a long one), and sorts only runs of equal keys by
// their bytes.
func sortByBytes(nums []uint32, idOf func(uint32) []byte) {
	if len(nums) < 2 {
		return
	}
	lcp := idOf(nums[0])
	for _, num := range nums[1:] {
		id := idOf(num)
		n := 0
		for n < len(lcp) && n < len(id) && lcp[n] == id[n] {
			n++
		}
		lcp = lcp[:n]
	}
	type keyed struct {
		key uint64
		num uint32
	}
	ks := make([]keyed, len(nums))
	for i, num := range nums {
		var b [8]byte
		copy(b[:], idOf(num)[len(lcp):])
		ks[i] = keyed{key: binary.BigEndian.Uint64(b[:]), num: num}
	}
	slices.SortFunc(ks, func(a, b keyed) int { return cmp.Compare(a.key, b.key) })
	for i := range ks {
		nums[i] = ks[i].num
	}
	for i := 0; i < len(ks); { // ids whose 8 bytes after the prefix are equal (or run out)
		j := i + 1
		for j < len(ks) && ks[j].key == ks[i].key {
			j++
		}
		if j-i > 1 {
			slices.SortFunc(nums[i:j], func(a, b uint32) int { return bytes.Compare(idOf(a), idOf(b)) })
		}
		i = j
	}
}

// firstByBytes returns the k numbers of ids whose ids sort first by bytes (all of them when
// there are no more than k), reordering ids. Numbers the level's byte order covers are
// picked by walking it (firstByOrder); the rest, and the two groups' winners against each
// other, by their bytes. A query with many ties and no fitting order starts one for the
// queries after it.
func (r *run) firstByBytes(buf *bruteBuf, ids []uint32, k int) []uint32 {
	if k <= 0 {
		return nil
	}
	if len(ids) <= k {
		return ids
	}
	r.ix.needOrder(r.lv, len(ids))
	t := r.lv.ids
	after := func(a, b uint32) bool { return bytes.Compare(t.bytes(a), t.bytes(b)) > 0 }
	ord := r.lv.order.cur.Load()
	if ord == nil {
		return firstK(ids, k, after)
	}
	ordered := 0 // ids[:ordered] are below ord.n
	for i, id := range ids {
		if id < ord.n {
			ids[ordered], ids[i] = id, ids[ordered]
			ordered++
		}
	}
	best, ok := firstByOrder(buf, ids[:ordered], k, ord)
	if !ok {
		best = firstK(ids[:ordered], k, after)
	}
	if ordered == len(ids) {
		return best
	}
	rest := firstK(ids[ordered:], k, after)
	both := append(ids[:len(best)], rest...) // rest starts at or after len(best): nothing lost
	return firstK(both, k, after)
}

// firstByOrder returns the k numbers of ids (all below ord.n, more than k) that come first in
// ord, in ids[:k], by marking ids in buf.marks and walking ord; false (ids unchanged) when the
// walk would take more steps than a heap over ids.
func firstByOrder(buf *bruteBuf, ids []uint32, k int, ord *byteOrder) ([]uint32, bool) {
	if len(ids) <= k {
		return ids, true
	}
	budget := len(ids) // a heap reads about that many records
	if uint64(k)*uint64(ord.n) > uint64(budget)*uint64(len(ids)) {
		return nil, false // the walk's expected k*n/len(ids) steps are more
	}
	words := (int(ord.n) + 63) / 64
	if len(buf.marks) < words {
		buf.marks = make([]uint64, words)
	}
	marks := buf.marks
	for _, id := range ids {
		marks[id/64] |= 1 << (id % 64)
	}
	best := buf.best[:0]
	for step, num := range ord.order {
		if marks[num/64]&(1<<(num%64)) != 0 {
			if best = append(best, num); len(best) == k {
				break
			}
		}
		if step >= 4*budget { // ties bunched at the end of the order: give up
			break
		}
	}
	for _, id := range ids {
		marks[id/64] = 0
	}
	buf.best = best[:0]
	if len(best) < k {
		return nil, false
	}
	return ids[:copy(ids, best)], true
}

// firstK returns the k elements of ids least by after's order (all when there are no more
// than k) in ids[:k], reordering ids. It keeps a max-heap of the k best and compares every
// other element with its root only.
func firstK(ids []uint32, k int, after func(a, b uint32) bool) []uint32 {
	if len(ids) <= k {
		return ids
	}
	h := ids[:k]
	for i := k/2 - 1; i >= 0; i-- {
		siftDownU32(h, i, after)
	}
	for _, id := range ids[k:] {
		if !after(h[0], id) {
			continue
		}
		h[0] = id
		siftDownU32(h, 0, after)
	}
	return h
}
