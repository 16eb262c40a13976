package sivt

import (
	"runtime"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/ivt/ivtgen"
)

// heapObjects is the count of live heap objects as of the last collection.
func heapObjects() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/objects:objects"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// gcWall is the shortest of five full collections' wall times.
func gcWall() time.Duration {
	best := time.Duration(1<<63 - 1)
	for range 5 {
		start := time.Now()
		runtime.GC()
		best = min(best, time.Since(start))
	}
	return best
}

// BenchmarkHeldObjectsPerClick reports what the garbage collector must mark for the clicks
// the rules hold: the heap objects per held click (objects/click) and the wall time of a
// full collection with the state live (gc-ms, the shortest of five, less that of the heap without it), for the ivtgen traffic of
// BenchmarkHeldBytesPerClick (clicks only). Marking cost grows with the objects and pointers
// to follow, not with the bytes of pointer-free slabs.
func BenchmarkHeldObjectsPerClick(b *testing.B) {
	evs := ivtgen.Generate(ivtgen.Config{Seed: 1, Duration: 10 * time.Minute, Humans: 20000, Floods: 4, DatacenterBots: 0, Drips: 5})
	var encoded [][]byte
	for i := range evs {
		if evs[i].Type == event.TypeClick {
			encoded = append(encoded, evs[i].AppendBinary(nil))
		}
	}
	var perClick, gcMillis float64
	for b.Loop() {
		runtime.GC()
		base := heapObjects()
		baseGC := gcWall()
		st := newState(DefaultRules())
		for _, raw := range encoded {
			ev := new(event.Event)
			if err := ev.Decode(raw); err != nil {
				b.Fatal(err)
			}
			st.click(ev, false, true)
		}
		gcMillis = float64(gcWall()-baseGC) / 1e6
		perClick = float64(int64(heapObjects())-int64(base)) / float64(len(encoded))
		runtime.KeepAlive(st)
	}
	b.ReportMetric(perClick, "objects/click")
	b.ReportMetric(gcMillis, "gc-ms")
}
