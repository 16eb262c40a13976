package feeds

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/adpulse/adpulse/internal/archive"
	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/testseed"
)

const bidHeader = "catalog_id,bid_micros"

// TestLoadRollbackExpire: versions in CSV, NDJSON and Parquet load and become active, the
// bids in memory follow, a rollback makes an older one active again, and versions beyond the
// kept count lose their rows and can no longer be made active.
func TestLoadRollbackExpire(t *testing.T) {
	forEachBackend(t, func(t *testing.T, o catalog.Options) {
		ctx := context.Background()
		_, s := openStore(t, o)
		loc := dirTarget(t)
		reg := prometheus.NewRegistry()
		l := newLoader(t, loc, s, func(o *Options) { o.Keep = 2; o.Registerer = reg })
		bids, err := NewBids(s, 0, reg, nil)
		if err != nil {
			t.Fatal(err)
		}

		v1 := []file{csvFile("part-1.csv", bidHeader, "cat1,100", "cat2,200"), ndjsonFile("part-2.ndjson", `{"catalog_id":"cat3","bid_micros":300}`),
			parquetBids(t, "part-3.parquet", bidRow{"cat4", 400}, bidRow{"cat5", 500})}
		drop(t, loc, AutoCPC, "v1", manifestOf(v1...), v1...)
		poll(t, l)
		if v := versionOf(t, s, AutoCPC, "v1"); v.State != StateLoaded || v.Rows != 5 || v.Files != 3 {
			t.Fatalf("v1: %+v", v)
		}
		if err := bids.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		for id, want := range map[string]int64{"cat1": 100, "cat3": 300, "cat5": 500} {
			if got, ok := bids.Bid(id); !ok || got != want {
				t.Errorf("v1 bid %s = %d %v, want %d", id, got, ok, want)
			}
		}

		v2 := []file{csvFile("part-1.csv", bidHeader, "cat1,111")}
		drop(t, loc, AutoCPC, "v2", manifestOf(v2...), v2...)
		poll(t, l)
		if got := active(t, s, AutoCPC); got != "v2" {
			t.Fatalf("active %q after v2, want v2", got)
		}
		_ = bids.Refresh(ctx)
		if got, _ := bids.Bid("cat1"); got != 111 || bids.Version() != "v2" {
			t.Errorf("after v2: cat1 = %d, version %q", got, bids.Version())
		}
		if _, ok := bids.Bid("cat3"); ok {
			t.Error("cat3 is not in v2 but has a bid")
		}

		if err := s.Rollback(ctx, AutoCPC, "v1"); err != nil {
			t.Fatal(err)
		}
		_ = bids.Refresh(ctx)
		if got, _ := bids.Bid("cat1"); got != 100 || bids.Version() != "v1" {
			t.Errorf("after rollback: cat1 = %d, version %q", got, bids.Version())
		}
		if err := s.Rollback(ctx, AutoCPC, "v9"); !errors.Is(err, ErrNotFound) {
			t.Errorf("rollback to a missing version: %v", err)
		}

		// Keep 2: loading v3 and v4 expires v1 and v2 (v1 is active until v3 takes over).
		for _, v := range []string{"v3", "v4"} {
			f := csvFile("a.csv", bidHeader, "cat9,9")
			drop(t, loc, AutoCPC, v, manifestOf(f), f)
			poll(t, l)
		}
		for v, want := range map[string]string{"v1": StateExpired, "v2": StateExpired, "v3": StateLoaded, "v4": StateLoaded} {
			if got := versionOf(t, s, AutoCPC, v).State; got != want {
				t.Errorf("%s is %s, want %s", v, got, want)
			}
		}
		if n := countRows(t, s, "feed_auto_cpc", "v1"); n != 0 {
			t.Errorf("expired v1 still has %d rows", n)
		}
		if err := s.Rollback(ctx, AutoCPC, "v1"); !errors.Is(err, ErrNotLoaded) {
			t.Errorf("rollback to an expired version: %v", err)
		}
		if got := testutil.ToFloat64(l.m.loaded.WithLabelValues(AutoCPC)); got != 4 {
			t.Errorf("loaded metric %v, want 4", got)
		}
	})
}

