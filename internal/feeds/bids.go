package feeds

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/adpulse/adpulse/internal/catalog"
)

// DefaultFollowInterval is how often every process checks the active versions.
const DefaultFollowInterval = time.Second

// Bids is the active auto_cpc version in memory, for the click path: every process that
// takes clicks follows the active pointer in the database (one small query a second) and,
// when it moves (a load on any node, a rollback), reads the new version's bids and swaps
// them in whole.
type Bids struct {
	store    *Store
	interval time.Duration
	log      *slog.Logger

	cur atomic.Pointer[bidSet]

	mu     sync.Mutex
	active map[string]activeInfo // feed -> what the last poll saw, for metrics
	gauge  *prometheus.GaugeVec
	rowsG  *prometheus.GaugeVec
}

type bidSet struct {
	version string
	bids    map[string]int64
}

type activeInfo struct {
	version string
	rows    int64
}

// NewBids returns a follower of the active auto_cpc version; Run (or Refresh) loads it.
func NewBids(store *Store, interval time.Duration, reg prometheus.Registerer, log *slog.Logger) (*Bids, error) {
	if interval <= 0 {
		interval = DefaultFollowInterval
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Bids{store: store, interval: interval, log: log, active: make(map[string]activeInfo),
		gauge: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "adpulse_feeds_active_version_info",
			Help: "1 for the active version of each feed, as this process last read it."}, []string{"feed", "version"}),
		rowsG: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "adpulse_feeds_active_rows",
			Help: "Rows of the active version of each feed."}, []string{"feed"}),
	}
	b.cur.Store(&bidSet{})
	if reg != nil {
		for _, c := range []prometheus.Collector{b.gauge, b.rowsG} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("feeds metrics: %w", err)
			}
		}
	}
	return b, nil
}

// Run refreshes until ctx ends; failures are logged and retried (the bids in memory stay).
func (b *Bids) Run(ctx context.Context) error {
	t := time.NewTicker(b.interval)
	defer t.Stop()
	var lastWarn time.Time
	for {
		if err := b.Refresh(ctx); err != nil && ctx.Err() == nil && time.Since(lastWarn) > 30*time.Second {
			lastWarn = time.Now()
			b.log.Warn("feeds: reading the active versions failed; clicks keep the bids in memory", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Refresh reads the active versions once and loads the auto_cpc bids if they changed.
func (b *Bids) Refresh(ctx context.Context) error {
	for _, feed := range FeedNames() {
		version, err := b.store.Active(ctx, feed)
		if err != nil {
			return err
		}
		if feed == AutoCPC && version != b.cur.Load().version {
			if err := b.load(ctx, version); err != nil {
				return err
			}
		}
		b.noteActive(ctx, feed, version)
	}
	return nil
}

func (b *Bids) load(ctx context.Context, version string) error {
	if version == "" {
		b.cur.Store(&bidSet{})
		return nil
	}
	m, err := b.store.bids(ctx, version)
	if err != nil {
		return fmt.Errorf("read auto_cpc version %s: %w", version, err)
	}
	// The rows were read in one statement; if the version was expired meanwhile (a rollback
	// and newer loads in between), they may be gone: check it is still whole.
	v, err := b.store.version(ctx, AutoCPC, version)
	if err != nil {
		return fmt.Errorf("read auto_cpc version %s: %w", version, err)
	}
	if v.State != StateLoaded || int64(len(m)) != v.Rows {
		return fmt.Errorf("auto_cpc version %s changed while read (%s, %d of %d rows); retrying", version, v.State, len(m), v.Rows)
	}
	b.cur.Store(&bidSet{version: version, bids: m})
	b.log.Info("feeds: auto_cpc bids in use", "version", version, "catalog_ids", len(m))
	return nil
}

func (b *Bids) noteActive(ctx context.Context, feed, version string) {
	b.mu.Lock()
	prev, seen := b.active[feed]
	b.mu.Unlock()
	if seen && prev.version == version {
		return
	}
	var rows int64
	if version != "" {
		if v, err := b.store.version(ctx, feed, version); err == nil {
			rows = v.Rows
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if seen && prev.version != "" {
		b.gauge.DeleteLabelValues(feed, prev.version)
	}
	if version != "" {
		b.gauge.WithLabelValues(feed, version).Set(1)
	}
	b.rowsG.WithLabelValues(feed).Set(float64(rows))
	b.active[feed] = activeInfo{version: version, rows: rows}
}

// Version is the auto_cpc version in use here ("" when none).
func (b *Bids) Version() string { return b.cur.Load().version }

// Bid returns the active version's bid for a catalog id.
func (b *Bids) Bid(catalogID string) (int64, bool) {
	if catalogID == "" {
		return 0, false
	}
	v, ok := b.cur.Load().bids[catalogID]
	return v, ok
}

// ClickPrice is the price a click on ad is recorded with at ingest, 0 when it is left to the
// charger (the ad's bid then). For an auto-CPC campaign it is the feed's bid for the ad's
// catalog id capped by the campaign's bid, or the ad's own bid when the feed has no row for
// it: decided once, at ingest, and carried by the event, so a replay charges the same.
func (b *Bids) ClickPrice(ad catalog.AdInfo) int64 {
	if !ad.AutoCPC {
		return 0
	}
	if bid, ok := b.Bid(ad.CatalogID); ok {
		return min(bid, ad.CampaignBidMicros)
	}
	return ad.CPCBidMicros
}
