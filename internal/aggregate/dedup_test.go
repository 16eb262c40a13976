package aggregate

import (
	"math/rand/v2"
	"testing"
)

// naiveDup is the duplicate rule written plainly: the latest earlier event with the same
// key among the previous size offsets, received no more than lateness before.
func naiveDup(keys []uint64, recv []int64, o, size int, lateness int64) bool {
	for p := o - 1; p >= 0 && p >= o-size; p-- {
		if keys[p] == keys[o] && keys[o] != 0 {
			return recv[o]-recv[p] <= lateness
		}
	}
	return false
}

func TestDedupWindowMatchesRuleAndReplays(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 3))
	for round := range 50 {
		size := 1 + rng.IntN(40)
		lateness := int64(1 + rng.IntN(100))
		n := 2000
		keys := make([]uint64, n)
		recv := make([]int64, n)
		var clock int64
		for i := range keys {
			if rng.IntN(10) > 0 {
				keys[i] = uint64(1 + rng.IntN(60)) // 0 means "no key"
				if round%2 == 1 {
					// Colliding homes: every key probes from the same table slot, or its
					// neighbour, so probing, wrap-around and backward shifts all run.
					keys[i] = keys[i]<<32 | uint64(rng.IntN(2))*w0mask(size)
				}
			}
			clock += int64(rng.IntN(10))
			recv[i] = clock - int64(rng.IntN(15)) // slightly out of order
		}
		w := newDedupWindow(size, lateness)
		restartAt := rng.IntN(n)
		for o := range n {
			if o == restartAt {
				// Restart: rebuild from the log tail only.
				w = newDedupWindow(size, lateness)
				for p := max(0, o-size); p < o; p++ {
					w.observe(int64(p), keys[p], recv[p], keys[p] != 0)
				}
			}
			got := w.observe(int64(o), keys[o], recv[o], keys[o] != 0)
			if want := naiveDup(keys, recv, o, size, lateness); got != want {
				t.Fatalf("round %d (size %d, lateness %d, restart at %d) offset %d: dup %v, want %v", round, size, lateness, restartAt, o, got, want)
			}
			if w.len() > size {
				t.Fatalf("window holds %d keys, more than its size %d", w.len(), size)
			}
		}
	}
}

// w0mask is the table mask of a window of size: the last slot, to exercise wrap-around.
func w0mask(size int) uint64 { return newDedupWindow(size, 0).mask }
