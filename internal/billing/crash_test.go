package billing

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/testseed"

	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog/locallog"
)

// testSeed is the repository's seed convention (internal/testseed).
func testSeed(t *testing.T) uint64 { return testseed.Seed(t) }

func openLocalLog(t *testing.T, partitions int) *locallog.Log {
	l, err := locallog.Open(locallog.Options{Dir: t.TempDir(), Partitions: partitions, Retention: -1})
	if err != nil {
		t.Fatalf("open locallog: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// running is a Run in the background.
type running struct {
	cancel context.CancelFunc
	done   chan error
}

func (h *harness) start() *running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	c := h.c
	go func() { r.done <- c.Run(ctx) }()
	return r
}

// waitCaughtUp waits until everything in the log is committed and published, or Run ends.
// It returns Run's error and true if Run ended.
func (h *harness) waitCaughtUp(r *running) (error, bool) {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-r.done:
			return err, true
		default:
		}
		st := h.c.Stats()
		caught := st.JournalApplied == st.JournalNext
		for _, p := range st.Partitions {
			caught = caught && p.Lag == 0
		}
		if caught {
			return nil, false
		}
		time.Sleep(2 * time.Millisecond)
	}
	h.t.Fatalf("charger did not catch up: %+v", h.c.Stats())
	return nil, false
}

// TestConcurrentClicks: hundreds of goroutines append clicks (and duplicates) while the
// charger runs; spend lands exactly on each budget, never above, each click once.
func TestConcurrentClicks(t *testing.T) {
	seed := testSeed(t)
	cat := newFakeCatalog()
	cat.advertiser(t, "adv1", "America/New_York")
	cat.advertiser(t, "adv2", "Asia/Kolkata")
	cat.campaign(catalog.CampaignInfo{CampaignID: "c1", AdvertiserID: "adv1", CPCBidMicros: 100_000, DailyBudgetMicros: 7_777_777})
	cat.campaign(catalog.CampaignInfo{CampaignID: "c2", AdvertiserID: "adv2", CPCBidMicros: 250_000, TotalBudgetMicros: 3_333_333})
	for i := range 20 {
		cat.ad(fmt.Sprintf("c1-ad%d", i), "c1", 0)
		cat.ad(fmt.Sprintf("c2-ad%d", i), "c2", 0)
	}
	clock := newClock(t0)
	h := newHarness(t, openLocalLog(t, 8), cat, clock)
	run := h.start()

	const goroutines, perG = 300, 4
	var wg sync.WaitGroup
	dups := make([]int, goroutines)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(g)))
			for j := range perG {
				camp := []string{"c1", "c2"}[rng.IntN(2)]
				ev := h.click(fmt.Sprintf("g%d-%d", g, j), fmt.Sprintf("%s-ad%d", camp, rng.IntN(20)), t0.Add(time.Duration(rng.IntN(600))*time.Second), 0)
				if camp == "c2" {
					ev.PriceMicros = 1 + rng.Int64N(300_000)
				}
				appendEvents(t, h.log, ev)
				if rng.IntN(4) == 0 { // a retry that slipped past dedup, a little later: must not charge again
					time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
					appendEvents(t, h.log, ev)
					dups[g]++
				}
			}
		}()
	}
	wg.Wait()
	if err, ended := h.waitCaughtUp(run); ended {
		t.Fatalf("Run ended: %v", err)
	}
	run.cancel()
	if err := <-run.done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	led := h.checkMoney()
	if led.total["c1"] != 7_777_777 || led.total["c2"] != 3_333_333 {
		t.Errorf("spend c1 %d (budget 7777777), c2 %d (budget 3333333): want exactly the budgets", led.total["c1"], led.total["c2"])
	}
	if len(led.entries) != goroutines*perG {
		t.Errorf("%d ledger entries, want one per click: %d", len(led.entries), goroutines*perG)
	}
	totalDups := 0
	for _, d := range dups {
		totalDups += d
	}
	if st := h.c.Stats(); st.DuplicateClicks != int64(totalDups) || st.MicrosCharged != 7_777_777+3_333_333 {
		t.Errorf("stats: %d duplicates (want %d), %d micros charged", st.DuplicateClicks, totalDups, st.MicrosCharged)
	}
}

