package sivt

import (
	"encoding/binary"
	"math"
)

// The rules hold every click without a verdict until its windows expire: at 10,000 clicks/s
// that is millions of clicks. They are kept in slabs without pointers (records in one slice,
// key bytes in another, ads and sources as integer ids) so that the garbage collector, whose
// marking cost grows with the pointers it must follow, skips them: a click costs a few dozen
// bytes of a noscan slab instead of several small objects the collector scans on every cycle.

// clickRec is a click without a verdict, held by the windows (window.pending) a later click
// may fire on. A click with a verdict needs no record: its windows keep only its receive time.
type clickRec struct {
	time, recv int64
	keyOff     uint32 // the idempotency key in clickSlab.keys: its length as a uvarint, then its bytes
	ref        uint32 // its ad, campaign and advertiser (state.refs) in the low 31 bits; the top bit is flaggedBit
}

// flaggedBit in clickRec.ref marks a click that got its verdict (late) while windows still
// hold it; they drop it when they next prune.
const flaggedBit = 1 << 31

func (r *clickRec) flagged() bool { return r.ref&flaggedBit != 0 }
func (r *clickRec) setFlagged()   { r.ref |= flaggedBit }
func (r *clickRec) adRef() uint32 { return r.ref &^ flaggedBit }

// clickSlab holds the click records and their keys. Records are appended and never moved
// except by compact, which drops the records no window references any more.
type clickSlab struct {
	recs []clickRec
	keys []byte // append-only arena of the records' keys
}

// add appends a record and returns its index.
//
// Offsets are 32 bits: compact rebuilds the arena every span (the longest window), and a
// span of keys beyond 4 GiB (some 150 million clicks) is far past what one stage holds; add
// panics rather than wrap.
func (s *clickSlab) add(key []byte, time, recv int64, ref uint32) uint32 {
	off := len(s.keys)
	if uint64(off)+binary.MaxVarintLen64+uint64(len(key)) > math.MaxUint32 || uint64(len(s.recs)) >= math.MaxUint32 || ref >= flaggedBit {
		panic("sivt: click slab beyond 32-bit offsets")
	}
	s.keys = binary.AppendUvarint(s.keys, uint64(len(key)))
	s.keys = append(s.keys, key...)
	s.recs = append(s.recs, clickRec{time: time, recv: recv, keyOff: uint32(off), ref: ref})
	return uint32(len(s.recs) - 1)
}

// keyBytes returns the idempotency key of record i, in the arena.
func (s *clickSlab) keyBytes(i uint32) []byte {
	b := s.keys[s.recs[i].keyOff:]
	n, w := binary.Uvarint(b)
	return b[w : w+int(n)]
}

// key returns the idempotency key of record i (a new string: verdicts outlive the slab's layout).
func (s *clickSlab) key(i uint32) string { return string(s.keyBytes(i)) }

// click is a held click as a verdict carries it: its key, ad and times.
type click struct {
	key        string // idempotency key; clickID(key) is its id
	ad         adRef
	time, recv int64
}

// id is the click's id as the API shows it.
func (c *click) id() string { return clickID(c.key) }

// adRef is a click's ad with its campaign and advertiser.
type adRef struct{ ad, campaign, advertiser string }

// clickID is the id GET /api/v1/clicks/{id} takes for a click key ("c:imp" or "e:event").
func clickID(key string) string { return key[min(2, len(key)):] }

// verdictClick returns record i as a verdict carries it.
func (s *state) verdictClick(i uint32) *click {
	r := &s.slab.recs[i]
	return &click{key: s.slab.key(i), ad: s.refs.vals[r.adRef()], time: r.time, recv: r.recv}
}

// eachWindow calls f with every window of every rule.
func (s *state) eachWindow(f func(w *window)) {
	for i := range s.floods {
		for _, w := range s.floods[i] {
			f(w)
		}
	}
	for _, w := range s.sources {
		f(&w.window)
	}
}

// compact rebuilds the slab with only the records some window still holds, in their old
// order, and the ad tables with only the ads those records and the many_ads windows use.
// The windows' pending lists keep their order, so the verdicts do not change.
func (s *state) compact() {
	const dead = ^uint32(0)
	remap := make([]uint32, len(s.slab.recs))
	for i := range remap {
		remap[i] = dead
	}
	s.eachWindow(func(w *window) {
		for k := range w.pendingLen() {
			remap[w.pendingAt(k)] = 0
		}
	})
	var live int
	for i := range remap {
		if remap[i] != dead {
			live++
		}
	}
	var ns clickSlab
	ns.recs = make([]clickRec, 0, live)
	var refs interner[adRef]
	for i, r := range s.slab.recs {
		if remap[i] == dead {
			continue
		}
		remap[i] = ns.add(s.slab.keyBytes(uint32(i)), r.time, r.recv, refs.id(s.refs.vals[r.adRef()]))
		if r.flagged() {
			ns.recs[remap[i]].setFlagged()
		}
	}
	s.eachWindow(func(w *window) {
		for k := range w.pendingLen() {
			w.setPending(k, remap[w.pendingAt(k)])
		}
	})
	s.slab, s.refs = ns, refs

	var ads interner[string]
	for _, w := range s.sources {
		for k := range w.adsLen() {
			a := w.adAt(k)
			w.setAd(k, adSeen{ads.id(s.ads.vals[a.ad]), a.last})
		}
	}
	s.ads = ads
}

// interner gives each distinct value a dense uint32 id (its index in vals), so records and
// windows hold 4 bytes instead of a pointer. Its zero value is ready to use.
type interner[K comparable] struct {
	ids  map[K]uint32
	vals []K
}

// id returns v's id, giving it the next one if it has none.
func (t *interner[K]) id(v K) uint32 {
	if id, ok := t.ids[v]; ok {
		return id
	}
	if t.ids == nil {
		t.ids = make(map[K]uint32)
	}
	id := uint32(len(t.vals))
	t.ids[v] = id
	t.vals = append(t.vals, v)
	return id
}
