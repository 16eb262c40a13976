package locallog

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/eventlog"
)

const (
	benchPartitions = 8
	benchValueBytes = 150 // about one encoded click
)

func benchValue() []byte {
	v := make([]byte, benchValueBytes)
	for i := range v {
		v[i] = byte('a' + i%26)
	}
	return v
}

func reportAppend(b *testing.B, l *Log, msgs int64, elapsed time.Duration) {
	st := l.Stats()
	s := elapsed.Seconds()
	b.ReportMetric(float64(msgs)/s, "msgs/s")
	b.ReportMetric(float64(st.Syncs)/s, "syncs/s")
	b.ReportMetric(float64(st.Commits)/s, "commits/s")
	if st.Commits > 0 {
		b.ReportMetric(float64(msgs)/float64(st.Commits), "msgs/commit")
	}
}

// BenchmarkAppendClick is the click path: 256 goroutines, each appending single ~150-byte
// messages and waiting for durability, as the /c handler does.
func BenchmarkAppendClick(b *testing.B) {
	l, err := Open(Options{Dir: b.TempDir(), Partitions: benchPartitions})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	b.SetParallelism(max(256/runtime.GOMAXPROCS(0), 1))
	b.SetBytes(benchValueBytes)
	b.ReportAllocs()
	var seed atomic.Uint64
	start := time.Now()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(seed.Add(1), 0))
		msg := []eventlog.Message{{Value: benchValue()}}
		ctx := context.Background()
		for pb.Next() {
			msg[0].Partition = int32(rng.IntN(benchPartitions))
			if err := l.Append(ctx, msg); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	reportAppend(b, l, int64(b.N), time.Since(start))
}

// BenchmarkAppendBatch is the /events path: batches of 1000 messages over all partitions, from
// a few concurrent requests (batch/... is the number of concurrent appenders).
func BenchmarkAppendBatch(b *testing.B) {
	for _, conc := range []int{1, 8} {
		b.Run(fmt.Sprintf("appenders=%d", conc), func(b *testing.B) {
			l, err := Open(Options{Dir: b.TempDir(), Partitions: benchPartitions})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			const batch = 1000
			b.SetParallelism(max(conc/runtime.GOMAXPROCS(0), 1))
			b.SetBytes(batch * benchValueBytes)
			b.ReportAllocs()
			var seed atomic.Uint64
			start := time.Now()
			b.ResetTimer()
			run := func(pb *testing.PB) {
				rng := rand.New(rand.NewPCG(seed.Add(1), 0))
				msgs := make([]eventlog.Message, batch)
				v := benchValue()
				for i := range msgs {
					msgs[i] = eventlog.Message{Partition: int32(rng.IntN(benchPartitions)), Value: v}
				}
				ctx := context.Background()
				for pb.Next() {
					if err := l.Append(ctx, msgs); err != nil {
						b.Error(err)
						return
					}
				}
			}
			if conc == 1 {
				// RunParallel starts at least GOMAXPROCS goroutines; one appender needs its own loop.
				rng := rand.New(rand.NewPCG(1, 0))
				msgs := make([]eventlog.Message, batch)
				v := benchValue()
				for i := range msgs {
					msgs[i] = eventlog.Message{Partition: int32(rng.IntN(benchPartitions)), Value: v}
				}
				for range b.N {
					if err := l.Append(context.Background(), msgs); err != nil {
						b.Fatal(err)
					}
				}
			} else {
				b.RunParallel(run)
			}
			b.StopTimer()
			reportAppend(b, l, int64(b.N)*batch, time.Since(start))
		})
	}
}

// BenchmarkRead reads one partition sequentially with 1 MiB reads, as a consumer catching up
// does; one op is one message.
func BenchmarkRead(b *testing.B) {
	l, err := Open(Options{Dir: b.TempDir(), Partitions: 1, SegmentBytes: 32 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	const total = 400_000 // 66 MB: three segments
	msgs := make([]eventlog.Message, 10_000)
	v := benchValue()
	for i := range msgs {
		msgs[i].Value = v
	}
	ctx := context.Background()
	for range total / len(msgs) {
		if err := l.Append(ctx, msgs); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(benchValueBytes)
	b.ReportAllocs()
	start := time.Now()
	b.ResetTimer()
	var off int64
	for n := 0; n < b.N; {
		got, err := l.Read(ctx, 0, off, 1<<20)
		if err != nil {
			b.Fatal(err)
		}
		n += len(got)
		off += int64(len(got))
		if off == total {
			off = 0
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}
