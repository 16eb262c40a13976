package ratelimit

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/testseed"
	"golang.org/x/time/rate"
)

// clock is a manual clock for tests.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newClock() *clock { return &clock{t: time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)} }

func hashU64(k uint64) uint64 { return mix(k) }

func newTestTable(c *clock, l Limit, maxEntries, shards int) *Table[uint64] {
	return NewTable(TableOptions[uint64]{Limit: l, MaxEntries: maxEntries, Shards: shards, Hash: hashU64, Now: c.now})
}

// allowN calls Allow n times and returns how many were allowed.
func allowN(t *Table[uint64], key uint64, n int) int {
	ok := 0
	for range n {
		if a, _ := t.Allow(key); a {
			ok++
		}
	}
	return ok
}

// TestBurstAndRefill: a new source gets its burst at once, then one request per 1/rate; a
// long quiet spell refills the bucket to its burst and no further.
func TestBurstAndRefill(t *testing.T) {
	c := newClock()
	tb := newTestTable(c, Limit{Rate: 10, Burst: 5}, 100, 0)
	if got := allowN(tb, 1, 8); got != 5 {
		t.Fatalf("burst: %d of 8 allowed, want 5", got)
	}
	ok, wait := tb.Allow(1)
	if ok || wait != 100*time.Millisecond {
		t.Fatalf("empty bucket: allowed=%v wait=%v, want refused with 100ms", ok, wait)
	}
	c.advance(99 * time.Millisecond)
	if ok, wait := tb.Allow(1); ok || wait != time.Millisecond {
		t.Fatalf("after 99ms: allowed=%v wait=%v, want refused with 1ms", ok, wait)
	}
	c.advance(time.Millisecond)
	if got := allowN(tb, 1, 3); got != 1 {
		t.Fatalf("after 100ms: %d allowed, want 1", got)
	}
	c.advance(time.Hour)
	if got := allowN(tb, 1, 8); got != 5 {
		t.Fatalf("after an hour: %d of 8 allowed, want the burst of 5", got)
	}
	// Another key has a bucket of its own.
	if got := allowN(tb, 2, 8); got != 5 {
		t.Fatalf("second key: %d of 8 allowed, want 5", got)
	}
	if st := tb.Stats(); st.Limited != 3+1+1+2+3+3 || st.Entries != 2 || st.Overflowed != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestRefusedTakesNothing: however many requests are refused, the next token comes at the
// same time; a flood does not dig the bucket deeper.
func TestRefusedTakesNothing(t *testing.T) {
	c := newClock()
	tb := newTestTable(c, Limit{Rate: 2, Burst: 1}, 100, 0)
	if ok, _ := tb.Allow(7); !ok {
		t.Fatal("first request refused")
	}
	for i := range 1000 {
		c.advance(100 * time.Microsecond) // 0.1s in all
		if ok, wait := tb.Allow(7); ok || wait != 500*time.Millisecond-time.Duration(i+1)*100*time.Microsecond {
			t.Fatalf("refusal %d: allowed=%v wait=%v", i, ok, wait)
		}
	}
	c.advance(400 * time.Millisecond)
	if ok, _ := tb.Allow(7); !ok {
		t.Fatal("refused 0.5s after the last accepted request: the refusals took tokens")
	}
}

// TestRetryAfterRounding: Retry-After is whole seconds rounded up, never 0.
func TestRetryAfterRounding(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want int64
	}{
		{0, 1}, {-time.Second, 1}, {time.Nanosecond, 1}, {999 * time.Millisecond, 1}, {time.Second, 1},
		{time.Second + time.Nanosecond, 2}, {2500 * time.Millisecond, 3}, {59 * time.Second, 59}, {time.Hour, 3600},
	} {
		if got := RetryAfterSeconds(tc.d); got != tc.want {
			t.Errorf("RetryAfterSeconds(%v) = %d, want %d", tc.d, got, tc.want)
		}
	}
	// Through the table: one request per 4s; 1.5s after it, the wait is 2.5s, so 3.
	c := newClock()
	tb := newTestTable(c, Limit{Rate: 0.25, Burst: 1}, 10, 0)
	tb.Allow(1)
	c.advance(1500 * time.Millisecond)
	ok, wait := tb.Allow(1)
	if ok || wait != 2500*time.Millisecond || RetryAfterSeconds(wait) != 3 {
		t.Fatalf("allowed=%v wait=%v (Retry-After %d), want refused, 2.5s, 3", ok, wait, RetryAfterSeconds(wait))
	}
}

