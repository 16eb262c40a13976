package feeds

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/adpulse/adpulse/internal/catalog"
)

// The versions live in the catalog database, the one store every process of a deployment
// shares that has transactions: process nodes charge auto-CPC bids from it and query nodes
// answer recommendations from it. Times are BIGINT Unix microseconds, as in the catalog.
//
// A load is one transaction: the version's row in feed_versions first (its primary key is the
// lock: a second loader of the same version waits for the first and then fails on the key, so
// two loaders never both load it), then its rows, then the active pointer, then the expiry of
// versions beyond the kept count. A rejected version is only a row in feed_versions. Because
// every version processed, loaded or rejected, keeps its row forever (the rows of its data are
// what expiry deletes), a version is never processed twice, across restarts and nodes.

// Version states.
const (
	StateLoaded   = "loaded"
	StateRejected = "rejected"
	StateExpired  = "expired" // loaded once; its rows were dropped to keep the newest versions
)

// ErrExists is returned by Load and Reject for a version already processed.
var ErrExists = errors.New("feed version already processed")

// ErrNotFound is returned for a feed version that was never loaded.
var ErrNotFound = errors.New("not found")

// VersionInfo is one processed version of a feed.
type VersionInfo struct {
	Feed, Version string
	State         string
	Rows          int64
	Files         int
	ProcessedAt   time.Time
	Reason        string // why it was rejected
}

// Store keeps feed versions in SQL.
type Store struct {
	db      *sql.DB
	dollar  bool
	options string // ends every CREATE TABLE
	now     func() time.Time
}

const insertChunk = 200 // rows per INSERT

// OpenStore creates the feed tables in the catalog's database if needed.
func OpenStore(ctx context.Context, db *sql.DB, d catalog.Dialect, now func() time.Time) (*Store, error) {
	s := &Store{db: db, now: now}
	if s.now == nil {
		s.now = time.Now
	}
	switch d {
	case catalog.DialectPostgres:
		s.dollar = true
	case catalog.DialectMySQL:
		s.options = " ENGINE=InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
	}
	for _, t := range []string{
		`CREATE TABLE IF NOT EXISTS feed_versions (
	feed VARCHAR(64) NOT NULL,
	version VARCHAR(64) NOT NULL,
	state VARCHAR(16) NOT NULL,
	row_count BIGINT NOT NULL,
	file_count INT NOT NULL,
	processed_at BIGINT NOT NULL,
	reason VARCHAR(1024) NULL,
	PRIMARY KEY (feed, version)
)`,
		`CREATE TABLE IF NOT EXISTS feed_active (
	feed VARCHAR(64) NOT NULL,
	version VARCHAR(64) NOT NULL,
	activated_at BIGINT NOT NULL,
	PRIMARY KEY (feed)
)`,
		`CREATE TABLE IF NOT EXISTS feed_auto_cpc (
	version VARCHAR(64) NOT NULL,
	catalog_id VARCHAR(64) NOT NULL,
	bid_micros BIGINT NOT NULL,
	PRIMARY KEY (version, catalog_id)
)`,
		`CREATE TABLE IF NOT EXISTS feed_budget_recommendations (
	version VARCHAR(64) NOT NULL,
	campaign_id VARCHAR(64) NOT NULL,
	recommended_daily_budget_micros BIGINT NOT NULL,
	expected_clicks BIGINT NULL,
	reason VARCHAR(256) NULL,
	PRIMARY KEY (version, campaign_id)
)`,
	} {
		if _, err := db.ExecContext(ctx, t+s.options); err != nil {
			return nil, fmt.Errorf("create feed tables: %w", err)
		}
	}
	return s, nil
}

// q rewrites "?" placeholders for PostgreSQL.
func (s *Store) q(query string) string {
	if !s.dollar {
		return query
	}
	var b strings.Builder
	n := 0
	for i := 0; i < len(query); i++ {
		if query[i] == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteByte(query[i])
	}
	return b.String()
}

// Known reports whether a version was processed (loaded, rejected or expired).
func (s *Store) Known(ctx context.Context, feed, version string) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM feed_versions WHERE feed = ? AND version = ?`), feed, version).Scan(&n)
	return n > 0, err
}

// Reject records a version that failed validation, with the reason.
func (s *Store) Reject(ctx context.Context, v VersionInfo) error {
	if len(v.Reason) > 1024 {
		v.Reason = v.Reason[:1021] + "..."
	}
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO feed_versions (feed, version, state, row_count, file_count, processed_at, reason) VALUES (?, ?, ?, ?, ?, ?, ?)`),
		v.Feed, v.Version, StateRejected, v.Rows, v.Files, s.now().UnixMicro(), v.Reason)
	if err != nil {
		if known, kerr := s.Known(ctx, v.Feed, v.Version); kerr == nil && known {
			return ErrExists
		}
		return fmt.Errorf("record rejected feed version %s/%s: %w", v.Feed, v.Version, err)
	}
	return nil
}

