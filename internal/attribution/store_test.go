package attribution

import (
	"bytes"
	"testing"
)

func TestRecordsRoundTrip(t *testing.T) {
	touch := Touch{Kind: KindClick, Time: 1_700_000_000_000_000, Key: "c:imp-1", AdID: "1", CampaignID: "c1", AdvertiserID: "a1"}
	if got, err := decodeTouch(encodeTouch(&touch)); err != nil || got != touch {
		t.Fatalf("touch: %+v %v", got, err)
	}
	for _, c := range []Conversion{
		{Key: "e:o1", EventID: "o1", Name: "order", UserID: "u", CatalogID: "cat", Time: 5, ValueMicros: 7, Partition: 3, Offset: 9, Credited: true, Touch: touch, Touches: 2, Revisions: 1},
		{Key: "e:o2", EventID: "o2", Name: "order", UserID: "u", CatalogID: "cat", Time: 5, Reason: ReasonNoTouch},
	} {
		got, err := decodeConversion(encodeConversion(&c))
		if err != nil || got != c {
			t.Fatalf("conversion: %+v %v, want %+v", got, err, c)
		}
	}
	x := touchTimeKey("user", "cat", 42, "c:imp")
	tk, ok := touchKeyFromTime(x)
	if !ok || !bytes.Equal(tk, touchKey("user", "cat", 42, "c:imp")) {
		t.Fatalf("touchKeyFromTime(%q) = %q", x, tk)
	}
}

// FuzzDecodeConversion: stored records are parsed on every read; arbitrary bytes must give an
// error, never a panic, and what decodes re-encodes to the same bytes.
func FuzzDecodeConversion(f *testing.F) {
	touch := Touch{Kind: KindView, Time: 1, Key: "i:x", AdID: "1"}
	f.Add(encodeConversion(&Conversion{Key: "e:o", Credited: true, Touch: touch}))
	f.Add(encodeConversion(&Conversion{Key: "e:o", Reason: ReasonOutsideWindow}))
	f.Add([]byte{1, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeConversion(b)
		if err != nil {
			return
		}
		if again := encodeConversion(&c); !bytes.Equal(again, b) {
			// Varints have one canonical form when encoded; a non-canonical input may decode.
			if c2, err := decodeConversion(again); err != nil || c2 != c {
				t.Fatalf("re-encoding changed the record: %+v vs %+v (%v)", c, c2, err)
			}
		}
		_, _ = decodeTouch(b)
		_, _ = decodeDeltas(b)
	})
}
