package dedup

// The Window and Memory of before the compact tables (a Go map and 128-bit fingerprints in
// Memory, 16-byte FIFO slots and table entries in Window), kept as reference models: the
// differential tests feed both the same inputs and require the same decisions.

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
)

// refWindow is Window with 16-byte FIFO slots (full receive times) and 16-byte table entries
// (hash and 64-bit position).
type refWindow struct {
	span, slack int64 // micros
	maxRecv     int64

	// fifo holds the events seen, oldest first: positions head..head+n-1, stored at
	// pos & fifoMask.
	fifo     []refWindowSlot
	fifoMask int64
	head, n  int64

	tab  []refWindowEnt // hash -> FIFO position of its occurrence received last; hash 0 = empty
	mask uint64
	keys int
}

type refWindowSlot struct {
	hash uint64
	recv int64
}

type refWindowEnt struct {
	hash uint64
	pos  int64
}

// NewWindow returns an empty filter. span is how long a key is remembered (--dedup-window);
// slack how far receive times may be out of order within a partition.
func newRefWindow(span, slack int64) *refWindow {
	w := &refWindow{span: span, slack: slack}
	w.fifo = make([]refWindowSlot, 1024)
	w.fifoMask = 1023
	w.tab = make([]refWindowEnt, 2048)
	w.mask = 2047
	return w
}

// Observe records an event whose key hashes to h, received at recv (micros), and reports
// whether it repeats an earlier one.
func (w *refWindow) Observe(h uint64, recv int64) bool {
	if h == 0 {
		h = 1 // 0 marks an empty slot
	}
	if recv > w.maxRecv {
		w.maxRecv = recv
		w.evict()
	}
	ti, found := w.find(h)
	dup := false
	if found {
		prev := w.fifo[w.tab[ti].pos&w.fifoMask].recv
		dup = recv-prev <= w.span
		if recv < prev {
			// The key's latest receive time stays what decides; this event only has to
			// pass through the FIFO.
			w.push(0, recv)
			return dup
		}
	}
	pos := w.push(h, recv)
	if !found {
		if uint64(w.keys+1)*2 > uint64(len(w.tab)) {
			w.grow()
			ti, _ = w.find(h)
		}
		w.keys++
	}
	w.tab[ti] = refWindowEnt{h, pos}
	return dup
}

// Len is the number of distinct keys held.
func (w *refWindow) Len() int { return w.keys }

// push appends to the FIFO, doubling it when full, and returns the new position.
func (w *refWindow) push(h uint64, recv int64) int64 {
	if w.n == int64(len(w.fifo)) {
		bigger := make([]refWindowSlot, 2*len(w.fifo))
		newMask := int64(len(bigger) - 1)
		for p := w.head; p < w.head+w.n; p++ {
			bigger[p&newMask] = w.fifo[p&w.fifoMask]
		}
		w.fifo, w.fifoMask = bigger, newMask
	}
	pos := w.head + w.n
	w.fifo[pos&w.fifoMask] = refWindowSlot{h, recv}
	w.n++
	return pos
}

// evict drops events received before maxRecv - span - slack from the front of the FIFO.
// Events further back that are as old stay until they reach the front, which only costs
// memory: decisions compare receive times, never presence alone.
func (w *refWindow) evict() {
	limit := w.maxRecv - w.span - w.slack
	for w.n > 0 {
		s := w.fifo[w.head&w.fifoMask]
		if s.recv >= limit {
			return
		}
		if s.hash == 0 {
			// A slot that decides nothing (see Observe).
		} else if ti, ok := w.find(s.hash); ok && w.tab[ti].pos == w.head {
			w.remove(ti)
			w.keys--
		}
		w.head++
		w.n--
	}
}

