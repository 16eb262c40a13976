package sivt

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/testseed"
)

// tinyRules make every rule fire on short random streams.
var tinyRules = Rules{FloodWindow: 10 * time.Second, MaxClicksPerUser: 3, MaxClicksPerIP: 5, MaxClicksPerDevice: 3,
	ImpressionWindow: 20 * time.Second, NoImpression: true, MinClickDelay: time.Second, ManyAdsWindow: 30 * time.Second, MaxAdsPerSource: 4}

// streamFrom turns bytes into events: 4 bytes each (kind and gap, user, address, ad), with
// receive times that never go back, so the stream is one a stage could see.
func streamFrom(b []byte) []event.Event {
	var out []event.Event
	now := int64(1_700_000_000_000_000)
	for len(b) >= 4 {
		kind, user, ip, ad := b[0], b[1]%8, b[2]%6, b[3]%7
		b = b[4:]
		now += int64(kind>>1) * 100_000
		e := event.Event{Type: event.TypeImpression, AdID: fmt.Sprint("ad-", ad), ImpressionID: fmt.Sprint("i", len(out)/2+int(user)*0),
			UserID: fmt.Sprint("u", user), SourceIP: fmt.Sprint("81.0.0.", ip), DeviceID: fmt.Sprint("d", user%4), Time: now, RecvTime: now}
		if kind&1 == 1 {
			e.Type = event.TypeClick
			e.ImpressionID = fmt.Sprint("i", len(out)/2) // sometimes the impression before, sometimes none
			if user == 7 {
				e.UserID = ""
			}
		}
		out = append(out, e)
	}
	return out
}

// checkRebuild runs evs through one state without stopping and, from every cut, through a
// state rebuilt as Open does (the events of the last span, with the verdicts so far), and
// fails if they decide anything differently. It also checks that no click is judged twice.
func checkRebuild(t *testing.T, evs []event.Event, cuts []int) {
	live := newState(tinyRules)
	flagged := map[string]event.Reason{}
	type decision struct {
		at      int
		key     string
		reason  event.Reason
		late    bool
		trigger string
		count   int
		first   string
	}
	var want []decision
	for i := range evs {
		for _, v := range step(live, &evs[i], flagged) {
			if _, dup := flagged[v.ClickKey]; dup {
				t.Fatalf("event %d: click %s judged twice", i, v.ClickKey)
			}
			flagged[v.ClickKey] = v.Reason
			want = append(want, decision{i, v.ClickKey, v.Reason, v.Late, v.TriggeredBy, v.Evidence.Count, v.Evidence.FirstClickTime})
		}
	}
	span := tinyRules.span().Microseconds()
	for _, cut := range cuts {
		// Verdicts as they stood when the stage stopped after event cut-1.
		before := map[string]event.Reason{}
		for _, d := range want {
			if d.at < cut {
				before[d.key] = d.reason
			}
		}
		st := newState(tinyRules)
		last := evs[cut-1].RecvTime
		for i := 0; i < cut; i++ {
			e := &evs[i]
			if e.RecvTime < last-2*span {
				continue
			}
			if e.RecvTime < last-span {
				if e.Type == event.TypeClick {
					st.seen(e)
				}
				continue
			}
			if e.Type == event.TypeImpression {
				st.impression(e)
			} else {
				_, f := before[e.Key()]
				st.click(e, f, false)
			}
		}
		var got []decision
		for i := cut; i < len(evs); i++ {
			for _, v := range step(st, &evs[i], before) {
				before[v.ClickKey] = v.Reason
				got = append(got, decision{i, v.ClickKey, v.Reason, v.Late, v.TriggeredBy, v.Evidence.Count, v.Evidence.FirstClickTime})
			}
		}
		var tail []decision
		for _, d := range want {
			if d.at >= cut {
				tail = append(tail, d)
			}
		}
		if fmt.Sprint(tail) != fmt.Sprint(got) {
			t.Fatalf("rebuilt after event %d of %d decides differently:\nuninterrupted %v\nrebuilt       %v", cut, len(evs), tail, got)
		}
	}
}

