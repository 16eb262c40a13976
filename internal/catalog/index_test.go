package catalog

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// memCatalog is a Catalog with no database, for exercising the in-memory index directly.
func memCatalog(campaigns int) *Catalog {
	c := &Catalog{ads: newAdIndex(), log: slog.New(slog.DiscardHandler), now: time.Now}
	c.indexAdvertiser(Advertiser{ID: "adv-1", Name: "A", Timezone: "UTC"}, nil, nil)
	for i := range campaigns {
		if err := c.indexCampaign(Campaign{ID: "camp-" + strconv.Itoa(i), AdvertiserID: "adv-1", Status: StatusActive, CPCBidMicros: int64(1000 + i)}); err != nil {
			panic(err)
		}
	}
	return c
}

func benchAdID(i int) string { return fmt.Sprintf("ad-%08d", i) }

func benchURL(i int) string {
	return "https://shop.example.com/p/" + strconv.Itoa(i*7919%1000003) + "?utm_source=adpulse"
}

// fillIndex puts n ads straight into the index, as loading at Open does.
func fillIndex(tb testing.TB, c *Catalog, n, campaigns int) {
	tb.Helper()
	for i := range n {
		_, idx, _ := c.campaigns.get("camp-" + strconv.Itoa(i%campaigns))
		hasBid := i%10 == 0
		if err := c.ads.put(benchAdID(i), idx, benchURL(i), "cat-"+strconv.Itoa(i%5000), int64(i), hasBid); err != nil {
			tb.Fatal(err)
		}
	}
}

func TestAdIndexPutGetUpdate(t *testing.T) {
	const n, campaigns = 50_000, 100
	c := memCatalog(campaigns)
	fillIndex(t, c, n, campaigns)
	if got := c.Stats().Ads; got != n {
		t.Fatalf("Stats().Ads = %d, want %d", got, n)
	}
	check := func(i int, wantURL string, wantBid int64) {
		t.Helper()
		info, ok := c.Ad(benchAdID(i))
		if !ok {
			t.Fatalf("ad %d not found", i)
		}
		want := AdInfo{AdID: benchAdID(i), CampaignID: "camp-" + strconv.Itoa(i%campaigns), AdvertiserID: "adv-1",
			LandingURL: wantURL, CatalogID: "cat-" + strconv.Itoa(i%5000), CPCBidMicros: wantBid, CampaignBidMicros: int64(1000 + i%campaigns)}
		if info != want {
			t.Fatalf("ad %d = %+v, want %+v", i, info, want)
		}
	}
	for i := range n {
		bid := int64(1000 + i%campaigns)
		if i%10 == 0 {
			bid = int64(i)
		}
		check(i, benchURL(i), bid)
	}
	for _, id := range []string{"", "ad-", "ad-99999999", "nope", strings.Repeat("x", 64)} {
		if _, ok := c.Ad(id); ok {
			t.Errorf("Ad(%q) found", id)
		}
	}

	// Replace every third ad with a longer URL and no override; the garbage this leaves is
	// compacted by rebuilds, which must keep every ad.
	for i := 0; i < n; i += 3 {
		_, idx, _ := c.campaigns.get("camp-" + strconv.Itoa(i%campaigns))
		if err := c.ads.put(benchAdID(i), idx, benchURL(i)+"&v=2", "cat-"+strconv.Itoa(i%5000), 0, false); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		url, bid := benchURL(i), int64(1000+i%campaigns)
		if i%3 == 0 {
			url += "&v=2"
		} else if i%10 == 0 {
			bid = int64(i)
		}
		check(i, url, bid)
	}
	if got := c.Stats().Ads; got != n {
		t.Fatalf("after updates Stats().Ads = %d, want %d", got, n)
	}

	// A campaign bid change is seen by all its ads without touching them.
	_ = c.indexCampaign(Campaign{ID: "camp-1", AdvertiserID: "adv-1", Status: StatusActive, CPCBidMicros: 777})
	if info, _ := c.Ad(benchAdID(1)); info.CPCBidMicros != 777 {
		t.Errorf("after campaign bid change, ad bid = %d, want 777", info.CPCBidMicros)
	}
	if info, _ := c.Ad(benchAdID(campaigns + 1)); info.CPCBidMicros != 777 {
		t.Errorf("after campaign bid change, ad bid = %d, want 777", info.CPCBidMicros)
	}
	if info, _ := c.Ad(benchAdID(10*campaigns + 10)); info.CPCBidMicros != 10*campaigns+10 {
		t.Errorf("ad with an override: bid = %d, want its override", info.CPCBidMicros)
	}
}

