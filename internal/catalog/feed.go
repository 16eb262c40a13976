package catalog

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/adpulse/adpulse/internal/httpapi"
)

// The change feed brings writes made through other processes sharing the database into this
// process's index.
//
// Every write transaction also appends one row per changed object to catalog_changes
// (kind, object id, sequence number). Processes poll the table (Run) and re-read the changed
// objects by id, so a row says only "this object changed", never what it became: applying a
// row twice, or out of date, is harmless, and the object read is always at least as new as
// the change.
//
// Sequence numbers come from a lock row, catalog_feed_head, not from an auto-increment
// column. An auto-increment id is taken when a row is inserted, not when its transaction
// commits, so a reader can see id 8 before id 7 commits and skip 7 for good; a reader then
// has to re-read a window behind what it saw, or track gaps until they fill or time out, and
// neither has a bound that is right for every database and load. Instead a write transaction
// takes the head row's lock before anything else (an UPDATE that changes nothing: portable,
// and it locks in MySQL and PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers)
// and at the end raises the head by the number of rows it appends and numbers them up to the
// new head. The lock is held until commit, so the next writer reads the head only after this
// one's rows are visible: sequence numbers become visible in commit order with no holes, and
// what a reader sees is always exactly the changes 1..head (a rolled-back transaction rolls
// the head back too). A hole in what a reader gets can only mean that trimming removed rows
// it had not read yet, and then it reloads the whole catalog. Taking the lock first rather
// than at the end serialises whole catalog writes across processes, which also makes the
// SELECT-then-INSERT upserts race-free between processes. Catalog writes are admin calls, so
// the cost is small; the largest, a bulk of 100,000 ads, holds other writers back for its
// duration, never readers or the click path.
//
// Locks: writeMu serialises this process's writes (outermost); indexMu is held by a writer
// from its commit to the end of its index update, and by the follower from re-reading
// objects to putting them in the index. Without it the follower could read an object just
// before a local commit and put the older state after the writer's, and since the follower
// skips changes that this process made and indexed itself (own), the stale state would stay.
// The follower only reads SQL under indexMu (non-locking reads, which never wait for a
// writer's row locks), so a writer holding database locks while it waits for indexMu cannot
// deadlock with it. Lock order: writeMu, indexMu, then the index's own locks.

// Change feed defaults.
const (
	DefaultFeedInterval  = 500 * time.Millisecond
	DefaultFeedRetention = time.Hour
	DefaultFeedMaxRows   = 1_000_000
)

const (
	feedReadBatch = 5000   // change rows read per query
	inChunk       = 500    // ids per "IN (...)" re-read
	insertChunk   = 200    // change rows per INSERT
	trimChunk     = 10_000 // change rows per DELETE
	trimEvery     = time.Minute
	maxOwnRanges  = 1024
	feedLogEvery  = 30 * time.Second
	indexTimeout  = 10 * time.Second // reading parents after a commit
)

// Kinds of change rows.
const (
	changeAdvertiser = "advertiser" // the advertiser and its time zone history
	changeCampaign   = "campaign"
	changeAd         = "ad"
	changeKey        = "key" // object id: the hex SHA-256 of the key
)

// changes collects the rows a write transaction appends to the feed.
type changes struct {
	kinds, ids  []string
	first, last int64 // sequence numbers given to them, once appended
}

func (ch *changes) add(kind, id string) {
	ch.kinds = append(ch.kinds, kind)
	ch.ids = append(ch.ids, id)
}

// feedState is the follower's state.
type feedState struct {
	interval  time.Duration
	retention time.Duration
	maxRows   int64
	disabled  bool // an in-memory SQLite database: one process, one connection, nothing to follow

	// Guarded by Catalog.indexMu:
	applied int64      // every change up to here is in the index
	own     [][2]int64 // ranges of changes made and indexed by this process, above applied

	// For Stats:
	appliedSeq  atomic.Int64
	headSeq     atomic.Int64
	changes     atomic.Int64
	reloads     atomic.Int64
	pollErrors  atomic.Int64
	epoch       time.Time    // monotonic reference for caughtUpAt
	caughtUpAt  atomic.Int64 // nanoseconds since epoch when the index was last known current
	lastErrLog  time.Time    // Run's goroutine only
	failingFrom time.Time    // Run's goroutine only
}

func (f *feedState) markCaughtUp(since time.Time) {
	f.caughtUpAt.Store(int64(since.Sub(f.epoch)))
}

