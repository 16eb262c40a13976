package topn

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
)

// Query asks for the top N of one level by one metric over the minutes [From, To).
type Query struct {
	Level  metricstore.Level
	Metric Metric
	From   int64 // minutes since the Unix epoch, inclusive
	To     int64 // exclusive
	N      int
	// Advertiser, if set, keeps only that advertiser's objects (at the advertiser level: only
	// itself). Campaign, if set, keeps only that campaign's objects (its ads; itself; its
	// advertiser). Both set: both must hold.
	Advertiser string
	Campaign   string
}

// Item is one ranked id and its value.
type Item struct {
	ID    string
	Value int64
}

// Tuning of the query plan.
const (
	// bruteEntries: windows whose blocks hold at most this many entries are summed outright,
	// which beats the threshold algorithm there (short windows, quiet levels).
	bruteEntries = 1 << 17
	// memberDirect: filters with at most this many members (or 16 N) evaluate each member.
	memberDirect = 4096
)

// Top returns the top q.N ids by q.Metric over the window, highest first, ties by id
// ascending, only positive values.
func (ix *Index) Top(ctx context.Context, q Query) ([]Item, error) {
	if !q.Level.Valid() || q.Metric >= numMetrics || q.N < 1 || q.N > MaxN || q.From >= q.To {
		return nil, fmt.Errorf("%w: level %d, metric %d, n %d, minutes [%d, %d)", ErrInvalidQuery, q.Level, q.Metric, q.N, q.From, q.To)
	}
	if q.To-q.From > int64((ix.opts.Retention+ix.opts.Slack)/time.Minute) {
		return nil, fmt.Errorf("%w: window of %d minutes is longer than the retention", ErrInvalidQuery, q.To-q.From)
	}
	if (q.Advertiser != "" || q.Campaign != "") && ix.opts.Owners == nil {
		return nil, ErrNoOwners
	}
	ix.queries.Add(1)
	if ix.hasPending() {
		ix.drain()
	}
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	st := ix.st
	if lo := max(st.floor, ix.evictBefore(ix.nowMinute())); q.From < lo {
		return nil, fmt.Errorf("%w: window starts at minute %d, the index holds minutes from %d", ErrOutOfRange, q.From, lo)
	}
	r := &run{ix: ix, st: st, lv: st.levels[q.Level-1], q: q, m: int(q.Metric)}
	r.best.less = r.worse
	r.plan()
	if err := r.exec(ctx); err != nil {
		return nil, err
	}
	return r.items(), nil
}

// run is one query's state.
type run struct {
	ix    *Index
	st    *state
	lv    *level
	q     Query
	m     int
	comps []component
	f     filter
	best  bestHeap
	seen  map[uint32]struct{}
	evals int
}

// component is the part of the window within one hour.
type component struct {
	hour   *hourBlock
	full   bool
	direct []*block // partial: the minutes of the part (existing blocks only)
	other  []*block // partial: the hour's other minutes
	useSub bool     // value = hour - sum(other) reads fewer blocks than sum(direct)
	slack  int64    // bound slack: how far negative minutes outside the part could lift it
}

func (c *component) value(id uint32, m int) int64 {
	if c.full {
		return c.hour.get(id)[m]
	}
	var s int64
	if c.useSub {
		s = c.hour.get(id)[m]
		for _, b := range c.other {
			s -= b.get(id)[m]
		}
		return s
	}
	for _, b := range c.direct {
		s += b.get(id)[m]
	}
	return s
}

func (r *run) plan() {
	for h := floorDiv(r.q.From, 60); h*60 < r.q.To; h++ {
		hb := r.lv.hours[h]
		if hb == nil {
			continue // nothing at all in this hour
		}
		lo, hi := max(r.q.From, h*60), min(r.q.To, h*60+60)
		c := component{hour: hb, full: lo == h*60 && hi == h*60+60}
		if !c.full {
			for t := h * 60; t < h*60+60; t++ {
				b := r.lv.minutes[t]
				if b == nil {
					continue
				}
				if t >= lo && t < hi {
					c.direct = append(c.direct, b)
				} else {
					c.other = append(c.other, b)
					c.slack += b.neg[r.m]
				}
			}
			c.useSub = len(c.other)+1 < len(c.direct)
		}
		r.comps = append(r.comps, c)
	}
}

