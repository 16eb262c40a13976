package billing

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/httpapi"
	_ "modernc.org/sqlite" // the real catalog's database in TestCampaignStateHook
)

// testAuth maps fixed bearer keys to principals, as the catalog's middleware does for real keys.
func testAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var p httpapi.Principal
		switch r.Header.Get("Authorization") {
		case "Bearer admin":
			p = httpapi.Principal{Role: httpapi.RoleAdmin}
		case "Bearer adv1":
			p = httpapi.Principal{Role: httpapi.RoleAdvertiser, AdvertiserID: "adv1"}
		case "Bearer adv2":
			p = httpapi.Principal{Role: httpapi.RoleAdvertiser, AdvertiserID: "adv2"}
		case "Bearer ingest":
			p = httpapi.Principal{Role: httpapi.RoleIngest}
		}
		next.ServeHTTP(w, r.WithContext(httpapi.WithPrincipal(r.Context(), p)))
	})
}

func serve(h http.Handler, method, path, key string) (int, map[string]any) {
	req := httptest.NewRequest(method, path, nil)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var body map[string]any
	_ = json.Unmarshal(rec.Body.Bytes(), &body)
	return rec.Code, body
}

// errorOf checks the contract's error shape and returns code and message.
func errorOf(t *testing.T, body map[string]any) (string, string) {
	t.Helper()
	e, ok := body["error"].(map[string]any)
	if !ok {
		t.Fatalf("not an error body: %v", body)
	}
	code, _ := e["code"].(string)
	msg, _ := e["message"].(string)
	return code, msg
}

func httpSetup(t *testing.T) (*harness, http.Handler) {
	h := basicSetup(t)
	h.cat.advertiser(t, "adv2", "UTC")
	h.cat.campaign(catalog.CampaignInfo{CampaignID: "c2", AdvertiserID: "adv2", CPCBidMicros: 70_000})
	h.cat.campaign(catalog.CampaignInfo{CampaignID: "c3", AdvertiserID: "adv2", CPCBidMicros: 70_000, Status: catalog.StatusPaused})
	mux := http.NewServeMux()
	NewHandler(h.c, HandlerOptions{}).Register(mux)
	return h, testAuth(mux)
}

func TestHTTPAuth(t *testing.T) {
	_, srv := httpSetup(t)
	for _, tc := range []struct {
		method, path string
		admin        int // status with the admin key (404: the click does not exist)
		adv          int // with an advertiser key
	}{
		{"GET", "/api/v1/serving/campaigns", 200, 403},
		{"GET", "/api/v1/users/u1/views", 200, 403},
		{"GET", "/api/v1/clicks/none", 404, 404},
		{"POST", "/api/v1/clicks/none/refund", 0, 403}, // admin: needs Run, tested below
	} {
		for _, k := range []struct {
			key  string
			want int
		}{{"", 401}, {"ingest", 403}, {"adv1", tc.adv}, {"admin", tc.admin}} {
			if k.want == 0 {
				continue
			}
			code, body := serve(srv, tc.method, tc.path, k.key)
			if code != k.want {
				t.Errorf("%s %s with key %q: %d, want %d (%v)", tc.method, tc.path, k.key, code, k.want, body)
			}
			if code >= 400 {
				errorOf(t, body)
			}
		}
	}
}

