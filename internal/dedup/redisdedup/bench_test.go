package redisdedup

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/dedup"
)

// BenchmarkReserveCommit is the /events path: reserve a batch of 1000 new keys, then commit
// them, from N concurrent requests (conc=N). One op is one batch. script=perkey is the mode
// used with cluster clients.
func BenchmarkReserveCommit(b *testing.B) {
	for _, bc := range []struct {
		perKey bool
		conc   int
	}{{false, 1}, {false, 8}, {true, 1}, {true, 8}} {
		mode := "script=batch"
		if bc.perKey {
			mode = "script=perkey"
		}
		conc := bc.conc
		b.Run(fmt.Sprintf("%s/conc=%d", mode, conc), func(b *testing.B) {
			rdb := testClient(b)
			s := openStore(b, Options{Client: rdb, Prefix: testPrefix(b, rdb), Window: time.Minute})
			s.perKey = bc.perKey
			const batch = 1000
			var next atomic.Int64
			start := time.Now()
			b.SetParallelism(max(conc/runtime.GOMAXPROCS(0), 1))
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				keys := make([]string, batch)
				out := make([]dedup.Status, batch)
				ctx := context.Background()
				for pb.Next() {
					n := next.Add(1)
					for i := range keys {
						keys[i] = fmt.Sprintf("bench-%d-%d", n, i)
					}
					now := time.Now()
					if err := s.Reserve(ctx, keys, now, out); err != nil {
						b.Error(err)
						return
					}
					for _, st := range out {
						if st != dedup.Reserved {
							b.Errorf("fresh key: %v", st)
							return
						}
					}
					if err := s.Commit(ctx, keys, now); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N*batch)/time.Since(start).Seconds(), "keys/s")
		})
	}
}
