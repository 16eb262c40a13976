package sivt

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/metricstore"
)

var t0 = time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)

// TestFloodCreditedBack: a user's clicks are charged as they come; the eleventh within a
// minute fires flood_user, which flags it and, late, the ten before it. Every one of them is
// refunded exactly once, listed in the advertiser's credit trail, explained per click, and
// moved from clicks to invalid_clicks in the metric store; a person's clicks are untouched.
func TestFloodCreditedBack(t *testing.T) {
	p := newPipeline(t, t0, DefaultRules())
	var evs []event.Event
	for i := range 15 {
		at := t0.Add(time.Duration(i) * 3 * time.Second)
		imp := fmt.Sprintf("f%d", i)
		evs = append(evs, impEv(at, "ad-2", imp, "bot", "81.2.3.4", "dev-b"), clickEv(at.Add(1500*time.Millisecond), "ad-2", imp, "bot", "81.2.3.4", "dev-b"))
	}
	for i := range 3 {
		at := t0.Add(time.Duration(i) * 10 * time.Second)
		imp := fmt.Sprintf("h%d", i)
		evs = append(evs, impEv(at, "ad-4", imp, "alice", "92.1.1.1", "dev-a"), clickEv(at.Add(4*time.Second), "ad-4", imp, "alice", "92.1.1.1", "dev-a"))
	}
	sortByTime(evs)
	p.send(evs...)
	p.settle()

	for i := range 15 {
		c, err := p.charger.ClickByID(fmt.Sprintf("f%d", i))
		if err != nil || c.Status != "refunded" || c.ChargedMicros != bid {
			t.Errorf("flood click %d: %+v, %v; want refunded after a charge of %d", i, c, err, bid)
		}
		x, err := p.stage.Explain("c:" + fmt.Sprintf("f%d", i))
		if err != nil || x == nil || x.Reason != "flood_user" || x.Late != (i < 10) {
			t.Fatalf("flood click %d explained as %+v, %v", i, x, err)
		}
		if i < 10 && (x.TriggeredBy != "f10" || x.Evidence.Count != 11 || x.Evidence.Limit != 10 || x.Evidence.Source != "user_id=bot") {
			t.Errorf("late verdict of click %d: %+v", i, x)
		}
	}
	for i := range 3 {
		if c, err := p.charger.ClickByID(fmt.Sprintf("h%d", i)); err != nil || c.Status != "charged" {
			t.Errorf("person's click %d: %+v, %v", i, c, err)
		}
		if x, err := p.stage.Explain("c:" + fmt.Sprintf("h%d", i)); err != nil || x != nil {
			t.Errorf("person's click %d has a verdict: %+v, %v", i, x, err)
		}
	}
	credits, next, err := p.stage.Credits("adv-0", 100, 0)
	if err != nil || next != 0 || len(credits) != 15 {
		t.Fatalf("credits: %d, next %d, %v", len(credits), next, err)
	}
	for i, c := range credits {
		if c.Status != "credited" || c.CreditedMicros != bid || c.Reason != "flood_user" || c.AdvertiserID != "adv-0" {
			t.Errorf("credit %d: %+v", i, c)
		}
		if i > 0 && c.Seq >= credits[i-1].Seq {
			t.Errorf("credits not newest first: %d after %d", c.Seq, credits[i-1].Seq)
		}
	}
	// Pages: 6 + 6 + 3, each continuing where the last ended.
	seen := 0
	for before := uint64(0); ; {
		page, nb, err := p.stage.Credits("adv-0", 6, before)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range page {
			if c.Seq != credits[seen].Seq {
				t.Fatalf("page entry %d is seq %d, want %d", seen, c.Seq, credits[seen].Seq)
			}
			seen++
		}
		if nb == 0 {
			break
		}
		before = nb
	}
	if seen != 15 {
		t.Errorf("paging saw %d credits", seen)
	}

	var last metricstore.Counts
	defer func() {
		if t.Failed() {
			t.Logf("ad-2 counts: %v; aggregate %+v", last, p.agg.Stats())
		}
	}()
	want := metricstore.Counts{Impressions: 15, Clicks: 0, InvalidClicks: 15, InvalidByReason: map[event.Reason]int64{event.ReasonFloodUser: 15}}
	eventually(t, "the moves in /metrics", func() bool {
		c := p.counts(metricstore.LevelAd, "ad-2", t0)
		c.SpendMicros = 0
		last = c
		return c.Equal(&want)
	})
	eventually(t, "spend net of refunds", func() bool {
		return p.counts(metricstore.LevelAd, "ad-2", t0).SpendMicros == 0 && p.counts(metricstore.LevelAd, "ad-4", t0).SpendMicros == 3*bid
	})
	if c := p.counts(metricstore.LevelAd, "ad-4", t0); c.Clicks != 3 || c.InvalidClicks != 0 {
		t.Errorf("person's ad: %v", c)
	}
	st := p.stage.Stats()
	if st.Flagged[event.ReasonFloodUser] != 15 || st.Late != 10 || st.Credits != 15 || st.MicrosCredited != 15*bid {
		t.Errorf("stats: %+v", st)
	}
}

