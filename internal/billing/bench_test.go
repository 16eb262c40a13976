package billing

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/billing/ledger"
	"github.com/adpulse/adpulse/internal/billing/ledger/ledgertest"
	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog/eventlogtest"
	"github.com/adpulse/adpulse/internal/metricstore/pebblestore"
	"github.com/cockroachdb/pebble/vfs"
)

// BenchmarkChargeRounds measures charging throughput per ledger: b.N clicks on 50 campaigns
// in 8 partitions, consumed by one Charger in rounds (each one ledger transaction).
//
//	go test -run X -bench ChargeRounds -benchtime 20000x ./internal/billing/
func BenchmarkChargeRounds(b *testing.B) {
	b.Run("pebble", func(b *testing.B) {
		st, err := ledger.OpenPebble(filepath.Join(b.TempDir(), "billing"), ledger.PebbleOptions{})
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		benchRounds(b, st)
	})
	for _, be := range ledgertest.SQLBackends {
		b.Run(be.Name, func(b *testing.B) {
			db, prefix := be.OpenDB(b)
			st, err := ledger.OpenSQL(context.Background(), db, be.Dialect, ledger.SQLOptions{Prefix: prefix})
			if err != nil {
				b.Fatal(err)
			}
			benchRounds(b, st)
		})
	}
}

func benchRounds(b *testing.B, st ledger.Store) {
	ctx := context.Background()
	clock := newClock(t0)
	cat := newFakeCatalog()
	cat.advertiser(b, "adv1", "UTC")
	for i := range 50 {
		id := fmt.Sprintf("c%d", i)
		cat.campaign(catalog.CampaignInfo{CampaignID: id, AdvertiserID: "adv1", CPCBidMicros: 1000, DailyBudgetMicros: 1 << 40})
		cat.ad("a"+id, id, 0)
	}
	log := eventlogtest.NewMemLog(8, clock.Now)
	metrics, err := pebblestore.Open("metrics", pebblestore.Options{FS: vfs.NewMem(), Now: clock.Now})
	if err != nil {
		b.Fatal(err)
	}
	defer metrics.Close()
	c, err := Open(ctx, Options{Ledger: st, Log: log, Catalog: cat, Metrics: metrics, Now: clock.Now})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	evs := make([]event.Event, b.N)
	for i := range evs {
		id := fmt.Sprintf("c%d", i%50)
		evs[i] = event.Event{Type: event.TypeClick, Time: t0.UnixMicro(), RecvTime: t0.UnixMicro(), AdID: "a" + id, CampaignID: id, AdvertiserID: "adv1", ImpressionID: fmt.Sprintf("i%d", i)}
	}
	appendEvents(b, log, evs...)
	b.ResetTimer()
	start := time.Now()
	for {
		n, err := c.w.round(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	b.StopTimer()
	s := c.Stats()
	if s.ClicksCharged != int64(b.N) {
		b.Fatalf("charged %d of %d", s.ClicksCharged, b.N)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "clicks/s")
	b.ReportMetric(float64(s.Commits), "rounds")
}
