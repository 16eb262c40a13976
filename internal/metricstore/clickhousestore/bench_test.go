package clickhousestore

import (
	"context"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
)

// BenchmarkApply measures commits of the size pebblestore's benchmark uses: 30k distinct ads
// (and their campaigns and advertisers) in one minute, as one 200ms commit at 1M events/s
// holds. One op is one commit; ns/delta divides by its deltas.
//
//	ADPULSE_TEST_CLICKHOUSE_ADDR=127.0.0.1:19000 go test -run '^$' -bench Apply -benchtime 20x ./internal/metricstore/clickhousestore
func BenchmarkApply(b *testing.B) {
	s := open(b, testOptions(b))
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

// BenchmarkApplySmall measures the fixed cost of a commit: one delta, so the protocol's
// round trips (head, intent, intents, counts, head) are all there is.
func BenchmarkApplySmall(b *testing.B) {
	s := open(b, testOptions(b))
	defer s.Close()
	m := time.Now().Unix() / 60
	b.ResetTimer()
	for i := range b.N {
		err := s.Apply(context.Background(), &metricstore.Commit{Consumer: "bench", Ranges: []metricstore.OffsetRange{{Partition: 0, From: int64(i), To: int64(i + 1)}},
			Deltas: []metricstore.Delta{{Level: metricstore.LevelAd, ID: "a", Minute: m, Counts: metricstore.Counts{Clicks: 1}}}})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkQuery measures GET /metrics' common case: 10 ads, 24 hours at 1m (1440 points
// each), and the same at 1h, on a store holding 25 hours of 1000 ads active every minute
// (about 1.5M minute rows). It reports p50 and p99 latency.
//
//	ADPULSE_TEST_CLICKHOUSE_ADDR=127.0.0.1:19000 go test -run '^$' -bench Query -benchtime 200x ./internal/metricstore/clickhousestore
func BenchmarkQuery(b *testing.B) {
	s := open(b, testOptions(b))
	defer s.Close()
	rng := rand.New(rand.NewPCG(2, 2))
	const ads = 1000
	now := time.Now().Unix() / 60
	first := now - 25*60
	ctx := context.Background()
	for m := first; m < now; m += 30 {
		c := &metricstore.Commit{Consumer: "bench"}
		for mm := m; mm < min(m+30, now); mm++ {
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
	}
	for _, iv := range []time.Duration{time.Minute, time.Hour} {
		b.Run("interval="+iv.String(), func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				ids := make([]string, 10)
				for j := range ids {
					ids[j] = "ad-" + strconv.Itoa(rng.IntN(ads))
				}
				end := now - int64(rng.IntN(60))
				t0 := time.Now()
				r, err := s.Query(ctx, metricstore.Query{Level: metricstore.LevelAd, IDs: ids, Start: time.Unix((end-1440)*60, 0), End: time.Unix(end*60, 0), Interval: iv})
				lat = append(lat, time.Since(t0))
				if err != nil {
					b.Fatal(err)
				}
				if r.Series[0].Points[len(r.Series[0].Points)/2].Impressions == 0 {
					b.Fatalf("unexpected result: %d points, middle one empty", len(r.Series[0].Points))
				}
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}