// TestCreditWaitsForCharge: the stage judges a click before billing has charged it; the
// credit stays pending and is settled once billing catches up.
func TestCreditWaitsForCharge(t *testing.T) {
	r := DefaultRules()
	r.NoImpression = true
	p := newPipeline(t, t0, r)
	p.stop() // billing and the stage start again below, billing later
	p.send(impEv(t0, "ad-1", "i0", "u", "81.1.1.1", "d"), clickEv(t0.Add(time.Second), "ad-1", "i1-no-imp", "u2", "81.1.1.2", "d2"))
	p.clk.Set(t0.Add(5 * time.Second))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var err error
	if p.charger, err = openCharger(ctx, p); err != nil {
		t.Fatal(err)
	}
	stage, err := Open(ctx, Options{Dir: "ivt", FS: p.fs, Log: p.log, Metrics: p.metrics, Refunder: BillingRefunder(p.charger),
		Rules: r, Now: p.clk.Now, PollInterval: 2 * time.Millisecond, RefundInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer stage.Close()
	go stage.Run(ctx)
	eventually(t, "the verdict", func() bool { return stage.Stats().Flagged[event.ReasonNoImpression] == 1 })
	time.Sleep(50 * time.Millisecond)
	if st := stage.Stats(); st.CreditsPending != 1 || st.Credits != 0 {
		t.Fatalf("credit settled before the click was charged: %+v", st)
	}
	go p.charger.Run(ctx)
	eventually(t, "the credit", func() bool { return stage.Stats().Credits == 1 })
	c, err := p.charger.ClickByID("i1-no-imp")
	if err != nil || c.Status != "refunded" {
		t.Fatalf("click: %+v, %v", c, err)
	}
	cancel()
	p.charger.Close()
}

// lossyStore applies a commit and then reports failure for the first few (the answer lost,
// as after a timeout), or fails before applying: the stage must retry, find out from the
// fence what went in, and move every click exactly once.
type lossyStore struct {
	metricstore.Store
	mu            sync.Mutex
	applyThenFail int
	failBefore    int
}

func (l *lossyStore) Apply(ctx context.Context, c *metricstore.Commit) error {
	l.mu.Lock()
	before, after := l.failBefore > 0, l.applyThenFail > 0
	if before {
		l.failBefore--
	} else if after {
		l.applyThenFail--
	}
	l.mu.Unlock()
	if before {
		return errors.New("store unavailable")
	}
	if err := l.Store.Apply(ctx, c); err != nil {
		return err
	}
	if after {
		return context.DeadlineExceeded
	}
	return nil
}

// TestMovesOnceDespiteLostApplies: metric store answers lost after the commit went in, and
// failures before it, do not double or drop the moves of flagged clicks.
func TestMovesOnceDespiteLostApplies(t *testing.T) {
	p := newPipeline(t, t0, DefaultRules())
	p.stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var err error
	if p.charger, err = openCharger(ctx, p); err != nil {
		t.Fatal(err)
	}
	defer p.charger.Close()
	go p.charger.Run(ctx)
	store := &lossyStore{Store: p.metrics, applyThenFail: 3, failBefore: 2}
	stage, err := Open(ctx, Options{Dir: "ivt-lossy", FS: p.fs, Log: p.log, Metrics: store, Refunder: BillingRefunder(p.charger),
		Rules: DefaultRules(), Now: p.clk.Now, PollInterval: 2 * time.Millisecond, RefundInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer stage.Close()
	go stage.Run(ctx)
	// Four floods, sent apart so that each round's moves are a journal entry of their own.
	for f := range 4 {
		for i := range 12 {
			at := t0.Add(time.Duration(f)*2*time.Minute + time.Duration(i)*time.Second)
			imp := fmt.Sprintf("f%d-%d", f, i)
			p.send(impEv(at, "ad-3", imp, fmt.Sprint("bot", f), "81.9.9.9", "dev"), clickEv(at.Add(1500*time.Millisecond), "ad-3", imp, fmt.Sprint("bot", f), "81.9.9.9", "dev"))
		}
		p.clk.Set(p.clk.Now().Add(2 * time.Second))
		eventually(t, "the flood's verdicts", func() bool { return stage.Stats().Flagged[event.ReasonFloodUser] == int64(12*(f+1)) })
	}
	eventually(t, "every move applied", func() bool { st := stage.Stats(); return st.JournalApplied == st.JournalNext })
	c := p.counts(metricstore.LevelAd, "ad-3", t0)
	if c.Clicks != -48 || c.InvalidByReason[event.ReasonFloodUser] != 48 || c.InvalidClicks != 48 {
		t.Fatalf("moves in the store: %v, want 48 clicks moved once each", c)
	}
	store.mu.Lock()
	defer store.mu.Unlock()
	if store.applyThenFail != 0 || store.failBefore != 0 || stage.Stats().MetricApplyErrors == 0 {
		t.Errorf("the faults were not all exercised: %d lost answers and %d failures left, %d errors seen",
			store.applyThenFail, store.failBefore, stage.Stats().MetricApplyErrors)
	}
}
