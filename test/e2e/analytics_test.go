package e2e

// Shared by the analytics tests (metrics, budget, tenancy): the wire shapes of GET /metrics
// and GET /metrics/top, an exact client-side model of what they must answer, and a bounded
// poll that reports a precise diff when the server never catches up.

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// Bot user agents: clicks carrying them are invalid traffic ("bot").
var botUAs = []string{
	"curl/8.5.0",
	"Go-http-client/1.1",
	"Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
}

// level is one of the three levels of /metrics and /metrics/top.
type level int

const (
	lvAd level = iota
	lvCampaign
	lvAdvertiser
	numLevels
)

var levelNames = [numLevels]string{"ad", "campaign", "advertiser"}

// idsParam is the /metrics parameter naming ids of the level; idKey the key of a series or
// top-N item.
func (l level) idsParam() string { return levelNames[l] + "_ids" }
func (l level) idKey() string    { return levelNames[l] + "_id" }

// point is one bucket of a /metrics series.
type point struct {
	Time            time.Time        `json:"time"`
	Impressions     int64            `json:"impressions"`
	Clicks          int64            `json:"clicks"`
	InvalidClicks   int64            `json:"invalid_clicks"`
	SpendMicros     int64            `json:"spend_micros"`
	Interactions    map[string]int64 `json:"interactions"`
	InvalidByReason map[string]int64 `json:"invalid_by_reason"`
}

type series struct {
	AdID         string  `json:"ad_id"`
	CampaignID   string  `json:"campaign_id"`
	AdvertiserID string  `json:"advertiser_id"`
	Points       []point `json:"points"`
}

func (s *series) id(l level) string {
	return [numLevels]string{s.AdID, s.CampaignID, s.AdvertiserID}[l]
}

type metricsResp struct {
	StartTime time.Time `json:"start_time"`
	EndTime   time.Time `json:"end_time"`
	Interval  string    `json:"interval"`
	Series    []series  `json:"series"`
}

type topItem struct {
	id    string
	value int64
}

func (it topItem) String() string { return fmt.Sprintf("%s:%d", it.id, it.value) }

type topResp struct {
	StartTime time.Time `json:"start_time"`
	EndTime   time.Time `json:"end_time"`
	Metric    string    `json:"metric"`
	By        string    `json:"by"`
	Items     []topItem `json:"-"`
}

// getJSON GETs base+path with key and decodes a 200 answer into out. Anything else is an error
// naming the request, for a poll to report.
func getJSON(ctx context.Context, c *http.Client, base, path, key string, out any) error {
	resp, err := do(ctx, c, "GET", base+path, key, nil, nil)
	if err != nil {
		return fmt.Errorf("GET %s: %v", path, err)
	}
	if resp.status != http.StatusOK {
		return fmt.Errorf("GET %s: got %v, want 200", path, resp)
	}
	if err := json.Unmarshal(resp.body, out); err != nil {
		return fmt.Errorf("GET %s: decode %.300q: %v", path, resp.body, err)
	}
	return nil
}

// getTop GETs a /metrics/top path and decodes its items (keyed by the level's id key and the
// metric's name).
func getTop(ctx context.Context, c *http.Client, base, path, key, idKey, metric string) (*topResp, error) {
	var raw struct {
		topResp
		Items []map[string]json.RawMessage `json:"items"`
	}
	if err := getJSON(ctx, c, base, path, key, &raw); err != nil {
		return nil, err
	}
	tr := raw.topResp
	for i, m := range raw.Items {
		var it topItem
		if err := json.Unmarshal(m[idKey], &it.id); err != nil {
			return nil, fmt.Errorf("GET %s: item %d has no string %q: %v", path, i, idKey, err)
		}
		if err := json.Unmarshal(m[metric], &it.value); err != nil {
			return nil, fmt.Errorf("GET %s: item %d has no integer %q: %v", path, i, metric, err)
		}
		tr.Items = append(tr.Items, it)
	}
	return &tr, nil
}

// counts is the model of one bucket of one id.
type counts struct {
	imp, clk, spend int64
	invalid         map[string]int64 // by reason name
	inter           map[string]int64 // by interaction name
}

func (c *counts) add(o *counts) {
	c.imp += o.imp
	c.clk += o.clk
	c.spend += o.spend
	for k, v := range o.invalid {
		if c.invalid == nil {
			c.invalid = map[string]int64{}
		}
		c.invalid[k] += v
	}
	for k, v := range o.inter {
		if c.inter == nil {
			c.inter = map[string]int64{}
		}
		c.inter[k] += v
	}
}