func TestHTTPServingFeed(t *testing.T) {
	h, srv := httpSetup(t)
	code, body := serve(srv, "GET", "/api/v1/serving/campaigns", "admin")
	if code != 200 {
		t.Fatalf("%d %v", code, body)
	}
	var ids []string
	for _, c := range body["campaigns"].([]any) {
		m := c.(map[string]any)
		keys := slices.Sorted(func(yield func(string) bool) {
			for k := range m {
				if !yield(k) {
					return
				}
			}
		})
		if !reflect.DeepEqual(keys, []string{"campaign_id", "cpc_bid_micros", "pacing"}) {
			t.Errorf("feed entry fields %v", keys)
		}
		if p := m["pacing"].(float64); p <= 0 || p > 1 {
			t.Errorf("pacing %v", p)
		}
		ids = append(ids, m["campaign_id"].(string))
	}
	if !reflect.DeepEqual(ids, []string{"c1", "c2"}) { // c3 is paused
		t.Errorf("feed campaigns %v, want [c1 c2]", ids)
	}
	// Spend c1's day: it leaves the feed.
	appendEvents(t, h.log, h.click("i1", "a1", t0, 0), h.click("i2", "a1", t0, 0), h.click("i3", "a1", t0, 0))
	h.sync()
	_, body = serve(srv, "GET", "/api/v1/serving/campaigns", "admin")
	if cs := body["campaigns"].([]any); len(cs) != 1 || cs[0].(map[string]any)["campaign_id"] != "c2" {
		t.Errorf("feed after c1's budget is spent: %v", body)
	}
	// Nothing active: an empty list, not null.
	h.cat.update("c2", func(c *catalog.CampaignInfo) { c.Status = catalog.StatusPaused })
	_, body = serve(srv, "GET", "/api/v1/serving/campaigns", "admin")
	if cs, ok := body["campaigns"].([]any); !ok || len(cs) != 0 {
		t.Errorf("empty feed: %v", body)
	}
}

func TestHTTPUserViews(t *testing.T) {
	h, srv := httpSetup(t)
	imp := func(id, user, cat string, at time.Time) event.Event {
		return event.Event{Type: event.TypeImpression, Time: at.UnixMicro(), AdID: "a1", CampaignID: "c1", AdvertiserID: "adv1", ImpressionID: id, UserID: user, CatalogID: cat}
	}
	bot := imp("x", "u1", "cat7", t0)
	bot.Invalid = event.ReasonBot
	appendEvents(t, h.log,
		imp("1", "u1", "cat7", t0), imp("2", "u1", "cat7", t0), imp("3", "u1", "cat8", t0),
		imp("4", "u1", "cat7", t0.Add(-24*time.Hour)), // the day before
		imp("5", "u2", "cat7", t0),
		imp("6", "u1", "", t0), // no catalog id: not a view of anything
		bot,                    // invalid: not counted
		h.click("7", "a1", t0, 0),
	)
	h.sync()

	code, body := serve(srv, "GET", "/api/v1/users/u1/views?date=2026-11-21", "admin")
	want := map[string]any{"user_id": "u1", "date": "2026-11-21", "catalogs": map[string]any{"cat7": 2.0, "cat8": 1.0}}
	if code != 200 || !reflect.DeepEqual(body, want) {
		t.Errorf("views: %d %v, want %v", code, body, want)
	}
	if _, body = serve(srv, "GET", "/api/v1/users/u1/views", "admin"); !reflect.DeepEqual(body, want) {
		t.Errorf("views with the default date (today, %s): %v", t0.Format(time.DateOnly), body)
	}
	want = map[string]any{"user_id": "u1", "date": "2026-11-20", "catalogs": map[string]any{"cat7": 1.0}}
	if _, body = serve(srv, "GET", "/api/v1/users/u1/views?date=2026-11-20", "admin"); !reflect.DeepEqual(body, want) {
		t.Errorf("views of the day before: %v", body)
	}
	want = map[string]any{"user_id": "nobody", "date": "2026-11-21", "catalogs": map[string]any{}}
	if _, body = serve(srv, "GET", "/api/v1/users/nobody/views?date=2026-11-21", "admin"); !reflect.DeepEqual(body, want) {
		t.Errorf("views of an unknown user: %v", body)
	}
	for _, tc := range []struct{ path, field string }{
		{"/api/v1/users/bad%21id/views", "user_id"},
		{"/api/v1/users/" + strings.Repeat("u", 65) + "/views", "user_id"},
		{"/api/v1/users/u1/views?date=2026-13-01", "date"},
		{"/api/v1/users/u1/views?date=21-11-2026", "date"},
		{"/api/v1/users/u1/views?date=", "date"},
		{"/api/v1/users/u1/views?date=2026-11-14", "date"}, // past the 7-day retention
	} {
		code, body := serve(srv, "GET", tc.path, "admin")
		if code != 400 {
			t.Errorf("%s: %d, want 400", tc.path, code)
			continue
		}
		if c, msg := errorOf(t, body); c != httpapi.CodeInvalidArgument || !strings.HasPrefix(msg, tc.field+":") {
			t.Errorf("%s: %s %q, want invalid_argument naming %s", tc.path, c, msg, tc.field)
		}
	}

	// Retention: eight days later the 21st is deleted by the next round.
	h.clock.Set(t0.Add(8 * 24 * time.Hour))
	h.sync()
	h.clock.Set(t0)
	if _, body = serve(srv, "GET", "/api/v1/users/u1/views?date=2026-11-21", "admin"); len(body["catalogs"].(map[string]any)) != 0 {
		t.Errorf("expired views still there: %v", body)
	}
	// And a late impression of an expired day is not counted.
	h.clock.Set(t0.Add(8 * 24 * time.Hour))
	appendEvents(t, h.log, imp("late", "u1", "cat7", t0))
	h.sync()
	h.clock.Set(t0)
	if _, body = serve(srv, "GET", "/api/v1/users/u1/views?date=2026-11-21", "admin"); len(body["catalogs"].(map[string]any)) != 0 {
		t.Errorf("a view of an expired day was counted: %v", body)
	}
}

