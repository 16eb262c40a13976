package billing

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/metricstore"
)

var t0 = time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)

// basicSetup: advertiser in UTC, campaign c1 (bid 0.50, daily 1.20), ads a1 and a2 (a2 bids
// 0.40 on its own).
func basicSetup(t *testing.T) *harness {
	cat := newFakeCatalog()
	cat.advertiser(t, "adv1", "UTC")
	cat.campaign(catalog.CampaignInfo{CampaignID: "c1", AdvertiserID: "adv1", CPCBidMicros: 500_000, DailyBudgetMicros: 1_200_000})
	cat.ad("a1", "c1", 0)
	cat.ad("a2", "c1", 400_000)
	clock := newClock(t0)
	return newHarness(t, newMemLog(4, clock.Now), cat, clock)
}

func (h *harness) entry(imp string) ledgerEntry {
	h.t.Helper()
	e, ok := h.ledgerSums().entries["c:"+imp]
	if !ok {
		h.t.Fatalf("no ledger entry for %s", imp)
	}
	return e
}

func TestChargeRules(t *testing.T) {
	h := basicSetup(t)
	bot := h.click("bot", "a1", t0, 0)
	bot.Invalid = event.ReasonBot
	imp := event.Event{Type: event.TypeImpression, Time: t0.UnixMicro(), AdID: "a1", CampaignID: "c1", AdvertiserID: "adv1", ImpressionID: "i1"}
	appendEvents(t, h.log,
		h.click("i1", "a1", t0, 0),                  // the ad's bid: 500000
		h.click("i1", "a1", t0.Add(time.Second), 0), // the same click again: never charged twice
		bot, // invalid: not billable, not in the ledger
		imp, // impressions are not charged
		h.click("i2", "a2", t0.Add(2*time.Second), 0),       // a2's own bid: 400000
		h.click("i3", "a1", t0.Add(3*time.Second), 250_000), // the token's price; 50000 of the day left after it
		h.click("i4", "a1", t0.Add(4*time.Second), 0),       // 50000 left of the day: a partial charge
		h.click("i5", "a1", t0.Add(5*time.Second), 0),       // exhausted: 0
	)
	h.sync()
	// The same click in a later round, and after a restart: still not charged again.
	appendEvents(t, h.log, h.click("i2", "a2", t0.Add(time.Minute), 0))
	h.sync()
	h.restart()
	appendEvents(t, h.log, h.click("i1", "a1", t0.Add(2*time.Minute), 0))
	h.sync()

	for _, c := range []struct {
		imp     string
		charged int64
		reason  zeroReason
	}{
		{"i1", 500_000, reasonNone},
		{"i2", 400_000, reasonNone},
		{"i3", 250_000, reasonNone},
		{"i4", 50_000, reasonDailyBudget},
		{"i5", 0, reasonDailyBudget},
	} {
		e := h.entry(c.imp)
		if e.ChargedMicros != c.charged || zeroReason(e.Reason) != c.reason {
			t.Errorf("%s: charged %d (%s), want %d (%s)", c.imp, e.ChargedMicros, zeroReason(e.Reason), c.charged, c.reason)
		}
	}
	led := h.checkMoney()
	if len(led.entries) != 5 {
		t.Errorf("ledger has %d entries, want 5 (no invalid click, no impression, no duplicate)", len(led.entries))
	}
	if led.total["c1"] != 1_200_000 {
		t.Errorf("spend %d, want exactly the daily budget 1200000", led.total["c1"])
	}
	if st := h.c.Stats(); st.DuplicateClicks != 1 || st.ClicksCharged != 0 { // since the restart
		t.Errorf("stats: %+v", st)
	}
	if s := h.status("c1"); s.ServingStatus != catalog.ServingBudgetExhausted || *s.Budget.RemainingTodayMicros != 0 || s.Budget.SpentTodayMicros != 1_200_000 {
		t.Errorf("status after spending the budget: %+v", s)
	}
}

