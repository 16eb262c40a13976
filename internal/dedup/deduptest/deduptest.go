// Package deduptest is the conformance suite every dedup.Store implementation passes.
package deduptest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/dedup"
)

// Factory returns a fresh, empty store with the given window.
type Factory func(t *testing.T, window time.Duration) dedup.Store

// Run runs the suite.
func Run(t *testing.T, newStore Factory) {
	ctx := context.Background()
	base := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	one := func(t *testing.T, s dedup.Store, key string, now time.Time) dedup.Status {
		t.Helper()
		out := make([]dedup.Status, 1)
		if err := s.Reserve(ctx, []string{key}, now, out); err != nil {
			t.Fatal(err)
		}
		return out[0]
	}
	uniq := func(t *testing.T, k string) string {
		return t.Name() + "/" + k + "/" + fmt.Sprint(time.Now().UnixNano())
	}

	t.Run("Lifecycle", func(t *testing.T) {
		s := newStore(t, time.Hour)
		k := uniq(t, "k")
		want := func(st, w dedup.Status) {
			t.Helper()
			if st != w {
				t.Fatalf("got %v, want %v", st, w)
			}
		}
		want(one(t, s, k, base), dedup.Reserved)
		want(one(t, s, k, base), dedup.InFlight)
		if err := s.Release(ctx, []string{k}); err != nil {
			t.Fatal(err)
		}
		want(one(t, s, k, base), dedup.Reserved)
		if err := s.Commit(ctx, []string{k}, base); err != nil {
			t.Fatal(err)
		}
		want(one(t, s, k, base.Add(59*time.Minute)), dedup.Duplicate)
		// Releasing a committed key must not free it: only the owner of a reservation may.
		if err := s.Release(ctx, []string{k}); err != nil {
			t.Fatal(err)
		}
		want(one(t, s, k, base), dedup.Duplicate)
	})

	t.Run("Batch", func(t *testing.T) {
		s := newStore(t, time.Hour)
		a, b := uniq(t, "a"), uniq(t, "b")
		one(t, s, a, base)
		if err := s.Commit(ctx, []string{a}, base); err != nil {
			t.Fatal(err)
		}
		out := make([]dedup.Status, 2)
		if err := s.Reserve(ctx, []string{a, b}, base, out); err != nil {
			t.Fatal(err)
		}
		if out[0] != dedup.Duplicate || out[1] != dedup.Reserved {
			t.Fatalf("got %v", out)
		}
	})

	t.Run("WindowExpires", func(t *testing.T) {
		s := newStore(t, time.Hour)
		k := uniq(t, "k")
		one(t, s, k, base)
		if err := s.Commit(ctx, []string{k}, base); err != nil {
			t.Fatal(err)
		}
		if st := one(t, s, k, base.Add(2*time.Hour+time.Minute)); st != dedup.Reserved {
			t.Fatalf("after the window: got %v, want reserved", st)
		}
	})

	t.Run("ConcurrentReserveHasOneOwner", func(t *testing.T) {
		s := newStore(t, time.Hour)
		const keys, racers = 50, 8
		var owners [keys]atomic.Int32
		var wg sync.WaitGroup
		for r := 0; r < racers; r++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				batch := make([]string, keys)
				for i := range batch {
					batch[i] = fmt.Sprintf("%s/race/%d", t.Name(), i)
				}
				out := make([]dedup.Status, keys)
				if err := s.Reserve(ctx, batch, base, out); err != nil {
					t.Error(err)
					return
				}
				for i, st := range out {
					if st == dedup.Reserved {
						owners[i].Add(1)
					}
				}
			}()
		}
		wg.Wait()
		for i := range owners {
			if n := owners[i].Load(); n != 1 {
				t.Fatalf("key %d has %d owners", i, n)
			}
		}
	})
}
