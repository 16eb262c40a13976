package dedup

import (
	"context"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
)

// Memory is the embedded Store: a sharded in-process set of 96-bit key fingerprints, each
// with the minute its window ends. It is rebuilt on start from the event log, or from a
// snapshot as of given log offsets plus the log after them (see RestoreKeys and KeySnapshot in
// package ingest), which is what makes "key and event committed together" hold without a
// second durable write: after a crash, a key is reserved again exactly when its event is in
// the log.
//
// False duplicates: the full key is not kept, so two keys sharing a fingerprint are one key.
// With n keys in a window, a new key meets an existing fingerprint with probability about
// n/2^96; at 10^8 keys a window (a full-size node's day) that is 1.3e-21 per key, and about
// one false duplicate in 8e12 days of 10^8 keys, not a practical concern. (The one
// fingerprint that would read as an empty slot is folded into a neighbour, which changes
// nothing measurable.)
//
// Memory is about 18 to 22 bytes per key (BenchmarkMemoryBytesPerKey): each of 256 shards is
// an open-addressing table of 16-byte slots (fingerprint and expiry, no pointers, so the
// collector never scans it) at most 90% full, grown by a quarter one shard at a time, so
// growing never pauses more than one shard. Robin Hood order (along a run of slots, entries
// stay sorted by home) keeps probes short at that load, and lets a miss stop at the first
// entry nearer its home than the key. Deletion shifts entries back (no tombstones), so a
// table that sweeps as many keys as it takes never fills with dead slots.
type Memory struct {
	window  time.Duration
	shards  [memShards]memShard
	batches sync.Pool // *batch
	keys    atomic.Int64
}

const memShards = 256

// fingerprint is a key's two 64-bit hashes; the store keeps 96 bits of it (memKey).
type fingerprint [2]uint64

// memKey is the part of a fingerprint the store keeps: all of the first hash (its low 8 bits
// choose the shard, its high bits the home slot) and the high 32 bits of the second.
type memKey struct {
	lo uint64
	hi uint32
}

func (fp fingerprint) key() memKey {
	k := memKey{fp[0], uint32(fp[1] >> 32)}
	if k == (memKey{}) {
		k.hi = 1 // the zero key marks an empty slot
	}
	return k
}

// fingerprint is k as a full fingerprint, the low 32 bits of the second hash zero.
func (k memKey) fingerprint() fingerprint { return fingerprint{k.lo, uint64(k.hi) << 32} }

// memSlot is one table slot, 16 bytes (a memKey field would pad it to 24); the zero slot is
// empty.
type memSlot struct {
	lo      uint64
	hi, exp uint32 // exp: Unix minute the key's window ends
}

func (e memSlot) key() memKey { return memKey{e.lo, e.hi} }

