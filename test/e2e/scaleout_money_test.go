package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// TestSharedMoney: budgets, a pause and refunds across a split deployment (two ingest nodes,
// two process nodes charging the same campaigns from different partitions, two query nodes),
// with a process node killed mid-load. Each budget is spent to the micro and never beyond; a
// paused campaign charges nothing on either process node; a refund through one query node is
// applied once, repeated through the other; every query node reports the same spend. Run on
// PostgreSQL and, when ADPULSE_TEST_MYSQL_DSN is set, on MariaDB/MySQL.
func TestSharedMoney(t *testing.T) {
	needBinary(t)
	redisAddr, ch := os.Getenv("ADPULSE_TEST_REDIS_ADDR"), os.Getenv("ADPULSE_TEST_CLICKHOUSE_ADDR")
	dbs := map[string]string{"postgres": os.Getenv("ADPULSE_TEST_POSTGRES_DSN")}
	if my := os.Getenv("ADPULSE_TEST_MYSQL_DSN"); my != "" {
		dbs["mysql"] = "mysql://" + my
	}
	for name, dsn := range dbs {
		t.Run(name, func(t *testing.T) {
			if redisAddr == "" || ch == "" || dsn == "" {
				t.Skip("ADPULSE_TEST_REDIS_ADDR, ADPULSE_TEST_CLICKHOUSE_ADDR and the database's DSN not all set: skipping")
			}
			sharedMoney(t, redisAddr, dsn, ch)
		})
	}
}