// exact is id's value over the window.
func (r *run) exact(id uint32) int64 {
	r.evals++
	var s int64
	for i := range r.comps {
		s += r.comps[i].value(id, r.m)
	}
	return s
}

func (r *run) exec(ctx context.Context) error {
	defer func() { r.ix.candidates.Add(int64(r.evals)) }()
	universe, explicit, err := r.setFilter()
	if err != nil {
		return err
	}
	if explicit {
		r.ix.memberQueries.Add(1)
		return r.evalAll(ctx, universe)
	}
	if r.f.active && r.ix.memberLimit >= 0 && len(universe) <= max(r.ix.memberLimit, 16*r.q.N) {
		r.ix.memberQueries.Add(1)
		return r.evalAll(ctx, universe)
	}
	if r.bruteSize() <= r.ix.bruteLimit {
		r.ix.bruteQueries.Add(1)
		return r.brute(ctx)
	}
	r.ix.taQueries.Add(1)
	done, err := r.threshold(ctx)
	if err != nil || done {
		return err
	}
	r.ix.fallbacks.Add(1)
	r.best.items = r.best.items[:0] // the fallback offers every id again
	if r.f.active && len(universe) < r.bruteSize() {
		r.ix.memberQueries.Add(1)
		return r.evalAll(ctx, universe)
	}
	r.ix.bruteQueries.Add(1)
	return r.brute(ctx)
}

// filter keeps the objects of one advertiser and/or campaign.
type filter struct {
	active     bool
	group      uint32 // advertiser's number in state.advs plus one; 0 if it owns nothing resolved
	advertiser string
	campaign   string // ad level only
}

// setFilter resolves the query's filters into a filter on the level's ids, returning either
// an explicit list of the only ids that can match (explicit) or the members that can match
// (for the ad and campaign levels, the advertiser's group plus the unresolved ids).
func (r *run) setFilter() (universe []uint32, explicit bool, err error) {
	q := r.q
	if q.Advertiser == "" && q.Campaign == "" {
		return nil, false, nil
	}
	owners := r.ix.opts.Owners
	adv := q.Advertiser
	if q.Campaign != "" {
		owner, ok := owners.CampaignAdvertiser(q.Campaign)
		if !ok || adv != "" && owner != adv {
			return nil, true, nil // nothing can match
		}
		adv = owner
	}
	one := func(id string) ([]uint32, bool, error) {
		if n, ok := r.lv.ids.lookup(id); ok {
			return []uint32{n}, true, nil
		}
		return nil, true, nil
	}
	switch q.Level {
	case metricstore.LevelAdvertiser:
		return one(adv)
	case metricstore.LevelCampaign:
		if q.Campaign != "" {
			return one(q.Campaign)
		}
	}
	r.f = filter{active: true, advertiser: adv}
	if q.Level == metricstore.LevelAd {
		r.f.campaign = q.Campaign
	}
	if g, ok := r.st.advs.lookup(adv); ok {
		r.f.group = g + 1
		if int(g) < len(r.lv.members) {
			universe = r.lv.members[g]
		}
	}
	if len(r.lv.unresolved) > 0 {
		universe = append(slices.Clip(universe), r.lv.unresolved...)
	}
	return universe, false, nil
}

// pass reports whether number id passes the filter.
func (r *run) pass(id uint32) bool {
	f := &r.f
	if !f.active {
		return true
	}
	owners := r.ix.opts.Owners
	if g := r.lv.group[id]; g != 0 {
		if g != f.group {
			return false
		}
	} else {
		var adv string
		var ok bool
		if r.q.Level == metricstore.LevelAd {
			adv, ok = owners.AdAdvertiser(r.lv.ids.str(id))
		} else {
			adv, ok = owners.CampaignAdvertiser(r.lv.ids.str(id))
		}
		if !ok || adv != f.advertiser {
			return false
		}
	}
	if f.campaign != "" {
		c, ok := owners.AdCampaign(r.lv.ids.str(id))
		return ok && c == f.campaign
	}
	return true
}

