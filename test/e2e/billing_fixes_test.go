package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Billing end to end: clicks keyed by event_id, and time zone changes of an advertiser.

// bfSetup creates one advertiser in tz with one campaign (bid, daily budget) and one ad.
func bfSetup(t *testing.T, c *http.Client, base, prefix, tz string, bid, daily int64) adInfo {
	t.Helper()
	ad := adInfo{id: prefix + "-ad", campaign: prefix + "-cmp", advertiser: prefix + "-adv", landing: "https://shop.example/p/" + prefix}
	mustJSON(t, c, "PUT", base+"/api/v1/advertisers/"+ad.advertiser, testAdminKey, map[string]any{"name": "Advertiser " + prefix, "timezone": tz}, 200, nil)
	mustJSON(t, c, "PUT", base+"/api/v1/campaigns/"+ad.campaign, testAdminKey, map[string]any{
		"advertiser_id": ad.advertiser, "name": "Campaign " + prefix, "status": "active",
		"cpc_bid_micros": bid, "daily_budget_micros": daily, "total_budget_micros": 0,
	}, 200, nil)
	mustJSON(t, c, "PUT", base+"/api/v1/ads/"+ad.id, testAdminKey, map[string]any{"campaign_id": ad.campaign, "landing_url": ad.landing}, 200, nil)
	return ad
}

// postLines sends events to POST /events with the admin key; every line must be accepted.
func postLines(t *testing.T, c *http.Client, base string, lines ...eventLine) {
	t.Helper()
	var b strings.Builder
	for _, l := range lines {
		j, _ := json.Marshal(l)
		b.Write(j)
		b.WriteByte('\n')
	}
	var br batchResp
	resp, err := do(context.Background(), c, "POST", base+"/events", testAdminKey, map[string]string{"Content-Type": "application/x-ndjson"}, []byte(b.String()))
	if err != nil || resp.status != 200 || json.Unmarshal(resp.body, &br) != nil || br.Accepted != len(lines) {
		t.Fatalf("POST /events: got %v, %v; want 200 accepting %d", resp, err, len(lines))
	}
}

// clickJSON is GET /api/v1/clicks/{id} and, with refunded_micros and already_refunded, the
// refund's answer.
type clickJSON struct {
	ID              string `json:"id"`
	ImpressionID    string `json:"impression_id"`
	EventID         string `json:"event_id"`
	CampaignID      string `json:"campaign_id"`
	Day             string `json:"day"`
	Status          string `json:"status"`
	ChargedMicros   int64  `json:"charged_micros"`
	Reason          string `json:"reason"`
	RefundedMicros  int64  `json:"refunded_micros"`
	AlreadyRefunded bool   `json:"already_refunded"`
}

// waitClick polls GET /api/v1/clicks/{id} until the click is charged (the charger consumes
// the log asynchronously).
func waitClick(t *testing.T, c *http.Client, base, id string) clickJSON {
	t.Helper()
	var out clickJSON
	var last error
	poll(t, "click "+id+" in the ledger", 20*time.Second, func() []string {
		if last = getJSON(context.Background(), c, base, "/api/v1/clicks/"+id, testAdminKey, &out); last != nil {
			return []string{last.Error()}
		}
		return nil
	})
	if last != nil {
		t.FailNow()
	}
	return out
}

func getCampaign(t *testing.T, c *http.Client, base, id string) campaignJSON {
	t.Helper()
	var cp campaignJSON
	mustJSON(t, c, "GET", base+"/api/v1/campaigns/"+id, testAdminKey, nil, 200, &cp)
	return cp
}

// campaignSpend sums the campaign's spend_micros in /metrics over the last two hours.
func campaignSpend(c *http.Client, base, campaign string) (int64, error) {
	now := time.Now().UTC()
	path := fmt.Sprintf("/metrics?campaign_ids=%s&start_time=%d&end_time=%d&interval=1h", campaign, now.Add(-2*time.Hour).Unix(), now.Add(time.Hour).Unix())
	var r metricsResp
	if err := getJSON(context.Background(), c, base, path, testAdminKey, &r); err != nil {
		return 0, err
	}
	var sum int64
	for _, s := range r.Series {
		for _, p := range s.Points {
			sum += p.SpendMicros
		}
	}
	return sum, nil
}

