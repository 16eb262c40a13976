package feeds

import (
	"database/sql"
	"fmt"
	"strconv"
	"strings"

	"github.com/adpulse/adpulse/internal/bulkimport"
	"github.com/adpulse/adpulse/internal/event"
)

// Feed names.
const (
	AutoCPC               = "auto_cpc"
	BudgetRecommendations = "budget_recommendations"
)

// Limits of feed values.
const (
	MaxMicros        = 1_000_000_000_000_000 // as the catalog's: 1e15
	MaxExpectedClick = 1_000_000_000_000
	MaxReasonLen     = 256
	// MaxRowsLimit bounds the rows of one version whatever Options.MaxRows says.
	MaxRowsLimit = 100_000_000
)

// row is one validated row of any feed: key is its catalog or campaign id, value its micros;
// the optional columns of budget recommendations are n and s.
type row struct {
	key   string
	value int64
	n     sql.NullInt64
	s     sql.NullString
}

// fieldError is a bad value: the column and why.
type fieldError struct{ field, msg string }

func (e *fieldError) Error() string { return e.field + ": " + e.msg }

// feedDef is what differs between feeds: the columns, the check of a row, and the table the
// rows go to.
type feedDef struct {
	name     string
	table    bulkimport.Table
	keyField string
	dataSQL  string // the table of its rows
	// parse checks one record; campaignExists answers whether a campaign id is known.
	parse func(rec bulkimport.Record, campaignExists func(string) bool) (row, *fieldError)
}

var defs = map[string]*feedDef{
	AutoCPC: {
		name:     AutoCPC,
		table:    bulkimport.Table{Columns: []string{"catalog_id", "bid_micros"}, Required: []string{"catalog_id", "bid_micros"}},
		keyField: "catalog_id",
		dataSQL:  "feed_auto_cpc",
		parse: func(rec bulkimport.Record, _ func(string) bool) (row, *fieldError) {
			var r row
			var fe *fieldError
			if r.key, fe = id(rec, "catalog_id"); fe != nil {
				return r, fe
			}
			// A bid of 0 is refused: a click price of 0 means "the ad's bid" in the event.
			if r.value, fe = micros(rec, "bid_micros", 1); fe != nil {
				return r, fe
			}
			return r, nil
		},
	},
	BudgetRecommendations: {
		name: BudgetRecommendations,
		table: bulkimport.Table{Columns: []string{"campaign_id", "recommended_daily_budget_micros", "expected_clicks", "reason"},
			Required: []string{"campaign_id", "recommended_daily_budget_micros"}},
		keyField: "campaign_id",
		dataSQL:  "feed_budget_recommendations",
		parse: func(rec bulkimport.Record, campaignExists func(string) bool) (row, *fieldError) {
			var r row
			var fe *fieldError
			if r.key, fe = id(rec, "campaign_id"); fe != nil {
				return r, fe
			}
			if campaignExists != nil && !campaignExists(r.key) {
				return r, &fieldError{"campaign_id", "no such campaign " + r.key}
			}
			if r.value, fe = micros(rec, "recommended_daily_budget_micros", 0); fe != nil {
				return r, fe
			}
			if s := strings.TrimSpace(rec["expected_clicks"]); s != "" {
				n, err := strconv.ParseInt(s, 10, 64)
				if err != nil || n < 0 || n > MaxExpectedClick {
					return r, &fieldError{"expected_clicks", fmt.Sprintf("must be an integer from 0 to %d", int64(MaxExpectedClick))}
				}
				r.n = sql.NullInt64{Int64: n, Valid: true}
			}
			if s := rec["reason"]; s != "" {
				if len(s) > MaxReasonLen || !printable(s) {
					return r, &fieldError{"reason", fmt.Sprintf("must be at most %d bytes of printable UTF-8", MaxReasonLen)}
				}
				r.s = sql.NullString{String: s, Valid: true}
			}
			return r, nil
		},
	},
}

// FeedNames lists the feeds adpulse loads, sorted.
func FeedNames() []string { return []string{AutoCPC, BudgetRecommendations} }

func id(rec bulkimport.Record, field string) (string, *fieldError) {
	s := rec[field]
	if s == "" {
		return "", &fieldError{field, "is required"}
	}
	if !event.ValidID(s) {
		return "", &fieldError{field, "must be 1-64 characters of [A-Za-z0-9._:-]"}
	}
	return s, nil
}

func micros(rec bulkimport.Record, field string, lo int64) (int64, *fieldError) {
	s := strings.TrimSpace(rec[field])
	if s == "" {
		return 0, &fieldError{field, "is required"}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < lo || n > MaxMicros {
		return 0, &fieldError{field, fmt.Sprintf("must be an integer from %d to %d", lo, int64(MaxMicros))}
	}
	return n, nil
}

func printable(s string) bool {
	for _, r := range s {
		if r == 0xFFFD || r < 0x20 || r == 0x7F {
			return false
		}
	}
	return true
}
