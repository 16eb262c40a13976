package sivt

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/ivt/ivtgen"
)

// heldBytesPerClick feeds ten minutes of generated traffic (people, floods and drip fraud,
// each event decoded from its log encoding as the stage reads it, so no two clicks share a
// string) to the rules and returns the live heap the rules' state holds per valid click.
// Every click is within the many_ads window of the last, so every one is held. Impressions
// are left out unless withImps (they cost the same per impression before and after).
func heldBytesPerClick(tb testing.TB, humans int, withImps bool) (perClick float64, clicks int) {
	evs := ivtgen.Generate(ivtgen.Config{Seed: 1, Duration: 10 * time.Minute, Humans: humans, Floods: 4, DatacenterBots: 0, Drips: 5})
	encoded := make([][]byte, len(evs))
	for i := range evs {
		encoded[i] = evs[i].AppendBinary(nil)
	}
	return heldBytesPerClickOf(tb, encoded, withImps)
}

// busySources is ten minutes of n users who each click two ads of their own every 30
// seconds, below every limit: the clicks, not the sources, fill the windows.
func busySources(n int) [][]byte {
	var out [][]byte
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()
	for at := int64(0); at < 10*60e6; at += 30e6 {
		for u := range n {
			for k := range 2 {
				e := event.Event{Type: event.TypeClick, Time: start + at + int64(u), RecvTime: start + at + int64(u),
					AdID: fmt.Sprintf("ad-%d", (u+k)%50), CampaignID: fmt.Sprintf("camp-%d", (u+k)%5), AdvertiserID: fmt.Sprintf("adv-%d", (u+k)%2),
					ImpressionID: fmt.Sprintf("b%d-%d-%d", u, at, k), UserID: fmt.Sprintf("u-%d", u),
					SourceIP: fmt.Sprintf("81.1.%d.%d", u/250, u%250), DeviceID: fmt.Sprintf("dev-%d", u)}
				out = append(out, e.AppendBinary(nil))
			}
		}
	}
	return out
}

// oneSourceFlood is n clicks of one user, address and device within one minute, on 50 ads.
func oneSourceFlood(n int) [][]byte {
	var out [][]byte
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()
	for i := range n {
		at := start + int64(i)*60e6/int64(n)
		e := event.Event{Type: event.TypeClick, Time: at, RecvTime: at, AdID: fmt.Sprintf("ad-%d", i%50), CampaignID: fmt.Sprintf("camp-%d", i%5),
			AdvertiserID: fmt.Sprintf("adv-%d", i%2), ImpressionID: fmt.Sprintf("f-%d", i), UserID: "bot", SourceIP: "81.2.3.4", DeviceID: "bot"}
		out = append(out, e.AppendBinary(nil))
	}
	return out
}

func heldBytesPerClickOf(tb testing.TB, encoded [][]byte, withImps bool) (perClick float64, clicks int) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	st := newState(DefaultRules())
	for _, b := range encoded {
		ev := new(event.Event)
		if err := ev.Decode(b); err != nil {
			tb.Fatal(err)
		}
		switch ev.Type {
		case event.TypeImpression:
			if withImps {
				st.impression(ev)
			}
		case event.TypeClick:
			clicks++
			st.click(ev, false, true)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(st)
	runtime.KeepAlive(encoded)
	return float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(clicks), clicks
}

// BenchmarkHeldBytesPerClick reports the heap the rules hold per click (held-B/click).
func BenchmarkHeldBytesPerClick(b *testing.B) {
	for _, withImps := range []bool{false, true} {
		name := "clicks"
		if withImps {
			name = "clicks+impressions"
		}
		b.Run(name, func(b *testing.B) {
			var per float64
			for b.Loop() {
				per, _ = heldBytesPerClick(b, 20000, withImps)
			}
			b.ReportMetric(per, "held-B/click")
		})
	}
	b.Run("one-source-flood", func(b *testing.B) {
		encoded := oneSourceFlood(100_000)
		var per float64
		for b.Loop() {
			per, _ = heldBytesPerClickOf(b, encoded, false)
		}
		b.ReportMetric(per*float64(len(encoded)), "held-B")
	})
	b.Run("busy-sources", func(b *testing.B) {
		encoded := busySources(2000)
		var per float64
		for b.Loop() {
			per, _ = heldBytesPerClickOf(b, encoded, false)
		}
		b.ReportMetric(per, "held-B/click")
	})
}
