package redisdedup

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/adpulse/adpulse/internal/dedup"
	"github.com/adpulse/adpulse/internal/dedup/deduptest"
)

const addrEnv = "ADPULSE_TEST_REDIS_ADDR"

// testClient returns a client of the test Redis, or skips the test if none is configured.
func testClient(t testing.TB) *redis.Client {
	t.Helper()
	addr := os.Getenv(addrEnv)
	if addr == "" {
		t.Skipf("no test Redis: set %s=host:port (e.g. 127.0.0.1:6379) to run the Redis tests", addrEnv)
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// testPrefix returns a key prefix no other test run uses, and deletes its keys when the test
// ends (unless it failed: then they are kept for a look, and expire by themselves).
func testPrefix(t testing.TB, rdb *redis.Client) string {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	prefix := "adpulse-test:dedup:" + hex.EncodeToString(b[:]) + ":"
	t.Logf("key prefix %s", prefix)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("keys kept under %s*", prefix)
			return
		}
		ctx := context.Background()
		iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		if err := iter.Err(); err != nil {
			t.Logf("clean-up scan: %v", err)
		}
		for len(keys) > 0 {
			n := min(len(keys), 1000)
			if err := rdb.Unlink(ctx, keys[:n]...).Err(); err != nil {
				t.Logf("clean-up: %v", err)
				return
			}
			keys = keys[n:]
		}
	})
	return prefix
}

func openStore(t testing.TB, o Options) *Store {
	t.Helper()
	s, err := Open(context.Background(), o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	rdb := testClient(t)
	deduptest.Run(t, func(t *testing.T, window time.Duration) dedup.Store {
		return openStore(t, Options{Client: rdb, Prefix: testPrefix(t, rdb), Window: window})
	})
}

// TestConformancePerKey runs the suite with one script call per key, as with a cluster client.
func TestConformancePerKey(t *testing.T) {
	rdb := testClient(t)
	deduptest.Run(t, func(t *testing.T, window time.Duration) dedup.Store {
		s := openStore(t, Options{Client: rdb, Prefix: testPrefix(t, rdb), Window: window})
		s.perKey = true
		return s
	})
}

// TestConformanceOwnClient runs the suite with stores that connect by address.
func TestConformanceOwnClient(t *testing.T) {
	rdb := testClient(t)
	deduptest.Run(t, func(t *testing.T, window time.Duration) dedup.Store {
		return openStore(t, Options{Addr: os.Getenv(addrEnv), Prefix: testPrefix(t, rdb), Window: window})
	})
}

var base = time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)

func reserve(t *testing.T, s *Store, now time.Time, keys ...string) []dedup.Status {
	t.Helper()
	out := make([]dedup.Status, len(keys))
	if err := s.Reserve(context.Background(), keys, now, out); err != nil {
		t.Fatalf("Reserve: %v", err)
	}
	return out
}

func want(t *testing.T, what string, got []dedup.Status, w ...dedup.Status) {
	t.Helper()
	for i := range w {
		if got[i] != w[i] {
			t.Fatalf("%s: got %v, want %v", what, got, w)
		}
	}
}

const shortTTL = 150 * time.Millisecond

// expire waits until reservations made before it with shortTTL have expired in Redis.
func expire() { time.Sleep(shortTTL + 100*time.Millisecond) }

// TestFencing: a reservation that expired and was taken by another process is not clobbered by
// its old owner's Commit or Release.
func TestFencing(t *testing.T) {
	for _, perKey := range []bool{false, true} {
		t.Run(fmt.Sprintf("perKey=%v", perKey), func(t *testing.T) {
			t.Parallel()
			testFencing(t, perKey)
		})
	}
}