func (c *counts) invalidTotal() int64 {
	var n int64
	for _, v := range c.invalid {
		n += v
	}
	return n
}

func (c *counts) metric(name string) int64 {
	switch name {
	case "clicks":
		return c.clk
	case "impressions":
		return c.imp
	case "spend_micros":
		return c.spend
	}
	panic("test bug: metric " + name)
}

// nonZero drops zero entries so that an absent map and one of zeros compare equal.
func nonZero(m map[string]int64) map[string]int64 {
	out := map[string]int64{}
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

func fmtMap(m map[string]int64) string {
	m = nonZero(m)
	keys := slices.Sorted(maps.Keys(m))
	var b strings.Builder
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s:%d", k, m[k])
	}
	b.WriteByte('}')
	return b.String()
}

// diffPoint says how a point differs from the model, or "".
func diffPoint(p *point, w *counts) string {
	var d []string
	cmp := func(name string, got, want int64) {
		if got != want {
			d = append(d, fmt.Sprintf("%s %d, want %d", name, got, want))
		}
	}
	cmp("impressions", p.Impressions, w.imp)
	cmp("clicks", p.Clicks, w.clk)
	cmp("invalid_clicks", p.InvalidClicks, w.invalidTotal())
	cmp("spend_micros", p.SpendMicros, w.spend)
	if !maps.Equal(nonZero(p.InvalidByReason), nonZero(w.invalid)) {
		d = append(d, fmt.Sprintf("invalid_by_reason %s, want %s", fmtMap(p.InvalidByReason), fmtMap(w.invalid)))
	}
	if !maps.Equal(nonZero(p.Interactions), nonZero(w.inter)) {
		d = append(d, fmt.Sprintf("interactions %s, want %s", fmtMap(p.Interactions), fmtMap(w.inter)))
	}
	return strings.Join(d, "; ")
}

// model holds exact counts per level, id and minute (Unix minutes).
type model struct {
	m [numLevels]map[string]map[int64]*counts
}

func newModel() *model {
	var md model
	for l := range md.m {
		md.m[l] = map[string]map[int64]*counts{}
	}
	return &md
}

// add counts c in minute at the ad, its campaign and its advertiser.
func (md *model) add(ad adInfo, minute int64, c *counts) {
	for l, id := range [numLevels]string{ad.id, ad.campaign, ad.advertiser} {
		byMin := md.m[l][id]
		if byMin == nil {
			byMin = map[int64]*counts{}
			md.m[l][id] = byMin
		}
		cur := byMin[minute]
		if cur == nil {
			cur = &counts{}
			byMin[minute] = cur
		}
		cur.add(c)
	}
}

// minutes returns the first and last minute holding anything.
func (md *model) minutes() (lo, hi int64, ok bool) {
	for _, byMin := range md.m[lvAd] {
		for m := range byMin {
			if !ok || m < lo {
				lo = m
			}
			if !ok || m > hi {
				hi = m
			}
			ok = true
		}
	}
	return lo, hi, ok
}

// sum adds up the id's minutes in [from, to) (times).
func (md *model) sum(l level, id string, from, to time.Time) counts {
	var c counts
	f, t := from.Unix(), to.Unix()
	for m, mc := range md.m[l][id] {
		if s := m * 60; s >= f && s < t {
			c.add(mc)
		}
	}
	return c
}

// grid returns the bucket starts of [start, end) at interval minutes (UTC, aligned to the
// epoch), or in days of loc when loc is set, and the aligned end.
func grid(start, end time.Time, interval time.Duration, loc *time.Location) (starts []time.Time, alignedEnd time.Time) {
	if loc == nil {
		s := time.Unix(start.Unix()/int64(interval/time.Second)*int64(interval/time.Second), 0).UTC()
		for t := s; t.Before(end); t = t.Add(interval) {
			starts = append(starts, t)
		}
		return starts, starts[len(starts)-1].Add(interval)
	}
	days := int(interval / (24 * time.Hour))
	l := start.In(loc)
	t := time.Date(l.Year(), l.Month(), l.Day(), 0, 0, 0, 0, loc)
	for ; t.Before(end); t = t.AddDate(0, 0, days) {
		starts = append(starts, t.UTC())
	}
	return starts, t.UTC()
}

// metricsQuery is one GET /metrics request the model can answer.
type metricsQuery struct {
	level    level
	ids      []string
	interval string
	step     time.Duration
	tz       string
	loc      *time.Location
}

