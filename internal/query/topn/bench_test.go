package topn

import (
	"context"
	"flag"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
)

var (
	benchAds   = flag.Int("topn.ads", 10_000_000, "ads in the synthetic load of the benchmarks")
	benchOrder = flag.Bool("topn.order", true, "BenchmarkTopFlat*: pick among tied ids by the byte order of ids (false: by their bytes alone, the reference)")
	benchHours = flag.Int("topn.hours", 2, "hours of synthetic load the query benchmarks build")
)

// load is a synthetic traffic model: ads Zipf-distributed (s = 1: the ad of rank r gets a
// share proportional to 1/r), 700k impressions and 70k clicks a minute, 100 ads per campaign,
// 10 campaigns per advertiser, clicks charged 0.2-0.5 units.
type load struct {
	ads        int
	impPerMin  int
	clkPerMin  int
	r          *rand.Rand
	lnN        float64
	cur        []rankCounts // per rank, this minute
	touched    []int32
	campTouch  map[int32]*vals
	advTouch   map[int32]*vals
	generated  int64
	scratchDel []metricstore.Delta
}

type rankCounts struct {
	imp, clk int32
	spend    int64
}

func newLoad(ads int, seed uint64) *load {
	return &load{
		ads: ads, impPerMin: 700_000, clkPerMin: 70_000,
		r:         rand.New(rand.NewPCG(seed, 99)),
		lnN:       math.Log(float64(ads)),
		cur:       make([]rankCounts, ads),
		campTouch: make(map[int32]*vals), advTouch: make(map[int32]*vals),
	}
}

// rank draws a rank in [0, ads) with P(rank < r) = ln(r+1)/ln(ads): Zipf with s = 1.
func (l *load) rank() int32 {
	r := int32(math.Exp(l.r.Float64()*l.lnN)) - 1
	return min(max(r, 0), int32(l.ads-1))
}

// adID scatters ranks over ids, so hot ads are not the lexically smallest.
func adID(rank int32, ads int) string {
	return "ad" + strconv.FormatUint(uint64(rank)*2654435761%uint64(ads), 10)
}

func campaignOf(rank int32) int32 { return rank / 100 }

// minute returns the deltas of one minute at all three levels (reusing its buffer).
func (l *load) minute(minute int64) []metricstore.Delta {
	hit := func(r int32) *rankCounts {
		c := &l.cur[r]
		if c.imp == 0 && c.clk == 0 {
			l.touched = append(l.touched, r)
		}
		return c
	}
	for range l.impPerMin {
		hit(l.rank()).imp++
	}
	for range l.clkPerMin {
		c := hit(l.rank())
		c.clk++
		c.spend += 200_000 + l.r.Int64N(300_001)
	}
	ds := l.scratchDel[:0]
	clear(l.campTouch)
	clear(l.advTouch)
	for _, r := range l.touched {
		c := &l.cur[r]
		v := vals{Clicks: int64(c.clk), Impressions: int64(c.imp), SpendMicros: c.spend}
		*c = rankCounts{}
		d := metricstore.Delta{Level: metricstore.LevelAd, ID: adID(r, l.ads), Minute: minute}
		d.Clicks, d.Impressions, d.SpendMicros = v[0], v[1], v[2]
		ds = append(ds, d)
		cv := l.campTouch[campaignOf(r)]
		if cv == nil {
			cv = &vals{}
			l.campTouch[campaignOf(r)] = cv
		}
		cv.add(&v)
	}
	l.touched = l.touched[:0]
	for c, v := range l.campTouch {
		d := metricstore.Delta{Level: metricstore.LevelCampaign, ID: "c" + strconv.Itoa(int(c)), Minute: minute}
		d.Clicks, d.Impressions, d.SpendMicros = v[0], v[1], v[2]
		ds = append(ds, d)
		a := c / 10
		av := l.advTouch[a]
		if av == nil {
			av = &vals{}
			l.advTouch[a] = av
		}
		av.add(v)
	}
	for a, v := range l.advTouch {
		d := metricstore.Delta{Level: metricstore.LevelAdvertiser, ID: "adv" + strconv.Itoa(int(a)), Minute: minute}
		d.Clicks, d.Impressions, d.SpendMicros = v[0], v[1], v[2]
		ds = append(ds, d)
	}
	l.scratchDel = ds
	l.generated += int64(len(ds))
	return ds
}

