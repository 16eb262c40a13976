package e2e

// Budget exact under kill -9: campaigns with small daily or total budgets get several times
// more unique clicks than they can pay for, concurrently, while the server is killed during
// charging; at the end each budget is spent to the micro, never beyond, the ledger adds up to
// the spend, /metrics agrees, and exhausted campaigns leave the serving feed until their budget
// is raised.

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
)

// bcamp is one campaign of the budget test.
type bcamp struct {
	id           string
	bid          int64
	daily, total int64 // 0: unlimited
	ads          []adInfo
	adBid        map[string]int64 // the ad's bid (its override, else the campaign's)
	decided      int64            // spent by the clicks of earlier waves: charged for good
	raises       int              // budget raises so far: each may end with a partial charge
	demand       int64            // sum of the prices of the unique valid clicks of this wave
	clicks       []*bclick        // of every wave
}

// budget is what the campaign can spend today: the daily budget, less if the total is less;
// 0 when unlimited.
func (c *bcamp) budget() int64 {
	switch {
	case c.daily > 0 && c.total > 0:
		return min(c.daily, c.total)
	case c.daily > 0:
		return c.daily
	}
	return c.total
}

// spend is what a sequential charger spends on the campaign's clicks, whatever their order:
// each charges min(price, what is left), so a wave adds min(demand, what was left).
func (c *bcamp) spend() int64 {
	if b := c.budget(); b > 0 {
		return c.decided + min(c.demand, max(b-c.decided, 0))
	}
	return c.decided + c.demand
}

func (c *bcamp) exhausted() bool { return c.budget() > 0 && c.spend() >= c.budget() }

func (c *bcamp) body(adv string) map[string]any {
	return map[string]any{"advertiser_id": adv, "name": "Budget " + c.id, "status": "active",
		"cpc_bid_micros": c.bid, "daily_budget_micros": c.daily, "total_budget_micros": c.total}
}

// bclick is one unique valid click of the budget test.
type bclick struct {
	imp   string
	ad    adInfo
	price int64 // what it must be priced at: the token's or line's cpc_micros, else the ad's bid
}

// campaignJSON is GET /api/v1/campaigns/{id}.
type campaignJSON struct {
	ID            string `json:"id"`
	AdvertiserID  string `json:"advertiser_id"`
	Name          string `json:"name"`
	ServingStatus string `json:"serving_status"`
	Budget        struct {
		Day                  string `json:"day"`
		SpentTodayMicros     int64  `json:"spent_today_micros"`
		RemainingTodayMicros *int64 `json:"remaining_today_micros"`
		SpentTotalMicros     int64  `json:"spent_total_micros"`
	} `json:"budget"`
}

// ledgerJSON is GET /api/v1/clicks/{impression_id}.
type ledgerJSON struct {
	ImpressionID  string `json:"impression_id"`
	CampaignID    string `json:"campaign_id"`
	AdID          string `json:"ad_id"`
	AdvertiserID  string `json:"advertiser_id"`
	EventTime     string `json:"event_time"`
	Day           string `json:"day"`
	Status        string `json:"status"`
	PriceMicros   int64  `json:"price_micros"`
	ChargedMicros int64  `json:"charged_micros"`
	Reason        string `json:"reason"`
}

type feedJSON struct {
	Campaigns []feedEntry `json:"campaigns"`
}

type feedEntry struct {
	CampaignID   string  `json:"campaign_id"`
	CPCBidMicros int64   `json:"cpc_bid_micros"`
	Pacing       float64 `json:"pacing"`
}

// middayZone returns a fixed-offset zone where it is now between 12:00 and 13:00, so that no
// budget day ends during the test.
func middayZone(now time.Time) string {
	switch o := 12 - now.UTC().Hour(); {
	case o > 0:
		return fmt.Sprintf("Etc/GMT-%d", o) // POSIX sign: Etc/GMT-5 is UTC+5
	case o < 0:
		return fmt.Sprintf("Etc/GMT+%d", -o)
	}
	return "Etc/UTC"
}

