// Package catalog holds adpulse's advertisers, campaigns, ads and API keys: what the pipeline
// resolves events against and who may call the API. It stores them through database/sql
// (embedded: SQLite via modernc.org/sqlite; the statements are portable to MySQL and
// PostgreSQL, see dialect.go) and keeps an in-memory copy, so the click and event paths, and
// authentication, never query SQL.
//
// Invariants:
//   - The in-memory index mirrors the database: it is loaded at Open (from the database, or
//     from a snapshot and the changes since: snapshot.go), every write through this
//     process updates it right after its transaction commits, and Run applies the writes of
//     other processes sharing the database from the change feed (feed.go) within a poll
//     interval. Writes are serialized across all processes (the feed's lock row), so every
//     process sees commits in one order.
//   - An ad's bid is resolved through its campaign at lookup time: a campaign bid change is
//     seen at once by all of its ads.
//   - Ownership is fixed: a campaign never changes advertiser and an ad never moves to another
//     advertiser's campaign, because history (metrics, spend) was attributed to the owner at
//     ingest time and tenant isolation relies on it.
//   - Only SHA-256 hashes of API keys are stored; a key is shown once, when it is created.
//   - Lookups (Ad, Campaign, Advertiser, Authenticate) take no lock.
//   - Validation errors are *httpapi.Error values naming the bad field; lookups of missing
//     objects return errors wrapping ErrNotFound.
//
// A PUT replaces the whole object: an omitted optional field returns to its default.
//
// Lock order: writeMu, indexMu, then the locks inside the index (adShard.mu, recTable.mu).
package catalog

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/vfs"

	"github.com/adpulse/adpulse/internal/snapfile"
)

// ErrNotFound is wrapped by the errors of lookups of advertisers, campaigns and ads that do not
// exist.
var ErrNotFound = errors.New("not found")

// Status is the state an advertiser sets on a campaign.
type Status string

// Campaign statuses.
const (
	StatusActive Status = "active"
	StatusPaused Status = "paused"
)

// Serving statuses of GET /api/v1/campaigns/{id}.
const (
	ServingActive          = "active"
	ServingPaused          = "paused"
	ServingBudgetExhausted = "budget_exhausted"
	ServingNotStarted      = "not_started"
	ServingEnded           = "ended"
)

// Limits of the API contract.
const (
	MaxNameLen       = 256 // characters
	MaxLandingURLLen = 2048
	MaxMicros        = 1_000_000_000_000_000 // 1e15: a billion units of any currency
)

// Advertiser is an advertiser as stored.
type Advertiser struct {
	ID       string
	Name     string
	Timezone string // IANA name; budget days follow it
	// ClickWindow and ViewWindow are the advertiser's attribution windows (windows.go); nil
	// means the deployment's default.
	ClickWindow, ViewWindow *time.Duration
	// CreatedAt and UpdatedAt are set by the catalog; they are ignored on writes.
	CreatedAt, UpdatedAt time.Time
}

