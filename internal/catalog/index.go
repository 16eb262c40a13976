package catalog

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"math"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/zeebo/xxh3"
)

// adIndex maps ad ids to compact records for the ingest hot path. It is built for ten million
// ads read at very high rates with rare writes:
//
//   - Lookups take no lock: they load a table pointer and slot words atomically, so a hot ad
//     read on every core causes no cache-line ping-pong (an RWMutex's reader count would).
//   - Per ad it holds one 8-byte slot word and a record packed into 64 KiB byte chunks: no Go
//     pointer per ad, so the garbage collector never scans the ads, and no per-ad string
//     headers or map buckets. Campaign and advertiser ids live once in the campaign table; a
//     record names its campaign by a 4-byte index.
//
// Publication protocol (why lock-free reads are safe): a shard's writer (holding adShard.mu)
// never changes bytes a reader can reach. It writes a record into chunk space no slot points
// to and only then publishes it with an atomic store of a slot word; a reader that atomically
// loads that word is thereby guaranteed to see the record (and the chunk pointer, set before
// the chunk's first record). Updating an ad writes a new record and swaps the slot word; the old
// record stays as garbage until a compaction. Growing the slots, growing the chunk directory
// and compacting build a complete new table and publish it with one atomic pointer store;
// readers still holding the old table finish on it, and the writer no longer touches its
// slots. Tables may share a chunk directory: entries past those a table's slots point into are
// invisible to its readers. There is no delete, so probing needs no tombstones.
type adIndex struct {
	// seed keys the id hash. It is random per new index, so advertisers cannot pick ids that
	// collide (hash flooding), and a plain number, so a snapshot can store it and be loaded
	// with its slots as they are (hash/maphash's seeds cannot be saved).
	seed   uint64
	shards [adShards]adShard
	live   atomic.Int64
	bytes  atomic.Int64 // chunk, directory and slot bytes of the current tables
}

const (
	adShardBits = 6
	adShards    = 1 << adShardBits

	chunkBits = 16
	chunkSize = 1 << chunkBits
	// A record never starts in a chunk's last 8 bytes, so offset+1 fits 32 bits with 65536
	// chunks: 4 GiB per shard, 256 GiB per index.
	maxChunks = 1 << (32 - chunkBits)

	// Record layout, little endian:
	//   [0:4] campaign index, [4] id length, [5] catalog id length,
	//   [6:8] landing URL length | recHasBid,
	//   [8:16] bid override when recHasBid, then id, catalog id, landing URL.
	recHeader = 8
	recHasBid = 1 << 15
	maxRecURL = 4096 // keeps a record far below a chunk (the API allows 2048)

	minSlots = 16
)

type adChunk [chunkSize]byte

// adShard is one of the index's shards. Sharding bounds the cost of a rehash or compaction
// (and the memory held twice during one) to 1/64 of the index.
type adShard struct {
	mu  sync.Mutex // writers only
	tab atomic.Pointer[adTable]
	// Guarded by mu:
	nchunks int // chunks in use; the last one is being filled
	pos     int // bytes used in the last chunk
	written int // record bytes in all chunks
	garbage int // bytes of replaced records
	n       int // ads (occupied slots)
}

// adTable is one generation of a shard.
type adTable struct {
	// slots hold tag<<32 | (record offset + 1); 0 is empty. The tag is the high half of the
	// id's hash, so a probe reads a record only on a likely match. An id's home slot comes
	// from other hash bits by multiply-shift, which allows any table size, so the load factor
	// stays within [0.5, 0.75] instead of halving at every power-of-two step.
	slots []atomic.Uint64
	// chunks is the directory; a record offset is chunk<<chunkBits | position. Its length is
	// its capacity: entries past the shard's nchunks are nil.
	chunks []*adChunk
}

// adRec is a decoded record. tail holds the catalog id then the landing URL, so one string
// allocation serves both.
type adRec struct {
	campaign uint32
	bid      int64
	hasBid   bool
	catLen   int
	tail     string
}

func newAdIndex() *adIndex {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return &adIndex{seed: binary.LittleEndian.Uint64(b[:])}
}

// hash is the id hash: its low adShardBits bits pick the shard, the next 32 the home slot, the
// high 32 are the tag.
func (x *adIndex) hash(id string) uint64 { return xxh3.HashStringSeed(id, x.seed) }

func (x *adIndex) shard(h uint64) *adShard { return &x.shards[h&(adShards-1)] }

func home(h uint64, n int) int { return int(uint64(uint32(h>>adShardBits)) * uint64(n) >> 32) }

