package catalog

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/httpapi"
)

// env is a catalog behind its HTTP handlers and auth middleware, seeded with two advertisers
// (a1 in Asia/Kolkata, a2 in UTC), one campaign and one ad each, and keys.
type env struct {
	t       *testing.T
	c       *Catalog
	clock   *testClock
	h       http.Handler
	advKey1 string // advertiser a1
	advKey2 string // advertiser a2
	ingKey  string
}

func newEnv(t *testing.T, o HandlerOptions) *env {
	t.Helper()
	clock := &testClock{t: testNow}
	c := openAt(t, filepath.Join(t.TempDir(), "catalog.db"), clock)
	mux := http.NewServeMux()
	NewHandler(c, o).Register(mux)
	e := &env{t: t, c: c, clock: clock, h: c.Middleware(mux)}
	e.must("PUT", "/api/v1/advertisers/a1", `{"name":"Acme","timezone":"Asia/Kolkata"}`)
	e.must("PUT", "/api/v1/advertisers/a2", `{"name":"Other","timezone":"UTC"}`)
	e.must("PUT", "/api/v1/campaigns/c1", `{"advertiser_id":"a1","name":"Diwali","status":"active","cpc_bid_micros":500000,"daily_budget_micros":10000000,"total_budget_micros":0}`)
	e.must("PUT", "/api/v1/campaigns/c2", `{"advertiser_id":"a2","name":"Other","cpc_bid_micros":1000}`)
	e.must("PUT", "/api/v1/ads/ad1", `{"campaign_id":"c1","landing_url":"https://shop.example/p/9","catalog_id":"cat7"}`)
	e.must("PUT", "/api/v1/ads/ad2", `{"campaign_id":"c2","landing_url":"https://other.example/"}`)
	e.advKey1 = e.key("/api/v1/advertisers/a1/keys")
	e.advKey2 = e.key("/api/v1/advertisers/a2/keys")
	e.ingKey = e.key("/api/v1/ingest-keys")
	return e
}

type resp struct {
	status int
	body   string
	header http.Header
}

func (r resp) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(r.body), &m); err != nil {
		t.Fatalf("response %q: %v", r.body, err)
	}
	return m
}

func (e *env) do(method, path, key, body string) resp {
	e.t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, req)
	return resp{status: w.Code, body: w.Body.String(), header: w.Header()}
}

func (e *env) must(method, path, body string) resp {
	e.t.Helper()
	r := e.do(method, path, testAdminKey, body)
	if r.status != http.StatusOK {
		e.t.Fatalf("%s %s: %d %s", method, path, r.status, r.body)
	}
	return r
}

func (e *env) key(path string) string {
	e.t.Helper()
	var k keyJSON
	if err := json.Unmarshal([]byte(e.must("POST", path, "").body), &k); err != nil {
		e.t.Fatal(err)
	}
	return k.Key
}

