package dedup

import (
	"bytes"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestMemoryMatchesReference feeds Memory and the reference Memory of before the compact
// tables (Go maps of 128-bit fingerprints) the same operations and requires the same statuses,
// sweep counts and key counts: batches holding a key twice, Release of keys reserved twice or
// already committed, Restore of expired keys, receive times out of order, far in the past
// (before 1970, the zero time) or future, and windows of a minute to 90 days.
func TestMemoryMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 19))
	windows := []time.Duration{time.Minute, 10 * time.Minute, 24 * time.Hour, 90 * 24 * time.Hour}
	bases := []time.Time{
		time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC),
		time.Date(1950, 1, 1, 0, 0, 0, 0, time.UTC), // negative Unix minutes
		{}, // the zero time
		time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	for round := range 8 {
		window := windows[rng.IntN(len(windows))]
		base := bases[round%len(bases)]
		got, ref := NewMemory(window), newRefMemory(window)
		universe := 1 + rng.IntN(20_000)
		clock := base
		for op := range 6000 {
			clock = clock.Add(time.Duration(rng.IntN(int(window/time.Millisecond)/50+1)) * time.Millisecond)
			now := clock.Add(-time.Duration(rng.Int64N(int64(window)/4 + 1)))
			switch rng.IntN(200) {
			case 0:
				now = now.Add(-window * 3) // far older than the rest
			case 1:
				now = now.Add(window * 3) // far newer
			}
			keys := make([]string, 1+rng.IntN(20))
			for i := range keys {
				keys[i] = "k" + strconv.Itoa(rng.IntN(universe))
			}
			switch r := rng.IntN(100); {
			case r < 45:
				out, want := make([]Status, len(keys)), make([]Status, len(keys))
				_ = got.Reserve(t.Context(), keys, now, out)
				_ = ref.Reserve(t.Context(), keys, now, want)
				for i := range keys {
					if out[i] != want[i] {
						t.Fatalf("round %d op %d: Reserve %q (index %d of %q) at %v: %v, reference %v", round, op, keys[i], i, keys, now, out[i], want[i])
					}
				}
			case r < 70:
				_ = got.Commit(t.Context(), keys, now)
				_ = ref.Commit(t.Context(), keys, now)
			case r < 82:
				_ = got.Release(t.Context(), keys)
				_ = ref.Release(t.Context(), keys)
			case r < 94:
				for _, k := range keys {
					got.Restore(k, now)
					ref.Restore(k, now)
				}
			case r < 99:
				if g, w := got.Sweep(now), ref.Sweep(now); g != w {
					t.Fatalf("round %d op %d: Sweep at %v removed %d, reference %d", round, op, now, g, w)
				}
			default:
				var buf bytes.Buffer
				if _, err := got.WriteKeys(&buf, now); err != nil {
					t.Fatal(err)
				}
				got = NewMemory(window)
				if _, err := got.ReadKeys(&buf, now); err != nil {
					t.Fatal(err)
				}
				ref = refSnapshotRoundTrip(ref, now)
			}
			if got.Len() != ref.Len() {
				t.Fatalf("round %d op %d: Len %d, reference %d", round, op, got.Len(), ref.Len())
			}
		}
	}
}

// refSnapshotRoundTrip is what a key snapshot written at now and read back at now keeps of
// the reference store: committed keys whose window has not ended.
func refSnapshotRoundTrip(ref *refMemory, now time.Time) *refMemory {
	nowMin := uint32(now.Unix() / 60)
	out := newRefMemory(ref.window)
	var n int64
	for i := range ref.shards {
		for fp, exp := range ref.shards[i].m {
			if _, inFlight := ref.shards[i].pending[fp]; inFlight || exp <= nowMin {
				continue
			}
			out.shards[i].m[fp] = exp
			n++
		}
	}
	out.keys.Add(n)
	return out
}

// TestMemoryReleaseOfKeyReservedTwice: a key reserved, asked again (in flight) and released
// is free; a second Release, and a Release after Commit, change nothing.
func TestMemoryReleaseOfKeyReservedTwice(t *testing.T) {
	ctx := t.Context()
	now := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	m := NewMemory(10 * time.Minute)
	out := make([]Status, 2)
	_ = m.Reserve(ctx, []string{"a", "a"}, now, out)
	if out[0] != Reserved || out[1] != InFlight {
		t.Fatalf("one batch holding a key twice: %v, want [reserved in_flight]", out)
	}
	_ = m.Reserve(ctx, []string{"a"}, now, out[:1])
	if out[0] != InFlight {
		t.Fatalf("reserved again: %v, want in_flight", out[0])
	}
	_ = m.Release(ctx, []string{"a"})
	_ = m.Release(ctx, []string{"a"})
	if m.Len() != 0 {
		t.Fatalf("Len %d after Release, want 0", m.Len())
	}
	_ = m.Reserve(ctx, []string{"a"}, now, out[:1])
	if out[0] != Reserved {
		t.Fatalf("after Release: %v, want reserved", out[0])
	}
	_ = m.Commit(ctx, []string{"a"}, now)
	_ = m.Release(ctx, []string{"a"})
	_ = m.Reserve(ctx, []string{"a"}, now, out[:1])
	if out[0] != Duplicate || m.Len() != 1 {
		t.Fatalf("Release after Commit: %v with %d keys, want duplicate with 1", out[0], m.Len())
	}
}

