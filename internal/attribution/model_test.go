package attribution

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/testseed"
)

// testAd is an ad of the model world.
type testAd struct{ id, campaign, advertiser, catalog string }

var modelAds = []testAd{
	{"a1", "c1", "adv1", "cat1"}, {"a2", "c1", "adv1", "cat2"}, {"a3", "c2", "adv1", "cat1"},
	{"a4", "c3", "adv2", "cat1"}, {"a5", "c3", "adv2", "cat2"}, {"a6", "c4", "adv2", "cat3"},
}

// modelWindows: adv1 keeps the defaults; adv2 configured 3 days after a click, 2 hours
// after a view.
func modelWindows(adv string) Windows {
	if adv == "adv2" {
		return Windows{Click: 3 * 24 * time.Hour, View: 2 * time.Hour}
	}
	return DefaultWindows
}

// naiveCredit is the matching rule written the slow, obvious way: among all distinct touches
// of the user on an ad of the catalog, the eligible clicks, else the eligible views; of
// those the latest, ties to the larger key. It returns the credited touch or nil.
func naiveCredit(conv event.Event, touches []event.Event) *event.Event {
	var best *event.Event
	for _, kind := range []event.Type{event.TypeClick, event.TypeImpression} {
		for i := range touches {
			t := &touches[i]
			if t.Type != kind || t.UserID != conv.UserID || t.CatalogID != conv.CatalogID {
				continue
			}
			w := modelWindows(t.AdvertiserID).View
			if kind == event.TypeClick {
				w = modelWindows(t.AdvertiserID).Click
			}
			if conv.Time < t.Time || conv.Time-t.Time >= w.Microseconds() {
				continue
			}
			if best == nil || t.Time > best.Time || (t.Time == best.Time && t.Key() > best.Key()) {
				best = t
			}
		}
		if best != nil {
			return best
		}
	}
	return nil
}

// TestModel feeds random users, touches and conversions (shuffled so that touches arrive
// after the conversions they win, duplicated, with two advertisers' windows) through the
// stage while crashing it at random points and failing metric store commits, and checks
// every decision and every count against naiveCredit.
func TestModel(t *testing.T) {
	seed := testseed.Seed(t)
	for round := range 3 {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			runModel(t, seed+uint64(round))
		})
	}
}

