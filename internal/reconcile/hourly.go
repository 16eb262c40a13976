package reconcile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
)

// Hourly reconciles each closed hour once it is ready (final in the store and archived),
// oldest first, on a process node. Its progress, the next hour to check, is a small file
// written atomically, so a restart neither skips nor repeats an hour (a repeat would be
// harmless: repairs are idempotent).
//
// It reads the archive incrementally: one counter carries each partition's duplicate filter
// from hour to hour, so an hour costs the reading of about an hour of archive. Only the
// first hour after a start reads the filter's span (DedupSpan) before it.
type Hourly struct {
	opts   Options
	repair bool
	state  string
	every  time.Duration
	now    func() time.Time

	// count is the archive read so far (nil until the first hour, and after a failure
	// that may have left it part way through a file).
	count *counter

	mu    sync.Mutex
	stats HourlyStats
}

// HourlyStats are the counters of an Hourly since start.
type HourlyStats struct {
	Hours       int64     // hours reconciled
	Diffs       int64     // buckets found different
	Repaired    int64     // buckets corrected
	Failures    int64     // runs that failed (other than not ready)
	Rows        int64     // archive rows read
	Next        time.Time // the next hour to check
	LastSeconds float64   // duration of the last run
}

// NewHourly returns an Hourly keeping its progress in the file state; repair corrects
// what it finds. The first start begins at the current hour.
func NewHourly(o Options, state string, repair bool, now func() time.Time) *Hourly {
	o.setDefaults()
	if now == nil {
		now = time.Now
	}
	return &Hourly{opts: o, repair: repair, state: state, every: time.Minute, now: now}
}

// Stats returns a snapshot of the counters.
func (h *Hourly) Stats() HourlyStats {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stats
}

// Run checks every minute for ready hours until ctx ends; it returns nil then, and an error
// only when its progress file cannot be read or written.
func (h *Hourly) Run(ctx context.Context) error {
	next, err := h.load()
	if err != nil {
		return err
	}
	for {
		for next.Add(time.Hour).Before(h.now()) {
			err := h.one(ctx, next)
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, ErrNotReady) {
				break
			}
			if err != nil && !errors.Is(err, ErrGaps) && !errors.Is(err, metricstore.ErrExpired) {
				// Counted and logged; the hour is tried again next time. An archive with
				// gaps or a store past its minute retention will not get better: those
				// hours are left behind (logged, counted).
				break
			}
			next = next.Add(time.Hour)
			if err := h.save(next); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(h.every):
		}
	}
}

func (h *Hourly) one(ctx context.Context, hour time.Time) error {
	t0 := time.Now()
	if h.count == nil {
		h.count = newCounter(&h.opts, hour, time.Time{})
	}
	rep, err := check(ctx, &h.opts, hour, hour.Add(time.Hour), h.repair, h.count, t0)
	switch {
	case err == nil || errors.Is(err, ErrGaps) || errors.Is(err, metricstore.ErrExpired):
		h.count.forget(hour.Add(time.Hour)) // the hour is done with (Run moves on)
	case errors.Is(err, ErrNotReady):
	default:
		// Whatever went wrong may have stopped a read part way: start the next run afresh.
		h.count = nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stats.LastSeconds = time.Since(t0).Seconds()
	if rep != nil {
		h.stats.Rows += rep.Rows
	}
	switch {
	case err != nil && ctx.Err() != nil:
		return err // stopping: not a failure
	case errors.Is(err, ErrNotReady):
		h.opts.Logger.Debug("reconcile: hour not ready", "hour", hour, "why", err)
		return err
	case err != nil:
		h.stats.Failures++
		h.opts.Logger.Error("reconcile: hour failed; trying again later", "hour", hour, "err", err)
		return err
	}
	h.stats.Hours++
	h.stats.Diffs += int64(len(rep.Diffs))
	h.stats.Repaired += int64(rep.Repaired)
	level := h.opts.Logger.Info
	if len(rep.Diffs) > 0 {
		level = h.opts.Logger.Warn
	}
	level("reconcile: hour checked against the archive", "hour", hour, "buckets", rep.Buckets, "differ", len(rep.Diffs),
		"repaired", rep.Repaired, "rows", rep.Rows, "took", rep.Took.Round(time.Millisecond))
	return nil
}

func (h *Hourly) load() (time.Time, error) {
	b, err := os.ReadFile(h.state)
	var next time.Time
	switch {
	case errors.Is(err, os.ErrNotExist):
		next = h.now().UTC().Truncate(time.Hour)
		if err := h.save(next); err != nil {
			return next, err
		}
	case err != nil:
		return next, fmt.Errorf("reconcile: read progress: %w", err)
	default:
		next, err = time.Parse(time.RFC3339, strings.TrimSpace(string(b)))
		if err != nil || next.Truncate(time.Hour) != next {
			return next, fmt.Errorf("reconcile: bad progress file %s: %q", h.state, b)
		}
	}
	h.mu.Lock()
	h.stats.Next = next
	h.mu.Unlock()
	return next, nil
}

// save writes the next hour atomically (temporary file, fsync, rename).
func (h *Hourly) save(next time.Time) error {
	if err := os.MkdirAll(filepath.Dir(h.state), 0o750); err != nil {
		return fmt.Errorf("reconcile: save progress: %w", err)
	}
	tmp := h.state + ".tmp"
	f, err := os.Create(tmp)
	if err == nil {
		_, err = f.WriteString(next.UTC().Format(time.RFC3339) + "\n")
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		err = os.Rename(tmp, h.state)
	}
	if err != nil {
		return fmt.Errorf("reconcile: save progress: %w", err)
	}
	h.mu.Lock()
	h.stats.Next = next
	h.mu.Unlock()
	return nil
}