// TestTableBounded: however many sources arrive at once, the table never holds more than its
// cap; sources already in it keep their own (drained) buckets; the newcomers share the
// overflow bucket; once entries have gone idle they make room again.
func TestTableBounded(t *testing.T) {
	c := newClock()
	l := Limit{Rate: 1, Burst: 2}
	tb := newTestTable(c, l, 64, 4)
	if got := allowN(tb, 0, 5); got != 2 {
		t.Fatalf("key 0: %d allowed", got)
	}
	overflowAllowed := 0
	for k := uint64(1); k <= 10_000; k++ {
		if ok, _ := tb.Allow(k); ok {
			overflowAllowed++
		}
		if k%1000 == 0 {
			if st := tb.Stats(); st.Entries > 64 {
				t.Fatalf("after %d sources: %d entries, cap 64", k, st.Entries)
			}
		}
	}
	st := tb.Stats()
	if st.Entries != 64 || st.Overflowed < 10_000-64 {
		t.Fatalf("stats %+v: want a full table and every source past the cap overflowed", st)
	}
	// Admitted: the 63 sources that found room, plus the 4 shards' overflow bursts.
	if overflowAllowed != 63+4*l.Burst {
		t.Fatalf("%d sources allowed, want 63 with room + %d from overflow bursts", overflowAllowed, 4*l.Burst)
	}
	if ok, _ := tb.Allow(0); ok {
		t.Fatal("key 0 lost its drained bucket to the flood of new sources")
	}
	// After Burst/Rate every bucket is full again, so dropping it changes nothing: new sources
	// get buckets of their own, and the table stays within its cap.
	c.advance(tb.Refill())
	before := tb.Stats().Overflowed
	for k := uint64(20_000); k < 20_040; k++ {
		if got := allowN(tb, k, 3); got != 2 {
			t.Fatalf("new source %d after the flood: %d of 3 allowed, want its own burst of 2", k, got)
		}
	}
	if st := tb.Stats(); st.Overflowed != before || st.Entries > 64 {
		t.Fatalf("stats %+v: new sources went to overflow although idle entries could go", st)
	}
}

// TestOverflowShared: in a full shard, new sources share one bucket.
func TestOverflowShared(t *testing.T) {
	c := newClock()
	tb := newTestTable(c, Limit{Rate: 1, Burst: 3}, 2, 1)
	tb.Allow(1)
	tb.Allow(2)
	if got := allowN(tb, 3, 2) + allowN(tb, 4, 2); got != 3 {
		t.Fatalf("sources 3 and 4 through the overflow: %d allowed, want its burst of 3", got)
	}
	if got := allowN(tb, 1, 5); got != 2 {
		t.Fatalf("source 1 kept its bucket: %d allowed, want 2", got)
	}
}

// TestIdleEvictionLossless: a table that drops idle buckets answers exactly like one that
// keeps every bucket forever, over a random stream of requests and pauses.
func TestIdleEvictionLossless(t *testing.T) {
	rng := rand.New(rand.NewPCG(testseed.Seed(t), 1))
	c := newClock()
	l := Limit{Rate: 5, Burst: 4}
	tb := newTestTable(c, l, 1000, 8)
	model := map[uint64]*rate.Limiter{}
	minEntries, maxEntries := 1<<30, 0
	for i := range 20_000 {
		switch rng.IntN(10) {
		case 0:
			c.advance(time.Duration(rng.IntN(2000)) * time.Millisecond)
		case 1, 2:
			c.advance(time.Duration(rng.IntN(100)) * time.Millisecond)
		}
		k := uint64(rng.IntN(30))
		m := model[k]
		if m == nil {
			m = rate.NewLimiter(rate.Limit(l.Rate), l.Burst)
			model[k] = m
		}
		want := m.AllowN(c.now(), 1)
		got, _ := tb.Allow(k)
		if got != want {
			t.Fatalf("request %d (key %d at %v): table allowed=%v, a table that never forgets %v", i, k, c.now(), got, want)
		}
		n := tb.Stats().Entries
		minEntries, maxEntries = min(minEntries, n), max(maxEntries, n)
	}
	if minEntries >= maxEntries || tb.Stats().Overflowed != 0 {
		t.Fatalf("entries ranged %d-%d, overflowed %d: idle eviction was not exercised", minEntries, maxEntries, tb.Stats().Overflowed)
	}
	t.Logf("entries ranged %d-%d", minEntries, maxEntries)
}

// TestShardCount: shards are a power of two and no more than the entries.
func TestShardCount(t *testing.T) {
	c := newClock()
	for _, tc := range []struct{ max, shards, want int }{{100_000, 0, 64}, {10, 0, 8}, {1, 0, 1}, {1000, 48, 32}, {1000, 1, 1}} {
		tb := newTestTable(c, Limit{Rate: 1, Burst: 1}, tc.max, tc.shards)
		if got := len(tb.shards); got != tc.want {
			t.Errorf("MaxEntries %d Shards %d: %d shards, want %d", tc.max, tc.shards, got, tc.want)
		}
		if cap := len(tb.shards) * tb.shards[0].max; cap < tc.max || cap >= tc.max+len(tb.shards) {
			t.Errorf("MaxEntries %d: capacity %d", tc.max, cap)
		}
	}
}

func ExampleRetryAfterSeconds() {
	fmt.Println(RetryAfterSeconds(1500 * time.Millisecond))
	// Output: 2
}