// Campaign is a campaign as stored.
type Campaign struct {
	ID                string
	AdvertiserID      string
	Name              string
	Status            Status
	CPCBidMicros      int64
	DailyBudgetMicros int64     // 0: unlimited
	TotalBudgetMicros int64     // 0: unlimited
	StartTime         time.Time // zero: no start
	EndTime           time.Time // zero: no end
	// AutoCPC makes clicks bid and pay the active auto_cpc feed's bid for the ad's catalog id,
	// capped by CPCBidMicros (internal/feeds); the ad's own bid when the feed has no row.
	AutoCPC   bool
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Ad is an ad as stored.
type Ad struct {
	ID           string
	CampaignID   string
	LandingURL   string
	CatalogID    string // "": none
	CPCBidMicros *int64 // nil: the campaign's bid; may point at 0, an explicit zero bid
	CreatedAt    time.Time
	UpdatedAt    time.Time
}

// AdInfo is what the ingest hot path needs to know about an ad.
type AdInfo struct {
	AdID         string
	CampaignID   string
	AdvertiserID string
	LandingURL   string
	CatalogID    string
	// CPCBidMicros is the ad's override if it has one, else its campaign's current bid.
	CPCBidMicros int64
	// AutoCPC and CampaignBidMicros are the campaign's: with AutoCPC, a click's price is the
	// auto_cpc feed's bid for CatalogID capped by CampaignBidMicros (see internal/feeds).
	AutoCPC           bool
	CampaignBidMicros int64
}

// CampaignInfo is a campaign as the in-memory index holds it.
type CampaignInfo struct {
	CampaignID        string
	AdvertiserID      string
	Status            Status
	CPCBidMicros      int64
	DailyBudgetMicros int64
	TotalBudgetMicros int64
	StartTime         time.Time
	EndTime           time.Time
	AutoCPC           bool
}

// AdvertiserInfo is an advertiser as the in-memory index holds it.
type AdvertiserInfo struct {
	AdvertiserID string
	Name         string
	Timezone     string
	Location     *time.Location // loaded from Timezone
	// TimezoneChanges are the changes of Timezone, oldest first; nil if it never changed.
	// Readers must not modify the slice.
	TimezoneChanges []TimezoneChange
	// WindowChanges are the changes of the attribution windows, oldest first (windows.go);
	// nil if they were never set. Readers must not modify the slice.
	WindowChanges []WindowChange
}

// TimezoneChange is one change of an advertiser's time zone as recorded when it was made.
// The catalog keeps the facts; when a change takes effect is the budget rule of billing (the
// next local midnight of the zone in force), which needs the time it was made.
type TimezoneChange struct {
	At       time.Time // when the write that changed it was made
	From, To *time.Location
}

// Options configure Open.
type Options struct {
	// DB is an open database. When set, DSN and Driver are ignored and Close leaves DB open;
	// the caller sets any per-connection settings (for SQLite: busy timeout, foreign keys).
	// Run needs a pool of at least two connections (its reads and a write in flight).
	DB *sql.DB
	// Dialect of the database; default DialectSQLite.
	Dialect Dialect
	// DSN is, for SQLite, a file name (or "file:" URI); Open adds WAL, a busy timeout,
	// synchronous=FULL and foreign keys. For other dialects it is passed to sql.Open as is.
	// ParseDSN derives Dialect, Driver and DSN from one address.
	DSN string
	// Driver is the database/sql driver name; default "sqlite" for SQLite. Other dialects need
	// their driver registered by the caller.
	Driver string
	// AdminKey, when not empty, authenticates as RoleAdmin.
	AdminKey string
	Logger   *slog.Logger
	Now      func() time.Time // default time.Now

	// FeedInterval is how often Run polls the change feed; default DefaultFeedInterval.
	FeedInterval time.Duration
	// FeedRetention and FeedMaxRows bound the change table: rows older than FeedRetention
	// (default DefaultFeedRetention), and all but the newest FeedMaxRows (default
	// DefaultFeedMaxRows), are trimmed. A process that falls further behind reloads the
	// whole catalog.
	FeedRetention time.Duration
	FeedMaxRows   int64

	// SnapshotPath, when not empty, is the file of the index's snapshot (snapshot.go): Open
	// loads the index from it when it can, Run rewrites it every SnapshotInterval (default
	// DefaultSnapshotInterval; negative: never) while the catalog changes, and Close writes it
	// last. Ignored for an in-memory SQLite database.
	SnapshotPath     string
	SnapshotInterval time.Duration
}

// Catalog is the store and its in-memory index. It is safe for concurrent use.
type Catalog struct {
	db    *sql.DB
	ownDB bool
	d     dialect
	log   *slog.Logger
	now   func() time.Time

	adminHash [sha256.Size]byte
	hasAdmin  bool

	// writeMu serializes writes, each spanning its SQL transaction and its index update, so
	// the index sees commits in commit order (two racing PUTs of one ad cannot leave the
	// index on the one SQL overwrote).
	writeMu sync.Mutex
	// indexMu makes "read objects from SQL, put them in the index" atomic with respect to a
	// writer's "commit, update the index" (see feed.go).
	indexMu sync.Mutex
	feed    feedState
	snap    snapState

	ads         *adIndex
	campaigns   recTable[campaignRec]
	advertisers recTable[AdvertiserInfo]

	keys           sync.Map // [sha256.Size]byte -> httpapi.Principal
	advertiserKeys atomic.Int64
	ingestKeys     atomic.Int64
}

type campaignRec struct {
	info   CampaignInfo
	advIdx uint32
}

// Open opens the catalog: it connects, creates the schema if needed and loads the in-memory
// index.
func Open(ctx context.Context, o Options) (*Catalog, error) {
	d, err := dialectFor(o.Dialect)
	if err != nil {
		return nil, err
	}
	c := &Catalog{db: o.DB, d: d, log: o.Logger, now: o.Now, ads: newAdIndex()}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	c.feed = feedState{interval: o.FeedInterval, retention: o.FeedRetention, maxRows: o.FeedMaxRows, epoch: time.Now()}
	if c.feed.interval <= 0 {
		c.feed.interval = DefaultFeedInterval
	}
	if c.feed.retention <= 0 {
		c.feed.retention = DefaultFeedRetention
	}
	if c.feed.maxRows <= 0 {
		c.feed.maxRows = DefaultFeedMaxRows
	}
	c.snap = snapState{path: o.SnapshotPath, interval: o.SnapshotInterval, fs: vfs.Default}
	if c.snap.interval == 0 {
		c.snap.interval = DefaultSnapshotInterval
	}
	if o.AdminKey != "" {
		c.adminHash, c.hasAdmin = sha256.Sum256([]byte(o.AdminKey)), true
	}
	if c.db == nil {
		if o.DSN == "" {
			return nil, errors.New("open catalog: Options.DB or Options.DSN is required")
		}
		driver, dsn := o.Driver, o.DSN
		if driver == "" {
			driver = d.driver
		}
		if d.name == DialectSQLite {
			dsn = sqliteDSN(dsn)
		}
		c.db, err = sql.Open(driver, dsn)
		if err != nil {
			return nil, fmt.Errorf("open catalog database: %w", err)
		}
		c.ownDB = true
		if d.name == DialectSQLite && sqliteInMemory(o.DSN) {
			c.db.SetMaxOpenConns(1)
			// One process by definition; and the follower must not wait for the one
			// connection while holding indexMu, which a writer holding it waits for.
			c.feed.disabled = true
		}
	}
	if err := c.init(ctx); err != nil {
		_ = c.Close() // the error that matters is init's
		return nil, err
	}
	c.snap.loaded = true
	return c, nil
}

func (c *Catalog) init(ctx context.Context) error {
	start := time.Now()
	for _, s := range c.d.setup {
		if _, err := c.db.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("catalog setup %q: %w", s, err)
		}
	}
	for _, s := range c.d.schema() {
		if _, err := c.db.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("create catalog schema: %w", err)
		}
	}
	if err := c.migrate(ctx); err != nil {
		return err
	}
	if err := c.ensureFeedHead(ctx); err != nil {
		return err
	}
	// The head first: changes committed while loading are then applied again by Run, which
	// is harmless, and none is missed.
	head, err := c.readHead(ctx)
	if err != nil {
		return err
	}
	if c.snap.path != "" && !c.feed.disabled {
		if c.snap.identity, err = c.ensureIdentity(ctx); err != nil {
			return err
		}
		seq, err := c.loadSnapshot(ctx, head)
		if err == nil {
			return c.catchUp(ctx, start, seq)
		}
		if errors.Is(err, snapfile.ErrNotExist) {
			c.log.Info("no catalog snapshot; loading the catalog from the database", "path", c.snap.path)
		} else {
			c.log.Warn("catalog snapshot not used; loading the catalog from the database", "path", c.snap.path, "err", err)
		}
	}
	if err := c.load(ctx); err != nil {
		return err
	}
	c.feed.applied = head
	c.feed.appliedSeq.Store(head)
	c.feed.headSeq.Store(head)
	c.feed.markCaughtUp(start)
	st := c.Stats()
	c.log.Info("catalog loaded", "advertisers", st.Advertisers, "campaigns", st.Campaigns, "ads", st.Ads,
		"keys", st.AdvertiserKeys+st.IngestKeys, "index_bytes", st.IndexBytes, "feed_seq", head, "took", time.Since(start))
	return nil
}

