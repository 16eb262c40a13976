package query

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/httpapi"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/query/topn"
)

var (
	testNow = time.Date(2026, 11, 21, 11, 2, 30, 0, time.UTC)
	admin   = httpapi.Principal{Role: httpapi.RoleAdmin}
	adv1    = httpapi.Principal{Role: httpapi.RoleAdvertiser, AdvertiserID: "a1"}
	adv2    = httpapi.Principal{Role: httpapi.RoleAdvertiser, AdvertiserID: "a2"}
	nobody  = httpapi.Principal{}
	ingest  = httpapi.Principal{Role: httpapi.RoleIngest}
)

type env struct {
	t      testing.TB
	store  *fakeStore
	index  *topn.Index
	owners *fakeOwners
	h      *Handler
	mux    *http.ServeMux
}

// newEnv: advertiser a1 owns campaigns c1 (ads 1, 2) and c2 (ad 3); a2 owns c3 (ads 7, 9).
func newEnv(t testing.TB) *env {
	e := &env{t: t, store: newFakeStore(), mux: http.NewServeMux()}
	e.owners = &fakeOwners{
		adCampaign: map[string]string{"1": "c1", "2": "c1", "3": "c2", "7": "c3", "9": "c3"},
		campAdv:    map[string]string{"c1": "a1", "c2": "a1", "c3": "a2"},
	}
	now := func() time.Time { return testNow }
	e.index = topn.New(topn.Options{Owners: e.owners, Now: now})
	h, err := New(Options{Store: e.store, Index: e.index, Owners: e.owners, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	e.h = h
	h.Register(e.mux)
	return e
}

// event records counts of ad at time t at all three levels, in the store and the index, as
// the aggregator and the server do.
func (e *env) event(ad string, t time.Time, c metricstore.Counts) {
	camp := e.owners.adCampaign[ad]
	adv := e.owners.campAdv[camp]
	ds := []metricstore.Delta{{Level: metricstore.LevelAd, ID: ad, Minute: t.Unix() / 60, Counts: c}}
	if camp != "" {
		ds = append(ds, metricstore.Delta{Level: metricstore.LevelCampaign, ID: camp, Minute: t.Unix() / 60, Counts: c},
			metricstore.Delta{Level: metricstore.LevelAdvertiser, ID: adv, Minute: t.Unix() / 60, Counts: c})
	}
	if err := e.store.Apply(context.Background(), &metricstore.Commit{Deltas: ds}); err != nil {
		e.t.Fatal(err)
	}
	e.index.Add(ds)
}

func (e *env) get(target string, p httpapi.Principal) (int, string) {
	e.t.Helper()
	r := httptest.NewRequest("GET", target, nil)
	r = r.WithContext(httpapi.WithPrincipal(r.Context(), p))
	w := httptest.NewRecorder()
	e.mux.ServeHTTP(w, r)
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		e.t.Errorf("GET %s: Content-Type %q", target, ct)
	}
	return w.Code, w.Body.String()
}

type apiError struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// wantError checks status, code, and that the message names field.
func (e *env) wantError(target string, p httpapi.Principal, status int, code, field string) {
	e.t.Helper()
	got, body := e.get(target, p)
	var ae apiError
	if err := json.Unmarshal([]byte(body), &ae); err != nil {
		e.t.Errorf("GET %s: body %q: %v", target, body, err)
		return
	}
	if got != status || ae.Error.Code != code || !strings.HasPrefix(ae.Error.Message, field) {
		e.t.Errorf("GET %s: %d %s %q; want %d %s naming %q", target, got, ae.Error.Code, ae.Error.Message, status, code, field)
	}
}

func t0(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestMetricsExample(t *testing.T) {
	e := newEnv(t)
	c := metricstore.Counts{Impressions: 40, Clicks: 3, SpendMicros: 1500000}
	c.AddInteraction("add_to_cart", 1)
	e.event("1", t0("2026-11-21T10:00:10Z"), c)
	c = metricstore.Counts{Impressions: 7, Clicks: 1, SpendMicros: 500000}
	c.AddInvalid(event.ReasonBot, 1)
	e.event("1", t0("2026-11-21T10:02:59Z"), c)
	e.store.finalBefore = t0("2026-11-21T10:01:00Z")
	code, body := e.get("/metrics?ad_ids=1&start_time=2026-11-21T10:00:00Z&end_time=2026-11-21T10:03:00Z&interval=1m", admin)
	want := `{"start_time":"2026-11-21T10:00:00Z","end_time":"2026-11-21T10:03:00Z","interval":"1m",` +
		`"series":[{"ad_id":"1","points":[` +
		`{"time":"2026-11-21T10:00:00Z","impressions":40,"clicks":3,"invalid_clicks":0,"spend_micros":1500000,"conversions":0,"conversion_value_micros":0,"view_conversions":0,"view_conversion_value_micros":0,"interactions":{"add_to_cart":1},"final":true},` +
		`{"time":"2026-11-21T10:01:00Z","impressions":0,"clicks":0,"invalid_clicks":0,"spend_micros":0,"conversions":0,"conversion_value_micros":0,"view_conversions":0,"view_conversion_value_micros":0,"final":false},` +
		`{"time":"2026-11-21T10:02:00Z","impressions":7,"clicks":1,"invalid_clicks":1,"spend_micros":500000,"conversions":0,"conversion_value_micros":0,"view_conversions":0,"view_conversion_value_micros":0,"final":false,"invalid_by_reason":{"bot":1}}]}]}` + "\n"
	if code != 200 || body != want {
		t.Fatalf("got %d\n%s\nwant\n%s", code, body, want)
	}
	// The body is valid JSON that encoding/json reads back.
	var v map[string]any
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatal(err)
	}
}

type seriesResp struct {
	StartTime string           `json:"start_time"`
	EndTime   string           `json:"end_time"`
	Interval  string           `json:"interval"`
	Series    []map[string]any `json:"series"`
}

func (e *env) series(target string, p httpapi.Principal) seriesResp {
	e.t.Helper()
	code, body := e.get(target, p)
	if code != 200 {
		e.t.Fatalf("GET %s: %d %s", target, code, body)
	}
	var r seriesResp
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		e.t.Fatal(err)
	}
	return r
}