// memShard holds one slice of the key space. A reservation writes the key into the table
// with its final expiry right away and remembers it in pending until it is committed or
// released, so the large table is touched once per new key (one cache miss) and the small,
// hot pending set carries the in-flight state.
type memShard struct {
	mu      sync.Mutex
	slots   []memSlot // open addressing, linear probing from home(key)
	used    int
	pending map[memKey]struct{}
	_       [32]byte // keep shards on separate cache lines
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty in-process store with the given window.
func NewMemory(window time.Duration) *Memory {
	m := &Memory{window: window}
	for i := range m.shards {
		m.shards[i].pending = make(map[memKey]struct{})
	}
	return m
}

// home is the slot k's probe starts at: the first hash's high bits scaled to the table.
func (s *memShard) home(k memKey) int {
	hi, _ := bits.Mul64(k.lo, uint64(len(s.slots)))
	return int(hi)
}

// dist is how far slot i lies past home, cyclically.
func (s *memShard) dist(i, home int) int {
	if d := i - home; d >= 0 {
		return d
	}
	return i - home + len(s.slots)
}

// find returns the index of k's slot and whether it holds k; when it does not, the index is
// where k belongs: an empty slot, or the first entry nearer its home than k would be (Robin
// Hood order keeps entries sorted by home along a run, so k cannot lie past it). The table
// must not be empty.
func (s *memShard) find(k memKey) (int, bool) {
	i := s.home(k)
	for d := 0; ; d++ {
		e := &s.slots[i]
		if e.key() == k {
			return i, true
		}
		if e.key() == (memKey{}) || s.dist(i, s.home(e.key())) < d {
			return i, false
		}
		if i++; i == len(s.slots) {
			i = 0
		}
	}
}

// lookup returns k's expiry, if k is held.
func (s *memShard) lookup(k memKey) (uint32, bool) {
	if len(s.slots) == 0 {
		return 0, false
	}
	i, ok := s.find(k)
	return s.slots[i].exp, ok
}

// put sets k's expiry and reports whether k is new.
func (s *memShard) put(k memKey, exp uint32) bool {
	if (s.used+1)*10 > len(s.slots)*9 {
		s.grow()
	}
	i, ok := s.find(k)
	if ok {
		s.slots[i].exp = exp
		return false
	}
	s.insertAt(i, memSlot{k.lo, k.hi, exp})
	s.used++
	return true
}

// insertAt places e at slot i, where find stopped, and moves each entry from there on one
// slot further until one lands in an empty slot (an entry further from its home than the
// one in a slot takes that slot, and the displaced one goes on).
func (s *memShard) insertAt(i int, e memSlot) {
	d := s.dist(i, s.home(e.key()))
	for {
		cur := s.slots[i]
		if cur.key() == (memKey{}) {
			s.slots[i] = e
			return
		}
		if cd := s.dist(i, s.home(cur.key())); cd < d {
			s.slots[i], e, d = e, cur, cd
		}
		if i++; i == len(s.slots) {
			i = 0
		}
		d++
	}
}

// grow makes the table a quarter larger (16 slots at first), so it stays between 72% and
// 90% full as it grows.
func (s *memShard) grow() {
	old := s.slots
	s.slots = make([]memSlot, max(16, len(old)+len(old)/4))
	for _, e := range old {
		if e.key() != (memKey{}) {
			i, _ := s.find(e.key())
			s.insertAt(i, e)
		}
	}
}

// delete removes k if held.
func (s *memShard) delete(k memKey) {
	if len(s.slots) == 0 {
		return
	}
	if i, ok := s.find(k); ok {
		s.remove(i)
	}
}

// remove empties slot i by shifting back one slot the entries after it that are not at their
// home, so probes need no tombstones. Only entries after i (in probe order, up to the next
// empty slot or entry at its home) move.
func (s *memShard) remove(i int) {
	for {
		j := i + 1
		if j == len(s.slots) {
			j = 0
		}
		e := s.slots[j]
		if e.key() == (memKey{}) || s.home(e.key()) == j {
			break
		}
		s.slots[i] = e
		i = j
	}
	s.slots[i] = memSlot{}
	s.used--
}

// sweep removes the keys for which drop is true and returns how many. It starts after an empty
// slot, so the entries remove shifts back come from slots not yet visited and none is missed.
func (s *memShard) sweep(drop func(memSlot) bool) (removed int) {
	n := len(s.slots)
	start := 0
	for start < n && s.slots[start].key() != (memKey{}) {
		start++
	}
	if start == n {
		return 0 // empty table (a table with slots always has an empty one)
	}
	i := start + 1
	for visited := 1; visited < n; {
		if i == n {
			i = 0
		}
		if e := s.slots[i]; e.key() != (memKey{}) && drop(e) {
			s.remove(i) // slot i now holds an entry not visited yet, or nothing
			removed++
			continue
		}
		i++
		visited++
	}
	return removed
}

func fingerprintOf(key string) fingerprint {
	// Two independent 64-bit hashes: xxhash of the key, and of the key behind a fixed
	// prefix byte (xxhash mixes the whole input, so the two are independent in practice).
	d := xxhash.New()
	_, _ = d.WriteString("\x01")
	_, _ = d.WriteString(key)
	return fingerprint{xxhash.Sum64String(key), d.Sum64()}
}

func (m *Memory) shard(fp fingerprint) *memShard { return &m.shards[fp[0]%memShards] }

func (m *Memory) expiry(now time.Time) uint32 {
	return uint32(now.Add(m.window).Unix()/60) + 1
}

// batch is the scratch space of one Reserve or Commit: the keys' fingerprints, and their
// indexes grouped by shard so each shard's lock is taken once per batch instead of once per
// key (a 1000-event batch touches each of 256 shards about four times).
type batch struct {
	fps   []fingerprint
	order []int32
	start [memShards + 1]int32
}

func (m *Memory) group(keys []string) *batch {
	b, _ := m.batches.Get().(*batch)
	if b == nil {
		b = &batch{}
	}
	b.fps, b.order = b.fps[:0], append(b.order[:0], make([]int32, len(keys))...)
	clear(b.start[:])
	for _, k := range keys {
		fp := fingerprintOf(k)
		b.fps = append(b.fps, fp)
		b.start[fp[0]%memShards+1]++
	}
	for i := 1; i <= memShards; i++ {
		b.start[i] += b.start[i-1]
	}
	next := b.start
	for i, fp := range b.fps {
		sh := fp[0] % memShards
		b.order[next[sh]] = int32(i)
		next[sh]++
	}
	return b
}

// each calls f for every key index of the batch with its shard locked.
func (m *Memory) each(b *batch, f func(s *memShard, i int)) {
	for sh := 0; sh < memShards; sh++ {
		lo, hi := b.start[sh], b.start[sh+1]
		if lo == hi {
			continue
		}
		s := &m.shards[sh]
		s.mu.Lock()
		for _, i := range b.order[lo:hi] {
			f(s, int(i))
		}
		s.mu.Unlock()
	}
	m.batches.Put(b)
}

// Reserve implements Store.
func (m *Memory) Reserve(_ context.Context, keys []string, now time.Time, out []Status) error {
	nowMin := uint32(now.Unix() / 60)
	exp := m.expiry(now)
	var added int64
	b := m.group(keys)
	m.each(b, func(s *memShard, i int) {
		k := b.fps[i].key()
		old, ok := s.lookup(k)
		switch {
		case ok && old > nowMin:
			if _, inFlight := s.pending[k]; inFlight {
				out[i] = InFlight
			} else {
				out[i] = Duplicate
			}
		default:
			if s.put(k, exp) {
				added++
			}
			s.pending[k] = struct{}{}
			out[i] = Reserved
		}
	})
	m.keys.Add(added)
	return nil
}

// Commit implements Store. The expiry was set by Reserve (same receive time), so committing
// only ends the in-flight state.
func (m *Memory) Commit(_ context.Context, keys []string, _ time.Time) error {
	b := m.group(keys)
	m.each(b, func(s *memShard, i int) { delete(s.pending, b.fps[i].key()) })
	return nil
}

// Restore records a key read back from the log on start, with the window measured from the
// event's original receive time.
func (m *Memory) Restore(key string, received time.Time) {
	fp := fingerprintOf(key)
	s := m.shard(fp)
	s.mu.Lock()
	if s.put(fp.key(), m.expiry(received)) {
		m.keys.Add(1)
	}
	s.mu.Unlock()
}

// Release implements Store.
func (m *Memory) Release(_ context.Context, keys []string) error {
	for _, k := range keys {
		fp := fingerprintOf(k)
		s := m.shard(fp)
		key := fp.key()
		s.mu.Lock()
		if _, ok := s.pending[key]; ok {
			delete(s.pending, key)
			s.delete(key)
			m.keys.Add(-1)
		}
		s.mu.Unlock()
	}
	return nil
}

// Sweep deletes keys whose window ended before now, one shard at a time so reservations
// wait at most for one shard's sweep.
func (m *Memory) Sweep(now time.Time) (removed int) {
	nowMin := uint32(now.Unix() / 60)
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		removed += s.sweep(func(e memSlot) bool {
			if e.exp > nowMin {
				return false
			}
			_, inFlight := s.pending[e.key()]
			return !inFlight
		})
		s.mu.Unlock()
	}
	m.keys.Add(int64(-removed))
	return removed
}

// Run sweeps expired keys every interval until ctx ends.
func (m *Memory) Run(ctx context.Context, interval time.Duration, now func() time.Time) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			m.Sweep(now())
		}
	}
}

// Len is the number of keys held, including in-flight ones.
func (m *Memory) Len() int64 { return m.keys.Load() }

// Close implements Store.
func (m *Memory) Close() error { return nil }