// catchUp finishes an Open from a snapshot taken at feed position seq: it applies every
// change committed since, so that the catalog is as current as after a full load.
func (c *Catalog) catchUp(ctx context.Context, start time.Time, seq int64) error {
	loaded := time.Since(start)
	c.feed.applied = seq
	c.feed.appliedSeq.Store(seq)
	c.feed.headSeq.Store(seq)
	c.snap.lastSeq, c.snap.used = seq, true
	if err := c.poll(ctx); err != nil {
		return fmt.Errorf("apply catalog changes after the snapshot: %w", err)
	}
	st := c.Stats()
	c.log.Info("catalog loaded", "from", "snapshot", "advertisers", st.Advertisers, "campaigns", st.Campaigns, "ads", st.Ads,
		"keys", st.AdvertiserKeys+st.IngestKeys, "index_bytes", st.IndexBytes, "snapshot_seq", seq, "feed_seq", st.FeedSeq,
		"snapshot_took", loaded, "took", time.Since(start))
	return nil
}

// load fills the in-memory index from SQL, parents first so that every reference resolves.
func (c *Catalog) load(ctx context.Context) error {
	if err := c.loadAdvertisers(ctx); err != nil {
		return fmt.Errorf("load advertisers: %w", err)
	}
	if err := c.loadCampaigns(ctx); err != nil {
		return fmt.Errorf("load campaigns: %w", err)
	}
	if err := c.loadAds(ctx); err != nil {
		return fmt.Errorf("load ads: %w", err)
	}
	if err := c.loadKeys(ctx); err != nil {
		return fmt.Errorf("load api keys: %w", err)
	}
	return nil
}