// budgetLoad makes the calls of the budget test.
type budgetLoad struct {
	mr      *mrun
	seq     atomic.Int64
	botImp  []string         // impressions only bots clicked: never charged
	botByAd map[string]int64 // unique bot clicks per ad
}

// clicks returns the calls of unique valid clicks on camps until each campaign's demand
// reaches target(campaign), in random order, with repeats and bot clicks.
func (bl *budgetLoad) clicks(t *testing.T, c *http.Client, base string, r *rand.Rand, camps []*bcamp, target func(*bcamp) int64) []*mcall {
	t.Helper()
	type mint struct {
		cl     *mcall
		ad     adInfo
		imp    string
		cpc    int64
		repeat bool
	}
	var calls, pending []*mcall
	var mints []*mint
	var lines []lineRec // click lines, batched below
	for _, cp := range camps {
		target := target(cp)
		for cp.demand < target {
			ad := cp.ads[r.IntN(len(cp.ads))]
			cl := &bclick{imp: fmt.Sprintf("bimp-%d", bl.seq.Add(1)), ad: ad, price: cp.adBid[ad.id]}
			f := fact{typ: event.TypeClick, ad: ad.id}
			switch r.IntN(3) {
			case 0: // GET /c, the token maybe carrying the auction's price
				var cpc int64
				if r.IntN(2) == 0 {
					cpc = int64(100_000 + r.IntN(500_000))
					cl.price = cpc
				}
				f.carried = cpc
				k := bl.mr.l.register(f.key(cl.imp, ""), f)
				m := &mint{ad: ad, imp: cl.imp, cpc: cpc, cl: &mcall{kind: kindClick, keys: []string{k}, landing: ad.landing}}
				m.repeat = r.IntN(4) == 0
				mints = append(mints, m)
				calls = append(calls, m.cl)
			case 1: // POST /click: the ad's bid
				k := bl.mr.l.register(f.key(cl.imp, ""), f)
				body, _ := json.Marshal(map[string]string{"ad_id": ad.id, "impression_id": cl.imp})
				call := &mcall{kind: kindAppClick, path: "/click", body: body, keys: []string{k}, landing: ad.landing,
					hdr: map[string]string{"Content-Type": "application/json"}}
				calls = append(calls, call)
				if r.IntN(4) == 0 {
					calls = append(calls, &mcall{kind: call.kind, path: call.path, body: call.body, keys: call.keys, landing: call.landing, hdr: call.hdr})
				}
			default: // a batch line, maybe with cpc_micros and a recent event_time
				lj := eventLine{Type: "click", AdID: ad.id, ImpressionID: cl.imp}
				if r.IntN(2) == 0 {
					lj.CPCMicros = int64(100_000 + r.IntN(500_000))
					cl.price = lj.CPCMicros
					f.carried = lj.CPCMicros
				}
				if r.IntN(2) == 0 {
					lj.EventTime = time.Now().Add(-time.Duration(r.IntN(50)) * time.Second).Unix()
				}
				b, _ := json.Marshal(lj)
				lr := lineRec{json: b, key: bl.mr.l.register(f.key(cl.imp, ""), f)}
				lines = append(lines, lr)
				if r.IntN(4) == 0 {
					lines = append(lines, lr)
				}
			}
			cp.demand += cl.price
			cp.clicks = append(cp.clicks, cl)
			// Now and then a bot clicks too: on this impression, or on one of its own.
			if r.IntN(8) == 0 {
				imp := cl.imp
				if r.IntN(2) == 0 {
					imp = fmt.Sprintf("bbot-%d", bl.seq.Add(1))
					bl.botImp = append(bl.botImp, imp)
				}
				bl.botByAd[ad.id]++
				bf := fact{typ: event.TypeClick, ad: ad.id, reason: event.ReasonBot}
				k := bl.mr.l.register(bf.key(imp, ""), bf)
				body, _ := json.Marshal(map[string]string{"ad_id": ad.id, "impression_id": imp})
				pending = append(pending, &mcall{kind: kindAppClick, path: "/click", body: body, keys: []string{k}, landing: ad.landing,
					hdr: map[string]string{"Content-Type": "application/json", "User-Agent": botUAs[r.IntN(len(botUAs))]}})
			}
		}
	}
	// Batches of 1-8 click lines, in random order, some lines twice.
	r.Shuffle(len(lines), func(i, j int) { lines[i], lines[j] = lines[j], lines[i] })
	for len(lines) > 0 {
		n := min(len(lines), 1+r.IntN(8))
		calls = append(calls, linesCall(lines[:n]))
		lines = lines[n:]
	}
	// Sign the click URLs, as the ad server would have while serving.
	var wg sync.WaitGroup
	errs := make([]error, len(mints))
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(mints); i += 8 {
				m := mints[i]
				req := map[string]any{"ad_id": m.ad.id, "impression_id": m.imp}
				if m.cpc > 0 {
					req["cpc_micros"] = m.cpc
				}
				body, _ := json.Marshal(req)
				resp, err := do(context.Background(), c, "POST", base+"/api/v1/click-urls", testAdminKey, map[string]string{"Content-Type": "application/json"}, body)
				if err != nil || resp.status != 200 {
					errs[i] = fmt.Errorf("POST /api/v1/click-urls %s: %v %v", body, resp, err)
					continue
				}
				var out struct {
					ClickURL string `json:"click_url"`
				}
				if err := json.Unmarshal(resp.body, &out); err != nil {
					errs[i] = err
					continue
				}
				m.cl.path = out.ClickURL[strings.LastIndex(out.ClickURL, "/c/"):]
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range mints {
		if m.repeat {
			calls = append(calls, &mcall{kind: m.cl.kind, path: m.cl.path, keys: m.cl.keys, landing: m.cl.landing})
		}
	}
	calls = append(calls, pending...)
	r.Shuffle(len(calls), func(i, j int) { calls[i], calls[j] = calls[j], calls[i] })
	return calls
}

// send runs calls with workers, paced over about dur, killing and restarting the server kills
// times on the way. It returns the server that runs at the end.
func (bl *budgetLoad) send(t *testing.T, e *env, srv *server, c *http.Client, args []string, calls []*mcall, dur time.Duration, kills int, rng *rand.Rand, sd uint64, watch func(*server)) *server {
	t.Helper()
	const workers = 16
	mr := bl.mr
	var next atomic.Int64
	var burst atomic.Int64 // calls sent without pause right before a kill, so that it lands mid-charging
	gap := time.Duration(int64(dur) * workers / int64(max(len(calls), 1)))
	for round := 0; ; round++ {
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for w := range workers {
			r := newRand(sd, uint64(7000+100*round+w))
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil && !mr.killed.Load() {
					cl := mr.popRetry()
					if cl == nil {
						i := next.Add(1) - 1
						if i >= int64(len(calls)) {
							return
						}
						cl = calls[i]
					}
					mr.exec(ctx, c, srv.base, cl)
					if burst.Add(-1) < 0 {
						time.Sleep(time.Duration(r.Int64N(int64(2*gap) + 1)))
					}
				}
			}()
		}
		stopWatch := make(chan struct{})
		watchDone := make(chan struct{})
		go func() {
			defer close(watchDone)
			for {
				select {
				case <-stopWatch:
					return
				case <-time.After(20 * time.Millisecond):
					watch(srv)
				}
			}
		}()
		if round == kills {
			wg.Wait()
			close(stopWatch)
			<-watchDone
			cancel()
			mr.probs.check(t, "budget load after the last restart")
			mr.drain(t, c, srv.base)
			return srv
		}
		// Kill when about (round+1)/(kills+2) of the calls went out, so that the last restart
		// still has clicks to charge.
		at := int64(len(calls)*(round+1)/(kills+2) + rng.IntN(len(calls)/(4*(kills+2))+1))
		at = max(at, next.Load()+int64(len(calls)/20))
		for next.Load() < at && next.Load() < int64(len(calls)) {
			time.Sleep(2 * time.Millisecond)
		}
		burst.Store(int64(workers + rng.IntN(2*workers)))
		for deadline := time.Now().Add(50 * time.Millisecond); burst.Load() > 0 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(time.Duration(rng.IntN(5)) * time.Millisecond)
		mr.killed.Store(true)
		srv.kill(t)
		cancel()
		wg.Wait()
		close(stopWatch)
		<-watchDone
		mr.killed.Store(false)
		burst.Store(0)
		c.CloseIdleConnections()
		mr.probs.check(t, fmt.Sprintf("budget load, round %d", round))
		srv = e.start(args...)
		t.Logf("budget round %d: %d of %d calls sent, SIGKILL, %d to retry; restarted (recovery %s)",
			round, min(next.Load(), int64(len(calls))), len(calls), mr.pending(), srv.recovery())
	}
}

