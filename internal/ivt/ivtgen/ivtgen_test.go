package ivtgen

import (
	"net/netip"
	"testing"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/ivt"
	"github.com/adpulse/adpulse/internal/testseed"
)

// TestGenerate: the same seed gives the same traffic; people never come from a data-centre
// address and every data-centre bot does; every click of a person follows its impression by
// at least two seconds; events are in time order and every event is valid.
func TestGenerate(t *testing.T) {
	seed := testseed.Seed(t)
	a, b := Generate(Config{Seed: seed}), Generate(Config{Seed: seed})
	if len(a) != len(b) {
		t.Fatalf("same seed, %d and %d events", len(a), len(b))
	}
	ranges, err := ivt.DatacenterRanges()
	if err != nil {
		t.Fatal(err)
	}
	imps := map[string]int64{}
	counts := map[Label]int{}
	for i := range a {
		e := &a[i]
		if e.Event != b[i].Event || e.Label != b[i].Label {
			t.Fatalf("event %d differs between two runs of seed %d", i, seed)
		}
		if i > 0 && e.Time < a[i-1].Time {
			t.Fatalf("event %d out of time order", i)
		}
		if err := e.Validate(); err != nil {
			t.Fatalf("event %d invalid: %v", i, err)
		}
		_, dc := ranges.Lookup(netip.MustParseAddr(e.SourceIP))
		if dc != (e.Label == DatacenterBot) {
			t.Fatalf("event %d (%s) from %s: data-centre %v", i, e.Label, e.SourceIP, dc)
		}
		switch e.Type {
		case event.TypeImpression:
			imps[e.ImpressionID] = e.Time
		case event.TypeClick:
			counts[e.Label]++
			if e.Label == Human {
				if t0, ok := imps[e.ImpressionID]; !ok || e.Time-t0 < 2e6 {
					t.Fatalf("a person's click %s without its impression two seconds before", e.ImpressionID)
				}
			}
		}
	}
	for _, l := range Labels {
		if counts[l] == 0 {
			t.Errorf("no clicks labelled %s", l)
		}
	}
	t.Logf("clicks by label: %v", counts)
}

func TestScore(t *testing.T) {
	clicks := []Event{{Label: Human}, {Label: Flood}, {Label: Flood}, {Label: Human}}
	for i := range clicks {
		clicks[i].Type = event.TypeClick
	}
	rep := Score(clicks, []event.Reason{event.ReasonFloodIP, event.ReasonFloodIP, event.ReasonNone, event.ReasonNone})
	if rep.Precision != 0.5 || rep.Recall != 0.5 || rep.ByLabel[Human].Rate != 0.5 || rep.ByReason[event.ReasonFloodIP].Flagged != 2 {
		t.Fatalf("score: %+v", rep)
	}
}