func (c *Catalog) loadAdvertisers(ctx context.Context) error {
	changes, err := c.loadTimezoneChanges(ctx)
	if err != nil {
		return err
	}
	windows, err := c.loadWindowChanges(ctx)
	if err != nil {
		return err
	}
	rows, err := c.db.QueryContext(ctx, c.d.q(`SELECT id, name, timezone, created_at, updated_at FROM advertisers`))
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var a Advertiser
		var created, updated int64
		if err := rows.Scan(&a.ID, &a.Name, &a.Timezone, &created, &updated); err != nil {
			return err
		}
		c.indexAdvertiser(a, changes[a.ID], windows[a.ID])
	}
	return rows.Err()
}

func (c *Catalog) loadTimezoneChanges(ctx context.Context) (map[string][]TimezoneChange, error) {
	rows, err := c.db.QueryContext(ctx, c.d.q(`SELECT advertiser_id, changed_at, from_timezone, to_timezone FROM advertiser_timezones ORDER BY advertiser_id, changed_at`))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make(map[string][]TimezoneChange)
	for rows.Next() {
		var id, from, to string
		var at int64
		if err := rows.Scan(&id, &at, &from, &to); err != nil {
			return nil, err
		}
		out[id] = append(out[id], TimezoneChange{At: fromMicros(at), From: c.location(id, from), To: c.location(id, to)})
	}
	return out, rows.Err()
}

// location loads a stored time zone. One that no longer loads (a binary built without tzdata)
// falls back to UTC rather than losing the advertiser.
func (c *Catalog) location(advertiserID, tz string) *time.Location {
	loc, err := time.LoadLocation(tz)
	if err != nil {
		c.log.Warn("catalog: advertiser time zone does not load; using UTC", "advertiser_id", advertiserID, "timezone", tz, "err", err)
		return time.UTC
	}
	return loc
}

