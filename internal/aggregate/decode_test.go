package aggregate

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/adpulse/adpulse/internal/testseed"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/cespare/xxhash/v2"
)

// testSeed is the repository's seed convention (internal/testseed).
func testSeed(t testing.TB) uint64 { return testseed.Seed(t) }

func randomEvent(rng *rand.Rand) event.Event {
	str := func(p string) string {
		if rng.IntN(4) == 0 {
			return ""
		}
		return fmt.Sprintf("%s%d", p, rng.IntN(50))
	}
	e := event.Event{
		Type:         event.Type(1 + rng.IntN(3)),
		Invalid:      event.Reason(rng.IntN(4)),
		Time:         rng.Int64() >> rng.IntN(63),
		RecvTime:     rng.Int64N(1 << 52),
		PriceMicros:  rng.Int64N(1e6),
		AdID:         str("ad"),
		CampaignID:   str("c"),
		AdvertiserID: str("adv"),
		ImpressionID: str("imp"),
		EventID:      str("ev"),
		UserID:       str("u"),
		CatalogID:    str("cat"),
		SourceIP:     str("ip"),
		DeviceID:     str("dev"),
	}
	if rng.IntN(10) == 0 {
		e.Invalid = event.Reason(rng.IntN(256))
	}
	if e.Type == event.TypeInteraction {
		e.Name = []string{"add_to_cart", "purchase", "x"}[rng.IntN(3)]
	}
	return e
}

func TestDecodeViewMatchesDecode(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 1))
	for i := range 20000 {
		e := randomEvent(rng)
		b := e.AppendBinary(nil)
		switch rng.IntN(4) {
		case 1:
			b = b[:rng.IntN(len(b)+1)]
		case 2:
			b[rng.IntN(len(b))] ^= byte(1 + rng.IntN(255))
		case 3:
			b = append(b, byte(rng.IntN(256)))
		}
		var want, got event.Event
		werr := want.Decode(b)
		gerr := decodeView(b, &got)
		if (werr == nil) != (gerr == nil) || (werr == nil && got != want) {
			t.Fatalf("case %d %x: Decode = %+v, %v; decodeView = %+v, %v", i, b, want, werr, got, gerr)
		}
	}
}

func FuzzDecodeView(f *testing.F) {
	e := event.Event{Type: event.TypeClick, AdID: "a", ImpressionID: "i", Time: 1}
	f.Add(e.AppendBinary(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		var want, got event.Event
		werr := want.Decode(b)
		gerr := decodeView(b, &got)
		if (werr == nil) != (gerr == nil) || (werr == nil && got != want) {
			t.Fatalf("%x: Decode = %+v, %v; decodeView = %+v, %v", b, want, werr, got, gerr)
		}
	})
}

func TestKeyHashMatchesKey(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 2))
	var buf []byte
	for range 20000 {
		e := randomEvent(rng)
		var h uint64
		var ok bool
		h, buf, ok = keyHash(&e, buf)
		k := e.Key()
		if ok != (k != "") || (ok && h != xxhash.Sum64String(k)) {
			t.Fatalf("%+v: key %q (hash %x), keyHash %x %v", e, k, xxhash.Sum64String(k), h, ok)
		}
	}
}

func TestDecodeAndHashDoNotAllocate(t *testing.T) {
	e := event.Event{Type: event.TypeClick, Invalid: event.ReasonBot, AdID: "ad-1", CampaignID: "c-1", AdvertiserID: "adv-1", ImpressionID: "imp-123456", UserID: "u-9"}
	b := e.AppendBinary(nil)
	var got event.Event
	buf := make([]byte, 0, 128)
	allocs := testing.AllocsPerRun(100, func() {
		if err := decodeView(b, &got); err != nil {
			t.Fatal(err)
		}
		_, buf, _ = keyHash(&got, buf)
	})
	if allocs != 0 {
		t.Fatalf("decodeView+keyHash allocate %v times per event", allocs)
	}
}
