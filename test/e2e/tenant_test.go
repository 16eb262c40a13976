package e2e

// Tenant isolation: with an advertiser's key, everything of another advertiser is exactly as
// absent as what does not exist (404, same body), its own objects work, its top-N ranks only
// its own objects, every write is refused (403) and changes nothing; an ingest key can only
// POST /events.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

// missingID stands in for another advertiser's id: the answer must be the same.
const missingID = "zz-no-such-id"

func TestTenantIsolation(t *testing.T) {
	needBinary(t)
	sd := seed(t)
	rng := newRand(sd, 0)
	e := newEnv(t)
	srv := e.start("--admin-key", testAdminKey, "--click-secret", testClickSecret)
	c := newClient(8)
	cat := setupCatalog(t, c, srv.base, testAdminKey, "t", 2, 2, 2)
	const advA, advB = "tadv-0", "tadv-1"
	var adsA, adsB []adInfo
	for _, ad := range cat.ads {
		if ad.advertiser == advA {
			adsA = append(adsA, ad)
		} else {
			adsB = append(adsB, ad)
		}
	}
	adA, adB := adsA[rng.IntN(len(adsA))], adsB[rng.IntN(len(adsB))]
	cmpA, cmpB := adA.campaign, adB.campaign

	key := func(path string) string {
		var out struct {
			Key string `json:"key"`
		}
		mustJSON(t, c, "POST", srv.base+path, testAdminKey, nil, 200, &out)
		if out.Key == "" {
			t.Fatalf("POST %s: empty key", path)
		}
		return out.Key
	}
	keyA, keyB, ingestKey := key("/api/v1/advertisers/"+advA+"/keys"), key("/api/v1/advertisers/"+advB+"/keys"), key("/api/v1/ingest-keys")

	// Traffic for both, through the ingest key; B's ads get more, so an unfiltered top-N would
	// rank them first. One valid click each through POST /click gives both a ledger entry.
	var lines []string
	want := map[string][2]int64{} // ad -> impressions, clicks
	for i, ad := range cat.ads {
		imps, clicks := 3+i, 1+i%3
		if ad.advertiser == advB {
			imps, clicks = imps+10, clicks+5
		}
		for j := range imps {
			b, _ := json.Marshal(eventLine{Type: "impression", AdID: ad.id, ImpressionID: fmt.Sprintf("timp-%s-%d", ad.id, j)})
			lines = append(lines, string(b))
		}
		for j := range clicks {
			b, _ := json.Marshal(eventLine{Type: "click", AdID: ad.id, ImpressionID: fmt.Sprintf("timp-%s-%d", ad.id, j)})
			lines = append(lines, string(b))
		}
		want[ad.id] = [2]int64{int64(imps), int64(clicks)}
	}
	ndjson := strings.Join(lines, "\n") + "\n"
	var br batchResp
	resp, err := do(context.Background(), c, "POST", srv.base+"/events", ingestKey, map[string]string{"Content-Type": "application/x-ndjson"}, []byte(ndjson))
	if err != nil || resp.status != 200 || json.Unmarshal(resp.body, &br) != nil || br.Accepted != len(lines) {
		t.Fatalf("POST /events with the ingest key: got %v, %v; want 200 accepting %d", resp, err, len(lines))
	}
	impA, impB := "timp-"+adA.id+"-0", "timp-"+adB.id+"-0" // clicked in the batch: charged

	// Wait until the admin sees it all: top-N by ad over the last hour lists every click.
	poll(t, "the tenant test's traffic in GET /metrics/top", 20*time.Second, func() []string {
		var diffs []string
		for _, metric := range []string{"impressions", "clicks"} {
			path := "/metrics/top?n=1000&minutes=60&by=ad&metric=" + metric
			r, err := getTop(context.Background(), c, srv.base, path, testAdminKey, "ad_id", metric)
			if err != nil {
				return []string{err.Error()}
			}
			got := map[string]int64{}
			for _, it := range r.Items {
				got[it.id] = it.value
			}
			for ad, w := range want {
				if v := w[map[string]int{"impressions": 0, "clicks": 1}[metric]]; got[ad] != v {
					diffs = append(diffs, fmt.Sprintf("GET %s: %s has %d, want %d", path, ad, got[ad], v))
				}
			}
		}
		for _, imp := range []string{impA, impB} {
			var lj ledgerJSON
			if err := getJSON(context.Background(), c, srv.base, "/api/v1/clicks/"+imp, testAdminKey, &lj); err != nil {
				diffs = append(diffs, err.Error())
			}
		}
		return diffs
	})
	if t.Failed() {
		t.FailNow()
	}

	type tc struct {
		who    string // "A", "B", "ingest", "none", "wrong"
		method string
		path   string
		body   string
		want   int
		hide   string // for a 404: the other advertiser's id in path; missingID there must answer the same
	}
	keys := map[string]string{"A": keyA, "B": keyB, "ingest": ingestKey, "none": "", "wrong": "not-a-key-0123456789"}
	jsonBody := func(v any) string { b, _ := json.Marshal(v); return string(b) }
	advBody := jsonBody(map[string]any{"name": "Hijacked", "timezone": "UTC"})
	cmpBody := func(adv string) string {
		return jsonBody(map[string]any{"advertiser_id": adv, "name": "Hijacked", "status": "paused", "cpc_bid_micros": 1, "daily_budget_micros": 1})
	}
	adBody := func(cmp string) string {
		return jsonBody(map[string]any{"campaign_id": cmp, "landing_url": "https://evil.example/"})
	}
	m := func(q string) string { return "/metrics?" + q }
	top := func(q string) string { return "/metrics/top?n=1000&minutes=60&" + q }
	eventsLine := lines[0] + "\n" // already accepted: a duplicate, changes nothing

	var cases []tc
	// Advertiser A's key: its own objects, B's objects (404 exactly like a missing one),
	// writes (403).
	cases = append(cases,
		tc{who: "A", method: "GET", path: "/api/v1/advertisers/" + advA, want: 200},
		tc{who: "A", method: "GET", path: "/api/v1/advertisers/" + advB, want: 404, hide: advB},
		tc{who: "A", method: "GET", path: "/api/v1/campaigns/" + cmpA, want: 200},
		tc{who: "A", method: "GET", path: "/api/v1/campaigns/" + cmpB, want: 404, hide: cmpB},
		tc{who: "A", method: "GET", path: "/api/v1/ads/" + adA.id, want: 200},
		tc{who: "A", method: "GET", path: "/api/v1/ads/" + adB.id, want: 404, hide: adB.id},
		tc{who: "A", method: "GET", path: m("ad_ids=" + adA.id), want: 200},
		tc{who: "A", method: "GET", path: m("ad_ids=" + adB.id), want: 404, hide: adB.id},
		tc{who: "A", method: "GET", path: m("ad_ids=" + adA.id + "," + adB.id), want: 404, hide: adB.id},
		tc{who: "A", method: "GET", path: m("ad_ids=" + adA.id + "&ad_ids=" + adB.id + "&interval=1h"), want: 404, hide: adB.id},
		tc{who: "A", method: "GET", path: m("campaign_ids=" + cmpA), want: 200},
		tc{who: "A", method: "GET", path: m("campaign_ids=" + cmpB), want: 404, hide: cmpB},
		tc{who: "A", method: "GET", path: m("advertiser_ids=" + advA + "&interval=1d&tz=Asia/Kolkata"), want: 200},
		tc{who: "A", method: "GET", path: m("advertiser_ids=" + advB + "&interval=1d&tz=Asia/Kolkata"), want: 404, hide: advB},
		tc{who: "A", method: "GET", path: top("by=ad"), want: 200},
		tc{who: "A", method: "GET", path: top("by=ad&campaign_id=" + cmpA), want: 200},
		tc{who: "A", method: "GET", path: top("by=ad&campaign_id=" + cmpB), want: 404, hide: cmpB},
		tc{who: "A", method: "GET", path: top("by=campaign&advertiser_id=" + advA), want: 200},
		tc{who: "A", method: "GET", path: top("by=campaign&advertiser_id=" + advB), want: 404, hide: advB},
		tc{who: "A", method: "GET", path: top("by=advertiser&metric=impressions&advertiser_id=" + advB), want: 404, hide: advB},
		tc{who: "A", method: "GET", path: "/api/v1/clicks/" + impA, want: 200},
		tc{who: "A", method: "GET", path: "/api/v1/clicks/" + impB, want: 404, hide: impB},
		tc{who: "A", method: "PUT", path: "/api/v1/advertisers/" + advA, body: advBody, want: 403},
		tc{who: "A", method: "PUT", path: "/api/v1/advertisers/" + advB, body: advBody, want: 403},
		tc{who: "A", method: "PUT", path: "/api/v1/campaigns/" + cmpA, body: cmpBody(advA), want: 403},
		tc{who: "A", method: "PUT", path: "/api/v1/campaigns/" + cmpB, body: cmpBody(advB), want: 403},
		tc{who: "A", method: "PUT", path: "/api/v1/campaigns/tnew-cmp", body: cmpBody(advA), want: 403},
		tc{who: "A", method: "PUT", path: "/api/v1/ads/" + adA.id, body: adBody(cmpA), want: 403},
		tc{who: "A", method: "PUT", path: "/api/v1/ads/" + adB.id, body: adBody(cmpB), want: 403},
		tc{who: "A", method: "POST", path: "/api/v1/bulk/ads", body: `{"id":"` + adA.id + `","campaign_id":"` + cmpA + `","landing_url":"https://evil.example/"}`, want: 403},
		tc{who: "A", method: "POST", path: "/api/v1/advertisers/" + advA + "/keys", want: 403},
		tc{who: "A", method: "POST", path: "/api/v1/advertisers/" + advB + "/keys", want: 403},
		tc{who: "A", method: "POST", path: "/api/v1/ingest-keys", want: 403},
		tc{who: "A", method: "POST", path: "/api/v1/click-urls", body: jsonBody(map[string]string{"ad_id": adA.id, "impression_id": "t-x"}), want: 403},
		tc{who: "A", method: "POST", path: "/events", body: eventsLine, want: 403},
		tc{who: "A", method: "POST", path: "/api/v1/clicks/" + impA + "/refund", want: 403},
		tc{who: "A", method: "POST", path: "/api/v1/clicks/" + impB + "/refund", want: 403},
		tc{who: "A", method: "GET", path: "/api/v1/serving/campaigns", want: 403},
		tc{who: "A", method: "GET", path: "/api/v1/users/u1/views", want: 403},
	)
	// B's key, the other way round.
	cases = append(cases,
		tc{who: "B", method: "GET", path: "/api/v1/advertisers/" + advB, want: 200},
		tc{who: "B", method: "GET", path: "/api/v1/advertisers/" + advA, want: 404, hide: advA},
		tc{who: "B", method: "GET", path: "/api/v1/ads/" + adA.id, want: 404, hide: adA.id},
		tc{who: "B", method: "GET", path: m("campaign_ids=" + cmpA), want: 404, hide: cmpA},
		tc{who: "B", method: "GET", path: top("by=ad&advertiser_id=" + advA), want: 404, hide: advA},
		tc{who: "B", method: "GET", path: "/api/v1/clicks/" + impA, want: 404, hide: impA},
		tc{who: "B", method: "GET", path: "/api/v1/clicks/" + impB, want: 200},
	)
	// The ingest key: POST /events only.
	cases = append(cases, tc{who: "ingest", method: "POST", path: "/events", body: eventsLine, want: 200})
	for _, x := range []struct{ method, path, body string }{
		{"GET", "/api/v1/advertisers/" + advA, ""},
		{"GET", "/api/v1/campaigns/" + cmpA, ""},
		{"GET", "/api/v1/ads/" + adA.id, ""},
		{"GET", m("ad_ids=" + adA.id), ""},
		{"GET", m("advertiser_ids=" + advA), ""},
		{"GET", top("by=ad"), ""},
		{"GET", "/api/v1/clicks/" + impA, ""},
		{"GET", "/api/v1/serving/campaigns", ""},
		{"GET", "/api/v1/users/u1/views", ""},
		{"PUT", "/api/v1/advertisers/" + advA, advBody},
		{"PUT", "/api/v1/campaigns/" + cmpA, cmpBody(advA)},
		{"PUT", "/api/v1/ads/" + adA.id, adBody(cmpA)},
		{"POST", "/api/v1/bulk/ads", `{"id":"` + adA.id + `","campaign_id":"` + cmpA + `","landing_url":"https://evil.example/"}`},
		{"POST", "/api/v1/advertisers/" + advA + "/keys", ""},
		{"POST", "/api/v1/ingest-keys", ""},
		{"POST", "/api/v1/click-urls", jsonBody(map[string]string{"ad_id": adA.id, "impression_id": "t-y"})},
		{"POST", "/api/v1/clicks/" + impA + "/refund", ""},
	} {
		cases = append(cases, tc{who: "ingest", method: x.method, path: x.path, body: x.body, want: 403})
	}
	// No key, or a wrong one: 401 everywhere a key is needed.
	for _, who := range []string{"none", "wrong"} {
		for _, x := range []struct{ method, path, body string }{
			{"GET", "/api/v1/advertisers/" + advA, ""},
			{"GET", m("ad_ids=" + adA.id), ""},
			{"GET", top("by=ad"), ""},
			{"GET", "/api/v1/clicks/" + impA, ""},
			{"POST", "/events", eventsLine},
			{"PUT", "/api/v1/ads/" + adA.id, adBody(cmpA)},
		} {
			cases = append(cases, tc{who: who, method: x.method, path: x.path, body: x.body, want: 401})
		}
	}

	send := func(who, method, path, body string) (*response, error) {
		var b []byte
		hdr := map[string]string{}
		if body != "" {
			b = []byte(body)
			hdr["Content-Type"] = "application/json"
			if path == "/events" || strings.HasPrefix(path, "/api/v1/bulk/") {
				hdr["Content-Type"] = "application/x-ndjson"
			}
		}
		return do(context.Background(), c, method, srv.base+path, keys[who], hdr, b)
	}
	for _, tc := range cases {
		name := fmt.Sprintf("%s key: %s %s", tc.who, tc.method, tc.path)
		resp, err := send(tc.who, tc.method, tc.path, tc.body)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if resp.status != tc.want {
			t.Errorf("%s: got %v, want %d", name, resp, tc.want)
			continue
		}
		if resp.status >= 400 {
			if s := errorShape(resp); s != "" {
				t.Errorf("%s: %v: %s", name, resp, s)
			}
		}
		if tc.hide == "" {
			continue
		}
		// Another advertiser's object must be indistinguishable from a missing one.
		other := strings.Replace(tc.path, tc.hide, missingID, 1)
		resp2, err := send(tc.who, tc.method, other, tc.body)
		if err != nil {
			t.Errorf("%s %s: %v", tc.method, other, err)
			continue
		}
		norm := func(b []byte, id string) string { return strings.ReplaceAll(string(b), id, "ID") }
		if resp2.status != resp.status || norm(resp.body, tc.hide) != norm(resp2.body, missingID) {
			t.Errorf("%s: another advertiser's object answers differently from a missing one:\n  %v\n  %s %s: %v", name, resp, tc.method, other, resp2)
		}
	}

	// A's (and B's) unfiltered top-N: exactly the admin's top-N filtered to the advertiser,
	// and never another advertiser's object.
	owner := map[string]string{}
	for _, ad := range cat.ads {
		owner[ad.id], owner[ad.campaign], owner[ad.advertiser] = ad.advertiser, ad.advertiser, ad.advertiser
	}
	for _, who := range []struct{ name, key, adv string }{{"A", keyA, advA}, {"B", keyB, advB}} {
		for by := range numLevels {
			for _, metric := range []string{"clicks", "impressions"} {
				q := url.Values{"n": {"1000"}, "minutes": {"60"}, "by": {levelNames[by]}, "metric": {metric}}
				path := "/metrics/top?" + q.Encode()
				own, err := getTop(context.Background(), c, srv.base, path, who.key, by.idKey(), metric)
				if err != nil {
					t.Errorf("%s key: %v", who.name, err)
					continue
				}
				q.Set("advertiser_id", who.adv)
				adminPath := "/metrics/top?" + q.Encode()
				admin, err := getTop(context.Background(), c, srv.base, adminPath, testAdminKey, by.idKey(), metric)
				if err != nil {
					t.Error(err)
					continue
				}
				for _, it := range own.Items {
					if owner[it.id] != who.adv {
						t.Errorf("%s key: GET %s lists %s of advertiser %s", who.name, path, it, owner[it.id])
					}
				}
				if !slices.Equal(own.Items, admin.Items) || len(own.Items) == 0 {
					t.Errorf("%s key: GET %s = %v; the admin's GET %s = %v; want the same, not empty", who.name, path, own.Items, adminPath, admin.Items)
				}
			}
		}
	}
	// The admin's unfiltered ranking does put B first: the filter above was real.
	all, err := getTop(context.Background(), c, srv.base, "/metrics/top?n=1000&minutes=60&by=advertiser", testAdminKey, "advertiser_id", "clicks")
	if err != nil || len(all.Items) != 2 || all.Items[0].id != advB {
		t.Errorf("admin: GET /metrics/top?by=advertiser: %v %v, want %s then %s", all, err, advB, advA)
	}

	// The refused writes changed nothing.
	var a struct {
		Name string `json:"name"`
	}
	mustJSON(t, c, "GET", srv.base+"/api/v1/advertisers/"+advA, testAdminKey, nil, 200, &a)
	var cp campaignJSON
	mustJSON(t, c, "GET", srv.base+"/api/v1/campaigns/"+cmpA, testAdminKey, nil, 200, &cp)
	var ad struct {
		LandingURL string `json:"landing_url"`
	}
	mustJSON(t, c, "GET", srv.base+"/api/v1/ads/"+adA.id, testAdminKey, nil, 200, &ad)
	var lj ledgerJSON
	mustJSON(t, c, "GET", srv.base+"/api/v1/clicks/"+impA, testAdminKey, nil, 200, &lj)
	if a.Name == "Hijacked" || cp.Name == "Hijacked" || ad.LandingURL != adA.landing || lj.Status != "charged" {
		t.Errorf("a refused write changed something: advertiser name %q, campaign name %q, ad landing URL %q, click %s status %q",
			a.Name, cp.Name, ad.LandingURL, impA, lj.Status)
	}
	resp, err = do(context.Background(), c, "GET", srv.base+"/api/v1/campaigns/tnew-cmp", testAdminKey, nil, nil)
	if err != nil || resp.status != http.StatusNotFound {
		t.Errorf("a refused PUT created campaign tnew-cmp: GET answers %v %v", resp, err)
	}
	srv.stop(t)
	c.CloseIdleConnections()
	t.Logf("tenant isolation: %d requests of the table, top-N of both advertisers at 3 levels x 2 metrics", len(cases))
}
