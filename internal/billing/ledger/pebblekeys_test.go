package ledger

import (
	"reflect"
	"testing"
)

func TestLedgerRoundTrip(t *testing.T) {
	for _, e := range []Entry{
		{State: StateCharged, ChargedMicros: 500_000, PriceMicros: 500_000, Time: 1_763_719_205_000_000, Day: 20413, DayStart: 1_763_683_200, Partition: 3, Offset: 12345, CampaignID: "c1", AdID: "a1", AdvertiserID: "adv1"},
		{State: StateRefunded, Reason: 6, ChargedMicros: 1, PriceMicros: 9, Time: 1, Day: 0, RefundedAt: 99, CampaignID: "", AdID: "x"},
	} {
		got, err := decodeLedger(encodeLedger(nil, &e))
		if err != nil || !reflect.DeepEqual(got, e) {
			t.Errorf("round trip of %+v: %+v, %v", e, got, err)
		}
	}
}

// FuzzDecodeLedger: decoding stored entries never panics, and what decodes re-encodes the same.
func FuzzDecodeLedger(f *testing.F) {
	f.Add(encodeLedger(nil, &Entry{State: StateCharged, ChargedMicros: 5, CampaignID: "c"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if e, err := decodeLedger(b); err == nil {
			if e2, err := decodeLedger(encodeLedger(nil, &e)); err != nil || !reflect.DeepEqual(e, e2) {
				t.Fatalf("ledger entry does not round-trip: %+v", e)
			}
		}
	})
}
