package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Attribution end to end: orders from a checkout credited to clicks and views, counted
// exactly across kill -9.

// attrLine is a line of POST /events: a touch (impression or click) or an order.
type attrLine struct {
	Type         string `json:"type"`
	AdID         string `json:"ad_id,omitempty"`
	ImpressionID string `json:"impression_id,omitempty"`
	EventID      string `json:"event_id,omitempty"`
	UserID       string `json:"user_id"`
	CatalogID    string `json:"catalog_id,omitempty"`
	EventTime    int64  `json:"event_time"`
	ValueMicros  int64  `json:"value_micros,omitempty"`
}

func (l *attrLine) key() string {
	if l.Type == "click" {
		return "c:" + l.ImpressionID
	}
	return "i:" + l.ImpressionID
}

// attrCredit is the matching rule written out plainly (the default windows: 7 days after a
// click, 1 day after a view; a click wins; the latest; equal times to the larger key).
func attrCredit(order *attrLine, touches []*attrLine, adCatalog map[string]string) *attrLine {
	for _, kind := range []string{"click", "impression"} {
		window := int64(24 * 3600)
		if kind == "click" {
			window = 7 * 24 * 3600
		}
		var best *attrLine
		for _, t := range touches {
			if t.Type != kind || t.UserID != order.UserID || adCatalog[t.AdID] != order.CatalogID {
				continue
			}
			if age := order.EventTime - t.EventTime; age < 0 || age >= window {
				continue
			}
			if best == nil || t.EventTime > best.EventTime || t.EventTime == best.EventTime && t.key() > best.key() {
				best = t
			}
		}
		if best != nil {
			return best
		}
	}
	return nil
}

