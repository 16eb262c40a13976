package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestSharedAttribution runs attribution in the scale-out deployment: two ingest nodes, two
// process nodes sharing the partitions (kfake), a query node, over Redis, PostgreSQL and
// ClickHouse. Touches and orders are shuffled (many touches arrive after the orders they
// win), resent, and spread over both ingest nodes; a process node is killed with SIGKILL
// while they arrive (the other takes its partitions over and rebuilds their attribution
// from the log) and started again. Every campaign's conversions, value and view conversions
// in /metrics on the query node must equal attrCredit's exactly.
func TestSharedAttribution(t *testing.T) {
	needBinary(t)
	redisAddr, pg, ch := os.Getenv("ADPULSE_TEST_REDIS_ADDR"), os.Getenv("ADPULSE_TEST_POSTGRES_DSN"), os.Getenv("ADPULSE_TEST_CLICKHOUSE_ADDR")
	if redisAddr == "" || pg == "" || ch == "" {
		t.Skip("ADPULSE_TEST_REDIS_ADDR, ADPULSE_TEST_POSTGRES_DSN and ADPULSE_TEST_CLICKHOUSE_ADDR not all set: skipping the shared attribution test")
	}
	rng := newRand(seed(t), 43)
	e, node, run := splitDeployment(t, redisAddr, pg, ch)
	procs := []*server{e.start(node("process-1", "process")...), e.start(node("process-2", "process")...)}
	query := e.start(node("query-1", "query")...)
	ing := []string{e.start(node("ingest-1", "ingest")...).base, e.start(node("ingest-2", "ingest")...).base}
	c := newClient(8)
	ctx := context.Background()

	type adDef struct{ id, campaign, advertiser, catalog string }
	p := run + "-"
	ads := []adDef{{p + "at-1", p + "at-c1", p + "at-a1", "at-cat1"}, {p + "at-2", p + "at-c1", p + "at-a1", "at-cat2"}, {p + "at-3", p + "at-c2", p + "at-a2", "at-cat1"}, {p + "at-4", p + "at-c3", p + "at-a2", "at-cat2"}}
	adCatalog := map[string]string{}
	campaignOf := map[string]string{}
	for _, ad := range ads {
		mustJSON(t, c, "PUT", query.base+"/api/v1/advertisers/"+ad.advertiser, testAdminKey, map[string]any{"name": ad.advertiser}, 200, nil)
		mustJSON(t, c, "PUT", query.base+"/api/v1/campaigns/"+ad.campaign, testAdminKey, map[string]any{
			"advertiser_id": ad.advertiser, "name": ad.campaign, "status": "active", "cpc_bid_micros": 100_000, "daily_budget_micros": 0, "total_budget_micros": 0}, 200, nil)
		mustJSON(t, c, "PUT", query.base+"/api/v1/ads/"+ad.id, testAdminKey, map[string]any{"campaign_id": ad.campaign, "landing_url": "https://shop.example/" + ad.id, "catalog_id": ad.catalog}, 200, nil)
		adCatalog[ad.id], campaignOf[ad.id] = ad.catalog, ad.campaign
	}
	now := time.Now().Unix()
	var touches, orders, all []*attrLine
	for i := range 800 {
		ad := ads[rng.IntN(len(ads))]
		l := &attrLine{Type: "impression", AdID: ad.id, ImpressionID: fmt.Sprintf("%sat-imp-%d", p, i), UserID: fmt.Sprintf("%su%d", p, rng.IntN(30)),
			EventTime: now - rng.Int64N(3*3600)}
		if rng.IntN(3) == 0 {
			l.Type = "click"
		}
		touches = append(touches, l)
		all = append(all, l)
	}
	for i := range 250 {
		l := &attrLine{Type: "order", EventID: fmt.Sprintf("%sat-order-%d", p, i), UserID: fmt.Sprintf("%su%d", p, rng.IntN(30)),
			CatalogID: []string{"at-cat1", "at-cat2"}[rng.IntN(2)], EventTime: now - rng.Int64N(3*3600), ValueMicros: 1_000_000 * (1 + rng.Int64N(100))}
		orders = append(orders, l)
		all = append(all, l)
	}
	for range 100 { // resent: each counts once
		all = append(all, all[rng.IntN(len(all))])
	}
	rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	// Wait for the ingest nodes to know the last ad (catalog change feed).
	poll(t, "the catalog on the ingest nodes", 10*time.Second, func() []string {
		for _, base := range ing {
			if _, err := clickToken(ctx, c, base, testAdminKey, ads[len(ads)-1].id, p+"probe", ""); err != nil {
				return []string{err.Error()}
			}
		}
		return nil
	})

	var batches [][]*attrLine
	for len(all) > 0 {
		n := min(len(all), 1+rng.IntN(30))
		batches = append(batches, all[:n])
		all = all[n:]
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range 4 {
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
					resp, err := do(ctx, c, "POST", ing[(w+attempt)%2]+"/events", testAdminKey, map[string]string{"Content-Type": "application/x-ndjson"}, []byte(b.String()))
					if err == nil && resp.status == 200 {
						var br batchResp
						if json.Unmarshal(resp.body, &br) != nil || br.Rejected != 0 {
							t.Errorf("batch %d: %s", i, resp.body)
						}
						break
					}
					if attempt > 500 {
						t.Errorf("batch %d never accepted: %v %v", i, resp, err)
						return
					}
					time.Sleep(20 * time.Millisecond)
				}
				time.Sleep(25 * time.Millisecond) // spread over the kill
			}
		}()
	}
	time.Sleep(time.Duration(150+rng.IntN(200)) * time.Millisecond)
	procs[0].kill(t)
	t.Logf("process-1 killed after %d of %d batches handed out", min(int(next.Load()), len(batches)), len(batches))
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	type totals struct{ conversions, value, viewConversions int64 }
	want := map[string]totals{}
	for _, o := range orders {
		best := attrCredit(o, touches, adCatalog)
		if best == nil {
			continue
		}
		w := want[campaignOf[best.AdID]]
		w.conversions++
		w.value += o.ValueMicros
		if best.Type == "impression" {
			w.viewConversions++
		}
		want[campaignOf[best.AdID]] = w
	}
	t.Logf("%d orders, model: %v", len(orders), want)
	type convResp struct {
		Series []struct {
			CampaignID string `json:"campaign_id"`
			Points     []struct {
				Conversions           int64 `json:"conversions"`
				ConversionValueMicros int64 `json:"conversion_value_micros"`
				ViewConversions       int64 `json:"view_conversions"`
			} `json:"points"`
		} `json:"series"`
	}
	path := fmt.Sprintf("/metrics?campaign_ids=%sat-c1,%sat-c2,%sat-c3&start_time=%d&end_time=%d&interval=1h", p, p, p, now-4*3600, now+3600)
	exact := func() []string {
		var r convResp
		if err := getJSON(ctx, c, query.base, path, testAdminKey, &r); err != nil {
			return []string{err.Error()}
		}
		var diffs []string
		for _, s := range r.Series {
			var got totals
			for _, pt := range s.Points {
				got.conversions += pt.Conversions
				got.value += pt.ConversionValueMicros
				got.viewConversions += pt.ViewConversions
			}
			if got != want[s.CampaignID] {
				diffs = append(diffs, fmt.Sprintf("%s: got %+v, want %+v", s.CampaignID, got, want[s.CampaignID]))
			}
		}
		return diffs
	}
	poll(t, "conversions on the query node after a process node was killed", 90*time.Second, exact)
	// The killed node comes back: partitions move to it again, and it rebuilds them.
	procs[0] = e.start(node("process-1", "process")...)
	time.Sleep(8 * time.Second) // a rebalance
	poll(t, "conversions on the query node after the process node came back", 60*time.Second, exact)
}
