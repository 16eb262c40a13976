package dedup_test

import (
	"fmt"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/dedup"
	"github.com/adpulse/adpulse/internal/dedup/deduptest"
)

func TestMemoryConformance(t *testing.T) {
	deduptest.Run(t, func(t *testing.T, window time.Duration) dedup.Store { return dedup.NewMemory(window) })
}

func TestMemorySweepAndRestore(t *testing.T) {
	m := dedup.NewMemory(time.Hour)
	base := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	m.Restore("old", base)
	m.Restore("new", base.Add(90*time.Minute))
	if m.Len() != 2 {
		t.Fatalf("len %d", m.Len())
	}
	if n := m.Sweep(base.Add(2 * time.Hour)); n != 1 {
		t.Fatalf("swept %d, want 1", n)
	}
	out := make([]dedup.Status, 2)
	_ = m.Reserve(t.Context(), []string{"old", "new"}, base.Add(2*time.Hour), out)
	if out[0] != dedup.Reserved || out[1] != dedup.Duplicate {
		t.Fatalf("got %v", out)
	}
}

func BenchmarkMemoryReserveCommit(b *testing.B) {
	m := dedup.NewMemory(24 * time.Hour)
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		keys := make([]string, 1)
		out := make([]dedup.Status, 1)
		i := 0
		for pb.Next() {
			i++
			keys[0] = fmt.Sprintf("c:imp-%p-%d", &i, i)
			_ = m.Reserve(b.Context(), keys, now, out)
			_ = m.Commit(b.Context(), keys, now)
		}
	})
}

// BenchmarkMemoryBytesPerKey reports the heap a Memory holds per committed key.
func BenchmarkMemoryBytesPerKey(b *testing.B) {
	const keys = 1 << 20
	const batchSize = 1000
	now := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		m := dedup.NewMemory(24 * time.Hour)
		batch := make([]string, 0, batchSize)
		out := make([]dedup.Status, batchSize)
		for i := 0; i < keys; i += batchSize {
			batch = batch[:0]
			for j := i; j < min(i+batchSize, keys); j++ {
				batch = append(batch, "c:"+strconv.Itoa(j))
			}
			_ = m.Reserve(b.Context(), batch, now, out[:len(batch)])
			_ = m.Commit(b.Context(), batch, now)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/keys, "B/key")
		runtime.KeepAlive(m)
	}
}