// TestHTTPErrors runs every error case against the seeded catalog: status, code, and the field
// the message names.
func TestHTTPErrors(t *testing.T) {
	e := newEnv(t, HandlerOptions{})
	const admin = testAdminKey
	adv := `{"name":"Acme","timezone":"UTC"}`
	camp := func(fields string) string {
		return `{"advertiser_id":"a1","name":"C","cpc_bid_micros":1` + fields + `}`
	}
	ad := func(url string) string { return `{"campaign_id":"c1","landing_url":` + url + `}` }
	long := strings.Repeat("x", 65)
	cases := []struct {
		name, method, path, key, body string
		status                        int
		code, field                   string // field: the message starts with "field: "
	}{
		// Authentication and authorization.
		{"put advertiser no key", "PUT", "/api/v1/advertisers/a9", "", adv, 401, "unauthenticated", "authorization"},
		{"put advertiser unknown key", "PUT", "/api/v1/advertisers/a9", "nope", adv, 401, "unauthenticated", "authorization"},
		{"put advertiser advertiser key", "PUT", "/api/v1/advertisers/a1", "ADV1", adv, 403, "permission_denied", "authorization"},
		{"put advertiser ingest key", "PUT", "/api/v1/advertisers/a9", "ING", adv, 403, "permission_denied", "authorization"},
		{"put campaign advertiser key", "PUT", "/api/v1/campaigns/c1", "ADV1", camp(""), 403, "permission_denied", "authorization"},
		{"put campaign no key", "PUT", "/api/v1/campaigns/c1", "", camp(""), 401, "unauthenticated", "authorization"},
		{"put ad advertiser key", "PUT", "/api/v1/ads/ad1", "ADV1", ad(`"https://x.example/"`), 403, "permission_denied", "authorization"},
		{"put ad no key", "PUT", "/api/v1/ads/ad1", "", ad(`"https://x.example/"`), 401, "unauthenticated", "authorization"},
		{"bulk advertiser key", "POST", "/api/v1/bulk/ads", "ADV1", "", 403, "permission_denied", "authorization"},
		{"bulk no key", "POST", "/api/v1/bulk/ads", "", "", 401, "unauthenticated", "authorization"},
		{"advertiser key by advertiser", "POST", "/api/v1/advertisers/a1/keys", "ADV1", "", 403, "permission_denied", "authorization"},
		{"advertiser key no key", "POST", "/api/v1/advertisers/a1/keys", "", "", 401, "unauthenticated", "authorization"},
		{"ingest key by ingest key", "POST", "/api/v1/ingest-keys", "ING", "", 403, "permission_denied", "authorization"},
		{"ingest key no key", "POST", "/api/v1/ingest-keys", "", "", 401, "unauthenticated", "authorization"},
		{"get advertiser no key", "GET", "/api/v1/advertisers/a1", "", "", 401, "unauthenticated", "authorization"},
		{"get campaign no key", "GET", "/api/v1/campaigns/c1", "", "", 401, "unauthenticated", "authorization"},
		{"get ad no key", "GET", "/api/v1/ads/ad1", "", "", 401, "unauthenticated", "authorization"},
		{"get ad ingest key", "GET", "/api/v1/ads/ad1", "ING", "", 403, "permission_denied", "authorization"},
		{"get advertiser ingest key", "GET", "/api/v1/advertisers/a1", "ING", "", 403, "permission_denied", "authorization"},
		{"get other advertiser", "GET", "/api/v1/advertisers/a2", "ADV1", "", 404, "not_found", "id"},
		{"get other campaign", "GET", "/api/v1/campaigns/c2", "ADV1", "", 404, "not_found", "id"},
		{"get other ad", "GET", "/api/v1/ads/ad2", "ADV1", "", 404, "not_found", "id"},
		{"get missing advertiser", "GET", "/api/v1/advertisers/zz", admin, "", 404, "not_found", "id"},
		{"get missing campaign", "GET", "/api/v1/campaigns/zz", admin, "", 404, "not_found", "id"},
		{"get missing ad", "GET", "/api/v1/ads/zz", admin, "", 404, "not_found", "id"},

		// Path ids.
		{"put advertiser bad id", "PUT", "/api/v1/advertisers/a$b", admin, adv, 400, "invalid_argument", "id"},
		{"put advertiser long id", "PUT", "/api/v1/advertisers/" + long, admin, adv, 400, "invalid_argument", "id"},
		{"put advertiser escaped id", "PUT", "/api/v1/advertisers/a%20b", admin, adv, 400, "invalid_argument", "id"},
		{"get advertiser bad id", "GET", "/api/v1/advertisers/a$b", admin, "", 400, "invalid_argument", "id"},
		{"put campaign bad id", "PUT", "/api/v1/campaigns/c$", admin, camp(""), 400, "invalid_argument", "id"},
		{"get campaign bad id", "GET", "/api/v1/campaigns/" + long, "ADV1", "", 400, "invalid_argument", "id"},
		{"put ad bad id", "PUT", "/api/v1/ads/a+d", admin, ad(`"https://x.example/"`), 400, "invalid_argument", "id"},
		{"get ad bad id", "GET", "/api/v1/ads/a+d", admin, "", 400, "invalid_argument", "id"},
		{"advertiser key bad id", "POST", "/api/v1/advertisers/a$/keys", admin, "", 400, "invalid_argument", "id"},
		{"advertiser key missing advertiser", "POST", "/api/v1/advertisers/zz/keys", admin, "", 404, "not_found", "id"},

		// Bodies.
		{"bad JSON", "PUT", "/api/v1/advertisers/a9", admin, `{"name":`, 400, "invalid_argument", "body"},
		{"JSON syntax", "PUT", "/api/v1/advertisers/a9", admin, `{"name" "x"}`, 400, "invalid_argument", "body"},
		{"empty body", "PUT", "/api/v1/advertisers/a9", admin, ``, 400, "invalid_argument", "body"},
		{"array body", "PUT", "/api/v1/advertisers/a9", admin, `[]`, 400, "invalid_argument", "body"},
		{"trailing data", "PUT", "/api/v1/advertisers/a9", admin, adv + `{}`, 400, "invalid_argument", "body"},
		{"unknown field", "PUT", "/api/v1/advertisers/a9", admin, `{"name":"A","colour":"red"}`, 400, "invalid_argument", "colour"},
		{"read-only field", "PUT", "/api/v1/advertisers/a9", admin, `{"name":"A","created_at":"2026-01-01T00:00:00Z"}`, 400, "invalid_argument", "created_at"},
		{"body id mismatch", "PUT", "/api/v1/advertisers/a9", admin, `{"id":"a8","name":"A"}`, 400, "invalid_argument", "id"},
		{"name wrong type", "PUT", "/api/v1/advertisers/a9", admin, `{"name":5}`, 400, "invalid_argument", "name"},
		{"name missing", "PUT", "/api/v1/advertisers/a9", admin, `{"timezone":"UTC"}`, 400, "invalid_argument", "name"},
		{"name too long", "PUT", "/api/v1/advertisers/a9", admin, `{"name":"` + strings.Repeat("é", 257) + `"}`, 400, "invalid_argument", "name"},
		{"name control char", "PUT", "/api/v1/advertisers/a9", admin, `{"name":"a\u0000b"}`, 400, "invalid_argument", "name"},
		{"bad timezone", "PUT", "/api/v1/advertisers/a9", admin, `{"name":"A","timezone":"Mars/Olympus_Mons"}`, 400, "invalid_argument", "timezone"},
		{"Local timezone", "PUT", "/api/v1/advertisers/a9", admin, `{"name":"A","timezone":"Local"}`, 400, "invalid_argument", "timezone"},
		{"click window too long", "PUT", "/api/v1/advertisers/a9", admin, `{"name":"A","attribution_click_window":"91d"}`, 400, "invalid_argument", "attribution_click_window"},
		{"click window negative", "PUT", "/api/v1/advertisers/a9", admin, `{"name":"A","attribution_click_window":"-1h"}`, 400, "invalid_argument", "attribution_click_window"},
		{"view window not a duration", "PUT", "/api/v1/advertisers/a9", admin, `{"name":"A","attribution_view_window":"a week"}`, 400, "invalid_argument", "attribution_view_window"},
		{"view window fraction of a second", "PUT", "/api/v1/advertisers/a9", admin, `{"name":"A","attribution_view_window":"1.5s"}`, 400, "invalid_argument", "attribution_view_window"},
		{"view window wrong type", "PUT", "/api/v1/advertisers/a9", admin, `{"name":"A","attribution_view_window":86400}`, 400, "invalid_argument", "attribution_view_window"},
		{"view window huge days", "PUT", "/api/v1/advertisers/a9", admin, `{"name":"A","attribution_view_window":"99999999999d"}`, 400, "invalid_argument", "attribution_view_window"},
		{"path timezone", "PUT", "/api/v1/advertisers/a9", admin, `{"name":"A","timezone":"../../etc/passwd"}`, 400, "invalid_argument", "timezone"},
		{"body too large", "PUT", "/api/v1/advertisers/a9", admin, `{"name":"` + strings.Repeat("x", 70<<10) + `"}`, 413, "payload_too_large", "body"},

		// Campaigns.
		{"missing advertiser", "PUT", "/api/v1/campaigns/c9", admin, `{"advertiser_id":"zz","name":"C","cpc_bid_micros":1}`, 400, "invalid_argument", "advertiser_id"},
		{"no advertiser", "PUT", "/api/v1/campaigns/c9", admin, `{"name":"C","cpc_bid_micros":1}`, 400, "invalid_argument", "advertiser_id"},
		{"bad advertiser id", "PUT", "/api/v1/campaigns/c9", admin, `{"advertiser_id":"a b","name":"C","cpc_bid_micros":1}`, 400, "invalid_argument", "advertiser_id"},
		{"change advertiser", "PUT", "/api/v1/campaigns/c1", admin, `{"advertiser_id":"a2","name":"C","cpc_bid_micros":1}`, 400, "invalid_argument", "advertiser_id"},
		{"negative bid", "PUT", "/api/v1/campaigns/c9", admin, `{"advertiser_id":"a1","name":"C","cpc_bid_micros":-1}`, 400, "invalid_argument", "cpc_bid_micros"},
		{"float bid", "PUT", "/api/v1/campaigns/c9", admin, `{"advertiser_id":"a1","name":"C","cpc_bid_micros":1.5}`, 400, "invalid_argument", "cpc_bid_micros"},
		{"integral float bid", "PUT", "/api/v1/campaigns/c9", admin, `{"advertiser_id":"a1","name":"C","cpc_bid_micros":500000.0}`, 400, "invalid_argument", "cpc_bid_micros"},
		{"exponent bid", "PUT", "/api/v1/campaigns/c9", admin, `{"advertiser_id":"a1","name":"C","cpc_bid_micros":5e5}`, 400, "invalid_argument", "cpc_bid_micros"},
		{"string bid", "PUT", "/api/v1/campaigns/c9", admin, `{"advertiser_id":"a1","name":"C","cpc_bid_micros":"500000"}`, 400, "invalid_argument", "cpc_bid_micros"},
		{"bool bid", "PUT", "/api/v1/campaigns/c9", admin, `{"advertiser_id":"a1","name":"C","cpc_bid_micros":true}`, 400, "invalid_argument", "cpc_bid_micros"},
		{"missing bid", "PUT", "/api/v1/campaigns/c9", admin, `{"advertiser_id":"a1","name":"C"}`, 400, "invalid_argument", "cpc_bid_micros"},
		{"null bid", "PUT", "/api/v1/campaigns/c9", admin, `{"advertiser_id":"a1","name":"C","cpc_bid_micros":null}`, 400, "invalid_argument", "cpc_bid_micros"},
		{"absurd bid", "PUT", "/api/v1/campaigns/c9", admin, camp(`,"daily_budget_micros":1000000000000001`), 400, "invalid_argument", "daily_budget_micros"},
		{"overflowing budget", "PUT", "/api/v1/campaigns/c9", admin, camp(`,"total_budget_micros":99999999999999999999999`), 400, "invalid_argument", "total_budget_micros"},
		{"negative overflowing budget", "PUT", "/api/v1/campaigns/c9", admin, camp(`,"total_budget_micros":-99999999999999999999999`), 400, "invalid_argument", "total_budget_micros"},
		{"negative daily budget", "PUT", "/api/v1/campaigns/c9", admin, camp(`,"daily_budget_micros":-5`), 400, "invalid_argument", "daily_budget_micros"},
		{"bad status", "PUT", "/api/v1/campaigns/c9", admin, camp(`,"status":"running"`), 400, "invalid_argument", "status"},
		{"status case", "PUT", "/api/v1/campaigns/c9", admin, camp(`,"status":"Active"`), 400, "invalid_argument", "status"},
		{"bad start time", "PUT", "/api/v1/campaigns/c9", admin, camp(`,"start_time":"yesterday"`), 400, "invalid_argument", "start_time"},
		{"float start time", "PUT", "/api/v1/campaigns/c9", admin, camp(`,"start_time":1.5`), 400, "invalid_argument", "start_time"},
		{"negative end time", "PUT", "/api/v1/campaigns/c9", admin, camp(`,"end_time":-5`), 400, "invalid_argument", "end_time"},
		{"object end time", "PUT", "/api/v1/campaigns/c9", admin, camp(`,"end_time":{}`), 400, "invalid_argument", "end_time"},
		{"end before start", "PUT", "/api/v1/campaigns/c9", admin, camp(`,"start_time":"2026-11-21T10:00:00Z","end_time":1763700000`), 400, "invalid_argument", "end_time"},
		{"campaign unknown field", "PUT", "/api/v1/campaigns/c9", admin, camp(`,"budget":5`), 400, "invalid_argument", "budget"},
		{"campaign name missing", "PUT", "/api/v1/campaigns/c9", admin, `{"advertiser_id":"a1","cpc_bid_micros":1}`, 400, "invalid_argument", "name"},

		// Ads.
		{"missing campaign", "PUT", "/api/v1/ads/ad9", admin, `{"campaign_id":"zz","landing_url":"https://x.example/"}`, 400, "invalid_argument", "campaign_id"},
		{"no campaign", "PUT", "/api/v1/ads/ad9", admin, `{"landing_url":"https://x.example/"}`, 400, "invalid_argument", "campaign_id"},
		{"move ad to other advertiser", "PUT", "/api/v1/ads/ad1", admin, `{"campaign_id":"c2","landing_url":"https://x.example/"}`, 400, "invalid_argument", "campaign_id"},
		{"no landing url", "PUT", "/api/v1/ads/ad9", admin, `{"campaign_id":"c1"}`, 400, "invalid_argument", "landing_url"},
		{"javascript url", "PUT", "/api/v1/ads/ad9", admin, ad(`"javascript:alert(1)"`), 400, "invalid_argument", "landing_url"},
		{"JavaScript url", "PUT", "/api/v1/ads/ad9", admin, ad(`"JaVaScRiPt:alert(1)"`), 400, "invalid_argument", "landing_url"},
		{"data url", "PUT", "/api/v1/ads/ad9", admin, ad(`"data:text/html,<script>alert(1)</script>"`), 400, "invalid_argument", "landing_url"},
		{"scheme-relative url", "PUT", "/api/v1/ads/ad9", admin, ad(`"//evil.com/x"`), 400, "invalid_argument", "landing_url"},
		{"path-relative url", "PUT", "/api/v1/ads/ad9", admin, ad(`"/p/9"`), 400, "invalid_argument", "landing_url"},
		{"relative url", "PUT", "/api/v1/ads/ad9", admin, ad(`"p/9"`), 400, "invalid_argument", "landing_url"},
		{"bare host", "PUT", "/api/v1/ads/ad9", admin, ad(`"evil.com"`), 400, "invalid_argument", "landing_url"},
		{"ftp url", "PUT", "/api/v1/ads/ad9", admin, ad(`"ftp://x.example/f"`), 400, "invalid_argument", "landing_url"},
		{"opaque http", "PUT", "/api/v1/ads/ad9", admin, ad(`"http:evil.com"`), 400, "invalid_argument", "landing_url"},
		{"userinfo url", "PUT", "/api/v1/ads/ad9", admin, ad(`"https://shop.example@evil.com/"`), 400, "invalid_argument", "landing_url"},
		{"no host", "PUT", "/api/v1/ads/ad9", admin, ad(`"https://"`), 400, "invalid_argument", "landing_url"},
		{"empty host", "PUT", "/api/v1/ads/ad9", admin, ad(`"https:///evil.com"`), 400, "invalid_argument", "landing_url"},
		{"port only", "PUT", "/api/v1/ads/ad9", admin, ad(`"https://:443/"`), 400, "invalid_argument", "landing_url"},
		{"backslash url", "PUT", "/api/v1/ads/ad9", admin, ad(`"https://shop.example\\@evil.com/"`), 400, "invalid_argument", "landing_url"},
		{"space url", "PUT", "/api/v1/ads/ad9", admin, ad(`"https://shop.example/a b"`), 400, "invalid_argument", "landing_url"},
		{"newline url", "PUT", "/api/v1/ads/ad9", admin, ad(`"https://shop.example/\r\nSet-Cookie: x"`), 400, "invalid_argument", "landing_url"},
		{"long url", "PUT", "/api/v1/ads/ad9", admin, ad(`"https://x.example/` + strings.Repeat("a", 2048) + `"`), 400, "invalid_argument", "landing_url"},
		{"url wrong type", "PUT", "/api/v1/ads/ad9", admin, ad(`5`), 400, "invalid_argument", "landing_url"},
		{"bad catalog id", "PUT", "/api/v1/ads/ad9", admin, `{"campaign_id":"c1","landing_url":"https://x.example/","catalog_id":"a b"}`, 400, "invalid_argument", "catalog_id"},
		{"empty catalog id", "PUT", "/api/v1/ads/ad9", admin, `{"campaign_id":"c1","landing_url":"https://x.example/","catalog_id":""}`, 400, "invalid_argument", "catalog_id"},
		{"negative ad bid", "PUT", "/api/v1/ads/ad9", admin, `{"campaign_id":"c1","landing_url":"https://x.example/","cpc_bid_micros":-1}`, 400, "invalid_argument", "cpc_bid_micros"},
		{"float ad bid", "PUT", "/api/v1/ads/ad9", admin, `{"campaign_id":"c1","landing_url":"https://x.example/","cpc_bid_micros":0.5}`, 400, "invalid_argument", "cpc_bid_micros"},
		{"ad unknown field", "PUT", "/api/v1/ads/ad9", admin, `{"campaign_id":"c1","landing_url":"https://x.example/","advertiser_id":"a1"}`, 400, "invalid_argument", "advertiser_id"},
	}
	keys := map[string]string{"ADV1": e.advKey1, "ING": e.ingKey}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := tc.key
			if k, ok := keys[key]; ok {
				key = k
			}
			r := e.do(tc.method, tc.path, key, tc.body)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d; body %s", r.status, tc.status, r.body)
			}
			var body struct {
				Error struct{ Code, Message string }
			}
			if err := json.Unmarshal([]byte(r.body), &body); err != nil {
				t.Fatalf("body %q: %v", r.body, err)
			}
			if body.Error.Code != tc.code || !strings.HasPrefix(body.Error.Message, tc.field+": ") {
				t.Fatalf("error %+v, want code %s naming %q", body.Error, tc.code, tc.field)
			}
		})
	}
	// None of the failed writes changed anything.
	if st := e.c.Stats(); st.Advertisers != 2 || st.Campaigns != 2 || st.Ads != 2 {
		t.Errorf("Stats after failed writes = %+v", st)
	}
	if info, _ := e.c.Ad("ad1"); info.CampaignID != "c1" || info.LandingURL != "https://shop.example/p/9" {
		t.Errorf("ad1 changed: %+v", info)
	}
}

