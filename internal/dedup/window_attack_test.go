package dedup

import (
	"math/rand/v2"
	"testing"
	"time"
)

// TestWindowMatchesReference feeds Window and the reference Window of before the compact
// FIFO (16-byte slots, 64-bit positions, no offsets) the same streams and requires the same
// decision for every event and the same key count, including on streams outside Window's
// contract, where the rule no longer holds but the two must still agree: receive times a day
// or 90 days apart, one receive time far newer or older than the rest, negative and zero
// times, time going backwards by more than slack, hashes that share a home slot, the hash 0,
// and FIFO positions whose low 32 bits wrap.
func TestWindowMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 17))
	const (
		minute = int64(time.Minute / time.Microsecond)
		day    = 24 * 60 * minute
	)
	spans := []int64{1, 200, minute, day, 90 * day}
	for round := range 24 {
		span := spans[rng.IntN(len(spans))]
		slack := rng.Int64N(span/4 + 1)
		first := int64(0)
		if round%2 == 1 {
			first = 1<<32 - int64(rng.IntN(3000)) + int64(rng.IntN(4))<<32
		}
		got, ref := newWindowAt(span, slack, first), newRefWindow(span, slack)
		universe := 1 + rng.IntN(20_000)
		var clock int64
		switch round % 4 {
		case 1:
			clock = -90 * day // negative times (before maxRecv's starting 0)
		case 2:
			clock = -int64(rng.IntN(1000)) // crossing zero
		}
		for o := range 20_000 {
			recv := clock
			switch r := rng.IntN(1000); {
			case r < 2:
				recv = clock + 90*day // one far newer (evicts all) ...
			case r < 4:
				recv = clock - 90*day // ... or far older than the rest
			case r < 6:
				recv = 0
			case r < 8:
				clock += day
			case r < 10:
				clock += 40 * minute // wider than a chunk's 32-bit offsets
			case r < 12:
				clock -= span + 2*slack + 1 // time going backwards past slack
			case r < 500:
				clock += rng.Int64N(span/20 + 2)
			default:
				recv = clock - rng.Int64N(slack+1)
			}
			h := uint64(rng.IntN(universe))
			switch round % 3 {
			case 1:
				h = h<<40 | uint64(rng.IntN(3)) // homes collide at every table size
			case 2:
				h *= 0x9E3779B97F4A7C15
			}
			g, w := got.Observe(h, recv), ref.Observe(h, recv)
			if g != w {
				t.Fatalf("round %d (span %d, slack %d, first %d) event %d key %#x recv %d: repeat %v, reference %v",
					round, span, slack, first, o, h, recv, g, w)
			}
			if got.Len() != ref.Len() {
				t.Fatalf("round %d event %d: %d keys held, reference %d", round, o, got.Len(), ref.Len())
			}
		}
	}
}

// TestWindowExtremeTimes checks the chunk offsets on receive times near the ends of int64
// (one chunk holding both, so the offset from its first time overflows) and on times that
// straddle a chunk's ±2^31 micros exactly.
func TestWindowExtremeTimes(t *testing.T) {
	const big = int64(1) << 61
	cases := [][]int64{
		{-big, big, -big, big},
		{0, 1<<31 - 1, 1 << 31, -1 << 31, -1<<31 - 1, 0, 1 << 31},
		{5, 5 + 1<<31, 5 - 1<<31, 5 + 1<<31},
	}
	for ci, times := range cases {
		for _, span := range []int64{1, 1 << 31, 1 << 62} {
			got, ref := NewWindow(span, 0), newRefWindow(span, 0)
			for i, recv := range times {
				for k := uint64(1); k <= 3; k++ {
					g, w := got.Observe(k, recv), ref.Observe(k, recv)
					if g != w {
						t.Fatalf("case %d span %d event %d key %d recv %d: repeat %v, reference %v", ci, span, i, k, recv, g, w)
					}
				}
			}
		}
	}
}
