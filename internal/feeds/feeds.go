// Package feeds loads the data-science feeds into adpulse: per-catalog auto-CPC bids and
// per-campaign budget recommendations, dropped as files into a watched location (a local
// directory or s3://bucket/prefix) by a batch job.
//
// Layout: <root>/<feed>/<version>/<files> plus _manifest.json, which lists every file with
// its row count and SHA-256. The manifest's arrival marks the version complete; a version
// directory without one is not touched. The Loader polls the location, and for every
// version it has not processed before reads the files the manifest names, checks their bytes
// and counts, validates every row (CSV, NDJSON or Parquet, read by internal/bulkimport's
// readers) and loads the version in one transaction of the catalog database (Store), which
// makes it the active version. Anything wrong (a missing file, a checksum, a count, one bad
// row anywhere) rejects the whole version, with the file, row and field in the reason.
//
// Invariants:
//   - A version is all or nothing: its rows and the active pointer are one transaction.
//   - A version is processed once across restarts and loaders: its row in feed_versions is
//     written by that transaction (or by the rejection) and never deleted; see store.go.
//   - Transient failures (the location or the database unreachable) record nothing: the
//     version is tried again at the next poll.
//   - Bids (the auto_cpc version in memory) changes only by swapping a whole map: a lookup sees
//     one version, never a mix.
package feeds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/adpulse/adpulse/internal/archive"
	"github.com/adpulse/adpulse/internal/bulkimport"
)

// Defaults of Options.
const (
	DefaultInterval     = time.Minute
	DefaultKeep         = 5
	DefaultMaxRows      = 10_000_000
	DefaultMaxFileBytes = 1 << 30
)

// Options configure a Loader.
type Options struct {
	// Location is where feeds are dropped: the archive package's Target (a directory or an
	// S3 prefix).
	Location archive.Target
	Store    *Store
	// CampaignExists checks the campaign ids of budget recommendations (nil: not checked).
	CampaignExists func(id string) bool
	Interval       time.Duration // between polls; default DefaultInterval
	Keep           int           // loaded versions whose rows are kept per feed; default DefaultKeep
	MaxRows        int64         // rows of one version; default DefaultMaxRows
	MaxFileBytes   int64         // bytes of one file; default DefaultMaxFileBytes
	// Timeout bounds one version's load (reading and the transaction); default 10 minutes.
	Timeout    time.Duration
	Registerer prometheus.Registerer // nil: no metrics
	Logger     *slog.Logger
}

// Loader polls the location and loads complete versions.
type Loader struct {
	o   Options
	log *slog.Logger
	m   *metrics

	mu       sync.Mutex
	lastErr  error // of the last poll
	warnedAt map[string]time.Time
}

