package server

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/config"
	"github.com/adpulse/adpulse/internal/dedup"
	"github.com/adpulse/adpulse/internal/dedup/redisdedup"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/eventlog/kafkalog"
	"github.com/adpulse/adpulse/internal/eventlog/locallog"
	"github.com/adpulse/adpulse/internal/ingest"
	"github.com/cockroachdb/pebble/vfs"
	_ "github.com/go-sql-driver/mysql" // catalog on MySQL/MariaDB (--catalog-dsn mysql://...)
	_ "github.com/jackc/pgx/v5/stdlib" // catalog on PostgreSQL (--catalog-dsn postgres://...)
	_ "modernc.org/sqlite"             // the embedded catalog database
)

// backends are the seams every role shares: the event log, the idempotency keys and the
// catalog. Each seam is an interface plus what the process needs of its engine beyond the
// interface: a stats function with one struct per seam (whatever engine is behind it) and
// the engine's background work, so nothing else in the process knows which engine it is.
type backends struct {
	log      eventlog.Log
	logStats func() logStats
	keys     dedup.Store
	keyCount func() int64 // idempotency keys held (or reserved, for Redis)
	catalog  *catalog.Catalog
	// keySnapshots writes the in-process keys' snapshots (nil with Redis dedup).
	keySnapshots *ingest.KeySnapshotter

	// background work of the engines, run in the component group (guarded by mu: the
	// keys open beside the catalog)
	mu         sync.Mutex
	components []namedComponent
}

// addComponents adds background work for the component group.
func (b *backends) addComponents(cs ...namedComponent) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.components = append(b.components, cs...)
}

type namedComponent struct {
	name string
	run  func(ctx context.Context) error
}

// logStats is the event log's figures, whichever engine it is. Fields an engine does not
// have stay zero (and partitions empty).
type logStats struct {
	AppendedMessages, AppendedBytes, Commits int64
	Syncs, Checkpoints, SegmentsDeleted      int64
	Rollbacks                                int64
	SyncTime                                 time.Duration
	AppendWait                               locallog.Histogram // empty for Kafka
	Partitions                               []logPartitionStats
}

type logPartitionStats struct{ Start, End, Bytes int64 }

// openLog opens the event log: local segment files, or a Kafka topic.
func (b *backends) openLog(ctx context.Context, cfg *config.Config, dir *dataDir, logger *slog.Logger) error {
	logger = logger.With("component", "eventlog")
	if cfg.EventLog == "kafka" {
		l, err := kafkalog.Open(ctx, kafkalog.Options{
			Brokers:           cfg.KafkaBrokers,
			Topic:             cfg.KafkaTopic,
			Partitions:        cfg.Partitions,
			ReplicationFactor: cfg.KafkaReplicationFactor,
			DeliveryTimeout:   cfg.KafkaDeliveryTimeout,
			TopicConfigs:      map[string]string{"retention.ms": fmt.Sprint(cfg.LogRetention.Milliseconds())},
			Logger:            logger,
		})
		if err != nil {
			return fmt.Errorf("open Kafka event log: %w", err)
		}
		b.log = l
		b.logStats = func() logStats {
			ks := l.Stats()
			return logStats{AppendedMessages: ks.AppendedMessages, AppendedBytes: ks.AppendedBytes, Commits: ks.ProduceRequests}
		}
		return nil
	}
	t0 := time.Now()
	l, err := locallog.Open(locallog.Options{
		Dir:          dir.log(),
		Partitions:   cfg.Partitions,
		SegmentBytes: cfg.SegmentBytes,
		Retention:    cfg.LogRetention,
		Logger:       logger,
	})
	if err != nil {
		return fmt.Errorf("open event log: %w", err)
	}
	logger.Info("event log opened", "partitions", l.Partitions(), "took", time.Since(t0).Round(time.Millisecond))
	b.log = l
	b.logStats = func() logStats {
		ls := l.Stats()
		out := logStats{AppendedMessages: ls.AppendedMessages, AppendedBytes: ls.AppendedBytes, Commits: ls.Commits,
			Syncs: ls.Syncs, Checkpoints: ls.Checkpoints, SyncTime: ls.SyncTime, SegmentsDeleted: ls.SegmentsDeleted, Rollbacks: ls.Rollbacks,
			AppendWait: ls.AppendWait}
		for _, ps := range ls.Partitions {
			out.Partitions = append(out.Partitions, logPartitionStats{Start: ps.Start, End: ps.End, Bytes: ps.Bytes})
		}
		return out
	}
	// Retention, and the way a write failure the log cannot roll back stops the process.
	b.addComponents(namedComponent{"event log", l.Run})
	return nil
}

