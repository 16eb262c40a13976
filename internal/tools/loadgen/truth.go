package loadgen

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Level is what a /metrics series is about.
type Level uint8

// Levels of GET /metrics and GET /metrics/top.
const (
	LevelAd Level = iota
	LevelCampaign
	LevelAdvertiser
	numLevels
)

var levelNames = [numLevels]string{"ad", "campaign", "advertiser"}

func (l Level) String() string { return levelNames[l] }

// Bound is the range a count must lie in: Lo counts what was certainly acknowledged, Hi adds
// what may have been recorded without an answer (and, per minute, keys whose receive time
// could fall into this minute or a neighbour).
type Bound struct{ Lo, Hi int64 }

type bounds = [numMetrics]Bound

// series is the expectation of one id: totals over the window and per minute.
type series struct {
	total   bounds
	minutes map[int64]*bounds // Unix minute -> bounds
}

func newSeries() *series { return &series{minutes: make(map[int64]*bounds)} }

func (s *series) minute(m int64) *bounds {
	b := s.minutes[m]
	if b == nil {
		b = new(bounds)
		s.minutes[m] = b
	}
	return b
}

func (s *series) addKey(w keyWindow) {
	m := w.metric
	if w.definite {
		s.total[m].Lo++
	}
	s.total[m].Hi++
	if w.definite && w.lo == w.hi {
		b := s.minute(w.lo)
		b[m].Lo++
		b[m].Hi++
		return
	}
	for t := w.lo; t <= w.hi; t++ {
		s.minute(t)[m].Hi++
	}
}

func (s *series) addSeries(o *series) {
	for m := range s.total {
		s.total[m].Lo += o.total[m].Lo
		s.total[m].Hi += o.total[m].Hi
	}
	for t, ob := range o.minutes {
		b := s.minute(t)
		for m := range b {
			b[m].Lo += ob[m].Lo
			b[m].Hi += ob[m].Hi
		}
	}
}

// addExact adds counts that are known exactly (a baseline measured before the run).
func (s *series) addExact(t int64, c *counts) {
	b := s.minute(t)
	for m, n := range c {
		b[m].Lo += n
		b[m].Hi += n
		s.total[m].Lo += n
		s.total[m].Hi += n
	}
}

// expected is what GET /metrics must answer for the window [start, end) of Unix minutes: the
// ledger's keys plus the baseline of counts that were there before the run.
type expected struct {
	start, end int64
	levels     [numLevels]map[string]*series
}

// Truth summarises the ledger: distinct keys acknowledged per metric, and keys whose
// requests got no answer (they may or may not have been recorded).
type Truth struct {
	Impressions    int64 `json:"impressions"`
	Clicks         int64 `json:"clicks"`
	InvalidClicks  int64 `json:"invalid_clicks"`
	AddToCart      int64 `json:"add_to_cart"`
	Order          int64 `json:"order"`
	BotImpressions int64 `json:"bot_impressions"` // acknowledged, but counted in no metric
	Uncertain      int64 `json:"uncertain"`
	AdsTouched     int   `json:"ads_touched"`
}

// buildExpected turns the ledger into expectations at the three levels.
func buildExpected(l *ledger, lay Layout) (*expected, Truth) {
	var tr Truth
	ads := make(map[int32]*series)
	start, end := int64(1<<62), int64(-1<<62)
	tr.BotImpressions = l.each(func(w keyWindow) {
		s := ads[w.ad]
		if s == nil {
			s = newSeries()
			ads[w.ad] = s
		}
		s.addKey(w)
		start, end = min(start, w.lo), max(end, w.hi+1)
		if !w.definite {
			tr.Uncertain++
			return
		}
		switch w.metric {
		case MetricImpressions:
			tr.Impressions++
		case MetricClicks:
			tr.Clicks++
		case MetricInvalidClicks:
			tr.InvalidClicks++
		case MetricAddToCart:
			tr.AddToCart++
		case MetricOrder:
			tr.Order++
		}
	})
	tr.AdsTouched = len(ads)
	e := &expected{start: start, end: end}
	if len(ads) == 0 {
		e.start, e.end = 0, 0
	}
	for i := range e.levels {
		e.levels[i] = make(map[string]*series)
	}
	for ad, s := range ads {
		e.levels[LevelAd][lay.AdID(int(ad))] = s
		c := lay.CampaignOf(int(ad))
		for lv, id := range map[Level]string{LevelCampaign: lay.CampaignID(c), LevelAdvertiser: lay.AdvertiserID(lay.AdvertiserOf(c))} {
			agg := e.levels[lv][id]
			if agg == nil {
				agg = newSeries()
				e.levels[lv][id] = agg
			}
			agg.addSeries(s)
		}
	}
	return e, tr
}

// addBaseline adds counts measured before the run, within the window.
func (e *expected) addBaseline(lv Level, obs observed) {
	for id, mins := range obs {
		for t, c := range mins {
			if t < e.start || t >= e.end || c.zero() {
				continue
			}
			s := e.levels[lv][id]
			if s == nil {
				s = newSeries()
				e.levels[lv][id] = s
			}
			s.addExact(t, c)
		}
	}
}

