package billing

import (
	"context"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/metricstore/pebblestore"
)

// TestRefundPastMinuteRetention: a click refunded after its minute bucket expired takes its
// charge off the click's hour and day, which are still kept, and leaves no minute row behind:
// were the minute retention raised later, the click's minutes would not show a negative
// spend that no charge in them explains.
func TestRefundPastMinuteRetention(t *testing.T) {
	h := basicSetup(t)
	ctx := context.Background()
	appendEvents(t, h.log, h.click("i1", "a1", t0, 0), h.click("i2", "a1", t0.Add(time.Hour), 0))
	h.sync()
	h.clock.Add(15 * 24 * time.Hour) // past the default 14 days of minutes
	if err := h.store.Expire(ctx); err != nil {
		t.Fatal(err)
	}
	if r, err := h.refund("i1"); err != nil || r.RefundedMicros != 500_000 {
		t.Fatalf("refund: %+v, %v", r, err)
	}
	h.sync()
	h.checkMoney()
	spend := func(s metricstore.Store, iv time.Duration) []int64 {
		t.Helper()
		res, err := s.Query(ctx, metricstore.Query{Level: metricstore.LevelCampaign, IDs: []string{"c1"},
			Start: t0.Truncate(time.Hour), End: t0.Truncate(time.Hour).Add(2 * time.Hour), Interval: iv})
		if err != nil {
			t.Fatalf("query at %v: %v", iv, err)
		}
		var out []int64
		for _, p := range res.Series[0].Points {
			out = append(out, p.SpendMicros)
		}
		return out
	}
	if got := spend(h.store, time.Hour); got[0] != 0 || got[1] != 500_000 {
		t.Errorf("hourly spend %v, want [0 500000]: the refund belongs to the refunded click's hour", got)
	}

	// Keep minutes forever from now on: the refunded click's minutes must agree with its hour.
	if err := h.store.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := pebblestore.Open("metrics", pebblestore.Options{FS: h.fs, Now: h.clock.Now, MinuteRetention: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i, v := range spend(s, time.Minute)[:60] {
		if v != 0 {
			t.Errorf("minute %s: spend %d in the refunded click's hour, whose spend is 0", t0.Truncate(time.Hour).Add(time.Duration(i)*time.Minute).Format("15:04"), v)
		}
	}
}