func (q *metricsQuery) path(start, end time.Time) string {
	v := url.Values{}
	v.Set(q.level.idsParam(), strings.Join(q.ids, ","))
	v.Set("start_time", start.UTC().Format(time.RFC3339))
	v.Set("end_time", end.UTC().Format(time.RFC3339))
	v.Set("interval", q.interval)
	if q.tz != "" {
		v.Set("tz", q.tz)
	}
	return "/metrics?" + v.Encode()
}

// checkMetrics compares one /metrics answer with the model and returns its differences: a
// line naming the request, then one line per difference (at most perRequest of them).
func (md *model) checkMetrics(q *metricsQuery, path string, r *metricsResp, start, end time.Time) []string {
	return grouped(path, md.metricsDiffs(q, r, start, end))
}

// perRequest bounds the differences reported for one request.
const perRequest = 12

// grouped returns diffs under a line naming the request, or nothing.
func grouped(path string, diffs []string) []string {
	if len(diffs) == 0 {
		return nil
	}
	if p, err := url.QueryUnescape(path); err == nil {
		path = p
	}
	out := []string{"GET " + path + ":"}
	for i, d := range diffs {
		if i == perRequest {
			out = append(out, fmt.Sprintf("    ... and %d more", len(diffs)-perRequest))
			break
		}
		out = append(out, "    "+d)
	}
	return out
}

func (md *model) metricsDiffs(q *metricsQuery, r *metricsResp, start, end time.Time) []string {
	var diffs []string
	starts, aEnd := grid(start, end, q.step, q.loc)
	if !r.StartTime.Equal(starts[0]) || !r.EndTime.Equal(aEnd) {
		diffs = append(diffs, fmt.Sprintf("range [%s, %s), want the aligned [%s, %s)",
			r.StartTime.Format(time.RFC3339), r.EndTime.Format(time.RFC3339), starts[0].Format(time.RFC3339), aEnd.Format(time.RFC3339)))
	}
	if len(r.Series) != len(q.ids) {
		return append(diffs, fmt.Sprintf("%d series, want %d", len(r.Series), len(q.ids)))
	}
	for i, id := range q.ids {
		s := &r.Series[i]
		if got := s.id(q.level); got != id {
			diffs = append(diffs, fmt.Sprintf("series %d is %s %q, want %q (request order)", i, q.level.idKey(), got, id))
			continue
		}
		if len(s.Points) != len(starts) {
			diffs = append(diffs, fmt.Sprintf("%s %q has %d points, want %d", q.level.idKey(), id, len(s.Points), len(starts)))
			continue
		}
		var gotTotal, wantTotal counts
		for j, b := range starts {
			p := &s.Points[j]
			if !p.Time.Equal(b) {
				diffs = append(diffs, fmt.Sprintf("%s %q point %d at %s, want %s", q.level.idKey(), id, j, p.Time.Format(time.RFC3339), b.Format(time.RFC3339)))
				break
			}
			next := aEnd
			if j+1 < len(starts) {
				next = starts[j+1]
			}
			w := md.sum(q.level, id, b, next)
			wantTotal.add(&w)
			gotTotal.add(&counts{imp: p.Impressions, clk: p.Clicks, spend: p.SpendMicros, invalid: p.InvalidByReason, inter: p.Interactions})
			if d := diffPoint(p, &w); d != "" {
				diffs = append(diffs, fmt.Sprintf("%s %q bucket %s: %s", q.level.idKey(), id, b.Format(time.RFC3339), d))
			}
		}
		if gotTotal.imp != wantTotal.imp || gotTotal.clk != wantTotal.clk || gotTotal.spend != wantTotal.spend {
			diffs = append(diffs, fmt.Sprintf("%s %q totals: impressions %d clicks %d spend_micros %d, want %d %d %d", q.level.idKey(), id,
				gotTotal.imp, gotTotal.clk, gotTotal.spend, wantTotal.imp, wantTotal.clk, wantTotal.spend))
		}
	}
	return diffs
}

// topQuery is one GET /metrics/top request the model can answer.
type topQuery struct {
	by         level
	metric     string
	minutes    int       // the last minutes, or:
	from, to   time.Time // an explicit window of whole minutes
	n          int
	campaign   string
	advertiser string
}

func (q *topQuery) path() string {
	v := url.Values{}
	v.Set("n", fmt.Sprint(q.n))
	if q.minutes > 0 {
		v.Set("minutes", fmt.Sprint(q.minutes))
	} else {
		v.Set("start_time", q.from.UTC().Format(time.RFC3339))
		v.Set("end_time", q.to.UTC().Format(time.RFC3339))
	}
	v.Set("metric", q.metric)
	v.Set("by", levelNames[q.by])
	if q.campaign != "" {
		v.Set("campaign_id", q.campaign)
	}
	if q.advertiser != "" {
		v.Set("advertiser_id", q.advertiser)
	}
	return "/metrics/top?" + v.Encode()
}

