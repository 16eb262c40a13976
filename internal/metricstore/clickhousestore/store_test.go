package clickhousestore

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/metricstore/metricstoretest"
	"github.com/adpulse/adpulse/internal/testseed"
)

var seedFlag = flag.Uint64("seed", 0, "seed of the random tests (0: from the clock)")

// addrEnv names the server the integration tests use; CI sets it to 127.0.0.1:19000.
const addrEnv = "ADPULSE_TEST_CLICKHOUSE_ADDR"

var dbSeq atomic.Int64

// testOptions returns options on a database of its own, dropped after the test unless it
// failed (then it is kept and named, to look at).
func testOptions(t testing.TB) Options {
	t.Helper()
	addr := os.Getenv(addrEnv)
	if addr == "" {
		t.Skipf("%s is not set: no ClickHouse server to test against (scripts/install-baselines.sh starts one on 127.0.0.1:19000)", addrEnv)
	}
	db := fmt.Sprintf("adpulse_test_%d_%d_%d", time.Now().UnixNano(), os.Getpid(), dbSeq.Add(1))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("keeping database %s", db)
			return
		}
		s, err := Open(context.Background(), Options{Addr: addr, Database: db})
		if err != nil {
			t.Logf("drop database %s: %v", db, err)
			return
		}
		defer s.Close()
		if err := s.exec(context.Background(), "DROP DATABASE IF EXISTS "+db); err != nil {
			t.Logf("drop database %s: %v", db, err)
		}
	})
	return Options{Addr: addr, Database: db}
}

func open(t testing.TB, o Options) *Store {
	t.Helper()
	s, err := Open(context.Background(), o)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	if os.Getenv(addrEnv) == "" {
		t.Skipf("%s is not set: no ClickHouse server to test against", addrEnv)
	}
	metricstoretest.Run(t, func(t *testing.T) metricstoretest.Opener {
		o := testOptions(t)
		return func() (metricstore.Store, error) { return Open(context.Background(), o) }
	}, *seedFlag)
}

func TestQuote(t *testing.T) {
	for in, want := range map[string]string{
		"abc":        `'abc'`,
		"a'b":        `'a\x27b'`,
		`a\b`:        `'a\x5cb'`,
		"\x00\xff\n": `'\x00\xff\x0a'`,
	} {
		if got := quote(in); got != want {
			t.Errorf("quote(%q) = %s, want %s", in, got, want)
		}
	}
}