// lockFeed takes the head row's lock: the first statement of every write transaction.
func (c *Catalog) lockFeed(ctx context.Context, tx *sql.Tx) error {
	// Rows affected are not checked: MySQL counts changed rows, not matched ones. A missing
	// head row shows when appendChanges reads it.
	if _, err := tx.ExecContext(ctx, c.d.q(`UPDATE catalog_feed_head SET seq = seq WHERE id = 1`)); err != nil {
		return fmt.Errorf("lock change feed: %w", err)
	}
	return nil
}

// appendChanges numbers the collected changes after the current head and inserts them.
func (c *Catalog) appendChanges(ctx context.Context, tx *sql.Tx, ch *changes) error {
	n := int64(len(ch.ids))
	if n == 0 {
		return nil
	}
	if _, err := tx.ExecContext(ctx, c.d.q(`UPDATE catalog_feed_head SET seq = seq + ? WHERE id = 1`), n); err != nil {
		return fmt.Errorf("advance change feed: %w", err)
	}
	var last int64
	if err := tx.QueryRowContext(ctx, c.d.q(`SELECT seq FROM catalog_feed_head WHERE id = 1`)).Scan(&last); err != nil {
		return fmt.Errorf("read change feed head: %w", err)
	}
	ch.first, ch.last = last-n+1, last
	at := c.nowMicros()
	err := insertRows(ctx, tx, c.d, `INSERT INTO catalog_changes (seq, kind, object_id, changed_at) VALUES `, 4, len(ch.ids),
		func(args []any, i int) []any { return append(args, ch.first+int64(i), ch.kinds[i], ch.ids[i], at) })
	if err != nil {
		return fmt.Errorf("append to change feed: %w", err)
	}
	return nil
}

// writeTx runs fn in a transaction that is part of the change feed: it takes the feed's lock
// first and appends the changes fn collected last. After the commit it runs index, under
// indexMu, to update the in-memory index; index may read parents the index lacks from the
// database, with a context that a client hanging up does not cancel. The caller holds writeMu.
func (c *Catalog) writeTx(ctx context.Context, fn func(tx *sql.Tx, ch *changes) error, index func(ctx context.Context) error) error {
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	var ch changes
	err = c.lockFeed(ctx, tx)
	if err == nil {
		err = fn(tx, &ch)
	}
	if err == nil {
		err = c.appendChanges(ctx, tx, &ch)
	}
	if err != nil {
		_ = tx.Rollback()
		return err
	}
	c.indexMu.Lock()
	defer c.indexMu.Unlock()
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), indexTimeout)
	defer cancel()
	if err := index(ictx); err != nil {
		return err // not marked as own: the follower re-reads it
	}
	c.markOwn(ch.first, ch.last)
	return nil
}

// markOwn records that this process has indexed the changes first..last itself, so the
// follower need not re-read them. It is only an optimisation (a bulk of 100,000 ads is not
// read back): forgetting a range costs a re-read. The caller holds indexMu.
func (c *Catalog) markOwn(first, last int64) {
	f := &c.feed
	if last == 0 || last <= f.applied || f.disabled {
		return
	}
	if n := len(f.own); n > 0 && f.own[n-1][1]+1 == first {
		f.own[n-1][1] = last
		return
	}
	if len(f.own) == maxOwnRanges {
		f.own = append(f.own[:0], f.own[1:]...)
	}
	f.own = append(f.own, [2]int64{first, last})
}

// isOwn reports whether change seq was made by this process, dropping ranges below it. The
// caller holds indexMu and asks in increasing seq order.
func (c *Catalog) isOwn(seq int64) bool {
	f := &c.feed
	for len(f.own) > 0 && f.own[0][1] < seq {
		f.own = f.own[1:]
	}
	return len(f.own) > 0 && f.own[0][0] <= seq
}