// TestMemoryRestoreOfExpiredKey: a key restored with a receive time whose window has ended is
// free to reserve, swept, and left out of a snapshot.
func TestMemoryRestoreOfExpiredKey(t *testing.T) {
	now := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	m := NewMemory(10 * time.Minute)
	m.Restore("old", now.Add(-11*time.Minute))
	m.Restore("live", now.Add(-9*time.Minute))
	var buf bytes.Buffer
	if n, err := m.WriteKeys(&buf, now); err != nil || n != 1 {
		t.Fatalf("WriteKeys: %d keys, %v; want 1", n, err)
	}
	if n := m.Sweep(now); n != 1 {
		t.Fatalf("Sweep removed %d, want 1 (the expired key)", n)
	}
	out := make([]Status, 2)
	_ = m.Reserve(t.Context(), []string{"old", "live"}, now, out)
	if out[0] != Reserved || out[1] != Duplicate {
		t.Fatalf("Reserve [old live]: %v, want [reserved duplicate]", out)
	}
}

// TestMemoryShardModel drives one shard's table directly with keys crafted to share home
// slots (the high bits of the first word equal or nearly so, some at the table's last slot so
// runs wrap to slot 0, and the zero key), through puts that grow the table, deletes that shift
// entries back, and sweeps, checking it against a map and its Robin Hood invariants after
// every operation.
func TestMemoryShardModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 23))
	for round := range 30 {
		var s memShard
		model := map[memKey]uint32{}
		keyOf := func() memKey {
			var lo uint64
			switch rng.IntN(4) {
			case 0:
				lo = math.MaxUint64 - uint64(rng.IntN(64)) // homes at the last slot
			case 1:
				lo = uint64(rng.IntN(3))<<62 | uint64(rng.IntN(8)) // a few homes
			case 2:
				lo = uint64(rng.IntN(8)) // home 0, and the zero key
			default:
				lo = rng.Uint64() >> uint(rng.IntN(64))
			}
			return fingerprint{lo, uint64(rng.IntN(3)) << 32}.key()
		}
		for op := range 3000 {
			switch r := rng.IntN(100); {
			case r < 55:
				k, exp := keyOf(), uint32(rng.IntN(100))
				_, had := model[k]
				if isNew := s.put(k, exp); isNew == had {
					t.Fatalf("round %d op %d: put %v new %v, model held it %v", round, op, k, isNew, had)
				}
				model[k] = exp
			case r < 90:
				k := keyOf()
				s.delete(k)
				delete(model, k)
			default:
				limit := uint32(rng.IntN(100))
				removed := s.sweep(func(e memSlot) bool { return e.exp < limit })
				want := 0
				for k, exp := range model {
					if exp < limit {
						delete(model, k)
						want++
					}
				}
				if removed != want {
					t.Fatalf("round %d op %d: sweep removed %d, want %d", round, op, removed, want)
				}
			}
			checkShard(t, &s, model)
		}
	}
}

// checkShard checks s holds exactly model, that used counts its entries, that the table keeps
// an empty slot, and Robin Hood order: along a run, an entry is never nearer its home than
// the entry before it is less one (dist grows by at most one per slot).
func checkShard(t *testing.T, s *memShard, model map[memKey]uint32) {
	t.Helper()
	n := 0
	empty := false
	for i, e := range s.slots {
		if e.key() == (memKey{}) {
			empty = true
			continue
		}
		n++
		if exp, ok := model[e.key()]; !ok || exp != e.exp {
			t.Fatalf("slot %d holds %v exp %d; model: %d, %v", i, e.key(), e.exp, exp, ok)
		}
		prev := i - 1
		if prev < 0 {
			prev = len(s.slots) - 1
		}
		d := s.dist(i, s.home(e.key()))
		if p := s.slots[prev]; p.key() == (memKey{}) {
			if d != 0 {
				t.Fatalf("slot %d: entry %d from home after an empty slot", i, d)
			}
		} else if pd := s.dist(prev, s.home(p.key())); d > pd+1 {
			t.Fatalf("slot %d: entry %d from home after one %d from home (not Robin Hood order)", i, d, pd)
		}
	}
	if n != s.used || n != len(model) {
		t.Fatalf("%d entries, used %d, model %d", n, s.used, len(model))
	}
	if len(s.slots) > 0 && !empty {
		t.Fatalf("no empty slot in %d", len(s.slots))
	}
	for k, exp := range model {
		if got, ok := s.lookup(k); !ok || got != exp {
			t.Fatalf("lookup %v: %d, %v; want %d", k, got, ok, exp)
		}
	}
}