func TestMetricsParams(t *testing.T) {
	e := newEnv(t)
	e.event("1", t0("2026-11-21T10:30:00Z"), metricstore.Counts{Clicks: 2})
	e.event("3", t0("2026-11-21T10:45:00Z"), metricstore.Counts{Clicks: 5})
	cases := []struct {
		query                string
		start, end, interval string
		keys                 []string // series ids in order
		points               int
	}{
		// Defaults: the last hour, at 1m; start floored and end ceiled.
		{"ad_ids=1", "2026-11-21T10:02:00Z", "2026-11-21T11:03:00Z", "1m", []string{"1"}, 61},
		{"ad_ids=1,2&ad_ids=3", "2026-11-21T10:02:00Z", "2026-11-21T11:03:00Z", "1m", []string{"1", "2", "3"}, 61},
		{"ad_ids=3,1,3", "2026-11-21T10:02:00Z", "2026-11-21T11:03:00Z", "1m", []string{"3", "1"}, 61},
		{"ad_ids=1,1&ad_ids=2,1", "2026-11-21T10:02:00Z", "2026-11-21T11:03:00Z", "1m", []string{"1", "2"}, 61},
		{"ad_ids=1&end_time=2026-11-21T06:00:00Z", "2026-11-21T05:00:00Z", "2026-11-21T06:00:00Z", "1m", []string{"1"}, 60},
		{"ad_ids=1&start_time=2026-11-21T10:59:59Z", "2026-11-21T10:59:00Z", "2026-11-21T11:03:00Z", "1m", []string{"1"}, 4},
		{"ad_ids=1&start_time=1795251600&end_time=1795255200&interval=5m", "2026-11-21T09:00:00Z", "2026-11-21T10:00:00Z", "5m", []string{"1"}, 12},
		{"ad_ids=1&start_time=2026-11-21T10:07:00Z&end_time=2026-11-21T10:53:00Z&interval=15m", "2026-11-21T10:00:00Z", "2026-11-21T11:00:00Z", "15m", []string{"1"}, 4},
		{"ad_ids=1&start_time=2026-11-21T10:00:00%2B05:30&end_time=2026-11-21T11:00:00Z&interval=30m", "2026-11-21T04:30:00Z", "2026-11-21T11:00:00Z", "30m", []string{"1"}, 13},
		{"ad_ids=1&interval=60m", "2026-11-21T10:00:00Z", "2026-11-21T12:00:00Z", "1h", []string{"1"}, 2},
		{"ad_ids=1&interval=120m", "2026-11-21T10:00:00Z", "2026-11-21T12:00:00Z", "2h", []string{"1"}, 1},
		{"ad_ids=1&interval=90m", "2026-11-21T09:00:00Z", "2026-11-21T12:00:00Z", "90m", []string{"1"}, 2},
		{"ad_ids=1&interval=05m", "2026-11-21T10:00:00Z", "2026-11-21T11:05:00Z", "5m", []string{"1"}, 13},
		{"ad_ids=1&interval=24h", "2026-11-21T00:00:00Z", "2026-11-22T00:00:00Z", "1d", []string{"1"}, 1},
		{"ad_ids=1&interval=1440m", "2026-11-21T00:00:00Z", "2026-11-22T00:00:00Z", "1d", []string{"1"}, 1},
		{"ad_ids=1&interval=1d&tz=Asia/Kolkata", "2026-11-20T18:30:00Z", "2026-11-21T18:30:00Z", "1d", []string{"1"}, 1},
		{"ad_ids=1&interval=1d&tz=UTC", "2026-11-21T00:00:00Z", "2026-11-22T00:00:00Z", "1d", []string{"1"}, 1},
		{"ad_ids=1&interval=7d&tz=America/New_York&start_time=2026-10-01T00:00:00Z&end_time=2026-11-01T00:00:00Z", "", "", "7d", []string{"1"}, 0},
		{"campaign_ids=c1,c2", "2026-11-21T10:02:00Z", "2026-11-21T11:03:00Z", "1m", []string{"c1", "c2"}, 61},
		{"advertiser_ids=a1&advertiser_ids=zzz", "2026-11-21T10:02:00Z", "2026-11-21T11:03:00Z", "1m", []string{"a1", "zzz"}, 61},
		// Exactly the limit of points.
		{"ad_ids=1&start_time=2026-11-01T00:00:00Z&end_time=2026-11-07T22:40:00Z", "2026-11-01T00:00:00Z", "2026-11-07T22:40:00Z", "1m", []string{"1"}, 10000},
		// Unknown parameters are ignored (adding parameters is allowed by the contract).
		{"ad_ids=1&cachebust=7", "2026-11-21T10:02:00Z", "2026-11-21T11:03:00Z", "1m", []string{"1"}, 61},
	}
	for _, c := range cases {
		r := e.series("/metrics?"+c.query, admin)
		if c.start != "" && (r.StartTime != c.start || r.EndTime != c.end) {
			t.Errorf("%s: range %s..%s, want %s..%s", c.query, r.StartTime, r.EndTime, c.start, c.end)
		}
		if r.Interval != c.interval {
			t.Errorf("%s: interval %q, want %q", c.query, r.Interval, c.interval)
		}
		if len(r.Series) != len(c.keys) {
			t.Fatalf("%s: %d series, want %d", c.query, len(r.Series), len(c.keys))
		}
		key := map[byte]string{'a': "ad_id", 'c': "campaign_id"}[c.query[0]]
		if strings.HasPrefix(c.query, "advertiser_ids") {
			key = "advertiser_id"
		}
		for i, s := range r.Series {
			if s[key] != c.keys[i] {
				t.Errorf("%s: series %d is %v, want %s=%s", c.query, i, s, key, c.keys[i])
			}
			pts := s["points"].([]any)
			if c.points != 0 && len(pts) != c.points {
				t.Errorf("%s: %d points, want %d", c.query, len(pts), c.points)
			}
			for j := 1; j < len(pts); j++ {
				if pts[j].(map[string]any)["time"].(string) <= pts[j-1].(map[string]any)["time"].(string) {
					t.Errorf("%s: points out of order", c.query)
				}
			}
		}
	}
	// Counts land where they belong, and a campaign series sums its ads.
	r := e.series("/metrics?campaign_ids=c1,c2,c3&start_time=2026-11-21T10:00:00Z&end_time=2026-11-21T11:00:00Z&interval=1h", admin)
	for i, want := range []float64{2, 5, 0} {
		if got := r.Series[i]["points"].([]any)[0].(map[string]any)["clicks"]; got != want {
			t.Errorf("campaign %d clicks %v, want %v", i, got, want)
		}
	}
	// Repeated ids are read from the store once, and answered once.
	e.store.queries = nil
	if r := e.series("/metrics?ad_ids=3,1,3,3", admin); len(r.Series) != 2 {
		t.Errorf("ad_ids=3,1,3,3: %d series, want 2", len(r.Series))
	}
	if ids := e.store.queries[0].IDs; strings.Join(ids, ",") != "3,1" {
		t.Errorf("store asked for %v", ids)
	}
}

