package aggregate

import (
	"context"
	"sort"
	"sync"

	"github.com/adpulse/adpulse/internal/metricstore"
)

// live is what queries see of the counts the aggregator holds but has not committed: the
// accumulator being filled and the one handed to the committer, each with the log offsets it
// was counted from (metricstore/pending.go explains how queries merge them exactly).
//
// The runner adds events and moves the filling accumulator to the committer under mu; the
// committer withdraws the one it applied under mu, after Apply returned and before it resets
// it. A query reads both under mu, so it sees each accumulator whole, with the offsets that
// describe exactly what it holds. mu is held for one log read's worth of events at most.
type live struct {
	mu      sync.Mutex
	running bool
	parts   []int32 // the partitions, in runner order
	// segs[0] is filling (runner's acc), segs[1] is in flight (nil acc when none).
	segs [2]liveSeg
	// counted are the offsets (runner order) below which every event is counted, in the
	// accumulators and given to OnCount; progress, when not nil, is closed when they move.
	counted  []int64
	progress chan struct{}
}

type liveSeg struct {
	acc      *accumulator
	from, to []int64 // per partition (runner order): the offsets acc was counted from
}

// PendingConsumer implements metricstore.PendingReader: the consumer name of the commits.
func (a *Aggregator) PendingConsumer() string { return a.opts.Consumer }

var _ metricstore.PendingReader = (*Aggregator)(nil)

// Pending implements metricstore.PendingReader: the counts of q's ids counted from the log
// but not yet committed (by the last commit this Aggregator knows to have returned), in the
// buckets b. Empty before Run and after it returns.
func (a *Aggregator) Pending(q *metricstore.Query, b []int64) []metricstore.PendingPart {
	if len(b) < 2 || !q.Level.Valid() {
		return nil
	}
	l := &a.live
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []metricstore.PendingPart
	for i := range l.segs {
		s := &l.segs[i]
		acc := s.acc
		if acc == nil || acc.len() == 0 || acc.maxMin < b[0] || acc.minMin >= b[len(b)-1] {
			continue
		}
		cells := acc.cells(q.Level, q.IDs, b)
		if len(cells) == 0 {
			continue
		}
		var ranges []metricstore.OffsetRange
		for j, p := range l.parts {
			if s.to[j] > s.from[j] {
				ranges = append(ranges, metricstore.OffsetRange{Partition: p, From: s.from[j], To: s.to[j]})
			}
		}
		out = append(out, metricstore.PendingPart{Ranges: ranges, Cells: cells})
	}
	return out
}

// CatchUp waits until the aggregator has counted every record the log held when it was
// called (visible to Pending and given to OnCount), or ctx is done (its error), or Run is not
// running (nil: there is nothing to wait for). Queries call it with a short deadline, so
// what was acknowledged before them is visible to them, and a lagging aggregator (a
// replay, a backlog) only makes them as stale as it is.
func (a *Aggregator) CatchUp(ctx context.Context) error {
	l := &a.live
	l.mu.Lock()
	parts := l.parts
	running := l.running
	l.mu.Unlock()
	if !running {
		return nil
	}
	var arr [16]int64
	ends := arr[:0]
	for _, p := range parts {
		_, end, err := a.opts.Log.Offsets(ctx, int(p))
		if err != nil {
			return err
		}
		ends = append(ends, end)
	}
	for {
		l.mu.Lock()
		if !l.running {
			l.mu.Unlock()
			return nil
		}
		done := true
		for i, end := range ends {
			if l.counted[i] < end {
				done = false
				break
			}
		}
		if done {
			l.mu.Unlock()
			return nil
		}
		if l.progress == nil {
			l.progress = make(chan struct{})
		}
		ch := l.progress
		l.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// counted records that the runner has counted (and fed) everything it read, and wakes
// CatchUp.
func (r *runner) markCounted() {
	l := &r.a.live
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range r.parts {
		l.counted[i] = r.parts[i].next
	}
	if l.progress != nil {
		close(l.progress)
		l.progress = nil
	}
}

// levelIndex is the slot of byID for level l.
func levelIndex(l metricstore.Level) int { return int(l - metricstore.LevelAd) }

// index files the entries added since the last call under their ad, campaign and advertiser.
// Called by queries only (under live.mu): the counting path pays nothing for it.
func (a *accumulator) index() {
	for i := range a.byID {
		if a.byID[i] == nil {
			a.byID[i] = make(map[string][]int32)
		}
	}
	for i := a.indexed; i < len(a.keys); i++ {
		k := &a.keys[i]
		for l, id := range [3]string{k.ad, k.campaign, k.advertiser} {
			if id != "" {
				a.byID[l][id] = append(a.byID[l][id], int32(i))
			}
		}
	}
	a.indexed = len(a.keys)
}

// cells sums the entries of ids at level l into the buckets b.
func (a *accumulator) cells(l metricstore.Level, ids []string, b []int64) []metricstore.PendingCell {
	a.index()
	var cells []metricstore.PendingCell
	var at map[[2]int]int // (series, bucket) -> index in cells, once there are several
	for si, id := range ids {
		for _, ei := range a.byID[levelIndex(l)][id] {
			m := a.keys[ei].minute
			if m < b[0] || m >= b[len(b)-1] {
				continue
			}
			bi := sort.Search(len(b)-1, func(j int) bool { return b[j+1] > m })
			key := [2]int{si, bi}
			ci, ok := at[key]
			if !ok {
				if at == nil {
					at = make(map[[2]int]int)
				}
				ci = len(cells)
				at[key] = ci
				cells = append(cells, metricstore.PendingCell{Series: si, Bucket: bi})
			}
			a.entries[ei].addTo(&cells[ci].Counts)
		}
	}
	return cells
}

// feed appends the clicks and impressions counted since the last feed, at the ad, campaign
// and advertiser levels, to ds (Options.OnCount).
func (a *accumulator) feed(ds []metricstore.Delta) []metricstore.Delta {
	for _, i := range a.touched {
		en, k := &a.entries[i], &a.keys[i]
		en.touched = false
		c := metricstore.Counts{Clicks: en.clicks - en.fedClicks, Impressions: en.impressions - en.fedImpressions}
		if c.Clicks == 0 && c.Impressions == 0 {
			continue
		}
		en.fedClicks, en.fedImpressions = en.clicks, en.impressions
		for l, id := range [3]string{k.ad, k.campaign, k.advertiser} {
			if id != "" {
				ds = append(ds, metricstore.Delta{Level: metricstore.LevelAd + metricstore.Level(l), ID: id, Minute: k.minute, Counts: c})
			}
		}
	}
	a.touched = a.touched[:0]
	return ds
}
