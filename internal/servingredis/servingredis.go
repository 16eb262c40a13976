// Package servingredis publishes what the charging stage computes to Redis, where the ad
// servers read it: the serving feed (active campaigns with bid, pacing and status) and each
// user's daily view counts per catalog id. They are the data of GET /api/v1/serving/campaigns
// and GET /api/v1/users/{user_id}/views, one Redis round trip away from an ad server.
//
// # Key layout
//
// Every key starts with Options.KeyPrefix (default "adpulse:"); docs/redis-layout.md is the
// reader's version of this.
//
//	serving:campaigns           hash: campaign_id -> {"cpc_bid_micros":N,"pacing":P,"status":"active"}
//	                            plus the field "#meta" -> {"version":V,"changed_at":T,
//	                            "published_at":T,"campaigns":N}. HGETALL is the whole feed.
//	serving:version             string: V of the feed in serving:campaigns; a cheap poll
//	serving:campaigns:next:<id> the next feed while it is written (expires after a minute)
//	views:<YYYY-MM-DD>:<user>   hash: catalog_id -> valid impressions that UTC day; expires
//	                            Options.ViewsTTL after the day's end
//	views:synced                string: when the views were last rewritten from billing
//
// Campaign, user and catalog ids are [A-Za-z0-9._:-], so "#meta" is never a campaign id and
// the user id (the last component of a views key) may hold colons without ambiguity.
//
// # The feed: atomic, within a second
//
// Publish (billing.Publisher) writes a new feed into serving:campaigns:next:<id>, a key no
// reader knows, and a script then numbers it (INCR serving:version), stamps "#meta" and
// RENAMEs it over serving:campaigns: a reader's HGETALL sees the old feed or the new one,
// never a mix, and campaigns that left serving are gone with the old hash. The whole write
// is one pipelined round trip. The hash always exists once published ("#meta" alone when
// no campaign is active), so an empty feed and a missing one differ. A feed equal to the
// last one written is not written again: a script refreshes "#meta".published_at only,
// provided the live hash still carries the meta this Publisher wrote; if not (another
// publisher replaced it, or Redis lost it) the feed is written whole. The version therefore
// changes exactly when the content does, and published_at says the publisher is alive.
//
// billing computes the feed every billing.Options.FeedInterval (10 s by default); with Redis
// it must be FeedInterval (250 ms) or less, so that a change (a budget exhausted, a campaign
// paused or a bid edited) reaches Redis within a second: at most one interval, plus
// computing the feed, plus one round trip.
//
// # User views: exact
//
// billing commits a round's view counts together with the log offsets they came from, and
// then hands ViewsCommitted (billing.Options.OnViews), in commit order, the committed totals
// of every (day, user, catalog) the round changed. They are absolute values, and they are written as such
// (HSET, never HINCRBY): writing a total twice, after a retry or a restart, leaves it as it
// was, so Redis cannot count an impression twice. Totals wait in a map that keeps the newest
// total per count, and RunViews writes them, in order, by one goroutine; a failed write puts
// back the totals that no newer one has replaced, so an old total never overwrites a newer
// one.
//
// What the map holds is lost by a restart (or dropped on purpose when it outgrows
// MaxPendingViews, or found lost when views:synced disappears because Redis lost its data),
// and billing never replays a committed round. So RunViews starts with a resync, and resyncs
// whenever one of those happens: it drops the map, then rewrites the totals of every day
// whose hashes have not expired from a snapshot of billing's committed views
// (billing.Charger.ScanViews), then writes the map. Totals dropped were handed over before
// the snapshot was taken, so the snapshot holds them or newer ones; totals kept are written
// after the snapshot's. Redis then equals billing's committed counts.
//
// Two limits. One Publisher of views per billing database: the totals are the writer's. And
// a write that timed out may still be applied by Redis later (Redis had read it but not yet
// run it); the retry that follows writes the same or newer totals, so this can only undo a
// newer total if Redis holds the old write for longer than the retry delay.
//
// Keys of one feed must be in one slot: this works on a single Redis server (with its
// replicas), not a Redis Cluster.
//
// # Wiring
//
// The server opens a Publisher with the backend timeout and hands it to billing:
//
//	pub, err := servingredis.Open(ctx, servingredis.Options{Addr: addr, Timeout: backendTimeout, Logger: logger})
//	charger, err := billing.Open(ctx, billing.Options{ /* ... */
//		Publisher: pub, OnViews: pub.ViewsCommitted, FeedInterval: servingredis.FeedInterval})
//
// runs charger.Run(ctx) and pub.RunViews(ctx, charger) in its component group, closes the
// charger and then the Publisher after both returned, and exports pub.Stats().
package servingredis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/adpulse/adpulse/internal/billing"
)