// evalAll computes the exact value of every id of universe that passes the filter.
func (r *run) evalAll(ctx context.Context, universe []uint32) error {
	for i, id := range universe {
		if i%1024 == 1023 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if !r.pass(id) {
			continue
		}
		r.offer(id, r.exact(id))
	}
	return nil
}

// bruteSize is how many entries brute force would read.
func (r *run) bruteSize() int {
	n := 0
	for i := range r.comps {
		c := &r.comps[i]
		if c.full {
			n += c.hour.size()
			continue
		}
		for _, b := range c.direct {
			n += b.size()
		}
	}
	return n
}

// cursor is sorted access to one component's hour top set.
type cursor struct {
	items []topItem
	i     int
	cut   int64
	slack int64
}

// bound is the most an id not yet seen on this cursor can have in its component.
func (c *cursor) bound() int64 {
	b := c.cut
	if c.i < len(c.items) && c.items[c.i].v > b {
		b = c.items[c.i].v
	}
	return b + c.slack
}

// threshold runs the threshold algorithm; done is false when the top sets ran out before the
// answer was proven, and the caller must fall back.
func (r *run) threshold(ctx context.Context) (done bool, err error) {
	cur := make([]cursor, len(r.comps))
	for i := range r.comps {
		t := &r.comps[i].hour.top[r.m]
		cur[i] = cursor{items: t.view(), cut: t.cut, slack: r.comps[i].slack}
	}
	r.seen = make(map[uint32]struct{}, 1024)
	for round := 0; ; round++ {
		if round%64 == 63 {
			if err := ctx.Err(); err != nil {
				return false, err
			}
		}
		var t int64
		for i := range cur {
			t += cur[i].bound()
		}
		if t <= 0 || len(r.best.items) == r.q.N && r.best.items[0].v > t {
			return true, nil
		}
		progressed := false
		for i := range cur {
			c := &cur[i]
			if c.i >= len(c.items) || c.items[c.i].v <= c.cut {
				continue // nothing left on this cursor that would lower its bound
			}
			id := c.items[c.i].id
			c.i++
			progressed = true
			if _, ok := r.seen[id]; ok {
				continue
			}
			r.seen[id] = struct{}{}
			if r.pass(id) {
				r.offer(id, r.exact(id))
			}
		}
		if !progressed {
			return false, nil
		}
	}
}

// offer considers id with exact value v for the result.
func (r *run) offer(id uint32, v int64) {
	if v <= 0 {
		return
	}
	it := topItem{id: id, v: v}
	if len(r.best.items) < r.q.N {
		r.best.push(it)
		return
	}
	if r.worse(r.best.items[0], it) {
		r.best.items[0] = it
		r.best.down(0)
	}
}

// worse orders results: lower value first, then higher id.
func (r *run) worse(a, b topItem) bool {
	if a.v != b.v {
		return a.v < b.v
	}
	return bytes.Compare(r.lv.ids.bytes(a.id), r.lv.ids.bytes(b.id)) > 0
}

func (r *run) items() []Item {
	best := r.best.items
	slices.SortFunc(best, func(a, b topItem) int {
		if r.worse(b, a) {
			return -1
		}
		if r.worse(a, b) {
			return 1
		}
		return 0
	})
	out := make([]Item, len(best))
	for i, it := range best {
		out[i] = Item{ID: r.lv.ids.str(it.id), Value: it.v}
	}
	return out
}

// bestHeap is a binary heap with the worst kept result at the root.
type bestHeap struct {
	items []topItem
	less  func(a, b topItem) bool // a is worse than b
}

func (h *bestHeap) push(it topItem) {
	h.items = append(h.items, it)
	i := len(h.items) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !h.less(h.items[i], h.items[p]) {
			break
		}
		h.items[i], h.items[p] = h.items[p], h.items[i]
		i = p
	}
}

func (h *bestHeap) down(i int) {
	n := len(h.items)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		c := l
		if r := l + 1; r < n && h.less(h.items[r], h.items[l]) {
			c = r
		}
		if !h.less(h.items[c], h.items[i]) {
			return
		}
		h.items[i], h.items[c] = h.items[c], h.items[i]
		i = c
	}
}
