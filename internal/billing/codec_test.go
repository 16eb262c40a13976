package billing

import (
	"reflect"
	"testing"

	"github.com/adpulse/adpulse/internal/metricstore"
)

func TestJournalRoundTrip(t *testing.T) {
	in := map[deltaKey]int64{
		{metricstore.LevelAd, "a1", 29_000_000}:       500_000,
		{metricstore.LevelCampaign, "c1", 29_000_000}: -500_000,
	}
	out := map[deltaKey]int64{}
	if err := decodeJournal(encodeJournal(in), out); err != nil || !reflect.DeepEqual(in, out) {
		t.Errorf("journal round trip: %v, %v", out, err)
	}
}

// FuzzDecode: decoding journal entries and traffic profiles never panics.
func FuzzDecode(f *testing.F) {
	f.Add(encodeJournal(map[deltaKey]int64{{metricstore.LevelAd, "a", 1}: 2}))
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = decodeJournal(b, map[deltaKey]int64{})
		var p trafficProfile
		_ = p.decode(b)
	})
}
