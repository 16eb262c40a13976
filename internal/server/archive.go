package server

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/adpulse/adpulse/internal/archive"
	"github.com/adpulse/adpulse/internal/config"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/metricstore/pebblestore"
	"github.com/adpulse/adpulse/internal/reconcile"
)

// openArchive starts the process role's raw archive (--archive-url) and its hourly
// reconciliation (--reconcile), which corrects the metric store through store (so the top-N
// index sees the corrections). Embedded, the archiver owns every partition; a consumer
// group drives it with Archiver.Assign and Revoke.
func (a *App) openArchive(p *processRole, store metricstore.Store) error {
	if a.cfg.ArchiveURL == "off" {
		return nil
	}
	dest := a.cfg.ArchiveURL
	if dest == "" {
		dest = a.dir.archive()
	}
	var err error
	p.archiver, err = archive.New(archive.Options{
		Log:  a.b.log,
		Dest: dest,
		S3: archive.S3Options{
			Endpoint: a.cfg.ArchiveS3Endpoint, Region: a.cfg.ArchiveS3Region,
			AccessKey: a.cfg.ArchiveS3AccessKey, SecretKey: a.cfg.ArchiveS3SecretKey,
			Insecure: a.cfg.ArchiveS3Insecure, PathStyle: a.cfg.ArchiveS3PathStyle,
		},
		// With process nodes sharing the log, the group hands the partitions out.
		Unassigned:      a.cfg.SharedProcessing(),
		ArchiveInterval: a.cfg.ArchiveInterval,
		Slack:           a.cfg.StreamSlack(),
		Retention:       a.cfg.ArchiveRetention,
		Now:             a.now,
		Logger:          a.logger.With("component", "archive"),
	})
	if err != nil {
		return fmt.Errorf("open archive %s: %w", dest, err)
	}
	a.logger.Info("archiving the event log", "to", p.archiver.Target().String(), "interval", a.cfg.ArchiveInterval)
	a.components.Go("archive", p.archiver.Run)
	if a.cfg.Reconcile == "off" {
		return nil
	}
	if a.cfg.SharedProcessing() {
		// The hourly job recounts every partition of an hour: with the partitions spread over
		// process nodes, run `adpulse reconcile` from the cron role against the shared
		// archive instead.
		a.logger.Info("hourly reconciliation is off on process nodes that share the log")
		return nil
	}
	p.reconcile = reconcile.NewHourly(reconcile.Options{
		Archive:      p.archiver.Target(),
		Store:        store,
		Scanner:      p.metrics.scanner,
		MaxLateness:  a.cfg.MaxLateness,
		MaxClockSkew: a.cfg.MaxClockSkew,
		DedupSpan:    a.cfg.StreamDedupSpan(),
		Slack:        a.cfg.StreamSlack(),
		Logger:       a.logger.With("component", "reconcile"),
	}, filepath.Join(a.dir.reconcile(), "next-hour"), a.cfg.Reconcile == "repair", a.now)
	a.components.Go("hourly reconciliation", p.reconcile.Run)
	return nil
}

// archiveReadiness is the archive target's failure, for /readyz.
func (a *App) archiveReadiness() error {
	if a.process == nil || a.process.archiver == nil {
		return nil
	}
	if err := a.process.archiver.Err(); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	return nil
}

// ReconcileOffline runs `adpulse reconcile` on the data dir of a stopped embedded process:
// it takes the data dir's lock (so it refuses while `adpulse serve` runs there; the
// running process reconciles hourly by itself), opens its metric store and the archive
// of cfg, and checks, or repairs, the hours [from, to).
func ReconcileOffline(ctx context.Context, cfg config.Config, from, to time.Time, repair bool, progress func(done, total int, rows int64)) (*reconcile.Report, error) {
	dir, err := openDataDir(cfg.DataDir, 0)
	if err != nil {
		return nil, err
	}
	defer dir.close()
	store, err := pebblestore.Open(dir.metrics(), pebblestore.Options{MinuteRetention: cfg.MinuteRetention})
	if err != nil {
		return nil, fmt.Errorf("open metric store: %w", err)
	}
	defer store.Close()
	dest := cfg.ArchiveURL
	if dest == "" || dest == "off" {
		dest = dir.archive()
	}
	target, err := archive.OpenTarget(dest, archive.S3Options{
		Endpoint: cfg.ArchiveS3Endpoint, Region: cfg.ArchiveS3Region,
		AccessKey: cfg.ArchiveS3AccessKey, SecretKey: cfg.ArchiveS3SecretKey,
		Insecure: cfg.ArchiveS3Insecure, PathStyle: cfg.ArchiveS3PathStyle,
	})
	if err != nil {
		return nil, err
	}
	return reconcile.Run(ctx, reconcile.Options{
		Archive:      target,
		Store:        store,
		MaxLateness:  cfg.MaxLateness,
		MaxClockSkew: cfg.MaxClockSkew,
		DedupSpan:    cfg.StreamDedupSpan(),
		Slack:        cfg.StreamSlack(),
		Progress:     progress,
	}, from, to, repair)
}