func TestChargeZeroReasons(t *testing.T) {
	h := basicSetup(t)
	c := h.cat
	c.campaign(catalog.CampaignInfo{CampaignID: "paused", AdvertiserID: "adv1", Status: catalog.StatusPaused, CPCBidMicros: 1})
	c.campaign(catalog.CampaignInfo{CampaignID: "later", AdvertiserID: "adv1", CPCBidMicros: 1, StartTime: t0.Add(time.Hour)})
	c.campaign(catalog.CampaignInfo{CampaignID: "over", AdvertiserID: "adv1", CPCBidMicros: 1, EndTime: t0})
	c.campaign(catalog.CampaignInfo{CampaignID: "free", AdvertiserID: "adv1", CPCBidMicros: 0})
	c.campaign(catalog.CampaignInfo{CampaignID: "total", AdvertiserID: "adv1", CPCBidMicros: 700, TotalBudgetMicros: 1000})
	for _, id := range []string{"paused", "later", "over", "free", "total"} {
		c.ad("ad-"+id, id, 0)
	}
	gone := h.click("x1", "a1", t0, 0)
	gone.CampaignID = "deleted"
	appendEvents(t, h.log,
		h.click("p1", "ad-paused", t0, 0),
		h.click("l1", "ad-later", t0, 0),
		h.click("o1", "ad-over", t0, 0), // end time is exclusive
		h.click("f1", "ad-free", t0, 0),
		h.click("t1", "ad-total", t0, 0),
		h.click("t2", "ad-total", t0, 0),
		h.click("t3", "ad-total", t0, 0),
		gone,
	)
	h.sync()
	for imp, want := range map[string]struct {
		charged int64
		reason  zeroReason
	}{
		"p1": {0, reasonPaused}, "l1": {0, reasonNotStarted}, "o1": {0, reasonEnded}, "f1": {0, reasonZeroPrice},
		"t1": {700, reasonNone}, "t2": {300, reasonTotalBudget}, "t3": {0, reasonTotalBudget}, "x1": {0, reasonUnknownCampaign},
	} {
		if e := h.entry(imp); e.ChargedMicros != want.charged || zeroReason(e.Reason) != want.reason {
			t.Errorf("%s: charged %d (%s), want %d (%s)", imp, e.ChargedMicros, zeroReason(e.Reason), want.charged, want.reason)
		}
	}
	h.checkMoney()
	want := map[string]string{"paused": "paused", "later": "not_started", "over": "ended", "free": "active", "total": "budget_exhausted"}
	for id, w := range want {
		if s := h.status(id); s.ServingStatus != w {
			t.Errorf("%s: serving status %s, want %s", id, s.ServingStatus, w)
		}
	}
}

// TestBudgetEdits: raising a budget revives the campaign the same minute (status and feed);
// lowering it below spend leaves 0 remaining, never negative, and charges nothing more.
func TestBudgetEdits(t *testing.T) {
	h := basicSetup(t)
	appendEvents(t, h.log, h.click("i1", "a1", t0, 0), h.click("i2", "a1", t0, 0), h.click("i3", "a1", t0, 0))
	h.sync()
	if s := h.status("c1"); s.ServingStatus != catalog.ServingBudgetExhausted {
		t.Fatalf("status %s, want budget_exhausted", s.ServingStatus)
	}
	if feedHas(t, h, "c1") {
		t.Fatal("exhausted campaign in the feed")
	}
	h.cat.update("c1", func(c *catalog.CampaignInfo) { c.DailyBudgetMicros = 2_000_000 })
	if s := h.status("c1"); s.ServingStatus != catalog.ServingActive || *s.Budget.RemainingTodayMicros != 800_000 {
		t.Fatalf("after raising the budget: %+v", s)
	}
	if !feedHas(t, h, "c1") {
		t.Fatal("revived campaign not in the feed")
	}
	appendEvents(t, h.log, h.click("i4", "a1", t0.Add(30*time.Second), 0))
	h.sync()
	if e := h.entry("i4"); e.ChargedMicros != 500_000 {
		t.Fatalf("click after raising the budget charged %d", e.ChargedMicros)
	}
	// Lower below what was spent (1.7): remaining is 0, not negative; nothing more is charged.
	h.cat.update("c1", func(c *catalog.CampaignInfo) { c.DailyBudgetMicros = 1_000_000 })
	s := h.status("c1")
	if s.ServingStatus != catalog.ServingBudgetExhausted || *s.Budget.RemainingTodayMicros != 0 || s.Budget.SpentTodayMicros != 1_700_000 {
		t.Fatalf("after lowering the budget: %+v", s)
	}
	appendEvents(t, h.log, h.click("i5", "a1", t0.Add(time.Minute), 0))
	h.sync()
	if e := h.entry("i5"); e.ChargedMicros != 0 {
		t.Fatalf("click over a lowered budget charged %d", e.ChargedMicros)
	}
	// Un-pausing brings a campaign back at once too.
	h.cat.update("c1", func(c *catalog.CampaignInfo) { c.DailyBudgetMicros = 0; c.Status = catalog.StatusPaused })
	if s := h.status("c1"); s.ServingStatus != catalog.ServingPaused || s.Budget.RemainingTodayMicros != nil {
		t.Fatalf("paused unlimited campaign: %+v", s)
	}
	h.cat.update("c1", func(c *catalog.CampaignInfo) { c.Status = catalog.StatusActive })
	if s := h.status("c1"); s.ServingStatus != catalog.ServingActive {
		t.Fatalf("un-paused: %+v", s)
	}
}