// load stores a validated version and makes it the active one, in one transaction, keeping the
// rows of the newest keep loaded versions (and of the active one). rows are in file order.
func (s *Store) load(ctx context.Context, def *feedDef, v VersionInfo, rows []row, keep int) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("load feed version: %w", err)
	}
	defer tx.Rollback()
	now := s.now().UnixMicro()
	if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO feed_versions (feed, version, state, row_count, file_count, processed_at, reason) VALUES (?, ?, ?, ?, ?, ?, NULL)`),
		v.Feed, v.Version, StateLoaded, int64(len(rows)), v.Files, now); err != nil {
		_ = tx.Rollback()
		if known, kerr := s.Known(ctx, v.Feed, v.Version); kerr == nil && known {
			return ErrExists
		}
		return fmt.Errorf("load feed version %s/%s: %w", v.Feed, v.Version, err)
	}
	if err := s.insertRows(ctx, tx, def, v.Version, rows); err != nil {
		return fmt.Errorf("load feed version %s/%s: %w", v.Feed, v.Version, err)
	}
	if err := s.activate(ctx, tx, v.Feed, v.Version, now); err != nil {
		return err
	}
	if err := s.expire(ctx, tx, def, keep); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("load feed version %s/%s: commit: %w", v.Feed, v.Version, err)
	}
	return nil
}

func (s *Store) insertRows(ctx context.Context, tx *sql.Tx, def *feedDef, version string, rows []row) error {
	cols, per := "(version, catalog_id, bid_micros)", "(?, ?, ?)"
	if def.name == BudgetRecommendations {
		cols, per = "(version, campaign_id, recommended_daily_budget_micros, expected_clicks, reason)", "(?, ?, ?, ?, ?)"
	}
	for start := 0; start < len(rows); start += insertChunk {
		end := min(start+insertChunk, len(rows))
		var b strings.Builder
		b.WriteString("INSERT INTO " + def.dataSQL + " " + cols + " VALUES ")
		args := make([]any, 0, 5*(end-start))
		for i := start; i < end; i++ {
			if i > start {
				b.WriteString(", ")
			}
			b.WriteString(per)
			r := rows[i]
			args = append(args, version, r.key, r.value)
			if def.name == BudgetRecommendations {
				args = append(args, r.n, r.s)
			}
		}
		if _, err := tx.ExecContext(ctx, s.q(b.String()), args...); err != nil {
			return err
		}
	}
	return nil
}

// activate points feed at version. SELECT then UPDATE or INSERT: portable, and MySQL's rows
// affected (changed, not matched) cannot be trusted to tell whether the row exists.
func (s *Store) activate(ctx context.Context, tx *sql.Tx, feed, version string, now int64) error {
	var cur string
	err := tx.QueryRowContext(ctx, s.q(`SELECT version FROM feed_active WHERE feed = ?`), feed).Scan(&cur)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		_, err = tx.ExecContext(ctx, s.q(`INSERT INTO feed_active (feed, version, activated_at) VALUES (?, ?, ?)`), feed, version, now)
	case err == nil:
		_, err = tx.ExecContext(ctx, s.q(`UPDATE feed_active SET version = ?, activated_at = ? WHERE feed = ?`), version, now, feed)
	}
	if err != nil {
		return fmt.Errorf("activate feed version %s/%s: %w", feed, version, err)
	}
	return nil
}

// expire drops the rows of loaded versions beyond the newest keep, never the active one.
func (s *Store) expire(ctx context.Context, tx *sql.Tx, def *feedDef, keep int) error {
	var active string
	if err := tx.QueryRowContext(ctx, s.q(`SELECT version FROM feed_active WHERE feed = ?`), def.name).Scan(&active); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("expire feed versions: %w", err)
	}
	rows, err := tx.QueryContext(ctx, s.q(`SELECT version FROM feed_versions WHERE feed = ? AND state = ? ORDER BY processed_at DESC, version DESC`), def.name, StateLoaded)
	if err != nil {
		return fmt.Errorf("expire feed versions: %w", err)
	}
	var old []string
	n := 0
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return fmt.Errorf("expire feed versions: %w", err)
		}
		if n++; n > keep && v != active {
			old = append(old, v)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("expire feed versions: %w", err)
	}
	for _, v := range old {
		if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM `+def.dataSQL+` WHERE version = ?`), v); err != nil {
			return fmt.Errorf("expire feed version %s/%s: %w", def.name, v, err)
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE feed_versions SET state = ? WHERE feed = ? AND version = ?`), StateExpired, def.name, v); err != nil {
			return fmt.Errorf("expire feed version %s/%s: %w", def.name, v, err)
		}
	}
	return nil
}

// Rollback makes an older loaded version of feed the active one. It returns an error wrapping
// ErrNotFound for a version never processed, and ErrNotLoaded for one rejected or expired.
func (s *Store) Rollback(ctx context.Context, feed, version string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("roll back feed %s: %w", feed, err)
	}
	defer tx.Rollback()
	var state string
	err = tx.QueryRowContext(ctx, s.q(`SELECT state FROM feed_versions WHERE feed = ? AND version = ?`), feed, version).Scan(&state)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("feed version %s/%s: %w", feed, version, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("roll back feed %s: %w", feed, err)
	}
	if state != StateLoaded {
		return fmt.Errorf("feed version %s/%s is %s: %w", feed, version, state, ErrNotLoaded)
	}
	if err := s.activate(ctx, tx, feed, version, s.now().UnixMicro()); err != nil {
		return err
	}
	return tx.Commit()
}

// ErrNotLoaded is returned by Rollback for a version whose rows are not kept.
var ErrNotLoaded = errors.New("not loaded")

// Active returns the active version of feed ("" when none).
func (s *Store) Active(ctx context.Context, feed string) (string, error) {
	var v string
	err := s.db.QueryRowContext(ctx, s.q(`SELECT version FROM feed_active WHERE feed = ?`), feed).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return v, err
}

// maxListed bounds the versions Versions returns per feed.
const maxListed = 100

// Versions returns the newest versions of feed, newest first (at most maxListed), and whether
// there are more.
func (s *Store) Versions(ctx context.Context, feed string) ([]VersionInfo, bool, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT version, state, row_count, file_count, processed_at, reason FROM feed_versions
		WHERE feed = ? ORDER BY processed_at DESC, version DESC LIMIT `+strconv.Itoa(maxListed+1)), feed)
	if err != nil {
		return nil, false, err
	}
	defer rows.Close()
	var out []VersionInfo
	for rows.Next() {
		v := VersionInfo{Feed: feed}
		var at int64
		var reason sql.NullString
		if err := rows.Scan(&v.Version, &v.State, &v.Rows, &v.Files, &at, &reason); err != nil {
			return nil, false, err
		}
		v.ProcessedAt, v.Reason = time.UnixMicro(at).UTC(), reason.String
		out = append(out, v)
	}
	if len(out) > maxListed {
		return out[:maxListed], true, rows.Err()
	}
	return out, false, rows.Err()
}

