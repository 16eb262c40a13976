package locallog

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/eventlog/eventlogtest"
)

const (
	benchPartitions = 8
	benchValueBytes = eventlogtest.BenchValueBytes
)

var benchValue = eventlogtest.BenchValue

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

// BenchmarkAppendClick is the click path: 256 goroutines appending single messages.
func BenchmarkAppendClick(b *testing.B) {
	l, err := Open(Options{Dir: b.TempDir(), Partitions: benchPartitions})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	elapsed := eventlogtest.BenchAppendClicks(b, l)
	reportAppend(b, l, int64(b.N), elapsed)
}

// BenchmarkAppendBatch is the /events path: batches of 1000 messages from a few concurrent
// requests (appenders=N).
func BenchmarkAppendBatch(b *testing.B) {
	for _, conc := range []int{1, 8} {
		b.Run(fmt.Sprintf("appenders=%d", conc), func(b *testing.B) {
			l, err := Open(Options{Dir: b.TempDir(), Partitions: benchPartitions})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			const batch = 1000
			elapsed := eventlogtest.BenchAppendBatches(b, l, conc, batch)
			reportAppend(b, l, int64(b.N)*batch, elapsed)
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

// BenchmarkReadTail is a caught-up consumer woken by a group commit: each op reads the last
// few records of the partition (what one commit published) with a 1 MiB budget. Its B/op is
// what every reader of the log allocates per wake-up on the click path.
func BenchmarkReadTail(b *testing.B) {
	l, err := Open(Options{Dir: b.TempDir(), Partitions: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	const tailRecords = 4
	msgs := make([]eventlog.Message, 1_000)
	v := benchValue()
	for i := range msgs {
		msgs[i].Value = v
	}
	ctx := context.Background()
	if err := l.Append(ctx, msgs); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		got, err := l.Read(ctx, 0, int64(len(msgs)-tailRecords), 1<<20)
		if err != nil {
			b.Fatal(err)
		}
		if len(got) != tailRecords {
			b.Fatalf("read %d records, want %d", len(got), tailRecords)
		}
	}
}