// TestBillingEventIDClick: a click sent to POST /events with only an event_id is charged, can
// be looked up and refunded by that event_id, and the refund takes its charge off spend
// exactly once. A click sent with an impression id is still found by it.
func TestBillingEventIDClick(t *testing.T) {
	needBinary(t)
	e := newEnv(t)
	srv := e.start("--admin-key", testAdminKey, "--click-secret", testClickSecret)
	defer srv.stop(t)
	c := newClient(4)
	ad := bfSetup(t, c, srv.base, "ev", "UTC", 300_000, 0)
	postLines(t, c, srv.base,
		eventLine{Type: "click", EventID: "ev-click-1", AdID: ad.id},
		eventLine{Type: "click", ImpressionID: "ev-imp-2", AdID: ad.id},
	)
	byEvent := waitClick(t, c, srv.base, "ev-click-1")
	if byEvent.ID != "ev-click-1" || byEvent.EventID != "ev-click-1" || byEvent.ImpressionID != "" ||
		byEvent.Status != "charged" || byEvent.ChargedMicros != 300_000 || byEvent.CampaignID != ad.campaign {
		t.Fatalf("click by event_id: %+v", byEvent)
	}
	if byImp := waitClick(t, c, srv.base, "ev-imp-2"); byImp.ImpressionID != "ev-imp-2" || byImp.ChargedMicros != 300_000 {
		t.Fatalf("click by impression id: %+v", byImp)
	}
	if cp := getCampaign(t, c, srv.base, ad.campaign); cp.Budget.SpentTodayMicros != 600_000 || cp.Budget.SpentTotalMicros != 600_000 {
		t.Fatalf("spend before the refund: %+v", cp.Budget)
	}

	var r clickJSON
	mustJSON(t, c, "POST", srv.base+"/api/v1/clicks/ev-click-1/refund", testAdminKey, nil, 200, &r)
	if r.RefundedMicros != 300_000 || r.AlreadyRefunded || r.Status != "refunded" {
		t.Fatalf("refund: %+v", r)
	}
	if cp := getCampaign(t, c, srv.base, ad.campaign); cp.Budget.SpentTodayMicros != 300_000 || cp.Budget.SpentTotalMicros != 300_000 {
		t.Fatalf("spend after the refund: %+v", cp.Budget)
	}
	r = clickJSON{}
	mustJSON(t, c, "POST", srv.base+"/api/v1/clicks/ev-click-1/refund", testAdminKey, nil, 200, &r)
	if r.RefundedMicros != 0 || !r.AlreadyRefunded || r.Status != "refunded" {
		t.Fatalf("second refund: %+v", r)
	}
	if cp := getCampaign(t, c, srv.base, ad.campaign); cp.Budget.SpentTodayMicros != 300_000 || cp.Budget.SpentTotalMicros != 300_000 {
		t.Fatalf("spend after the second refund: %+v", cp.Budget)
	}
	if got := waitClick(t, c, srv.base, "ev-click-1"); got.Status != "refunded" || got.ChargedMicros != 300_000 {
		t.Fatalf("refunded click: %+v", got)
	}
	// /metrics spend follows: the one remaining charge.
	poll(t, "spend_micros in /metrics", 20*time.Second, func() []string {
		got, err := campaignSpend(c, srv.base, ad.campaign)
		if err != nil {
			return []string{err.Error()}
		}
		if got != 300_000 {
			return []string{fmt.Sprintf("spend_micros %d, want 300000", got)}
		}
		return nil
	})
}

// etcZone names the fixed-offset zone of offset hours east of UTC (POSIX signs are reversed:
// Etc/GMT-5 is UTC+5).
func etcZone(offset int) string {
	switch {
	case offset > 0:
		return fmt.Sprintf("Etc/GMT-%d", offset)
	case offset < 0:
		return fmt.Sprintf("Etc/GMT+%d", -offset)
	}
	return "Etc/UTC"
}

// tomorrowZones picks, for the real time now, a zone from where the local midnight is between
// 30 minutes and 6 hours away, and a zone where it is already the next date: moving an
// advertiser from the first to the second would, if the zone took effect at once, start a new
// budget day right away.
func tomorrowZones(t *testing.T, now time.Time) (from, to string, fromDate string, midnight time.Time) {
	t.Helper()
	for oA := -12; oA <= 14; oA++ {
		locA := time.FixedZone("", oA*3600)
		la := now.In(locA)
		next := time.Date(la.Year(), la.Month(), la.Day()+1, 0, 0, 0, 0, locA)
		if left := next.Sub(now); left < 30*time.Minute || left > 6*time.Hour {
			continue
		}
		for oB := oA + 1; oB <= 14; oB++ {
			if lb := now.In(time.FixedZone("", oB*3600)); lb.Format(time.DateOnly) > la.Format(time.DateOnly) {
				return etcZone(oA), etcZone(oB), la.Format(time.DateOnly), next
			}
		}
	}
	t.Fatalf("no pair of zones for %s", now)
	return
}