// TestHTTPIsolation: with an advertiser key, another advertiser's objects answer exactly like
// missing ones, and its own objects are readable.
func TestHTTPIsolation(t *testing.T) {
	e := newEnv(t, HandlerOptions{})
	for _, kind := range []struct{ path, own, other string }{
		{"/api/v1/advertisers/", "a1", "a2"},
		{"/api/v1/campaigns/", "c1", "c2"},
		{"/api/v1/ads/", "ad1", "ad2"},
	} {
		other := e.do("GET", kind.path+kind.other, e.advKey1, "")
		missing := e.do("GET", kind.path+"missing", e.advKey1, "")
		if other.status != 404 || other.body != missing.body {
			t.Errorf("GET %s%s with a1's key: %d %s; missing: %d %s", kind.path, kind.other, other.status, other.body, missing.status, missing.body)
		}
		if r := e.do("GET", kind.path+kind.own, e.advKey1, ""); r.status != 200 {
			t.Errorf("GET own %s%s: %d %s", kind.path, kind.own, r.status, r.body)
		}
		if r := e.do("GET", kind.path+kind.other, e.advKey2, ""); r.status != 200 {
			t.Errorf("GET %s%s with its own key: %d %s", kind.path, kind.other, r.status, r.body)
		}
		if r := e.do("GET", kind.path+kind.other, testAdminKey, ""); r.status != 200 {
			t.Errorf("GET %s%s as admin: %d %s", kind.path, kind.other, r.status, r.body)
		}
	}
}

