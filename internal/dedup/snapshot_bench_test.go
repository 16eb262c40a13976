package dedup_test

import (
	"bytes"
	"flag"
	"runtime/debug"
	"strconv"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/dedup"
)

var snapBenchKeys = flag.Int("snapshot.keys", 1_000_000, "keys in the snapshot BenchmarkReadKeys loads")

// BenchmarkReadKeys loads a snapshot of a million committed keys (-snapshot.keys) into a new
// store b.N times, on memory returned to the system first, as a restarted process does.
//
//	go test -run '^$' -bench ReadKeys ./internal/dedup -snapshot.keys 20000000
func BenchmarkReadKeys(b *testing.B) {
	keys := *snapBenchKeys
	now := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	src := dedup.NewMemory(24 * time.Hour)
	for i := range keys {
		// Spread over the window, as a day of keys is: some expire before the load's now.
		src.Restore("c:imp-"+strconv.Itoa(i), now.Add(-time.Duration(i%(24*60))*time.Minute))
	}
	var snap bytes.Buffer
	if _, err := src.WriteKeys(&snap, now); err != nil {
		b.Fatal(err)
	}
	src = nil
	later := now.Add(time.Hour)
	var loaded int64
	for b.Loop() {
		b.StopTimer()
		debug.FreeOSMemory()
		b.StartTimer()
		m := dedup.NewMemory(24 * time.Hour)
		n, err := m.ReadKeys(bytes.NewReader(snap.Bytes()), later)
		if err != nil {
			b.Fatal(err)
		}
		loaded = n
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(loaded), "ns/key")
	b.ReportMetric(float64(snap.Len())/1e6, "file-MB")
}
