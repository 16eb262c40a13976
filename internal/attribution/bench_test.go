package attribution

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/eventlog/eventlogtest"
	"github.com/adpulse/adpulse/internal/ingest"
	"github.com/adpulse/adpulse/internal/metricstore/pebblestore"
	"github.com/cockroachdb/pebble/vfs"
)

// diskStage is a stage on the real file system (so sizes and fsyncs are real) fed by an
// in-memory log.
type diskStage struct {
	s   *Stage
	log *eventlogtest.MemLog
	buf [][]eventlog.Message
	dir string
}

func newDiskStage(tb testing.TB, partitions int) *diskStage {
	dir := tb.TempDir()
	store, err := pebblestore.Open(filepath.Join(dir, "metrics"), pebblestore.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { store.Close() })
	clock := t0.Add(10 * 24 * time.Hour)
	log := eventlogtest.NewMemLog(partitions, func() time.Time { return clock })
	s, err := Open(context.Background(), Options{Dir: filepath.Join(dir, "attribution"), Log: log, Metrics: store, FS: vfs.Default, MaxLateness: 30 * 24 * time.Hour})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return &diskStage{s: s, log: log, buf: make([][]eventlog.Message, partitions), dir: filepath.Join(dir, "attribution")}
}

func (d *diskStage) add(e *event.Event) {
	key := e.AdID
	if e.Type == event.TypeConversion {
		key = e.UserID
	}
	p := hashString(key) % uint64(len(d.buf))
	d.buf[p] = append(d.buf[p], eventlog.Message{Partition: int32(p), Value: e.AppendBinary(nil)})
}

func (d *diskStage) flush(tb testing.TB) {
	for p := range d.buf {
		if err := d.log.Append(context.Background(), d.buf[p]); err != nil {
			tb.Fatal(err)
		}
		d.buf[p] = d.buf[p][:0]
	}
	for {
		n, err := d.s.round(context.Background())
		if err != nil {
			tb.Fatal(err)
		}
		if err := d.s.publish(context.Background()); err != nil {
			tb.Fatal(err)
		}
		if n == 0 {
			return
		}
	}
}

// traffic is a shop's stream: views and clicks of users on ads of a few catalogs, and an
// order for every 20 touches, half of them by a user who touched the catalog.
type traffic struct {
	rng   *rand.Rand
	users int
	n     int
}

func (tr *traffic) next() event.Event {
	tr.n++
	user := "u" + strconv.Itoa(tr.rng.IntN(tr.users))
	at := t0.Add(time.Duration(tr.rng.Int64N(int64(9 * 24 * time.Hour))))
	cat := "cat" + strconv.Itoa(tr.rng.IntN(20))
	if tr.n%20 == 0 {
		e := order("o"+strconv.Itoa(tr.n), user, 1_000_000, at)
		e.CatalogID = cat
		return e
	}
	ad := strconv.Itoa(tr.rng.IntN(1000))
	e := view("imp-"+strconv.Itoa(tr.n), ad, user, at)
	e.CatalogID = cat
	if tr.n%10 == 0 {
		e.Type = event.TypeClick
	}
	return e
}

// benchPreload events fill the store before the timer starts.
const benchPreload = 30_000

// BenchmarkAttribution is the cost of attribution per event (touch or conversion), Pebble
// commits with fsync included, on a store already holding 100,000 users' touches.
func BenchmarkAttribution(b *testing.B) {
	d := newDiskStage(b, 8)
	tr := &traffic{rng: rand.New(rand.NewPCG(1, 2)), users: 100_000}
	for range benchPreload {
		e := tr.next()
		d.add(&e)
	}
	d.flush(b)
	b.ResetTimer()
	cpu0 := cpuTime()
	const batch = 5000
	for i := 0; i < b.N; i += batch {
		for j := 0; j < batch && i+j < b.N; j++ {
			e := tr.next()
			d.add(&e)
		}
		d.flush(b)
	}
	b.StopTimer()
	// On a shared machine wall time says more about the neighbours than about the code: the
	// process's CPU time (Pebble's compactions included) is reported too.
	b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/event")
}