func TestHTTPAdvertiser(t *testing.T) {
	e := newEnv(t, HandlerOptions{})
	put := e.must("PUT", "/api/v1/advertisers/a3", `{"id":"a3","name":"Ünïcode Ltd","timezone":"America/New_York"}`)
	want := `{"id":"a3","name":"Ünïcode Ltd","timezone":"America/New_York","attribution_click_window":null,"attribution_view_window":null,"created_at":"2026-11-21T20:00:00Z","updated_at":"2026-11-21T20:00:00Z"}` + "\n"
	if put.body != want {
		t.Errorf("PUT body\n%s\nwant\n%s", put.body, want)
	}
	if get := e.must("GET", "/api/v1/advertisers/a3", ""); get.body != put.body {
		t.Errorf("GET body %s differs from PUT body %s", get.body, put.body)
	}
	if ct := put.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	// Omitted timezone is UTC.
	if m := e.must("PUT", "/api/v1/advertisers/a4", `{"name":"A4"}`).json(t); m["timezone"] != "UTC" {
		t.Errorf("default timezone %v", m["timezone"])
	}
}

// TestHTTPAdvertiserAttributionWindows: an advertiser's windows are set, read back, changed
// and unset through PUT, and every change is kept with its time, so that WindowsAt answers
// for any past time the windows then in force, also after the catalog is loaded again.
func TestHTTPAdvertiserAttributionWindows(t *testing.T) {
	e := newEnv(t, HandlerOptions{})
	t1 := testNow
	put := e.must("PUT", "/api/v1/advertisers/a3", `{"name":"A3","attribution_click_window":"14d","attribution_view_window":"36h"}`).json(t)
	if put["attribution_click_window"] != "14d" || put["attribution_view_window"] != "36h" {
		t.Fatalf("PUT: %v", put)
	}
	if get := e.must("GET", "/api/v1/advertisers/a3", "").json(t); get["attribution_click_window"] != "14d" || get["attribution_view_window"] != "36h" {
		t.Fatalf("GET: %v", get)
	}
	// The same windows again record nothing; a new view window is a change.
	t2 := t1.Add(time.Hour)
	e.clock.Set(t2)
	e.must("PUT", "/api/v1/advertisers/a3", `{"name":"A3 renamed","attribution_click_window":"14d","attribution_view_window":"36h"}`)
	t3 := t2.Add(time.Hour)
	e.clock.Set(t3)
	e.must("PUT", "/api/v1/advertisers/a3", `{"name":"A3","attribution_click_window":"14d","attribution_view_window":"0s"}`)
	// Omitted: back to the deployment's defaults (null).
	t4 := t3.Add(time.Hour)
	e.clock.Set(t4)
	if m := e.must("PUT", "/api/v1/advertisers/a3", `{"name":"A3"}`).json(t); m["attribution_click_window"] != nil || m["attribution_view_window"] != nil {
		t.Fatalf("unset: %v", m)
	}
	check := func(c *Catalog) {
		t.Helper()
		d := func(x *time.Duration) string {
			if x == nil {
				return "default"
			}
			return x.String()
		}
		for _, tc := range []struct {
			at          time.Time
			click, view string
		}{
			{t1.Add(-time.Microsecond), "default", "default"},
			{t1, "336h0m0s", "36h0m0s"},
			{t3.Add(-time.Microsecond), "336h0m0s", "36h0m0s"},
			{t3, "336h0m0s", "0s"},
			{t4, "default", "default"},
		} {
			click, view, ok := c.WindowsAt("a3", tc.at)
			if !ok || d(click) != tc.click || d(view) != tc.view {
				t.Errorf("WindowsAt(%v) = %s, %s, %v; want %s, %s", tc.at, d(click), d(view), ok, tc.click, tc.view)
			}
		}
		if info, _ := c.Advertiser("a3"); len(info.WindowChanges) != 3 {
			t.Errorf("%d changes recorded, want 3: %+v", len(info.WindowChanges), info.WindowChanges)
		}
	}
	check(e.c)
	if err := e.c.load(context.Background()); err != nil { // as a restarted process loads it
		t.Fatal(err)
	}
	check(e.c)
	if err := e.c.refreshAdvertisers(context.Background(), []string{"a3"}); err != nil { // as the change feed re-reads it
		t.Fatal(err)
	}
	check(e.c)
}