var _ billing.Publisher = (*Publisher)(nil)

// FeedInterval is the billing.Options.FeedInterval to use with a Publisher: short enough that
// a change reaches Redis within a second. Its cost grows with the campaigns: at 10 000,
// billing computes the feed in about 30 ms and a changed feed is written in about 20 ms (an
// unchanged one in under 1 ms; BenchmarkFeedCycle), so about an eighth of a core.
const FeedInterval = 250 * time.Millisecond

// Defaults of Options.
const (
	DefaultKeyPrefix       = "adpulse:"
	DefaultTimeout         = time.Second
	DefaultViewsTTL        = 48 * time.Hour
	DefaultMaxPendingViews = 1 << 20
)

// MetaField is the field of the feed hash that describes the feed rather than a campaign.
const MetaField = "#meta"

// ErrClosed is returned after Close.
var ErrClosed = errors.New("servingredis: closed")

// Options configure a Publisher.
type Options struct {
	Addr     string // host:port; required
	Username string
	Password string
	DB       int
	// KeyPrefix starts every key. Default "adpulse:".
	KeyPrefix string
	// Timeout bounds each round trip to Redis. Default 1 s.
	Timeout time.Duration
	// FeedTTL, if positive, makes the feed expire when it has not been published for that
	// long, so ad servers stop serving on a feed nobody maintains. Default: no expiry.
	FeedTTL time.Duration
	// ViewsTTL is how long a day's views hashes live after the day's end (UTC). Default 48 h.
	ViewsTTL time.Duration
	// MaxPendingViews bounds the totals waiting to be written; past it they are dropped and
	// a resync writes them instead. Default 1 Mi.
	MaxPendingViews int
	Now             func() time.Time // default time.Now
	Logger          *slog.Logger     // default: discard
}