// buildIndex loads hours of load ending at the clock's minute: all but the last ten minutes
// through Rebuild (as after a restart), the rest through Add a minute at a time in commits of
// about 2500 deltas with Maintain after each minute (as Run would), so the current hour has
// the layers of a live index.
func buildIndex(tb testing.TB, ix *Index, clk *clock, l *load, hours int) {
	end := ix.nowMinute() + 1
	start := end - int64(hours)*60
	t0 := time.Now()
	if err := ix.Rebuild(context.Background(), &synthScanner{l: l, from: start, to: end - 10}); err != nil {
		tb.Fatal(err)
	}
	rebuilt := time.Since(t0)
	for m := end - 10; m < end; m++ {
		ds := l.minute(m)
		for i := 0; i < len(ds); i += 2500 {
			ix.Add(ds[i:min(i+2500, len(ds))])
		}
		ix.Maintain()
	}
	tb.Logf("built %d hours (%d deltas) in %v (rebuild %v)", hours, l.generated, time.Since(t0).Round(time.Millisecond), rebuilt.Round(time.Millisecond))
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// BenchmarkTop measures GET /metrics/top's index query over ten million Zipf-distributed ads
// (-topn.ads, -topn.hours to change the load). Besides ns/op it reports p50/p99 latency and
// the ids whose exact value each query computed.
//
//	go test -run XXX -bench BenchmarkTop -benchtime 2000x ./internal/query/topn
func BenchmarkTop(b *testing.B) {
	clk := &clock{t: time.Date(2026, 11, 21, 10, 37, 20, 0, time.UTC)}
	ix := New(Options{Now: clk.Now})
	l := newLoad(*benchAds, 1)
	buildIndex(b, ix, clk, l, *benchHours)
	s := ix.Stats()
	b.Logf("index: %d ads, %d minute entries, %.1f MiB (%.2f B per minute entry incl. hours and ids)",
		s.IDs[0], s.MinuteEntries, float64(s.Bytes)/(1<<20), float64(s.Bytes)/float64(s.MinuteEntries))
	now := ix.nowMinute()
	commit := l.minute(now)[:2500] // one aggregator commit's worth, replayed between queries
	cases := []struct {
		name    string
		q       Query
		ingest  bool
		minutes int64
	}{
		{"n=100/minutes=60/clicks", Query{Level: metricstore.LevelAd, Metric: Clicks, N: 100}, false, 60},
		{"n=100/minutes=60/impressions", Query{Level: metricstore.LevelAd, Metric: Impressions, N: 100}, false, 60},
		{"n=100/minutes=60/spend", Query{Level: metricstore.LevelAd, Metric: SpendMicros, N: 100}, false, 60},
		{"n=100/minutes=60/clicks/with-ingest", Query{Level: metricstore.LevelAd, Metric: Clicks, N: 100}, true, 60},
		{"n=10/minutes=5/clicks", Query{Level: metricstore.LevelAd, Metric: Clicks, N: 10}, false, 5},
		{"n=1000/minutes=60/clicks", Query{Level: metricstore.LevelAd, Metric: Clicks, N: 1000}, false, 60},
		{"n=100/minutes=60/clicks/campaign", Query{Level: metricstore.LevelCampaign, Metric: Clicks, N: 100}, false, 60},
		{"n=100/minutes=17/clicks", Query{Level: metricstore.LevelAd, Metric: Clicks, N: 100}, false, 17},
	}
	if *benchHours >= 24 {
		cases = append(cases, struct {
			name    string
			q       Query
			ingest  bool
			minutes int64
		}{"n=100/minutes=1440/clicks", Query{Level: metricstore.LevelAd, Metric: Clicks, N: 100}, false, 1440})
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			q := c.q
			q.From, q.To = now-c.minutes+1, now+1
			before := ix.Stats()
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				if c.ingest {
					ix.Add(commit)
				}
				t0 := time.Now()
				items, err := ix.Top(context.Background(), q)
				lat = append(lat, time.Since(t0))
				if err != nil || len(items) != q.N {
					b.Fatalf("Top: %d items, %v", len(items), err)
				}
			}
			b.StopTimer()
			after := ix.Stats()
			b.ReportMetric(float64(percentile(lat, 0.5).Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(percentile(lat, 0.99).Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(after.Candidates-before.Candidates)/float64(b.N), "candidates/op")
			b.ReportMetric(float64(after.Fallbacks-before.Fallbacks)/float64(b.N), "fallbacks/op")
		})
	}
}