func TestHTTPCampaign(t *testing.T) {
	e := newEnv(t, HandlerOptions{})
	// c1 belongs to a1 in Asia/Kolkata, where it is already 2026-11-22.
	get := e.must("GET", "/api/v1/campaigns/c1", "")
	want := `{"id":"c1","advertiser_id":"a1","name":"Diwali","status":"active","cpc_bid_micros":500000,"daily_budget_micros":10000000,"total_budget_micros":0,` +
		`"start_time":null,"end_time":null,"auto_cpc":false,"created_at":"2026-11-21T20:00:00Z","updated_at":"2026-11-21T20:00:00Z",` +
		`"serving_status":"active","budget":{"day":"2026-11-22","spent_today_micros":0,"remaining_today_micros":10000000,"spent_total_micros":0}}` + "\n"
	if get.body != want {
		t.Errorf("GET c1\n%s\nwant\n%s", get.body, want)
	}
	if r := e.do("GET", "/api/v1/campaigns/c1", e.advKey1, ""); r.body != want {
		t.Errorf("GET c1 with a1's key: %s", r.body)
	}
	// c2: UTC, unlimited: remaining is null.
	if b := e.must("GET", "/api/v1/campaigns/c2", "").json(t)["budget"].(map[string]any); b["day"] != "2026-11-21" || b["remaining_today_micros"] != nil {
		t.Errorf("c2 budget %v", b)
	}

	for _, tc := range []struct {
		name, fields, serving, start, end string
	}{
		{"unix seconds, not started", `"start_time":1795305600`, ServingNotStarted, "2026-11-22T00:00:00Z", ""},
		{"rfc3339 offset, ended", `"start_time":"2026-11-01T05:30:00+05:30","end_time":"2026-11-21T19:59:59Z"`, ServingEnded, "2026-11-01T00:00:00Z", "2026-11-21T19:59:59Z"},
		{"unix seconds as string, running", `"start_time":"1763700000","end_time":"2026-12-01T00:00:00.9Z"`, ServingActive, "2025-11-21T04:40:00Z", "2026-12-01T00:00:00Z"},
		{"paused", `"status":"paused","start_time":null`, ServingPaused, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			put := e.must("PUT", "/api/v1/campaigns/c9", `{"advertiser_id":"a1","name":"C9","cpc_bid_micros":0,`+tc.fields+`}`)
			m := put.json(t)
			if m["serving_status"] != tc.serving {
				t.Errorf("serving_status %v, want %s", m["serving_status"], tc.serving)
			}
			for field, want := range map[string]string{"start_time": tc.start, "end_time": tc.end} {
				got, _ := m[field].(string)
				if got != want || want == "" && m[field] != nil {
					t.Errorf("%s = %v, want %q", field, m[field], want)
				}
			}
			if get := e.must("GET", "/api/v1/campaigns/c9", ""); get.body != put.body {
				t.Errorf("GET differs from PUT:\n%s\n%s", get.body, put.body)
			}
		})
	}
	// The serving status follows the injected clock.
	e.clock.Set(testNow.AddDate(0, 1, 0))
	if m := e.must("PUT", "/api/v1/campaigns/c9", `{"advertiser_id":"a1","name":"C9","cpc_bid_micros":0,"end_time":"2026-12-01T00:00:00Z"}`).json(t); m["serving_status"] != ServingEnded {
		t.Errorf("serving_status a month later %v", m["serving_status"])
	}
	// created_at survives an update; updated_at moves.
	m := e.must("GET", "/api/v1/campaigns/c9", "").json(t)
	if m["created_at"] != "2026-11-21T20:00:00Z" || m["updated_at"] != "2026-12-21T20:00:00Z" {
		t.Errorf("timestamps %v %v", m["created_at"], m["updated_at"])
	}
}