func TestMetricsErrors(t *testing.T) {
	e := newEnv(t)
	long := strings.Repeat("x", 65)
	many := func(n int) string {
		ids := make([]string, n)
		for i := range ids {
			ids[i] = strconv.Itoa(i)
		}
		return strings.Join(ids, ",")
	}
	const bad = http.StatusBadRequest
	cases := []struct {
		query  string
		p      httpapi.Principal
		status int
		code   string
		field  string
	}{
		{"ad_ids=1", nobody, 401, httpapi.CodeUnauthenticated, "authorization"},
		{"ad_ids=1", ingest, 403, httpapi.CodePermissionDenied, "authorization"},
		{"", admin, bad, "invalid_argument", "ad_ids"},
		{"start_time=1", admin, bad, "invalid_argument", "ad_ids"},
		{"ad_ids=1&campaign_ids=c1", admin, bad, "invalid_argument", "campaign_ids"},
		{"campaign_ids=c1&advertiser_ids=a1", admin, bad, "invalid_argument", "advertiser_ids"},
		{"ad_ids=", admin, bad, "invalid_argument", "ad_ids"},
		{"ad_ids=1,,2", admin, bad, "invalid_argument", "ad_ids"},
		{"ad_ids=1,", admin, bad, "invalid_argument", "ad_ids"},
		{"ad_ids=a%20b", admin, bad, "invalid_argument", "ad_ids"},
		{"ad_ids=a/b", admin, bad, "invalid_argument", "ad_ids"},
		{"campaign_ids=" + long, admin, bad, "invalid_argument", "campaign_ids"},
		{"advertiser_ids=%C3%A9", admin, bad, "invalid_argument", "advertiser_ids"},
		{"ad_ids=" + many(1001), admin, bad, "invalid_argument", "ad_ids"},
		{"ad_ids=" + many(600) + "&ad_ids=" + many(401), admin, bad, "invalid_argument", "ad_ids"},
		{"ad_ids=1&start_time=yesterday", admin, bad, "invalid_argument", "start_time"},
		{"ad_ids=1&end_time=2026-13-01T00:00:00Z", admin, bad, "invalid_argument", "end_time"},
		{"ad_ids=1&start_time=", admin, bad, "invalid_argument", "start_time"},
		{"ad_ids=1&start_time=-5", admin, bad, "invalid_argument", "start_time"},
		{"ad_ids=1&start_time=1969-12-31T00:00:00Z&end_time=1970-01-02T00:00:00Z", admin, bad, "invalid_argument", "start_time"},
		{"ad_ids=1&start_time=2026-11-21T10:00:00Z&end_time=2026-11-21T10:00:00Z", admin, bad, "invalid_argument", "start_time"},
		{"ad_ids=1&start_time=2026-11-21T11:00:00Z&end_time=2026-11-21T10:00:00Z", admin, bad, "invalid_argument", "start_time"},
		{"ad_ids=1&start_time=2026-11-21T10:00:00Z&start_time=2026-11-21T10:00:00Z", admin, bad, "invalid_argument", "start_time"},
		{"ad_ids=1&interval=1m&interval=1m", admin, bad, "invalid_argument", "interval"},
		{"ad_ids=1&start_time=2026-11-01T00:00:00Z&end_time=2026-11-08T00:00:00Z", admin, bad, "invalid_argument", "interval"},
		{"ad_ids=1&start_time=2026-11-01T00:00:00Z&end_time=2026-11-07T22:41:00Z", admin, bad, "invalid_argument", "interval"},
		{"ad_ids=1&start_time=0&end_time=" + strconv.Itoa(1<<40), admin, bad, "invalid_argument", "interval"},
		{"ad_ids=1&interval=1d&tz=Mars/Olympus_Mons", admin, bad, "invalid_argument", "tz"},
		{"ad_ids=1&interval=1d&tz=Local", admin, bad, "invalid_argument", "tz"},
		{"ad_ids=1&interval=1d&tz=../../etc/passwd", admin, bad, "invalid_argument", "tz"},
		{"ad_ids=1&interval=1d&tz=/etc/localtime", admin, bad, "invalid_argument", "tz"},
		{"ad_ids=1&interval=1d&tz=", admin, bad, "invalid_argument", "tz"},
		{"ad_ids=1&interval=1h&tz=Asia/Kolkata", admin, bad, "invalid_argument", "tz"},
		{"ad_ids=1&interval=1d&tz=UTC&tz=UTC", admin, bad, "invalid_argument", "tz"},
		// Tenancy: another advertiser's or an unknown object is 404, naming it.
		{"ad_ids=1,7", adv1, 404, httpapi.CodeNotFound, "ad_ids"},
		{"ad_ids=404", adv1, 404, httpapi.CodeNotFound, "ad_ids"},
		{"campaign_ids=c3", adv1, 404, httpapi.CodeNotFound, "campaign_ids"},
		{"campaign_ids=c1", adv2, 404, httpapi.CodeNotFound, "campaign_ids"},
		{"advertiser_ids=a2", adv1, 404, httpapi.CodeNotFound, "advertiser_ids"},
		{"advertiser_ids=a1,a1,a2", adv1, 404, httpapi.CodeNotFound, "advertiser_ids"},
		// Parameters are checked before ownership.
		{"ad_ids=7&interval=0m", adv1, bad, "invalid_argument", "interval"},
	}
	for _, iv := range []string{"0m", "0h", "-5m", "1.5h", "abc", "", "5", "m", "1w", "90s", "1h30m", "+5m", " 5m", "5M", "5mm", "1e3m", "0x10m", "99999999999m", "3661d", "١m"} {
		cases = append(cases, struct {
			query  string
			p      httpapi.Principal
			status int
			code   string
			field  string
		}{"ad_ids=1&interval=" + url.QueryEscape(iv), admin, bad, "invalid_argument", "interval"})
	}
	for _, c := range cases {
		e.wantError("/metrics?"+c.query, c.p, c.status, c.code, c.field)
	}
	// Admin may name anything; an advertiser its own objects.
	for _, c := range []struct {
		query string
		p     httpapi.Principal
	}{
		{"ad_ids=1,2,3", adv1}, {"campaign_ids=c1,c2", adv1}, {"advertiser_ids=a1", adv1},
		{"ad_ids=7,9", adv2}, {"ad_ids=7,404", admin}, {"campaign_ids=nope", admin},
		{"ad_ids=" + many(1000), admin}, {"ad_ids=" + many(500) + "&ad_ids=" + many(500), admin},
		{"ad_ids=1&interval=3660d", admin},
	} {
		if code, body := e.get("/metrics?"+c.query, c.p); code != 200 {
			t.Errorf("%s as %+v: %d %s", c.query, c.p, code, body)
		}
	}
}