func (o *Options) setDefaults() {
	if o.KeyPrefix == "" {
		o.KeyPrefix = DefaultKeyPrefix
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.ViewsTTL <= 0 {
		o.ViewsTTL = DefaultViewsTTL
	}
	if o.MaxPendingViews <= 0 {
		o.MaxPendingViews = DefaultMaxPendingViews
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Stats are the publisher's counters since Open, for Prometheus.
type Stats struct {
	FeedWrites      int64     // feeds written whole: each one a new version
	FeedRefreshes   int64     // publishes of an unchanged feed (published_at refreshed only)
	FeedErrors      int64     // publishes that failed
	FeedVersion     int64     // version of the last feed written
	FeedCampaigns   int       // campaigns in it
	FeedPublishedAt time.Time // of the last successful publish; zero before one

	ViewsWritten  int64 // totals (hash fields) written
	ViewsExpired  int64 // totals not written because their day's hash has expired
	ViewsPending  int   // totals waiting to be written
	ViewsDeferred int64 // totals handed over while a resync was due, left to it
	ViewsErrors   int64 // failed writes of views
	Resyncs       int64 // resyncs completed
	ResyncErrors  int64 // resyncs that failed (retried)

	RoundTrips int64 // pipelines and commands sent to Redis
}

// Publisher writes the serving feed and user views to Redis. It is safe for concurrent use.
type Publisher struct {
	o   Options
	rdb *redis.Client

	feedKey, versionKey, nextKey, syncedKey, viewsPrefix string

	// feedMu serialises Publish and guards the last feed written.
	feedMu    sync.Mutex
	lastFeed  []billing.FeedCampaign
	lastMeta  string // "#meta" as written; "" when the live feed may not be ours
	version   int64
	changedAt string

	// viewsMu guards pending and resync. It is never held during a round trip.
	viewsMu sync.Mutex
	pending map[viewKey]int64
	resync  bool          // a resync is due: totals handed over meanwhile are left to it
	kick    chan struct{} // wakes RunViews; buffered

	syncedCheck time.Duration // how often RunViews looks for views:synced; tests shorten it

	closed atomic.Bool
	stats  struct {
		feedWrites, feedRefreshes, feedErrors                                       atomic.Int64
		viewsWritten, viewsExpired, viewsDeferred, viewsErrors, resyncs, resyncErrs atomic.Int64
		roundTrips                                                                  atomic.Int64
		mu                                                                          sync.Mutex // guards the rest
		feedVersion                                                                 int64
		feedCampaigns                                                               int
		feedPublishedAt                                                             time.Time
	}
}

type viewKey struct {
	day     int64 // UTC midnight, Unix seconds
	user    string
	catalog string
}

// Open connects to Redis and checks that it answers.
func Open(ctx context.Context, o Options) (*Publisher, error) {
	if o.Addr == "" {
		return nil, errors.New("servingredis: Options.Addr is required")
	}
	o.setDefaults()
	var id [6]byte
	_, _ = rand.Read(id[:])
	p := &Publisher{
		o: o,
		// ContextTimeoutEnabled: the deadline of each round trip bounds the socket reads and
		// writes too, so a stalled Redis cannot hold a caller past Timeout.
		rdb: redis.NewClient(&redis.Options{
			Addr: o.Addr, Username: o.Username, Password: o.Password, DB: o.DB,
			ContextTimeoutEnabled: true,
		}),
		feedKey:     o.KeyPrefix + "serving:campaigns",
		versionKey:  o.KeyPrefix + "serving:version",
		syncedKey:   o.KeyPrefix + "views:synced",
		viewsPrefix: o.KeyPrefix + "views:",
		pending:     make(map[viewKey]int64),
		resync:      true, // nothing is known of what Redis holds until the first resync
		kick:        make(chan struct{}, 1),
		syncedCheck: defaultSyncedCheck,
	}
	p.nextKey = p.feedKey + ":next:" + hex.EncodeToString(id[:])
	pctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	if err := p.rdb.Ping(pctx).Err(); err != nil {
		p.rdb.Close()
		return nil, fmt.Errorf("servingredis: ping %s: %w", o.Addr, err)
	}
	return p, nil
}

// Close closes the connections. Stop RunViews (cancel its context) first.
func (p *Publisher) Close() error {
	if !p.closed.CompareAndSwap(false, true) {
		return nil
	}
	if err := p.rdb.Close(); err != nil {
		return fmt.Errorf("servingredis: close: %w", err)
	}
	return nil
}

// Stats returns a snapshot of the counters.
func (p *Publisher) Stats() Stats {
	s := Stats{
		FeedWrites:    p.stats.feedWrites.Load(),
		FeedRefreshes: p.stats.feedRefreshes.Load(),
		FeedErrors:    p.stats.feedErrors.Load(),
		ViewsWritten:  p.stats.viewsWritten.Load(),
		ViewsExpired:  p.stats.viewsExpired.Load(),
		ViewsDeferred: p.stats.viewsDeferred.Load(),
		ViewsErrors:   p.stats.viewsErrors.Load(),
		Resyncs:       p.stats.resyncs.Load(),
		ResyncErrors:  p.stats.resyncErrs.Load(),
		RoundTrips:    p.stats.roundTrips.Load(),
	}
	p.stats.mu.Lock()
	s.FeedVersion, s.FeedCampaigns, s.FeedPublishedAt = p.stats.feedVersion, p.stats.feedCampaigns, p.stats.feedPublishedAt
	p.stats.mu.Unlock()
	p.viewsMu.Lock()
	s.ViewsPending = len(p.pending)
	p.viewsMu.Unlock()
	return s
}

// FeedKey is the key of the feed hash ad servers read.
func (p *Publisher) FeedKey() string { return p.feedKey }

// VersionKey is the key of the feed's version.
func (p *Publisher) VersionKey() string { return p.versionKey }

// ViewsKey is the key of userID's views on the UTC date of day.
func (p *Publisher) ViewsKey(day time.Time, userID string) string {
	return p.viewsPrefix + day.UTC().Format(time.DateOnly) + ":" + userID
}

// roundTrip bounds one call to Redis by Timeout.
func (p *Publisher) roundTrip(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if p.closed.Load() {
		return nil, nil, ErrClosed
	}
	p.stats.roundTrips.Add(1)
	ctx, cancel := context.WithTimeout(ctx, p.o.Timeout)
	return ctx, cancel, nil
}
