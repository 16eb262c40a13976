package aggregate

import (
	"context"
	"math/rand/v2"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/eventlog/eventlogtest"
	"github.com/adpulse/adpulse/internal/eventlog/locallog"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/metricstore/pebblestore"
)

// mix generates the realistic event mix of the benchmarks: ads drawn with Zipf skew (s=1.1)
// from nAds, ten ads per campaign and ten campaigns per advertiser, ten impressions per
// click, 3% of clicks invalid, one interaction per twenty impressions, event times advancing
// at perMinute events per minute of event time.
type mix struct {
	rng       *rand.Rand
	zipf      *rand.Zipf
	perMinute int
	n         int
	start     int64
}

func newMix(seed uint64, nAds, perMinute int) *mix {
	rng := rand.New(rand.NewPCG(seed, 7))
	return &mix{rng: rng, zipf: rand.NewZipf(rng, 1.1, 1, uint64(nAds-1)), perMinute: perMinute,
		start: time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC).UnixMicro()}
}

func (m *mix) next(e *event.Event) {
	ad := int(m.zipf.Uint64())
	m.n++
	now := m.start + int64(m.n)*60e6/int64(m.perMinute)
	*e = event.Event{
		AdID:         "ad-" + strconv.Itoa(ad),
		CampaignID:   "cmp-" + strconv.Itoa(ad/10),
		AdvertiserID: "adv-" + strconv.Itoa(ad/100),
		ImpressionID: "imp-" + strconv.Itoa(m.n),
		UserID:       "user-" + strconv.Itoa(m.rng.IntN(1e7)),
		RecvTime:     now,
		Time:         now - m.rng.Int64N(2e6),
	}
	switch r := m.rng.IntN(1000); {
	case r < 870:
		e.Type = event.TypeImpression
	case r < 957:
		e.Type = event.TypeClick
		if m.rng.IntN(100) < 3 {
			e.Invalid = event.ReasonBot
		}
	default:
		e.Type, e.Name = event.TypeInteraction, "add_to_cart"
	}
}

// fillLog appends n events of the mix, partitioned by ad.
func fillLog(tb testing.TB, l eventlog.Log, m *mix, n int) {
	parts := l.Partitions()
	var e event.Event
	batch := make([]eventlog.Message, 0, 4096)
	flush := func() {
		if err := l.Append(context.Background(), batch); err != nil {
			tb.Fatal(err)
		}
		batch = batch[:0]
	}
	for range n {
		m.next(&e)
		p, _ := strconv.Atoi(e.AdID[3:])
		batch = append(batch, eventlog.Message{Partition: int32(p % parts), Value: e.AppendBinary(make([]byte, 0, 128))})
		if len(batch) == cap(batch) {
			flush()
		}
	}
	flush()
}

// BenchmarkAggregate measures the aggregator end to end: from a filled log to the last
// committed offset in a Pebble store on disk, 8 partitions, 1M ads. One op is one event.
//
//	go test -run '^$' -bench Aggregate -benchtime 2000000x ./internal/aggregate
func BenchmarkAggregate(b *testing.B) {
	for _, logKind := range []string{"memlog", "locallog", "locallog-nullstore"} {
		b.Run(logKind, func(b *testing.B) {
			const parts = 8
			var l eventlog.Log
			switch logKind {
			case "memlog":
				l = eventlogtest.NewMemLog(parts, time.Now)
			case "locallog", "locallog-nullstore":
				ll, err := locallog.Open(locallog.Options{Dir: b.TempDir(), Partitions: parts})
				if err != nil {
					b.Fatal(err)
				}
				l = ll
			}
			defer l.Close()
			// A full-scale minute: 1.1B events a day is about 760k a minute.
			fillLog(b, l, newMix(1, 1_000_000, 760_000), b.N)
			s, err := pebblestore.Open(b.TempDir(), pebblestore.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			var store metricstore.Store = s
			if logKind == "locallog-nullstore" {
				store = nullStore{s}
			}
			a, err := New(Options{Log: l, Store: store, Now: func() time.Time { return time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC) }})
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			b.ReportAllocs()
			b.ResetTimer()
			start, cpuStart := time.Now(), cpuTime(b)
			go func() { errc <- a.Run(ctx) }()
			for {
				st := a.Stats()
				var done int64
				for _, p := range st.Partitions {
					done += p.Committed
				}
				if done == int64(b.N) {
					break
				}
				select {
				case err := <-errc:
					b.Fatal(err)
				case <-time.After(time.Millisecond):
				}
			}
			el, cpu := time.Since(start), cpuTime(b)-cpuStart
			b.StopTimer()
			cancel()
			if err := <-errc; err != nil {
				b.Fatal(err)
			}
			st := a.Stats()
			b.ReportMetric(float64(b.N)/el.Seconds(), "events/s")
			// The process's CPU time (every goroutine, GC and Pebble's background work
			// included) per event: on a shared machine it varies less than the rate.
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/event")
			b.ReportMetric(float64(st.Commits), "commits")
			if st.Commits > 0 {
				b.ReportMetric(float64(st.TotalCommitLatency.Milliseconds())/float64(st.Commits), "ms/commit")
			}
			b.ReportMetric(float64(st.MaxCommitLatency.Milliseconds()), "max-ms/commit")
			ss := s.Stats()
			b.ReportMetric(float64(ss.DeltasApplied)/float64(b.N), "deltas/event")
			b.ReportMetric(float64(ss.FlushedBytes)/float64(b.N), "flushed-B/event")
			b.ReportMetric(float64(ss.CompactedBytes)/float64(b.N), "compacted-B/event")
			b.ReportMetric(ss.CompactionTime.Seconds(), "compaction-s")
			b.ReportMetric(float64(ss.BuildNanos)/1e9, "build-s")
			b.ReportMetric(float64(ss.CommitNanos)/1e9, "commit-s")
			b.ReportMetric(float64(ss.StallNanos)/1e9, "stall-s")
			b.ReportMetric(float64(ss.SyncNanos)/1e9, "sync-s")
		})
	}
}

// cpuTime is the CPU time the process has used, user and system.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// nullStore drops deltas, keeping only offsets: it measures the aggregator without the
// store's write path.
type nullStore struct{ metricstore.Store }

func (n nullStore) Apply(ctx context.Context, c *metricstore.Commit) error {
	d := c.Deltas
	c.Deltas = nil
	defer func() { c.Deltas = d }()
	return n.Store.Apply(ctx, c)
}