func TestMetricsStoreErrors(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		err    error
		status int
		code   string
		field  string
	}{
		{fmt.Errorf("%w: 1m buckets are kept for 336h0m0s", metricstore.ErrExpired), 400, "invalid_argument", "start_time"},
		{fmt.Errorf("%w: start before 1970", metricstore.ErrInvalidQuery), 400, "invalid_argument", "start_time"},
		{metricstore.ErrClosed, 503, "unavailable", "metric store"},
		{errors.New("disk on fire"), 500, "internal", "internal error"},
	}
	for _, c := range cases {
		e.store.err = c.err
		e.wantError("/metrics?ad_ids=1", admin, c.status, c.code, c.field)
	}
	if s := e.h.Stats(); s.Rejected != 2 || s.Failed != 2 {
		t.Errorf("stats %+v", s)
	}
}

type topResp struct {
	StartTime string           `json:"start_time"`
	EndTime   string           `json:"end_time"`
	Metric    string           `json:"metric"`
	By        string           `json:"by"`
	Items     []map[string]any `json:"items"`
}

func (e *env) top(target string, p httpapi.Principal) (topResp, string) {
	e.t.Helper()
	code, body := e.get(target, p)
	if code != 200 {
		e.t.Fatalf("GET %s: %d %s", target, code, body)
	}
	var r topResp
	dec := json.NewDecoder(strings.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&r); err != nil {
		e.t.Fatal(err)
	}
	if r.Items == nil {
		e.t.Errorf("GET %s: items is not a list: %s", target, body)
	}
	return r, body
}

