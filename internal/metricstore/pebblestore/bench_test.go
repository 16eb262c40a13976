package pebblestore

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
)

// BenchmarkApply measures commits of realistic size: 30k distinct ads (and their campaigns
// and advertisers) in one or two minutes, as one 200ms commit at 1M events/s holds. One op is
// one delta (each written to three resolutions).
//
//	go test -run '^$' -bench Apply -benchtime 20x ./internal/metricstore/pebblestore
func BenchmarkApply(b *testing.B) {
	s, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	rng := rand.New(rand.NewPCG(1, 1))
	zipf := rand.NewZipf(rng, 1.1, 1, 999_999)
	minute := time.Now().Unix() / 60
	const perCommit = 30_000
	mk := func(i int) *metricstore.Commit {
		seen := map[[2]string]bool{}
		c := &metricstore.Commit{Consumer: "bench", Ranges: []metricstore.OffsetRange{{Partition: 0, From: int64(i), To: int64(i + 1)}}}
		for len(c.Deltas) < perCommit {
			ad := int(zipf.Uint64())
			m := minute + int64(i/5) // 5 commits a minute
			for l, id := range []string{"ad-" + strconv.Itoa(ad), "cmp-" + strconv.Itoa(ad/10), "adv-" + strconv.Itoa(ad/100)} {
				k := [2]string{strconv.Itoa(l), id}
				if seen[k] {
					continue
				}
				seen[k] = true
				c.Deltas = append(c.Deltas, metricstore.Delta{Level: metricstore.Level(l + 1), ID: id, Minute: m,
					Counts: metricstore.Counts{Impressions: 1 + rng.Int64N(20), Clicks: rng.Int64N(2)}})
			}
		}
		return c
	}
	commits := make([]*metricstore.Commit, b.N)
	for i := range commits {
		commits[i] = mk(i)
	}
	b.ResetTimer()
	for i := range b.N {
		if err := s.Apply(context.Background(), commits[i]); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(commits[0].Deltas)), "ns/delta")
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/commit")
}

// BenchmarkQuery measures GET /metrics' common case on a populated store: 10 ads, 24 hours
// at 1m (1440 points each). The store holds two days of 2000 ads active every minute, plus
// their campaigns and advertisers, flushed and compacted as a long-running store would be,
// with some recent writes still in the memtable. It reports p50 and p99 latency.
//
//	go test -run '^$' -bench Query -benchtime 2000x ./internal/metricstore/pebblestore
func BenchmarkQuery(b *testing.B) {
	for _, cache := range []int64{128 << 20, 1 << 30} {
		b.Run(fmt.Sprintf("cache=%dMiB", cache>>20), func(b *testing.B) { benchQuery(b, cache) })
	}
}

func benchQuery(b *testing.B, cache int64) {
	s, err := Open(b.TempDir(), Options{CacheBytes: cache})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	rng := rand.New(rand.NewPCG(2, 2))
	const ads = 2000
	now := time.Now().Unix() / 60
	first := now - 2*1440
	ctx := context.Background()
	for m := first; m < now; m += 10 {
		c := &metricstore.Commit{Consumer: "bench"}
		for mm := m; mm < m+10; mm++ {
			for ad := range ads {
				c.Deltas = append(c.Deltas, metricstore.Delta{Level: metricstore.LevelAd, ID: "ad-" + strconv.Itoa(ad), Minute: mm,
					Counts: metricstore.Counts{Impressions: 1 + rng.Int64N(100), Clicks: rng.Int64N(5), InvalidClicks: rng.Int64N(2)}})
				if ad%10 == 0 {
					c.Deltas[len(c.Deltas)-1].AddInteraction("add_to_cart", 1)
				}
			}
		}
		if err := s.Apply(ctx, c); err != nil {
			b.Fatal(err)
		}
		if m == now-120 {
			// Everything but the last two hours goes to sstables, compacted.
			if err := s.db.Compact([]byte{0}, []byte{0xff}, true); err != nil {
				b.Fatal(err)
			}
		}
	}
	// Let flushes and compactions settle: measure reads, not reads racing a compaction.
	settleStore(b, s)
	st0 := s.Stats()
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		ids := make([]string, 10)
		for j := range ids {
			ids[j] = "ad-" + strconv.Itoa(rng.IntN(ads))
		}
		end := now - int64(rng.IntN(60))
		t0 := time.Now()
		r, err := s.Query(ctx, metricstore.Query{Level: metricstore.LevelAd, IDs: ids, Start: time.Unix((end-1440)*60, 0), End: time.Unix(end*60, 0), Interval: time.Minute})
		lat = append(lat, time.Since(t0))
		if err != nil {
			b.Fatal(err)
		}
		if len(r.Series[0].Points) != 1440 || r.Series[0].Points[100].Impressions == 0 {
			b.Fatalf("unexpected result: %d points", len(r.Series[0].Points))
		}
		_ = i
	}
	b.StopTimer()
	reportQueries(b, s, st0, lat)
}

