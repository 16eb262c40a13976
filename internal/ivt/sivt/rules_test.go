package sivt

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/ivt"
	"github.com/adpulse/adpulse/internal/ivt/ivtgen"
	"github.com/adpulse/adpulse/internal/testseed"
)

// judge runs generated traffic through ingest's general rules (the data-centre ranges: the
// generator's user agents are all browsers) and then the behavioural rules, and returns the
// final verdict on every event (ReasonNone for valid ones and for non-clicks).
func judge(t testing.TB, evs []ivtgen.Event, rules Rules) []event.Reason {
	ranges, err := ivt.DatacenterRanges()
	if err != nil {
		t.Fatal(err)
	}
	st := newState(rules)
	out := make([]event.Reason, len(evs))
	index := map[string]int{}
	for i := range evs {
		e := &evs[i]
		if _, dc := ranges.Lookup(netip.MustParseAddr(e.SourceIP)); dc {
			if e.Type == event.TypeClick {
				out[i] = event.ReasonDatacenter
			}
			continue
		}
		switch e.Type {
		case event.TypeImpression:
			st.impression(&e.Event)
		case event.TypeClick:
			index[e.Key()] = i
			for _, v := range st.click(&e.Event, false, true) {
				j, ok := index[v.ClickKey]
				if !ok || out[j] != event.ReasonNone {
					t.Fatalf("verdict %+v on an unknown or already judged click", v)
				}
				out[j] = v.Reason
			}
		}
	}
	return out
}

// TestPrecisionRecall measures the rules (with ingest's data-centre ranges) on labelled
// traffic: people, floods, data-centre bots and drip fraud. It logs the report per rule and
// per kind of traffic, and fails below the floors the defaults are tuned for.
func TestPrecisionRecall(t *testing.T) {
	seed := testseed.Seed(t)
	evs := ivtgen.Generate(ivtgen.Config{Seed: seed})
	got := judge(t, evs, DefaultRules())
	rep := ivtgen.Score(evs, got)
	t.Logf("default rules on generated traffic (seed %d):\n%s", seed, rep)
	if rep.Precision < 0.99 {
		t.Errorf("precision %.4f, want >= 0.99", rep.Precision)
	}
	if r := rep.ByLabel[ivtgen.Human].Rate; r > 0.002 {
		t.Errorf("false positive rate on people %.4f, want <= 0.002", r)
	}
	for _, l := range []ivtgen.Label{ivtgen.Flood, ivtgen.DatacenterBot, ivtgen.DripFraud} {
		if r := rep.ByLabel[l].Rate; r < 0.95 {
			t.Errorf("recall on %s %.4f, want >= 0.95", l, r)
		}
	}
}

// TestPrecisionRecallPerRule turns on one rule at a time and reports what it alone catches:
// each rule must be precise on its own, and catch the traffic it is for.
func TestPrecisionRecallPerRule(t *testing.T) {
	seed := testseed.Seed(t)
	evs := ivtgen.Generate(ivtgen.Config{Seed: seed})
	base := Rules{FloodWindow: time.Minute, ImpressionWindow: 10 * time.Minute, ManyAdsWindow: 10 * time.Minute}
	d := DefaultRules()
	for _, tc := range []struct {
		name   string
		set    func(*Rules)
		target ivtgen.Label
		floor  float64
	}{
		{"flood_user", func(r *Rules) { r.MaxClicksPerUser = d.MaxClicksPerUser }, ivtgen.Flood, 0.6},
		{"flood_ip", func(r *Rules) { r.MaxClicksPerIP = d.MaxClicksPerIP }, ivtgen.Flood, 0.6},
		{"flood_device", func(r *Rules) { r.MaxClicksPerDevice = d.MaxClicksPerDevice }, ivtgen.Flood, 0.95},
		{"no_impression", func(r *Rules) { r.NoImpression = true }, ivtgen.DripFraud, 0.4},
		{"too_fast", func(r *Rules) { r.MinClickDelay = d.MinClickDelay }, ivtgen.DripFraud, 0.4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := base
			tc.set(&r)
			rep := ivtgen.Score(evs, judge(t, evs, r))
			t.Logf("%s alone:\n%s", tc.name, rep)
			reason, _ := event.ParseReason(tc.name)
			if rs := rep.ByReason[reason]; rs == nil || rs.Precision < 0.99 {
				t.Errorf("%s: precision %+v, want >= 0.99", tc.name, rs)
			}
			if rate := rep.ByLabel[tc.target].Rate; rate < tc.floor {
				t.Errorf("%s: recall on %s %.4f, want >= %.2f", tc.name, tc.target, rate, tc.floor)
			}
		})
	}
	// many_ads: a source that clicks many ads quickly; the generated drips are slower than
	// the default limit, so a tighter limit shows it on them.
	r := base
	r.MaxAdsPerSource = 8
	rep := ivtgen.Score(evs, judge(t, evs, r))
	t.Logf("many_ads alone, 8 ads in 10 minutes:\n%s", rep)
	if rs := rep.ByReason[event.ReasonManyAds]; rs == nil || rs.Precision < 0.99 || rep.ByLabel[ivtgen.DripFraud].Rate < 0.3 {
		t.Errorf("many_ads: %+v, drip recall %.4f", rs, rep.ByLabel[ivtgen.DripFraud].Rate)
	}
}

func TestCountable(t *testing.T) {
	for ip, want := range map[string]bool{
		"81.2.3.4": true, "2a01:4f8::1": true, "::ffff:81.2.3.4": true,
		"127.0.0.1": false, "10.0.0.1": false, "192.168.1.1": false, "172.16.0.1": false, "100.64.1.1": false,
		"::1": false, "fe80::1": false, "fd00::1": false, "": false, "nope": false,
	} {
		if Countable(ip) != want {
			t.Errorf("Countable(%q) = %v, want %v", ip, !want, want)
		}
	}
}

// TestSharedAddressNotCounted: a thousand people behind one carrier or office address make
// no address flood, while the same clicks from one public address do.
func TestSharedAddressNotCounted(t *testing.T) {
	for _, tc := range []struct {
		ip    string
		flood bool
	}{{"100.64.0.1", false}, {"10.0.0.1", false}, {"81.2.3.4", true}} {
		st := newState(DefaultRules())
		flagged := 0
		for i := range 100 {
			e := event.Event{Type: event.TypeClick, AdID: "ad-1", ImpressionID: fmt.Sprint("i", i), UserID: fmt.Sprint("u", i),
				SourceIP: tc.ip, Time: int64(i) * 100_000, RecvTime: int64(i) * 100_000}
			for _, v := range st.click(&e, false, true) {
				if v.Reason == event.ReasonFloodIP {
					flagged++
				}
			}
		}
		if (flagged > 0) != tc.flood {
			t.Errorf("%s: %d clicks flagged flood_ip", tc.ip, flagged)
		}
	}
}