func TestAdIndexRejectsOversizedFields(t *testing.T) {
	x := newAdIndex()
	for _, tc := range []struct{ id, url, cat string }{
		{"", "https://a", ""},
		{strings.Repeat("a", 256), "https://a", ""},
		{"a", strings.Repeat("u", maxRecURL+1), ""},
		{"a", "https://a", strings.Repeat("c", 256)},
	} {
		if err := x.put(tc.id, 0, tc.url, tc.cat, 0, false); err == nil {
			t.Errorf("put(len id %d, len url %d, len cat %d) succeeded", len(tc.id), len(tc.url), len(tc.cat))
		}
	}
}

// TestAdIndexConcurrent has readers check every answer for internal consistency (the landing
// URL names the ad and its version matches the catalog id) while writers keep replacing ads
// and forcing rebuilds. Under -race it also checks the publication protocol.
func TestAdIndexConcurrent(t *testing.T) {
	const n = 5000
	c := memCatalog(4)
	put := func(i, version int) {
		_, idx, _ := c.campaigns.get("camp-" + strconv.Itoa(i%4))
		v := strconv.Itoa(version)
		if err := c.ads.put(benchAdID(i), idx, "https://x.example/"+benchAdID(i)+"/"+v+strings.Repeat("p", version%50), "v"+v, int64(version), version%2 == 0); err != nil {
			t.Error(err)
		}
	}
	for i := range n {
		put(i, 0)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	var reads atomic.Int64
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(r), 1))
			for !stop.Load() {
				i := rng.IntN(n + 100) // some misses
				info, ok := c.Ad(benchAdID(i))
				reads.Add(1)
				if i >= n {
					if ok {
						t.Errorf("found missing ad %d", i)
					}
					continue
				}
				if !ok {
					t.Errorf("ad %d not found", i)
					return
				}
				v := strings.TrimPrefix(info.CatalogID, "v")
				if !strings.HasPrefix(info.LandingURL, "https://x.example/"+benchAdID(i)+"/"+v) {
					t.Errorf("ad %d: torn record: url %q catalog %q", i, info.LandingURL, info.CatalogID)
					return
				}
			}
		}()
	}
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for version := 1; version <= 6; version++ {
				for i := w; i < n; i += 2 {
					put(i, version)
				}
			}
		}()
	}
	// Writers finish; then let readers run a moment longer.
	time.Sleep(50 * time.Millisecond)
	for c.ads.len() != n {
		time.Sleep(time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	if reads.Load() == 0 {
		t.Fatal("no reads")
	}
}

// heapAfterGC is the live heap, measured after two collections so finalizers and sweeping are
// done.
func heapAfterGC() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestAdIndexMemory bounds the index's memory per ad. It is not timed; the bound is loose (the
// benchmark reports the exact figure) but catches a per-ad pointer or map creeping in.
func TestAdIndexMemory(t *testing.T) {
	n := 200_000
	if testing.Short() {
		n = 50_000
	}
	c := memCatalog(1000)
	before := heapAfterGC()
	fillIndex(t, c, n, 1000)
	after := heapAfterGC()
	perAd := float64(after-before) / float64(n)
	// The data itself (id, catalog id, URL, 8-byte header) is about 70 bytes per ad here.
	t.Logf("%d ads: %.1f bytes/ad (index reports %.1f)", n, perAd, float64(c.Stats().IndexBytes)/float64(n))
	if perAd > 160 {
		t.Errorf("%.1f bytes per ad, want <= 160", perAd)
	}
	runtime.KeepAlive(c)
}

// BenchmarkAdLookup1M loads 1,000,000 ads into the index, reports the heap bytes per ad, then
// measures Catalog.Ad on random ids:
//
//	go test -run '^$' -bench AdLookup1M -benchmem ./internal/catalog/
func BenchmarkAdLookup1M(b *testing.B) {
	const n, campaigns = 1_000_000, 1000
	c := memCatalog(campaigns)
	before := heapAfterGC()
	start := time.Now()
	fillIndex(b, c, n, campaigns)
	load := time.Since(start)
	after := heapAfterGC()
	ids := make([]string, 1<<16)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range ids {
		ids[i] = benchAdID(rng.IntN(n))
	}
	// Sub-benchmarks do not print their parent's metrics, so each reports them.
	report := func(b *testing.B) {
		b.ReportMetric(float64(after-before)/n, "bytes/ad")
		b.ReportMetric(float64(load.Nanoseconds())/n, "load-ns/ad")
	}
	b.Run("serial", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, ok := c.Ad(ids[i&(len(ids)-1)]); !ok {
				b.Fatal("miss")
			}
			i++
		}
		report(b)
	})
	b.Run("parallel", func(b *testing.B) {
		report(b)
		var start atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			i := int(start.Add(7919)) // a different start per goroutine
			for pb.Next() {
				if _, ok := c.Ad(ids[i&(len(ids)-1)]); !ok {
					b.Error("miss")
					return
				}
				i++
			}
		})
	})
	b.Run("hot-parallel", func(b *testing.B) {
		report(b)
		// Every core on one ad: the case a lock-free read is for.
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, ok := c.Ad(ids[0]); !ok {
					b.Error("miss")
					return
				}
			}
		})
	})
	runtime.KeepAlive(c)
}

