package catalog

import (
	"context"
	"sync"
	"testing"
)

// TestClaimPartitions: every claim of a partition gets a higher epoch than every earlier one,
// also when several processes claim the same partitions at once (first claims included).
func TestClaimPartitions(t *testing.T) {
	forEachBackend(t, func(t *testing.T, o Options) {
		ctx := context.Background()
		c, err := Open(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		const claimers, rounds = 4, 5
		var mu sync.Mutex
		seen := map[int32]map[uint64]bool{}
		var wg sync.WaitGroup
		for range claimers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range rounds {
					var got map[int32]uint64
					var err error
					for try := 0; try < 20; try++ { // a first claim may lose the insert race
						if got, err = c.ClaimPartitions(ctx, "g", []int32{2, 0, 1}); err == nil {
							break
						}
					}
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					for p, e := range got {
						if seen[p] == nil {
							seen[p] = map[uint64]bool{}
						}
						if seen[p][e] {
							t.Errorf("partition %d: epoch %d given twice", p, e)
						}
						seen[p][e] = true
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		for p := range int32(3) {
			if len(seen[p]) != claimers*rounds {
				t.Errorf("partition %d: %d distinct epochs, want %d", p, len(seen[p]), claimers*rounds)
			}
		}
		other, err := c.ClaimPartitions(ctx, "other", []int32{0})
		if err != nil || other[0] != 1 {
			t.Fatalf("another group's first claim: %v %v, want epoch 1", other, err)
		}
	})
}
