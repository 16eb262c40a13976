package dedup

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
)

// Memory is the embedded Store: a sharded in-process set of 128-bit key fingerprints, each
// with the minute its window ends. It is rebuilt on start from the event log, or from a
// snapshot as of given log offsets plus the log after them (see RestoreKeys and KeySnapshot in
// package ingest), which is what makes "key and event committed together" hold without a
// second durable write: after a crash, a key is reserved again exactly when its event is in
// the log.
//
// Fingerprints are 128 bits so a false duplicate (two keys sharing a fingerprint) is not a
// practical concern even at billions of keys per window; the full key is not kept, which
// bounds memory to about 40 bytes per key.
type Memory struct {
	window  time.Duration
	shards  [memShards]memShard
	batches sync.Pool // *batch
	keys    atomic.Int64
}

const memShards = 256

type fingerprint [2]uint64

// memShard holds one slice of the key space. A reservation writes the key into m with its
// final expiry right away and remembers it in pending until it is committed or released, so
// the large table m is touched once per new key (one cache miss) and the small, hot pending
// set carries the in-flight state.
type memShard struct {
	mu      sync.Mutex
	m       map[fingerprint]uint32 // fingerprint -> Unix minute its window ends
	pending map[fingerprint]struct{}
	_       [32]byte // keep shards on separate cache lines
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty in-process store with the given window.
func NewMemory(window time.Duration) *Memory {
	m := &Memory{window: window}
	for i := range m.shards {
		m.shards[i].m = make(map[fingerprint]uint32)
		m.shards[i].pending = make(map[fingerprint]struct{})
	}
	return m
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
func (m *Memory) Commit(_ context.Context, keys []string, _ time.Time) error {
	b := m.group(keys)
	m.each(b, func(s *memShard, i int) { delete(s.pending, b.fps[i]) })
	return nil
}

// Restore records a key read back from the log on start, with the window measured from the
// event's original receive time.
func (m *Memory) Restore(key string, received time.Time) {
	fp := fingerprintOf(key)
	s := m.shard(fp)
	s.mu.Lock()
	if _, ok := s.m[fp]; !ok {
		m.keys.Add(1)
	}
	s.m[fp] = m.expiry(received)
	s.mu.Unlock()
}

// Release implements Store.
func (m *Memory) Release(_ context.Context, keys []string) error {
	for _, k := range keys {
		fp := fingerprintOf(k)
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
func (m *Memory) Sweep(now time.Time) (removed int) {
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