// step feeds one event as the stage does: a click whose key has a verdict counts as flagged.
func step(s *state, e *event.Event, flagged map[string]event.Reason) []Verdict {
	if e.Type == event.TypeImpression {
		s.impression(e)
		return nil
	}
	_, f := flagged[e.Key()]
	return s.click(e, f, true)
}

// TestRebuildDecidesTheSame is the replay guarantee at the level of the rules: random streams,
// cut anywhere, rebuilt from the last span of events and the verdicts so far.
func TestRebuildDecidesTheSame(t *testing.T) {
	r := rand.New(rand.NewPCG(testseed.Seed(t), 3))
	for range 200 {
		b := make([]byte, 4*(50+r.IntN(300)))
		for i := range b {
			b[i] = byte(r.IntN(256))
		}
		evs := streamFrom(b)
		cuts := []int{1 + r.IntN(len(evs)-1), 1 + r.IntN(len(evs)-1), len(evs) - 1}
		checkRebuild(t, evs, cuts)
	}
}

// floodStream is one user clicking far above every limit (n clicks 20ms apart, on ever new
// ads, from one address and device) amid a few people clicking now and then.
func floodStream(r *rand.Rand, n int) []event.Event {
	var out []event.Event
	now := int64(1_700_000_000_000_000)
	for i := range n {
		now += 20_000
		u, ip := "bot", "81.0.0.200"
		if r.IntN(10) == 0 {
			u, ip = fmt.Sprint("u", r.IntN(5)), fmt.Sprint("81.0.0.", r.IntN(5))
		}
		out = append(out, event.Event{Type: event.TypeClick, AdID: fmt.Sprint("ad-", i%50), ImpressionID: fmt.Sprint("i", i),
			UserID: u, SourceIP: ip, DeviceID: u, Time: now, RecvTime: now})
	}
	return out
}

// TestRebuildDuringAFlood: a flood hundreds of times over the limits, cut in its middle,
// decides the same (evidence included) after a rebuild, and the windows hold what the rules
// can use, not the flood.
func TestRebuildDuringAFlood(t *testing.T) {
	r := rand.New(rand.NewPCG(testseed.Seed(t), 4))
	evs := floodStream(r, 3000) // a minute: 3000 clicks, 2700 of them one user's
	checkRebuild(t, evs, []int{700, 1500 + r.IntN(1000), len(evs) - 1})

	st := newState(tinyRules)
	flagged := map[string]event.Reason{}
	for i := range evs {
		for _, v := range step(st, &evs[i], flagged) {
			flagged[v.ClickKey] = v.Reason
		}
	}
	for i, ws := range st.floods {
		limit := st.floodLimit(i)
		for src, w := range ws {
			if int(w.nt) > keepPerLimit*limit || w.pendingLen() > limit {
				t.Errorf("flood window %d of source %x holds %d times and %d clicks, limit %d", i, src, w.nt, w.pendingLen(), limit)
			}
		}
	}
	w := st.sources[sourceHash("bot")]
	if keep := keepPerLimit * tinyRules.MaxAdsPerSource; int(w.nt) > keep || w.adsLen() > keep || w.pendingLen() > tinyRules.MaxAdsPerSource {
		t.Errorf("the flood's many_ads window holds %d times, %d ads and %d clicks", w.nt, w.adsLen(), w.pendingLen())
	}
	if n := len(flagged); n < 2600 {
		t.Errorf("%d clicks flagged, want the flood's", n)
	}
}

// FuzzRules: no stream crashes the rules, judges a click twice, or decides differently after
// a rebuild.
func FuzzRules(f *testing.F) {
	f.Add([]byte("\x01\x01\x01\x01\x03\x01\x01\x01\x03\x01\x01\x02\x03\x01\x01\x03\x03\x01\x01\x04"))
	f.Add(make([]byte, 64))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 4*2000 {
			return
		}
		evs := streamFrom(b)
		if len(evs) < 2 {
			return
		}
		checkRebuild(t, evs, []int{1, len(evs) / 2, len(evs) - 1})
	})
}