func (t *adTable) rec(v uint64) []byte {
	off := uint32(v) - 1
	return t.chunks[off>>chunkBits][off&(chunkSize-1):]
}

// get returns the record of id. It takes no lock.
func (x *adIndex) get(id string) (adRec, bool) {
	h := x.hash(id)
	t := x.shard(h).tab.Load()
	if t == nil {
		return adRec{}, false
	}
	tag, n := h>>32, len(t.slots)
	for i := home(h, n); ; {
		v := t.slots[i].Load()
		if v == 0 {
			return adRec{}, false
		}
		if v>>32 == tag {
			if r := t.rec(v); string(recID(r)) == id {
				return decodeRec(r), true
			}
		}
		if i++; i == n {
			i = 0
		}
	}
}

func decodeRec(r []byte) adRec {
	rec := decodeRecView(r)
	rec.tail = strings.Clone(rec.tail)
	return rec
}

func recLen(r []byte) int {
	ul := binary.LittleEndian.Uint16(r[6:8])
	n := recHeader + int(r[4]) + int(r[5]) + int(ul&^recHasBid)
	if ul&recHasBid != 0 {
		n += 8
	}
	return n
}

func recID(r []byte) []byte {
	p := recHeader
	if binary.LittleEndian.Uint16(r[6:8])&recHasBid != 0 {
		p += 8
	}
	return r[p : p+int(r[4])]
}

// put inserts or replaces the ad id. The lengths are validated by the caller (ids <= 64 bytes,
// landing URL <= 2048); put rejects what would not fit the record format.
func (x *adIndex) put(id string, campaign uint32, landingURL, catalogID string, bid int64, hasBid bool) error {
	if len(id) == 0 || len(id) > math.MaxUint8 || len(catalogID) > math.MaxUint8 || len(landingURL) > maxRecURL {
		return errors.New("ad index: id, catalog id or landing URL too long")
	}
	need := recHeader + len(id) + len(catalogID) + len(landingURL)
	if hasBid {
		need += 8
	}
	h := x.hash(id)
	sh := x.shard(h)
	sh.mu.Lock()
	defer sh.mu.Unlock()

	t := sh.tab.Load()
	if t == nil {
		t = &adTable{slots: make([]atomic.Uint64, minSlots), chunks: make([]*adChunk, 4)}
		x.publish(sh, nil, t)
	}
	i, found := probe(t, h, id)
	if !found && (sh.n+1)*4 > len(t.slots)*3 {
		t = x.rebuild(sh, t, (sh.n+1)*2, false)
		i, found = probe(t, h, id)
	}
	if !fits(sh, need) && sh.garbage >= chunkSize && sh.garbage*2 > sh.written {
		t = x.rebuild(sh, t, len(t.slots), true) // same size: i stays valid
	}
	if !fits(sh, need) && sh.nchunks == len(t.chunks) {
		if sh.nchunks == maxChunks {
			return errors.New("ad index: shard full")
		}
		t = x.rebuild(sh, t, len(t.slots), false) // doubles the directory; i stays valid
	}
	off := x.place(sh, t, need)

	r := t.rec(uint64(off) + 1)[:need]
	binary.LittleEndian.PutUint32(r[0:4], campaign)
	r[4] = byte(len(id))
	r[5] = byte(len(catalogID))
	ul := uint16(len(landingURL))
	p := recHeader
	if hasBid {
		ul |= recHasBid
		binary.LittleEndian.PutUint64(r[8:16], uint64(bid))
		p += 8
	}
	binary.LittleEndian.PutUint16(r[6:8], ul)
	p += copy(r[p:], id)
	p += copy(r[p:], catalogID)
	copy(r[p:], landingURL)

	if found {
		sh.garbage += recLen(t.rec(t.slots[i].Load()))
	} else {
		sh.n++
		x.live.Add(1)
	}
	// The store publishes the record written above.
	t.slots[i].Store(h>>32<<32 | uint64(off) + 1)
	return nil
}

func fits(sh *adShard, need int) bool { return sh.nchunks > 0 && sh.pos+need <= chunkSize }

// place reserves need bytes in t's chunks and returns their offset, adding a chunk when the
// last one is full. The caller has made sure the directory has room.
func (x *adIndex) place(sh *adShard, t *adTable, need int) uint32 {
	if !fits(sh, need) {
		t.chunks[sh.nchunks] = new(adChunk)
		sh.nchunks++
		sh.pos = 0
		x.bytes.Add(chunkSize)
	}
	off := uint32(sh.nchunks-1)<<chunkBits | uint32(sh.pos)
	sh.pos += need
	sh.written += need
	return off
}

