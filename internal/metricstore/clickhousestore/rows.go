package clickhousestore

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/metricstore"
)

// resolution is one bucket size the store keeps; its index is the res column.
type resolution struct {
	minutes int64
	name    string
}

// The resolutions, finest first. Queries cover a range with the coarsest that tiles it.
var resolutions = [...]resolution{{1, "1m"}, {60, "1h"}, {1440, "1d"}}

const (
	resMinute = 0
	resDay    = 2
)

// maxIDLen bounds ids, as in pebblestore: both stores accept the same ids.
const maxIDLen = 255

// maxMinute is the last minute a UInt32 bucket holds.
const maxMinute = 1<<32 - 1 - 1440

func validID(id string) bool {
	return id != "" && len(id) <= maxIDLen && strings.IndexByte(id, 0) < 0
}

// countRows are the counts rows of one commit, by column, ready for a columnar INSERT.
type countRows struct {
	level             []uint8
	id                []string
	res               []uint8
	bucket            []uint32
	impressions       []int64
	clicks            []int64
	invalid           []int64
	spend             []int64
	conversions       [4][]int64 // conversions, value, view conversions, view value
	reasons           [][]uint8
	reasonCounts      [][]int64
	interactions      [][]string
	interactionCounts [][]int64
}

type rowKey struct {
	level  metricstore.Level
	res    uint8
	id     string
	bucket int64
}

// buildRows validates deltas and sums them into their 1m, 1h and 1d rows. A minute bucket
// that is already past the minute retention gets no 1m row (it could not be queried, and its
// partition may be gone): a late correction goes to the 1h and 1d rows only.
func (s *Store) buildRows(deltas []metricstore.Delta) (*countRows, error) {
	cutoff := int64(-1)
	if s.minuteRet != 0 {
		cutoff = s.opts.Now().Unix()/60 - s.minuteRet
	}
	sums := make(map[rowKey]*metricstore.Counts, len(deltas)*3)
	order := make([]rowKey, 0, len(deltas)*3)
	for i := range deltas {
		d := &deltas[i]
		if !d.Level.Valid() || !validID(d.ID) || d.Minute < 0 || d.Minute > maxMinute {
			return nil, fmt.Errorf("%w: delta %d: level %d, id %q, minute %d", metricstore.ErrInvalidDelta, i, d.Level, d.ID, d.Minute)
		}
		if d.IsZero() {
			continue
		}
		for r := range resolutions {
			if r == resMinute && d.Minute < cutoff {
				continue
			}
			k := rowKey{level: d.Level, res: uint8(r), id: d.ID, bucket: d.Minute / resolutions[r].minutes * resolutions[r].minutes}
			c := sums[k]
			if c == nil {
				c = &metricstore.Counts{}
				sums[k] = c
				order = append(order, k)
			}
			c.Add(&d.Counts)
		}
	}
	n := len(order)
	rows := &countRows{
		level: make([]uint8, n), id: make([]string, n), res: make([]uint8, n), bucket: make([]uint32, n),
		impressions: make([]int64, n), clicks: make([]int64, n), invalid: make([]int64, n), spend: make([]int64, n),
		reasons: make([][]uint8, n), reasonCounts: make([][]int64, n), interactions: make([][]string, n), interactionCounts: make([][]int64, n),
	}
	for j := range rows.conversions {
		rows.conversions[j] = make([]int64, n)
	}
	for i, k := range order {
		c := sums[k]
		rows.level[i], rows.id[i], rows.res[i], rows.bucket[i] = uint8(k.level), k.id, k.res, uint32(k.bucket)
		rows.impressions[i], rows.clicks[i], rows.invalid[i], rows.spend[i] = c.Impressions, c.Clicks, c.InvalidClicks, c.SpendMicros
		rows.conversions[0][i], rows.conversions[1][i], rows.conversions[2][i], rows.conversions[3][i] = c.Conversions, c.ConversionValueMicros, c.ViewConversions, c.ViewConversionValueMicros
		rows.reasons[i], rows.reasonCounts[i] = []uint8{}, []int64{}
		for _, r := range sortedKeys(c.InvalidByReason) {
			if v := c.InvalidByReason[r]; v != 0 {
				rows.reasons[i] = append(rows.reasons[i], uint8(r))
				rows.reasonCounts[i] = append(rows.reasonCounts[i], v)
			}
		}
		rows.interactions[i], rows.interactionCounts[i] = []string{}, []int64{}
		for _, name := range sortedKeys(c.Interactions) {
			if v := c.Interactions[name]; v != 0 {
				rows.interactions[i] = append(rows.interactions[i], name)
				rows.interactionCounts[i] = append(rows.interactionCounts[i], v)
			}
		}
	}
	return rows, nil
}

func sortedKeys[K event.Reason | string](m map[K]int64) []K {
	if len(m) == 0 {
		return nil
	}
	ks := make([]K, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// insertCounts writes rows tagged with the commit attempt in one columnar INSERT.
func (s *Store) insertCounts(ctx context.Context, consumer string, seq, token uint64, rows *countRows) error {
	n := len(rows.level)
	consumers := make([]string, n)
	seqs := make([]uint64, n)
	tokens := make([]uint64, n)
	for i := range n {
		consumers[i], seqs[i], tokens[i] = consumer, seq, token
	}
	ctx, done := s.batchCall(ctx)
	defer done()
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.db+".counts (level, id, res, bucket, consumer, seq, token, impressions, clicks, invalid_clicks, spend_micros, reasons, reason_counts, interactions, interaction_counts, conversions, conversion_value_micros, view_conversions, view_conversion_value_micros)")
	if err != nil {
		return err
	}
	cols := []any{rows.level, rows.id, rows.res, rows.bucket, consumers, seqs, tokens, rows.impressions, rows.clicks, rows.invalid, rows.spend,
		rows.reasons, rows.reasonCounts, rows.interactions, rows.interactionCounts,
		rows.conversions[0], rows.conversions[1], rows.conversions[2], rows.conversions[3]}
	for i, col := range cols {
		if err := b.Column(i).Append(col); err != nil {
			_ = b.Abort()
			return fmt.Errorf("column %d: %w", i, err)
		}
	}
	return b.Send()
}
