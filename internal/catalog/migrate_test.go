package catalog

import (
	"context"
	"testing"
	"time"
)

// TestAutoCPCColumnAdded: a database made before campaigns had auto_cpc gets the column at
// Open, its campaigns read as not auto-CPC, and the flag then round-trips through SQL and the
// index.
func TestAutoCPCColumnAdded(t *testing.T) {
	forEachBackend(t, func(t *testing.T, o Options) {
		ctx := context.Background()
		clock := &testClock{t: time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)}
		c := openWith(t, o, clock)
		if _, err := c.PutAdvertiser(ctx, Advertiser{ID: "a1", Name: "A"}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.PutCampaign(ctx, Campaign{ID: "old", AdvertiserID: "a1", Name: "Old", CPCBidMicros: 5}); err != nil {
			t.Fatal(err)
		}
		db, _ := c.DB()
		if _, err := db.ExecContext(ctx, `ALTER TABLE campaigns DROP COLUMN auto_cpc`); err != nil {
			t.Fatalf("make the old schema: %v", err)
		}
		c.Close()

		c = openWith(t, o, clock)
		if cp, err := c.GetCampaign(ctx, "old"); err != nil || cp.AutoCPC {
			t.Fatalf("old campaign after the migration: %+v %v", cp, err)
		}
		if _, err := c.PutCampaign(ctx, Campaign{ID: "auto", AdvertiserID: "a1", Name: "Auto", CPCBidMicros: 5, AutoCPC: true}); err != nil {
			t.Fatal(err)
		}
		c = openWith(t, o, clock)
		cp, err := c.GetCampaign(ctx, "auto")
		info, _ := c.Campaign("auto")
		if err != nil || !cp.AutoCPC || !info.AutoCPC {
			t.Errorf("auto_cpc after a restart: %+v %+v %v", cp, info, err)
		}
	})
}