func TestBudgetExactUnderKill(t *testing.T) {
	needBinary(t)
	sd := seed(t)
	rng := newRand(sd, 0)
	e := newEnv(t)
	started := time.Now()
	args := []string{"--admin-key", testAdminKey, "--click-secret", testClickSecret}
	srv := e.start(args...)
	c := newClient(16)

	const adv = "badv"
	tz := middayZone(time.Now())
	mustJSON(t, c, "PUT", srv.base+"/api/v1/advertisers/"+adv, testAdminKey, map[string]any{"name": "Budget test", "timezone": tz}, 200, nil)
	m := func(lo, span int) int64 { return int64(lo + rng.IntN(span)) }
	daily := m(1_500_000, 1_500_000)
	camps := []*bcamp{
		{id: "bc-daily-a", bid: m(200_000, 200_000), daily: m(2_000_000, 2_000_000)},
		{id: "bc-daily-b", bid: m(150_000, 200_000), daily: m(1_500_000, 1_500_000)},
		{id: "bc-total", bid: m(250_000, 200_000), total: m(2_000_000, 2_000_000)},
		{id: "bc-both", bid: m(200_000, 200_000), daily: daily, total: daily - m(200_000, 600_000)},
		{id: "bc-free", bid: m(100_000, 100_000)}, // no budget: charges every price
	}
	for _, cp := range camps {
		mustJSON(t, c, "PUT", srv.base+"/api/v1/campaigns/"+cp.id, testAdminKey, cp.body(adv), 200, nil)
		cp.adBid = map[string]int64{}
		for j := range 2 {
			ad := adInfo{id: fmt.Sprintf("%s-ad-%d", cp.id, j), campaign: cp.id, advertiser: adv}
			ad.landing = "https://shop.example/b/" + ad.id
			body := map[string]any{"campaign_id": cp.id, "landing_url": ad.landing}
			cp.adBid[ad.id] = cp.bid
			if j == 1 {
				cp.adBid[ad.id] = m(100_000, 400_000)
				body["cpc_bid_micros"] = cp.adBid[ad.id]
			}
			mustJSON(t, c, "PUT", srv.base+"/api/v1/ads/"+ad.id, testAdminKey, body, 200, nil)
			cp.ads = append(cp.ads, ad)
		}
	}
	byID := map[string]*bcamp{}
	for _, cp := range camps {
		byID[cp.id] = cp
	}

	mr := &mrun{l: &mledger{facts: map[string]fact{}, firstSent: map[string]time.Time{}, acked: map[string]time.Time{}}}
	bl := &budgetLoad{mr: mr, botByAd: map[string]int64{}}
	calls := bl.clicks(t, c, srv.base, rng, camps, func(cp *bcamp) int64 {
		if cp.budget() == 0 {
			return 12 * cp.bid
		}
		return 8 * cp.budget() // well beyond it
	})

	// While the load runs, the spend anyone can read never exceeds a budget and never goes
	// back.
	var watchMu sync.Mutex
	var violations []string
	lastSpent := map[string]int64{}
	watchClient := newClient(4)
	watch := func(s *server) {
		for _, cp := range camps {
			var cj campaignJSON
			if err := getJSON(context.Background(), watchClient, s.base, "/api/v1/campaigns/"+cp.id, testAdminKey, &cj); err != nil {
				continue // killed, or restarting
			}
			b := cj.Budget
			watchMu.Lock()
			if cp.daily > 0 && b.SpentTodayMicros > cp.daily || cp.total > 0 && b.SpentTotalMicros > cp.total {
				violations = append(violations, fmt.Sprintf("%s: spent today %d, total %d over the budgets (daily %d, total %d)", cp.id, b.SpentTodayMicros, b.SpentTotalMicros, cp.daily, cp.total))
			}
			if b.SpentTotalMicros < lastSpent[cp.id] {
				violations = append(violations, fmt.Sprintf("%s: spent total went back from %d to %d", cp.id, lastSpent[cp.id], b.SpentTotalMicros))
			}
			lastSpent[cp.id] = max(lastSpent[cp.id], b.SpentTotalMicros)
			watchMu.Unlock()
		}
	}
	kills := 3
	srv = bl.send(t, e, srv, c, args, calls, 2*time.Second, kills, rng, sd, watch)
	report(t, "budget read while charging", violations)

	// Every valid click must get its ledger entry; then the budgets are spent exactly.
	ledger := map[string]ledgerJSON{}
	caughtUp := waitLedger(t, srv, c, camps, ledger)
	var totalClicks int
	for _, cp := range camps {
		totalClicks += len(cp.clicks)
	}
	t.Logf("every valid click has its ledger entry %v after the last call was acknowledged", caughtUp.Round(time.Millisecond))
	checkBudgets(t, srv, c, camps, ledger, "after the load")
	for _, imp := range bl.botImp {
		resp, err := do(context.Background(), c, "GET", srv.base+"/api/v1/clicks/"+imp, testAdminKey, nil, nil)
		if err != nil || resp.status != http.StatusNotFound {
			t.Errorf("GET /api/v1/clicks/%s (only a bot clicked it): got %v %v, want 404 (never charged)", imp, resp, err)
		}
	}

	// Raise a daily and a total budget: back to active at once, and in the serving feed. What
	// was spent so far is decided for good: clicks charged 0 are not charged again.
	for _, cp := range camps {
		cp.decided, cp.demand = cp.spend(), 0
	}
	ca, ct := byID["bc-daily-a"], byID["bc-total"]
	raiseA, raiseT := m(800_000, 800_000), m(500_000, 500_000)
	ca.daily += raiseA
	ct.total += raiseT
	ca.raises++
	ct.raises++
	for _, x := range []struct {
		cp    *bcamp
		raise int64
	}{{ca, raiseA}, {ct, raiseT}} {
		path := "/api/v1/campaigns/" + x.cp.id
		mustJSON(t, c, "PUT", srv.base+path, testAdminKey, x.cp.body(adv), 200, nil)
		var cj campaignJSON
		mustJSON(t, c, "GET", srv.base+path, testAdminKey, nil, 200, &cj)
		if cj.ServingStatus != "active" || cj.Budget.RemainingTodayMicros == nil || *cj.Budget.RemainingTodayMicros != x.raise {
			t.Errorf("GET %s right after raising its budget by %d: serving_status %q, remaining_today_micros %v; want active with %d left",
				path, x.raise, cj.ServingStatus, fmtPtr(cj.Budget.RemainingTodayMicros), x.raise)
		}
	}
	var feed feedJSON
	mustJSON(t, c, "GET", srv.base+"/api/v1/serving/campaigns", testAdminKey, nil, 200, &feed)
	for _, id := range []string{ca.id, ct.id, "bc-free"} {
		if !slices.ContainsFunc(feed.Campaigns, func(f feedEntry) bool { return f.CampaignID == id }) {
			t.Errorf("GET /api/v1/serving/campaigns right after raising the budgets: %s missing (feed %+v)", id, feed.Campaigns)
		}
	}
	// New clicks on bc-daily-a, well beyond its raise: exhausted again at exactly the new budget.
	more := bl.clicks(t, c, srv.base, rng, []*bcamp{ca}, func(*bcamp) int64 { return 2*raiseA + 600_000 })
	srv = bl.send(t, e, srv, c, args, more, 300*time.Millisecond, 0, rng, sd, func(*server) {})
	waitLedger(t, srv, c, camps, ledger)
	checkBudgets(t, srv, c, camps, ledger, "after raising the budgets")

	// /metrics: clicks (every valid click, charged or not) and spend per ad and minute equal
	// the ledger; invalid clicks are the bot clicks.
	checkSpendMetrics(t, srv, c, camps, ledger, bl.botByAd, adv, started)
	srv.stop(t)
	c.CloseIdleConnections()
	watchClient.CloseIdleConnections()
	t.Logf("budget test: %d unique valid clicks on %d campaigns (%d requests, %d failed at %d kills and were retried), %d impressions clicked only by bots; took %v",
		totalClicks, len(camps), mr.requests.Load(), mr.failedAtKill.Load(), kills, len(bl.botImp), time.Since(started).Round(time.Millisecond))
}

