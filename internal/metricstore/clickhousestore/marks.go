package clickhousestore

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
)

// Reconciled marks (metricstore/reconciled.go) without transactions. The table hour_marks
// holds rows (hour, mark, consumer, seq, token, snapshot): mark 1 sets an hour's mark, 0
// clears it. Like counts rows, they are written before their commit's head and count only
// once it exists and is not aborted.
//
// ClickHouse has no order across consumers, so a set row carries the snapshot of every
// consumer's head seq read just before it was written: a clear row of consumer C at seq x
// removes it iff x is above C's seq in the snapshot. A commit landing while the snapshot is
// read may clear a mark it came before: marks err on the side of "not reconciled".
//
// Marks are only accepted on final hours, so a commit can only change a marked hour in an
// hour that ends at or before its own FinalBefore (a late event past finality, a
// correction). Clear rows are written for those hours only, and for every changed hour of
// a consumer that declares no FinalBefore: the aggregator's ordinary commits add no row.

const marksDDL = `CREATE TABLE IF NOT EXISTS %s.hour_marks (
	hour UInt32, mark UInt8, consumer String, seq UInt64, token UInt64,
	snap_consumers Array(String), snap_seqs Array(UInt64), at DateTime DEFAULT now()
) ENGINE = MergeTree() ORDER BY (hour, consumer, seq)`

// markRows are the hour_marks rows of one commit.
type markRows struct {
	hours     []uint32
	marks     []uint8
	snapNames [][]string
	snapSeqs  [][]uint64
}

// buildMarks returns c's mark rows; fb is the consumer's stored FinalBefore (micros).
func (s *Store) buildMarks(ctx context.Context, c *metricstore.Commit, fb int64) (*markRows, error) {
	m := &markRows{}
	var heads map[string]uint64
	var globalFB int64
	if len(c.ReconciledHours) > 0 {
		var gfb time.Time
		var err error
		if heads, gfb, err = s.readHeads(ctx); err != nil {
			return nil, err
		}
		if !gfb.IsZero() {
			globalFB = gfb.UnixMicro()
		}
	}
	finalEnd := metricstore.HourOf(globalFB / 60e6) // hours below it end at or before globalFB
	for _, h := range c.ReconciledHours {
		if h < 0 || h >= maxMinute/60 {
			return nil, fmt.Errorf("%w: reconciled hour %d", metricstore.ErrInvalidDelta, h)
		}
		if globalFB == 0 || h >= finalEnd {
			return nil, fmt.Errorf("%w: reconciled hour %v is not final", metricstore.ErrInvalidDelta, time.Unix(h*3600, 0).UTC())
		}
	}
	for _, h := range metricstore.UnmarkedHours(c) {
		if fb != 0 && (h+1)*3600e6 > fb {
			continue // not final for this consumer: cannot be marked
		}
		m.hours, m.marks = append(m.hours, uint32(h)), append(m.marks, 0)
		m.snapNames, m.snapSeqs = append(m.snapNames, []string{}), append(m.snapSeqs, []uint64{})
	}
	if len(c.ReconciledHours) > 0 {
		names, seqs := make([]string, 0, len(heads)), make([]uint64, 0, len(heads))
		for name, seq := range heads {
			names, seqs = append(names, name), append(seqs, seq)
		}
		for _, h := range c.ReconciledHours {
			m.hours, m.marks = append(m.hours, uint32(h)), append(m.marks, 1)
			m.snapNames, m.snapSeqs = append(m.snapNames, names), append(m.snapSeqs, seqs)
		}
	}
	return m, nil
}

func (s *Store) insertMarks(ctx context.Context, consumer string, seq, token uint64, m *markRows) error {
	n := len(m.hours)
	consumers := make([]string, n)
	seqs := make([]uint64, n)
	tokens := make([]uint64, n)
	for i := range n {
		consumers[i], seqs[i], tokens[i] = consumer, seq, token
	}
	ctx, done := s.batchCall(ctx)
	defer done()
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.db+".hour_marks (hour, mark, consumer, seq, token, snap_consumers, snap_seqs)")
	if err != nil {
		return err
	}
	for i, col := range []any{m.hours, m.marks, consumers, seqs, tokens, m.snapNames, m.snapSeqs} {
		if err := b.Column(i).Append(col); err != nil {
			_ = b.Abort()
			return fmt.Errorf("column %d: %w", i, err)
		}
	}
	return b.Send()
}

// readMarks returns the marked hours in [lo, hi] as of heads.
func (s *Store) readMarks(ctx context.Context, lo, hi int64, heads map[string]uint64) (map[int64]bool, error) {
	lo, hi = max(lo, 0), min(hi, maxMinute/60)
	out := map[int64]bool{}
	if lo > hi || len(heads) == 0 {
		return out, nil
	}
	ctx, cancel := s.call(ctx)
	defer cancel()
	rows, err := s.query(ctx, "SELECT hour, mark, consumer, seq, snap_consumers, snap_seqs FROM "+s.db+".hour_marks WHERE hour >= "+
		strconv.FormatInt(lo, 10)+" AND hour <= "+strconv.FormatInt(hi, 10)+
		" AND (consumer, seq, token) NOT IN (SELECT consumer, seq, token FROM "+s.db+".aborted)")
	if err != nil {
		return nil, fmt.Errorf("read reconciled marks: %w", err)
	}
	defer rows.Close()
	type clear struct {
		consumer string
		seq      uint64
	}
	type set struct{ snap map[string]uint64 }
	sets := map[int64][]set{}
	clears := map[int64][]clear{}
	for rows.Next() {
		var (
			hour     uint32
			mark     uint8
			consumer string
			seq      uint64
			names    []string
			seqs     []uint64
		)
		if err := rows.Scan(&hour, &mark, &consumer, &seq, &names, &seqs); err != nil {
			return nil, fmt.Errorf("read reconciled marks: %w", err)
		}
		if hs, ok := heads[consumer]; !ok || seq > hs || len(names) != len(seqs) {
			continue // not committed (yet)
		}
		if mark == 0 {
			clears[int64(hour)] = append(clears[int64(hour)], clear{consumer, seq})
			continue
		}
		snap := make(map[string]uint64, len(names))
		for i, n := range names {
			snap[n] = seqs[i]
		}
		snap[consumer] = max(snap[consumer], seq) // its own later commits follow it
		sets[int64(hour)] = append(sets[int64(hour)], set{snap})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read reconciled marks: %w", err)
	}
	for h, ss := range sets {
	marks:
		for _, st := range ss {
			for _, c := range clears[h] {
				if c.seq > st.snap[c.consumer] {
					continue marks
				}
			}
			out[h] = true
			break
		}
	}
	return out, nil
}