// openDedup opens the idempotency-key store. The in-process one is rebuilt from the log
// (which is what makes a key and its event durable together); Redis keeps its own.
func (b *backends) openDedup(ctx context.Context, cfg *config.Config, dir *dataDir, now func() time.Time, logger *slog.Logger) error {
	if cfg.Dedup == "redis" {
		s, err := redisdedup.Open(ctx, redisdedup.Options{
			Addr:       cfg.RedisAddr,
			Password:   cfg.RedisPassword,
			Window:     cfg.DedupWindow,
			ReserveTTL: cfg.DedupReserveTTL,
			Logger:     logger.With("component", "dedup"),
		})
		if err != nil {
			return fmt.Errorf("open Redis dedup: %w", err)
		}
		b.keys = s
		b.keyCount = func() int64 { return s.Stats().HeldNow }
		return nil
	}
	t0 := time.Now()
	snap := ingest.KeySnapshot{FS: vfs.Default, Path: dir.dedupSnapshot(), Log: b.log, Logger: logger.With("component", "dedup")}
	if err := mkdirPrivate(dir.snapshots()); err != nil {
		return fmt.Errorf("create snapshots dir: %w", err)
	}
	ld, err := snap.Load(ctx, cfg.DedupWindow, now())
	if err != nil {
		return err
	}
	mem := ld.Keys
	if ld.Offsets != nil {
		logger.Info("dedup keys loaded from the snapshot and the log after it", "tail_events", ld.Events, "keys", mem.Len(), "took", time.Since(t0).Round(time.Millisecond))
	} else {
		logger.Info("dedup keys restored from the log", "events", ld.Events, "keys", mem.Len(), "took", time.Since(t0).Round(time.Millisecond), "snapshot", ld.Why)
	}
	b.keys = mem
	b.keyCount = mem.Len
	b.keySnapshots = ingest.NewKeySnapshotter(snap, mem, ld.Offsets, now)
	b.addComponents(
		namedComponent{"dedup sweep", func(ctx context.Context) error { return mem.Run(ctx, time.Minute, now) }},
		namedComponent{"dedup snapshots", b.keySnapshots.Run})
	return nil
}

// openCatalog opens the catalog: SQLite in the data dir, or the shared database.
func (b *backends) openCatalog(ctx context.Context, cfg *config.Config, dir *dataDir, logger *slog.Logger) error {
	opts := catalog.Options{
		DSN:      dir.catalogDB(),
		AdminKey: cfg.AdminKey,
		Logger:   logger.With("component", "catalog"),
	}
	if cfg.CatalogSnapshotInterval > 0 {
		if err := mkdirPrivate(dir.snapshots()); err != nil {
			return fmt.Errorf("create snapshots dir: %w", err)
		}
		opts.SnapshotPath, opts.SnapshotInterval = dir.catalogSnapshot(), cfg.CatalogSnapshotInterval
	}
	if cfg.CatalogDSN != "" {
		var err error
		if opts.Dialect, opts.Driver, opts.DSN, err = catalog.ParseDSN(cfg.CatalogDSN); err != nil {
			return fmt.Errorf("--catalog-dsn: %w", err)
		}
	}
	c, err := catalog.Open(ctx, opts)
	if err != nil {
		return fmt.Errorf("open catalog: %w", err)
	}
	b.catalog = c
	// The change feed: writes made through any process are in force here within 2 s.
	b.addComponents(namedComponent{"catalog feed", c.Run})
	return nil
}

// readiness checks the backends: a log that failed on its own, and every backend on the
// network answering within timeout.
func (b *backends) readiness(timeout time.Duration) error {
	if l, ok := b.log.(interface{ Err() error }); ok {
		if err := l.Err(); err != nil {
			return fmt.Errorf("event log: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for _, s := range []struct {
		name string
		b    any
	}{{"event log", b.log}, {"dedup store", b.keys}} {
		if p, ok := s.b.(interface{ Ping(context.Context) error }); ok {
			if err := p.Ping(ctx); err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
		}
	}
	return nil
}

// close closes the backends in reverse order of opening.
func (b *backends) close() []error {
	var errs []error
	if b.catalog != nil {
		errs = append(errs, b.catalog.Close())
	}
	if b.keys != nil {
		errs = append(errs, b.keys.Close())
	}
	if b.log != nil {
		errs = append(errs, b.log.Close())
	}
	return errs
}