func fmtPtr(p *int64) string {
	if p == nil {
		return "null"
	}
	return fmt.Sprint(*p)
}

// waitLedger polls GET /api/v1/clicks/{impression_id} until every valid click of camps has
// its ledger entry (the charger caught up), and fills ledger.
func waitLedger(t *testing.T, srv *server, c *http.Client, camps []*bcamp, ledger map[string]ledgerJSON) time.Duration {
	t.Helper()
	took := poll(t, "ledger entries of every acknowledged valid click", 30*time.Second, func() []string {
		var missing []string
		for _, cp := range camps {
			for _, cl := range cp.clicks {
				if _, ok := ledger[cl.imp]; ok {
					continue
				}
				var lj ledgerJSON
				if err := getJSON(context.Background(), c, srv.base, "/api/v1/clicks/"+cl.imp, testAdminKey, &lj); err != nil {
					missing = append(missing, err.Error())
					continue
				}
				ledger[cl.imp] = lj
			}
		}
		return missing
	})
	if t.Failed() {
		t.FailNow()
	}
	return took
}

// checkBudgets compares every campaign's budget, status, feed entry and ledger entries with
// what a sequential charger must end with.
func checkBudgets(t *testing.T, srv *server, c *http.Client, camps []*bcamp, ledger map[string]ledgerJSON, when string) {
	t.Helper()
	var feed feedJSON
	mustJSON(t, c, "GET", srv.base+"/api/v1/serving/campaigns", testAdminKey, nil, 200, &feed)
	inFeed := map[string]float64{}
	for _, f := range feed.Campaigns {
		inFeed[f.CampaignID] = f.Pacing
	}
	for _, cp := range camps {
		var cj campaignJSON
		mustJSON(t, c, "GET", srv.base+"/api/v1/campaigns/"+cp.id, testAdminKey, nil, 200, &cj)
		want := cp.spend()
		b := cj.Budget
		var problems []string
		if b.SpentTodayMicros != want || b.SpentTotalMicros != want {
			problems = append(problems, fmt.Sprintf("spent_today_micros %d, spent_total_micros %d, want both %d (demand %d, daily %d, total %d)",
				b.SpentTodayMicros, b.SpentTotalMicros, want, cp.demand, cp.daily, cp.total))
		}
		exhausted := cp.exhausted()
		wantStatus := "active"
		if exhausted {
			wantStatus = "budget_exhausted"
		}
		if cj.ServingStatus != wantStatus {
			problems = append(problems, fmt.Sprintf("serving_status %q, want %q", cj.ServingStatus, wantStatus))
		}
		if p, ok := inFeed[cp.id]; ok == exhausted || ok && (p <= 0 || p > 1) {
			problems = append(problems, fmt.Sprintf("in the serving feed: %v (pacing %v), want %v with pacing in (0,1]", ok, p, !exhausted))
		}
		if cp.budget() > 0 {
			if rem := b.RemainingTodayMicros; rem == nil || *rem != cp.budget()-want {
				problems = append(problems, fmt.Sprintf("remaining_today_micros %s, want %d", fmtPtr(rem), cp.budget()-want))
			}
		}
		// The ledger: one entry per click, priced as sent, never above its price, at most one
		// partial charge, and the charges add up to the spend.
		var sum int64
		partial := 0
		for _, cl := range cp.clicks {
			l := ledger[cl.imp]
			var d []string
			if l.ImpressionID != cl.imp || l.CampaignID != cp.id || l.AdID != cl.ad.id || l.AdvertiserID != cl.ad.advertiser || l.Status != "charged" {
				d = append(d, fmt.Sprintf("entry %+v", l))
			}
			if l.PriceMicros != cl.price {
				d = append(d, fmt.Sprintf("price_micros %d, want %d", l.PriceMicros, cl.price))
			}
			if l.ChargedMicros < 0 || l.ChargedMicros > l.PriceMicros {
				d = append(d, fmt.Sprintf("charged_micros %d outside [0, price %d]", l.ChargedMicros, l.PriceMicros))
			}
			if (l.ChargedMicros < l.PriceMicros) != (l.Reason != "") {
				d = append(d, fmt.Sprintf("charged %d of %d with reason %q", l.ChargedMicros, l.PriceMicros, l.Reason))
			}
			if l.Day != b.Day {
				d = append(d, fmt.Sprintf("day %q, want the campaign's budget day %q", l.Day, b.Day))
			}
			if len(d) > 0 {
				problems = append(problems, fmt.Sprintf("GET /api/v1/clicks/%s: %s", cl.imp, strings.Join(d, "; ")))
			}
			if l.ChargedMicros > 0 && l.ChargedMicros < l.PriceMicros {
				partial++
			}
			sum += l.ChargedMicros
		}
		if sum != b.SpentTotalMicros {
			problems = append(problems, fmt.Sprintf("the ledger's charges add up to %d, spent_total_micros is %d", sum, b.SpentTotalMicros))
		}
		if partial > 1+cp.raises {
			problems = append(problems, fmt.Sprintf("%d partial charges; a sequential charger makes at most one per budget (%d raises)", partial, cp.raises))
		}
		if len(problems) > 0 {
			t.Errorf("%s: GET /api/v1/campaigns/%s:\n  %s", when, cp.id, strings.Join(problems, "\n  "))
		} else {
			t.Logf("%s: %s: %d unique clicks, demand %d, budget %s, spent %d (%d partial charge), %s",
				when, cp.id, len(cp.clicks), cp.demand, budgetString(cp), want, partial, cj.ServingStatus)
		}
	}
}