// itemsString renders items as "id:value,..." with the given keys.
func itemsString(t *testing.T, r topResp, key, metric string) string {
	var parts []string
	for _, it := range r.Items {
		if len(it) != 2 {
			t.Errorf("item %v has other keys than %s, %s", it, key, metric)
		}
		parts = append(parts, fmt.Sprintf("%v:%v", it[key], it[metric]))
	}
	return strings.Join(parts, ",")
}

func topEnv(t testing.TB) *env {
	e := newEnv(t)
	now := testNow
	// Within the default 5 minutes (10:58-11:03): 7 leads, 1 and 3 tie (ids ascending), 2
	// has only impressions, 9 nets to zero.
	e.event("7", now.Add(-10*time.Second), metricstore.Counts{Clicks: 120, Impressions: 1000, SpendMicros: 60_000_000})
	e.event("3", now.Add(-2*time.Minute), metricstore.Counts{Clicks: 95, Impressions: 10, SpendMicros: 1})
	e.event("1", now.Add(-4*time.Minute), metricstore.Counts{Clicks: 95, Impressions: 5})
	e.event("2", now.Add(-3*time.Minute), metricstore.Counts{Impressions: 3000})
	e.event("9", now.Add(-1*time.Minute), metricstore.Counts{Clicks: 4})
	e.event("9", now.Add(-1*time.Minute), metricstore.Counts{Clicks: -4})
	// Older: an hour ago, and a day ago (late events land in old buckets too).
	e.event("9", now.Add(-70*time.Minute), metricstore.Counts{Clicks: 500})
	e.event("2", now.Add(-1439*time.Minute), metricstore.Counts{Clicks: 1000})
	return e
}

