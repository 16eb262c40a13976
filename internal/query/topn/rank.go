package topn

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"slices"
	"sync/atomic"
	"time"
)

// Byte-order ranks: how brute force orders many tied ids without reading their bytes.
//
// Ties at the N-th value are broken by id bytes. When hundreds of thousands of ids tie (a
// window in which each ad was clicked about once), comparing each with the heap's root means
// reading its record from the intern arena: two dependent cache misses per id when the
// window's ids are spread over the whole number range, as they are once the ads were first
// seen in an order unrelated to the window. A byteRank holds, per number, its position in byte
// order among the numbers below n, so such a comparison is one load from a dense array.
//
// The rank is built off the query path, in the background, for a level of at least
// rankMinTies ids that has none or too many numbers past its n: Maintain starts it (so it is
// usually ready before a query needs it), as does a brute-force query that meets that many
// tied ids (which answers by bytes meanwhile). A build sorts only the numbers added since the
// previous rank and merges them into its order, so keeping up with new ids costs a merge, not
// a sort. Numbers at or past n (interned since) are compared by bytes, so a rank is never
// wrong, only partial. It costs 4 bytes per id.
//
// Concurrency: a build reads the intern table's records below n and their arena bytes, which
// interning never changes (it only appends), through slices taken under the index's read
// lock; it publishes the rank with an atomic store, and at most one build per level runs.

// byteRank is the byte order of an intern table's numbers [0, n).
type byteRank struct {
	n    uint32
	rank []uint32 // per number below n: its position in byte order
}

// rankMinTies is how many ids (a level's, or a query's tied ones) make a rank build worth it.
const rankMinTies = 4096

// ranking is a level's rank state.
type ranking struct {
	cur      atomic.Pointer[byteRank]
	building atomic.Bool
}

// needRank starts a rank build for lv's ids if ties ids that may tie warrant one, the level's
// rank is missing or behind by more than an eighth, and no build runs. The caller holds ix.mu
// (for reading at least: the table's records below its length are then immutable).
func (ix *Index) needRank(lv *level, ties int) {
	if least := ix.rankMinTies; least < 0 || ties < least {
		return
	}
	t := lv.ids
	n := uint32(t.len())
	rk := lv.rank.cur.Load()
	if rk != nil && (n-rk.n) <= rk.n/8 { // recent enough: the unranked share stays small
		return
	}
	if !lv.rank.building.CompareAndSwap(false, true) {
		return
	}
	recs, arena := t.recs[:n:n], t.arena[:len(t.arena):len(t.arena)]
	ix.rankBuilds.Add(1)
	ix.rankWG.Add(1)
	go func() {
		defer ix.rankWG.Done()
		defer lv.rank.building.Store(false)
		t0 := time.Now()
		lv.rank.cur.Store(buildRank(rk, recs, arena))
		ix.rankNanos.Add(int64(time.Since(t0)))
	}()
}

// buildRank returns the byte order of the numbers of recs (offsets of their records in arena),
// reusing prev's order of the numbers below prev.n.
func buildRank(prev *byteRank, recs []uint32, arena []byte) *byteRank {
	idOf := func(num uint32) []byte {
		off := recs[num]
		return arena[off+1 : off+1+uint32(arena[off])]
	}
	byBytes := func(a, b uint32) int { return bytes.Compare(idOf(a), idOf(b)) }
	var old []uint32 // prev's numbers in byte order
	if prev != nil {
		old = make([]uint32, prev.n)
		for num, pos := range prev.rank {
			old[pos] = uint32(num)
		}
	}
	fresh := make([]uint32, 0, uint32(len(recs))-uint32(len(old)))
	for num := uint32(len(old)); num < uint32(len(recs)); num++ {
		fresh = append(fresh, num)
	}
	sortByBytes(fresh, idOf)
	rank := make([]uint32, len(recs))
	pos, i, j := uint32(0), 0, 0
	for ; i < len(old) && j < len(fresh); pos++ {
		if byBytes(old[i], fresh[j]) < 0 {
			rank[old[i]] = pos
			i++
		} else {
			rank[fresh[j]] = pos
			j++
		}
	}
	for ; i < len(old); i, pos = i+1, pos+1 {
		rank[old[i]] = pos
	}
	for ; j < len(fresh); j, pos = j+1, pos+1 {
		rank[fresh[j]] = pos
	}
	return &byteRank{n: uint32(len(recs)), rank: rank}
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
// there are no more than k), reordering ids. Numbers the level's rank covers are ordered by
// it; the rest, and the two groups' winners against each other, by their bytes. A query with
// many ties and no fitting rank starts one for the queries after it.
func (r *run) firstByBytes(ids []uint32, k int) []uint32 {
	if k <= 0 {
		return nil
	}
	if len(ids) <= k {
		return ids
	}
	r.ix.needRank(r.lv, len(ids))
	t := r.lv.ids
	after := func(a, b uint32) bool { return bytes.Compare(t.bytes(a), t.bytes(b)) > 0 }
	rk := r.lv.rank.cur.Load()
	if rk == nil {
		return firstK(ids, k, after)
	}
	ranked := 0 // ids[:ranked] are below rk.n
	for i, id := range ids {
		if id < rk.n {
			ids[ranked], ids[i] = id, ids[ranked]
			ranked++
		}
	}
	rank := rk.rank
	best := firstK(ids[:ranked], k, func(a, b uint32) bool { return rank[a] > rank[b] })
	if ranked == len(ids) {
		return best
	}
	rest := firstK(ids[ranked:], k, after)
	both := append(ids[:len(best)], rest...) // rest starts at or after len(best): no overlap lost
	return firstK(both, k, after)
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