func budgetString(cp *bcamp) string {
	switch {
	case cp.daily > 0 && cp.total > 0:
		return fmt.Sprintf("daily %d / total %d", cp.daily, cp.total)
	case cp.daily > 0:
		return fmt.Sprintf("daily %d", cp.daily)
	case cp.total > 0:
		return fmt.Sprintf("total %d", cp.total)
	}
	return "unlimited"
}

// checkSpendMetrics polls GET /metrics at every level until clicks and spend per minute equal
// the ledger's, and invalid clicks the bot clicks.
func checkSpendMetrics(t *testing.T, srv *server, c *http.Client, camps []*bcamp, ledger map[string]ledgerJSON, bots map[string]int64, adv string, started time.Time) {
	t.Helper()
	md := newModel()
	for _, cp := range camps {
		for _, cl := range cp.clicks {
			l := ledger[cl.imp]
			at, err := time.Parse(time.RFC3339Nano, l.EventTime)
			if err != nil {
				t.Fatalf("ledger entry of %s: event_time %q: %v", cl.imp, l.EventTime, err)
			}
			md.add(cl.ad, at.Unix()/60, &counts{clk: 1, spend: l.ChargedMicros})
		}
	}
	var ads, cmps []string
	owner := map[string]adInfo{}
	for _, cp := range camps {
		cmps = append(cmps, cp.id)
		for _, ad := range cp.ads {
			ads = append(ads, ad.id)
			owner[ad.id] = ad
		}
	}
	start := started.Add(-3 * time.Minute).Truncate(time.Minute)
	end := time.Now().Add(3 * time.Minute)
	queries := []*metricsQuery{
		{level: lvAd, ids: ads, interval: "1m", step: time.Minute},
		{level: lvCampaign, ids: cmps, interval: "1m", step: time.Minute},
		{level: lvAdvertiser, ids: []string{adv}, interval: "1m", step: time.Minute},
	}
	ownerOf := func(l level, id string) (string, string) {
		if l == lvAd {
			return owner[id].campaign, adv
		}
		if l == lvCampaign {
			return id, adv
		}
		return "", id
	}
	var tops []*topQuery
	for by := range numLevels {
		for _, metric := range []string{"spend_micros", "clicks"} {
			tops = append(tops, &topQuery{by: by, metric: metric, minutes: 30, n: 1000})
		}
	}
	tops = append(tops, &topQuery{by: lvAd, metric: "spend_micros", minutes: 30, n: 1000, campaign: camps[0].id})
	poll(t, "GET /metrics and /metrics/top spend and clicks against the ledger", 20*time.Second, func() []string {
		var diffs []string
		for _, q := range tops {
			path, now := q.path(), time.Now()
			r, err := getTop(context.Background(), c, srv.base, path, testAdminKey, q.by.idKey(), q.metric)
			if err != nil {
				diffs = append(diffs, err.Error())
				continue
			}
			diffs = append(diffs, md.checkTop(q, path, r, now, ownerOf)...)
		}
		for _, q := range queries {
			path := q.path(start, end)
			var r metricsResp
			if err := getJSON(context.Background(), c, srv.base, path, testAdminKey, &r); err != nil {
				diffs = append(diffs, err.Error())
				continue
			}
			var d []string
			if len(r.Series) != len(q.ids) {
				diffs = append(diffs, fmt.Sprintf("GET %s: %d series, want %d", path, len(r.Series), len(q.ids)))
				continue
			}
			for i, id := range q.ids {
				var gotSpend, wantSpend, gotInvalid int64
				for _, p := range r.Series[i].Points {
					w := md.sum(q.level, id, p.Time, p.Time.Add(time.Minute))
					if p.Clicks != w.clk || p.SpendMicros != w.spend {
						d = append(d, fmt.Sprintf("%s %q bucket %s: clicks %d spend_micros %d, want %d %d (from the ledger)",
							q.level.idKey(), id, p.Time.Format(time.RFC3339), p.Clicks, p.SpendMicros, w.clk, w.spend))
					}
					gotSpend += p.SpendMicros
					wantSpend += w.spend
					gotInvalid += p.InvalidClicks
				}
				var wantInvalid int64
				for ad, n := range bots {
					if o := owner[ad]; ad == id || o.campaign == id || o.advertiser == id {
						wantInvalid += n
					}
				}
				if gotSpend != wantSpend {
					d = append(d, fmt.Sprintf("%s %q: spend_micros sums to %d, the ledger to %d", q.level.idKey(), id, gotSpend, wantSpend))
				}
				if gotInvalid != wantInvalid {
					d = append(d, fmt.Sprintf("%s %q: invalid_clicks sum to %d, want the %d bot clicks", q.level.idKey(), id, gotInvalid, wantInvalid))
				}
			}
			diffs = append(diffs, grouped(path, d)...)
		}
		return diffs
	})
	if p, err := url.QueryUnescape(queries[1].path(start, end)); err == nil && !t.Failed() {
		t.Logf("GET %s and the ad and advertiser levels: clicks and spend per minute equal the ledger; so does GET /metrics/top by spend_micros and clicks (%d queries)", p, len(tops))
	}
}
