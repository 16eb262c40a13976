package catalog

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/cockroachdb/pebble/vfs"
)

var snapBenchAds = flag.Int("snapshot.ads", 1_000_000, "ads in the snapshot BenchmarkSnapshotLoad loads")

// BenchmarkSnapshotLoad loads a snapshot of a million ads (-snapshot.ads) b.N times, without
// a database: the feed position equals the head, so nothing is read from SQL. It reports the
// load time per million ads and the file's size, on fresh memory (cold) and on reused (warm).
//
//	go test -run '^$' -bench SnapshotLoad ./internal/catalog -snapshot.ads 10000000
func BenchmarkSnapshotLoad(b *testing.B) {
	ads := *snapBenchAds
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
	st, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	src = nil
	load := func(b *testing.B, cold bool) {
		for range b.N {
			b.StopTimer()
			if cold {
				// Start on memory returned to the system, as a restarted process does: the
				// page faults of filling fresh memory are part of its cost.
				debug.FreeOSMemory()
			} else {
				runtime.GC() // the previous load's memory is free for this one
			}
			b.StartTimer()
			c := mk()
			if _, err := c.loadSnapshot(context.Background(), 0); err != nil {
				b.Fatal(err)
			}
			if c.ads.len() != ads {
				b.Fatalf("%d ads loaded", c.ads.len())
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(ads)*1e6/1e9, "s/M-ads")
		b.ReportMetric(float64(st.Size())/1e6, "file-MB")
	}
	// Warm reuses the memory of the previous load, so it shows the loading itself; cold is
	// what a restart pays, which on some virtual machines is mostly the page faults.
	b.Run("cold", func(b *testing.B) { load(b, true) })
	b.Run("warm", func(b *testing.B) { load(b, false) })
}