func TestTop(t *testing.T) {
	e := topEnv(t)
	cases := []struct {
		query      string
		p          httpapi.Principal
		start, end string
		metric, by string
		items      string
	}{
		{"", admin, "2026-11-21T10:58:00Z", "2026-11-21T11:03:00Z", "clicks", "ad", "7:120,1:95,3:95"},
		{"n=2", admin, "2026-11-21T10:58:00Z", "2026-11-21T11:03:00Z", "clicks", "ad", "7:120,1:95"},
		{"n=1000&minutes=1", admin, "2026-11-21T11:02:00Z", "2026-11-21T11:03:00Z", "clicks", "ad", "7:120"},
		{"minutes=3", admin, "2026-11-21T11:00:00Z", "2026-11-21T11:03:00Z", "clicks", "ad", "7:120,3:95"},
		{"minutes=1440", admin, "2026-11-20T11:03:00Z", "2026-11-21T11:03:00Z", "clicks", "ad", "2:1000,9:500,7:120,1:95,3:95"},
		{"minutes=71", admin, "2026-11-21T09:52:00Z", "2026-11-21T11:03:00Z", "clicks", "ad", "9:500,7:120,1:95,3:95"},
		{"metric=impressions", admin, "2026-11-21T10:58:00Z", "2026-11-21T11:03:00Z", "impressions", "ad", "2:3000,7:1000,3:10,1:5"},
		{"metric=spend_micros", admin, "2026-11-21T10:58:00Z", "2026-11-21T11:03:00Z", "spend_micros", "ad", "7:60000000,3:1"},
		{"by=campaign", admin, "2026-11-21T10:58:00Z", "2026-11-21T11:03:00Z", "clicks", "campaign", "c3:120,c1:95,c2:95"},
		{"by=advertiser", admin, "2026-11-21T10:58:00Z", "2026-11-21T11:03:00Z", "clicks", "advertiser", "a1:190,a2:120"},
		{"campaign_id=c1", admin, "2026-11-21T10:58:00Z", "2026-11-21T11:03:00Z", "clicks", "ad", "1:95"},
		{"advertiser_id=a1&minutes=1440", admin, "2026-11-20T11:03:00Z", "2026-11-21T11:03:00Z", "clicks", "ad", "2:1000,1:95,3:95"},
		{"advertiser_id=a1&campaign_id=c3", admin, "2026-11-21T10:58:00Z", "2026-11-21T11:03:00Z", "clicks", "ad", ""},
		{"campaign_id=nope", admin, "2026-11-21T10:58:00Z", "2026-11-21T11:03:00Z", "clicks", "ad", ""},
		{"by=advertiser&campaign_id=c3", admin, "2026-11-21T10:58:00Z", "2026-11-21T11:03:00Z", "clicks", "advertiser", "a2:120"},
		{"by=campaign&advertiser_id=a1", admin, "2026-11-21T10:58:00Z", "2026-11-21T11:03:00Z", "clicks", "campaign", "c1:95,c2:95"},
		{"start_time=2026-11-21T09:50:00Z&end_time=2026-11-21T09:55:00Z", admin, "2026-11-21T09:50:00Z", "2026-11-21T09:55:00Z", "clicks", "ad", "9:500"},
		{"start_time=2026-11-21T09:50:30Z&end_time=2026-11-21T09:54:01Z", admin, "2026-11-21T09:50:00Z", "2026-11-21T09:55:00Z", "clicks", "ad", "9:500"},
		{"start_time=2026-11-21T11:00:00Z", admin, "2026-11-21T11:00:00Z", "2026-11-21T11:03:00Z", "clicks", "ad", "7:120,3:95"},
		{"end_time=2026-11-21T09:55:00Z", admin, "2026-11-21T09:50:00Z", "2026-11-21T09:55:00Z", "clicks", "ad", "9:500"},
		{"start_time=1795258920&end_time=1795259100", admin, "2026-11-21T11:02:00Z", "2026-11-21T11:05:00Z", "clicks", "ad", "7:120"},
		// Advertiser keys see only their own objects, implicitly.
		{"", adv1, "2026-11-21T10:58:00Z", "2026-11-21T11:03:00Z", "clicks", "ad", "1:95,3:95"},
		{"", adv2, "2026-11-21T10:58:00Z", "2026-11-21T11:03:00Z", "clicks", "ad", "7:120"},
		{"by=campaign", adv1, "2026-11-21T10:58:00Z", "2026-11-21T11:03:00Z", "clicks", "campaign", "c1:95,c2:95"},
		{"by=advertiser&minutes=1440", adv1, "2026-11-20T11:03:00Z", "2026-11-21T11:03:00Z", "clicks", "advertiser", "a1:1190"},
		{"campaign_id=c2", adv1, "2026-11-21T10:58:00Z", "2026-11-21T11:03:00Z", "clicks", "ad", "3:95"},
		{"advertiser_id=a1&metric=impressions", adv1, "2026-11-21T10:58:00Z", "2026-11-21T11:03:00Z", "impressions", "ad", "2:3000,3:10,1:5"},
	}
	for _, c := range cases {
		r, body := e.top("/metrics/top?"+c.query, c.p)
		key := seriesKey(map[string]metricstore.Level{"ad": 1, "campaign": 2, "advertiser": 3}[c.by])
		if r.StartTime != c.start || r.EndTime != c.end || r.Metric != c.metric || r.By != c.by {
			t.Errorf("%s: %s", c.query, body)
		}
		if got := itemsString(t, r, key, c.metric); got != c.items {
			t.Errorf("%s as %+v: items %s, want %s", c.query, c.p, got, c.items)
		}
	}
	// The exact shape of the contract's example.
	_, body := e.get("/metrics/top?n=2", admin)
	want := `{"start_time":"2026-11-21T10:58:00Z","end_time":"2026-11-21T11:03:00Z","metric":"clicks","by":"ad","items":[{"ad_id":"7","clicks":120},{"ad_id":"1","clicks":95}]}` + "\n"
	if body != want {
		t.Errorf("got %s want %s", body, want)
	}
	_, body = e.get("/metrics/top?campaign_id=nope", admin)
	if !strings.Contains(body, `"items":[]`) {
		t.Errorf("empty items: %s", body)
	}
}