// ranking is the brute-force top-N of the model over [from, to): every id of the level that
// passes the filters (owner tells an id's campaign and advertiser), highest first, ties by
// id ascending, zeros left out.
func (md *model) ranking(q *topQuery, from, to time.Time, owner func(l level, id string) (campaign, advertiser string)) []topItem {
	var items []topItem
	for id := range md.m[q.by] {
		cmp, adv := owner(q.by, id)
		if q.campaign != "" && cmp != q.campaign || q.advertiser != "" && adv != q.advertiser {
			continue
		}
		c := md.sum(q.by, id, from, to)
		if v := c.metric(q.metric); v != 0 {
			items = append(items, topItem{id, v})
		}
	}
	sort.Slice(items, func(i, j int) bool {
		if items[i].value != items[j].value {
			return items[i].value > items[j].value
		}
		return items[i].id < items[j].id
	})
	return items[:min(len(items), q.n)]
}

// checkTop compares one /metrics/top answer with the model.
func (md *model) checkTop(q *topQuery, path string, r *topResp, now time.Time, owner func(l level, id string) (string, string)) []string {
	var diffs []string
	if r.Metric != q.metric || r.By != levelNames[q.by] {
		diffs = append(diffs, fmt.Sprintf("metric %q by %q, want %q by %q", r.Metric, r.By, q.metric, levelNames[q.by]))
	}
	// The window is the last q.minutes whole minutes including the current one; the server's
	// clock decides which minute is current, so accept the minute of the request or the next.
	if q.minutes == 0 && (!r.StartTime.Equal(q.from) || !r.EndTime.Equal(q.to)) {
		diffs = append(diffs, fmt.Sprintf("window [%s, %s), want the [%s, %s) asked for",
			r.StartTime.Format(time.RFC3339), r.EndTime.Format(time.RFC3339), q.from.Format(time.RFC3339), q.to.Format(time.RFC3339)))
		return grouped(path, diffs)
	}
	if d := r.EndTime.Sub(r.StartTime); q.minutes > 0 && (d != time.Duration(q.minutes)*time.Minute || r.StartTime.Second() != 0 ||
		r.EndTime.Before(now.Truncate(time.Minute)) || r.EndTime.After(now.Truncate(time.Minute).Add(2*time.Minute))) {
		diffs = append(diffs, fmt.Sprintf("window [%s, %s), want the %d minutes up to the current one (about %s)",
			r.StartTime.Format(time.RFC3339), r.EndTime.Format(time.RFC3339), q.minutes, now.Format(time.RFC3339)))
		return grouped(path, diffs)
	}
	want := md.ranking(q, r.StartTime, r.EndTime, owner)
	if !slices.Equal(r.Items, want) {
		at := 0
		for at < min(len(r.Items), len(want)) && r.Items[at] == want[at] {
			at++
		}
		diffs = append(diffs, fmt.Sprintf("window [%s, %s): first difference at position %d:", r.StartTime.Format(time.RFC3339), r.EndTime.Format(time.RFC3339), at),
			fmt.Sprintf("  got  %v", r.Items), fmt.Sprintf("  want %v", want))
		got := map[string]int64{}
		for _, it := range r.Items {
			got[it.id] = it.value
		}
		for _, it := range want {
			if got[it.id] != it.value {
				diffs = append(diffs, fmt.Sprintf("  %s: %s %d, want %d", it.id, q.metric, got[it.id], it.value))
			}
			delete(got, it.id)
		}
		for _, id := range slices.Sorted(maps.Keys(got)) {
			diffs = append(diffs, fmt.Sprintf("  %s: %s %d listed, want it absent (zero, filtered out or past n)", id, q.metric, got[id]))
		}
	}
	return grouped(path, diffs)
}

// poll calls check until it reports no difference or timeout passes, and then fails the test
// with the differences of the last attempt (the first limit of them). It returns how long it
// took to agree.
func poll(t *testing.T, what string, timeout time.Duration, check func() []string) time.Duration {
	t.Helper()
	start := time.Now()
	var diffs []string
	for attempt := 1; ; attempt++ {
		diffs = check()
		if len(diffs) == 0 {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			const limit = 60
			t.Errorf("%s: still %d differences after %d attempts over %v; the last attempt's first ones:\n  %s",
				what, len(diffs), attempt, time.Since(start).Round(time.Millisecond), strings.Join(diffs[:min(len(diffs), limit)], "\n  "))
			return time.Since(start)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