func (c *Catalog) loadCampaigns(ctx context.Context) error {
	rows, err := c.db.QueryContext(ctx, c.d.q(`SELECT `+campaignCols+` FROM campaigns`))
	if err != nil {
		return err
	}
	defer rows.Close()
	// Another process may write while this one loads: a campaign read here may belong to an
	// advertiser created after the advertisers were read. Those are fetched at the end.
	var orphans []Campaign
	for rows.Next() {
		cp, err := scanCampaign(rows)
		if err != nil {
			return err
		}
		if _, _, ok := c.advertisers.get(cp.AdvertiserID); !ok {
			orphans = append(orphans, cp)
			continue
		}
		if err := c.indexCampaign(cp); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	rows.Close()
	return c.indexWithParents(ctx, nil, orphans)
}

func (c *Catalog) loadAds(ctx context.Context) error {
	rows, err := c.db.QueryContext(ctx, c.d.q(`SELECT id, campaign_id, landing_url, catalog_id, cpc_bid_micros FROM ads`))
	if err != nil {
		return err
	}
	defer rows.Close()
	// RawBytes and a local campaign map keep loading ten million ads from allocating per row
	// beyond what the index copies.
	campIdx := make(map[string]uint32, c.campaigns.len())
	var id, campaign, landing, catalogID sql.RawBytes
	var bid sql.NullInt64
	var orphans []Ad // of campaigns created since they were loaded (see loadCampaigns)
	for rows.Next() {
		if err := rows.Scan(&id, &campaign, &landing, &catalogID, &bid); err != nil {
			return err
		}
		idx, ok := campIdx[string(campaign)]
		if !ok {
			if _, idx, ok = c.campaigns.get(string(campaign)); !ok {
				a := Ad{ID: string(id), CampaignID: string(campaign), LandingURL: string(landing), CatalogID: string(catalogID)}
				if bid.Valid {
					a.CPCBidMicros = ptrTo(bid.Int64)
				}
				orphans = append(orphans, a)
				continue
			}
			campIdx[string(campaign)] = idx
		}
		if err := c.ads.put(string(id), idx, string(landing), string(catalogID), bid.Int64, bid.Valid); err != nil {
			return fmt.Errorf("index ad %q: %w", id, err)
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	rows.Close()
	return c.indexWithParents(ctx, orphans, nil)
}

func ptrTo[T any](v T) *T { return &v }

// indexWithParents indexes ads and campaigns read from the database, first fetching the
// campaigns and advertisers they belong to that the index lacks: created by another process
// after this one last read them. The database's foreign keys guarantee that they exist.
func (c *Catalog) indexWithParents(ctx context.Context, ads []Ad, cps []Campaign) error {
	var missingCamps, missingAdvs []string
	for _, a := range ads {
		if _, _, ok := c.campaigns.get(a.CampaignID); !ok && !slices.Contains(missingCamps, a.CampaignID) {
			missingCamps = append(missingCamps, a.CampaignID)
		}
	}
	for _, cp := range cps {
		if _, _, ok := c.advertisers.get(cp.AdvertiserID); !ok && !slices.Contains(missingAdvs, cp.AdvertiserID) {
			missingAdvs = append(missingAdvs, cp.AdvertiserID)
		}
	}
	if err := c.refreshAdvertisers(ctx, missingAdvs); err != nil {
		return err
	}
	if err := c.refreshCampaigns(ctx, missingCamps); err != nil {
		return err
	}
	for _, cp := range cps {
		if err := c.indexCampaign(cp); err != nil {
			return err
		}
	}
	for _, a := range ads {
		if err := c.indexAd(a); err != nil {
			return fmt.Errorf("index ad %q: %w", a.ID, err)
		}
	}
	return nil
}

// indexAdvertiser puts a stored advertiser, its time zone changes and its attribution
// window changes into the index.
func (c *Catalog) indexAdvertiser(a Advertiser, changes []TimezoneChange, windows []WindowChange) {
	c.advertisers.put(a.ID, &AdvertiserInfo{AdvertiserID: a.ID, Name: a.Name, Timezone: a.Timezone,
		Location: c.location(a.ID, a.Timezone), TimezoneChanges: changes, WindowChanges: windows})
}

func (c *Catalog) indexCampaign(cp Campaign) error {
	_, advIdx, ok := c.advertisers.get(cp.AdvertiserID)
	if !ok {
		return fmt.Errorf("campaign %q: advertiser %q is not in the index", cp.ID, cp.AdvertiserID)
	}
	adv := c.advertisers.at(advIdx)
	c.campaigns.put(cp.ID, &campaignRec{advIdx: advIdx, info: CampaignInfo{
		CampaignID:        cp.ID,
		AdvertiserID:      adv.AdvertiserID, // shared with the advertiser record: one copy per id
		Status:            cp.Status,
		CPCBidMicros:      cp.CPCBidMicros,
		DailyBudgetMicros: cp.DailyBudgetMicros,
		TotalBudgetMicros: cp.TotalBudgetMicros,
		StartTime:         cp.StartTime,
		EndTime:           cp.EndTime,
		AutoCPC:           cp.AutoCPC,
	}})
	return nil
}

func (c *Catalog) indexAd(a Ad) error {
	_, idx, ok := c.campaigns.get(a.CampaignID)
	if !ok {
		return fmt.Errorf("ad %q: campaign %q is not in the index", a.ID, a.CampaignID)
	}
	var bid int64
	if a.CPCBidMicros != nil {
		bid = *a.CPCBidMicros
	}
	return c.ads.put(a.ID, idx, a.LandingURL, a.CatalogID, bid, a.CPCBidMicros != nil)
}

// Close writes a snapshot of the index if snapshots are on, then closes the database if Open
// opened it. A failed snapshot is logged, not returned: the next start loads from the
// database instead.
func (c *Catalog) Close() error {
	if err := c.WriteSnapshot(); err != nil {
		c.log.Warn("catalog snapshot at close failed", "err", err)
	}
	if c.ownDB && c.db != nil {
		if err := c.db.Close(); err != nil {
			return fmt.Errorf("close catalog database: %w", err)
		}
	}
	return nil
}

// Ad looks an ad up in memory; it never queries SQL and takes no lock. AdInfo.AdID is id
// itself. The landing URL and catalog id share one fresh allocation.
func (c *Catalog) Ad(id string) (AdInfo, bool) {
	rec, ok := c.ads.get(id)
	if !ok {
		return AdInfo{}, false
	}
	camp := c.campaigns.at(rec.campaign)
	if camp == nil {
		return AdInfo{}, false
	}
	bid := camp.info.CPCBidMicros
	if rec.hasBid {
		bid = rec.bid
	}
	return AdInfo{
		AdID:         id,
		CampaignID:   camp.info.CampaignID,
		AdvertiserID: camp.info.AdvertiserID,
		CatalogID:    rec.tail[:rec.catLen],
		LandingURL:   rec.tail[rec.catLen:],
		CPCBidMicros: bid,

		AutoCPC:           camp.info.AutoCPC,
		CampaignBidMicros: camp.info.CPCBidMicros,
	}, true
}

// Campaign looks a campaign up in memory.
func (c *Catalog) Campaign(id string) (CampaignInfo, bool) {
	r, _, ok := c.campaigns.get(id)
	if !ok || r == nil {
		return CampaignInfo{}, false
	}
	return r.info, true
}

// Advertiser looks an advertiser up in memory.
func (c *Catalog) Advertiser(id string) (AdvertiserInfo, bool) {
	r, _, ok := c.advertisers.get(id)
	if !ok || r == nil {
		return AdvertiserInfo{}, false
	}
	return *r, true
}

// AdOwner returns the advertiser that owns an ad, from memory.
func (c *Catalog) AdOwner(adID string) (string, bool) {
	rec, ok := c.ads.get(adID)
	if !ok {
		return "", false
	}
	camp := c.campaigns.at(rec.campaign)
	if camp == nil {
		return "", false
	}
	return camp.info.AdvertiserID, true
}

// CampaignOwner returns the advertiser that owns a campaign, from memory.
// CampaignIDs lists every campaign id, in no particular order. It is for periodic sweeps
// (the serving feed), not the hot path: it walks the whole campaign table.
func (c *Catalog) CampaignIDs() []string {
	ids := make([]string, 0, c.campaigns.len())
	c.campaigns.ids.Range(func(k, _ any) bool {
		ids = append(ids, k.(string))
		return true
	})
	return ids
}

func (c *Catalog) CampaignOwner(campaignID string) (string, bool) {
	info, ok := c.Campaign(campaignID)
	return info.AdvertiserID, ok
}

// Stats are the catalog's counters, for metrics.
type Stats struct {
	Advertisers    int64
	Campaigns      int64
	Ads            int64
	AdvertiserKeys int64
	IngestKeys     int64
	IndexBytes     int64 // memory held by the ad index's arenas and slots
	// SnapshotWrites and SnapshotFailures count snapshots of the index written and failed.
	SnapshotWrites, SnapshotFailures int64
	FeedInfo
}

// Stats returns current counts.
func (c *Catalog) Stats() Stats {
	return Stats{
		Advertisers:      int64(c.advertisers.len()),
		Campaigns:        int64(c.campaigns.len()),
		Ads:              int64(c.ads.len()),
		AdvertiserKeys:   c.advertiserKeys.Load(),
		IngestKeys:       c.ingestKeys.Load(),
		IndexBytes:       c.ads.bytes.Load(),
		SnapshotWrites:   c.snap.writes.Load(),
		SnapshotFailures: c.snap.failures.Load(),
		FeedInfo:         c.feedInfo(),
	}
}

// ScheduleStatus is a campaign's serving status from its own status and schedule alone, with
// no budget: paused, ended, not_started or active.
func ScheduleStatus(c Campaign, now time.Time) string {
	switch {
	case c.Status == StatusPaused:
		return ServingPaused
	case !c.EndTime.IsZero() && !now.Before(c.EndTime):
		return ServingEnded
	case !c.StartTime.IsZero() && now.Before(c.StartTime):
		return ServingNotStarted
	}
	return ServingActive
}

// Budget is the "budget" object of GET /api/v1/campaigns/{id}.
type Budget struct {
	Day                  string `json:"day"` // YYYY-MM-DD in the advertiser's time zone
	SpentTodayMicros     int64  `json:"spent_today_micros"`
	RemainingTodayMicros *int64 `json:"remaining_today_micros"` // nil (null) when unlimited
	SpentTotalMicros     int64  `json:"spent_total_micros"`
}

// NewBudget computes a Budget from spend: what can still be spent today is bounded by both the
// daily and the total budget, and is null only when neither is set.
func NewBudget(c Campaign, loc *time.Location, now time.Time, spentToday, spentTotal int64) Budget {
	if loc == nil {
		loc = time.UTC
	}
	b := Budget{Day: now.In(loc).Format(time.DateOnly), SpentTodayMicros: spentToday, SpentTotalMicros: spentTotal}
	var rem int64 = -1
	if c.DailyBudgetMicros > 0 {
		rem = max(0, c.DailyBudgetMicros-spentToday)
	}
	if c.TotalBudgetMicros > 0 {
		t := max(0, c.TotalBudgetMicros-spentTotal)
		if rem < 0 || t < rem {
			rem = t
		}
	}
	if rem >= 0 {
		b.RemainingTodayMicros = &rem
	}
	return b
}

// keyHash is how a key is stored and looked up.
func keyHash(key string) [sha256.Size]byte { return sha256.Sum256([]byte(key)) }