// TestAdIndexCompaction rewrites every ad many times: the garbage of replaced records must be
// reclaimed, and every ad must survive the compactions.
func TestAdIndexCompaction(t *testing.T) {
	const n, rounds = 2000, 100
	c := memCatalog(1)
	_, idx, _ := c.campaigns.get("camp-0")
	pad := strings.Repeat("p", 200)
	for r := range rounds {
		for i := range n {
			if err := c.ads.put(benchAdID(i), idx, "https://x.example/"+strconv.Itoa(r)+"/"+pad, "", 0, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("index bytes after %d rewrites of %d ads: %d", rounds, n, c.Stats().IndexBytes)
	// Without compaction the chunks would hold n*rounds records (about 45 MB).
	if b := c.Stats().IndexBytes; b > 16<<20 {
		t.Errorf("index holds %d bytes for %d ads", b, n)
	}
	for i := range n {
		info, ok := c.Ad(benchAdID(i))
		if !ok || info.LandingURL != "https://x.example/"+strconv.Itoa(rounds-1)+"/"+pad {
			t.Fatalf("ad %d: %+v %v", i, info, ok)
		}
	}
}

// TestCampaignTableConcurrent grows and updates the campaign table while ads resolve through
// it, under -race.
func TestCampaignTableConcurrent(t *testing.T) {
	c := memCatalog(1)
	_, idx, _ := c.campaigns.get("camp-0")
	for i := range 100 {
		if err := c.ads.put(benchAdID(i), idx, "https://x.example/", "", 0, false); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	var stop atomic.Bool
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			info, ok := c.Ad(benchAdID(7))
			if !ok || info.CampaignID != "camp-0" || info.CPCBidMicros < 1000 {
				t.Errorf("Ad = %+v, %v", info, ok)
				return
			}
			if ci, ok := c.Campaign("camp-0"); !ok || ci.CPCBidMicros < 1000 {
				t.Errorf("Campaign = %+v, %v", ci, ok)
				return
			}
			c.Campaign("camp-500") // may or may not exist yet
		}
	}()
	for i := 1; i <= 1000; i++ {
		for _, id := range []string{"camp-0", "camp-" + strconv.Itoa(i)} {
			if err := c.indexCampaign(Campaign{ID: id, AdvertiserID: "adv-1", Status: StatusActive, CPCBidMicros: int64(1000 + i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	stop.Store(true)
	wg.Wait()
	if info, _ := c.Ad(benchAdID(7)); info.CPCBidMicros != 2000 {
		t.Errorf("final bid %d, want 2000", info.CPCBidMicros)
	}
	if got := c.Stats().Campaigns; got != 1001 {
		t.Errorf("campaigns %d", got)
	}
}
