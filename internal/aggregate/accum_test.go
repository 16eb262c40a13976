package aggregate

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/metricstore"
)

// TestDeltasSumEveryLevel checks the commit's deltas against sums kept by the test: one
// delta per level, id and minute, whatever the order of the entries, the minutes an id spans
// in one commit, ids missing at a level, an ad moving between campaigns, and the scratch
// space reused between commits.
func TestDeltasSumEveryLevel(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 0))
	a := newAccumulator()
	var scratch [2]map[levelKey]int
	var ds []metricstore.Delta
	for commit := range 60 {
		type cell struct {
			level  metricstore.Level
			id     string
			minute int64
		}
		want := map[cell]metricstore.Counts{}
		base := int64(29_000_000 + commit)
		for range rng.IntN(400) {
			ad := rng.IntN(40)
			e := counted{ad: fmt.Sprintf("ad-%d", ad), campaign: fmt.Sprintf("cmp-%d", (ad+rng.IntN(2))/4), advertiser: fmt.Sprintf("adv-%d", ad/15)}
			if rng.IntN(10) == 0 {
				e.campaign = ""
			}
			if rng.IntN(10) == 0 {
				e.advertiser = ""
			}
			var c metricstore.Counts
			switch rng.IntN(4) {
			case 0:
				e.typ, c.Impressions = event.TypeImpression, 1
			case 1:
				e.typ, c.Clicks = event.TypeClick, 1
			case 2:
				e.typ, e.invalid = event.TypeClick, event.ReasonBot
				c.AddInvalid(event.ReasonBot, 1)
			case 3:
				e.typ, e.name = event.TypeInteraction, "add_to_cart"
				c.AddInteraction("add_to_cart", 1)
			}
			minute := base + int64(rng.IntN(3))
			if !a.add(&e, minute) {
				t.Fatalf("seed %d: event not counted: %+v", seed, e)
			}
			for l, id := range [3]string{e.ad, e.campaign, e.advertiser} {
				if id != "" {
					k := cell{metricstore.LevelAd + metricstore.Level(l), id, minute}
					sum := want[k]
					sum.Add(&c)
					want[k] = sum
				}
			}
		}
		ds = a.deltas(ds[:0], &scratch)
		got := map[cell]metricstore.Counts{}
		for _, d := range ds {
			k := cell{d.Level, d.ID, d.Minute}
			sum, dup := got[k]
			// An ad met under two campaigns in a minute is two entries, so two deltas.
			if dup && d.Level != metricstore.LevelAd {
				t.Fatalf("seed %d, commit %d: two deltas for %v", seed, commit, k)
			}
			sum.Add(&d.Counts)
			got[k] = sum
		}
		if len(got) != len(want) {
			t.Fatalf("seed %d, commit %d: %d deltas, want %d", seed, commit, len(got), len(want))
		}
		for k, w := range want {
			if g := got[k]; !g.Equal(&w) {
				t.Fatalf("seed %d, commit %d: %v = %+v, want %+v", seed, commit, k, g, w)
			}
		}
		a.reset()
	}
}
