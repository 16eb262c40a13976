package bench

import (
	"math"
	"slices"
	"testing"
	"time"
)

// TestRSSSlope checks the soak's bytes-per-click fit: the warmup intervals (start-up
// allocations) are left out, and intervals without an RSS reading (--target mode) too.
func TestRSSSlope(t *testing.T) {
	var ivs []SoakInterval
	rss := int64(500 << 20)
	for i := 1; i <= 30; i++ {
		iv := SoakInterval{At: float64(i * 10), OK: 100_000}
		switch {
		case i <= 6:
			rss += 50 << 20 // the first minute: caches filling, not per click
		default:
			rss += 100_000 * 120 // 120 bytes per click after it
		}
		iv.RSS = rss
		if i == 15 {
			iv.RSS = 0 // a reading that failed
		}
		ivs = append(ivs, iv)
	}
	if got := rssSlope(ivs, time.Minute); math.Abs(got-120) > 0.01 {
		t.Fatalf("slope %.3f bytes per click, want 120", got)
	}
	flat := slices.Clone(ivs)
	for i := 15; i < len(flat); i++ {
		flat[i].RSS = flat[14].RSS + int64(i%2)<<20 // the windows full: RSS only wobbles
	}
	if got := rssSlope(flat[len(flat)/2:], 0); math.Abs(got) > 5 {
		t.Fatalf("slope once flat: %.3f bytes per click, want about 0", got)
	}
	if got := rssSlope(ivs[:7], time.Minute); got != 0 {
		t.Fatalf("slope from one interval after the warmup: %.3f, want 0 (too little to fit)", got)
	}
}