func TestHTTPCampaignStateHook(t *testing.T) {
	var got Campaign
	e := newEnv(t, HandlerOptions{CampaignState: func(ctx context.Context, c Campaign) (string, any) {
		got = c
		return ServingBudgetExhausted, map[string]any{"day": "2026-11-22", "spent_today_micros": 10000000}
	}})
	m := e.must("GET", "/api/v1/campaigns/c1", "").json(t)
	if m["serving_status"] != ServingBudgetExhausted || m["budget"].(map[string]any)["spent_today_micros"] != 1e7 {
		t.Errorf("hooked response %v", m)
	}
	if got.ID != "c1" || got.DailyBudgetMicros != 10000000 {
		t.Errorf("hook saw %+v", got)
	}
}

func TestHTTPAd(t *testing.T) {
	e := newEnv(t, HandlerOptions{})
	get := e.must("GET", "/api/v1/ads/ad1", "")
	want := `{"id":"ad1","campaign_id":"c1","landing_url":"https://shop.example/p/9","catalog_id":"cat7","cpc_bid_micros":null,` +
		`"created_at":"2026-11-21T20:00:00Z","updated_at":"2026-11-21T20:00:00Z"}` + "\n"
	if get.body != want {
		t.Errorf("GET ad1\n%s\nwant\n%s", get.body, want)
	}
	// An explicit zero override is kept apart from none.
	put := e.must("PUT", "/api/v1/ads/ad3", `{"id":"ad3","campaign_id":"c1","landing_url":"HTTPS://Shop.Example:8443/p?q=1#frag","cpc_bid_micros":0}`)
	m := put.json(t)
	if m["cpc_bid_micros"] != 0.0 || m["catalog_id"] != nil {
		t.Errorf("PUT ad3 %s", put.body)
	}
	if get := e.must("GET", "/api/v1/ads/ad3", ""); get.body != put.body {
		t.Errorf("GET differs from PUT:\n%s\n%s", get.body, put.body)
	}
	if info, ok := e.c.Ad("ad3"); !ok || info.CPCBidMicros != 0 || info.LandingURL != "HTTPS://Shop.Example:8443/p?q=1#frag" || info.AdvertiserID != "a1" {
		t.Errorf("index after PUT: %+v %v", info, ok)
	}
	// The index follows updates at once, and the campaign's bid applies when the override goes.
	e.must("PUT", "/api/v1/ads/ad3", `{"campaign_id":"c1","landing_url":"https://new.example/"}`)
	if info, _ := e.c.Ad("ad3"); info.CPCBidMicros != 500000 || info.LandingURL != "https://new.example/" {
		t.Errorf("index after update: %+v", info)
	}
	e.must("PUT", "/api/v1/campaigns/c1", `{"advertiser_id":"a1","name":"Diwali","cpc_bid_micros":650000}`)
	if info, _ := e.c.Ad("ad3"); info.CPCBidMicros != 650000 {
		t.Errorf("bid after the campaign's change: %+v", info)
	}
}

