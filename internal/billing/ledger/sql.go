package ledger

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/adpulse/adpulse/internal/catalog"
)

// SQLOptions configure OpenSQL.
type SQLOptions struct {
	// Prefix starts every table name (default "billing_"), so one database can hold the
	// ledgers of several deployments: [a-z0-9_], at most 32 characters.
	Prefix string
	// MaxAttempts bounds how many times Update runs a transaction that keeps losing races
	// (default 20).
	MaxAttempts int
	Logger      *slog.Logger
}

// SQL is the shared Store: every process node of a deployment uses the same tables.
// Transactions run at READ COMMITTED; what must not change under a decision is locked (SELECT
// ... FOR UPDATE) in one fixed order: spend rows by (campaign, day start), then totals by
// campaign, then partition rows by partition, then the journal counter. A refund locks its
// ledger row first, which no round locks (a round only inserts keys that do not exist).
// Deadlocks and lost races are retried by running the whole function again.
type SQL struct {
	db     *sql.DB
	d      dialect
	p      string // table prefix
	max    int
	logger *slog.Logger
	closed atomic.Bool
	ownDB  bool // opened by OpenDSN: Close closes it
}

var prefixRE = regexp.MustCompile(`^[a-z0-9_]{0,32}$`)

// OpenSQL uses db (opened by the caller with driver "pgx" or "mysql", which the caller
// closes after Close) as the ledger and creates its tables if they do not exist.
func OpenSQL(ctx context.Context, db *sql.DB, d Dialect, o SQLOptions) (*SQL, error) {
	dl, err := dialectFor(d)
	if err != nil {
		return nil, err
	}
	if o.Prefix == "" {
		o.Prefix = "billing_"
	}
	if !prefixRE.MatchString(o.Prefix) {
		return nil, fmt.Errorf("ledger: table prefix %q: want [a-z0-9_], at most 32 characters", o.Prefix)
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 20
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s := &SQL{db: db, d: dl, p: o.Prefix, max: o.MaxAttempts, logger: o.Logger}
	// Several nodes may start at once: CREATE TABLE IF NOT EXISTS can still race in
	// PostgreSQL's catalog, so the schema is retried a few times.
	for attempt := 1; ; attempt++ {
		err = s.createSchema(ctx)
		if err == nil || attempt == 5 || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Duration(attempt) * 50 * time.Millisecond)
	}
	if err != nil {
		return nil, fmt.Errorf("ledger: create schema: %w", err)
	}
	return s, nil
}

func (s *SQL) t(name string) string { return s.p + name }

