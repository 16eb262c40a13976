package pebblestore

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
)

// segment is a part of one output bucket read at one resolution: minutes [lo, hi), both
// multiples of the resolution's width.
type segment struct {
	lo, hi int64
	bucket int
}

// run is a contiguous range of segments of one resolution, read with one scan per key
// partition.
type run struct {
	res    int
	lo, hi int64
	segs   []segment
}

// plan covers every bucket of b with the coarsest resolutions that tile it exactly (days,
// then hours at the day edges, then minutes at the hour edges), and merges neighbouring
// segments into runs. The plan is the same for every id of a query.
func plan(b []int64) []run {
	var segs [len(resolutions)][]segment
	var cover func(lo, hi int64, res, bucket int)
	cover = func(lo, hi int64, res, bucket int) {
		if lo >= hi {
			return
		}
		w := resolutions[res].minutes
		if res == resMinute {
			segs[res] = append(segs[res], segment{lo, hi, bucket})
			return
		}
		clo, chi := ceilTo(lo, w), floorTo(hi, w)
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
	var runs []run
	for res := range segs {
		for i := 0; i < len(segs[res]); {
			j := i + 1
			for j < len(segs[res]) && segs[res][j].lo == segs[res][j-1].hi {
				j++
			}
			runs = append(runs, run{res: res, lo: segs[res][i].lo, hi: segs[res][j-1].hi, segs: segs[res][i:j]})
			i = j
		}
	}
	return runs
}

func floorTo(x, w int64) int64 { return floorDiv(x, w) * w }
func ceilTo(x, w int64) int64  { return -floorDiv(-x, w) * w }

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
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
		// Nothing is stored before the epoch; keys have no room for it.
		return nil, fmt.Errorf("%w: start before 1970", metricstore.ErrInvalidQuery)
	}
	runs := plan(b)
	nowMin := s.opts.Now().Unix() / 60
	for _, r := range runs {
		if ret := s.retention[r.res]; ret != 0 && r.lo < nowMin-ret {
			return nil, fmt.Errorf("%w: %s buckets are kept for %v, the range starts %v", metricstore.ErrExpired,
				resolutions[r.res].name, time.Duration(ret)*time.Minute, time.Unix(r.lo*60, 0).UTC())
		}
	}

	s.life.RLock()
	defer s.life.RUnlock()
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, metricstore.ErrClosed
	}
	s.queries.Add(1)
	fb := s.finalBefore()
	n := len(b) - 1
	res := &metricstore.Result{
		Start:       time.Unix(b[0]*60, 0).UTC(),
		End:         time.Unix(b[n]*60, 0).UTC(),
		FinalBefore: fb,
		Series:      make([]metricstore.Series, len(q.IDs)),
	}
	// Distinct ids in key order, read partition by partition: every seek of the query then
	// moves forward, and Pebble turns a forward seek near its position into a few Next calls
	// instead of a search from the top of every level.
	uniq := slices.Clone(q.IDs)
	slices.Sort(uniq)
	uniq = slices.Compact(uniq)
	backing := make([]metricstore.Point, n*len(uniq))
	pts := make([][]metricstore.Point, len(uniq))
	for i := range uniq {
		pts[i] = backing[i*n : (i+1)*n : (i+1)*n]
		metricstore.FillTimes(pts[i], b, fb)
	}
	// The iterator and the reconciled marks are taken together under mu, which every Apply
	// holds while it commits: the marks describe exactly the counts the iterator reads.
	// The consumer offsets asked for are taken under mu too: they say exactly which commits
	// the iterator's snapshot holds.
	s.mu.Lock()
	it, err := s.db.NewIter(nil)
	marks := s.marksIn(metricstore.HourOf(b[0]), metricstore.HourOf(b[n]))
	if q.OffsetsOf != "" {
		res.Offsets = make(map[int32]int64)
		if c := s.checkpoints[q.OffsetsOf]; c != nil {
			for p, o := range c.offsets {
				res.Offsets[p] = o
			}
		}
	}
	s.mu.Unlock()
	for i := range pts {
		metricstore.FillReconciled(pts[i], b, func(h int64) bool { return marks[h] })
	}
	if err != nil {
		return nil, fmt.Errorf("query iterator: %w", err)
	}
	defer it.Close()
	seg := make([]int, len(uniq)) // per id, the segment of the current run its keys are in
	key := make([]byte, 0, maxKeyLen)
	for ri := range runs {
		r := &runs[ri]
		rs := &resolutions[r.res]
		clear(seg)
		loU, hiU := r.lo/rs.minutes, r.hi/rs.minutes // hi is a multiple of the width
		for part := loU / rs.perPart; part*rs.perPart < hiU; part++ {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			base := part * rs.perPart
			from, to := max(loU, base)-base, min(hiU, base+rs.perPart)-base
			for ui, id := range uniq {
				key = appendRowKey(key[:0], rs, part, q.Level, id)
				if !it.SeekGE(key) || !bytes.Equal(it.Key(), key) {
					if err := it.Error(); err != nil {
						return nil, fmt.Errorf("query %s %q: %w", q.Level, id, err)
					}
					continue // no row: zeros
				}
				v, err := it.ValueAndErr()
				if err == nil {
					p, segs, si := pts[ui], r.segs, &seg[ui]
					err = addRow(v, func(bucket int) *metricstore.Counts {
						if int64(bucket) < from || int64(bucket) >= to {
							return nil
						}
						minute := (base + int64(bucket)) * rs.minutes
						for segs[*si].hi <= minute {
							*si++ // buckets ascend and the run is contiguous, so a later segment holds it
						}
						return &p[segs[*si].bucket].Counts
					})
				}
				if err != nil {
					return nil, fmt.Errorf("query %s %q %s row at %v: %w", q.Level, id, rs.name, time.Unix(base*rs.minutes*60, 0).UTC(), err)
				}
			}
		}
	}
	used := make([]bool, len(uniq))
	for i, id := range q.IDs {
		ui, _ := slices.BinarySearch(uniq, id)
		p := pts[ui]
		if used[ui] {
			p = slices.Clone(p) // a repeated id gets its own points
		}
		used[ui] = true
		res.Series[i] = metricstore.Series{ID: id, Points: p}
	}
	return res, nil
}