func sharedMoney(t *testing.T, redisAddr, dsn, ch string) {
	rng := newRand(seed(t), 3)
	e, node, run := splitDeployment(t, redisAddr, dsn, ch)
	procs := []*server{e.start(node("process-1", "process")...), e.start(node("process-2", "process")...)}
	queries := []*server{e.start(node("query-1", "query")...), e.start(node("query-2", "query")...)}
	ing := []*server{e.start(node("ingest-1", "ingest")...), e.start(node("ingest-2", "ingest")...)}
	c := newClient(16)
	ctx := context.Background()
	cat := setupCatalog(t, c, queries[0].base, testAdminKey, run+"-", 1, 3, 4) // 250,000 micros a click
	const price = 250_000
	camps := []string{run + "-adv-0-cmp-0", run + "-adv-0-cmp-1", run + "-adv-0-cmp-2"}
	budget := map[string]int64{camps[0]: 15*price + 100_000, camps[1]: 10 * price} // total, daily
	for i, field := range []string{"total_budget_micros", "daily_budget_micros"} {
		mustJSON(t, c, "PUT", ing[i].base+"/api/v1/campaigns/"+camps[i], testAdminKey, map[string]any{
			"advertiser_id": run + "-adv-0", "name": "Campaign", "status": "active", "cpc_bid_micros": price, field: budget[camps[i]],
		}, 200, nil)
	}
	byCampaign := map[string][]adInfo{}
	for _, ad := range cat.ads {
		byCampaign[ad.campaign] = append(byCampaign[ad.campaign], ad)
	}
	poll(t, "the catalog on every node", 10*time.Second, func() []string {
		for _, srv := range ing {
			if _, err := clickToken(ctx, c, srv.base, testAdminKey, cat.ads[len(cat.ads)-1].id, run+"-probe", ""); err != nil {
				return []string{err.Error()}
			}
		}
		return nil
	})

	clicks := map[string][]string{} // campaign -> impression ids of its distinct clicks
	send := func(round int, camp string, n int) {
		for i := range n {
			ad := byCampaign[camp][rng.IntN(len(byCampaign[camp]))]
			imp := fmt.Sprintf("%s-m%d-%s-%d", run, round, camp, i)
			tok, err := clickToken(ctx, c, ing[rng.IntN(2)].base, testAdminKey, ad.id, imp, "u1")
			if err != nil {
				t.Fatal(err)
			}
			clicks[camp] = append(clicks[camp], imp)
			for _, k := range rng.Perm(2) {
				if resp, err := do(ctx, c, "GET", ing[k].base+"/c/"+tok, "", nil, nil); err != nil || resp.status != http.StatusFound {
					t.Fatalf("click: %v %v", resp, err)
				}
			}
		}
	}
	wantSpend := func() map[string]int64 {
		w := map[string]int64{}
		for _, camp := range camps {
			w[camp] = int64(len(clicks[camp])) * price
			if b, ok := budget[camp]; ok {
				w[camp] = min(w[camp], b)
			}
		}
		return w
	}
	for _, camp := range camps {
		send(0, camp, 12)
	}
	procs[0].kill(t) // mid-load: the other process node takes its partitions over
	for _, camp := range camps {
		send(1, camp, 12)
	}
	procs[0] = e.start(node("process-1", "process")...)
	for _, camp := range camps {
		send(2, camp, 12)
	}
	for _, q := range queries {
		poll(t, "spend on "+q.base+" with budgets run out", 90*time.Second, spendIs(ctx, c, q, wantSpend()))
	}

	// Refunds of campaign 2 through both query nodes: each applied once.
	refund := func(q *server, imp string) (alreadyRefunded bool, micros int64) {
		var out struct {
			Already bool  `json:"already_refunded"`
			Micros  int64 `json:"refunded_micros"`
		}
		mustJSON(t, c, "POST", q.base+"/api/v1/clicks/"+imp+"/refund", testAdminKey, nil, 200, &out)
		return out.Already, out.Micros
	}
	refunded := 0
	for i, imp := range clicks[camps[2]][:8] {
		q := queries[i%2]
		if already, micros := refund(q, imp); already || micros != price {
			t.Fatalf("first refund of %s through %s: already %v, %d micros", imp, q.base, already, micros)
		}
		if already, micros := refund(queries[(i+1)%2], imp); !already || micros != 0 {
			t.Fatalf("repeated refund of %s through the other query node: already %v, %d micros", imp, already, micros)
		}
		refunded++
	}
	// Pause campaign 2 through an ingest node; once in force (2 s), its clicks charge nothing.
	mustJSON(t, c, "PUT", ing[1].base+"/api/v1/campaigns/"+camps[2], testAdminKey, map[string]any{
		"advertiser_id": run + "-adv-0", "name": "Campaign", "status": "paused", "cpc_bid_micros": price,
	}, 200, nil)
	time.Sleep(3 * time.Second)
	paidBefore := int64(len(clicks[camps[2]])) * price
	send(3, camps[2], 10)
	want := wantSpend()
	want[camps[2]] = paidBefore - int64(refunded)*price
	for _, q := range queries {
		poll(t, "spend on "+q.base+" after refunds and a pause", 90*time.Second, spendIs(ctx, c, q, want))
	}
	// The budget reads agree with the ledger on every node that answers them.
	for _, srv := range queries {
		var cp struct {
			Status string `json:"serving_status"`
			Budget struct {
				SpentTotal int64 `json:"spent_total_micros"`
			} `json:"budget"`
		}
		mustJSON(t, c, "GET", srv.base+"/api/v1/campaigns/"+camps[0], testAdminKey, nil, 200, &cp)
		if cp.Budget.SpentTotal != budget[camps[0]] || cp.Status != "budget_exhausted" {
			t.Errorf("campaign with a total budget on %s: %s, %d spent; want budget_exhausted, %d", srv.base, cp.Status, cp.Budget.SpentTotal, budget[camps[0]])
		}
	}
	t.Logf("spend exact on both query nodes: %v", want)
}

// spendIs compares campaign spend in /metrics on srv with want.
func spendIs(ctx context.Context, c *http.Client, srv *server, want map[string]int64) func() []string {
	return func() []string {
		ids := make([]string, 0, len(want))
		for id := range want {
			ids = append(ids, id)
		}
		var m struct {
			Series []struct {
				CampaignID string `json:"campaign_id"`
				Points     []struct {
					SpendMicros int64 `json:"spend_micros"`
				} `json:"points"`
			} `json:"series"`
		}
		path := "/metrics?interval=1d&start_time=" + fmt.Sprint(time.Now().Add(-48*time.Hour).Unix()) + "&campaign_ids=" + strings.Join(ids, ",")
		if err := getJSON(ctx, c, srv.base, path, testAdminKey, &m); err != nil {
			return []string{err.Error()}
		}
		var diffs []string
		for _, s := range m.Series {
			var spend int64
			for _, p := range s.Points {
				spend += p.SpendMicros
			}
			if spend != want[s.CampaignID] {
				diffs = append(diffs, fmt.Sprintf("%s: %d micros spent, want %d", s.CampaignID, spend, want[s.CampaignID]))
			}
		}
		return diffs
	}
}