func (s *SQL) createSchema(ctx context.Context) error {
	stmts := []string{
		`CREATE TABLE IF NOT EXISTS ` + s.t("partitions") + ` (
	part INTEGER NOT NULL,
	epoch BIGINT NOT NULL,
	next_offset BIGINT NOT NULL,
	committed SMALLINT NOT NULL,
	PRIMARY KEY (part)
)`,
		`CREATE TABLE IF NOT EXISTS ` + s.t("ledger") + ` (
	click_key VARCHAR(200) NOT NULL,
	state SMALLINT NOT NULL,
	reason SMALLINT NOT NULL,
	charged_micros BIGINT NOT NULL,
	price_micros BIGINT NOT NULL,
	event_time BIGINT NOT NULL,
	day INTEGER NOT NULL,
	day_start BIGINT NOT NULL,
	refunded_at BIGINT NOT NULL,
	part INTEGER NOT NULL,
	log_offset BIGINT NOT NULL,
	campaign_id VARCHAR(255) NOT NULL,
	ad_id VARCHAR(255) NOT NULL,
	advertiser_id VARCHAR(255) NOT NULL,
	PRIMARY KEY (click_key)
)`,
		`CREATE TABLE IF NOT EXISTS ` + s.t("spend_day") + ` (
	campaign_id VARCHAR(255) NOT NULL,
	day_start BIGINT NOT NULL,
	micros BIGINT NOT NULL,
	PRIMARY KEY (campaign_id, day_start)
)`,
		`CREATE TABLE IF NOT EXISTS ` + s.t("spend_total") + ` (
	campaign_id VARCHAR(255) NOT NULL,
	micros BIGINT NOT NULL,
	PRIMARY KEY (campaign_id)
)`,
		`CREATE TABLE IF NOT EXISTS ` + s.t("journal") + ` (
	seq BIGINT NOT NULL,
	entry ` + s.d.blob + ` NOT NULL,
	PRIMARY KEY (seq)
)`,
		`CREATE TABLE IF NOT EXISTS ` + s.t("counters") + ` (
	name VARCHAR(64) NOT NULL,
	value BIGINT NOT NULL,
	PRIMARY KEY (name)
)`,
		`CREATE TABLE IF NOT EXISTS ` + s.t("views") + ` (
	day INTEGER NOT NULL,
	user_id VARCHAR(255) NOT NULL,
	catalog_id VARCHAR(255) NOT NULL,
	n BIGINT NOT NULL,
	PRIMARY KEY (day, user_id, catalog_id)
)`,
		`CREATE TABLE IF NOT EXISTS ` + s.t("known") + ` (
	campaign_id VARCHAR(255) NOT NULL,
	PRIMARY KEY (campaign_id)
)`,
		`CREATE TABLE IF NOT EXISTS ` + s.t("meta") + ` (
	name VARCHAR(255) NOT NULL,
	value ` + s.d.blob + ` NOT NULL,
	PRIMARY KEY (name)
)`,
	}
	for _, st := range stmts {
		if _, err := s.db.ExecContext(ctx, st+s.d.table); err != nil {
			return err
		}
	}
	_, err := s.db.ExecContext(ctx, s.d.q(s.d.insertIgnore(s.t("counters"), "name, value", "(?, 0)", "name", "value")), "journal")
	return err
}