// version reads one version's row.
func (s *Store) version(ctx context.Context, feed, version string) (VersionInfo, error) {
	v := VersionInfo{Feed: feed, Version: version}
	var at int64
	var reason sql.NullString
	err := s.db.QueryRowContext(ctx, s.q(`SELECT state, row_count, file_count, processed_at, reason FROM feed_versions WHERE feed = ? AND version = ?`), feed, version).
		Scan(&v.State, &v.Rows, &v.Files, &at, &reason)
	if errors.Is(err, sql.ErrNoRows) {
		return v, ErrNotFound
	}
	v.ProcessedAt, v.Reason = time.UnixMicro(at).UTC(), reason.String
	return v, err
}

// bids reads the rows of an auto_cpc version.
func (s *Store) bids(ctx context.Context, version string) (map[string]int64, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT catalog_id, bid_micros FROM feed_auto_cpc WHERE version = ?`), version)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	m := make(map[string]int64)
	for rows.Next() {
		var id string
		var bid int64
		if err := rows.Scan(&id, &bid); err != nil {
			return nil, err
		}
		m[id] = bid
	}
	return m, rows.Err()
}

// Recommendation is a campaign's row of the active budget_recommendations version.
type Recommendation struct {
	CampaignID                   string    `json:"campaign_id"`
	RecommendedDailyBudgetMicros int64     `json:"recommended_daily_budget_micros"`
	ExpectedClicks               *int64    `json:"expected_clicks"`
	Reason                       *string   `json:"reason"`
	Version                      string    `json:"version"`
	LoadedAt                     time.Time `json:"-"`
}

// Recommendation returns a campaign's budget recommendation from the active version, or an
// error wrapping ErrNotFound.
func (s *Store) Recommendation(ctx context.Context, campaignID string) (Recommendation, error) {
	r := Recommendation{CampaignID: campaignID}
	var n sql.NullInt64
	var reason sql.NullString
	var at int64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT r.recommended_daily_budget_micros, r.expected_clicks, r.reason, a.version, v.processed_at
		FROM feed_active a
		JOIN feed_budget_recommendations r ON r.version = a.version
		JOIN feed_versions v ON v.feed = a.feed AND v.version = a.version
		WHERE a.feed = ? AND r.campaign_id = ?`), BudgetRecommendations, campaignID).
		Scan(&r.RecommendedDailyBudgetMicros, &n, &reason, &r.Version, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return r, fmt.Errorf("recommendation for campaign %s: %w", campaignID, ErrNotFound)
	}
	if err != nil {
		return r, fmt.Errorf("recommendation for campaign %s: %w", campaignID, err)
	}
	if n.Valid {
		r.ExpectedClicks = &n.Int64
	}
	if reason.Valid {
		r.Reason = &reason.String
	}
	r.LoadedAt = time.UnixMicro(at).UTC()
	return r, nil
}