// TestAttributionExactUnderKill sends touches and orders in a shuffled order (so many touches
// arrive after the orders they win) with duplicates, kills the server with SIGKILL while it
// takes them, restarts it, and checks every order's credit and every campaign's conversions
// and conversion value exactly against attrCredit.
func TestAttributionExactUnderKill(t *testing.T) {
	needBinary(t)
	sd := seed(t)
	rng := newRand(sd, 41)
	e := newEnv(t)
	args := []string{"--admin-key", testAdminKey, "--click-secret", testClickSecret}
	srv := e.start(args...)
	c := newClient(8)

	// Two advertisers, a campaign each, three ads over two catalogs.
	type adDef struct{ id, campaign, advertiser, catalog string }
	ads := []adDef{{"at-1", "at-c1", "at-a1", "at-cat1"}, {"at-2", "at-c1", "at-a1", "at-cat2"}, {"at-3", "at-c2", "at-a2", "at-cat1"}}
	adCatalog := map[string]string{}
	for _, ad := range ads {
		mustJSON(t, c, "PUT", srv.base+"/api/v1/advertisers/"+ad.advertiser, testAdminKey, map[string]any{"name": ad.advertiser}, 200, nil)
		mustJSON(t, c, "PUT", srv.base+"/api/v1/campaigns/"+ad.campaign, testAdminKey, map[string]any{
			"advertiser_id": ad.advertiser, "name": ad.campaign, "status": "active", "cpc_bid_micros": 100_000, "daily_budget_micros": 0, "total_budget_micros": 0}, 200, nil)
		mustJSON(t, c, "PUT", srv.base+"/api/v1/ads/"+ad.id, testAdminKey, map[string]any{"campaign_id": ad.campaign, "landing_url": "https://shop.example/" + ad.id, "catalog_id": ad.catalog}, 200, nil)
		adCatalog[ad.id] = ad.catalog
	}
	now := time.Now().Unix()
	// Events go back up to three hours, but not past today's UTC midnight: a campaign's lifetime
	// performance counts from its creation day, and the campaigns were created just now.
	back := min(3*3600, now%86400+1)
	var touches, orders, all []*attrLine
	for i := range 1200 {
		ad := ads[rng.IntN(len(ads))]
		l := &attrLine{Type: "impression", AdID: ad.id, ImpressionID: fmt.Sprintf("at-imp-%d", i), UserID: fmt.Sprintf("at-u%d", rng.IntN(25)),
			EventTime: now - rng.Int64N(back)}
		if rng.IntN(3) == 0 {
			l.Type = "click"
		}
		touches = append(touches, l)
		all = append(all, l)
	}
	for i := range 300 {
		l := &attrLine{Type: "order", EventID: fmt.Sprintf("at-order-%d", i), UserID: fmt.Sprintf("at-u%d", rng.IntN(25)),
			CatalogID: []string{"at-cat1", "at-cat2"}[rng.IntN(2)], EventTime: now - rng.Int64N(back), ValueMicros: 1_000_000 * (1 + rng.Int64N(100))}
		orders = append(orders, l)
		all = append(all, l)
	}
	for range 150 { // resent: each counts once
		all = append(all, all[rng.IntN(len(all))])
	}
	rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })

	// Senders: batches of up to 40 lines, each retried until a 200 (the server may be dead
	// or restarting: a retry is safe, every line has its idempotency key).
	var base atomic.Value
	base.Store(srv.base)
	var batches [][]*attrLine
	for len(all) > 0 {
		n := min(len(all), 1+rng.IntN(40))
		batches = append(batches, all[:n])
		all = all[n:]
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(batches) {
					return
				}
				var b strings.Builder
				for _, l := range batches[i] {
					j, _ := json.Marshal(l)
					b.Write(j)
					b.WriteByte('\n')
				}
				for attempt := 0; ; attempt++ {
					resp, err := do(context.Background(), c, "POST", base.Load().(string)+"/events", testAdminKey, map[string]string{"Content-Type": "application/x-ndjson"}, []byte(b.String()))
					if err == nil && resp.status == 200 {
						var br batchResp
						if json.Unmarshal(resp.body, &br) != nil || br.Rejected != 0 {
							t.Errorf("batch %d: %s", i, resp.body)
						}
						break
					}
					if attempt > 2000 {
						t.Errorf("batch %d never accepted: %v %v", i, resp, err)
						return
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	// Kill mid-load three times, at random moments.
	for k := range 3 {
		time.Sleep(time.Duration(100+rng.IntN(400)) * time.Millisecond)
		srv.kill(t)
		t.Logf("kill %d after %d of %d batches handed out", k+1, min(int(next.Load()), len(batches)), len(batches))
		srv = e.start(args...)
		base.Store(srv.base)
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// And once more after everything was acknowledged, before attribution may have caught up.
	srv.kill(t)
	srv = e.start(args...)
	defer srv.stop(t)

	// The model.
	type totals struct{ conversions, value, viewConversions int64 }
	want := map[string]totals{}
	credit := map[string]string{} // order id -> credited impression id, "" for none
	campaignOf := map[string]string{}
	for _, ad := range ads {
		campaignOf[ad.id] = ad.campaign
	}
	for _, o := range orders {
		best := attrCredit(o, touches, adCatalog)
		if best == nil {
			credit[o.EventID] = ""
			continue
		}
		credit[o.EventID] = best.ImpressionID
		w := want[campaignOf[best.AdID]]
		w.conversions++
		w.value += o.ValueMicros
		if best.Type == "impression" {
			w.viewConversions++
		}
		want[campaignOf[best.AdID]] = w
	}
	t.Logf("%d orders, model: %v", len(orders), want)

	type convPoint struct {
		Conversions           int64 `json:"conversions"`
		ConversionValueMicros int64 `json:"conversion_value_micros"`
		ViewConversions       int64 `json:"view_conversions"`
	}
	type convResp struct {
		Series []struct {
			CampaignID string      `json:"campaign_id"`
			Points     []convPoint `json:"points"`
		} `json:"series"`
	}
	path := fmt.Sprintf("/metrics?campaign_ids=at-c1,at-c2&start_time=%d&end_time=%d&interval=1h", now-4*3600, now+3600)
	poll(t, "conversions in /metrics", 60*time.Second, func() []string {
		var r convResp
		if err := getJSON(context.Background(), c, srv.base, path, testAdminKey, &r); err != nil {
			return []string{err.Error()}
		}
		var diffs []string
		for _, s := range r.Series {
			var got totals
			for _, p := range s.Points {
				got.conversions += p.Conversions
				got.value += p.ConversionValueMicros
				got.viewConversions += p.ViewConversions
			}
			if got != want[s.CampaignID] {
				diffs = append(diffs, fmt.Sprintf("%s: got %+v, want %+v", s.CampaignID, got, want[s.CampaignID]))
			}
		}
		return diffs
	})
	var problems []string
	for _, o := range orders {
		var got struct {
			Credited bool `json:"credited"`
			Touch    *struct {
				ID string `json:"id"`
			} `json:"touch"`
		}
		if err := getJSON(context.Background(), c, srv.base, "/api/v1/conversions/"+o.EventID, testAdminKey, &got); err != nil {
			problems = append(problems, o.EventID+": "+err.Error())
			continue
		}
		gotID := ""
		if got.Touch != nil {
			gotID = got.Touch.ID
		}
		if gotID != credit[o.EventID] || got.Credited != (gotID != "") {
			problems = append(problems, fmt.Sprintf("%s: credited %q, want %q", o.EventID, gotID, credit[o.EventID]))
		}
	}
	if len(problems) > 0 {
		t.Fatalf("%d of %d orders wrong:\n%s", len(problems), len(orders), strings.Join(problems[:min(len(problems), 20)], "\n"))
	}
	var cp struct {
		Performance struct {
			ConversionValueMicros int64    `json:"conversion_value_micros"`
			ROAS                  *float64 `json:"roas"`
		} `json:"performance"`
	}
	mustJSON(t, c, "GET", srv.base+"/api/v1/campaigns/at-c1", testAdminKey, nil, 200, &cp)
	if cp.Performance.ConversionValueMicros != want["at-c1"].value {
		t.Fatalf("campaign performance: %+v, want value %d", cp.Performance, want["at-c1"].value)
	}
}