// TestMemoryZeroKeySnapshot: the fingerprint whose kept bits are all zero (folded into the
// one with hi 1 so it does not read as an empty slot) is held, written to a snapshot and read
// back like any other.
func TestMemoryZeroKeySnapshot(t *testing.T) {
	now := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	m := NewMemory(10 * time.Minute)
	exp := m.expiry(now)
	for _, fp := range []fingerprint{{0, 0}, {0, 1<<32 - 1}, {256, 0}} {
		s := m.shard(fp)
		if s.put(fp.key(), exp) {
			m.keys.Add(1)
		}
	}
	if m.Len() != 2 {
		t.Fatalf("Len %d, want 2 ({0,0} and {0,2^32-1} are one key)", m.Len())
	}
	var buf bytes.Buffer
	if n, err := m.WriteKeys(&buf, now); err != nil || n != 2 {
		t.Fatalf("WriteKeys: %d, %v; want 2", n, err)
	}
	back := NewMemory(10 * time.Minute)
	if n, err := back.ReadKeys(&buf, now); err != nil || n != 2 {
		t.Fatalf("ReadKeys: %d, %v; want 2", n, err)
	}
	for _, fp := range []fingerprint{{0, 0}, {256, 0}} {
		if e, ok := back.shard(fp).lookup(fp.key()); !ok || e != exp {
			t.Fatalf("key %v after the round trip: exp %d, %v; want %d", fp, e, ok, exp)
		}
	}
}

// TestMemorySweepRacesReserve runs Sweep alongside Reserve, Commit and Release (run it with
// -race), then checks every shard: Len counts the entries, and every key in flight is still
// in its table (Sweep never drops one).
func TestMemorySweepRacesReserve(t *testing.T) {
	seed := testSeed(t)
	base := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	m := NewMemory(time.Minute)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(g)))
			out := make([]Status, 16)
			for op := range 3000 {
				now := base.Add(time.Duration(op) * 100 * time.Millisecond)
				keys := make([]string, 1+rng.IntN(16))
				for i := range keys {
					keys[i] = "k" + strconv.Itoa(rng.IntN(5000))
				}
				_ = m.Reserve(t.Context(), keys, now, out[:len(keys)])
				var mine []string
				for i, k := range keys {
					if out[i] == Reserved {
						mine = append(mine, k)
					}
				}
				if rng.IntN(4) == 0 {
					_ = m.Release(t.Context(), mine)
				} else {
					_ = m.Commit(t.Context(), mine, now)
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 200 {
			m.Sweep(base.Add(time.Duration(i) * 2 * time.Second))
		}
	}()
	wg.Wait()
	var held int64
	for i := range m.shards {
		s := &m.shards[i]
		for _, e := range s.slots {
			if e.key() != (memKey{}) {
				held++
			}
		}
		if len(s.pending) != 0 {
			t.Fatalf("shard %d: %d keys in flight after every batch settled", i, len(s.pending))
		}
	}
	if held != m.Len() {
		t.Fatalf("Len %d, tables hold %d", m.Len(), held)
	}
}

// TestMemoryGrowthDuringBatch reserves batches of thousands of keys into a new store, so each
// shard's table grows several times within one batch, with keys repeated inside the batch
// and across batches, and requires the reference store's statuses.
func TestMemoryGrowthDuringBatch(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 29))
	now := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	got, ref := NewMemory(time.Hour), newRefMemory(time.Hour)
	for round := range 6 {
		keys := make([]string, 1000+rng.IntN(20_000))
		for i := range keys {
			keys[i] = "g" + strconv.Itoa(rng.IntN(3*len(keys)))
		}
		out, want := make([]Status, len(keys)), make([]Status, len(keys))
		_ = got.Reserve(t.Context(), keys, now, out)
		_ = ref.Reserve(t.Context(), keys, now, want)
		for i := range keys {
			if out[i] != want[i] {
				t.Fatalf("round %d: key %d (%q) of %d: %v, reference %v", round, i, keys[i], len(keys), out[i], want[i])
			}
		}
		if round%2 == 0 {
			_ = got.Commit(t.Context(), keys, now)
			_ = ref.Commit(t.Context(), keys, now)
		} else {
			_ = got.Release(t.Context(), keys[:len(keys)/2])
			_ = ref.Release(t.Context(), keys[:len(keys)/2])
		}
		if got.Len() != ref.Len() {
			t.Fatalf("round %d: Len %d, reference %d", round, got.Len(), ref.Len())
		}
	}
}