// OpenDSN opens the database an address names, in the forms of catalog.ParseDSN
// (postgres://..., mysql://user:pass@tcp(host:3306)/db), and uses it as the ledger; Close
// closes it. The binary registers the drivers ("pgx", "mysql").
func OpenDSN(ctx context.Context, dsn string, o SQLOptions) (*SQL, error) {
	d, driver, conn, err := catalog.ParseDSN(dsn)
	if err != nil {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	var dl Dialect
	switch d {
	case catalog.DialectPostgres:
		dl = DialectPostgres
	case catalog.DialectMySQL:
		dl = DialectMySQL
	default:
		return nil, fmt.Errorf("ledger: DSN %q: the shared ledger needs PostgreSQL or MySQL/MariaDB", dsn)
	}
	db, err := sql.Open(driver, conn)
	if err != nil {
		return nil, fmt.Errorf("ledger: open %s: %w", dl, err)
	}
	s, err := OpenSQL(ctx, db, dl, o)
	if err != nil {
		db.Close()
		return nil, err
	}
	s.ownDB = true
	return s, nil
}

// Close marks the store closed; the caller closes the *sql.DB it gave OpenSQL.
func (s *SQL) Close() error {
	if s.closed.Swap(true) || !s.ownDB {
		return nil
	}
	return s.db.Close()
}

func (s *SQL) check() error {
	if s.closed.Load() {
		return ErrClosed
	}
	return nil
}

// inTx runs f in one READ COMMITTED transaction, again while it fails with a retryable error.
func (s *SQL) inTx(ctx context.Context, f func(tx *sql.Tx) error) (int, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	backoff := 2 * time.Millisecond
	dups := 0
	for attempt := 1; ; attempt++ {
		err := s.txOnce(ctx, f)
		if isDuplicate(err) {
			// A key another transaction inserted first is seen by the next attempt; a
			// function that inserts it again regardless is a caller bug, not a race.
			dups++
		}
		if err == nil || !retryable(err) || attempt >= s.max || dups > 3 || ctx.Err() != nil {
			return attempt, err
		}
		s.logger.Debug("ledger: transaction lost a race; running it again", "attempt", attempt, "err", err)
		// Jitter, so two nodes that deadlocked do not collide again in lockstep.
		select {
		case <-ctx.Done():
			return attempt, ctx.Err()
		case <-time.After(backoff/2 + rand.N(backoff)):
		}
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

func (s *SQL) txOnce(ctx context.Context, f func(tx *sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return err
	}
	if err := f(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// Claim bumps the partitions' epochs, in partition order, in one transaction.
func (s *SQL) Claim(ctx context.Context, partitions []int32) ([]Claim, error) {
	ps := slices.Clone(partitions)
	slices.Sort(ps)
	ps = slices.Compact(ps)
	var out []Claim
	_, err := s.inTx(ctx, func(tx *sql.Tx) error {
		out = out[:0]
		for _, p := range ps {
			if p < 0 {
				return fmt.Errorf("%w: partition %d", ErrInvalid, p)
			}
			if _, err := tx.ExecContext(ctx, s.d.q(s.d.insertIgnore(s.t("partitions"), "part, epoch, next_offset, committed", "(?, 0, 0, 0)", "part", "epoch")), p); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, s.d.q(`UPDATE `+s.t("partitions")+` SET epoch = epoch + 1 WHERE part = ?`), p); err != nil {
				return err
			}
			c := Claim{Partition: p}
			var committed int
			if err := tx.QueryRowContext(ctx, s.d.q(`SELECT epoch, next_offset, committed FROM `+s.t("partitions")+` WHERE part = ?`), p).Scan(&c.Epoch, &c.Next, &committed); err != nil {
				return err
			}
			c.Committed = committed != 0
			out = append(out, c)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("claim partitions: %w", err)
	}
	return out, nil
}

// querier is *sql.DB or *sql.Tx.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

const ledgerCols = "click_key, state, reason, charged_micros, price_micros, event_time, day, day_start, refunded_at, part, log_offset, campaign_id, ad_id, advertiser_id"

// chunk bounds the rows of one multi-row statement.
const chunk = 200

func (s *SQL) entries(ctx context.Context, q querier, keys []string, lock bool) (map[string]Entry, error) {
	keys = slices.Clone(keys)
	slices.Sort(keys)
	keys = slices.Compact(keys)
	out := make(map[string]Entry, len(keys))
	for c := range slices.Chunk(keys, chunk) {
		stmt := `SELECT ` + ledgerCols + ` FROM ` + s.t("ledger") + ` WHERE click_key IN (` + strings.TrimSuffix(strings.Repeat("?, ", len(c)), ", ") + `) ORDER BY click_key`
		if lock {
			stmt += " FOR UPDATE"
		}
		args := make([]any, len(c))
		for i, k := range c {
			args[i] = k
		}
		rows, err := q.QueryContext(ctx, s.d.q(stmt), args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var e Entry
			if err := rows.Scan(&e.Key, &e.State, &e.Reason, &e.ChargedMicros, &e.PriceMicros, &e.Time, &e.Day, &e.DayStart, &e.RefundedAt,
				&e.Partition, &e.Offset, &e.CampaignID, &e.AdID, &e.AdvertiserID); err != nil {
				rows.Close()
				return nil, err
			}
			out[e.Key] = e
		}
		if err := rows.Close(); err != nil {
			return nil, err
		}
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// spend reads days and totals; with lock, it first makes sure every row exists (so that
// there is a row to lock) and locks them in the fixed order.
func (s *SQL) spend(ctx context.Context, q querier, days []SpendKey, lock bool) (map[SpendKey]int64, map[string]int64, error) {
	days, camps := sortedSpendKeys(days)
	day, total := make(map[SpendKey]int64, len(days)), make(map[string]int64, len(camps))
	forUpdate := ""
	if lock {
		forUpdate = " FOR UPDATE"
	}
	for c := range slices.Chunk(days, chunk) {
		args := make([]any, 0, 2*len(c))
		for _, k := range c {
			args = append(args, k.Campaign, k.DayStart)
		}
		if lock {
			if _, err := q.ExecContext(ctx, s.d.q(s.d.insertIgnore(s.t("spend_day"), "campaign_id, day_start, micros", placeholdersWith(len(c), "?, ?, 0"), "campaign_id, day_start", "micros")), args...); err != nil {
				return nil, nil, err
			}
		}
		err := s.query(ctx, q, `SELECT campaign_id, day_start, micros FROM `+s.t("spend_day")+` WHERE (campaign_id, day_start) IN (`+placeholders(len(c), 2)+`) ORDER BY campaign_id, day_start`+forUpdate, args, func(r *sql.Rows) error {
			var k SpendKey
			var v int64
			if err := r.Scan(&k.Campaign, &k.DayStart, &v); err != nil {
				return err
			}
			day[k] = v
			return nil
		})
		if err != nil {
			return nil, nil, err
		}
	}
	for c := range slices.Chunk(camps, chunk) {
		args := make([]any, len(c))
		for i, id := range c {
			args[i] = id
		}
		if lock {
			if _, err := q.ExecContext(ctx, s.d.q(s.d.insertIgnore(s.t("spend_total"), "campaign_id, micros", placeholdersWith(len(c), "?, 0"), "campaign_id", "micros")), args...); err != nil {
				return nil, nil, err
			}
		}
		err := s.query(ctx, q, `SELECT campaign_id, micros FROM `+s.t("spend_total")+` WHERE campaign_id IN (`+placeholders(len(c), 1)+`) ORDER BY campaign_id`+forUpdate, args, func(r *sql.Rows) error {
			var id string
			var v int64
			if err := r.Scan(&id, &v); err != nil {
				return err
			}
			total[id] = v
			return nil
		})
		if err != nil {
			return nil, nil, err
		}
	}
	for _, k := range days {
		if _, ok := day[k]; !ok {
			day[k] = 0
		}
		if _, ok := total[k.Campaign]; !ok {
			total[k.Campaign] = 0
		}
	}
	return day, total, nil
}

// placeholdersWith returns rows groups "(inner)".
func placeholdersWith(rows int, inner string) string {
	return strings.TrimSuffix(strings.Repeat("("+inner+"), ", rows), ", ")
}

// query runs a statement and calls f for each row.
func (s *SQL) query(ctx context.Context, q querier, stmt string, args []any, f func(*sql.Rows) error) error {
	rows, err := q.QueryContext(ctx, s.d.q(stmt), args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := f(rows); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return rows.Close()
}

type sqlTx struct {
	s  *SQL
	tx *sql.Tx
}

func (t sqlTx) Entries(ctx context.Context, keys []string, lock bool) (map[string]Entry, error) {
	return t.s.entries(ctx, t.tx, keys, lock)
}

func (t sqlTx) LockSpend(ctx context.Context, days []SpendKey) (map[SpendKey]int64, map[string]int64, error) {
	return t.s.spend(ctx, t.tx, days, true)
}

// Update runs fn and writes its Writes in one transaction, again on a lost race.
func (s *SQL) Update(ctx context.Context, fn func(context.Context, Tx) (*Writes, error)) (Result, error) {
	var res Result
	attempts, err := s.inTx(ctx, func(tx *sql.Tx) error {
		res = Result{}
		w, err := fn(ctx, sqlTx{s, tx})
		if err != nil || w == nil || w.empty() {
			return err
		}
		if err := checkWrites(w); err != nil {
			return err
		}
		return s.write(ctx, tx, w, &res)
	})
	res.Attempts = attempts
	return res, err
}

// write applies w inside tx, in the lock order of the type comment.
func (s *SQL) write(ctx context.Context, tx *sql.Tx, w *Writes, res *Result) error {
	if err := s.fence(ctx, tx, w.Offsets); err != nil {
		return err
	}
	entries := slices.Clone(w.Entries)
	slices.SortFunc(entries, func(a, b Entry) int { return strings.Compare(a.Key, b.Key) })
	for c := range slices.Chunk(entries, chunk) {
		args := make([]any, 0, 14*len(c))
		for _, e := range c {
			args = append(args, e.Key, e.State, e.Reason, e.ChargedMicros, e.PriceMicros, e.Time, e.Day, e.DayStart, e.RefundedAt,
				e.Partition, e.Offset, e.CampaignID, e.AdID, e.AdvertiserID)
		}
		if _, err := tx.ExecContext(ctx, s.d.q(`INSERT INTO `+s.t("ledger")+` (`+ledgerCols+`) VALUES `+placeholders(len(c), 14)), args...); err != nil {
			return err
		}
	}
	for _, e := range w.Replace {
		r, err := tx.ExecContext(ctx, s.d.q(`UPDATE `+s.t("ledger")+` SET state = ?, reason = ?, charged_micros = ?, price_micros = ?, event_time = ?, day = ?, day_start = ?, refunded_at = ?, part = ?, log_offset = ?, campaign_id = ?, ad_id = ?, advertiser_id = ? WHERE click_key = ?`),
			e.State, e.Reason, e.ChargedMicros, e.PriceMicros, e.Time, e.Day, e.DayStart, e.RefundedAt, e.Partition, e.Offset, e.CampaignID, e.AdID, e.AdvertiserID, e.Key)
		if err != nil {
			return err
		}
		if n, err := r.RowsAffected(); err == nil && n != 1 {
			return fmt.Errorf("%w: ledger entry %q to replace does not exist", ErrInvalid, e.Key)
		}
	}
	if err := s.addSpend(ctx, tx, w.Spend); err != nil {
		return err
	}
	var err error
	if res.Views, err = s.addViews(ctx, tx, w.Views); err != nil {
		return err
	}
	if w.ExpireViewsBefore > 0 {
		if _, err := tx.ExecContext(ctx, s.d.q(`DELETE FROM `+s.t("views")+` WHERE day < ?`), w.ExpireViewsBefore); err != nil {
			return err
		}
	}
	known := slices.Clone(w.Known)
	slices.Sort(known)
	for c := range slices.Chunk(slices.Compact(known), chunk) {
		args := make([]any, len(c))
		for i, id := range c {
			args[i] = id
		}
		if _, err := tx.ExecContext(ctx, s.d.q(s.d.insertIgnore(s.t("known"), "campaign_id", placeholders(len(c), 1), "campaign_id", "campaign_id")), args...); err != nil {
			return err
		}
	}
	for _, name := range slices.Sorted(maps.Keys(w.Meta)) {
		if _, err := tx.ExecContext(ctx, s.d.q(s.d.upsertSet(s.t("meta"), "name, value", "(?, ?)", "name", "value")), name, w.Meta[name]); err != nil {
			return err
		}
	}
	if w.Journal != nil {
		// The counter row stays locked until commit: commit order is seq order.
		var next uint64
		if err := tx.QueryRowContext(ctx, s.d.q(`SELECT value FROM `+s.t("counters")+` WHERE name = ? FOR UPDATE`), "journal").Scan(&next); err != nil {
			return fmt.Errorf("lock journal counter: %w", err)
		}
		if _, err := tx.ExecContext(ctx, s.d.q(`INSERT INTO `+s.t("journal")+` (seq, entry) VALUES (?, ?)`), next, w.Journal); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, s.d.q(`UPDATE `+s.t("counters")+` SET value = ? WHERE name = ?`), next+1, "journal"); err != nil {
			return err
		}
		res.JournalSeq = next
	}
	for _, o := range w.Offsets {
		if _, err := tx.ExecContext(ctx, s.d.q(`UPDATE `+s.t("partitions")+` SET next_offset = ?, committed = 1 WHERE part = ?`), o.Next, o.Partition); err != nil {
			return err
		}
	}
	return nil
}

// fence locks the partition rows of offsets, in partition order, and fails if an epoch is
// stale. The locks are held until commit, so a Claim that comes later waits for this
// transaction and then sees its offsets.
func (s *SQL) fence(ctx context.Context, tx *sql.Tx, offsets []Offset) error {
	if len(offsets) == 0 {
		return nil
	}
	os := slices.Clone(offsets)
	slices.SortFunc(os, func(a, b Offset) int { return int(a.Partition) - int(b.Partition) })
	args := make([]any, len(os))
	for i, o := range os {
		args[i] = o.Partition
	}
	epochs := make(map[int32]int64, len(os))
	err := s.query(ctx, tx, `SELECT part, epoch FROM `+s.t("partitions")+` WHERE part IN (`+placeholders(len(os), 1)+`) ORDER BY part FOR UPDATE`, args, func(r *sql.Rows) error {
		var p int32
		var e int64
		if err := r.Scan(&p, &e); err != nil {
			return err
		}
		epochs[p] = e
		return nil
	})
	if err != nil {
		return fmt.Errorf("lock partitions: %w", err)
	}
	var stale []int32
	for _, o := range os {
		if e, ok := epochs[o.Partition]; !ok || e != o.Epoch {
			stale = append(stale, o.Partition)
		}
	}
	if stale != nil {
		return &FencedError{Partitions: stale}
	}
	return nil
}

func (s *SQL) addSpend(ctx context.Context, tx *sql.Tx, deltas []SpendDelta) error {
	days, totals := make(map[SpendKey]int64), make(map[string]int64)
	for _, d := range deltas {
		days[d.SpendKey] += d.Micros
		totals[d.Campaign] += d.Micros
	}
	keys := slices.SortedFunc(maps.Keys(days), CompareSpendKeys)
	for _, k := range keys {
		if _, err := tx.ExecContext(ctx, s.d.q(s.d.upsertAdd(s.t("spend_day"), "campaign_id, day_start, micros", "(?, ?, ?)", "campaign_id, day_start", "micros")), k.Campaign, k.DayStart, days[k]); err != nil {
			return err
		}
	}
	for _, id := range slices.Sorted(maps.Keys(totals)) {
		if _, err := tx.ExecContext(ctx, s.d.q(s.d.upsertAdd(s.t("spend_total"), "campaign_id, micros", "(?, ?)", "campaign_id", "micros")), id, totals[id]); err != nil {
			return err
		}
	}
	if len(keys) == 0 {
		return nil
	}
	// Spend never goes negative: checked on what the transaction now holds.
	d, t, err := s.spend(ctx, tx, keys, false)
	if err != nil {
		return err
	}
	for k, v := range d {
		if v < 0 {
			return fmt.Errorf("%w: spend of %s on the day from %d would become %d", ErrInvalid, k.Campaign, k.DayStart, v)
		}
	}
	for id, v := range t {
		if v < 0 {
			return fmt.Errorf("%w: total spend of %s would become %d", ErrInvalid, id, v)
		}
	}
	return nil
}

func (s *SQL) addViews(ctx context.Context, tx *sql.Tx, views []ViewCount) ([]ViewCount, error) {
	sums := make(map[ViewKey]int64, len(views))
	for _, v := range views {
		sums[v.ViewKey] += v.Count
	}
	keys := slices.SortedFunc(maps.Keys(sums), func(a, b ViewKey) int { return compareViews(ViewCount{ViewKey: a}, ViewCount{ViewKey: b}) })
	out := make([]ViewCount, 0, len(keys))
	for c := range slices.Chunk(keys, chunk) {
		args := make([]any, 0, 4*len(c))
		for _, k := range c {
			args = append(args, k.Day, k.UserID, k.CatalogID, sums[k])
		}
		if _, err := tx.ExecContext(ctx, s.d.q(s.d.upsertAdd(s.t("views"), "day, user_id, catalog_id, n", placeholders(len(c), 4), "day, user_id, catalog_id", "n")), args...); err != nil {
			return nil, err
		}
		args = args[:0]
		for _, k := range c {
			args = append(args, k.Day, k.UserID, k.CatalogID)
		}
		// The rows are this transaction's (locked by the upsert): these are the committed totals.
		err := s.query(ctx, tx, `SELECT day, user_id, catalog_id, n FROM `+s.t("views")+` WHERE (day, user_id, catalog_id) IN (`+placeholders(len(c), 3)+`) ORDER BY day, user_id, catalog_id`, args, func(r *sql.Rows) error {
			var v ViewCount
			if err := r.Scan(&v.Day, &v.UserID, &v.CatalogID, &v.Count); err != nil {
				return err
			}
			out = append(out, v)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}
