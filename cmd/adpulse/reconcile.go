package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"syscall"
	"time"

	"github.com/adpulse/adpulse/internal/config"
	"github.com/adpulse/adpulse/internal/server"
)

// reconcileCmd is `adpulse reconcile --from T --to T [--repair]`: it takes serve's flags
// (the same data dir, archive and stream settings the process ran with) plus the range.
func reconcileCmd(args []string, stdout, stderr io.Writer) error {
	cfg := config.Default()
	fs := flag.NewFlagSet("reconcile", flag.ContinueOnError)
	fs.SetOutput(stderr)
	serveFlags(fs, &cfg)
	var fromS, toS string
	var repair bool
	fs.StringVar(&fromS, "from", "", "start of the range, RFC 3339 (floored to the hour; required)")
	fs.StringVar(&toS, "to", "", "end of the range, RFC 3339 (ceiled to the hour; required)")
	fs.BoolVar(&repair, "repair", false, "write the corrections to the metric store (idempotent) and mark the hours reconciled")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	from, err := time.Parse(time.RFC3339, fromS)
	if err != nil {
		return usageError{fmt.Errorf("--from %q: want RFC 3339 such as 2026-11-21T10:00:00Z", fromS)}
	}
	to, err := time.Parse(time.RFC3339, toS)
	if err != nil {
		return usageError{fmt.Errorf("--to %q: want RFC 3339 such as 2026-11-21T11:00:00Z", toS)}
	}
	if !from.Before(to) {
		return usageError{errors.New("--from must be before --to")}
	}
	if err := cfg.Validate(); err != nil {
		return usageError{err}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	last := time.Now()
	progress := func(done, total int, rows int64) {
		if time.Since(last) >= 5*time.Second || done == total {
			last = time.Now()
			fmt.Fprintf(stderr, "reconcile: %d/%d archive files, %d rows\n", done, total, rows)
		}
	}
	rep, err := server.ReconcileOffline(ctx, cfg, from, to, repair, progress)
	if rep != nil {
		if werr := rep.WriteTable(stdout); werr != nil {
			return werr
		}
	}
	if err != nil {
		return err
	}
	if len(rep.Diffs) > 0 {
		if repair {
			return fmt.Errorf("%d buckets differed from the archive (repaired)", len(rep.Diffs))
		}
		return fmt.Errorf("%d buckets differ from the archive (run again with --repair to correct them)", len(rep.Diffs))
	}
	return nil
}