// probe finds id's slot in t, or the empty slot where it would go.
func probe(t *adTable, h uint64, id string) (int, bool) {
	tag, n := h>>32, len(t.slots)
	for i := home(h, n); ; {
		v := t.slots[i].Load()
		if v == 0 {
			return i, false
		}
		if v>>32 == tag && string(recID(t.rec(v))) == id {
			return i, true
		}
		if i++; i == n {
			i = 0
		}
	}
}

// rebuild builds a new table of nslots slots from old, publishes it and returns it. With
// compact it copies the live records into fresh chunks, dropping the garbage; otherwise the
// records stay where they are and the new table gets the chunk directory, doubled when full.
// With the same number of slots every ad keeps its slot (positions depend only on the hash).
func (x *adIndex) rebuild(sh *adShard, old *adTable, nslots int, compact bool) *adTable {
	nslots = max(nslots, minSlots)
	nt := &adTable{slots: make([]atomic.Uint64, nslots), chunks: old.chunks}
	switch {
	case compact:
		// The live records fit in the old chunks; repacked, the waste at chunk ends (each
		// under one maximal record, 1/14 of a chunk) cannot double the count.
		nt.chunks = make([]*adChunk, 2*sh.nchunks+4)
		x.bytes.Add(-int64(sh.nchunks) * chunkSize)
		sh.nchunks, sh.pos, sh.written, sh.garbage = 0, 0, 0, 0
	case sh.nchunks == len(old.chunks):
		nt.chunks = make([]*adChunk, 2*len(old.chunks))
		copy(nt.chunks, old.chunks)
	}
	same := nslots == len(old.slots)
	for i := range old.slots {
		v := old.slots[i].Load()
		if v == 0 {
			continue
		}
		r := old.rec(v)
		if compact {
			l := recLen(r)
			off := x.place(sh, nt, l)
			copy(nt.rec(uint64(off)+1), r[:l])
			v = v>>32<<32 | uint64(off) + 1
		}
		j := i
		if !same {
			h := x.hash(view(recID(r)))
			for j = home(h, nslots); nt.slots[j].Load() != 0; {
				if j++; j == nslots {
					j = 0
				}
			}
		}
		nt.slots[j].Store(v)
	}
	x.publish(sh, old, nt)
	return nt
}

func (x *adIndex) publish(sh *adShard, old, nt *adTable) {
	d := 8 * (len(nt.slots) + len(nt.chunks))
	if old != nil {
		d -= 8 * (len(old.slots) + len(old.chunks))
	}
	x.bytes.Add(int64(d))
	sh.tab.Store(nt)
}

func (x *adIndex) len() int { return int(x.live.Load()) }

// recTable interns ids (campaigns, advertisers) to dense uint32 indexes and holds one immutable
// record per index, replaced whole on update. Reads by index take no lock; reads by id go
// through a sync.Map, which serves stable keys without locking.
type recTable[T any] struct {
	mu   sync.Mutex // writers
	ids  sync.Map   // string -> uint32
	recs atomic.Pointer[[]atomic.Pointer[T]]
	n    atomic.Uint32
}

// put stores rec under id and returns its index. The index of an id never changes.
func (t *recTable[T]) put(id string, rec *T) uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if v, ok := t.ids.Load(id); ok {
		idx := v.(uint32)
		(*t.recs.Load())[idx].Store(rec)
		return idx
	}
	var cur []atomic.Pointer[T]
	if p := t.recs.Load(); p != nil {
		cur = *p
	}
	idx := t.n.Load()
	if int(idx) == len(cur) {
		// A new array, published whole; readers of the old one see the records as they were
		// when they loaded it, which is all a lock-free read promises.
		grown := make([]atomic.Pointer[T], max(64, 2*len(cur)))
		for i := range cur {
			grown[i].Store(cur[i].Load())
		}
		grown[idx].Store(rec)
		t.recs.Store(&grown)
	} else {
		cur[idx].Store(rec)
	}
	t.n.Store(idx + 1)
	// Last, so whoever finds the id also finds its record.
	t.ids.Store(id, idx)
	return idx
}

func (t *recTable[T]) at(idx uint32) *T {
	p := t.recs.Load()
	if p == nil || int(idx) >= len(*p) {
		return nil
	}
	return (*p)[idx].Load()
}

func (t *recTable[T]) get(id string) (*T, uint32, bool) {
	v, ok := t.ids.Load(id)
	if !ok {
		return nil, 0, false
	}
	idx := v.(uint32)
	return t.at(idx), idx, true
}

func (t *recTable[T]) len() int { return int(t.n.Load()) }
