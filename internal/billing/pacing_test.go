package billing

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/event"
)

func TestDefaultCurve(t *testing.T) {
	c := defaultCurve()
	sum := 0.0
	for _, v := range c {
		if v <= 0 {
			t.Fatalf("slot share %v", v)
		}
		sum += v
	}
	if math.Abs(sum-1) > 1e-9 {
		t.Fatalf("default curve sums to %v", sum)
	}
	if c[4*4] > c[20*4] {
		t.Errorf("4:00 (%v) busier than 20:00 (%v)", c[16], c[80])
	}
}

func TestProfileLearnsAndDecays(t *testing.T) {
	var p trafficProfile
	for range 100_000 {
		p.observe(100, 600, 40) // everything at 10:00
	}
	if c := p.curve(); math.Abs(c[40]-defaultCurve()[40]) > 1e-3 {
		t.Errorf("a partial day changed the curve: %v", c[40])
	}
	p.observe(101, 0, 0) // day 100 is complete
	c := p.curve()
	if c[40] < 10*c[80] {
		t.Errorf("learned peak at slot 40 (%v) not above slot 80 (%v)", c[40], c[80])
	}
	var q trafficProfile
	if err := q.decode(p.encode()); err != nil || q != p {
		t.Fatalf("profile does not round-trip: %v", err)
	}
	var partial trafficProfile
	for range 100_000 {
		partial.observe(100, 5*3600, 40) // first seen five hours into the day
	}
	partial.observe(101, 0, 0)
	if c := partial.curve(); math.Abs(c[40]-defaultCurve()[40]) > 1e-3 {
		t.Errorf("a day not seen from its start was learned: %v", c[40])
	}
	p.observe(110, 0, 80) // ten days later: the old counts have faded
	if p.Hist[40] > 100_000*math.Pow(profileDecay, 9)+1e-6 || p.Hist[40] == 0 {
		t.Errorf("counts not decayed: %v", p.Hist[40])
	}
}

// trueShape is the simulated platform's real traffic by local hour: a lunch peak and a
// later, higher evening peak than the default curve assumes.
var trueShape = [24]float64{3, 2, 1.5, 1, 1, 1.2, 2, 3.5, 5, 6, 6.5, 7, 8, 8.5, 7, 6, 5.5, 6, 7, 8.5, 9.5, 9, 7, 5}

func trueShareOfMinute(m int) float64 {
	sum := 0.0
	for _, v := range trueShape {
		sum += v
	}
	return trueShape[m/60] / sum / 60
}

func poisson(rng *rand.Rand, lambda float64) int {
	if lambda <= 0 {
		return 0
	}
	l, k, p := math.Exp(-lambda), 0, 1.0
	for {
		p *= rng.Float64()
		if p <= l {
			return k
		}
		k++
	}
}

type simDay struct {
	exhaustedAt string // local time the budget ran out, or "" if it lasted the day
	spent       int64
	hourly      []string
}