// TestRejectedVersionsLoadNothing: one bad row, in any file, or a manifest that does not
// match the files, rejects the whole version with its file, row and field; no row of it is
// stored and the previous version stays active.
func TestRejectedVersionsLoadNothing(t *testing.T) {
	good1 := csvFile("part-1.csv", bidHeader, "a1,1", "a2,2")
	good2 := ndjsonFile("part-2.ndjson", `{"catalog_id":"a3","bid_micros":3}`)
	cases := []struct {
		name     string
		feed     string
		files    []file
		manifest func(files []file) []byte
		reason   string
	}{
		{name: "bad row in the third file", files: []file{good1, good2, csvFile("part-3.csv", bidHeader, "a4,4", "a5,-5", "a6,6")},
			reason: "part-3.csv: row 2: bid_micros: must be an integer from 1"},
		{name: "bad id", files: []file{good1, csvFile("part-3.csv", bidHeader, "bad id,4")}, reason: "part-3.csv: row 1: catalog_id: must be 1-64"},
		{name: "too large", files: []file{good1, csvFile("p.csv", bidHeader, "a9,1000000000000001")}, reason: "p.csv: row 1: bid_micros"},
		{name: "zero bid", files: []file{ndjsonFile("p.ndjson", `{"catalog_id":"a9","bid_micros":0}`)}, reason: "p.ndjson: row 1: bid_micros"},
		{name: "missing column", files: []file{ndjsonFile("p.ndjson", `{"catalog_id":"a9"}`)}, reason: "p.ndjson: row 1: bid_micros: is required"},
		{name: "not JSON", files: []file{good1, ndjsonFile("p.ndjson", `{"catalog_id":`)}, reason: "p.ndjson: row 1: not a JSON object"},
		{name: "duplicate key across files", files: []file{good1, csvFile("p.csv", bidHeader, "a2,7")}, reason: "p.csv: row 1: catalog_id: a2 is also in part-1.csv row 2"},
		{name: "missing file", files: []file{good1, good2}, manifest: func(f []file) []byte { return manifestOf(append(f, csvFile("gone.csv", bidHeader, "z,1"))...) },
			reason: "gone.csv: listed in the manifest but missing"},
		{name: "wrong checksum", files: []file{good1, good2}, manifest: func(f []file) []byte {
			return manifestOf(f[0], file{name: f[1].name, data: []byte("other"), rows: f[1].rows})
		}, reason: "part-2.ndjson: sha256 is"},
		{name: "fewer rows than listed", files: []file{good1}, manifest: func(f []file) []byte { return manifestOf(file{name: f[0].name, data: f[0].data, rows: 3}) },
			reason: "part-1.csv: 2 rows, the manifest says 3"},
		{name: "more rows than listed", files: []file{good1}, manifest: func(f []file) []byte { return manifestOf(file{name: f[0].name, data: f[0].data, rows: 1}) },
			reason: "part-1.csv: more rows than the manifest's 1"},
		{name: "bad manifest", files: []file{good1}, manifest: func([]file) []byte { return []byte(`{"files":[]}`) }, reason: "_manifest.json: manifest: files: at least one"},
		{name: "manifest of another feed", files: []file{good1}, manifest: func([]file) []byte {
			return []byte(`{"feed":"budget_recommendations","files":[{"path":"part-1.csv","rows":2,"sha256":"` + strings.Repeat("0", 64) + `"}]}`)
		},
			reason: "_manifest.json: feed \"budget_recommendations\""},
		{name: "not Parquet", files: []file{{name: "p.parquet", data: []byte("PAR1 not really"), rows: 1}}, reason: "p.parquet: not a Parquet file"},
		{name: "unknown campaign", feed: BudgetRecommendations,
			files:  []file{csvFile("r.csv", "campaign_id,recommended_daily_budget_micros,expected_clicks,reason", "c1,100,5,more", "nope,100,,")},
			reason: "r.csv: row 2: campaign_id: no such campaign nope"},
		{name: "negative expected clicks", feed: BudgetRecommendations,
			files: []file{csvFile("r.csv", "campaign_id,recommended_daily_budget_micros,expected_clicks", "c1,100,-1")}, reason: "r.csv: row 1: expected_clicks"},
	}
	forEachBackend(t, func(t *testing.T, o catalog.Options) {
		ctx := context.Background()
		_, s := openStore(t, o)
		loc := dirTarget(t)
		l := newLoader(t, loc, s, nil)
		goodBids := csvFile("a.csv", bidHeader, "a1,1")
		goodRecs := csvFile("r.csv", "campaign_id,recommended_daily_budget_micros", "c1,5")
		drop(t, loc, AutoCPC, "base", manifestOf(goodBids), goodBids)
		drop(t, loc, BudgetRecommendations, "base", manifestOf(goodRecs), goodRecs)
		poll(t, l)
		for i, c := range cases {
			feed := c.feed
			if feed == "" {
				feed = AutoCPC
			}
			version := fmt.Sprintf("bad%02d", i)
			m := manifestOf(c.files...)
			if c.manifest != nil {
				m = c.manifest(c.files)
			}
			drop(t, loc, feed, version, m, c.files...)
			poll(t, l)
			v := versionOf(t, s, feed, version)
			if v.State != StateRejected || !strings.Contains(v.Reason, c.reason) {
				t.Errorf("%s: %s %q, want rejected with %q", c.name, v.State, v.Reason, c.reason)
			}
			if got := active(t, s, feed); got != "base" {
				t.Errorf("%s: active %q, want base", c.name, got)
			}
			table := defs[feed].dataSQL
			if n := countRows(t, s, table, version); n != 0 {
				t.Errorf("%s: %d rows of a rejected version stored", c.name, n)
			}
		}
		vs, _, err := s.Versions(ctx, AutoCPC)
		if err != nil || len(vs) < 2 {
			t.Fatalf("versions: %v %v", vs, err)
		}
	})
}