func feedHas(t *testing.T, h *harness, id string) bool {
	t.Helper()
	f, err := h.c.Feed(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range f.Campaigns {
		if c.CampaignID == id {
			if c.Pacing <= 0 || c.Pacing > 1 {
				t.Errorf("pacing %v out of (0, 1]", c.Pacing)
			}
			return true
		}
	}
	return false
}

func TestRefund(t *testing.T) {
	h := basicSetup(t)
	h.cat.update("c1", func(c *catalog.CampaignInfo) { c.DailyBudgetMicros = 1_000_000 })
	appendEvents(t, h.log, h.click("i1", "a1", t0, 0), h.click("i2", "a1", t0, 0), h.click("i3", "a1", t0, 0))
	h.sync()
	if got := h.metricSpend(metricstore.LevelCampaign, "c1")["c1"]; got != 1_000_000 {
		t.Fatalf("metric spend %d before the refund", got)
	}
	r, err := h.refund("i1")
	if err != nil || r.RefundedMicros != 500_000 || r.AlreadyRefunded || r.Status != "refunded" || r.CampaignID != "c1" {
		t.Fatalf("refund: %+v, %v", r, err)
	}
	if st := h.c.Stats(); st.Refunds != 1 || st.MicrosRefunded != 500_000 {
		t.Errorf("stats: refunds %d, micros %d", st.Refunds, st.MicrosRefunded)
	}
	// A crash between the refund's commit and its Apply: the journal still gets it in once.
	h.crash()
	h.sync()
	if got := h.metricSpend(metricstore.LevelCampaign, "c1")["c1"]; got != 500_000 {
		t.Fatalf("metric spend %d after the refund, want 500000", got)
	}
	r, err = h.refund("i1")
	if err != nil || r.RefundedMicros != 0 || !r.AlreadyRefunded {
		t.Fatalf("repeated refund: %+v, %v", r, err)
	}
	if _, err := h.refund("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("refund of an unknown click: %v", err)
	}
	// The zero-charge click can be refunded too (nothing to credit).
	if r, err := h.refund("i3"); err != nil || r.RefundedMicros != 0 || r.AlreadyRefunded {
		t.Fatalf("refund of a zero-charge click: %+v, %v", r, err)
	}
	h.sync()
	h.checkMoney()
	// The credit is spendable again: the campaign is back in serving and the next click pays.
	if s := h.status("c1"); s.ServingStatus != catalog.ServingActive || *s.Budget.RemainingTodayMicros != 500_000 {
		t.Fatalf("status after the refund: %+v", s)
	}
	appendEvents(t, h.log, h.click("i4", "a1", t0, 0))
	h.sync()
	if e := h.entry("i4"); e.ChargedMicros != 500_000 {
		t.Fatalf("click after refund charged %d", e.ChargedMicros)
	}
	h.checkMoney()
	c, err := h.c.ClickByID("i1")
	if err != nil || c.Status != "refunded" || c.ChargedMicros != 500_000 || c.RefundedAt == "" || c.Day != "2026-11-21" {
		t.Fatalf("ledger entry: %+v, %v", c, err)
	}
}

// TestRefundThroughRun: Refund is served by the running writer, and fails cleanly when the
// charger is not running.
func TestRefundThroughRun(t *testing.T) {
	h := basicSetup(t)
	appendEvents(t, h.log, h.click("i1", "a1", t0, 0))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.c.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	var r Refund
	var err error
	for time.Now().Before(deadline) {
		if r, err = h.c.Refund(ctx, "i1"); !errors.Is(err, ErrNotFound) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err != nil || r.RefundedMicros != 500_000 {
		t.Fatalf("refund: %+v, %v", r, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := h.c.Refund(context.Background(), "i1"); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("refund after Run returned: %v", err)
	}
	// Run published on its way out.
	if got := h.metricSpend(metricstore.LevelCampaign, "c1")["c1"]; got != 0 {
		t.Fatalf("metric spend %d after charge and refund", got)
	}
	h.checkMoney()
}

// TestMetricStoreAhead: a billing database that does not match the metric store is refused
// rather than published into it.
func TestMetricStoreAhead(t *testing.T) {
	h := basicSetup(t)
	err := h.store.Apply(context.Background(), &metricstore.Commit{Consumer: DefaultConsumer,
		Ranges: []metricstore.OffsetRange{{Partition: JournalPartition, From: 0, To: 5}}})
	if err != nil {
		t.Fatal(err)
	}
	h.c.Close()
	o := h.opts
	o.Metrics = h.ms
	if _, err := Open(context.Background(), o); err == nil {
		t.Fatal("Open accepted a metric store ahead of the billing journal")
	}
}

type recordingPublisher struct {
	mu    sync.Mutex
	feeds []*Feed
}

func (p *recordingPublisher) Publish(_ context.Context, f *Feed) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.feeds = append(p.feeds, f)
	return nil
}

func (p *recordingPublisher) last() *Feed {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.feeds) == 0 {
		return nil
	}
	return p.feeds[len(p.feeds)-1]
}

// TestPublisherAndJournal: Run hands the feed to the Publisher; applied journal entries are
// dropped, and the metric store's journal offset is the billing database's.
func TestPublisherAndJournal(t *testing.T) {
	h := basicSetup(t)
	pub := &recordingPublisher{}
	h.c.opts.Publisher, h.c.opts.FeedInterval = pub, 5*time.Millisecond
	run := h.start()
	appendEvents(t, h.log, h.click("i1", "a1", t0, 0), h.click("i2", "a1", t0, 0), h.click("i3", "a1", t0, 0))
	if err, ended := h.waitCaughtUp(run); ended {
		t.Fatalf("Run ended: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if f := pub.last(); f != nil && len(f.Campaigns) == 0 { // c1 spent its day: out
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if f := pub.last(); f == nil || len(f.Campaigns) != 0 {
		t.Fatalf("published feed after c1's budget is spent: %+v", f)
	}
	run.cancel()
	if err := <-run.done; err != nil {
		t.Fatal(err)
	}
	cp, err := h.store.Checkpoint(context.Background(), DefaultConsumer)
	if err != nil {
		t.Fatal(err)
	}
	if next := h.c.Stats().JournalNext; next == 0 || cp.Offsets[JournalPartition] != int64(next) {
		t.Errorf("metric store journal offset %d, billing journal next %d", cp.Offsets[JournalPartition], next)
	}
	first, err := h.ledger.FirstJournal(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	left := int(h.c.Stats().JournalNext - first)
	if left != 0 {
		t.Errorf("%d applied journal entries left on disk", left)
	}
	h.checkMoney()
}