// simulate runs days of minute-by-minute traffic through the whole stack (log, charger,
// journal, metric store, feed, pacer): the ad server bids on a share `pacing` of the paced
// campaign's eligible requests (or all of them when paced is false); background impressions
// follow the true shape and teach the traffic profile.
func simulate(t *testing.T, seed uint64, paced bool, days int) []simDay {
	const (
		budget       = 50_000_000 // a day: 500 clicks at 0.10
		bid          = 100_000
		demandClicks = 1500.0   // unthrottled clicks a day: three times the budget
		background   = 20_000.0 // platform impressions a day
		step         = 2        // minutes per simulation step
	)
	loc, _ := time.LoadLocation("Asia/Kolkata")
	cat := newFakeCatalog()
	cat.advertiser(t, "adv", "Asia/Kolkata")
	cat.campaign(catalog.CampaignInfo{CampaignID: "paced", AdvertiserID: "adv", CPCBidMicros: bid, DailyBudgetMicros: budget})
	cat.campaign(catalog.CampaignInfo{CampaignID: "bg", AdvertiserID: "adv", CPCBidMicros: bid})
	cat.ad("ad", "paced", 0)
	cat.ad("bg-ad", "bg", 0)
	start := time.Date(2026, 11, 20, 0, 0, 0, 0, loc)
	clock := newClock(start)
	h := newHarness(t, newMemLog(4, clock.Now), cat, clock)
	h.c.opts.PacingInterval = step * time.Minute
	h.c.pacer.interval = step * time.Minute
	rng := rand.New(rand.NewPCG(seed, 7))

	var out []simDay
	n := 0
	for d := range days {
		day := simDay{}
		var evs []event.Event
		for m := 0; m < 1440; m += step {
			now := start.AddDate(0, 0, d).Add(time.Duration(m) * time.Minute)
			clock.Set(now)
			feed, err := h.c.Feed(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			pacing := 0.0
			for _, c := range feed.Campaigns {
				if c.CampaignID == "paced" {
					pacing = c.Pacing
				}
			}
			if !paced && pacing > 0 {
				pacing = 1
			}
			if pacing == 0 && day.exhaustedAt == "" {
				day.exhaustedAt = now.Format("15:04")
			}
			share := 0.0
			for i := range step {
				share += trueShareOfMinute(m + i)
			}
			evs = evs[:0]
			for range poisson(rng, demandClicks*share*pacing) {
				n++
				at := now.Add(time.Duration(rng.IntN(step*60)) * time.Second)
				evs = append(evs, event.Event{Type: event.TypeClick, Time: at.UnixMicro(), AdID: "ad", CampaignID: "paced", AdvertiserID: "adv", ImpressionID: fmt.Sprintf("p%d", n)})
			}
			for range poisson(rng, background*share) {
				n++
				at := now.Add(time.Duration(rng.IntN(step*60)) * time.Second)
				evs = append(evs, event.Event{Type: event.TypeImpression, Time: at.UnixMicro(), AdID: "bg-ad", CampaignID: "bg", AdvertiserID: "adv", ImpressionID: fmt.Sprintf("b%d", n)})
			}
			if len(evs) > 0 {
				clock.Set(now.Add(step*time.Minute - time.Second))
				appendEvents(t, h.log, evs...)
				h.sync()
			}
			if m%180 == 0 {
				st := h.status("paced")
				day.hourly = append(day.hourly, fmt.Sprintf("%02d:00 p=%.2f spent=%2.0f%%", m/60, pacing, 100*float64(st.Budget.SpentTodayMicros)/budget))
			}
		}
		clock.Set(start.AddDate(0, 0, d).Add(1439*time.Minute + 59*time.Second))
		day.spent = h.status("paced").Budget.SpentTodayMicros
		out = append(out, day)
	}
	h.checkMoney()
	return out
}

// TestPacingSimulation shows pacing making a daily budget last the day: without it the
// budget (a third of the day's demand) runs out around midday.
func TestPacingSimulation(t *testing.T) {
	if testing.Short() {
		t.Skip("simulation")
	}
	seed := testSeed(t)
	unpaced := simulate(t, seed, false, 1)
	paced := simulate(t, seed, true, 2)
	report := func(name string, d simDay) string {
		ran := "lasted the day"
		if d.exhaustedAt != "" {
			ran = "ran out at " + d.exhaustedAt + " IST"
		}
		return fmt.Sprintf("%-28s %s, spent %.1f%% of the budget\n      %s", name+":", ran, float64(d.spent)/500_000, strings.Join(d.hourly, " | "))
	}
	t.Log("\n" + strings.Join([]string{
		report("no pacing", unpaced[0]),
		report("pacing, day 1 (default curve)", paced[0]),
		report("pacing, day 2 (learned curve)", paced[1]),
	}, "\n"))
	if unpaced[0].exhaustedAt == "" || unpaced[0].exhaustedAt > "15:00" {
		t.Errorf("without pacing the budget should run out by early afternoon: %q", unpaced[0].exhaustedAt)
	}
	for i, d := range paced {
		if d.exhaustedAt != "" && d.exhaustedAt < "22:00" {
			t.Errorf("paced day %d: budget ran out at %s", i+1, d.exhaustedAt)
		}
		if d.spent < 45_000_000 {
			t.Errorf("paced day %d: spent only %d of 50000000", i+1, d.spent)
		}
	}
}
