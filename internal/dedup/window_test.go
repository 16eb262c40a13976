package dedup

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/testseed"
)

// testSeed is the repository's seed convention (internal/testseed).
func testSeed(t testing.TB) uint64 { return testseed.Seed(t) }

// naiveRepeat is Window's rule written plainly: some earlier event with the same key was
// received at most span before this one.
func naiveRepeat(keys []uint64, recv []int64, o int, span int64) bool {
	for p := o - 1; p >= 0; p-- {
		if keys[p] == keys[o] && recv[o]-recv[p] <= span {
			return true
		}
	}
	return false
}

// TestWindowMatchesRuleAcrossRestarts checks Window against the rule on random streams whose
// receive times run out of order by up to slack, with restarts that rebuild the filter from
// the events appended since ReplayFrom, as a stage does after a crash.
func TestWindowMatchesRuleAcrossRestarts(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 7))
	for round := range 60 {
		span := int64(1 + rng.IntN(500))
		slack := int64(rng.IntN(30))
		n := 3000
		keys := make([]uint64, n)
		recv := make([]int64, n)
		appendAt := make([]int64, n)
		var clock int64
		for i := range keys {
			keys[i] = 1 + uint64(rng.IntN(1+round*20))
			if round%3 == 2 {
				// Colliding homes: keys that probe from the same few table slots, so
				// probing, wrap-around and backward shifts all run.
				keys[i] = keys[i]<<40 | uint64(rng.IntN(3))
			}
			clock += int64(rng.IntN(4))
			appendAt[i] = clock
			recv[i] = clock - rng.Int64N(slack+1) // held up to slack before the append
		}
		restarts := map[int]bool{}
		for range rng.IntN(4) {
			restarts[rng.IntN(n)] = true
		}
		w := NewWindow(span, slack)
		for o := range n {
			if restarts[o] && o > 0 {
				w = NewWindow(span, slack)
				from := ReplayFrom(appendAt[o-1], span, slack)
				for p := 0; p < o; p++ {
					if appendAt[p] >= from {
						w.Observe(keys[p], recv[p])
					}
				}
			}
			got := w.Observe(keys[o], recv[o])
			if want := naiveRepeat(keys, recv, o, span); got != want {
				t.Fatalf("round %d (span %d, slack %d, restarts %v) offset %d key %d: repeat %v, want %v", round, span, slack, restarts, o, keys[o], got, want)
			}
		}
		if w.Len() > 1+round*20*3 {
			t.Fatalf("round %d: %d keys held, more than exist", round, w.Len())
		}
	}
}

// TestWindowForgetsAfterSpan checks memory is bounded by time: keys older than span + slack
// behind the newest receive time are dropped.
func TestWindowForgetsAfterSpan(t *testing.T) {
	w := NewWindow(100, 10)
	for i := range 100_000 {
		w.Observe(uint64(i)+1, int64(i))
	}
	if got := w.Len(); got > 111 {
		t.Fatalf("holds %d keys after a stream of distinct keys, want at most span+slack+1 = 111", got)
	}
	if !w.Observe(99_999+1, 99_999+50) {
		t.Fatal("a repeat within the span was not recognised")
	}
	if w.Observe(50_000, 100_100) {
		t.Fatal("a key received long before the span was still remembered")
	}
}

func BenchmarkWindowObserve(b *testing.B) {
	// 10,000 events a second over a one-minute span: 600,000 keys held.
	w := NewWindow(int64(time.Minute/time.Microsecond), int64(5*time.Second/time.Microsecond))
	rng := rand.New(rand.NewPCG(1, 2))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		h := rng.Uint64()
		if i%10 == 0 && i > 0 {
			h = uint64(i - 5) // one in ten a repeat of a recent key
		}
		w.Observe(h, int64(i)*100)
	}
}

// BenchmarkWindowBytesPerKey reports the heap a Window holds per key it remembers.
func BenchmarkWindowBytesPerKey(b *testing.B) {
	const keys = 1 << 20
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		w := NewWindow(int64(time.Hour/time.Microsecond), 0)
		for i := range keys {
			w.Observe(uint64(i)*0x9E3779B97F4A7C15+1, int64(i))
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/keys, "B/key")
		runtime.KeepAlive(w)
	}
}

