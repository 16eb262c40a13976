package pebblestore

import (
	"context"
	"flag"
	"math"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/metricstore"
)

var sizeMinutes = flag.Int("size.minutes", 60, "minutes of full-rate traffic BenchmarkBytesPerEvent writes")

// Full scale of the bytes/event estimate: 100M clicks and 1B impressions a day (plus
// interactions) over 1M ads with Zipf(s=1.1) popularity, ten ads per campaign and ten
// campaigns per advertiser.
const (
	sizeAds        = 1_000_000
	sizeDayEvents  = 1_150_000_000
	sizeZipfS      = 1.1
	sizeCommitSize = 200_000 // events per commit: 200ms at 1M events/s
)

// BenchmarkBytesPerEvent writes an hour of full-rate traffic (800k events a minute, as the
// aggregator would commit them), compacts, and measures bytes on disk per event. Minute rows
// hold an hour, so their cost per event is measured as is. Hour and day rows would fill up
// over a day and 32 days, which a scaled-down run cannot show: their cost is extrapolated
// from the bytes per row seen (one entry each, so an upper bound) times the expected number
// of entries a day at full scale, which follows from the Zipf probabilities.
//
//	go test -run '^$' -bench BytesPerEvent -benchtime 1x ./internal/metricstore/pebblestore
func BenchmarkBytesPerEvent(b *testing.B) {
	s, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	rng := rand.New(rand.NewPCG(3, 3))
	zipf := rand.NewZipf(rng, sizeZipfS, 1, sizeAds-1)
	perMinute := sizeDayEvents / 1440
	start := time.Now().Unix()/60 - int64(*sizeMinutes) - 5
	type lk struct {
		l      metricstore.Level
		id     string
		minute int64
	}
	acc := map[lk]*metricstore.Counts{}
	ctx := context.Background()
	flush := func() {
		c := &metricstore.Commit{Consumer: "size"}
		for k, v := range acc {
			c.Deltas = append(c.Deltas, metricstore.Delta{Level: k.l, ID: k.id, Minute: k.minute, Counts: *v})
		}
		if err := s.Apply(ctx, c); err != nil {
			b.Fatal(err)
		}
		clear(acc)
	}
	events := 0
	b.ResetTimer()
	for m := range int64(*sizeMinutes) {
		for range perMinute {
			ad := int(zipf.Uint64())
			minute := start + m
			if rng.IntN(50) == 0 {
				minute -= 1 + rng.Int64N(3) // a few late events
			}
			ids := [3]string{"ad-" + strconv.Itoa(ad), "cmp-" + strconv.Itoa(ad/10), "adv-" + strconv.Itoa(ad/100)}
			r := rng.IntN(1000)
			for l, id := range ids {
				k := lk{metricstore.Level(l + 1), id, minute}
				c := acc[k]
				if c == nil {
					c = &metricstore.Counts{}
					acc[k] = c
				}
				switch {
				case r < 870:
					c.Impressions++
				case r < 954:
					c.Clicks++
				case r < 957:
					c.AddInvalid(event.ReasonBot, 1)
				default:
					c.AddInteraction("add_to_cart", 1)
				}
			}
			if events++; events%sizeCommitSize == 0 {
				flush()
			}
		}
	}
	flush()
	if err := s.db.Compact([]byte{0x10}, []byte{0x13}, true); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()

	var size, rows [len(resolutions)]float64
	var total float64
	for r := range resolutions {
		lo, hi := []byte{resolutions[r].prefix}, []byte{resolutions[r].prefix + 1}
		n, err := s.db.EstimateDiskUsage(lo, hi)
		if err != nil {
			b.Fatal(err)
		}
		size[r], rows[r] = float64(n), float64(countKeys(b, s, r))
		total += size[r]
		b.ReportMetric(size[r]/rows[r], resolutions[r].name+"-B/row")
	}
	b.ReportMetric(total/float64(events), "run-B/event")

	// Expected distinct (level, id) a day at full scale.
	p := make([]float64, sizeAds)
	var norm float64
	for k := range p {
		p[k] = math.Pow(float64(1+k), -sizeZipfS)
		norm += p[k]
	}
	var perDay float64
	for _, lp := range [3][]float64{p, group(p, 10), group(p, 100)} {
		for _, q := range lp {
			perDay += -math.Expm1(sizeDayEvents * math.Log1p(-q/norm))
		}
	}
	perEvent := [len(resolutions)]float64{
		size[resMinute] / float64(events),                    // measured
		size[resHour] / float64(events),                      // 24 hours like this one
		perDay * size[resDay] / rows[resDay] / sizeDayEvents, // one entry per id and day
	}
	var sum float64
	for r, res := range resolutions {
		sum += perEvent[r]
		b.ReportMetric(perEvent[r], res.name+"-B/event")
	}
	b.ReportMetric(sum, "full-scale-B/event")
	// Steady state on disk with default retention: 14 days of minutes, 400 of hours, and a
	// year of days (kept forever).
	b.ReportMetric(sizeDayEvents*(14*perEvent[0]+400*perEvent[1]+365*perEvent[2])/1e9, "steady-GB")
}

// group sums consecutive runs of k probabilities: the popularity of a campaign of k ads.
func group(p []float64, k int) []float64 {
	out := make([]float64, (len(p)+k-1)/k)
	for i, x := range p {
		out[i/k] += x
	}
	return out
}
