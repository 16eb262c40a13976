package dashboard

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/httpapi"
)

// memCatalog is the in-memory index the handler reads, with many campaigns per advertiser.
type memCatalog struct {
	campaigns map[string]catalog.CampaignInfo
}

func (m memCatalog) CampaignIDs() []string {
	ids := make([]string, 0, len(m.campaigns))
	for id := range m.campaigns {
		ids = append(ids, id)
	}
	return ids
}

func (m memCatalog) Campaign(id string) (catalog.CampaignInfo, bool) {
	c, ok := m.campaigns[id]
	return c, ok
}

func (m memCatalog) Advertiser(id string) (catalog.AdvertiserInfo, bool) {
	return catalog.AdvertiserInfo{AdvertiserID: id}, id == "a1" || id == "a2"
}

func list(t *testing.T, h http.Handler, p httpapi.Principal, query string) (int, campaignList) {
	t.Helper()
	req := httptest.NewRequest("GET", "/api/v1/campaigns"+query, nil)
	req = req.WithContext(httpapi.WithPrincipal(req.Context(), p))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var out campaignList
	if rec.Code == 200 {
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
			t.Fatal(err)
		}
		if rec.Header().Get("Cache-Control") != "no-store" {
			t.Errorf("campaign list without Cache-Control: no-store")
		}
	}
	return rec.Code, out
}

// TestCampaignListScope: an advertiser key lists its own campaigns only, whatever it asks
// for; the admin key lists all, sorted, at most MaxCampaigns.
func TestCampaignListScope(t *testing.T) {
	m := memCatalog{campaigns: map[string]catalog.CampaignInfo{}}
	for i := 0; i < MaxCampaigns+5; i++ {
		id := fmt.Sprintf("c%05d", i)
		m.campaigns[id] = catalog.CampaignInfo{CampaignID: id, AdvertiserID: []string{"a1", "a2"}[i%2], Status: catalog.Status("active")}
	}
	mux := http.NewServeMux()
	New(Options{Catalog: m}).Register(mux)
	adv := httpapi.Principal{Role: httpapi.RoleAdvertiser, AdvertiserID: "a1"}
	admin := httpapi.Principal{Role: httpapi.RoleAdmin}

	code, out := list(t, mux, adv, "")
	if code != 200 || out.Role != "advertiser" || out.AdvertiserID == nil || *out.AdvertiserID != "a1" {
		t.Fatalf("advertiser: %d %+v", code, out)
	}
	for _, c := range out.Campaigns {
		if c.AdvertiserID != "a1" {
			t.Fatalf("advertiser a1's key listed %s of %s", c.CampaignID, c.AdvertiserID)
		}
	}
	if len(out.Campaigns) != (MaxCampaigns+5+1)/2 || out.Truncated {
		t.Errorf("advertiser: %d campaigns, truncated %v", len(out.Campaigns), out.Truncated)
	}
	if code, _ := list(t, mux, adv, "?advertiser_id=a2"); code != 404 {
		t.Errorf("advertiser asking for a2: %d, want 404", code)
	}
	code, out = list(t, mux, admin, "")
	if code != 200 || len(out.Campaigns) != MaxCampaigns || !out.Truncated || out.Campaigns[0].CampaignID != "c00000" || out.Campaigns[1].CampaignID != "c00001" {
		t.Fatalf("admin: %d, %d campaigns, truncated %v", code, len(out.Campaigns), out.Truncated)
	}
	if code, out = list(t, mux, admin, "?advertiser_id=a2"); code != 200 || out.Campaigns[0].AdvertiserID != "a2" {
		t.Errorf("admin filter: %d %+v", code, out.Campaigns[:1])
	}
	for _, q := range []string{"?advertiser_id=a1&advertiser_id=a2", "?x=1", "?advertiser_id=bad*id"} {
		if code, _ := list(t, mux, admin, q); code != 400 {
			t.Errorf("%s: %d, want 400", q, code)
		}
	}
	if code, _ := list(t, mux, httpapi.Principal{Role: httpapi.RoleIngest}, ""); code != 403 {
		t.Errorf("ingest key: %d, want 403", code)
	}
	if code, _ := list(t, mux, httpapi.Principal{}, ""); code != 401 {
		t.Errorf("no key: %d, want 401", code)
	}
}

// TestStaticFiles: the pages come with a policy that keeps them on this origin, and every
// script they load is embedded.
func TestStaticFiles(t *testing.T) {
	mux := http.NewServeMux()
	New(Options{Catalog: memCatalog{}}).Register(mux)
	for _, path := range []string{"/ui/", "/ui/app.js", "/ui/style.css", "/ui/vendor/uPlot.iife.min.js", "/ui/vendor/uPlot.min.css"} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != 200 || rec.Body.Len() == 0 {
			t.Errorf("%s: %d", path, rec.Code)
		}
		if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") || !strings.Contains(csp, "script-src 'self'") {
			t.Errorf("%s: CSP %q", path, csp)
		}
	}
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/ui/", nil))
	if strings.Contains(rec.Body.String(), "http://") || strings.Contains(rec.Body.String(), "https://") {
		t.Errorf("index.html loads something from another origin")
	}
}