func TestTopErrors(t *testing.T) {
	e := topEnv(t)
	const bad = http.StatusBadRequest
	cases := []struct {
		query  string
		p      httpapi.Principal
		status int
		code   string
		field  string
	}{
		{"", nobody, 401, httpapi.CodeUnauthenticated, "authorization"},
		{"", ingest, 403, httpapi.CodePermissionDenied, "authorization"},
		{"n=0", admin, bad, "invalid_argument", "n"},
		{"n=1001", admin, bad, "invalid_argument", "n"},
		{"n=-1", admin, bad, "invalid_argument", "n"},
		{"n=%2B5", admin, bad, "invalid_argument", "n"},
		{"n=1.5", admin, bad, "invalid_argument", "n"},
		{"n=", admin, bad, "invalid_argument", "n"},
		{"n=ten", admin, bad, "invalid_argument", "n"},
		{"n=5&n=6", admin, bad, "invalid_argument", "n"},
		{"n=99999999999999999999", admin, bad, "invalid_argument", "n"},
		{"metric=orders", admin, bad, "invalid_argument", "metric"},
		{"metric=", admin, bad, "invalid_argument", "metric"},
		{"metric=Clicks", admin, bad, "invalid_argument", "metric"},
		{"by=ads", admin, bad, "invalid_argument", "by"},
		{"by=", admin, bad, "invalid_argument", "by"},
		{"minutes=0", admin, bad, "invalid_argument", "minutes"},
		{"minutes=1441", admin, bad, "invalid_argument", "minutes"},
		{"minutes=-5", admin, bad, "invalid_argument", "minutes"},
		{"minutes=5m", admin, bad, "invalid_argument", "minutes"},
		{"minutes=", admin, bad, "invalid_argument", "minutes"},
		{"minutes=5&start_time=2026-11-21T11:00:00Z", admin, bad, "invalid_argument", "minutes"},
		{"minutes=5&end_time=2026-11-21T11:00:00Z", admin, bad, "invalid_argument", "minutes"},
		{"start_time=junk", admin, bad, "invalid_argument", "start_time"},
		{"end_time=junk", admin, bad, "invalid_argument", "end_time"},
		{"start_time=2026-11-20T11:02:00Z", admin, bad, "invalid_argument", "start_time"},
		{"start_time=2026-11-21T11:00:00Z&end_time=2026-11-21T11:00:00Z", admin, bad, "invalid_argument", "start_time"},
		{"start_time=2026-11-21T11:00:00Z&end_time=2026-11-21T10:00:00Z", admin, bad, "invalid_argument", "start_time"},
		{"start_time=2026-11-21T11:04:00Z&end_time=2026-11-21T11:10:00Z", admin, bad, "invalid_argument", "start_time"},
		{"start_time=2026-11-21T10:00:00Z&end_time=2026-11-22T10:01:00Z", admin, bad, "invalid_argument", "end_time"},
		{"campaign_id=a%20b", admin, bad, "invalid_argument", "campaign_id"},
		{"advertiser_id=", admin, bad, "invalid_argument", "advertiser_id"},
		{"campaign_id=c1&campaign_id=c2", admin, bad, "invalid_argument", "campaign_id"},
		// Tenancy: naming another advertiser's (or an unknown) campaign or advertiser is 404.
		{"advertiser_id=a2", adv1, 404, httpapi.CodeNotFound, "advertiser_id"},
		{"advertiser_id=nope", adv1, 404, httpapi.CodeNotFound, "advertiser_id"},
		{"campaign_id=c3", adv1, 404, httpapi.CodeNotFound, "campaign_id"},
		{"campaign_id=c1", adv2, 404, httpapi.CodeNotFound, "campaign_id"},
		{"campaign_id=nope", adv1, 404, httpapi.CodeNotFound, "campaign_id"},
		{"by=advertiser&advertiser_id=a2", adv1, 404, httpapi.CodeNotFound, "advertiser_id"},
		{"n=0&advertiser_id=a2", adv1, bad, "invalid_argument", "n"},
	}
	for _, c := range cases {
		e.wantError("/metrics/top?"+c.query, c.p, c.status, c.code, c.field)
	}
	// No index: 503.
	h, err := New(Options{Store: e.store, Owners: e.owners, Now: func() time.Time { return testNow }})
	if err != nil {
		t.Fatal(err)
	}
	e.mux = http.NewServeMux()
	h.Register(e.mux)
	e.wantError("/metrics/top", admin, 503, httpapi.CodeUnavailable, "top-N")
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Options{Owners: &fakeOwners{}}); err == nil {
		t.Error("no store accepted")
	}
	if _, err := New(Options{Store: newFakeStore()}); err == nil {
		t.Error("no owners accepted")
	}
}

func TestMetricsTotalPointsCap(t *testing.T) {
	now := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = fmt.Sprint("ad", i)
	}
	cases := []struct {
		ids        []string
		start, end string
		interval   string
		ok         bool
	}{
		{ids[:10], "2026-11-14T08:00:00Z", "2026-11-21T00:00:00Z", "1m", true},            // 10 x 9600
		{ids[:11], "2026-11-14T08:00:00Z", "2026-11-21T00:00:00Z", "1m", false},           // 11 x 9600
		{ids[:69], "2026-11-20T00:00:00Z", "2026-11-21T00:00:00Z", "1m", true},            // 69 x 1440
		{ids[:70], "2026-11-20T00:00:00Z", "2026-11-21T00:00:00Z", "1m", false},           // 70 x 1440
		{ids, "2026-11-20T00:00:00Z", "2026-11-21T00:00:00Z", "15m", true},                // 1000 x 96
		{ids, "2026-11-20T00:00:00Z", "2026-11-21T00:00:00Z", "10m", false},               // 1000 x 144
		{ids[:100], "2026-11-20T10:00:00Z", "2026-11-21T02:40:00Z", "1m", true},           // 100 x 1000
		{repeat("ad1", 1000), "2026-11-14T08:00:00Z", "2026-11-21T00:00:00Z", "1m", true}, // 1 x 9600
	}
	for _, c := range cases {
		v := url.Values{"ad_ids": {strings.Join(c.ids, ",")}, "start_time": {c.start}, "end_time": {c.end}, "interval": {c.interval}}
		p, err := parseMetricsParams(v, now, time.LoadLocation)
		what := fmt.Sprintf("%d ids %s..%s at %s", len(c.ids), c.start, c.end, c.interval)
		if !c.ok {
			var ae *httpapi.Error
			if !errors.As(err, &ae) || ae.Code != httpapi.CodeInvalidArgument || !strings.Contains(ae.Message, "at most 100000 in one response") {
				t.Errorf("%s: %v, want invalid_argument naming the limit of 100000 points", what, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", what, err)
			continue
		}
		if total := p.points * len(p.ids); total > MaxTotalPoints {
			t.Errorf("%s: accepted %d points", what, total)
		}
	}
}

func repeat(id string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = id
	}
	return out
}

