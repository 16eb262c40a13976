package billing

import (
	"reflect"
	"testing"

	"github.com/adpulse/adpulse/internal/metricstore"
)

func TestLedgerRoundTrip(t *testing.T) {
	for _, e := range []ledgerEntry{
		{State: stateCharged, ChargedMicros: 500_000, PriceMicros: 500_000, Time: 1_763_719_205_000_000, Day: 20413, DayStart: 1_763_683_200, Partition: 3, Offset: 12345, CampaignID: "c1", AdID: "a1", AdvertiserID: "adv1"},
		{State: stateRefunded, Reason: reasonDailyBudget, ChargedMicros: 1, PriceMicros: 9, Time: 1, Day: 0, RefundedAt: 99, CampaignID: "", AdID: "x"},
	} {
		got, err := decodeLedger(encodeLedger(nil, &e))
		if err != nil || !reflect.DeepEqual(got, e) {
			t.Errorf("round trip of %+v: %+v, %v", e, got, err)
		}
	}
}

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

// FuzzDecode: decoding stored records never panics, and what decodes re-encodes the same.
func FuzzDecode(f *testing.F) {
	f.Add(encodeLedger(nil, &ledgerEntry{State: stateCharged, ChargedMicros: 5, CampaignID: "c"}))
	f.Add(encodeJournal(map[deltaKey]int64{{metricstore.LevelAd, "a", 1}: 2}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if e, err := decodeLedger(b); err == nil {
			if e2, err := decodeLedger(encodeLedger(nil, &e)); err != nil || !reflect.DeepEqual(e, e2) {
				t.Fatalf("ledger entry does not round-trip: %+v", e)
			}
		}
		_ = decodeJournal(b, map[deltaKey]int64{})
		var p trafficProfile
		_ = p.decode(b)
	})
}
