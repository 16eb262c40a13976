package metricstore

import (
	"fmt"
	"time"
)

// Buckets returns the aligned bucket boundaries of q in minutes since the Unix epoch: bucket
// i is [b[i], b[i+1]), so there are len(b)-1 buckets. Every implementation uses it, so all of
// them agree on the grid.
func (q *Query) Buckets() ([]int64, error) {
	if !q.Level.Valid() {
		return nil, fmt.Errorf("%w: unknown level %d", ErrInvalidQuery, q.Level)
	}
	if q.Interval <= 0 || q.Interval%time.Minute != 0 {
		return nil, fmt.Errorf("%w: interval %v is not a positive whole number of minutes", ErrInvalidQuery, q.Interval)
	}
	if !q.Start.Before(q.End) {
		return nil, fmt.Errorf("%w: start %v is not before end %v", ErrInvalidQuery, q.Start, q.End)
	}
	// Seconds floored for the start and ceiled for the end, so sub-minute inputs widen the
	// range rather than cut a bucket short.
	startSec := q.Start.Unix()
	endSec := q.End.Unix()
	if q.End.Nanosecond() != 0 {
		endSec++
	}
	const day = 24 * time.Hour
	if q.Location != nil && q.Location != time.UTC && q.Interval%day == 0 {
		return localDayBuckets(startSec, endSec, int64(q.Interval/day), q.Location)
	}
	n := int64(q.Interval / time.Minute)
	lo := floorDiv(floorDiv(startSec, 60), n) * n
	hi := ceilDiv(ceilDiv(endSec, 60), n) * n
	count := (hi - lo) / n
	if count > MaxBuckets {
		return nil, fmt.Errorf("%w: %d buckets per series, at most %d", ErrInvalidQuery, count, MaxBuckets)
	}
	b := make([]int64, count+1)
	for i := range b {
		b[i] = lo + int64(i)*n
	}
	return b, nil
}

// localDayBuckets aligns buckets of k days to local midnights of loc, k days apart counted
// from 1970-01-01 in the local calendar (so 7d buckets are stable whatever the range).
func localDayBuckets(startSec, endSec, k int64, loc *time.Location) ([]int64, error) {
	dayNum := func(t time.Time) int64 {
		y, m, d := t.Date()
		return floorDiv(time.Date(y, m, d, 0, 0, 0, 0, time.UTC).Unix(), 86400)
	}
	midnight := func(dn int64) int64 {
		// time.Date normalises day overflow, and resolves a midnight skipped by a DST change
		// to the first instant of that local day.
		return floorDiv(time.Date(1970, time.January, 1+int(dn), 0, 0, 0, 0, loc).Unix(), 60)
	}
	lo := floorDiv(dayNum(time.Unix(startSec, 0).In(loc)), k) * k
	endT := time.Unix(endSec, 0).In(loc)
	hiDay := dayNum(endT)
	if midnight(hiDay)*60 < endSec {
		hiDay++
	}
	hi := ceilDiv(hiDay, k) * k
	count := (hi - lo) / k
	if count > MaxBuckets {
		return nil, fmt.Errorf("%w: %d buckets per series, at most %d", ErrInvalidQuery, count, MaxBuckets)
	}
	b := make([]int64, 0, count+1)
	for dn := lo; dn <= hi; dn += k {
		b = append(b, midnight(dn))
	}
	return b, nil
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

func ceilDiv(a, b int64) int64 { return -floorDiv(-a, b) }

// FillTimes sets Time and Final of points from bucket boundaries b (as returned by Buckets)
// and finalBefore; implementations call it so every backend flags points alike.
func FillTimes(points []Point, b []int64, finalBefore time.Time) {
	if len(points) == 0 {
		return
	}
	t0 := time.Unix(b[0]*60, 0).UTC()
	fb := int64(-1 << 62) // minutes: bucket ends at or before it are final
	if !finalBefore.IsZero() {
		fb = floorDiv(finalBefore.Unix(), 60)
	}
	for i := range points {
		points[i].Time = t0.Add(time.Duration(b[i]-b[0]) * time.Minute)
		points[i].Final = b[i+1] <= fb
	}
}