// TestBillingZoneChangeKeepsDay: an advertiser spends its daily budget, then moves to a zone
// where it is already tomorrow. The budget day in progress continues until the old zone's
// midnight: more clicks charge 0, the campaign stays budget_exhausted on the old day and out
// of the serving feed, and so it stays across a kill -9 and restart.
func TestBillingZoneChangeKeepsDay(t *testing.T) {
	needBinary(t)
	from, to, day, midnight := tomorrowZones(t, time.Now())
	t.Logf("moving the advertiser from %s (on %s until %s) to %s", from, day, midnight.UTC().Format(time.RFC3339), to)
	if time.Until(midnight) < 25*time.Minute {
		t.Skip("too close to the old zone's midnight")
	}
	e := newEnv(t)
	args := []string{"--admin-key", testAdminKey, "--click-secret", testClickSecret}
	srv := e.start(args...)
	c := newClient(4)
	ad := bfSetup(t, c, srv.base, "tz", from, 300_000, 500_000)
	postLines(t, c, srv.base,
		eventLine{Type: "click", ImpressionID: "tz-1", AdID: ad.id},
		eventLine{Type: "click", ImpressionID: "tz-2", AdID: ad.id},
	)
	spent := waitClick(t, c, srv.base, "tz-1").ChargedMicros + waitClick(t, c, srv.base, "tz-2").ChargedMicros
	if spent != 500_000 {
		t.Fatalf("the first two clicks charged %d, want the daily budget 500000", spent)
	}
	checkExhausted := func(when string) {
		t.Helper()
		cp := getCampaign(t, c, srv.base, ad.campaign)
		if cp.ServingStatus != "budget_exhausted" || cp.Budget.Day != day || cp.Budget.SpentTodayMicros != 500_000 ||
			cp.Budget.RemainingTodayMicros == nil || *cp.Budget.RemainingTodayMicros != 0 {
			t.Fatalf("%s: %s, budget %+v (remaining %s); want budget_exhausted on %s with 500000 spent", when, cp.ServingStatus, cp.Budget, fmtPtr(cp.Budget.RemainingTodayMicros), day)
		}
		var feed feedJSON
		mustJSON(t, c, "GET", srv.base+"/api/v1/serving/campaigns", testAdminKey, nil, 200, &feed)
		for _, f := range feed.Campaigns {
			if f.CampaignID == ad.campaign {
				t.Fatalf("%s: exhausted campaign in the serving feed: %+v", when, f)
			}
		}
	}
	checkExhausted("before the zone change")

	mustJSON(t, c, "PUT", srv.base+"/api/v1/advertisers/"+ad.advertiser, testAdminKey, map[string]any{"name": "Advertiser tz", "timezone": to}, 200, nil)
	checkExhausted("right after the zone change")
	postLines(t, c, srv.base,
		eventLine{Type: "click", ImpressionID: "tz-3", AdID: ad.id},
		eventLine{Type: "click", EventID: "tz-4", AdID: ad.id},
	)
	for _, id := range []string{"tz-3", "tz-4"} {
		if cl := waitClick(t, c, srv.base, id); cl.ChargedMicros != 0 || cl.Day != day || cl.Reason != "daily_budget_exhausted" {
			t.Fatalf("click %s after the zone change: %+v; want 0 on %s (daily_budget_exhausted)", id, cl, day)
		}
	}
	checkExhausted("after clicks in the new zone")

	// The change is durable: after a kill -9 the day in progress is still the old zone's.
	srv.kill(t)
	srv = e.start(args...)
	defer srv.stop(t)
	checkExhausted("after a restart")
	postLines(t, c, srv.base, eventLine{Type: "click", ImpressionID: "tz-5", AdID: ad.id})
	if cl := waitClick(t, c, srv.base, "tz-5"); cl.ChargedMicros != 0 || cl.Day != day {
		t.Fatalf("click after the restart: %+v; want 0 on %s", cl, day)
	}
	checkExhausted("at the end")
}