// TestIncompleteVersionsWait: files without a manifest are not touched; once it arrives the
// version loads.
func TestIncompleteVersionsWait(t *testing.T) {
	_, s := openStore(t, backends[0].fresh(t, ""))
	loc := dirTarget(t)
	l := newLoader(t, loc, s, nil)
	f := csvFile("part-1.csv", bidHeader, "a1,1")
	drop(t, loc, AutoCPC, "v1", nil, f)
	poll(t, l)
	if known, _ := s.Known(context.Background(), AutoCPC, "v1"); known {
		t.Fatal("a version without its manifest was processed")
	}
	drop(t, loc, AutoCPC, "v1", manifestOf(f))
	poll(t, l)
	if v := versionOf(t, s, AutoCPC, "v1"); v.State != StateLoaded {
		t.Fatalf("v1 %+v", v)
	}
}

// TestIdempotentAcrossRestartsAndLoaders: a version loaded or rejected is not processed
// again by a new loader on the same database (a restart), even if its files changed since;
// two loaders polling at once load each version exactly once.
func TestIdempotentAcrossRestartsAndLoaders(t *testing.T) {
	seed := testseed.Seed(t)
	rng := rand.New(rand.NewPCG(seed, 1))
	forEachBackend(t, func(t *testing.T, o catalog.Options) {
		ctx := context.Background()
		_, s := openStore(t, o)
		loc := dirTarget(t)
		good := csvFile("a.csv", bidHeader, "a1,1", "a2,2")
		bad := csvFile("a.csv", bidHeader, "a1,x")
		drop(t, loc, AutoCPC, "v1", manifestOf(good), good)
		drop(t, loc, AutoCPC, "v2", manifestOf(bad), bad)
		poll(t, newLoader(t, loc, s, nil))
		if versionOf(t, s, AutoCPC, "v1").State != StateLoaded || versionOf(t, s, AutoCPC, "v2").State != StateRejected {
			t.Fatal("first poll")
		}
		// The files change after processing: the bad one fixed, the good one broken. A
		// restarted loader (a new store on the same database) leaves both as they were.
		drop(t, loc, AutoCPC, "v1", manifestOf(bad), bad)
		drop(t, loc, AutoCPC, "v2", manifestOf(good), good)
		_, s2 := openStore(t, o)
		reg := prometheus.NewRegistry()
		l2 := newLoader(t, loc, s2, func(o *Options) { o.Registerer = reg })
		poll(t, l2)
		if v := versionOf(t, s2, AutoCPC, "v1"); v.State != StateLoaded || v.Rows != 2 {
			t.Errorf("v1 after restart: %+v", v)
		}
		if v := versionOf(t, s2, AutoCPC, "v2"); v.State != StateRejected {
			t.Errorf("v2 after restart: %+v", v)
		}
		if n := testutil.ToFloat64(l2.m.loaded.WithLabelValues(AutoCPC)) + testutil.ToFloat64(l2.m.rejected.WithLabelValues(AutoCPC)); n != 0 {
			t.Errorf("restarted loader processed %v versions", n)
		}
		if got := active(t, s2, AutoCPC); got != "v1" {
			t.Errorf("active %q", got)
		}

		// Two loaders, one database, polling at once: every version loads once.
		const versions = 6
		for i := 0; i < versions; i++ {
			f := csvFile("a.csv", bidHeader, fmt.Sprintf("x%d,%d", i, 1+rng.IntN(1000)))
			drop(t, loc, AutoCPC, fmt.Sprintf("w%d", i), manifestOf(f), f)
		}
		keepAll := func(o *Options) { o.Keep = 100 }
		loaders := []*Loader{newLoader(t, loc, s, keepAll), newLoader(t, loc, s2, keepAll)}
		var wg sync.WaitGroup
		for _, l := range loaders {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 3; i++ {
					_ = l.Poll(ctx) // the loser of a race may see a transient error: retried
				}
			}()
		}
		wg.Wait()
		var loaded float64
		for _, l := range loaders {
			loaded += testutil.ToFloat64(l.m.loaded.WithLabelValues(AutoCPC))
		}
		if loaded != versions {
			t.Errorf("two loaders loaded %v versions, want %d", loaded, versions)
		}
		for i := 0; i < versions; i++ {
			if v := versionOf(t, s, AutoCPC, fmt.Sprintf("w%d", i)); v.State != StateLoaded || countRows(t, s, "feed_auto_cpc", v.Version) != 1 {
				t.Errorf("w%d: %+v", i, v)
			}
		}
	})
}

