// Package ratelimit keeps one caller from crowding out the others on the API listener: a
// token bucket (golang.org/x/time/rate) per source IP on the public endpoints, and per API
// key on the authenticated API. It sits in front of every handler, so a request it refuses
// (429 rate_limited, with Retry-After) has reserved no idempotency key and appended no event:
// a limited request records nothing, and nothing already accepted is touched.
//
// Invariants:
//   - Memory is bounded whatever the callers do: each Table holds at most MaxEntries buckets.
//     A bucket left unused for Burst/Rate seconds has refilled completely, so it is dropped
//     without changing any answer (a new bucket starts full too). When a table is full of
//     buckets still in use (say, an attacker rotating through many addresses), a new source
//     shares its shard's overflow bucket until an entry goes idle: the sources already in the
//     table keep their own buckets, and the newcomers throttle each other.
//   - A refused request takes no token: the reservation that measured its delay is cancelled.
//   - Nothing here reads a clock of its own: the time comes from the Now function given in.
//
// Locks: a request holds its shard's mutex only to find (or make) its bucket, and takes the
// bucket's own mutex (inside rate.Limiter) after releasing it; no code holds both.
package ratelimit

import (
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Limit is the rate of one kind of bucket.
type Limit struct {
	Rate  float64 // tokens (requests) per second; 0 turns the limit off
	Burst int     // bucket size: requests allowed at once after a quiet spell
}

// Enabled reports whether the limit limits anything.
func (l Limit) Enabled() bool { return l.Rate > 0 }

// refill is how long an empty bucket takes to fill up again: after that long unused, a bucket
// is indistinguishable from a new one.
func (l Limit) refill() time.Duration {
	s := float64(l.Burst) / l.Rate
	if s > float64(math.MaxInt64/2)/float64(time.Second) {
		return math.MaxInt64 / 2
	}
	return time.Duration(math.Ceil(s * float64(time.Second)))
}

// TableOptions configure a Table.
type TableOptions[K comparable] struct {
	Limit      Limit
	MaxEntries int // at most this many buckets (rounded up to a multiple of Shards)
	Shards     int // independent locks; default 64 (fewer when MaxEntries is smaller)
	Hash       func(K) uint64
	Now        func() time.Time
}

// Table is a bounded, sharded set of token buckets, one per key. It is safe for concurrent
// use; requests for keys in different shards never wait for each other.
type Table[K comparable] struct {
	limit  Limit
	idle   int64 // refill in nanoseconds: a bucket unused this long is dropped
	hash   func(K) uint64
	now    func() time.Time
	mask   uint64
	shards []shard[K]

	limited    atomic.Uint64
	overflowed atomic.Uint64
}

type shard[K comparable] struct {
	mu      sync.Mutex
	entries map[K]*entry[K]
	// head is the most recently used entry, tail the least; the list is circular through a
	// sentinel so that moving an entry needs no nil checks.
	list     entry[K]
	max      int
	overflow *rate.Limiter // shared by new sources while the shard is full
	_        [64]byte      // keep neighbouring shards' mutexes off one cache line
}

type entry[K comparable] struct {
	key        K
	lim        *rate.Limiter
	used       int64 // Now().UnixNano() of the last request
	prev, next *entry[K]
}

// NewTable returns an empty table. o.Limit must be enabled (Rate > 0, Burst >= 1).
func NewTable[K comparable](o TableOptions[K]) *Table[K] {
	n := o.Shards
	if n <= 0 {
		n = 64
	}
	for n > 1 && n > o.MaxEntries {
		n /= 2
	}
	n = 1 << (63 - bits.LeadingZeros64(uint64(n))) // a power of two, so a mask picks the shard
	perShard := max(1, (o.MaxEntries+n-1)/n)
	t := &Table[K]{
		limit:  o.Limit,
		idle:   int64(o.Limit.refill()),
		hash:   o.Hash,
		now:    o.Now,
		mask:   uint64(n - 1),
		shards: make([]shard[K], n),
	}
	for i := range t.shards {
		s := &t.shards[i]
		s.entries = make(map[K]*entry[K])
		s.list.prev, s.list.next = &s.list, &s.list
		s.max = perShard
		s.overflow = rate.NewLimiter(rate.Limit(o.Limit.Rate), o.Limit.Burst)
	}
	return t
}

// Allow takes one token from key's bucket. When the bucket is empty it takes nothing and
// returns false with how long until a token is there.
func (t *Table[K]) Allow(key K) (ok bool, retryAfter time.Duration) {
	now := t.now()
	lim := t.bucket(key, now)
	if lim.AllowN(now, 1) {
		return true, 0
	}
	// The bucket is empty: measure the wait with a reservation and give its token back, so
	// that refused requests do not push the caller's next success further out.
	r := lim.ReserveN(now, 1)
	if !r.OK() { // Burst < 1: never allowed
		t.limited.Add(1)
		return false, t.Refill()
	}
	d := r.DelayFrom(now)
	if d <= 0 { // refilled between the two calls: the reservation is the token
		return true, 0
	}
	r.CancelAt(now)
	t.limited.Add(1)
	return false, d
}

// bucket returns key's bucket, creating it if there is room. It also drops up to two idle
// buckets from the cold end, so the table shrinks back as sources go quiet.
func (t *Table[K]) bucket(key K, now time.Time) *rate.Limiter {
	ns := now.UnixNano()
	s := &t.shards[t.hash(key)&t.mask]
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 0; i < 2; i++ {
		old := s.list.prev
		if old == &s.list || ns-old.used < t.idle || old.key == key {
			break
		}
		s.remove(old)
		delete(s.entries, old.key)
	}
	if e, ok := s.entries[key]; ok {
		e.used = ns
		s.remove(e)
		s.pushFront(e)
		return e.lim
	}
	if len(s.entries) >= s.max {
		t.overflowed.Add(1)
		return s.overflow
	}
	e := &entry[K]{key: key, lim: rate.NewLimiter(rate.Limit(t.limit.Rate), t.limit.Burst), used: ns}
	s.entries[key] = e
	s.pushFront(e)
	return e.lim
}

func (s *shard[K]) remove(e *entry[K]) {
	e.prev.next = e.next
	e.next.prev = e.prev
}

func (s *shard[K]) pushFront(e *entry[K]) {
	e.prev = &s.list
	e.next = s.list.next
	s.list.next.prev = e
	s.list.next = e
}

// Refill is how long an unused bucket takes to fill up from empty, and so how long it stays
// in the table.
func (t *Table[K]) Refill() time.Duration { return time.Duration(t.idle) }

// TableStats are a table's counters.
type TableStats struct {
	Limited    uint64 // requests refused
	Overflowed uint64 // requests from new sources that found their shard full
	Entries    int    // buckets held now
}

// Stats returns the table's counters.
func (t *Table[K]) Stats() TableStats {
	st := TableStats{Limited: t.limited.Load(), Overflowed: t.overflowed.Load()}
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		st.Entries += len(s.entries)
		s.mu.Unlock()
	}
	return st
}

// RetryAfterSeconds is the Retry-After value for a wait of d: whole seconds, rounded up, at
// least 1 (a client told 0 would retry at once and be refused again).
func RetryAfterSeconds(d time.Duration) int64 {
	s := int64((d + time.Second - 1) / time.Second)
	return max(s, 1)
}
