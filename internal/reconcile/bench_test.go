package reconcile

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/aggregate"
	"github.com/adpulse/adpulse/internal/archive"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/eventlog/eventlogtest"
	"github.com/adpulse/adpulse/internal/metricstore/pebblestore"
)

// BenchmarkReconcileHour measures a reconciliation of one hour of clicks (default 250,000;
// ADPULSE_BENCH_RECONCILE_CLICKS sets it: 4,166,667 is an hour of 100M clicks a day) over
// 10,000 ads, archived by the archiver and counted by the aggregator first, and reports
// archive rows read per second and the extrapolated time for a day of 100M clicks, which
// reads the day plus --stream-dedup-window before and --max-lateness after (24h each by
// default: three days of files).
//
//	ADPULSE_BENCH_RECONCILE_CLICKS=1000000 go test -run '^$' -bench ReconcileHour -benchtime 3x ./internal/reconcile/
func BenchmarkReconcileHour(b *testing.B) {
	clicks := 250_000
	if v, err := strconv.Atoi(os.Getenv("ADPULSE_BENCH_RECONCILE_CLICKS")); err == nil && v > 0 {
		clicks = v
	}
	ctx := context.Background()
	const partitions = 8
	log := eventlogtest.NewMemLog(partitions, nil)
	h0 := time.Now().UTC().Add(-30 * time.Hour).Truncate(time.Hour)
	rng := rand.New(rand.NewPCG(1, 2))
	step := time.Hour.Microseconds() / int64(clicks)
	var batch []eventlog.Message
	for i := range clicks {
		recv := h0.UnixMicro() + int64(i)*step
		ad := rng.IntN(10_000)
		e := event.Event{Type: event.TypeClick, Time: recv - rng.Int64N(2_000_000), RecvTime: recv, PriceMicros: 250_000,
			AdID: fmt.Sprintf("ad-%05d", ad), CampaignID: fmt.Sprintf("cmp-%04d", ad/10), AdvertiserID: fmt.Sprintf("adv-%03d", ad/100),
			ImpressionID: fmt.Sprintf("imp-%09d", i), UserID: fmt.Sprintf("u-%07d", rng.IntN(1_000_000))}
		batch = append(batch, eventlog.Message{Partition: int32(ad % partitions), Value: e.AppendBinary(nil)})
		if len(batch) == 10_000 || i == clicks-1 {
			if err := log.Append(ctx, batch); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	store, err := pebblestore.Open(b.TempDir(), pebblestore.Options{MinuteRetention: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	target, err := archive.NewDirTarget(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	ag, _ := aggregate.New(aggregate.Options{Log: log, Store: store, MaxLateness: time.Hour, Slack: slack})
	ar, _ := archive.New(archive.Options{Log: log, Target: target, Slack: slack})
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = ag.Run(rctx) }()
	go func() { defer wg.Done(); _ = ar.Run(rctx) }()
	for {
		done := !ag.Stats().FinalBefore.Before(h0.Add(time.Hour))
		for _, ps := range ag.Stats().Partitions {
			done = done && ps.Committed == ps.End && ps.End > 0
		}
		for i, ps := range ar.Stats().Partitions {
			_, end, _ := log.Offsets(ctx, i)
			done = done && ps.Committed == end
		}
		if done {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	as := ar.Stats()
	b.Logf("%d clicks: archive %d files, %.1f bytes/event", clicks, as.FilesWritten, as.BytesPerEvent)
	o := Options{Archive: target, Store: store, MaxLateness: time.Hour, DedupSpan: time.Hour, Slack: slack}
	cpu0 := cpuSeconds()
	b.ResetTimer()
	var rep *Report
	for range b.N {
		if rep, err = Run(ctx, o, h0, h0.Add(time.Hour), false); err != nil {
			b.Fatal(err)
		}
		if len(rep.Diffs) != 0 || rep.Rows != int64(clicks) {
			b.Fatalf("%d differences, %d rows", len(rep.Diffs), rep.Rows)
		}
	}
	perRow := b.Elapsed().Seconds() / float64(b.N) / float64(clicks)
	cpuPerRow := (cpuSeconds() - cpu0) / float64(b.N) / float64(clicks)
	b.ReportMetric(1/perRow, "rows/s")
	b.ReportMetric(1/cpuPerRow, "rows/cpu-s")
	b.ReportMetric(perRow*300e6, "s/day-of-100M")
	b.Logf("%d buckets compared per run; a day of 100M clicks reads ~300M rows with a 24h dedup window and lateness: %.0f s at %.0f rows/s (wall), %.0f CPU-s at %.0f rows per CPU-second",
		rep.Buckets, perRow*300e6, 1/perRow, cpuPerRow*300e6, 1/cpuPerRow)
}

// cpuSeconds is the process's user and system CPU time: on a shared machine, wall time
// says more about the neighbours than about the code.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