func runModel(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	span := 10 * 24 * time.Hour
	randTime := func() int64 {
		// Coarse times make equal times (and so the tie rule) common.
		return t0.Add(time.Duration(rng.Int64N(int64(span/time.Hour))) * time.Hour).UnixMicro()
	}
	users := []string{"u1", "u2", "u3", "u4"}
	var touches, convs, all []event.Event
	for i := range 150 {
		ad := modelAds[rng.IntN(len(modelAds))]
		e := event.Event{Type: event.TypeImpression, Time: randTime(), AdID: ad.id, CampaignID: ad.campaign,
			AdvertiserID: ad.advertiser, CatalogID: ad.catalog, UserID: users[rng.IntN(len(users))], ImpressionID: fmt.Sprintf("imp-%d", i)}
		e.RecvTime = e.Time
		if rng.IntN(2) == 0 {
			e.Type = event.TypeClick
		}
		if rng.IntN(15) == 0 {
			e.Invalid = event.ReasonBot // never a touch
		} else {
			touches = append(touches, e)
		}
		all = append(all, e)
	}
	for i := range 60 {
		e := event.Event{Type: event.TypeConversion, Name: "order", Time: randTime(), EventID: fmt.Sprintf("o-%d", i),
			UserID: users[rng.IntN(len(users))], CatalogID: fmt.Sprintf("cat%d", 1+rng.IntN(3)), ValueMicros: rng.Int64N(100) * 1_000_000}
		e.RecvTime = e.Time
		convs = append(convs, e)
		all = append(all, e)
	}
	// Duplicates: a copy of an event reaches the log again (an unknown append outcome).
	for range 30 {
		all = append(all, all[rng.IntN(len(all))])
	}
	rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })

	h := newHarness(t, 4, t0.Add(span+time.Hour), Options{
		Policy:      LastTouch{WindowsOf: modelWindows, MaxWindow: DefaultWindows.Click},
		MaxLateness: 30 * 24 * time.Hour, // nothing is forgotten within the test
		MaxTouches:  1000,
		ReadBytes:   300 + rng.IntN(2000), // many rounds, each cutting the partitions differently
	})
	crashRate := 0.1
	h.opts.hooks = &testHooks{
		beforeCommit: func() error { return failIf(rng, crashRate) },
		afterCommit:  func() error { return failIf(rng, crashRate) },
		afterApply:   func() error { return failIf(rng, crashRate) },
	}
	h.crash() // reopen with the hooks
	h.ms.rng, h.ms.failBefore, h.ms.failAfter = rng, 0.1, 0.1
	for len(all) > 0 {
		n := min(len(all), 1+rng.IntN(20))
		h.append(all[:n]...)
		all = all[n:]
		for range rng.IntN(4) {
			h.step()
		}
	}
	h.opts.hooks, h.ms.rng = nil, nil
	h.crash()
	h.sync()

	// Each decision.
	want := map[metricstore.Level]map[string]metricstore.Counts{}
	add := func(l metricstore.Level, id string, c metricstore.Counts) {
		if want[l] == nil {
			want[l] = map[string]metricstore.Counts{}
		}
		x := want[l][id]
		x.Add(&c)
		want[l][id] = x
	}
	credited := 0
	for _, conv := range convs {
		got, err := h.s.Conversion(conv.EventID)
		if err != nil {
			t.Fatalf("conversion %s: %v", conv.EventID, err)
		}
		best := naiveCredit(conv, touches)
		switch {
		case best == nil && got.Credited:
			t.Errorf("%s (user %s, %s, t=%d): credited to %+v, want none", conv.EventID, conv.UserID, conv.CatalogID, conv.Time, got.Touch)
		case best != nil && (!got.Credited || got.Touch.Key != best.Key()):
			t.Errorf("%s (user %s, %s, t=%d): got %+v (credited %v, %s), want %s at %d", conv.EventID, conv.UserID, conv.CatalogID, conv.Time, got.Touch, got.Credited, got.Reason, best.Key(), best.Time)
		}
		if best == nil {
			continue
		}
		credited++
		c := metricstore.Counts{Conversions: 1, ConversionValueMicros: conv.ValueMicros}
		if best.Type == event.TypeImpression {
			c.ViewConversions, c.ViewConversionValueMicros = 1, conv.ValueMicros
		}
		add(metricstore.LevelAd, best.AdID, c)
		add(metricstore.LevelCampaign, best.CampaignID, c)
		add(metricstore.LevelAdvertiser, best.AdvertiserID, c)
	}
	t.Logf("%d conversions, %d credited, %d reattributed by late touches, %d commits", len(convs), credited, h.s.Stats().Reattributed, h.s.Stats().Commits)
	// Each count, at every level.
	from, to := t0.Add(-time.Hour), t0.Add(span+time.Hour)
	for _, l := range metricstore.Levels {
		ids := map[string]bool{}
		for _, ad := range modelAds {
			ids[map[metricstore.Level]string{metricstore.LevelAd: ad.id, metricstore.LevelCampaign: ad.campaign, metricstore.LevelAdvertiser: ad.advertiser}[l]] = true
		}
		var list []string
		for id := range ids {
			list = append(list, id)
		}
		got := h.totals(l, from, to, list...)
		for _, id := range list {
			if g, w := got[id], want[l][id]; !g.Equal(&w) {
				t.Errorf("%s %s: got %v, want %v", l, id, g, w)
			}
		}
	}
	// Each minute of each ad: a conversion is counted in its own minute.
	minutes := map[string]map[int64]int64{}
	for _, conv := range convs {
		if best := naiveCredit(conv, touches); best != nil {
			if minutes[best.AdID] == nil {
				minutes[best.AdID] = map[int64]int64{}
			}
			minutes[best.AdID][conv.Time/60e6]++
		}
	}
	for _, ad := range modelAds {
		res, err := h.store.Query(t.Context(), metricstore.Query{Level: metricstore.LevelAd, IDs: []string{ad.id}, Start: from, End: to, Interval: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range res.Series[0].Points {
			if w := minutes[ad.id][p.Time.Unix()/60]; p.Conversions != w {
				t.Errorf("ad %s minute %s: %d conversions, want %d", ad.id, p.Time, p.Conversions, w)
			}
		}
	}
}

func failIf(rng *rand.Rand, p float64) error {
	if rng.Float64() < p {
		return errInjected
	}
	return nil
}