// find returns the table index holding h, or the empty index where it would go.
func (w *refWindow) find(h uint64) (int, bool) {
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

// remove deletes index i with backward-shift deletion, so probes need no tombstones.
func (w *refWindow) remove(i int) {
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
	w.tab[i] = refWindowEnt{}
}

// grow doubles the table.
func (w *refWindow) grow() {
	old := w.tab
	w.tab = make([]refWindowEnt, 2*len(old))
	w.mask = uint64(len(w.tab) - 1)
	for _, e := range old {
		if e.hash != 0 {
			i, _ := w.find(e.hash)
			w.tab[i] = e
		}
	}
}

// refMemory is Memory with a Go map per shard of 128-bit fingerprints.
type refMemory struct {
	window  time.Duration
	shards  [refShards]refShard
	batches sync.Pool // *refBatch
	keys    atomic.Int64
}

const refShards = 256

type refFP [2]uint64

// refShard holds one slice of the key space. A reservation writes the key into m with its
// final expiry right away and remembers it in pending until it is committed or released, so
// the large table m is touched once per new key (one cache miss) and the small, hot pending
// set carries the in-flight state.
type refShard struct {
	mu      sync.Mutex
	m       map[refFP]uint32 // refFP -> Unix minute its window ends
	pending map[refFP]struct{}
	_       [32]byte // keep shards on separate cache lines
}

// NewMemory returns an empty in-process store with the given window.
func newRefMemory(window time.Duration) *refMemory {
	m := &refMemory{window: window}
	for i := range m.shards {
		m.shards[i].m = make(map[refFP]uint32)
		m.shards[i].pending = make(map[refFP]struct{})
	}
	return m
}

func refFingerprintOf(key string) refFP {
	// Two independent 64-bit hashes: xxhash of the key, and of the key behind a fixed
	// prefix byte (xxhash mixes the whole input, so the two are independent in practice).
	d := xxhash.New()
	_, _ = d.WriteString("\x01")
	_, _ = d.WriteString(key)
	return refFP{xxhash.Sum64String(key), d.Sum64()}
}

func (m *refMemory) shard(fp refFP) *refShard { return &m.shards[fp[0]%refShards] }

func (m *refMemory) expiry(now time.Time) uint32 {
	return uint32(now.Add(m.window).Unix()/60) + 1
}

// refBatch is the scratch space of one Reserve or Commit: the keys' fingerprints, and their
// indexes grouped by shard so each shard's lock is taken once per refBatch instead of once per
// key (a 1000-event refBatch touches each of 256 shards about four times).
type refBatch struct {
	fps   []refFP
	order []int32
	start [refShards + 1]int32
}

func (m *refMemory) group(keys []string) *refBatch {
	b, _ := m.batches.Get().(*refBatch)
	if b == nil {
		b = &refBatch{}
	}
	b.fps, b.order = b.fps[:0], append(b.order[:0], make([]int32, len(keys))...)
	clear(b.start[:])
	for _, k := range keys {
		fp := refFingerprintOf(k)
		b.fps = append(b.fps, fp)
		b.start[fp[0]%refShards+1]++
	}
	for i := 1; i <= refShards; i++ {
		b.start[i] += b.start[i-1]
	}
	next := b.start
	for i, fp := range b.fps {
		sh := fp[0] % refShards
		b.order[next[sh]] = int32(i)
		next[sh]++
	}
	return b
}

// each calls f for every key index of the refBatch with its shard locked.
func (m *refMemory) each(b *refBatch, f func(s *refShard, i int)) {
	for sh := 0; sh < refShards; sh++ {
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
func (m *refMemory) Reserve(_ context.Context, keys []string, now time.Time, out []Status) error {
	nowMin := uint32(now.Unix() / 60)
	exp := m.expiry(now)
	var added int64
	b := m.group(keys)
	m.each(b, func(s *refShard, i int) {
		fp := b.fps[i]
		old, ok := s.m[fp]
		switch {
		case ok && old > nowMin:
			if _, inFlight := s.pending[fp]; inFlight {
				out[i] = InFlight
			} else {
				out[i] = Duplicate
			}
		default:
			if !ok {
				added++
			}
			s.m[fp] = exp
			s.pending[fp] = struct{}{}
			out[i] = Reserved
		}
	})
	m.keys.Add(added)
	return nil
}

// Commit implements Store. The expiry was set by Reserve (same receive time), so committing
// only ends the in-flight state.
func (m *refMemory) Commit(_ context.Context, keys []string, _ time.Time) error {
	b := m.group(keys)
	m.each(b, func(s *refShard, i int) { delete(s.pending, b.fps[i]) })
	return nil
}

// Restore records a key read back from the log on start, with the window measured from the
// event's original receive time.
func (m *refMemory) Restore(key string, received time.Time) {
	fp := refFingerprintOf(key)
	s := m.shard(fp)
	s.mu.Lock()
	if _, ok := s.m[fp]; !ok {
		m.keys.Add(1)
	}
	s.m[fp] = m.expiry(received)
	s.mu.Unlock()
}

// Release implements Store.
func (m *refMemory) Release(_ context.Context, keys []string) error {
	for _, k := range keys {
		fp := refFingerprintOf(k)
		s := m.shard(fp)
		s.mu.Lock()
		if _, ok := s.pending[fp]; ok {
			delete(s.pending, fp)
			delete(s.m, fp)
			m.keys.Add(-1)
		}
		s.mu.Unlock()
	}
	return nil
}

// Sweep deletes keys whose window ended before now, one shard at a time so reservations
// wait at most for one shard's sweep.
func (m *refMemory) Sweep(now time.Time) (removed int) {
	nowMin := uint32(now.Unix() / 60)
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		for fp, exp := range s.m {
			if _, inFlight := s.pending[fp]; !inFlight && exp <= nowMin {
				delete(s.m, fp)
				removed++
			}
		}
		s.mu.Unlock()
	}
	m.keys.Add(int64(-removed))
	return removed
}

// Len is the number of keys held, including in-flight ones.
func (m *refMemory) Len() int64 { return m.keys.Load() }