// ensureFeedHead creates the head row if it is missing. Two processes starting at once may
// both try; the loser's INSERT fails on the primary key, and the row is then there.
func (c *Catalog) ensureFeedHead(ctx context.Context) error {
	count := func() (int, error) {
		var n int
		err := c.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM catalog_feed_head WHERE id = 1`).Scan(&n)
		return n, err
	}
	n, err := count()
	if err != nil || n == 1 {
		return err
	}
	if _, err := c.db.ExecContext(ctx, `INSERT INTO catalog_feed_head (id, seq) VALUES (1, 0)`); err != nil {
		if n, err2 := count(); err2 == nil && n == 1 {
			return nil
		}
		return fmt.Errorf("create change feed head: %w", err)
	}
	return nil
}

func (c *Catalog) readHead(ctx context.Context) (int64, error) {
	var head int64
	if err := c.db.QueryRowContext(ctx, `SELECT seq FROM catalog_feed_head WHERE id = 1`).Scan(&head); err != nil {
		return 0, fmt.Errorf("read change feed head: %w", err)
	}
	return head, nil
}

// Run follows the change feed until ctx ends: every poll interval it applies the changes
// other processes made, and every minute it trims old change rows. A failing poll (the
// database unreachable) is retried, logged and counted in Stats, not returned: the index
// still serves the catalog as it was, which is better for clicks than a process that stops
// and then cannot load the catalog to start again; FeedLagSeconds shows how stale it is.
// Run returns nil when ctx ends.
func (c *Catalog) Run(ctx context.Context) error {
	if c.feed.disabled {
		<-ctx.Done()
		return nil
	}
	if c.snap.path != "" && c.snap.interval > 0 {
		done := make(chan struct{})
		defer func() { <-done }()
		go func() {
			defer close(done)
			c.runSnapshots(ctx)
		}()
	}
	t := time.NewTicker(c.feed.interval)
	defer t.Stop()
	nextTrim := time.Now().Add(trimEvery)
	for {
		err := c.poll(ctx)
		if err == nil && !time.Now().Before(nextTrim) {
			nextTrim = time.Now().Add(trimEvery)
			if _, err = c.trimFeed(ctx); err != nil {
				err = fmt.Errorf("trim: %w", err)
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		c.noteFeedResult(err)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (c *Catalog) noteFeedResult(err error) {
	f := &c.feed
	now := time.Now()
	if err == nil {
		if !f.failingFrom.IsZero() {
			c.log.Info("catalog change feed recovered", "failing_for", now.Sub(f.failingFrom).Round(time.Millisecond))
			f.failingFrom, f.lastErrLog = time.Time{}, time.Time{}
		}
		return
	}
	f.pollErrors.Add(1)
	if f.failingFrom.IsZero() {
		f.failingFrom = now
	}
	if now.Sub(f.lastErrLog) >= feedLogEvery {
		f.lastErrLog = now
		c.log.Warn("catalog change feed failing; changes made through other processes are not applied",
			"err", err, "failing_for", now.Sub(f.failingFrom).Round(time.Millisecond), "seq", f.appliedSeq.Load())
	}
}

// feedRow is one row of catalog_changes.
type feedRow struct {
	seq      int64
	kind, id string
}

// poll applies every change committed up to the head it reads first.
func (c *Catalog) poll(ctx context.Context) error {
	f := &c.feed
	start := time.Now()
	head, err := c.readHead(ctx)
	if err != nil {
		return err
	}
	f.headSeq.Store(head)
	for {
		done, gap, err := c.pollBatch(ctx, head)
		if err != nil {
			return err
		}
		if gap {
			if err := c.reload(ctx); err != nil {
				return err
			}
			break
		}
		if done {
			break
		}
	}
	f.markCaughtUp(start)
	return nil
}

// pollBatch applies the next batch of changes up to head. It reports done when nothing up to
// head is left, and gap when changes it has not applied are no longer in the table.
func (c *Catalog) pollBatch(ctx context.Context, head int64) (done, gap bool, err error) {
	f := &c.feed
	c.indexMu.Lock()
	defer c.indexMu.Unlock()
	if f.applied >= head {
		if f.applied > head {
			// The head went back: the table was recreated or restored from a backup.
			c.log.Warn("catalog change feed went back; reloading", "seq", f.applied, "head", head)
			return false, true, nil
		}
		return true, false, nil
	}
	rows, err := c.readChanges(ctx, f.applied)
	if err != nil {
		return false, false, err
	}
	// Sequence numbers are dense and visible in commit order (see above): the next row must be
	// applied+1, and the rows up to head must all be there.
	if len(rows) == 0 || rows[0].seq != f.applied+1 {
		c.log.Warn("catalog change feed trimmed past this process's position; reloading", "seq", f.applied, "head", head)
		return false, true, nil
	}
	for i := 1; i < len(rows); i++ {
		if rows[i].seq != rows[i-1].seq+1 {
			return false, false, fmt.Errorf("catalog change feed: seq %d follows %d", rows[i].seq, rows[i-1].seq)
		}
	}
	var adv, camp, ads, keys []string
	seen := make(map[string]struct{}, len(rows))
	applied := int64(0)
	for _, r := range rows {
		if c.isOwn(r.seq) {
			continue
		}
		k := r.kind + "\x00" + r.id
		if _, ok := seen[k]; ok {
			continue
		}
		seen[k] = struct{}{}
		applied++
		switch r.kind {
		case changeAdvertiser:
			adv = append(adv, r.id)
		case changeCampaign:
			camp = append(camp, r.id)
		case changeAd:
			ads = append(ads, r.id)
		case changeKey:
			keys = append(keys, r.id)
		default:
			// Written by a newer version: a full reload picks up whatever it was.
			c.log.Warn("catalog change feed: unknown change kind; reloading", "kind", r.kind, "seq", r.seq)
			return false, true, nil
		}
	}
	// Parents first, so that children find them; refreshCampaigns and refreshAds also fetch
	// parents the index does not have yet (an ad may since have moved to a newer campaign).
	if err := c.refreshAdvertisers(ctx, adv); err != nil {
		return false, false, err
	}
	if err := c.refreshCampaigns(ctx, camp); err != nil {
		return false, false, err
	}
	if err := c.refreshAds(ctx, ads); err != nil {
		return false, false, err
	}
	if err := c.refreshKeys(ctx, keys); err != nil {
		return false, false, err
	}
	f.applied = rows[len(rows)-1].seq
	f.appliedSeq.Store(f.applied)
	f.changes.Add(applied)
	return f.applied >= head, false, nil
}

func (c *Catalog) readChanges(ctx context.Context, after int64) ([]feedRow, error) {
	q, err := c.db.QueryContext(ctx, c.d.q(`SELECT seq, kind, object_id FROM catalog_changes WHERE seq > ? ORDER BY seq LIMIT `+fmt.Sprint(feedReadBatch)), after)
	if err != nil {
		return nil, fmt.Errorf("read change feed: %w", err)
	}
	defer q.Close()
	var rows []feedRow
	for q.Next() {
		var r feedRow
		if err := q.Scan(&r.seq, &r.kind, &r.id); err != nil {
			return nil, fmt.Errorf("read change feed: %w", err)
		}
		rows = append(rows, r)
	}
	if err := q.Err(); err != nil {
		return nil, fmt.Errorf("read change feed: %w", err)
	}
	return rows, nil
}

// reload reads the whole catalog again, for a process whose position in the feed was trimmed
// away. Objects are loaded without indexMu, so local writes go on meanwhile; a local write
// racing with the load may be overwritten by the older state the load read, so the changes
// after the head read first are then all re-read, including this process's own.
func (c *Catalog) reload(ctx context.Context) error {
	f := &c.feed
	start := time.Now()
	head, err := c.readHead(ctx)
	if err != nil {
		return err
	}
	if err := c.loadAdvertisers(ctx); err != nil {
		return fmt.Errorf("reload advertisers: %w", err)
	}
	if err := c.loadCampaigns(ctx); err != nil {
		return fmt.Errorf("reload campaigns: %w", err)
	}
	if err := c.loadAds(ctx); err != nil {
		return fmt.Errorf("reload ads: %w", err)
	}
	c.indexMu.Lock()
	defer c.indexMu.Unlock()
	// Keys under indexMu: the load also drops keys that are gone, and must not drop one a
	// local writer has just committed.
	if err := c.reloadKeys(ctx); err != nil {
		return fmt.Errorf("reload api keys: %w", err)
	}
	f.applied, f.own = head, nil
	f.appliedSeq.Store(head)
	f.reloads.Add(1)
	c.log.Info("catalog reloaded from the database", "seq", head, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// queryIn runs queryIn on the database.
func (c *Catalog) queryIn(ctx context.Context, query, tail string, ids []string, each func(*sql.Rows) error) error {
	return queryIn(ctx, c.db, c.d, query, tail, ids, each)
}

// refreshAdvertisers re-reads advertisers, their time zone history and their attribution
// window history into the index.
func (c *Catalog) refreshAdvertisers(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	tz := make(map[string][]TimezoneChange)
	err := c.queryIn(ctx, `SELECT advertiser_id, changed_at, from_timezone, to_timezone FROM advertiser_timezones WHERE advertiser_id IN (`,
		` ORDER BY advertiser_id, changed_at`, ids, func(r *sql.Rows) error {
			var id, from, to string
			var at int64
			if err := r.Scan(&id, &at, &from, &to); err != nil {
				return err
			}
			tz[id] = append(tz[id], TimezoneChange{At: fromMicros(at), From: c.location(id, from), To: c.location(id, to)})
			return nil
		})
	if err != nil {
		return fmt.Errorf("re-read advertiser time zones: %w", err)
	}
	windows := make(map[string][]WindowChange)
	err = c.queryIn(ctx, `SELECT advertiser_id, changed_at, click_window_us, view_window_us FROM advertiser_attribution_windows WHERE advertiser_id IN (`,
		` ORDER BY advertiser_id, changed_at`, ids, scanWindowChanges(windows))
	if err != nil {
		return fmt.Errorf("re-read advertiser attribution windows: %w", err)
	}
	found := make(map[string]bool, len(ids))
	err = c.queryIn(ctx, `SELECT id, name, timezone FROM advertisers WHERE id IN (`, ``, ids, func(r *sql.Rows) error {
		var a Advertiser
		if err := r.Scan(&a.ID, &a.Name, &a.Timezone); err != nil {
			return err
		}
		found[a.ID] = true
		c.indexAdvertiser(a, tz[a.ID], windows[a.ID])
		return nil
	})
	if err != nil {
		return fmt.Errorf("re-read advertisers: %w", err)
	}
	c.noteMissing("advertiser", ids, found)
	return nil
}

// refreshCampaigns re-reads campaigns into the index, with any advertiser it lacks.
func (c *Catalog) refreshCampaigns(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	var cps []Campaign
	err := c.queryIn(ctx, `SELECT `+campaignCols+` FROM campaigns WHERE id IN (`, ``, ids, func(r *sql.Rows) error {
		cp, err := scanCampaign(r)
		cps = append(cps, cp)
		return err
	})
	if err != nil {
		return fmt.Errorf("re-read campaigns: %w", err)
	}
	found := make(map[string]bool, len(cps))
	for _, cp := range cps {
		found[cp.ID] = true
	}
	if err := c.indexWithParents(ctx, nil, cps); err != nil {
		return err
	}
	c.noteMissing("campaign", ids, found)
	return nil
}

// refreshAds re-reads ads into the index, with any campaign it lacks.
func (c *Catalog) refreshAds(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	var ads []Ad
	err := c.queryIn(ctx, `SELECT id, campaign_id, landing_url, catalog_id, cpc_bid_micros FROM ads WHERE id IN (`, ``, ids, func(r *sql.Rows) error {
		var a Ad
		var catalogID sql.NullString
		var bid sql.NullInt64
		if err := r.Scan(&a.ID, &a.CampaignID, &a.LandingURL, &catalogID, &bid); err != nil {
			return err
		}
		a.CatalogID = catalogID.String
		if bid.Valid {
			a.CPCBidMicros = &bid.Int64
		}
		ads = append(ads, a)
		return nil
	})
	if err != nil {
		return fmt.Errorf("re-read ads: %w", err)
	}
	found := make(map[string]bool, len(ads))
	for _, a := range ads {
		found[a.ID] = true
	}
	if err := c.indexWithParents(ctx, ads, nil); err != nil {
		return err
	}
	c.noteMissing("ad", ids, found)
	return nil
}

// noteMissing logs changed objects that are no longer in the database. The API deletes no
// advertiser, campaign or ad, so one can only have been removed by hand; the index keeps it
// (it has no delete) until the next start.
func (c *Catalog) noteMissing(kind string, ids []string, found map[string]bool) {
	for _, id := range ids {
		if !found[id] {
			c.log.Warn("catalog change feed: changed object is not in the database; index keeps it", "kind", kind, "id", id)
		}
	}
}

// refreshKeys re-reads keys by hash: a key that is gone from the database is removed from the
// index, one whose role or owner changed is replaced.
func (c *Catalog) refreshKeys(ctx context.Context, hexHashes []string) error {
	if len(hexHashes) == 0 {
		return nil
	}
	found := make(map[[sha256.Size]byte]bool, len(hexHashes))
	err := c.queryIn(ctx, `SELECT key_hash, role, advertiser_id FROM api_keys WHERE key_hash IN (`, ``, hexHashes, func(r *sql.Rows) error {
		h, p, ok, err := c.scanKey(r)
		if err != nil {
			return err
		}
		if ok {
			found[h] = true
			c.setKey(h, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("re-read api keys: %w", err)
	}
	for _, s := range hexHashes {
		var h [sha256.Size]byte
		if n, err := hex.Decode(h[:], []byte(s)); err != nil || n != len(h) {
			continue
		}
		if !found[h] {
			c.removeKey(h)
		}
	}
	return nil
}

// reloadKeys loads every key and drops from the index those no longer stored. The caller
// holds indexMu.
func (c *Catalog) reloadKeys(ctx context.Context) error {
	stored := make(map[[sha256.Size]byte]bool)
	rows, err := c.db.QueryContext(ctx, c.d.q(`SELECT key_hash, role, advertiser_id FROM api_keys`))
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		h, p, ok, err := c.scanKey(rows)
		if err != nil {
			return err
		}
		if ok {
			stored[h] = true
			c.setKey(h, p)
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	c.keys.Range(func(k, _ any) bool {
		if h := k.([sha256.Size]byte); !stored[h] {
			c.removeKey(h)
		}
		return true
	})
	return nil
}

// FeedInfo is the change feed's part of Stats.
type FeedInfo struct {
	// FeedSeq is the last change applied to the index; FeedHeadSeq the newest the database
	// had at the last poll.
	FeedSeq, FeedHeadSeq int64
	// FeedLagSeq is FeedHeadSeq - FeedSeq.
	FeedLagSeq int64
	// FeedLagSeconds bounds how stale the index may be: the time since the start of the last
	// poll that brought it up to date. It stays below the poll interval plus a poll's duration
	// while the feed runs and grows while it fails (or does not run).
	FeedLagSeconds float64
	// FeedChangesApplied counts changes made through other processes and applied here.
	FeedChangesApplied int64
	// FeedReloads counts full reloads (this process fell behind the trimmed feed).
	FeedReloads int64
	// FeedPollErrors counts failed polls and trims.
	FeedPollErrors int64
}

func (c *Catalog) feedInfo() FeedInfo {
	f := &c.feed
	seq, head := f.appliedSeq.Load(), f.headSeq.Load()
	lag := time.Since(f.epoch) - time.Duration(f.caughtUpAt.Load())
	return FeedInfo{
		FeedSeq: seq, FeedHeadSeq: head, FeedLagSeq: max(0, head-seq),
		FeedLagSeconds:     max(0, lag.Seconds()),
		FeedChangesApplied: f.changes.Load(),
		FeedReloads:        f.reloads.Load(),
		FeedPollErrors:     f.pollErrors.Load(),
	}
}

// trimFeed deletes change rows older than the retention, and all but the newest maxRows, and
// returns how many it deleted. Every process trims; deleting what another process already
// deleted is harmless. A process behind the trimmed part reloads (pollBatch).
func (c *Catalog) trimFeed(ctx context.Context) (int64, error) {
	f := &c.feed
	var byAge, oldest sql.NullInt64
	if err := c.db.QueryRowContext(ctx, c.d.q(`SELECT MAX(seq) FROM catalog_changes WHERE changed_at < ?`),
		c.now().Add(-f.retention).UnixMicro()).Scan(&byAge); err != nil {
		return 0, err
	}
	head, err := c.readHead(ctx)
	if err != nil {
		return 0, err
	}
	cut := max(byAge.Int64, head-f.maxRows)
	if cut <= 0 {
		return 0, nil
	}
	if err := c.db.QueryRowContext(ctx, `SELECT MIN(seq) FROM catalog_changes`).Scan(&oldest); err != nil {
		return 0, err
	}
	var deleted int64
	// In chunks from the oldest, each a short transaction on a primary key range, so a trim
	// never holds many row locks for long.
	for from := oldest.Int64; oldest.Valid && from <= cut; from += trimChunk {
		res, err := c.db.ExecContext(ctx, c.d.q(`DELETE FROM catalog_changes WHERE seq <= ?`), min(cut, from+trimChunk-1))
		if err != nil {
			return deleted, err
		}
		n, _ := res.RowsAffected()
		deleted += n
	}
	return deleted, nil
}

// setKey puts a key into the index, replacing what it was, and keeps the counts right.
func (c *Catalog) setKey(h [sha256.Size]byte, p httpapi.Principal) {
	if old, loaded := c.keys.Swap(h, p); loaded {
		c.countKey(old.(httpapi.Principal), -1)
	}
	c.countKey(p, 1)
}

// removeKey drops a key from the index.
func (c *Catalog) removeKey(h [sha256.Size]byte) {
	if old, ok := c.keys.LoadAndDelete(h); ok {
		c.countKey(old.(httpapi.Principal), -1)
	}
}

func (c *Catalog) countKey(p httpapi.Principal, d int64) {
	if p.Role == httpapi.RoleAdvertiser {
		c.advertiserKeys.Add(d)
	} else {
		c.ingestKeys.Add(d)
	}
}