// BenchmarkAdd measures the aggregator's commit path: Add of one commit (2500 deltas) and its
// application (which Top, Run or the next Add does), ns per delta.
func BenchmarkAdd(b *testing.B) {
	clk := &clock{t: time.Date(2026, 11, 21, 10, 37, 20, 0, time.UTC)}
	ix := New(Options{Now: clk.Now})
	l := newLoad(*benchAds, 2)
	ds := slices.Clone(l.minute(ix.nowMinute()))
	b.Run("add", func(b *testing.B) {
		// Only what the commit path pays: the queue is emptied without applying it.
		for i := range b.N {
			j := i * 2500 % len(ds)
			ix.Add(ds[j:min(j+2500, len(ds))])
			ix.pendMu.Lock()
			clear(ix.pending)
			ix.pending = ix.pending[:0]
			ix.pendMu.Unlock()
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/2500, "ns/delta")
	})
	b.Run("add+apply", func(b *testing.B) {
		for i := range b.N {
			j := i * 2500 % len(ds)
			ix.Add(ds[j:min(j+2500, len(ds))])
			ix.drain()
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/2500, "ns/delta")
	})
}

// scanner serves synthetic minutes to Rebuild, as pebblestore's ScanMinutes would.
type synthScanner struct {
	l    *load
	from int64
	to   int64
}

