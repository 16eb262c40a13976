package ledger

import (
	"context"
	"database/sql"
	"errors"
)

// The SQL store's reads outside transactions: committed state, for statuses, clicks, views,
// the journal publisher and audits.

// Entries reads committed ledger entries.
func (s *SQL) Entries(ctx context.Context, keys []string) (map[string]Entry, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	return s.entries(ctx, s.db, keys, false)
}

// Spend reads committed spend. Days and totals come from two statements: a charge between
// them can make a total include a day the days do not (status reads tolerate it).
func (s *SQL) Spend(ctx context.Context, days []SpendKey) (map[SpendKey]int64, map[string]int64, error) {
	if err := s.check(); err != nil {
		return nil, nil, err
	}
	return s.spend(ctx, s.db, days, false)
}

// Views reads one user's counts of a day.
func (s *SQL) Views(ctx context.Context, day uint32, userID string) (map[string]int64, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	out := make(map[string]int64)
	err := s.query(ctx, s.db, `SELECT catalog_id, n FROM `+s.t("views")+` WHERE day = ? AND user_id = ?`, []any{day, userID}, func(r *sql.Rows) error {
		var id string
		var n int64
		if err := r.Scan(&id, &n); err != nil {
			return err
		}
		out[id] = n
		return nil
	})
	return out, err
}

// ScanViews reads every count of a day, by user then catalog id.
func (s *SQL) ScanViews(ctx context.Context, day uint32, fn func(ViewCount) error) error {
	if err := s.check(); err != nil {
		return err
	}
	return s.query(ctx, s.db, `SELECT user_id, catalog_id, n FROM `+s.t("views")+` WHERE day = ? ORDER BY user_id, catalog_id`, []any{day}, func(r *sql.Rows) error {
		v := ViewCount{ViewKey: ViewKey{Day: day}}
		if err := r.Scan(&v.UserID, &v.CatalogID, &v.Count); err != nil {
			return err
		}
		return fn(v)
	})
}

// JournalNext reads the journal counter.
func (s *SQL) JournalNext(ctx context.Context) (uint64, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	var n uint64
	err := s.db.QueryRowContext(ctx, s.d.q(`SELECT value FROM `+s.t("counters")+` WHERE name = ?`), "journal").Scan(&n)
	return n, err
}

// FirstJournal returns the oldest retained seq, or JournalNext.
func (s *SQL) FirstJournal(ctx context.Context) (uint64, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	// One statement, so one snapshot: read apart, an entry committed and the counter bumped
	// between an empty journal and the counter would give a first entry past what the metric
	// store may still need.
	var first uint64
	err := s.db.QueryRowContext(ctx, s.d.q(`SELECT COALESCE((SELECT MIN(seq) FROM `+s.t("journal")+`), (SELECT value FROM `+s.t("counters")+` WHERE name = ?))`), "journal").Scan(&first)
	return first, err
}

// Journal reads the entries of [from, to) in seq order.
func (s *SQL) Journal(ctx context.Context, from, to uint64, fn func(uint64, []byte) error) error {
	if err := s.check(); err != nil {
		return err
	}
	return s.query(ctx, s.db, `SELECT seq, entry FROM `+s.t("journal")+` WHERE seq >= ? AND seq < ? ORDER BY seq`, []any{from, to}, func(r *sql.Rows) error {
		var seq uint64
		var v []byte
		if err := r.Scan(&seq, &v); err != nil {
			return err
		}
		return fn(seq, v)
	})
}

// DropJournal deletes the entries below seq.
func (s *SQL) DropJournal(ctx context.Context, below uint64) error {
	if err := s.check(); err != nil {
		return err
	}
	_, err := s.db.ExecContext(ctx, s.d.q(`DELETE FROM `+s.t("journal")+` WHERE seq < ?`), below)
	return err
}

// Known lists the campaigns seen in the log.
func (s *SQL) Known(ctx context.Context) ([]string, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	var out []string
	err := s.query(ctx, s.db, `SELECT campaign_id FROM `+s.t("known")+` ORDER BY campaign_id`, nil, func(r *sql.Rows) error {
		var id string
		if err := r.Scan(&id); err != nil {
			return err
		}
		out = append(out, id)
		return nil
	})
	return out, err
}

// Meta reads a named value.
func (s *SQL) Meta(ctx context.Context, name string) ([]byte, bool, error) {
	if err := s.check(); err != nil {
		return nil, false, err
	}
	var v []byte
	err := s.db.QueryRowContext(ctx, s.d.q(`SELECT value FROM `+s.t("meta")+` WHERE name = ?`), name).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, false, nil
	}
	return v, err == nil, err
}

// ScanLedger reads every ledger entry, by key.
func (s *SQL) ScanLedger(ctx context.Context, fn func(Entry) error) error {
	if err := s.check(); err != nil {
		return err
	}
	return s.query(ctx, s.db, `SELECT `+ledgerCols+` FROM `+s.t("ledger")+` ORDER BY click_key`, nil, func(r *sql.Rows) error {
		var e Entry
		if err := r.Scan(&e.Key, &e.State, &e.Reason, &e.ChargedMicros, &e.PriceMicros, &e.Time, &e.Day, &e.DayStart, &e.RefundedAt,
			&e.Partition, &e.Offset, &e.CampaignID, &e.AdID, &e.AdvertiserID); err != nil {
			return err
		}
		return fn(e)
	})
}

// ScanSpend reads every spend row.
func (s *SQL) ScanSpend(ctx context.Context, day func(SpendKey, int64) error, total func(string, int64) error) error {
	if err := s.check(); err != nil {
		return err
	}
	err := s.query(ctx, s.db, `SELECT campaign_id, day_start, micros FROM `+s.t("spend_day")+` ORDER BY campaign_id, day_start`, nil, func(r *sql.Rows) error {
		var k SpendKey
		var v int64
		if err := r.Scan(&k.Campaign, &k.DayStart, &v); err != nil {
			return err
		}
		return day(k, v)
	})
	if err != nil {
		return err
	}
	return s.query(ctx, s.db, `SELECT campaign_id, micros FROM `+s.t("spend_total")+` ORDER BY campaign_id`, nil, func(r *sql.Rows) error {
		var id string
		var v int64
		if err := r.Scan(&id, &v); err != nil {
			return err
		}
		return total(id, v)
	})
}