// ids returns the ids with expectations at lv, sorted.
func (e *expected) ids(lv Level) []string {
	ids := make([]string, 0, len(e.levels[lv]))
	for id := range e.levels[lv] {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// counts are the compared counters of one bucket, as /metrics answered them.
type counts [numMetrics]int64

func (c *counts) zero() bool { return *c == counts{} }

// observed is what /metrics answered for one level: id -> Unix minute -> counts.
type observed map[string]map[int64]*counts

// LevelResult is the comparison at one level.
type LevelResult struct {
	Level         string `json:"level"`
	IDs           int    `json:"ids"`
	Lost          int64  `json:"lost"`           // acknowledged but not counted, over the window
	DoubleCounted int64  `json:"double_counted"` // counted more than acknowledged, over the window
	// Per-minute bucket differences: an event in the wrong minute shows as one bucket lost
	// and one double even when the totals agree.
	BucketLost   int64 `json:"bucket_lost"`
	BucketDouble int64 `json:"bucket_double"`
}

func (r *LevelResult) ok() bool {
	return r.Lost == 0 && r.DoubleCounted == 0 && r.BucketLost == 0 && r.BucketDouble == 0
}

// problems keeps the first few mismatches as examples for the report.
type problems struct {
	list  []string
	total int
}

const maxProblems = 20

func (p *problems) add(format string, args ...any) {
	p.total++
	if len(p.list) < maxProblems {
		p.list = append(p.list, fmt.Sprintf(format, args...))
	}
}

func minuteTime(m int64) string { return time.Unix(m*60, 0).UTC().Format("15:04") }

// compareLevel compares obs with the expectations of ids at lv.
func compareLevel(e *expected, lv Level, ids []string, obs observed, p *problems) LevelResult {
	r := LevelResult{Level: lv.String(), IDs: len(ids)}
	zero := newSeries()
	for _, id := range ids {
		s := e.levels[lv][id]
		if s == nil {
			s = zero
		}
		got := obs[id]
		var total counts
		for t, c := range got {
			if t < e.start || t >= e.end {
				continue
			}
			for m, n := range c {
				total[m] += n
			}
		}
		for m := range numMetrics {
			lost, double := diff(total[m], s.total[m])
			r.Lost += lost
			r.DoubleCounted += double
			if lost+double != 0 {
				p.add("%s %s %s: counted %d, acknowledged %s", lv, id, m, total[m], fmtBound(s.total[m]))
			}
		}
		for t := e.start; t < e.end; t++ {
			b := s.minutes[t]
			c := got[t]
			if b == nil && c == nil {
				continue
			}
			if b == nil {
				b = &bounds{}
			}
			if c == nil {
				c = &counts{}
			}
			for m := range numMetrics {
				lost, double := diff(c[m], b[m])
				r.BucketLost += lost
				r.BucketDouble += double
				if lost+double != 0 && s.total[m].Lo <= total[m] && total[m] <= s.total[m].Hi {
					p.add("%s %s %s at %s: counted %d, expected %s (the total matches: wrong minute)", lv, id, m, minuteTime(t), c[m], fmtBound(b[m]))
				}
			}
		}
	}
	return r
}

func diff(got int64, want Bound) (lost, double int64) {
	switch {
	case got < want.Lo:
		return want.Lo - got, 0
	case got > want.Hi:
		return 0, got - want.Hi
	}
	return 0, 0
}

func fmtBound(b Bound) string {
	if b.Lo == b.Hi {
		return fmt.Sprint(b.Lo)
	}
	return fmt.Sprintf("%d..%d", b.Lo, b.Hi)
}

// topItem is one entry of GET /metrics/top.
type topItem struct {
	id    string
	value int64
}

// TopResult is the comparison of one GET /metrics/top answer.
type TopResult struct {
	By            string `json:"by"`
	Metric        string `json:"metric"`
	Items         int    `json:"items"`
	Lost          int64  `json:"lost"`           // listed below what was acknowledged, or missing
	DoubleCounted int64  `json:"double_counted"` // listed above it, or listed though ours never counted
	Misordered    int    `json:"misordered"`     // not highest first, ties by id ascending
}

func (r *TopResult) ok() bool { return r.Lost == 0 && r.DoubleCounted == 0 && r.Misordered == 0 }

// compareTop checks a top list (of at most n items) for metric m at lv against the totals.
// Ids outside ours (not starting with prefix) are other traffic and are not judged; ids of
// ours that we have no expectation for must not be listed at all.
func compareTop(e *expected, lv Level, m Metric, n int, items []topItem, prefix string, p *problems) TopResult {
	r := TopResult{By: lv.String(), Metric: m.String(), Items: len(items)}
	listed := make(map[string]bool, len(items))
	for i, it := range items {
		listed[it.id] = true
		if i > 0 {
			prev := items[i-1]
			if prev.value < it.value || prev.value == it.value && prev.id >= it.id {
				r.Misordered++
				p.add("top %s by %s: %s (%d) listed after %s (%d)", m, lv, it.id, it.value, prev.id, prev.value)
			}
		}
		s := e.levels[lv][it.id]
		if s == nil {
			if strings.HasPrefix(it.id, prefix) {
				r.DoubleCounted += it.value
				p.add("top %s by %s: %s listed with %d, but nothing of it was acknowledged", m, lv, it.id, it.value)
			}
			continue
		}
		lost, double := diff(it.value, s.total[m])
		r.Lost += lost
		r.DoubleCounted += double
		if lost+double != 0 {
			p.add("top %s by %s: %s listed with %d, acknowledged %s", m, lv, it.id, it.value, fmtBound(s.total[m]))
		}
	}
	// Everything certainly above the last listed value (or above zero when the list is not
	// full) must be listed: the list is exact.
	var floor int64
	if len(items) >= n && len(items) > 0 {
		floor = items[len(items)-1].value
	}
	for _, id := range e.ids(lv) {
		s := e.levels[lv][id]
		if lo := s.total[m].Lo; lo > floor && !listed[id] {
			r.Lost += lo - floor
			p.add("top %s by %s: %s missing, acknowledged %s (list floor %d)", m, lv, id, fmtBound(s.total[m]), floor)
		}
	}
	return r
}