var sparseAds = flag.Int("sparse.ads", 200_000, "ads in BenchmarkQuerySparse's store")

// BenchmarkQuerySparse measures GET /metrics at full size: many ads, each with a couple of
// events in the day, so most rows a query asks for do not exist and most of the store is
// out of the block cache. One op is 10 random ads over the last 24 hours at 1h (hour rows
// in the middle, minute rows at the two ends), as `adpulse bench`'s queries scenario asks.
//
//	go test -run '^$' -bench QuerySparse -benchtime 3000x ./internal/metricstore/pebblestore -args -sparse.ads=1000000
func BenchmarkQuerySparse(b *testing.B) {
	s, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	rng := rand.New(rand.NewPCG(3, 3))
	ads := *sparseAds
	now := time.Now().Unix() / 60
	ctx := context.Background()
	// Two events per ad at random minutes of the last day, with their campaigns (10 ads
	// each) and advertisers (10 campaigns each), committed a minute at a time.
	byMinute := make([][]int32, 1440)
	for ad := range ads {
		for range 2 {
			m := rng.IntN(1440)
			byMinute[m] = append(byMinute[m], int32(ad))
		}
	}
	for i, adsOf := range byMinute {
		c := &metricstore.Commit{Consumer: "bench"}
		m := now - 1440 + int64(i)
		for _, ad := range adsOf {
			counts := metricstore.Counts{Impressions: 1, Clicks: rng.Int64N(2)}
			for l, id := range [...]string{"ad-" + strconv.Itoa(int(ad)), "cmp-" + strconv.Itoa(int(ad)/10), "adv-" + strconv.Itoa(int(ad)/100)} {
				c.Deltas = append(c.Deltas, metricstore.Delta{Level: metricstore.Level(l + 1), ID: id, Minute: m, Counts: counts})
			}
		}
		if err := s.Apply(ctx, c); err != nil {
			b.Fatal(err)
		}
	}
	settleStore(b, s)
	st0 := s.Stats()
	lat := make([]time.Duration, 0, b.N)
	ids := make([]string, 10)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		for j := range ids {
			ids[j] = "ad-" + strconv.Itoa(rng.IntN(ads))
		}
		t0 := time.Now()
		r, err := s.Query(ctx, metricstore.Query{Level: metricstore.LevelAd, IDs: ids, Start: time.Unix((now-1440)*60, 0), End: time.Unix(now*60, 0), Interval: time.Hour})
		lat = append(lat, time.Since(t0))
		if err != nil {
			b.Fatal(err)
		}
		if len(r.Series) != len(ids) {
			b.Fatalf("%d series", len(r.Series))
		}
	}
	b.StopTimer()
	reportQueries(b, s, st0, lat)
}

// settleStore flushes s and waits for its compactions, so a benchmark measures reads, not
// reads racing a compaction.
func settleStore(b *testing.B, s *Store) {
	if err := s.db.Flush(); err != nil {
		b.Fatal(err)
	}
	for s.db.Metrics().Compact.NumInProgress > 0 {
		time.Sleep(10 * time.Millisecond)
	}
}

// reportQueries reports a query benchmark's block cache misses per query (since st0), the
// store's size and the latency percentiles of lat.
func reportQueries(b *testing.B, s *Store, st0 Stats, lat []time.Duration) {
	st := s.Stats()
	b.ReportMetric(float64(st.BlockCacheMisses-st0.BlockCacheMisses)/float64(b.N), "cache-misses/op")
	b.ReportMetric(float64(st.DiskBytes)/(1<<20), "store-MiB")
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