// cpuTime is the CPU time (user and system) of the process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestTouchStoreSize measures disk and memory per million users: ADPULSE_ATTRIBUTION_SIZE_USERS
// users (default: skipped), each with 3 touches on average and an order for every 20 touches,
// then a full compaction. Run with
//
//	ADPULSE_ATTRIBUTION_SIZE_USERS=1000000 go test -run TestTouchStoreSize -v -timeout 30m ./internal/attribution/
func TestTouchStoreSize(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("ADPULSE_ATTRIBUTION_SIZE_USERS"))
	if n <= 0 {
		t.Skip("set ADPULSE_ATTRIBUTION_SIZE_USERS=N to measure the touch store with N users")
	}
	d := newDiskStage(t, 8)
	tr := &traffic{rng: rand.New(rand.NewPCG(3, 4)), users: n}
	start := time.Now()
	for i := range 3 * n {
		e := tr.next()
		d.add(&e)
		if i%50_000 == 49_999 {
			d.flush(t)
		}
		if i%1_000_000 == 999_999 {
			t.Logf("%d events, %.0f/s", i+1, float64(i+1)/time.Since(start).Seconds())
		}
	}
	d.flush(t)
	took := time.Since(start)
	cpu := cpuTime()
	if err := d.s.db.Compact([]byte{0}, []byte{0xff}, true); err != nil {
		t.Fatal(err)
	}
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	m := d.s.db.Metrics()
	st := d.s.Stats()
	perM := func(x uint64) string { return fmt.Sprintf("%.1f MiB", float64(x)/float64(n)*1e6/(1<<20)) }
	t.Logf("%d users, %d touches, %d conversions in %v (%.0f events/s; %v CPU, %.1f µs per event)", n, st.Touches, st.Conversions, took.Round(time.Second), float64(3*n)/took.Seconds(),
		cpu.Round(time.Second), float64(cpu.Microseconds())/float64(3*n))
	t.Logf("disk: %d bytes = %s per million users", m.DiskSpaceUsage(), perM(m.DiskSpaceUsage()))
	t.Logf("memory: Go heap %d MiB; Pebble block cache %d MiB and memtables %d MiB (bounded by Pebble's options, not by users)",
		ms.HeapAlloc>>20, m.BlockCache.Size>>20, m.MemTable.Size>>20)
}

// sharedBench is one process node of shared processing owning every partition: per
// partition a republisher and a partition stage on the real file system, run in turn.
type sharedBench struct {
	log, touches *eventlogtest.MemLog
	stages       []*Stage
	reps         []*republisher
	buf          [][]eventlog.Message
}

func newSharedBench(tb testing.TB, partitions int) *sharedBench {
	dir := tb.TempDir()
	store, err := pebblestore.Open(filepath.Join(dir, "metrics"), pebblestore.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { store.Close() })
	clock := t0.Add(10 * 24 * time.Hour)
	now := func() time.Time { return clock }
	d := &sharedBench{log: eventlogtest.NewMemLog(partitions, now), touches: eventlogtest.NewMemLog(partitions, now), buf: make([][]eventlog.Message, partitions)}
	for p := range partitions {
		o := Options{Dir: filepath.Join(dir, "p"+strconv.Itoa(p)), Log: d.log, Metrics: store, FS: vfs.Default, MaxLateness: 30 * 24 * time.Hour}
		o.setDefaults()
		s, err := openPartition(context.Background(), o, d.touches, p, PartitionConsumer(DefaultConsumer, int32(p)), 0)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { s.Close() })
		r, err := openRepublisher(context.Background(), &o, d.touches, p, PartitionConsumer(TouchesConsumer, int32(p)), 0)
		if err != nil {
			tb.Fatal(err)
		}
		d.stages, d.reps = append(d.stages, s), append(d.reps, r)
	}
	return d
}

func (d *sharedBench) add(e *event.Event) {
	key := e.AdID
	if e.Type == event.TypeConversion {
		key = e.UserID
	}
	p := ingest.Partition(key, len(d.buf))
	d.buf[p] = append(d.buf[p], eventlog.Message{Partition: p, Value: e.AppendBinary(nil)})
}

func (d *sharedBench) flush(tb testing.TB) {
	ctx := context.Background()
	for p := range d.buf {
		if err := d.log.Append(ctx, d.buf[p]); err != nil {
			tb.Fatal(err)
		}
		d.buf[p] = d.buf[p][:0]
	}
	for _, r := range d.reps {
		for {
			n, err := r.step(ctx)
			if err != nil {
				tb.Fatal(err)
			}
			if n == 0 {
				break
			}
		}
	}
	for _, s := range d.stages {
		for {
			n, err := s.round(ctx)
			if err != nil {
				tb.Fatal(err)
			}
			if n == 0 {
				break
			}
		}
	}
}

// BenchmarkAttributionShared is BenchmarkAttribution in shared processing: per event of the
// log, the republishing of touches to the touches topic and the partition stages (each
// round an Apply to the metric store with its offsets; the stage's database is not synced,
// being rebuilt from the log on every start). Compare with BenchmarkAttribution in one run.
func BenchmarkAttributionShared(b *testing.B) {
	d := newSharedBench(b, 8)
	tr := &traffic{rng: rand.New(rand.NewPCG(1, 2)), users: 100_000}
	for range benchPreload {
		e := tr.next()
		d.add(&e)
	}
	d.flush(b)
	b.ResetTimer()
	cpu0 := cpuTime()
	const batch = 5000
	for i := 0; i < b.N; i += batch {
		for j := 0; j < batch && i+j < b.N; j++ {
			e := tr.next()
			d.add(&e)
		}
		d.flush(b)
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/event")
}
