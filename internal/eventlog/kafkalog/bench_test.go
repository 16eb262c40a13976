package kafkalog

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/eventlog/eventlogtest"
)

// The benchmarks run against kfake, in process: no network, no disk, no replication. They
// show the client-side cost and how well Appends share produce requests, not what a real
// cluster does.

const (
	benchPartitions = 8
	benchValueBytes = eventlogtest.BenchValueBytes
)

var benchValue = eventlogtest.BenchValue

func benchLog(b *testing.B, linger time.Duration) *Log {
	c := newCluster(b, kfake.NumBrokers(1), kfake.SeedTopics(benchPartitions, testTopic))
	o := testOptions(c, benchPartitions)
	o.Linger = linger
	return open(b, o)
}

func reportAppend(b *testing.B, l *Log, msgs int64, elapsed time.Duration) {
	st := l.Stats()
	s := elapsed.Seconds()
	b.ReportMetric(float64(msgs)/s, "msgs/s")
	b.ReportMetric(float64(st.ProduceRequests)/s, "requests/s")
	if st.ProduceRequests > 0 {
		b.ReportMetric(float64(msgs)/float64(st.ProduceRequests), "msgs/request")
	}
}

// BenchmarkAppendClick is the click path: 256 goroutines appending single messages.
func BenchmarkAppendClick(b *testing.B) {
	for _, linger := range []time.Duration{0, time.Millisecond} {
		b.Run(fmt.Sprintf("linger=%v", linger), func(b *testing.B) {
			l := benchLog(b, linger)
			elapsed := eventlogtest.BenchAppendClicks(b, l)
			reportAppend(b, l, int64(b.N), elapsed)
		})
	}
}

// BenchmarkAppendBatch is the /events path: batches of 1000 messages from a few concurrent
// requests (appenders=N).
func BenchmarkAppendBatch(b *testing.B) {
	for _, conc := range []int{1, 8} {
		b.Run(fmt.Sprintf("appenders=%d", conc), func(b *testing.B) {
			l := benchLog(b, 0)
			const batch = 1000
			elapsed := eventlogtest.BenchAppendBatches(b, l, conc, batch)
			reportAppend(b, l, int64(b.N)*batch, elapsed)
		})
	}
}

// BenchmarkRead follows the partitions in turn with 64 KiB reads, as the aggregator does.
func BenchmarkRead(b *testing.B) {
	l := benchLog(b, 0)
	const perPartition = 20_000
	v := benchValue()
	msgs := make([]eventlog.Message, 1000)
	for range benchPartitions * perPartition / len(msgs) {
		for i := range msgs {
			msgs[i] = eventlog.Message{Partition: int32(i % benchPartitions), Value: v}
		}
		if err := l.Append(context.Background(), msgs); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(benchValueBytes)
	b.ReportAllocs()
	ctx := context.Background()
	var next [benchPartitions]int64
	b.ResetTimer()
	for n := 0; n < b.N; {
		for p := range benchPartitions {
			if next[p] >= perPartition {
				next[p] = 0
			}
			got, err := l.Read(ctx, p, next[p], 64<<10)
			if err != nil || len(got) == 0 {
				b.Fatalf("Read(%d, %d) = %d, %v", p, next[p], len(got), err)
			}
			next[p] = got[len(got)-1].Offset + 1
			n += len(got)
		}
	}
	b.StopTimer()
	st := l.Stats()
	b.ReportMetric(float64(st.Fetches)/float64(st.Reads), "fetches/read")
}