// TestWindowModel checks Window against a Go map of each key's latest receive time (the rule
// needs nothing else), with Prefetch calls in between, over long random streams: bursts that
// grow the table and quiet spells that empty it, receive times out of order by up to slack,
// gaps wider than a chunk's 32-bit offsets, the hash 0, keys whose homes collide, and FIFO
// positions whose low 32 bits wrap.
func TestWindowModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 11))
	const minute = int64(time.Minute / time.Microsecond)
	for round := range 24 {
		span := 1 + rng.Int64N(3*minute)
		if round%4 == 3 {
			span = 1 + rng.Int64N(200)
		}
		slack := rng.Int64N(span/4 + 1)
		first := int64(0)
		if round%2 == 1 {
			// Start just before a wrap of the positions' low 32 bits.
			first = 1<<32 - int64(rng.IntN(5000)) + int64(rng.IntN(3))<<32
		}
		w := newWindowAt(span, slack, first)
		latest := map[uint64]int64{}
		universe := 1 + rng.IntN(50_000)
		var clock int64
		for o := range 60_000 {
			switch r := rng.IntN(1000); {
			case r == 0:
				clock += 40 * minute // wider than a chunk's ±35 minutes of offsets
			case r < 5:
				clock += span + slack + 1 // everything held expires
			case r < 400:
				clock += rng.Int64N(span/50 + 1)
			}
			recv := clock - rng.Int64N(slack+1)
			h := uint64(rng.IntN(universe))
			switch round % 3 {
			case 1:
				h = h<<44 | uint64(rng.IntN(4)) // homes collide
			case 2:
				h *= 0x9E3779B97F4A7C15
			}
			key := h
			if key == 0 {
				key = 1 // Observe's documented alias
			}
			prev, seen := latest[key]
			want := seen && recv-prev <= span
			if o%7 == 0 {
				// Prefetch reads only: it must not change a decision or fail anywhere.
				w.Prefetch([]uint64{h, 0, h ^ 1, uint64(rng.IntN(universe))})
			}
			if got := w.Observe(h, recv); got != want {
				t.Fatalf("round %d (span %d, slack %d, first %d) event %d key %#x recv %d (latest %d, seen %v): repeat %v, want %v",
					round, span, slack, first, o, h, recv, prev, seen, got, want)
			}
			if !seen || recv > prev {
				latest[key] = recv
			}
			if w.Len() > len(latest) {
				t.Fatalf("round %d event %d: %d keys held, %d exist", round, o, w.Len(), len(latest))
			}
		}
	}
}

// TestWindowAcrossPositionWrap checks every key stays found when the FIFO's positions pass the
// one whose low 32 bits the table cannot store.
func TestWindowAcrossPositionWrap(t *testing.T) {
	for first := int64(1<<32 - 4); first <= 1<<32; first++ {
		w := newWindowAt(1000, 0, first)
		for k := uint64(1); k <= 8; k++ {
			if w.Observe(k, int64(k)) {
				t.Fatalf("first %d: new key %d called a repeat", first, k)
			}
		}
		for k := uint64(1); k <= 8; k++ {
			if !w.Observe(k, 10) {
				t.Fatalf("first %d: key %d not found again", first, k)
			}
		}
	}
}

// BenchmarkWindowObserveBatch is BenchmarkWindowObserve fed in batches, with and without
// Prefetch, at the size of a busy partition (a million keys held).
func BenchmarkWindowObserveBatch(b *testing.B) {
	for _, prefetch := range []bool{false, true} {
		b.Run(fmt.Sprintf("prefetch=%v", prefetch), func(b *testing.B) {
			w := NewWindow(int64(time.Hour/time.Microsecond), int64(5*time.Second/time.Microsecond))
			rng := rand.New(rand.NewPCG(1, 2))
			for i := range 1 << 20 {
				w.Observe(rng.Uint64(), int64(i))
			}
			var hs [64]uint64
			i := 1 << 20
			b.ReportAllocs()
			for b.Loop() {
				for j := range hs {
					hs[j] = rng.Uint64()
					if j%10 == 0 {
						hs[j] = uint64(i - 5)
					}
				}
				if prefetch {
					w.Prefetch(hs[:])
				}
				for _, h := range hs {
					w.Observe(h, int64(i))
					i++
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(hs)), "ns/event")
		})
	}
}