func TestHTTPClicksAndRefund(t *testing.T) {
	h, srv := httpSetup(t)
	appendEvents(t, h.log, h.click("i1", "a1", t0, 0))
	run := h.start()
	defer func() {
		run.cancel()
		if err := <-run.done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	if err, ended := h.waitCaughtUp(run); ended {
		t.Fatalf("Run ended: %v", err)
	}
	code, body := serve(srv, "GET", "/api/v1/clicks/i1", "adv1")
	if code != 200 || body["status"] != "charged" || body["charged_micros"] != 500_000.0 || body["campaign_id"] != "c1" || body["day"] != "2026-11-21" {
		t.Errorf("click as its advertiser: %d %v", code, body)
	}
	if code, body = serve(srv, "GET", "/api/v1/clicks/i1", "adv2"); code != 404 {
		t.Errorf("another advertiser's click: %d %v", code, body)
	}
	if code, body = serve(srv, "GET", "/api/v1/clicks/bad%21", "admin"); code != 400 {
		t.Errorf("bad impression id: %d %v", code, body)
	}

	code, body = serve(srv, "POST", "/api/v1/clicks/i1/refund", "admin")
	if code != 200 || body["refunded_micros"] != 500_000.0 || body["already_refunded"] != false || body["status"] != "refunded" {
		t.Fatalf("refund: %d %v", code, body)
	}
	code, body = serve(srv, "POST", "/api/v1/clicks/i1/refund", "admin")
	if code != 200 || body["refunded_micros"] != 0.0 || body["already_refunded"] != true {
		t.Errorf("repeated refund: %d %v", code, body)
	}
	if code, body = serve(srv, "POST", "/api/v1/clicks/nope/refund", "admin"); code != 404 {
		t.Errorf("refund of an unknown click: %d %v", code, body)
	} else if c, msg := errorOf(t, body); c != httpapi.CodeNotFound || !strings.HasPrefix(msg, "id:") {
		t.Errorf("refund of an unknown click: %s %q", c, msg)
	}
	if code, body = serve(srv, "POST", "/api/v1/clicks/bad%21/refund", "admin"); code != 400 {
		t.Errorf("refund with a bad id: %d %v", code, body)
	}
	if code, body = serve(srv, "POST", "/api/v1/clicks/i1/refund", "adv1"); code != 403 {
		t.Errorf("refund by an advertiser: %d %v", code, body)
	}
	if s := h.status("c1"); s.Budget.SpentTodayMicros != 0 {
		t.Errorf("spend after the refund: %d", s.Budget.SpentTodayMicros)
	}
}

// TestHTTPRefundNotRunning: without Run a refund cannot be done and says so.
func TestHTTPRefundNotRunning(t *testing.T) {
	h, srv := httpSetup(t)
	h.c.Close()
	code, body := serve(srv, "POST", "/api/v1/clicks/i1/refund", "admin")
	if c, _ := errorOf(t, body); code != 503 || c != httpapi.CodeUnavailable {
		t.Errorf("refund on a closed charger: %d %v", code, body)
	}
	code, body = serve(srv, "GET", "/api/v1/serving/campaigns", "admin")
	if c, _ := errorOf(t, body); code != 503 || c != httpapi.CodeUnavailable {
		t.Errorf("feed on a closed charger: %d %v", code, body)
	}
}

// TestCampaignStateHook wires billing into the real catalog's GET /api/v1/campaigns/{id} and
// checks that the budget object has the shape of the catalog's own zero-spend default.
func TestCampaignStateHook(t *testing.T) {
	clock := newClock(utc("2026-11-21T20:00:00Z")) // already the 22nd in Kolkata
	ctx := context.Background()
	cat, err := catalog.Open(ctx, catalog.Options{DSN: filepath.Join(t.TempDir(), "catalog.db"), AdminKey: "admin", Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	if _, err := cat.PutAdvertiser(ctx, catalog.Advertiser{ID: "adv1", Name: "Acme", Timezone: "Asia/Kolkata"}); err != nil {
		t.Fatal(err)
	}
	for _, cp := range []catalog.Campaign{
		{ID: "c1", AdvertiserID: "adv1", Name: "Diwali", CPCBidMicros: 500_000, DailyBudgetMicros: 800_000},
		{ID: "c2", AdvertiserID: "adv1", Name: "Open", CPCBidMicros: 500_000},
	} {
		if _, err := cat.PutCampaign(ctx, cp); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cat.PutAd(ctx, catalog.Ad{ID: "a1", CampaignID: "c1", LandingURL: "https://shop.example/p/1"}); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, newMemLog(2, clock.Now), newFakeCatalog(), clock)
	h.c.Close()
	h.ledger.Close()
	h.store.Close()
	h.opts.Catalog = cat
	h.open()

	ad, _ := cat.Ad("a1")
	appendEvents(t, h.log,
		event.Event{Type: event.TypeClick, Time: clock.Now().UnixMicro(), AdID: "a1", CampaignID: ad.CampaignID, AdvertiserID: ad.AdvertiserID, ImpressionID: "i1"},
		event.Event{Type: event.TypeClick, Time: clock.Now().UnixMicro(), AdID: "a1", CampaignID: ad.CampaignID, AdvertiserID: ad.AdvertiserID, ImpressionID: "i2"},
	)
	h.sync()

	get := func(hook bool, id string) map[string]any {
		o := catalog.HandlerOptions{}
		if hook {
			o.CampaignState = h.c.CampaignState
		}
		mux := http.NewServeMux()
		catalog.NewHandler(cat, o).Register(mux)
		code, body := serve(cat.Middleware(mux), "GET", "/api/v1/campaigns/"+id, "admin")
		if code != 200 {
			t.Fatalf("GET campaign %s: %d %v", id, code, body)
		}
		return body
	}
	b := get(true, "c1")
	wantBudget := map[string]any{"day": "2026-11-22", "spent_today_micros": 800_000.0, "remaining_today_micros": 0.0, "spent_total_micros": 800_000.0}
	if b["serving_status"] != catalog.ServingBudgetExhausted || !reflect.DeepEqual(b["budget"], wantBudget) {
		t.Errorf("c1 through billing: %v %v, want budget_exhausted %v", b["serving_status"], b["budget"], wantBudget)
	}
	for _, id := range []string{"c1", "c2"} {
		withHook, without := get(true, id)["budget"].(map[string]any), get(false, id)["budget"].(map[string]any)
		for k := range without {
			if _, ok := withHook[k]; !ok {
				t.Errorf("%s: billing's budget lacks %q of the catalog default", id, k)
			}
		}
		if len(withHook) != len(without) {
			t.Errorf("%s: billing's budget %v, catalog default %v", id, withHook, without)
		}
	}
	if b := get(true, "c2"); b["serving_status"] != "active" || b["budget"].(map[string]any)["remaining_today_micros"] != nil {
		t.Errorf("unlimited campaign: %v", b)
	}
	// Raising the budget brings it back in the same minute.
	if _, err := cat.PutCampaign(ctx, catalog.Campaign{ID: "c1", AdvertiserID: "adv1", Name: "Diwali", CPCBidMicros: 500_000, DailyBudgetMicros: 900_000}); err != nil {
		t.Fatal(err)
	}
	if b := get(true, "c1"); b["serving_status"] != "active" || b["budget"].(map[string]any)["remaining_today_micros"] != 100_000.0 {
		t.Errorf("after raising the budget: %v", b)
	}
}