func testFencing(t *testing.T, perKey bool) {
	rdb := testClient(t)
	prefix := testPrefix(t, rdb)
	ctx := context.Background()
	newStore := func() *Store {
		s := openStore(t, Options{Client: rdb, Prefix: prefix, Window: time.Hour, ReserveTTL: shortTTL})
		s.perKey = perKey
		return s
	}
	old, owner, other := newStore(), newStore(), newStore()

	t.Run("ReleaseByOldOwner", func(t *testing.T) {
		want(t, "old owner reserves", reserve(t, old, base, "r"), dedup.Reserved)
		expire()
		want(t, "new owner takes the expired key", reserve(t, owner, base, "r"), dedup.Reserved)
		if err := old.Release(ctx, []string{"r"}); err != nil {
			t.Fatal(err)
		}
		want(t, "after the old owner's Release", reserve(t, other, base, "r"), dedup.InFlight)
		if err := owner.Commit(ctx, []string{"r"}, base); err != nil {
			t.Fatal(err)
		}
		want(t, "after the new owner's Commit", reserve(t, other, base, "r"), dedup.Duplicate)
	})

	t.Run("CommitByOldOwner", func(t *testing.T) {
		want(t, "old owner reserves", reserve(t, old, base, "c"), dedup.Reserved)
		expire()
		want(t, "new owner takes the expired key", reserve(t, owner, base, "c"), dedup.Reserved)
		if err := old.Commit(ctx, []string{"c"}, base); err != nil {
			t.Fatal(err)
		}
		want(t, "after the old owner's Commit", reserve(t, other, base, "c"), dedup.InFlight)
		// The new owner's reservation is intact: its Release frees the key (the old owner's
		// event is then only deduplicated by the aggregator, as the package comment says).
		if err := owner.Release(ctx, []string{"c"}); err != nil {
			t.Fatal(err)
		}
		want(t, "after the new owner's Release", reserve(t, other, base, "c"), dedup.Reserved)
		if err := other.Release(ctx, []string{"c"}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("CommitAfterExpiryRecords", func(t *testing.T) {
		// Nobody took the expired key: the event is durable, so Commit records it.
		want(t, "reserve", reserve(t, old, base, "e"), dedup.Reserved)
		expire()
		before := old.Stats().CommittedLate
		if err := old.Commit(ctx, []string{"e"}, base); err != nil {
			t.Fatal(err)
		}
		want(t, "after a late Commit", reserve(t, other, base, "e"), dedup.Duplicate)
		if got := old.Stats().CommittedLate - before; got != 1 {
			t.Errorf("CommittedLate grew by %d, want 1", got)
		}
	})

	t.Run("ReleaseAfterCommitByNewOwner", func(t *testing.T) {
		want(t, "old owner reserves", reserve(t, old, base, "d"), dedup.Reserved)
		expire()
		want(t, "new owner takes the expired key", reserve(t, owner, base, "d"), dedup.Reserved)
		if err := owner.Commit(ctx, []string{"d"}, base); err != nil {
			t.Fatal(err)
		}
		if err := old.Release(ctx, []string{"d"}); err != nil {
			t.Fatal(err)
		}
		want(t, "a recorded key after the old owner's Release", reserve(t, other, base, "d"), dedup.Duplicate)
	})

	if f := old.Stats().Fenced; f != 2 {
		t.Errorf("old owner: %d fenced operations, want 2 (one Release, one Commit)", f)
	}
}

// TestHeldKeyIsInFlight: a Store answers InFlight for a key it holds, even after the key's
// reservation expired in Redis, so Commit and Release always act for the one owner.
func TestHeldKeyIsInFlight(t *testing.T) {
	rdb := testClient(t)
	s := openStore(t, Options{Client: rdb, Prefix: testPrefix(t, rdb), Window: time.Hour, ReserveTTL: shortTTL})
	want(t, "reserve", reserve(t, s, base, "k"), dedup.Reserved)
	expire()
	want(t, "again after the TTL, same store", reserve(t, s, base, "k"), dedup.InFlight)
	if err := s.Commit(context.Background(), []string{"k"}, base); err != nil {
		t.Fatal(err)
	}
	want(t, "after Commit", reserve(t, s, base, "k"), dedup.Duplicate)
	if st := s.Stats(); st.HeldNow != 0 {
		t.Errorf("%d reservations held after Commit", st.HeldNow)
	}
}

// TestCrashBetweenReserveAndAppend: a process that reserved and died leaves the key in flight
// until ReserveTTL, then a retry gets it.
func TestCrashBetweenReserveAndAppend(t *testing.T) {
	rdb := testClient(t)
	prefix := testPrefix(t, rdb)
	dead, err := Open(context.Background(), Options{Client: rdb, Prefix: prefix, Window: time.Hour, ReserveTTL: shortTTL})
	if err != nil {
		t.Fatal(err)
	}
	want(t, "reserve", reserve(t, dead, base, "k"), dedup.Reserved)
	_ = dead.Close() // "dies": never commits nor releases
	retry := openStore(t, Options{Client: rdb, Prefix: prefix, Window: time.Hour, ReserveTTL: shortTTL})
	want(t, "retry before the TTL", reserve(t, retry, base, "k"), dedup.InFlight)
	expire()
	want(t, "retry after the TTL", reserve(t, retry, base, "k"), dedup.Reserved)
}

// TestTTLs: a reservation lives ReserveTTL; a recorded key lives at least its window on both
// the caller's clock and Redis's, whatever the caller's clock says.
func TestTTLs(t *testing.T) {
	rdb := testClient(t)
	prefix := testPrefix(t, rdb)
	ctx := context.Background()
	s := openStore(t, Options{Client: rdb, Prefix: prefix, Window: time.Hour})
	pttl := func(k string) time.Duration {
		d, err := rdb.PTTL(ctx, prefix+k).Result()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	near := func(what string, got, w time.Duration) {
		t.Helper()
		if got > w+time.Second || got < w-time.Minute {
			t.Errorf("%s: TTL %v, want about %v", what, got, w)
		}
	}
	reserve(t, s, base, "past", "future")
	near("reservation", pttl("past"), DefaultReserveTTL)
	if err := s.Commit(ctx, []string{"past"}, base); err != nil { // a clock a day behind
		t.Fatal(err)
	}
	near("recorded with a past clock", pttl("past"), time.Hour)
	if err := s.Commit(ctx, []string{"future"}, time.Now().Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	near("recorded with a clock ahead", pttl("future"), 3*time.Hour)
	if v, _ := rdb.Get(ctx, prefix+"past").Result(); v != fmt.Sprintf("d%d", base.Add(time.Hour).UnixMilli()) {
		t.Errorf("recorded value %q", v)
	}
}

// TestFailedReserveLeavesNothing: a Reserve that fails leaves no reservation behind, here or
// in Redis.
func TestFailedReserveLeavesNothing(t *testing.T) {
	rdb := testClient(t)
	s := openStore(t, Options{Client: rdb, Prefix: testPrefix(t, rdb), Window: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	out := make([]dedup.Status, 2)
	if err := s.Reserve(ctx, []string{"a", "b"}, base, out); err == nil {
		t.Fatal("Reserve with a canceled context succeeded")
	}
	want(t, "after a failed Reserve", reserve(t, s, base, "a", "b"), dedup.Reserved, dedup.Reserved)
	if st := s.Stats(); st.Errors != 1 || st.HeldNow != 2 {
		t.Errorf("stats %+v", st)
	}
}

// TestScriptReload: a Store whose scripts Redis does not know (restart, failover) loads them
// and carries on.
func TestScriptReload(t *testing.T) {
	rdb := testClient(t)
	s := openStore(t, Options{Client: rdb, Prefix: testPrefix(t, rdb), Window: time.Hour})
	var b [8]byte
	_, _ = rand.Read(b[:])
	// The same scripts under SHAs Redis has never seen.
	s.reserve = newOp(reserveFn + "-- " + hex.EncodeToString(b[:]) + "\n")
	loads := s.Stats().ScriptsLoaded
	want(t, "reserve with an unknown script", reserve(t, s, base, "k"), dedup.Reserved)
	if s.Stats().ScriptsLoaded != loads+1 {
		t.Errorf("scripts loaded %d times, want %d", s.Stats().ScriptsLoaded, loads+1)
	}
}

// TestConcurrentStoresOneOwner: processes racing for the same keys: one owner per key.
func TestConcurrentStoresOneOwner(t *testing.T) {
	rdb := testClient(t)
	prefix := testPrefix(t, rdb)
	const stores, keys = 4, 200
	var owners [keys]atomic.Int32
	var wg sync.WaitGroup
	for range stores {
		s := openStore(t, Options{Client: rdb, Prefix: prefix, Window: time.Hour})
		for range 4 {
			wg.Go(func() {
				batch := make([]string, keys)
				for i := range batch {
					batch[i] = fmt.Sprint("k", i)
				}
				out := make([]dedup.Status, keys)
				if err := s.Reserve(context.Background(), batch, base, out); err != nil {
					t.Error(err)
					return
				}
				for i, st := range out {
					if st == dedup.Reserved {
						owners[i].Add(1)
					}
				}
			})
		}
	}
	wg.Wait()
	for i := range owners {
		if n := owners[i].Load(); n != 1 {
			t.Fatalf("key %d has %d owners", i, n)
		}
	}
}

func TestOptionErrors(t *testing.T) {
	if _, err := Open(context.Background(), Options{Addr: "127.0.0.1:1"}); err == nil {
		t.Error("Open without a window succeeded")
	}
	if _, err := Open(context.Background(), Options{Window: time.Hour}); err == nil {
		t.Error("Open without a client or address succeeded")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := Open(ctx, Options{Addr: "127.0.0.1:1", Window: time.Hour}); err == nil {
		t.Error("Open with no Redis there succeeded")
	}
}