func TestHTTPKeys(t *testing.T) {
	e := newEnv(t, HandlerOptions{})
	r := e.must("POST", "/api/v1/advertisers/a1/keys", "")
	if r.header.Get("Cache-Control") != "no-store" {
		t.Errorf("key response Cache-Control %q", r.header.Get("Cache-Control"))
	}
	if !strings.HasPrefix(e.advKey1, AdvertiserKeyPrefix) || !strings.HasPrefix(e.ingKey, IngestKeyPrefix) {
		t.Errorf("keys %q %q", e.advKey1, e.ingKey)
	}
	if p, ok := e.c.Authenticate(e.ingKey); !ok || p.Role != httpapi.RoleIngest {
		t.Errorf("ingest key principal %+v", p)
	}
	// The middleware: scheme case-insensitive, anything malformed is RoleNone.
	var seen httpapi.Principal
	h := e.c.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { seen = httpapi.PrincipalFrom(r.Context()) }))
	for _, tc := range []struct {
		header string
		want   httpapi.Principal
	}{
		{"Bearer " + e.advKey1, httpapi.Principal{Role: httpapi.RoleAdvertiser, AdvertiserID: "a1"}},
		{"bearer " + testAdminKey, httpapi.Principal{Role: httpapi.RoleAdmin}},
		{"BEARER  " + e.ingKey + " ", httpapi.Principal{Role: httpapi.RoleIngest}},
		{"", httpapi.Principal{}},
		{"Bearer", httpapi.Principal{}},
		{"Bearer ", httpapi.Principal{}},
		{"Basic " + testAdminKey, httpapi.Principal{}},
		{testAdminKey, httpapi.Principal{}},
		{"Bearer nope", httpapi.Principal{}},
	} {
		req := httptest.NewRequest("GET", "/", nil)
		if tc.header != "" {
			req.Header.Set("Authorization", tc.header)
		}
		seen = httpapi.Principal{Role: 99}
		h.ServeHTTP(httptest.NewRecorder(), req)
		if seen != tc.want {
			t.Errorf("Authorization %q: principal %+v, want %+v", tc.header, seen, tc.want)
		}
	}
	// Anonymous requests keep their context, but never a principal it already carried.
	req := httptest.NewRequest("GET", "/", nil)
	req = req.WithContext(httpapi.WithPrincipal(req.Context(), httpapi.Principal{Role: httpapi.RoleAdmin}))
	h.ServeHTTP(httptest.NewRecorder(), req)
	if seen != (httpapi.Principal{}) {
		t.Errorf("no key: principal %+v, want none", seen)
	}
}

