package server

import (
	"context"
	"fmt"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/metricstore/clickhousestore"
	"github.com/adpulse/adpulse/internal/metricstore/pebblestore"
	"github.com/adpulse/adpulse/internal/query/topn"
)

// metricsSeam is the metric store, whichever engine is behind it (--metric-store): the
// interface, one stats struct, the engine's background work and the minute scan the top-N
// index is rebuilt from. Shared is set for a store every process of the deployment writes
// and reads (ClickHouse), whose commits a query node must follow to keep its top-N index.
type metricsSeam struct {
	store    metricstore.Store
	scanner  topn.MinuteScanner
	stats    func() metricsStats
	run      func(ctx context.Context) error
	follower *clickhousestore.Store // nil unless shared
}

type metricsStats struct {
	Applies, Conflicts int64
	ApplyTime          time.Duration
	DiskBytes          uint64
	Queries            int64
	// The embedded store's block cache (zero for ClickHouse): every block read from the
	// files is a miss, compactions' and the top-N rebuild's scans included.
	BlockCacheHits, BlockCacheMisses int64
}

func (a *App) openMetricStore(ctx context.Context) (*metricsSeam, error) {
	logger := a.logger.With("component", "metricstore")
	if a.cfg.MetricStore == "clickhouse" {
		s, err := clickhousestore.Open(ctx, clickhousestore.Options{
			Addr:            a.cfg.ClickHouseAddr,
			Database:        a.cfg.ClickHouseDatabase,
			Username:        a.cfg.ClickHouseUser,
			Password:        a.cfg.ClickHousePassword,
			Timeout:         max(a.cfg.BackendTimeout, 5*time.Second),
			MinuteRetention: a.cfg.MinuteRetention,
			Now:             a.now,
			Logger:          logger,
		})
		if err != nil {
			return nil, fmt.Errorf("open metric store: %w", err)
		}
		return &metricsSeam{
			store: s, scanner: s, run: s.Run, follower: s,
			stats: func() metricsStats {
				st := s.Stats()
				return metricsStats{Applies: st.Applies, Conflicts: st.Conflicts, ApplyTime: time.Duration(st.ApplyNanos), Queries: st.Queries}
			},
		}, nil
	}
	start := time.Now()
	s, err := pebblestore.Open(a.dir.metrics(), pebblestore.Options{
		MinuteRetention: a.cfg.MinuteRetention,
		Now:             a.now,
		Logger:          logger,
	})
	if err != nil {
		return nil, fmt.Errorf("open metric store: %w", err)
	}
	// The open replays the write-ahead log written since the last flush: this line shows
	// what that costs a restart.
	logger.Info("metric store opened", "took", time.Since(start).Round(time.Millisecond))
	return &metricsSeam{
		store: s, scanner: s, run: s.Run,
		stats: func() metricsStats {
			st := s.Stats()
			return metricsStats{Applies: st.Applies, Conflicts: st.Conflicts, ApplyTime: time.Duration(st.ApplyNanos), DiskBytes: st.DiskBytes, Queries: st.Queries,
				BlockCacheHits: st.BlockCacheHits, BlockCacheMisses: st.BlockCacheMisses}
		},
	}, nil
}

// followInterval is how often a query node reads the commits of a shared metric store into
// its top-N index: the freshness of /metrics/top there.
const followInterval = 250 * time.Millisecond

// followCommits feeds every commit of the shared store after cur to the top-N index, in
// order, until ctx is done. A read that fails is retried (the index only lags); the error
// shows in readiness through the store's ping.
func followCommits(ctx context.Context, s *clickhousestore.Store, cur clickhousestore.Cursor, top *topn.Index, onErr func(error)) error {
	t := time.NewTicker(followInterval)
	defer t.Stop()
	var batch []metricstore.Delta
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		batch = batch[:0]
		next, err := s.Follow(ctx, cur, func(d *metricstore.Delta) error {
			batch = append(batch, *d)
			return nil
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			onErr(err)
			continue
		}
		onErr(nil)
		if len(batch) > 0 {
			top.Add(batch)
		}
		cur = next
	}
}
