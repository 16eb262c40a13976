package pebblestore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/testseed"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/metricstore/metricstoretest"
	"github.com/cockroachdb/pebble/vfs"
)

func TestConformance(t *testing.T) {
	metricstoretest.Run(t, func(t *testing.T) metricstoretest.Opener {
		dir := t.TempDir()
		return func() (metricstore.Store, error) { return Open(dir, Options{}) }
	}, testseed.Seed(t))
}

func TestConformanceMemFS(t *testing.T) {
	metricstoretest.Run(t, func(t *testing.T) metricstoretest.Opener {
		fs := vfs.NewMem()
		return func() (metricstore.Store, error) { return Open("db", Options{FS: fs}) }
	}, testseed.Seed(t))
}

func TestValueRoundTrip(t *testing.T) {
	seed := testseed.Seed(t)
	rng := rand.New(rand.NewPCG(seed, 2))
	randCounts := func() metricstore.Counts {
		var c metricstore.Counts
		c.Impressions = rng.Int64N(1<<40) - 1<<39
		if rng.IntN(2) == 0 {
			c.Clicks = rng.Int64N(100)
		}
		if rng.IntN(3) == 0 {
			c.SpendMicros = -rng.Int64()
		}
		for range rng.IntN(3) {
			c.AddInvalid(event.Reason(rng.IntN(256)), rng.Int64N(9)+1)
		}
		for range rng.IntN(3) {
			c.AddInteraction(string(rune('a'+rng.IntN(26))), rng.Int64N(9)+1)
		}
		return c
	}
	for i := range 2000 {
		// A row of random buckets, merged with itself through the merger, reads back as the
		// sum; a skipped entry leaves the rest intact.
		var row []byte
		want := map[int]metricstore.Counts{}
		for b := range maxBuckets {
			if rng.IntN(8) == 0 {
				c := randCounts()
				want[b] = c
				row = appendEntry(row, b, &c)
			}
		}
		got := map[int]*metricstore.Counts{}
		err := addRow(row, func(b int) *metricstore.Counts {
			if b%2 == 1 {
				return nil
			}
			got[b] = &metricstore.Counts{}
			return got[b]
		})
		for b, c := range want {
			if b%2 == 0 && (got[b] == nil || !got[b].Equal(&c)) {
				t.Fatalf("seed %d case %d: bucket %d = %v, want %v (err %v)", seed, i, b, got[b], c, err)
			}
		}
		m, _ := merger.Merge(nil, row)
		if err := m.MergeOlder(row); err != nil {
			t.Fatal(err)
		}
		out, closer, err := m.Finish(true)
		sums := map[int]*metricstore.Counts{}
		if err == nil {
			err = addRow(out, func(b int) *metricstore.Counts {
				sums[b] = &metricstore.Counts{}
				return sums[b]
			})
		}
		closer.Close()
		for b, c := range want {
			var twice metricstore.Counts
			twice.Add(&c)
			twice.Add(&c)
			if err != nil || sums[b] == nil || !sums[b].Equal(&twice) {
				t.Fatalf("seed %d case %d: merged bucket %d = %v, want %v (err %v)", seed, i, b, sums[b], twice, err)
			}
		}
	}
	if len(appendEntry(nil, 3, &metricstore.Counts{Impressions: 1})) != 3 {
		t.Errorf("impression-only entry is not 3 bytes")
	}
}

func FuzzAddRow(f *testing.F) {
	f.Add(appendEntry(nil, 5, &metricstore.Counts{Impressions: 3, Interactions: map[string]int64{"x": 1}, InvalidByReason: map[event.Reason]int64{1: 2}}))
	f.Add([]byte{1, 0x3f, 1, 2, 3})
	f.Fuzz(func(t *testing.T, v []byte) {
		var c metricstore.Counts
		_ = addRow(v, func(int) *metricstore.Counts { return &c }) // must not panic
		_ = addRow(v, func(int) *metricstore.Counts { return nil })
	})
}