// NewLoader returns a loader; Run polls.
func NewLoader(o Options) (*Loader, error) {
	if o.Location == nil || o.Store == nil {
		return nil, errors.New("feeds: Location and Store are required")
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Keep <= 0 {
		o.Keep = DefaultKeep
	}
	if o.MaxRows <= 0 || o.MaxRows > MaxRowsLimit {
		o.MaxRows = min(DefaultMaxRows, MaxRowsLimit)
	}
	if o.MaxFileBytes <= 0 {
		o.MaxFileBytes = DefaultMaxFileBytes
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	l := &Loader{o: o, log: o.Logger, warnedAt: make(map[string]time.Time)}
	var err error
	if l.m, err = newMetrics(o.Registerer); err != nil {
		return nil, err
	}
	return l, nil
}

// Run polls until ctx ends. A failing poll is logged and retried, not returned: feeds are
// not worth stopping the click path for.
func (l *Loader) Run(ctx context.Context) error {
	t := time.NewTicker(l.o.Interval)
	defer t.Stop()
	for {
		if err := l.Poll(ctx); err != nil && ctx.Err() == nil {
			l.log.Warn("feeds: poll failed; retrying", "location", l.o.Location.String(), "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Err is the error of the last poll, nil when it succeeded.
func (l *Loader) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastErr
}

// Poll processes every complete version not processed yet, feed by feed, versions in name
// order. It returns the first transient error (the rest of the poll still runs).
func (l *Loader) Poll(ctx context.Context) error {
	var first error
	for _, feed := range FeedNames() {
		if err := l.pollFeed(ctx, defs[feed]); err != nil && first == nil {
			first = err
		}
	}
	l.mu.Lock()
	l.lastErr = first
	l.mu.Unlock()
	return first
}

func (l *Loader) pollFeed(ctx context.Context, def *feedDef) error {
	dirs, err := l.o.Location.List(ctx, def.name+"/")
	if err != nil {
		return fmt.Errorf("list %s: %w", def.name, err)
	}
	var first error
	for _, d := range dirs {
		version, isDir := strings.CutSuffix(strings.TrimPrefix(d, def.name+"/"), "/")
		if !isDir {
			continue // a stray file beside the versions
		}
		if !ValidName(version) {
			l.warnOnce(d, "feeds: ignoring a version directory whose name is not 1-64 characters of [A-Za-z0-9._-]", "dir", d)
			continue
		}
		if err := l.process(ctx, def, version); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// warnOnce logs a problem with the location at most once an hour per key.
func (l *Loader) warnOnce(key, msg string, args ...any) {
	l.mu.Lock()
	at, ok := l.warnedAt[key]
	if !ok || time.Since(at) > time.Hour {
		l.warnedAt[key] = time.Now()
	}
	l.mu.Unlock()
	if !ok || time.Since(at) > time.Hour {
		l.log.Warn(msg, args...)
	}
}

// rejection is a reason to reject a version, as opposed to a transient failure.
type rejection struct{ reason string }

func (r *rejection) Error() string { return r.reason }

func reject(format string, args ...any) error { return &rejection{fmt.Sprintf(format, args...)} }

// process loads or rejects one version, unless it was processed before or is incomplete.
func (l *Loader) process(ctx context.Context, def *feedDef, version string) error {
	known, err := l.o.Store.Known(ctx, def.name, version)
	if err != nil {
		return fmt.Errorf("feeds: %s/%s: %w", def.name, version, err)
	}
	if known {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, l.o.Timeout)
	defer cancel()
	prefix := def.name + "/" + version + "/"
	raw, err := l.o.Location.Get(ctx, prefix+ManifestName)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // not complete yet
	}
	if err != nil {
		return fmt.Errorf("feeds: %s: %w", prefix+ManifestName, err)
	}
	start := time.Now()
	v := VersionInfo{Feed: def.name, Version: version}
	rows, files, err := l.read(ctx, def, version, raw)
	v.Files = files
	var rej *rejection
	switch {
	case errors.As(err, &rej):
		v.Reason = rej.reason
		if err := l.o.Store.Reject(ctx, v); err != nil && !errors.Is(err, ErrExists) {
			return err
		}
		l.m.rejected.WithLabelValues(def.name).Inc()
		l.log.Warn("feeds: version rejected", "feed", def.name, "version", version, "reason", rej.reason)
		return nil
	case err != nil:
		return fmt.Errorf("feeds: %s/%s: %w", def.name, version, err)
	}
	v.Rows = int64(len(rows))
	if err := l.o.Store.load(ctx, def, v, rows, l.o.Keep); err != nil {
		if errors.Is(err, ErrExists) {
			return nil // another loader was first
		}
		return err
	}
	l.m.loaded.WithLabelValues(def.name).Inc()
	l.m.rows.WithLabelValues(def.name).Add(float64(len(rows)))
	l.m.lastLoad.WithLabelValues(def.name).Set(float64(time.Now().UnixMilli()) / 1e3)
	l.log.Info("feeds: version loaded and active", "feed", def.name, "version", version, "rows", len(rows), "files", files,
		"took", time.Since(start).Round(time.Millisecond))
	return nil
}

// read reads and validates every file of a version. A *rejection error rejects the version;
// any other error is transient.
func (l *Loader) read(ctx context.Context, def *feedDef, version string, rawManifest []byte) ([]row, int, error) {
	m, err := ParseManifest(rawManifest)
	if err != nil {
		return nil, 0, reject("%s: %v", ManifestName, err)
	}
	if m.Feed != "" && m.Feed != def.name {
		return nil, len(m.Files), reject("%s: feed %q is not the directory's %q", ManifestName, m.Feed, def.name)
	}
	if m.Version != "" && m.Version != version {
		return nil, len(m.Files), reject("%s: version %q is not the directory's %q", ManifestName, m.Version, version)
	}
	if m.Rows() > l.o.MaxRows {
		return nil, len(m.Files), reject("%s: %d rows, more than the limit of %d", ManifestName, m.Rows(), l.o.MaxRows)
	}
	prefix := def.name + "/" + version + "/"
	rows := make([]row, 0, m.Rows())
	seen := make(map[string]string, m.Rows()) // key -> "file row N"
	for _, f := range m.Files {
		format, err := bulkimport.FormatOf(f.Path)
		if err != nil {
			return nil, len(m.Files), reject("%s: not .csv, .ndjson, .jsonl or .parquet", f.Path)
		}
		data, err := archive.GetAtMost(ctx, l.o.Location, prefix+f.Path, l.o.MaxFileBytes)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, len(m.Files), reject("%s: listed in the manifest but missing", f.Path)
		}
		if errors.Is(err, archive.ErrTooLarge) {
			return nil, len(m.Files), reject("%s: more than the limit of %d bytes", f.Path, l.o.MaxFileBytes)
		}
		if err != nil {
			return nil, len(m.Files), err
		}
		sum := sha256.Sum256(data)
		if got := hex.EncodeToString(sum[:]); got != f.SHA256 {
			return nil, len(m.Files), reject("%s: sha256 is %s, the manifest says %s", f.Path, got, f.SHA256)
		}
		src, err := bulkimport.OpenBytes(data, format, def.table)
		if err != nil {
			return nil, len(m.Files), reject("%s: %v", f.Path, err)
		}
		var n int64
		err = src.Rows(ctx, 0, func(num int64, rec bulkimport.Record, bad *bulkimport.RowError) error {
			n = num
			if num > f.Rows {
				return reject("%s: more rows than the manifest's %d", f.Path, f.Rows)
			}
			if bad != nil {
				if bad.Field != "" {
					return reject("%s: row %d: %s: %s", f.Path, num, bad.Field, bad.Message)
				}
				return reject("%s: row %d: %s", f.Path, num, bad.Message)
			}
			r, fe := def.parse(rec, l.o.CampaignExists)
			if fe != nil {
				return reject("%s: row %d: %s: %s", f.Path, num, fe.field, fe.msg)
			}
			where := fmt.Sprintf("%s row %d", f.Path, num)
			if prev, dup := seen[r.key]; dup {
				return reject("%s: row %d: %s: %s is also in %s", f.Path, num, def.keyField, r.key, prev)
			}
			seen[r.key] = where
			rows = append(rows, r)
			return nil
		})
		src.Close()
		if err != nil {
			var rej *rejection
			if errors.As(err, &rej) || ctx.Err() == nil {
				if !errors.As(err, &rej) {
					err = reject("%s: %v", f.Path, err) // a broken file: the reader's error
				}
				return nil, len(m.Files), err
			}
			return nil, len(m.Files), err
		}
		if n != f.Rows {
			return nil, len(m.Files), reject("%s: %d rows, the manifest says %d", f.Path, n, f.Rows)
		}
	}
	return rows, len(m.Files), nil
}

// metrics of the loader.
type metrics struct {
	loaded, rejected, rows *prometheus.CounterVec
	lastLoad               *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		loaded:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "adpulse_feeds_versions_loaded_total", Help: "Feed versions loaded (and made active) by this process."}, []string{"feed"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "adpulse_feeds_versions_rejected_total", Help: "Feed versions rejected by this process (see GET /api/v1/feeds for why)."}, []string{"feed"}),
		rows:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "adpulse_feeds_rows_loaded_total", Help: "Rows of the feed versions this process loaded."}, []string{"feed"}),
		lastLoad: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "adpulse_feeds_last_load_timestamp_seconds", Help: "When this process last loaded a version of the feed."}, []string{"feed"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.loaded, m.rejected, m.rows, m.lastLoad} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("feeds metrics: %w", err)
			}
		}
	}
	return m, nil
}