var errCrash = errors.New("crash")

// TestCrashRecovery kills the charger at random points (before and after the Pebble commit,
// before and after the metric store Apply, and at random moments with unsynced writes
// dropped), makes the metric store fail Applies before and after committing them, refunds at
// random, restarts from disk each time, and checks the money and views invariants at the end.
func TestCrashRecovery(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 1))     // the test's own choices
	hookRng := rand.New(rand.NewPCG(seed, 3)) // crash points, drawn by the charger's goroutines
	var hookMu sync.Mutex
	chance := func(p float64) bool {
		hookMu.Lock()
		defer hookMu.Unlock()
		return hookRng.Float64() < p
	}

	cat := newFakeCatalog()
	cat.advertiser(t, "adv1", "UTC")
	cat.advertiser(t, "adv2", "Asia/Kolkata")
	cat.campaign(catalog.CampaignInfo{CampaignID: "c1", AdvertiserID: "adv1", CPCBidMicros: 100_000, DailyBudgetMicros: 5_000_000})
	cat.campaign(catalog.CampaignInfo{CampaignID: "c2", AdvertiserID: "adv1", CPCBidMicros: 100_000, TotalBudgetMicros: 2_000_000})
	cat.campaign(catalog.CampaignInfo{CampaignID: "c3", AdvertiserID: "adv2", CPCBidMicros: 99_999, DailyBudgetMicros: 1_234_567})
	camps := []string{"c1", "c2", "c3"}
	for _, c := range camps {
		for i := range 5 {
			cat.ad(fmt.Sprintf("%s-ad%d", c, i), c, 0)
		}
	}
	clock := newClock(t0)
	h := newHarness(t, openLocalLog(t, 4), cat, clock)
	var crashProb float64
	h.opts.hooks = &testHooks{}
	for _, f := range []*func() error{&h.opts.hooks.beforeCommit, &h.opts.hooks.afterCommit, &h.opts.hooks.beforeApply, &h.opts.hooks.afterApply} {
		*f = func() error {
			if chance(crashProb) {
				return errCrash
			}
			return nil
		}
	}
	h.ms.rng = rand.New(rand.NewPCG(seed, 2))
	h.restart() // take the hooks

	type viewKey struct{ user, cat string }
	views := map[viewKey]int64{}
	clicks := map[string]bool{} // valid click keys appended
	var imps []string
	var sent []event.Event     // valid clicks appended, to be appended again later
	var sentImps []event.Event // impressions appended, to be appended again (a retried append)
	n := 0
	newEvents := func(count int) []event.Event {
		var evs []event.Event
		for range count {
			n++
			c := camps[rng.IntN(len(camps))]
			ad := fmt.Sprintf("%s-ad%d", c, rng.IntN(5))
			at := t0.Add(time.Duration(rng.IntN(3600)) * time.Second)
			imp := fmt.Sprintf("imp%d", n)
			user, catID := fmt.Sprintf("u%d", rng.IntN(7)), fmt.Sprintf("cat%d", rng.IntN(3))
			info, _ := cat.Ad(ad)
			impression := event.Event{Type: event.TypeImpression, Time: at.UnixMicro(), RecvTime: clock.Now().UnixMicro(), AdID: ad, CampaignID: c,
				AdvertiserID: info.AdvertiserID, ImpressionID: imp, UserID: user, CatalogID: catID}
			evs = append(evs, impression)
			sentImps = append(sentImps, impression)
			views[viewKey{user, catID}]++
			if rng.IntN(6) == 0 {
				// The same impression reaches the log again, now or rounds and restarts
				// later: a retry whose first append had an unknown outcome. It is one view.
				again := sentImps[rng.IntN(len(sentImps))]
				again.RecvTime = clock.Now().UnixMicro()
				evs = append(evs, again)
			}
			if rng.IntN(3) > 0 {
				ev := h.click(imp, ad, at, 0)
				if c == "c2" {
					ev.PriceMicros = 1 + rng.Int64N(200_000)
				}
				if rng.IntN(10) == 0 {
					ev.Invalid = event.ReasonExpired
				} else {
					clicks[ev.Key()] = true
					imps = append(imps, imp)
					sent = append(sent, ev)
				}
				evs = append(evs, ev)
				if rng.IntN(8) == 0 {
					evs = append(evs, ev)
				}
				if len(sent) > 0 && rng.IntN(6) == 0 { // an old click again, rounds or restarts later
					evs = append(evs, sent[rng.IntN(len(sent))])
				}
			}
		}
		return evs
	}

	crashes := 0
	for phase := range 14 {
		crashProb = 0.04
		h.ms.failBefore, h.ms.failAfter = 0.1, 0.1
		run := h.start()
		for range 1 + rng.IntN(4) {
			appendEvents(t, h.log, newEvents(5+rng.IntN(30))...)
			if len(imps) > 0 && rng.IntN(2) == 0 {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_, err := h.c.Refund(ctx, imps[rng.IntN(len(imps))])
				cancel()
				if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrNotRunning) && !errors.Is(err, errCrash) {
					t.Fatalf("phase %d: refund: %v", phase, err)
				}
			}
		}
		err, ended := h.waitCaughtUp(run)
		switch {
		case ended && !errors.Is(err, errCrash):
			t.Fatalf("phase %d: Run failed: %v", phase, err)
		case ended:
			crashes++
			h.crash()
		case rng.IntN(2) == 0:
			crashes++
			h.crash() // kill -9 while running: whatever was not synced is gone
		default:
			run.cancel()
			if err := <-run.done; err != nil && !errors.Is(err, errCrash) {
				t.Fatalf("phase %d: Run: %v", phase, err)
			}
			h.restart()
		}
	}

	// Final phase without faults: enough clicks to spend every budget to the last micro.
	crashProb = 0
	h.ms.failBefore, h.ms.failAfter = 0, 0
	run := h.start()
	for range 10 {
		appendEvents(t, h.log, newEvents(40)...)
	}
	for _, c := range camps {
		var evs []event.Event
		for i := range 120 {
			ev := h.click(fmt.Sprintf("final-%s-%d", c, i), c+"-ad0", t0.Add(time.Hour), 0)
			clicks[ev.Key()] = true
			evs = append(evs, ev)
		}
		appendEvents(t, h.log, evs...)
	}
	if err, ended := h.waitCaughtUp(run); ended {
		t.Fatalf("final Run ended: %v", err)
	}
	run.cancel()
	if err := <-run.done; err != nil {
		t.Fatalf("final Run: %v", err)
	}
	t.Logf("%d crashes, %d clean restarts, %d valid clicks", crashes, 14-crashes, len(clicks))

	led := h.checkMoney()
	for c, budget := range map[string]int64{"c1": 5_000_000, "c2": 2_000_000, "c3": 1_234_567} {
		if led.total[c] != budget {
			t.Errorf("%s: spend %d, want exactly the budget %d", c, led.total[c], budget)
		}
	}
	if len(led.entries) != len(clicks) {
		t.Errorf("%d ledger entries for %d distinct valid clicks", len(led.entries), len(clicks))
	}
	for k := range led.entries {
		if !clicks[k] {
			t.Errorf("ledger entry %s for no valid click", k)
		}
	}
	for k, want := range views {
		got, err := h.c.UserViews(context.Background(), k.user, t0)
		if err != nil {
			t.Fatal(err)
		}
		if got[k.cat] != want {
			t.Errorf("views of %s/%s: %d, want %d", k.user, k.cat, got[k.cat], want)
		}
	}
}