func (s *synthScanner) ScanMinutes(ctx context.Context, from, to int64, fn func(d *metricstore.Delta) error) error {
	for m := max(from, s.from); m < min(to, s.to); m++ {
		ds := s.l.minute(m)
		for i := range ds {
			if err := fn(&ds[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

var memHours = flag.Int("topn.memhours", 0, "hours of load BenchmarkMemory loads (0 skips it); 24 is the realistic day")

// BenchmarkMemory loads -topn.memhours of the realistic load through Rebuild and reports the
// index's size and the process's heap and RSS. The realistic day takes a few minutes:
//
//	go test -run XXX -bench BenchmarkMemory -benchtime 1x -topn.memhours 24 ./internal/query/topn
func BenchmarkMemory(b *testing.B) {
	if *memHours == 0 {
		b.Skip("set -topn.memhours")
	}
	for range b.N {
		clk := &clock{t: time.Date(2026, 11, 21, 10, 37, 20, 0, time.UTC)}
		ix := New(Options{Now: clk.Now})
		l := newLoad(*benchAds, 3)
		now := ix.nowMinute()
		t0 := time.Now()
		if err := ix.Rebuild(context.Background(), &synthScanner{l: l, from: now - int64(*memHours)*60 + 1, to: now + 1}); err != nil {
			b.Fatal(err)
		}
		took := time.Since(t0)
		l = nil
		runtime.GC()
		debug.FreeOSMemory()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		s := ix.Stats()
		rss := readRSS()
		b.Logf("rebuild of %d hours: %v; stats %+v", *memHours, took.Round(time.Millisecond), s)
		b.Logf("index %.0f MiB (minutes %.0f, hours %.0f, ids %.0f); heap in use %.0f MiB; RSS %.0f MiB",
			mib(s.Bytes), mib(s.MinuteBytes), mib(s.HourBytes), mib(s.IDBytes), mib(int64(ms.HeapInuse)), mib(rss))
		b.ReportMetric(float64(s.MinuteBytes)/float64(s.MinuteEntries), "B/minute-entry")
		b.ReportMetric(float64(s.Bytes)/float64(s.MinuteEntries), "B/minute-entry-all")
		b.ReportMetric(mib(int64(ms.HeapInuse)), "heap-MiB")
		b.ReportMetric(mib(rss), "rss-MiB")
		b.ReportMetric(mib(procStatus("VmHWM:")), "peak-rss-MiB")
		b.ReportMetric(took.Seconds(), "rebuild-s")

		// Queries on the loaded day.
		for _, minutes := range []int64{60, 1440} {
			q := Query{Level: metricstore.LevelAd, Metric: Clicks, N: 100, From: now - minutes + 1, To: now + 1}
			var lat []time.Duration
			for range 50 {
				t0 := time.Now()
				if _, err := ix.Top(context.Background(), q); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.Logf("minutes=%d n=100 clicks: p50 %v p99 %v", minutes, percentile(lat, 0.5), percentile(lat, 0.99))
		}
		runtime.KeepAlive(ix)
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// readRSS returns the resident set size from /proc (0 where there is none).
func readRSS() int64 { return procStatus("VmRSS:") }

// procStatus returns a size field of /proc/self/status in bytes (0 where there is none).
func procStatus(field string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == field {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// flatScanner serves the history adpulse bench loads: every ad clicked once in the day, the
// ads spread evenly over the minutes, so every window holds a long run of ads tied at one
// click and the ranking among them is by id. By default it serves the ads minute by minute,
// so the index numbers a window's ads next to each other; scattered serves them in id order
// with ad r in minute r*7 mod 1440, so a window's ads are spread over the whole number range,
// as they are when the ads were first seen in an order unrelated to the window (a server that
// saw them over days, or rebuilt its index from the store after a restart).
type flatScanner struct {
	ads       int
	from      int64
	to        int64
	scattered bool
}

func (s *flatScanner) ScanMinutes(ctx context.Context, from, to int64, fn func(d *metricstore.Delta) error) error {
	emit := func(r int, m int64) error {
		d := metricstore.Delta{Level: metricstore.LevelAd, ID: adID(int32(r), s.ads), Minute: m}
		d.Clicks, d.Impressions = 1, 1
		return fn(&d)
	}
	from, to = max(from, s.from), min(to, s.to)
	if s.scattered {
		for r := range s.ads {
			if m := s.from + int64(r*7%1440); m >= from && m < to {
				if err := emit(r, m); err != nil {
					return err
				}
			}
		}
		return nil
	}
	for m := from; m < to; m++ {
		slot := int(m - s.from)
		lo, hi := slot*s.ads/1440, (slot+1)*s.ads/1440
		for r := lo; r < hi; r++ {
			if err := emit(r, m); err != nil {
				return err
			}
		}
	}
	return nil
}

// BenchmarkTopFlat measures the top 100 ads by clicks over the last 60 minutes on the history
// adpulse bench loads (-topn.ads ads, each clicked once in the day): thousands of ads tie at
// one click, so no top set can prove the answer and the query sums the window's blocks and
// picks among the tied ids by their bytes. BenchmarkTopFlatScattered is the same history with the
// window's ads spread over the number range (flatScanner.scattered), as end to end.
//
//	go test -run XXX -bench BenchmarkTopFlat -benchtime 50x ./internal/query/topn [-args -topn.order=false]
func BenchmarkTopFlat(b *testing.B) { benchTopFlat(b, false) }

func BenchmarkTopFlatScattered(b *testing.B) { benchTopFlat(b, true) }

func benchTopFlat(b *testing.B, scattered bool) {
	clk := &clock{t: time.Date(2026, 11, 21, 10, 37, 20, 0, time.UTC)}
	ix := New(Options{Now: clk.Now})
	now := ix.nowMinute()
	t0 := time.Now()
	if err := ix.Rebuild(context.Background(), &flatScanner{ads: *benchAds, from: now - 1439, to: now + 1, scattered: scattered}); err != nil {
		b.Fatal(err)
	}
	b.Logf("built a day of %d ads in %v", *benchAds, time.Since(t0).Round(time.Millisecond))
	q := Query{Level: metricstore.LevelAd, Metric: Clicks, N: 100, From: now - 59, To: now + 1}
	if !*benchOrder {
		ix.orderMinTies = -1
	}
	// The first query starts the ids' byte order; the timed ones run once it is built,
	// as on a server that has answered such a query before.
	if _, err := ix.Top(context.Background(), q); err != nil {
		b.Fatal(err)
	}
	ix.orderWG.Wait()
	if st := ix.Stats(); st.OrderBuilds > 0 {
		b.Logf("ordered the ids by bytes in %v", time.Duration(st.OrderNanos).Round(time.Millisecond))
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		items, err := ix.Top(context.Background(), q)
		lat = append(lat, time.Since(t0))
		if err != nil || len(items) != q.N || items[0].Value != 1 {
			b.Fatalf("Top: %d items, %v", len(items), err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(percentile(lat, 0.5).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(percentile(lat, 0.99).Microseconds())/1000, "p99-ms")
}