func TestHTTPBulk(t *testing.T) {
	e := newEnv(t, HandlerOptions{BulkBatchSize: 2})
	lines := []string{
		`{"id":"b1","campaign_id":"c1","landing_url":"https://x.example/1","catalog_id":"cat1","cpc_bid_micros":7}`, // 1
		``, // 2: blank, skipped
		`{"id":"b2","campaign_id":"c1","landing_url":"javascript:alert(1)"}`,       // 3
		`{"campaign_id":"c1","landing_url":"https://x.example/3"}`,                 // 4: no id
		`{"id":"b 4","campaign_id":"c1","landing_url":"https://x.example/4"}`,      // 5
		`{"id":"b5","campaign_id":"zz","landing_url":"https://x.example/5"}`,       // 6
		`{"id":"b6","campaign_id":"c1","landing_url":"https://x.example/6","x":1}`, // 7
		`not json`, // 8
		`{"id":"b7","campaign_id":"c2","landing_url":"https://x.example/7"}`,                                             // 9
		`{"id":"ad1","campaign_id":"c2","landing_url":"https://x.example/moved"}`,                                        // 10: other advertiser
		`{"id":"b8","campaign_id":"c1","landing_url":"https://x.example/8"}` + "\r",                                      // 11: CRLF
		`{"id":"b9","campaign_id":"c1","landing_url":"https://x.example/` + strings.Repeat("p", maxBulkLineBytes) + `"}`, // 12
		`{"id":"b1","campaign_id":"c1","landing_url":"https://x.example/1b"}`,                                            // 13: repeat, last wins
		`  `, // 14
	}
	r := e.must("POST", "/api/v1/bulk/ads", strings.Join(lines, "\n"))
	var got BulkResponse
	if err := json.Unmarshal([]byte(r.body), &got); err != nil {
		t.Fatal(err)
	}
	wantLines := map[int]string{3: "landing_url", 4: "id", 5: "id", 6: "campaign_id", 7: "x", 8: "body", 10: "campaign_id", 12: "line"}
	if got.Accepted != 4 || got.Rejected != len(wantLines) || got.Duplicates != 0 || len(got.Errors) != len(wantLines) {
		t.Fatalf("response %s", r.body)
	}
	prev := 0
	for _, le := range got.Errors {
		if le.Line <= prev || le.Code != "invalid_argument" || !strings.HasPrefix(le.Message, wantLines[le.Line]+": ") {
			t.Errorf("line error %+v (want lines in order naming %q)", le, wantLines[le.Line])
		}
		prev = le.Line
	}
	for id, url := range map[string]string{"b1": "https://x.example/1b", "b7": "https://x.example/7", "b8": "https://x.example/8", "ad1": "https://shop.example/p/9"} {
		if info, ok := e.c.Ad(id); !ok || info.LandingURL != url {
			t.Errorf("Ad(%s) = %+v, %v; want url %s", id, info, ok, url)
		}
	}
	if info, _ := e.c.Ad("b7"); info.AdvertiserID != "a2" {
		t.Errorf("b7 owner %s", info.AdvertiserID)
	}
	if a, err := e.c.GetAd(context.Background(), "b1"); err != nil || a.CPCBidMicros != nil {
		t.Errorf("b1 stored %+v %v (the repeat dropped the override)", a, err)
	}
	// An empty body is a valid empty batch.
	if r := e.must("POST", "/api/v1/bulk/ads", ""); r.body != `{"accepted":0,"duplicates":0,"rejected":0,"errors":[]}`+"\n" {
		t.Errorf("empty bulk: %s", r.body)
	}
}

func TestHTTPBulkLimits(t *testing.T) {
	e := newEnv(t, HandlerOptions{MaxBulkLines: 3, MaxBulkBytes: 1 << 10})
	line := func(i int) string {
		return fmt.Sprintf(`{"id":"L%d","campaign_id":"c1","landing_url":"https://x.example/%d"}`, i, i)
	}
	// Exactly at the line limit, with a trailing newline: fine.
	body := line(1) + "\n" + line(2) + "\n" + line(3) + "\n"
	if r := e.must("POST", "/api/v1/bulk/ads", body); r.json(t)["accepted"] != 3.0 {
		t.Fatalf("3 lines: %s", r.body)
	}
	for _, tc := range []struct{ name, body string }{
		{"too many lines", line(4) + "\n" + line(5) + "\n" + line(6) + "\n" + line(7)},
		{"too many bytes", line(8) + "\n" + `{"id":"L9","campaign_id":"c1","landing_url":"https://x.example/` + strings.Repeat("a", 1<<10) + `"}`},
	} {
		r := e.do("POST", "/api/v1/bulk/ads", testAdminKey, tc.body)
		if r.status != 413 || !strings.Contains(r.body, `"payload_too_large"`) {
			t.Errorf("%s: %d %s", tc.name, r.status, r.body)
		}
	}
	for _, id := range []string{"L4", "L8"} {
		if _, ok := e.c.Ad(id); ok {
			t.Errorf("%s accepted from a rejected body", id)
		}
	}
}

func TestHTTPBulkListsAtMostMaxErrors(t *testing.T) {
	e := newEnv(t, HandlerOptions{})
	body := strings.Repeat("{}\n", maxListedErrors+5)
	var got BulkResponse
	if err := json.Unmarshal([]byte(e.must("POST", "/api/v1/bulk/ads", body).body), &got); err != nil {
		t.Fatal(err)
	}
	if got.Rejected != maxListedErrors+5 || len(got.Errors) != maxListedErrors {
		t.Errorf("rejected %d, listed %d", got.Rejected, len(got.Errors))
	}
}

func TestHTTPMethodNotAllowed(t *testing.T) {
	e := newEnv(t, HandlerOptions{})
	r := e.do("DELETE", "/api/v1/ads/ad1", testAdminKey, "")
	if r.status != http.StatusMethodNotAllowed {
		t.Errorf("DELETE: %d", r.status)
	}
}

func FuzzBulkLine(f *testing.F) {
	f.Add([]byte(`{"id":"b1","campaign_id":"c1","landing_url":"https://x.example/1","catalog_id":"cat1","cpc_bid_micros":7}`))
	f.Add([]byte(`{"id":"b1","cpc_bid_micros":-0}`))
	f.Add([]byte(`{"cpc_bid_micros":1e400}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		var b adBody
		if decodeObject(line, &b) != nil || b.ID == nil {
			return
		}
		a, err := adFromBody(*b.ID, &b)
		if err != nil {
			return
		}
		if validateAd(&a) == nil {
			if checkLandingURL(a.LandingURL) != nil || a.CPCBidMicros != nil && (*a.CPCBidMicros < 0 || *a.CPCBidMicros > MaxMicros) {
				t.Fatalf("accepted %+v", a)
			}
		}
	})
}
