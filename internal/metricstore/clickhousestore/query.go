package clickhousestore

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/metricstore"
)

// segment is a part of one output bucket read at one resolution: minutes [lo, hi), both
// multiples of the resolution's width.
type segment struct {
	lo, hi int64
	bucket int
}

// plan covers every bucket of b with the coarsest resolutions that tile it exactly (days,
// then hours at the day edges, then minutes at the hour edges). Each resolution's segments
// come out in ascending order.
func plan(b []int64) [len(resolutions)][]segment {
	var segs [len(resolutions)][]segment
	var cover func(lo, hi int64, res, bucket int)
	cover = func(lo, hi int64, res, bucket int) {
		if lo >= hi {
			return
		}
		if res == resMinute {
			segs[res] = append(segs[res], segment{lo, hi, bucket})
			return
		}
		w := resolutions[res].minutes
		clo, chi := ceilDiv(lo, w)*w, floorDiv(hi, w)*w
		if clo >= chi {
			cover(lo, hi, res-1, bucket)
			return
		}
		cover(lo, clo, res-1, bucket)
		segs[res] = append(segs[res], segment{clo, chi, bucket})
		cover(chi, hi, res-1, bucket)
	}
	for i := 0; i+1 < len(b); i++ {
		cover(b[i], b[i+1], resDay, i)
	}
	return segs
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

func ceilDiv(a, b int64) int64 { return -floorDiv(-a, b) }

// maxRanges bounds the key ranges spelled out in one query; past it each resolution is read
// over its whole span and the rows outside the plan are dropped here.
const maxRanges = 256

// where returns the SQL condition selecting the rows of segs: one range per run of
// neighbouring segments.
func where(segs *[len(resolutions)][]segment) string {
	var runs [len(resolutions)][][2]int64
	total := 0
	for r := range segs {
		for i := 0; i < len(segs[r]); {
			j := i + 1
			for j < len(segs[r]) && segs[r][j].lo == segs[r][j-1].hi {
				j++
			}
			runs[r] = append(runs[r], [2]int64{segs[r][i].lo, segs[r][j-1].hi})
			i = j
		}
		total += len(runs[r])
	}
	var conds []string
	for r := range runs {
		rr := runs[r]
		if len(rr) == 0 {
			continue
		}
		if total > maxRanges {
			rr = [][2]int64{{rr[0][0], rr[len(rr)-1][1]}}
		}
		for _, x := range rr {
			conds = append(conds, fmt.Sprintf("(res = %d AND bucket >= %d AND bucket < %d)", r, x[0], x[1]))
		}
	}
	return "(" + strings.Join(conds, " OR ") + ")"
}

// Query implements metricstore.Store.
func (s *Store) Query(ctx context.Context, q metricstore.Query) (*metricstore.Result, error) {
	b, err := q.Buckets()
	if err != nil {
		return nil, err
	}
	for _, id := range q.IDs {
		if !validID(id) {
			return nil, fmt.Errorf("%w: id %q", metricstore.ErrInvalidQuery, id)
		}
	}
	if b[0] < 0 {
		return nil, fmt.Errorf("%w: start before 1970", metricstore.ErrInvalidQuery)
	}
	if b[len(b)-1] > maxMinute {
		return nil, fmt.Errorf("%w: end after %v", metricstore.ErrInvalidQuery, time.Unix(maxMinute*60, 0).UTC())
	}
	segs := plan(b)
	if m := segs[resMinute]; s.minuteRet != 0 && len(m) > 0 && m[0].lo < s.opts.Now().Unix()/60-s.minuteRet {
		return nil, fmt.Errorf("%w: 1m buckets are kept for %v, the range starts %v", metricstore.ErrExpired,
			time.Duration(s.minuteRet)*time.Minute, time.Unix(m[0].lo*60, 0).UTC())
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.life.RLock()
	defer s.life.RUnlock()
	if s.closed {
		return nil, metricstore.ErrClosed
	}
	start := time.Now()
	heads, fb, err := s.readHeads(ctx)
	if err != nil {
		return nil, err
	}
	n := len(b) - 1
	res := &metricstore.Result{
		Start:       time.Unix(b[0]*60, 0).UTC(),
		End:         time.Unix(b[n]*60, 0).UTC(),
		FinalBefore: fb,
		Series:      make([]metricstore.Series, len(q.IDs)),
	}
	uniq := slices.Clone(q.IDs)
	slices.Sort(uniq)
	uniq = slices.Compact(uniq)
	backing := make([]metricstore.Point, n*len(uniq))
	pts := make([][]metricstore.Point, len(uniq))
	for i := range uniq {
		pts[i] = backing[i*n : (i+1)*n : (i+1)*n]
		metricstore.FillTimes(pts[i], b, fb)
	}
	if len(heads) > 0 && len(uniq) > 0 {
		if err := s.readCounts(ctx, q.Level, uniq, &segs, heads, pts); err != nil {
			return nil, err
		}
	}
	if len(uniq) > 0 {
		marks, err := s.readMarks(ctx, metricstore.HourOf(b[0]), metricstore.HourOf(b[n]), heads)
		if err != nil {
			return nil, err
		}
		for i := range pts {
			metricstore.FillReconciled(pts[i], b, func(h int64) bool { return marks[h] })
		}
	}
	used := make([]bool, len(uniq))
	for i, id := range q.IDs {
		ui, _ := slices.BinarySearch(uniq, id)
		p := pts[ui]
		if used[ui] {
			p = clonePoints(p) // a repeated id gets its own points
		}
		used[ui] = true
		res.Series[i] = metricstore.Series{ID: id, Points: p}
	}
	took := time.Since(start).Nanoseconds()
	s.queries.Add(1)
	s.queryNanos.Add(took)
	s.lastQuery.Store(took)
	return res, nil
}

// clonePoints copies points, maps included, so no two series share anything.
func clonePoints(p []metricstore.Point) []metricstore.Point {
	out := slices.Clone(p)
	for i := range out {
		c := &out[i].Counts
		if c.InvalidByReason != nil {
			c.InvalidByReason = maps(c.InvalidByReason)
		}
		if c.Interactions != nil {
			c.Interactions = maps(c.Interactions)
		}
	}
	return out
}

func maps[K comparable](m map[K]int64) map[K]int64 {
	out := make(map[K]int64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// readHeads returns every consumer's head seq and the lowest declared FinalBefore.
func (s *Store) readHeads(ctx context.Context) (map[string]uint64, time.Time, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	rows, err := s.query(ctx, "SELECT consumer, max(seq), argMax(final_before, version) FROM "+s.db+".heads GROUP BY consumer")
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("read heads: %w", err)
	}
	defer rows.Close()
	heads := make(map[string]uint64)
	var fb int64
	for rows.Next() {
		var c string
		var seq uint64
		var f int64
		if err := rows.Scan(&c, &seq, &f); err != nil {
			return nil, time.Time{}, fmt.Errorf("read heads: %w", err)
		}
		heads[c] = seq
		if f != 0 && (fb == 0 || f < fb) {
			fb = f
		}
	}
	if err := rows.Err(); err != nil {
		return nil, time.Time{}, fmt.Errorf("read heads: %w", err)
	}
	if fb == 0 {
		return heads, time.Time{}, nil
	}
	return heads, time.UnixMicro(fb).UTC(), nil
}

// readCounts adds the committed rows of ids (sorted, distinct) that the plan covers to pts.
// Only rows of commits up to the heads just read count, so the result is one snapshot.
func (s *Store) readCounts(ctx context.Context, level metricstore.Level, ids []string, segs *[len(resolutions)][]segment, heads map[string]uint64, pts [][]metricstore.Point) error {
	var sb strings.Builder
	sb.WriteString("SELECT id, res, bucket, sum(impressions), sum(clicks), sum(invalid_clicks), sum(spend_micros), ")
	sb.WriteString("groupArrayArray(reasons), groupArrayArray(reason_counts), groupArrayArray(interactions), groupArrayArray(interaction_counts), ")
	sb.WriteString("sum(conversions), sum(conversion_value_micros), sum(view_conversions), sum(view_conversion_value_micros) FROM ")
	sb.WriteString(s.db + ".counts WHERE level = " + strconv.Itoa(int(level)) + " AND id IN (")
	for i, id := range ids {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(quote(id))
	}
	sb.WriteString(") AND " + where(segs) + " AND (")
	consumers := make([]string, 0, len(heads))
	for c := range heads {
		consumers = append(consumers, c)
	}
	slices.Sort(consumers)
	for i, c := range consumers {
		if i > 0 {
			sb.WriteString(" OR ")
		}
		sb.WriteString("(consumer = " + quote(c) + " AND seq <= " + strconv.FormatUint(heads[c], 10) + ")")
	}
	sb.WriteString(") AND (consumer, seq, token) NOT IN (SELECT consumer, seq, token FROM " + s.db + ".aborted)")
	sb.WriteString(" GROUP BY id, res, bucket")

	ctx, cancel := s.call(ctx)
	defer cancel()
	rows, err := s.query(ctx, sb.String())
	if err != nil {
		return fmt.Errorf("query %s counts: %w", level, err)
	}
	defer rows.Close()
	var (
		id              string
		res             uint8
		bucket          uint32
		c               metricstore.Counts
		reasons         []uint8
		reasonN, interN []int64
		interNames      []string
		read            int64
	)
	for rows.Next() {
		if err := rows.Scan(&id, &res, &bucket, &c.Impressions, &c.Clicks, &c.InvalidClicks, &c.SpendMicros, &reasons, &reasonN, &interNames, &interN,
			&c.Conversions, &c.ConversionValueMicros, &c.ViewConversions, &c.ViewConversionValueMicros); err != nil {
			return fmt.Errorf("query %s counts: %w", level, err)
		}
		read++
		if int(res) >= len(resolutions) || len(reasons) != len(reasonN) || len(interNames) != len(interN) {
			return fmt.Errorf("query %s counts: malformed row %q res %d bucket %d", level, id, res, bucket)
		}
		ui, ok := slices.BinarySearch(ids, id)
		if !ok {
			continue
		}
		rs := segs[res]
		m := int64(bucket)
		si, _ := slices.BinarySearchFunc(rs, m, func(sg segment, m int64) int {
			switch {
			case sg.hi <= m:
				return -1
			case sg.lo > m:
				return 1
			}
			return 0
		})
		if si >= len(rs) || rs[si].lo > m || m >= rs[si].hi {
			continue // outside the plan: read only because a span was merged
		}
		p := &pts[ui][rs[si].bucket].Counts
		p.Impressions += c.Impressions
		p.Clicks += c.Clicks
		p.InvalidClicks += c.InvalidClicks
		p.SpendMicros += c.SpendMicros
		p.Conversions += c.Conversions
		p.ConversionValueMicros += c.ConversionValueMicros
		p.ViewConversions += c.ViewConversions
		p.ViewConversionValueMicros += c.ViewConversionValueMicros
		for i, r := range reasons {
			if p.InvalidByReason == nil {
				p.InvalidByReason = make(map[event.Reason]int64, 2)
			}
			p.InvalidByReason[event.Reason(r)] += reasonN[i]
		}
		for i, name := range interNames {
			p.AddInteraction(name, interN[i])
		}
	}
	s.rowsRead.Add(read)
	if err := rows.Err(); err != nil {
		return fmt.Errorf("query %s counts: %w", level, err)
	}
	return nil
}
