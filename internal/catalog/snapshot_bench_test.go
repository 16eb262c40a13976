package catalog

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/cockroachdb/pebble/vfs"
)

// BenchmarkSnapshotLoad loads a snapshot of one million ads (b.N times), without a database:
// the feed position equals the head, so nothing is read from SQL.
func BenchmarkSnapshotLoad(b *testing.B) {
	const ads = 1_000_000
	path := filepath.Join(b.TempDir(), "catalog.snap")
	d, _ := dialectFor(DialectSQLite)
	mk := func() *Catalog {
		c := &Catalog{d: d, log: slog.New(slog.DiscardHandler), ads: newAdIndex()}
		c.snap = snapState{path: path, fs: vfs.Default, identity: "bench", loaded: true}
		return c
	}
	src := mk()
	for i := range 10 {
		src.indexAdvertiser(Advertiser{ID: fmt.Sprint("adv", i), Name: "n", Timezone: "UTC"}, nil, nil)
	}
	for i := range 1000 {
		if err := src.indexCampaign(Campaign{ID: fmt.Sprint("camp", i), AdvertiserID: fmt.Sprint("adv", i%10), CPCBidMicros: 100}); err != nil {
			b.Fatal(err)
		}
	}
	for i := range ads {
		if err := src.ads.put(fmt.Sprintf("ad-%08d", i), uint32(i%1000), fmt.Sprintf("https://shop.example/p/%d", i), "", 0, false); err != nil {
			b.Fatal(err)
		}
	}
	if err := src.WriteSnapshot(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		c := mk()
		if _, err := c.loadSnapshot(context.Background(), 0); err != nil {
			b.Fatal(err)
		}
		if c.ads.len() != ads {
			b.Fatalf("%d ads loaded", c.ads.len())
		}
	}
}
