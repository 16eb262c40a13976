package reconcile

import (
	"context"
	"fmt"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/adpulse/adpulse/internal/archive"
	"github.com/adpulse/adpulse/internal/dedup"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/metricstore"
)

// counter counts the archive like the aggregator counts the log: each partition in offset
// order through the same duplicate filter, each event in its event-time minute. It can be
// fed more of the archive later and keeps its place: each partition's filter and next
// offset. That is what lets the hourly job read each file once, instead of the filter's
// whole span (DedupSpan, a day by default) again for every hour it checks.
//
// Feeding is in offset order per partition, and a row is read at most once, so the counts
// and the filter's decisions are the same however the archive is cut into feeds: the
// filter's answer for an event depends only on the partition's events within DedupSpan
// before it, and the first feed starts at least that far before the first counted hour.
type counter struct {
	o     *Options
	parts map[int]*cursor
	// counts are the minutes from `from` on; earlier events (of hours already checked) and
	// events at or after `to` are not kept.
	from, to int64 // event time bounds, micros
	counts   map[Key]*metricstore.Counts
	// listedTo is the end of the receive-time range fed so far (zero before the first feed).
	listedTo time.Time
	gaps     []gap
	stats    feedStats
}

// cursor is a partition's place in the archive.
type cursor struct {
	window *dedup.Window
	next   int64 // the next offset to count; -1 before the first file
}

// gap is a run of offsets missing between two files of a partition, found in the hour
// directory of the file after it.
type gap struct {
	hour time.Time
	n    int64
}

// feedStats are what the reads did, for the Report.
type feedStats struct {
	files              int
	rows, counted, dup int64
}

// newCounter counts events with event times in [from, to); a zero to is unbounded.
func newCounter(o *Options, from, to time.Time) *counter {
	c := &counter{o: o, parts: map[int]*cursor{}, from: from.UnixMicro(), to: maxEventMicros, counts: map[Key]*metricstore.Counts{}}
	if !to.IsZero() {
		c.to = to.UnixMicro()
	}
	return c
}

// feed reads the archive's files with receive hours up to hi that it has not read yet,
// starting at lo on the first feed. Files reappearing in hours listed before are skipped
// by offset, so a later feed may list overlapping hours.
func (c *counter) feed(ctx context.Context, lo, hi time.Time) error {
	if !c.listedTo.IsZero() {
		// Files of the last two hours listed may have been cut since: list them again
		// (a file's directory is the receive hour of its first event, and the archiver
		// writes it within its interval, at most an hour later).
		lo = c.listedTo.Add(-2 * time.Hour)
	}
	// A file lives in the hour of its first event; its events run up to a file window
	// (at most an hour) plus slack later: one more hour before.
	files, err := archive.ListFiles(ctx, c.o.Archive, lo.Add(-time.Hour), hi)
	if err != nil {
		return err
	}
	for i, f := range files {
		cur := c.parts[f.Partition]
		if cur == nil {
			cur = &cursor{next: -1}
			if c.o.DedupSpan > 0 {
				cur.window = dedup.NewWindow(c.o.DedupSpan.Microseconds(), c.o.Slack.Microseconds())
			}
			c.parts[f.Partition] = cur
		}
		if f.End <= cur.next {
			continue // read before, or wholly covered by an earlier file (left by a different cut)
		}
		if cur.next >= 0 && f.First > cur.next {
			c.gaps = append(c.gaps, gap{hour: f.Hour, n: f.First - cur.next})
			c.o.Logger.Warn("reconcile: the archive misses offsets", "partition", f.Partition, "from", cur.next, "to", f.First)
		}
		if err := c.read(ctx, f, cur); err != nil {
			return err
		}
		c.stats.files++
		if c.o.Progress != nil {
			c.o.Progress(i+1, len(files), c.stats.rows)
		}
	}
	if hi.After(c.listedTo) {
		c.listedTo = hi
	}
	return nil
}

func (c *counter) read(ctx context.Context, f archive.File, cur *cursor) error {
	err := archive.ReadFile(ctx, c.o.Archive, f.Key, func(r *archive.Row) error {
		if r.Offset < cur.next {
			return nil
		}
		cur.next = r.Offset + 1
		c.stats.rows++
		e, err := r.Event()
		if err != nil {
			return fmt.Errorf("%s offset %d: %w", f.Key, r.Offset, err)
		}
		if cur.window != nil {
			if key := e.Key(); key != "" && cur.window.Observe(xxhash.Sum64String(key), e.RecvTime) {
				c.stats.dup++
				return nil
			}
		}
		if e.Time < c.from || e.Time >= c.to || e.Time < 0 || e.Time >= maxEventMicros {
			return nil
		}
		if e.Type != event.TypeClick && e.Invalid != event.ReasonNone {
			return nil // invalid impressions and interactions have no counter
		}
		c.stats.counted++
		minute := e.Time / 60e6
		c.add(metricstore.LevelAd, e.AdID, minute, &e)
		c.add(metricstore.LevelCampaign, e.CampaignID, minute, &e)
		c.add(metricstore.LevelAdvertiser, e.AdvertiserID, minute, &e)
		return nil
	})
	if err != nil {
		return err
	}
	cur.next = max(cur.next, f.End)
	return nil
}

func (c *counter) add(level metricstore.Level, id string, minute int64, e *event.Event) {
	if id == "" {
		return
	}
	k := Key{level, id, minute}
	n := c.counts[k]
	if n == nil {
		n = &metricstore.Counts{}
		c.counts[k] = n
	}
	switch e.Type {
	case event.TypeImpression:
		n.Impressions++
	case event.TypeClick:
		if e.Invalid == event.ReasonNone {
			n.Clicks++
		} else {
			n.AddInvalid(e.Invalid, 1)
		}
	case event.TypeInteraction:
		n.AddInteraction(e.Name, 1)
	}
}

// take returns the counts of the minutes in [from, to) (they stay until forget).
func (c *counter) take(from, to time.Time) map[Key]*metricstore.Counts {
	lo, hi := from.Unix()/60, to.Unix()/60
	out := make(map[Key]*metricstore.Counts)
	for k, n := range c.counts {
		if k.Minute >= lo && k.Minute < hi {
			out[k] = n
		}
	}
	return out
}

// forget drops the counts of event times before t and stops counting them, and the gaps
// found before the hour of t minus the filter's span (no later hour's reading depends on
// them).
func (c *counter) forget(t time.Time) {
	m := t.Unix() / 60
	for k := range c.counts {
		if k.Minute < m {
			delete(c.counts, k)
		}
	}
	c.from = max(c.from, t.UnixMicro())
	lo, _ := c.o.span(t, t)
	kept := c.gaps[:0]
	for _, g := range c.gaps {
		if !g.hour.Before(lo.Add(-time.Hour)) {
			kept = append(kept, g)
		}
	}
	c.gaps = kept
}

// gapsIn is the number of offsets missing in files of the hours that decide [from, to).
func (c *counter) gapsIn(from, to time.Time) int64 {
	lo, hi := c.o.span(from, to)
	var n int64
	for _, g := range c.gaps {
		if !g.hour.Before(lo.Add(-time.Hour)) && !g.hour.After(hi) {
			n += g.n
		}
	}
	return n
}