// TestS3Location: the same loader on an S3 prefix (gofakes3 in process).
func TestS3Location(t *testing.T) {
	backend := s3mem.New()
	if err := backend.CreateBucket("lake"); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gofakes3.New(backend).Server())
	t.Cleanup(srv.Close)
	loc, err := archive.OpenTarget("s3://lake/ds/feeds/", archive.S3Options{Endpoint: strings.TrimPrefix(srv.URL, "http://"), Region: "us-east-1",
		AccessKey: "test", SecretKey: "test-secret", Insecure: true, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	_, s := openStore(t, backends[0].fresh(t, ""))
	l := newLoader(t, loc, s, nil)
	bids := []file{csvFile("part-1.csv", bidHeader, "cat1,100"), parquetBids(t, "part-2.parquet", bidRow{"cat2", 200})}
	recs := []file{ndjsonFile("r.ndjson", `{"campaign_id":"c1","recommended_daily_budget_micros":5000000,"expected_clicks":40,"reason":"more reach"}`)}
	drop(t, loc, AutoCPC, "2026-12-03", nil, bids...)
	poll(t, l)
	if known, _ := s.Known(context.Background(), AutoCPC, "2026-12-03"); known {
		t.Fatal("processed before its manifest arrived")
	}
	drop(t, loc, AutoCPC, "2026-12-03", manifestOf(bids...))
	drop(t, loc, BudgetRecommendations, "r1", manifestOf(recs...), recs...)
	bad := csvFile("part-1.csv", bidHeader, "cat1,1")
	drop(t, loc, AutoCPC, "2026-12-04", manifestOf(bad, csvFile("part-2.csv", bidHeader, "cat2,2")), bad)
	poll(t, l)
	if v := versionOf(t, s, AutoCPC, "2026-12-03"); v.State != StateLoaded || v.Rows != 2 {
		t.Errorf("auto_cpc: %+v", v)
	}
	if v := versionOf(t, s, AutoCPC, "2026-12-04"); v.State != StateRejected || !strings.Contains(v.Reason, "part-2.csv: listed in the manifest but missing") {
		t.Errorf("auto_cpc with a missing file: %+v", v)
	}
	rec, err := s.Recommendation(context.Background(), "c1")
	if err != nil || rec.RecommendedDailyBudgetMicros != 5_000_000 || rec.ExpectedClicks == nil || *rec.ExpectedClicks != 40 || rec.Version != "r1" {
		t.Errorf("recommendation %+v %v", rec, err)
	}
	if _, err := s.Recommendation(context.Background(), "c2"); !errors.Is(err, ErrNotFound) {
		t.Errorf("recommendation of a campaign without one: %v", err)
	}
}

// TestClickPrice: the auto-CPC rule.
func TestClickPrice(t *testing.T) {
	_, s := openStore(t, backends[0].fresh(t, ""))
	loc := dirTarget(t)
	f := csvFile("a.csv", bidHeader, "low,300", "high,900")
	drop(t, loc, AutoCPC, "v1", manifestOf(f), f)
	poll(t, newLoader(t, loc, s, nil))
	b, _ := NewBids(s, 0, nil, nil)
	if err := b.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ad   catalog.AdInfo
		want int64
	}{
		{catalog.AdInfo{CatalogID: "low", CPCBidMicros: 500, CampaignBidMicros: 500, AutoCPC: true}, 300},
		{catalog.AdInfo{CatalogID: "high", CPCBidMicros: 500, CampaignBidMicros: 500, AutoCPC: true}, 500},
		{catalog.AdInfo{CatalogID: "high", CPCBidMicros: 200, CampaignBidMicros: 500, AutoCPC: true}, 500},
		{catalog.AdInfo{CatalogID: "none", CPCBidMicros: 200, CampaignBidMicros: 500, AutoCPC: true}, 200},
		{catalog.AdInfo{CPCBidMicros: 200, CampaignBidMicros: 500, AutoCPC: true}, 200},
		{catalog.AdInfo{CatalogID: "low", CPCBidMicros: 500, CampaignBidMicros: 500}, 0},
	} {
		if got := b.ClickPrice(c.ad); got != c.want {
			t.Errorf("ClickPrice(%+v) = %d, want %d", c.ad, got, c.want)
		}
	}
}

// TestFileOverTheLimitRejected: a file larger than MaxFileBytes rejects its version, naming
// the file and the limit, without being read into memory whole.
func TestFileOverTheLimitRejected(t *testing.T) {
	_, s := openStore(t, catalog.Options{Dialect: catalog.DialectSQLite, DSN: filepath.Join(t.TempDir(), "catalog.db")})
	loc := dirTarget(t)
	l := newLoader(t, loc, s, func(o *Options) { o.MaxFileBytes = 40 })
	small := csvFile("a.csv", bidHeader, "a1,1")
	big := csvFile("b.csv", bidHeader, "a2,2", "a3,3", "a4,4", "a5,5", "a6,6")
	drop(t, loc, AutoCPC, "v1", manifestOf(small, big), small, big)
	poll(t, l)
	v := versionOf(t, s, AutoCPC, "v1")
	if v.State != StateRejected || !strings.Contains(v.Reason, "b.csv: more than the limit of 40 bytes") {
		t.Fatalf("%s %q, want rejected for b.csv's size", v.State, v.Reason)
	}
	if got := active(t, s, AutoCPC); got != "" {
		t.Errorf("active %q, want none", got)
	}
}