// TestParseIDsDedup: each id once, in the order it first appears; the limit counts ids as
// given.
func TestParseIDsDedup(t *testing.T) {
	for _, c := range []struct {
		vs   []string
		want string
	}{
		{[]string{"1"}, "1"},
		{[]string{"3,1,3"}, "3,1"},
		{[]string{"b,a", "a,c,b", "c"}, "b,a,c"},
		{repeat("x", 1000), "x"},
		{[]string{strings.Join(repeat("x", 1000), ",")}, "x"},
	} {
		ids, err := parseIDs("ad_ids", c.vs)
		if err != nil || strings.Join(ids, ",") != c.want {
			t.Errorf("%.40q: %v %v, want %s", c.vs, ids, err, c.want)
		}
	}
	if _, err := parseIDs("ad_ids", repeat("x", 1001)); err == nil {
		t.Error("1001 ids as given (one distinct) accepted")
	}
}

// chunkStore records the ids of each query and can fail the query numbered failAt (from 0).
type chunkStore struct {
	*fakeStore
	failAt int
	calls  int
}

func (s *chunkStore) Query(ctx context.Context, q metricstore.Query) (*metricstore.Result, error) {
	n := s.calls
	s.calls++
	if n == s.failAt {
		return nil, errors.New("disk on fire")
	}
	return s.fakeStore.Query(ctx, q)
}

// TestMetricsChunkedReads: a response bigger than ChunkPoints is read from the store in chunks
// of whole series (so what a request holds is bounded), and the stitched response is the same
// as one read; a store failure after the first chunk cuts the response instead of ending it
// early as if complete.
func TestMetricsChunkedReads(t *testing.T) {
	e := newEnv(t)
	ids := make([]string, 40)
	for i := range ids {
		ids[i] = fmt.Sprint("ad", i)
		e.event(ids[i], t0("2026-11-21T09:00:00Z").Add(time.Duration(i)*time.Minute), metricstore.Counts{Clicks: int64(i + 1)})
	}
	// 40 ids x 1440 points: 6 ids (8640 points) per read, 7 reads.
	target := "/metrics?ad_ids=" + strings.Join(ids, ",") + "&start_time=2026-11-20T11:00:00Z&end_time=2026-11-21T11:00:00Z&interval=1m"
	cs := &chunkStore{fakeStore: e.store, failAt: -1}
	h, err := New(Options{Store: cs, Owners: e.owners, Now: func() time.Time { return testNow }})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	h.Register(mux)
	r := httptest.NewRequest("GET", target, nil)
	r = r.WithContext(httpapi.WithPrincipal(r.Context(), admin))
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, r)
	if w.Code != 200 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	if cs.calls != 7 {
		t.Errorf("%d store reads, want 7", cs.calls)
	}
	for _, q := range e.store.queries {
		if n := len(q.IDs) * 1440; n > ChunkPoints {
			t.Errorf("a store read of %d points", n)
		}
	}
	var got seriesResp
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Series) != len(ids) {
		t.Fatalf("%d series", len(got.Series))
	}
	for i, s := range got.Series {
		pts := s["points"].([]any)
		var clicks float64
		for _, p := range pts {
			clicks += p.(map[string]any)["clicks"].(float64)
		}
		if s["ad_id"] != ids[i] || len(pts) != 1440 || clicks != float64(i+1) {
			t.Errorf("series %d: %v, %d points, %v clicks", i, s["ad_id"], len(pts), clicks)
		}
	}

	// A failure of the third read: the client sees a broken response, not valid JSON.
	cs.calls, cs.failAt = 0, 2
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mux.ServeHTTP(w, r.WithContext(httpapi.WithPrincipal(r.Context(), admin)))
	}))
	defer srv.Close()
	resp, err := http.Get(srv.URL + target)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Errorf("store failure mid-response: read %d bytes without an error (valid JSON: %v)", len(body), json.Valid(body))
	}
	if st := h.Stats(); st.Failed != 1 {
		t.Errorf("stats %+v, want one failure", st)
	}
}

// TestMetricsStalledReaderIsCut: a client that stops reading a large response is cut off once
// a piece of it could not be written for WriteIdle, and the handler returns.
func TestMetricsStalledReaderIsCut(t *testing.T) {
	e := newEnv(t)
	done := make(chan struct{}, 1)
	h, err := New(Options{Store: e.store, Owners: e.owners, Now: func() time.Time { return testNow }, WriteIdle: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	h.Register(mux)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() { done <- struct{}{} }()
		mux.ServeHTTP(w, r.WithContext(httpapi.WithPrincipal(r.Context(), admin)))
	}))
	defer srv.Close()
	ids := make([]string, 69)
	for i := range ids {
		ids[i] = fmt.Sprint("ad", i)
	}
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A small receive buffer: the kernel must not take the whole response off the server.
	if err := conn.(*net.TCPConn).SetReadBuffer(4096); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "GET /metrics?ad_ids=%s&start_time=2026-11-20T11:00:00Z&end_time=2026-11-21T11:00:00Z HTTP/1.1\r\nHost: x\r\n\r\n", strings.Join(ids, ","))
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the handler still writes to a client that has read nothing for 10s")
	}
	if st := h.Stats(); st.MetricsRequests != 0 {
		t.Errorf("a cut response counted as answered: %+v", st)
	}
}