// TestPlanTiles checks that plan covers every bucket exactly once with aligned segments.
func TestPlanTiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	kol, _ := time.LoadLocation("Asia/Kolkata")
	for range 500 {
		lo := int64(29_000_000) + rng.Int64N(1<<20)
		q := metricstore.Query{Level: 1, Start: time.Unix(lo*60, 0), End: time.Unix((lo+1+rng.Int64N(20000))*60, 0),
			Interval: time.Duration(1+rng.IntN(3000)) * time.Minute}
		if rng.IntN(3) == 0 {
			q.Interval, q.Location = 24*time.Hour, kol
		}
		b, err := q.Buckets()
		if err != nil {
			t.Fatal(err)
		}
		covered := make([]int64, len(b)-1)
		for _, r := range plan(b) {
			w := resolutions[r.res].minutes
			for _, s := range r.segs {
				if s.lo%w != 0 || s.hi%w != 0 || s.lo < b[s.bucket] || s.hi > b[s.bucket+1] {
					t.Fatalf("segment %+v of res %s misaligned for bucket [%d,%d)", s, resolutions[r.res].name, b[s.bucket], b[s.bucket+1])
				}
				covered[s.bucket] += s.hi - s.lo
			}
		}
		for i := range covered {
			if covered[i] != b[i+1]-b[i] {
				t.Fatalf("bucket %d covered %d minutes of %d", i, covered[i], b[i+1]-b[i])
			}
		}
	}
}

