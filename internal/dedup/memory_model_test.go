package dedup

import (
	"bytes"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"
	"unsafe"
)

// TestMemoryModel checks Memory against a Go map of key -> (expiry minute, in flight) over
// random reservations, commits, releases, restores, sweeps and snapshot round trips, with
// receive times out of order, enough keys to grow the shards' tables many times, and few
// enough distinct keys that they repeat, expire and come back.
func TestMemoryModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 13))
	type state struct {
		exp      uint32
		inFlight bool
	}
	const window = 10 * time.Minute
	base := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	for round := range 4 {
		m := NewMemory(window)
		model := map[string]state{}
		universe := 1 + rng.IntN(40_000)
		clock := base
		expiry := func(at time.Time) uint32 { return uint32(at.Add(window).Unix()/60) + 1 }
		for op := range 20_000 {
			clock = clock.Add(time.Duration(rng.IntN(400)) * time.Millisecond)
			now := clock.Add(-time.Duration(rng.IntN(120)) * time.Second) // out of order
			nowMin := uint32(now.Unix() / 60)
			keys := make([]string, 1+rng.IntN(20))
			seen := map[string]bool{}
			for i := range keys {
				for {
					keys[i] = "k" + strconv.Itoa(rng.IntN(universe))
					if !seen[keys[i]] {
						break
					}
				}
				seen[keys[i]] = true
			}
			switch r := rng.IntN(100); {
			case r < 50:
				out := make([]Status, len(keys))
				_ = m.Reserve(t.Context(), keys, now, out)
				for i, k := range keys {
					s, ok := model[k]
					want := Reserved
					switch {
					case ok && s.exp > nowMin && s.inFlight:
						want = InFlight
					case ok && s.exp > nowMin:
						want = Duplicate
					default:
						model[k] = state{expiry(now), true}
					}
					if out[i] != want {
						t.Fatalf("round %d op %d: Reserve %q at %v: %v, want %v (model %+v)", round, op, k, now, out[i], want, s)
					}
				}
			case r < 75:
				_ = m.Commit(t.Context(), keys, now)
				for _, k := range keys {
					if s, ok := model[k]; ok {
						s.inFlight = false
						model[k] = s
					}
				}
			case r < 85:
				_ = m.Release(t.Context(), keys)
				for _, k := range keys {
					if s, ok := model[k]; ok && s.inFlight {
						delete(model, k)
					}
				}
			case r < 95:
				for _, k := range keys {
					m.Restore(k, now)
					s := model[k]
					model[k] = state{expiry(now), s.inFlight}
				}
			case r < 99:
				removed := m.Sweep(now)
				want := 0
				for k, s := range model {
					if !s.inFlight && s.exp <= nowMin {
						delete(model, k)
						want++
					}
				}
				if removed != want {
					t.Fatalf("round %d op %d: Sweep removed %d, want %d", round, op, removed, want)
				}
			default:
				// A snapshot round trip: only committed keys whose window has not ended
				// survive, as after a restart from a snapshot.
				var buf bytes.Buffer
				if _, err := m.WriteKeys(&buf, now); err != nil {
					t.Fatal(err)
				}
				m = NewMemory(window)
				if _, err := m.ReadKeys(&buf, now); err != nil {
					t.Fatal(err)
				}
				for k, s := range model {
					if s.inFlight || s.exp <= nowMin {
						delete(model, k)
					}
				}
			}
			if m.Len() != int64(len(model)) {
				t.Fatalf("round %d op %d: Len %d, model holds %d", round, op, m.Len(), len(model))
			}
		}
	}
}

// TestMemorySlotSize keeps a table slot at 16 bytes: the store's bytes per key are 16 over the
// tables' load, and a field that pads the slot costs half as much again.
func TestMemorySlotSize(t *testing.T) {
	if n := unsafe.Sizeof(memSlot{}); n != 16 {
		t.Fatalf("memSlot is %d bytes, want 16", n)
	}
}