// TestOddIDsRoundTrip stores ids with quotes, backslashes and bytes outside ASCII, which the
// store splices into SQL, and reads each back alone.
func TestOddIDsRoundTrip(t *testing.T) {
	s := open(t, testOptions(t))
	defer s.Close()
	ctx := context.Background()
	m := time.Now().Unix()/60 - 30
	ids := []string{"a'b", `c\d`, "e\nf", "g\xffh", "x') OR 1=1 --", "ü"}
	var ds []metricstore.Delta
	for i, id := range ids {
		ds = append(ds, metricstore.Delta{Level: metricstore.LevelAd, ID: id, Minute: m, Counts: metricstore.Counts{Clicks: int64(i + 1)}})
	}
	if err := s.Apply(ctx, &metricstore.Commit{Consumer: "o'dd", Deltas: ds}); err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		r, err := s.Query(ctx, metricstore.Query{Level: metricstore.LevelAd, IDs: []string{id}, Start: time.Unix(m*60, 0), End: time.Unix((m+1)*60, 0), Interval: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		if got := r.Series[0].Points[0].Clicks; got != int64(i+1) {
			t.Errorf("id %q: clicks %d, want %d", id, got, i+1)
		}
	}
}

// TestCrashLeavesNothing stops commits after each step of the protocol, as if the writer
// died there, with a batch that differs from the retry's; then a fresh store (another
// process) commits the same range. Whatever the crash left must not count, and the retry
// must count exactly once.
func TestCrashLeavesNothing(t *testing.T) {
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d", seed)
	o := testOptions(t)
	o.Lease = 3 * time.Second // the retry waits for it
	ctx := context.Background()
	m := time.Now().Unix()/60 - 100
	var committed int64
	clicks := func(s *Store) int64 {
		t.Helper()
		r, err := s.Query(ctx, metricstore.Query{Level: metricstore.LevelAd, IDs: []string{"a", "b"}, Start: time.Unix(m*60, 0), End: time.Unix((m+60)*60, 0), Interval: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		var sum int64
		for _, se := range r.Series {
			for _, p := range se.Points {
				sum += p.Clicks
			}
		}
		return sum
	}
	rng := rand.New(rand.NewPCG(seed, 4))
	for _, step := range []int{2, 3, 4, 5} {
		// The dying writer: its batch covers more offsets and another id.
		dying := open(t, o)
		dying.failAfter = step
		n := 1 + rng.Int64N(20)
		var ds []metricstore.Delta
		for i := range n + 5 {
			ds = append(ds, metricstore.Delta{Level: metricstore.LevelAd, ID: "b", Minute: m + i%60, Counts: metricstore.Counts{Clicks: 1}})
		}
		err := dying.Apply(ctx, &metricstore.Commit{Consumer: "agg", Ranges: []metricstore.OffsetRange{{Partition: 0, From: committed, To: committed + n + 5}}, Deltas: ds})
		if !errors.Is(err, errCrash) {
			t.Fatalf("step %d: apply: %v, want the simulated crash", step, err)
		}
		dying.Close()

		s := open(t, o)
		if got := clicks(s); got != committed {
			t.Fatalf("seed %d step %d: %d clicks after the crash, want %d", seed, step, got, committed)
		}
		cp, err := s.Checkpoint(ctx, "agg")
		if err != nil || cp.Offsets[0] != committed && committed > 0 {
			t.Fatalf("step %d: checkpoint %+v, %v; want offset %d", step, cp, err, committed)
		}
		ds = ds[:0]
		for i := range n {
			ds = append(ds, metricstore.Delta{Level: metricstore.LevelAd, ID: "a", Minute: m + i%60, Counts: metricstore.Counts{Clicks: 1}})
		}
		t0 := time.Now()
		if err := s.Apply(ctx, &metricstore.Commit{Consumer: "agg", Ranges: []metricstore.OffsetRange{{Partition: 0, From: committed, To: committed + n}}, Deltas: ds}); err != nil {
			t.Fatalf("step %d: retry: %v", step, err)
		}
		committed += n
		t.Logf("step %d: retry took %v (waits %d, aborted %d)", step, time.Since(t0).Round(time.Millisecond), s.Stats().LeaseWaits, s.Stats().AbortedAttempts)
		if got := clicks(s); got != committed {
			t.Fatalf("seed %d step %d: %d clicks after the retry, want %d", seed, step, got, committed)
		}
		// A zombie replaying the retried commit is fenced.
		err = s.Apply(ctx, &metricstore.Commit{Consumer: "agg", Ranges: []metricstore.OffsetRange{{Partition: 0, From: committed - n, To: committed}}, Deltas: ds})
		if !errors.Is(err, metricstore.ErrConflict) {
			t.Fatalf("step %d: replay: %v, want ErrConflict", step, err)
		}
		s.Close()
	}
}

// TestZombieFencedAcrossStores: two stores (two processes) on one database; the one that
// lost the partition replays from its stale offsets and is refused.
func TestZombieFencedAcrossStores(t *testing.T) {
	o := testOptions(t)
	ctx := context.Background()
	a, b := open(t, o), open(t, o)
	defer a.Close()
	defer b.Close()
	m := time.Now().Unix()/60 - 10
	one := []metricstore.Delta{{Level: metricstore.LevelCampaign, ID: "c", Minute: m, Counts: metricstore.Counts{Impressions: 1}}}
	if err := a.Apply(ctx, &metricstore.Commit{Consumer: "agg", Ranges: []metricstore.OffsetRange{{Partition: 2, From: 0, To: 10}}, Deltas: one}); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(ctx, &metricstore.Commit{Consumer: "agg", Ranges: []metricstore.OffsetRange{{Partition: 2, From: 10, To: 20}}, Deltas: one}); err != nil {
		t.Fatal(err)
	}
	// a still believes partition 2 is at 10.
	err := a.Apply(ctx, &metricstore.Commit{Consumer: "agg", Ranges: []metricstore.OffsetRange{{Partition: 2, From: 10, To: 15}}, Deltas: one})
	if !errors.Is(err, metricstore.ErrConflict) {
		t.Fatalf("zombie apply: %v, want ErrConflict", err)
	}
	r, err := b.Query(ctx, metricstore.Query{Level: metricstore.LevelCampaign, IDs: []string{"c"}, Start: time.Unix(m*60, 0), End: time.Unix((m+1)*60, 0), Interval: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Series[0].Points[0].Impressions; got != 2 {
		t.Fatalf("impressions %d, want 2", got)
	}
}

// TestConcurrentWritersNeverBothCommit races two stores committing the same consumer with
// unfenced commits (no ranges, so the fence cannot tell them apart): every commit that
// returned nil counts exactly once, every refused one (a conflict, or an attempt that gave
// up at half the lease) not at all.
func TestConcurrentWritersNeverBothCommit(t *testing.T) {
	o := testOptions(t)
	o.Lease = 4 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m := time.Now().Unix()/60 - 10
	var ok [2]atomic.Int64
	done := make(chan struct{}, 2)
	for w := range 2 {
		s := open(t, o)
		defer s.Close()
		go func() {
			defer func() { done <- struct{}{} }()
			for range 15 {
				err := s.Apply(ctx, &metricstore.Commit{Consumer: "agg", Deltas: []metricstore.Delta{
					{Level: metricstore.LevelAd, ID: "z", Minute: m, Counts: metricstore.Counts{Clicks: 1}}}})
				if err == nil {
					ok[w].Add(1)
				} else {
					t.Logf("writer %d: %v", w, err)
				}
			}
		}()
	}
	<-done
	<-done
	s := open(t, o)
	defer s.Close()
	r, err := s.Query(context.Background(), metricstore.Query{Level: metricstore.LevelAd, IDs: []string{"z"}, Start: time.Unix(m*60, 0), End: time.Unix((m+1)*60, 0), Interval: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	want := ok[0].Load() + ok[1].Load()
	if got := r.Series[0].Points[0].Clicks; got != want {
		t.Fatalf("clicks %d, want %d (commits that returned nil)", got, want)
	}
	t.Logf("%d + %d commits succeeded", ok[0].Load(), ok[1].Load())
}

// TestRetention drives the clock forward: 1m buckets past the retention are refused and
// their partitions dropped, 1h and 1d buckets stay, and a late delta past the retention
// writes no minute row.
func TestRetention(t *testing.T) {
	o := testOptions(t)
	ctx := context.Background()
	now := time.Now().Truncate(time.Minute)
	o.Now = func() time.Time { return now }
	o.MinuteRetention = 2 * 24 * time.Hour
	s := open(t, o)
	defer s.Close()
	m := now.Unix()/60 - 60
	apply := func(clicks int64) {
		t.Helper()
		if err := s.Apply(ctx, &metricstore.Commit{Consumer: "a", Deltas: []metricstore.Delta{{Level: metricstore.LevelAd, ID: "x", Minute: m, Counts: metricstore.Counts{Clicks: clicks}}}}); err != nil {
			t.Fatal(err)
		}
	}
	clicks := func(iv time.Duration) (int64, error) {
		r, err := s.Query(ctx, metricstore.Query{Level: metricstore.LevelAd, IDs: []string{"x"}, Start: time.Unix(m*60, 0), End: time.Unix((m+1)*60, 0), Interval: iv})
		if err != nil {
			return 0, err
		}
		return r.Series[0].Points[0].Clicks, nil
	}
	minuteRows := func() int64 {
		t.Helper()
		var n uint64
		if err := s.conn.QueryRow(ctx, "SELECT count() FROM "+s.db+".counts WHERE res = 0").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return int64(n)
	}
	apply(5)
	if got, err := clicks(time.Minute); got != 5 || err != nil {
		t.Fatalf("fresh: %d, %v", got, err)
	}
	now = now.Add(3 * 24 * time.Hour)
	if err := s.Expire(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := clicks(time.Minute); !errors.Is(err, metricstore.ErrExpired) {
		t.Errorf("minute query past retention: %v, want ErrExpired", err)
	}
	if n := minuteRows(); n != 0 {
		t.Errorf("%d minute rows after expiry, want 0", n)
	}
	apply(-2)
	if n := minuteRows(); n != 0 {
		t.Errorf("%d minute rows after a late delta, want 0", n)
	}
	for _, iv := range []time.Duration{time.Hour, 24 * time.Hour} {
		if got, err := clicks(iv); got != 3 || err != nil {
			t.Errorf("%v buckets after expiry: %d, %v; want 3", iv, got, err)
		}
	}
	if st := s.Stats(); st.ExpiredParts < 1 {
		t.Errorf("stats ExpiredParts %d, want >= 1", st.ExpiredParts)
	}
}

func TestOpenRejectsBadDatabase(t *testing.T) {
	for _, db := range []string{"a-b", "x;DROP", "1abc"} {
		if _, err := Open(context.Background(), Options{Addr: "127.0.0.1:1", Database: db}); err == nil {
			t.Errorf("database %q accepted", db)
		}
	}
}

// TestFollowSeesEachCommitOnce: a follower started from ScanMinutesAt and moved by Follow
// sums to exactly what Query counts, with commits of several consumers and crashed attempts
// (whose rows are never committed) in between.
func TestFollowSeesEachCommitOnce(t *testing.T) {
	seed := testseed.Seed(t)
	rng := rand.New(rand.NewPCG(seed, 7))
	o := testOptions(t)
	ctx := context.Background()
	s := open(t, o)
	defer s.Close()
	m := time.Now().Unix()/60 - 30
	ids := []string{"a", "b", "c"}
	offsets := map[string]int64{}
	epochs := map[string]uint64{} // a crashed writer's successor claims a later epoch: no lease wait
	commit := func(st *Store, consumer string) error {
		var ds []metricstore.Delta
		for range 1 + rng.IntN(8) {
			ds = append(ds, metricstore.Delta{Level: metricstore.LevelAd, ID: ids[rng.IntN(len(ids))], Minute: m + rng.Int64N(30),
				Counts: metricstore.Counts{Clicks: 1 + rng.Int64N(3), Impressions: rng.Int64N(5), SpendMicros: rng.Int64N(1000)}})
		}
		from := offsets[consumer]
		err := st.Apply(ctx, &metricstore.Commit{Consumer: consumer, Epoch: epochs[consumer], Ranges: []metricstore.OffsetRange{{Partition: 0, From: from, To: from + 1}}, Deltas: ds})
		if err == nil {
			offsets[consumer]++
		}
		return err
	}
	followed := map[string]metricstore.Counts{}
	add := func(d *metricstore.Delta) error {
		c := followed[d.ID]
		c.Add(&d.Counts)
		followed[d.ID] = c
		return nil
	}
	for range 5 {
		if err := commit(s, "aggregate/p0"); err != nil {
			t.Fatal(err)
		}
	}
	cur, err := s.ScanMinutesAt(ctx, m-60, m+60, add)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 12 {
		consumer := []string{"aggregate/p0", "aggregate/p1", "charge"}[rng.IntN(3)]
		if i%4 == 3 { // a writer that dies after writing its rows, before its head
			dying := open(t, o)
			dying.failAfter = 4
			if err := commit(dying, consumer); !errors.Is(err, errCrash) {
				t.Fatalf("dying commit: %v", err)
			}
			dying.Close()
			epochs[consumer]++
		}
		if err := commit(s, consumer); err != nil {
			t.Fatal(err)
		}
		if rng.IntN(2) == 0 {
			if cur, err = s.Follow(ctx, cur, add); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err = s.Follow(ctx, cur, add); err != nil {
		t.Fatal(err)
	}
	res, err := s.Query(ctx, metricstore.Query{Level: metricstore.LevelAd, IDs: ids, Start: time.Unix((m-60)*60, 0), End: time.Unix((m+60)*60, 0), Interval: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for i, se := range res.Series {
		var want metricstore.Counts
		for _, p := range se.Points {
			want.Add(&p.Counts)
		}
		got := followed[ids[i]]
		if got.Clicks != want.Clicks || got.Impressions != want.Impressions || got.SpendMicros != want.SpendMicros {
			t.Errorf("%s: followed %+v, query %+v", ids[i], got, want)
		}
	}
}

// TestEpochTakeover: a writer that claimed a later epoch takes a consumer over at once from
// one that died mid-commit (no wait for the lease), the dead attempt's rows never count, and
// the earlier epoch's writer is fenced for good (ErrFenced), even with offsets that match.
func TestEpochTakeover(t *testing.T) {
	o := testOptions(t)
	o.Lease = 20 * time.Second
	ctx := context.Background()
	m := time.Now().Unix()/60 - 10
	commit := func(s *Store, epoch uint64, from, to int64, id string) error {
		return s.Apply(ctx, &metricstore.Commit{Consumer: "aggregate/p3", Epoch: epoch,
			Ranges: []metricstore.OffsetRange{{Partition: 3, From: from, To: to}},
			Deltas: []metricstore.Delta{{Level: metricstore.LevelAd, ID: id, Minute: m, Counts: metricstore.Counts{Clicks: to - from}}}})
	}
	old := open(t, o)
	defer old.Close()
	if err := commit(old, 1, 0, 5, "a"); err != nil {
		t.Fatal(err)
	}
	dying := open(t, o)
	dying.failAfter = 4 // rows written, no head: a crash mid-commit
	if err := commit(dying, 1, 5, 9, "a"); !errors.Is(err, errCrash) {
		t.Fatalf("dying commit: %v", err)
	}
	dying.Close()

	next := open(t, o)
	defer next.Close()
	t0 := time.Now()
	if err := commit(next, 2, 5, 12, "b"); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took > o.Lease/2 {
		t.Fatalf("the takeover's first commit took %v: it waited for the dead writer's lease", took)
	}
	// The previous owner, still alive and unaware, continues where it believes it is.
	if err := commit(old, 1, 12, 14, "a"); !errors.Is(err, metricstore.ErrFenced) {
		t.Fatalf("epoch 1 after epoch 2 committed: %v, want ErrFenced", err)
	}
	r, err := next.Query(ctx, metricstore.Query{Level: metricstore.LevelAd, IDs: []string{"a", "b"}, Start: time.Unix(m*60, 0), End: time.Unix((m+1)*60, 0), Interval: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if a, b := r.Series[0].Points[0].Clicks, r.Series[1].Points[0].Clicks; a != 5 || b != 7 {
		t.Fatalf("clicks a=%d b=%d, want 5 and 7 (the dead attempt's 4 must not count)", a, b)
	}
	cp, err := next.Checkpoint(ctx, "aggregate/p3")
	if err != nil || cp.Offsets[3] != 12 {
		t.Fatalf("checkpoint %+v %v, want offset 12", cp, err)
	}
}