// TestCrashKeepsCommitsAtomic commits through a file system that forgets unsynced writes,
// "crashes" at random points, and checks that what survives is exactly the commits that
// returned, with offsets and counts in step.
func TestCrashKeepsCommitsAtomic(t *testing.T) {
	seed := testseed.Seed(t)
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 3))
	fs := vfs.NewStrictMem()
	ctx := context.Background()
	m := time.Now().Unix()/60 - 100
	var committed int64
	for round := range 5 {
		s, err := Open("db", Options{FS: fs})
		if err != nil {
			t.Fatalf("seed %d round %d: open: %v", seed, round, err)
		}
		cp, err := s.Checkpoint(ctx, "agg")
		if err != nil {
			t.Fatal(err)
		}
		if cp.Offsets[0] != committed {
			t.Fatalf("seed %d round %d: offset %d after crash, want %d", seed, round, cp.Offsets[0], committed)
		}
		r, err := s.Query(ctx, metricstore.Query{Level: metricstore.LevelAd, IDs: []string{"a"}, Start: time.Unix(m*60, 0), End: time.Unix((m+50)*60, 0), Interval: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		var sum int64
		for _, p := range r.Series[0].Points {
			sum += p.Clicks
		}
		if sum != committed {
			t.Fatalf("seed %d round %d: %d clicks after crash, want %d (one per offset)", seed, round, sum, committed)
		}
		for range 1 + rng.IntN(20) {
			n := 1 + rng.Int64N(50)
			var ds []metricstore.Delta
			for i := range n {
				ds = append(ds, metricstore.Delta{Level: metricstore.LevelAd, ID: "a", Minute: m + (committed+i)%50, Counts: metricstore.Counts{Clicks: 1}})
			}
			if err := s.Apply(ctx, &metricstore.Commit{Consumer: "agg", Ranges: []metricstore.OffsetRange{{Partition: 0, From: committed, To: committed + n}}, Deltas: ds}); err != nil {
				t.Fatal(err)
			}
			committed += n
		}
		// Crash: whatever was not synced is lost.
		fs.SetIgnoreSyncs(true)
		// An unsynced write after the last commit must not survive either.
		_ = s.Expire(ctx)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		fs.ResetToSyncedState()
		fs.SetIgnoreSyncs(false)
	}
}

// TestRetention drives the clock forward and checks that minute buckets go after their
// retention, hour buckets after theirs, and day buckets stay.
func TestRetention(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 21, 10, 30, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	s, err := Open(t.TempDir(), Options{Now: clock, MinuteRetention: 2 * 24 * time.Hour, HourRetention: 40 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m := now.Unix()/60 - 60 // 09:30
	if err := s.Apply(ctx, &metricstore.Commit{Consumer: "a", Deltas: []metricstore.Delta{{Level: metricstore.LevelAd, ID: "x", Minute: m, Counts: metricstore.Counts{Clicks: 5}}}}); err != nil {
		t.Fatal(err)
	}
	clicks := func(iv time.Duration) (int64, error) {
		r, err := s.Query(ctx, metricstore.Query{Level: metricstore.LevelAd, IDs: []string{"x"}, Start: time.Unix(m*60, 0), End: time.Unix((m+1)*60, 0), Interval: iv})
		if err != nil {
			return 0, err
		}
		return r.Series[0].Points[0].Clicks, nil
	}
	check := func(when string, iv time.Duration, want int64, wantErr error) {
		t.Helper()
		if err := s.Expire(ctx); err != nil {
			t.Fatal(err)
		}
		got, err := clicks(iv)
		if !errors.Is(err, wantErr) || got != want {
			t.Errorf("%s, %v buckets: %d, %v; want %d, %v", when, iv, got, err, want, wantErr)
		}
	}
	check("fresh", time.Minute, 5, nil)
	now = now.Add(3 * 24 * time.Hour)
	check("after minute retention", time.Minute, 0, metricstore.ErrExpired)
	check("after minute retention", time.Hour, 5, nil)
	check("after minute retention", 24*time.Hour, 5, nil)
	// The minute keys are really gone, not just hidden by the query's guard.
	if n := countKeys(t, s, resMinute); n != 0 {
		t.Errorf("%d minute keys left after expiry", n)
	}
	now = now.Add(60 * 24 * time.Hour)
	check("after hour retention", time.Hour, 0, metricstore.ErrExpired)
	check("after hour retention", 24*time.Hour, 5, nil)
	if n := countKeys(t, s, resHour); n != 0 {
		t.Errorf("%d hour keys left after expiry", n)
	}
	now = now.Add(10 * 365 * 24 * time.Hour)
	check("ten years on", 24*time.Hour, 5, nil)
	if st := s.Stats(); st.ExpiredRanges < 2 {
		t.Errorf("stats ExpiredRanges %d, want >= 2", st.ExpiredRanges)
	}
}

// TestLateDeltaPastRetention: a delta for a minute past the minute retention (a refund of an
// old click) changes the hour and day buckets that are still kept and writes no minute row;
// past the hour retention, only the day.
func TestLateDeltaPastRetention(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 21, 10, 30, 0, 0, time.UTC)
	s, err := Open(t.TempDir(), Options{Now: func() time.Time { return now }, MinuteRetention: 2 * 24 * time.Hour, HourRetention: 40 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m := now.Unix()/60 - 60
	apply := func(spend int64) {
		t.Helper()
		if err := s.Apply(ctx, &metricstore.Commit{Consumer: "a", Deltas: []metricstore.Delta{{Level: metricstore.LevelAd, ID: "x", Minute: m, Counts: metricstore.Counts{SpendMicros: spend}}}}); err != nil {
			t.Fatal(err)
		}
	}
	spend := func(iv time.Duration) int64 {
		t.Helper()
		r, err := s.Query(ctx, metricstore.Query{Level: metricstore.LevelAd, IDs: []string{"x"}, Start: time.Unix(m*60, 0), End: time.Unix((m+1)*60, 0), Interval: iv})
		if err != nil {
			t.Fatal(err)
		}
		return r.Series[0].Points[0].SpendMicros
	}
	apply(500)
	now = now.Add(3 * 24 * time.Hour)
	if err := s.Expire(ctx); err != nil {
		t.Fatal(err)
	}
	apply(-200)
	if n := countKeys(t, s, resMinute); n != 0 {
		t.Errorf("%d minute rows after a delta past the minute retention, want 0", n)
	}
	if h, d := spend(time.Hour), spend(24*time.Hour); h != 300 || d != 300 {
		t.Errorf("hour %d, day %d; want 300 and 300", h, d)
	}
	now = now.Add(60 * 24 * time.Hour)
	if err := s.Expire(ctx); err != nil {
		t.Fatal(err)
	}
	apply(-300)
	if n := countKeys(t, s, resHour); n != 0 {
		t.Errorf("%d hour rows after a delta past the hour retention, want 0", n)
	}
	if d := spend(24 * time.Hour); d != 0 {
		t.Errorf("day %d, want 0", d)
	}
}

func countKeys(t testing.TB, s *Store, res int) int {
	t.Helper()
	it, err := s.db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	it.SetBounds([]byte{resolutions[res].prefix}, []byte{resolutions[res].prefix + 1})
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		n++
	}
	return n
}

// TestRunBoundsWALReplay: Run flushes the memtables once MaxUnflushedWAL bytes of log wait,
// so a restart after a crash replays little, and what the flush wrote is all there after it.
// Without the flush the log only grows until a 128 MiB memtable fills.
func TestRunBoundsWALReplay(t *testing.T) {
	seed := testseed.Seed(t)
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	fs := vfs.NewStrictMem()
	ctx := context.Background()
	const bound = 64 << 10
	opts := Options{FS: fs, FlushInterval: 10 * time.Millisecond, MaxUnflushedWAL: bound}
	s, err := Open("db", opts)
	if err != nil {
		t.Fatal(err)
	}
	m := time.Now().Unix()/60 - 100
	var committed, clicks int64
	for s.Stats().UnflushedWAL < 4*bound {
		n := 1 + rng.Int64N(200)
		var ds []metricstore.Delta
		for i := range n {
			c := 1 + rng.Int64N(5)
			clicks += c
			ds = append(ds, metricstore.Delta{Level: metricstore.LevelAd, ID: "a", Minute: m + (committed+i)%50, Counts: metricstore.Counts{Clicks: c}})
		}
		if err := s.Apply(ctx, &metricstore.Commit{Consumer: "agg", Ranges: []metricstore.OffsetRange{{Partition: 0, From: committed, To: committed + n}}, Deltas: ds}); err != nil {
			t.Fatal(err)
		}
		committed += n
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx) }()
	deadline := time.Now().Add(20 * time.Second)
	for s.Stats().UnflushedWAL >= bound {
		if time.Now().After(deadline) {
			t.Fatalf("seed %d: %d bytes of write-ahead log still unflushed after 20 s, want < %d", seed, s.Stats().UnflushedWAL, bound)
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Flushes == 0 {
		t.Errorf("stats Flushes 0 after a bounding flush")
	}
	// Crash, then reopen: everything committed is there.
	fs.SetIgnoreSyncs(true)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fs.ResetToSyncedState()
	fs.SetIgnoreSyncs(false)
	s, err = Open("db", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cp, err := s.Checkpoint(ctx, "agg")
	if err != nil {
		t.Fatal(err)
	}
	if cp.Offsets[0] != committed {
		t.Fatalf("seed %d: offset %d after crash, want %d", seed, cp.Offsets[0], committed)
	}
	r, err := s.Query(ctx, metricstore.Query{Level: metricstore.LevelAd, IDs: []string{"a"}, Start: time.Unix(m*60, 0), End: time.Unix((m+50)*60, 0), Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, p := range r.Series[0].Points {
		sum += p.Clicks
	}
	if sum != clicks {
		t.Fatalf("seed %d: %d clicks after crash, want %d", seed, sum, clicks)
	}
}

// TestBlockCacheHoldsBlocksBesideFullMemtables writes until the memtables are at full size
// (one being written, one kept by Pebble for reuse), then asks one query again and again:
// once its blocks are cached it must read none from the files. Pebble reserves the memtables'
// size in the block cache, so a cache of CacheBytes alone would hold nothing here.
func TestBlockCacheHoldsBlocksBesideFullMemtables(t *testing.T) {
	ctx := context.Background()
	const memtable = 1 << 20
	s, err := Open(t.TempDir(), Options{CacheBytes: 1 << 20, MemTableBytes: memtable})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m := time.Now().Unix()/60 - 600
	for i := 0; ; i++ {
		pm := s.db.Metrics()
		if pm.Flush.Count >= 4 && pm.MemTable.Size >= memtable {
			break
		}
		if i > 10_000 {
			t.Fatalf("memtables not at full size after %d commits: %d bytes, %d flushes", i, pm.MemTable.Size, pm.Flush.Count)
		}
		ds := make([]metricstore.Delta, 0, 100)
		for j := range 100 {
			ds = append(ds, metricstore.Delta{Level: metricstore.LevelAd, ID: fmt.Sprintf("ad-%d", (i*100+j)%5000), Minute: m + int64(i%600), Counts: metricstore.Counts{Impressions: 3, Clicks: 1}})
		}
		if err := s.Apply(ctx, &metricstore.Commit{Consumer: "agg", Deltas: ds}); err != nil {
			t.Fatal(err)
		}
	}
	for {
		pm := s.db.Metrics()
		if pm.Compact.NumInProgress == 0 && pm.Flush.NumInProgress == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The premise: a full-size memtable written to and one kept for reuse, both reserved in
	// the cache. If a Pebble upgrade reserves otherwise, this says so instead of the test
	// passing without exercising it.
	if pm := s.db.Metrics(); pm.MemTable.Size+pm.MemTable.ZombieSize < 2*memtable {
		t.Fatalf("memtables hold %d bytes and %d more wait for reuse, want %d in all", pm.MemTable.Size, pm.MemTable.ZombieSize, 2*memtable)
	}
	q := metricstore.Query{Level: metricstore.LevelAd, IDs: []string{"ad-1", "ad-777", "ad-2500", "ad-4999"}, Start: time.Unix(m*60, 0), End: time.Unix((m+600)*60, 0), Interval: time.Hour}
	for round := range 2 {
		before := s.Stats()
		for range 20 {
			if _, err := s.Query(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		after := s.Stats()
		if misses := after.BlockCacheMisses - before.BlockCacheMisses; round == 1 && misses != 0 {
			t.Fatalf("the same query read %d blocks from the files once its blocks were cached (hits %d; memtables %d bytes)",
				misses, after.BlockCacheHits-before.BlockCacheHits, after.MemtableBytes)
		}
	}
}
