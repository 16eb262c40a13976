package eventlogtest

import (
	"context"
	"math/rand/v2"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/eventlog"
)

// BenchValueBytes is the size of a benchmark message: about one encoded click.
const BenchValueBytes = 150

// BenchValue returns one benchmark message value.
func BenchValue() []byte {
	v := make([]byte, BenchValueBytes)
	for i := range v {
		v[i] = byte('a' + i%26)
	}
	return v
}

// BenchAppendClicks is the click path, the same for every implementation: 256 goroutines,
// each appending single messages to random partitions and waiting for durability, as the /c
// handler does. It returns the time the b.N appends took.
func BenchAppendClicks(b *testing.B, l eventlog.Log) time.Duration {
	b.SetParallelism(max(256/runtime.GOMAXPROCS(0), 1))
	b.SetBytes(BenchValueBytes)
	b.ReportAllocs()
	var seed atomic.Uint64
	start := time.Now()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(seed.Add(1), 0))
		msg := []eventlog.Message{{Value: BenchValue()}}
		for pb.Next() {
			msg[0].Partition = int32(rng.IntN(l.Partitions()))
			if err := l.Append(context.Background(), msg); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	return time.Since(start)
}

// BenchAppendBatches is the /events path: appenders concurrent requests, each appending
// batches of batch messages spread over all partitions. One op is one batch; it returns the
// time the b.N batches took.
func BenchAppendBatches(b *testing.B, l eventlog.Log, appenders, batch int) time.Duration {
	b.SetBytes(int64(batch) * BenchValueBytes)
	b.ReportAllocs()
	var seed atomic.Uint64
	newBatch := func() []eventlog.Message {
		rng := rand.New(rand.NewPCG(seed.Add(1), 0))
		msgs := make([]eventlog.Message, batch)
		v := BenchValue()
		for i := range msgs {
			msgs[i] = eventlog.Message{Partition: int32(rng.IntN(l.Partitions())), Value: v}
		}
		return msgs
	}
	start := time.Now()
	b.ResetTimer()
	if appenders == 1 {
		// RunParallel starts at least GOMAXPROCS goroutines; one appender needs its own loop.
		msgs := newBatch()
		for range b.N {
			if err := l.Append(context.Background(), msgs); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		b.SetParallelism(max(appenders/runtime.GOMAXPROCS(0), 1))
		b.RunParallel(func(pb *testing.PB) {
			msgs := newBatch()
			for pb.Next() {
				if err := l.Append(context.Background(), msgs); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.StopTimer()
	return time.Since(start)
}
