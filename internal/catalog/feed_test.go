package catalog

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/httpapi"
)

// testSeed returns the seed of a randomized test (ADPULSE_TEST_SEED replays one) and logs it.
func testSeed(t *testing.T) uint64 {
	t.Helper()
	s := uint64(time.Now().UnixNano())
	if v := os.Getenv("ADPULSE_TEST_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("ADPULSE_TEST_SEED=%q: %v", v, err)
		}
		s = n
	}
	t.Logf("seed %d (replay with ADPULSE_TEST_SEED=%d)", s, s)
	return s
}

// runFeed runs c's follower until the test ends.
func runFeed(t *testing.T, c *Catalog) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// within waits until deadline for cond, failing the test with what if it does not come true.
func within(t *testing.T, deadline time.Time, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		if time.Now().After(deadline) {
			t.Errorf("%s: not seen within 2 s of the write", what)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// revokeKey deletes a key the way a key API would, as a change of the feed.
func revokeKey(t *testing.T, c *Catalog, key string) {
	t.Helper()
	h := keyHash(key)
	hexHash := hex.EncodeToString(h[:])
	ctx := context.Background()
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	err := c.writeTx(ctx, func(tx *sql.Tx, ch *changes) error {
		ch.add(changeKey, hexHash)
		_, err := tx.ExecContext(ctx, c.d.q(`DELETE FROM api_keys WHERE key_hash = ?`), hexHash)
		return err
	}, func(context.Context) error { c.removeKey(h); return nil })
	if err != nil {
		t.Fatalf("revoke key: %v", err)
	}
}

// TestFeedVisibility: a write through one process is in force on another sharing the database
// within 2 s, for every kind of object and for keys, with the default poll interval.
func TestFeedVisibility(t *testing.T) { forEachBackend(t, testFeedVisibility) }

func testFeedVisibility(t *testing.T, o Options) {
	ctx := context.Background()
	clock := &testClock{t: testNow}
	a, b := openWith(t, o, clock), openWith(t, o, clock)
	runFeed(t, a)
	runFeed(t, b)
	const limit = 2 * time.Second

	// Creations through A, all in force on B within 2 s of the first.
	deadline := time.Now().Add(limit)
	noErr(t)(a.PutAdvertiser(ctx, Advertiser{ID: "adv", Name: "Acme"}))
	noErr(t)(a.PutCampaign(ctx, Campaign{ID: "camp", AdvertiserID: "adv", Name: "C", CPCBidMicros: 100, DailyBudgetMicros: 1000}))
	noErr(t)(a.PutAd(ctx, Ad{ID: "ad1", CampaignID: "camp", LandingURL: "https://a.example/1"}))
	bulk := make([]Ad, 50)
	for i := range bulk {
		bulk[i] = Ad{ID: fmt.Sprintf("bulk%d", i), CampaignID: "camp", LandingURL: fmt.Sprintf("https://a.example/b%d", i), CatalogID: "cat"}
	}
	if errs, err := a.PutAds(ctx, bulk); err != nil || slices.ContainsFunc(errs, func(e error) bool { return e != nil }) {
		t.Fatalf("PutAds: %v %v", errs, err)
	}
	ik, err := a.CreateIngestKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ak, err := a.CreateAdvertiserKey(ctx, "adv")
	if err != nil {
		t.Fatal(err)
	}
	within(t, deadline, "advertiser on B", func() bool { v, ok := b.Advertiser("adv"); return ok && v.Name == "Acme" })
	within(t, deadline, "campaign on B", func() bool { v, ok := b.Campaign("camp"); return ok && v.AdvertiserID == "adv" })
	within(t, deadline, "ad on B", func() bool {
		v, ok := b.Ad("ad1")
		return ok && v.LandingURL == "https://a.example/1" && v.CPCBidMicros == 100
	})
	within(t, deadline, "bulk ads on B", func() bool {
		for _, ad := range bulk {
			if v, ok := b.Ad(ad.ID); !ok || v.LandingURL != ad.LandingURL || v.CatalogID != "cat" {
				return false
			}
		}
		return true
	})
	within(t, deadline, "ingest key on B", func() bool {
		p, ok := b.Authenticate(ik)
		return ok && p == httpapi.Principal{Role: httpapi.RoleIngest}
	})
	within(t, deadline, "advertiser key on B", func() bool {
		p, ok := b.Authenticate(ak)
		return ok && p == httpapi.Principal{Role: httpapi.RoleAdvertiser, AdvertiserID: "adv"}
	})

	// Changes through A: a time zone change (with its history), a paused campaign, a raised
	// budget and bid, a new landing URL, an ad moved to a campaign created just before, and a
	// revoked key.
	clock.Set(testNow.Add(time.Minute))
	deadline = time.Now().Add(limit)
	noErr(t)(a.PutAdvertiser(ctx, Advertiser{ID: "adv", Name: "Acme", Timezone: "Asia/Kolkata"}))
	noErr(t)(a.PutCampaign(ctx, Campaign{ID: "camp", AdvertiserID: "adv", Name: "C", Status: StatusPaused, CPCBidMicros: 300, DailyBudgetMicros: 5000}))
	noErr(t)(a.PutAd(ctx, Ad{ID: "ad1", CampaignID: "camp", LandingURL: "https://a.example/new"}))
	noErr(t)(a.PutCampaign(ctx, Campaign{ID: "camp2", AdvertiserID: "adv", Name: "C2", CPCBidMicros: 7}))
	noErr(t)(a.PutAd(ctx, Ad{ID: "bulk0", CampaignID: "camp2", LandingURL: "https://a.example/moved"}))
	revokeKey(t, a, ik)
	within(t, deadline, "time zone change on B", func() bool {
		v, ok := b.Advertiser("adv")
		return ok && v.Timezone == "Asia/Kolkata" && v.Location.String() == "Asia/Kolkata" && len(v.TimezoneChanges) == 1 &&
			v.TimezoneChanges[0].From.String() == "UTC" && v.TimezoneChanges[0].To.String() == "Asia/Kolkata" &&
			v.TimezoneChanges[0].At.Equal(testNow.Add(time.Minute))
	})
	within(t, deadline, "paused campaign and raised budget on B", func() bool {
		v, ok := b.Campaign("camp")
		return ok && v.Status == StatusPaused && v.DailyBudgetMicros == 5000 && v.CPCBidMicros == 300
	})
	within(t, deadline, "new landing URL and campaign bid on B", func() bool {
		v, ok := b.Ad("ad1")
		return ok && v.LandingURL == "https://a.example/new" && v.CPCBidMicros == 300
	})
	within(t, deadline, "moved ad on B", func() bool {
		v, ok := b.Ad("bulk0")
		return ok && v.CampaignID == "camp2" && v.CPCBidMicros == 7 && v.LandingURL == "https://a.example/moved"
	})
	within(t, deadline, "revoked key on B", func() bool { _, ok := b.Authenticate(ik); return !ok })
	if _, ok := a.Authenticate(ik); ok {
		t.Error("revoked key still authenticates on A")
	}
	if _, ok := b.Authenticate(ak); !ok {
		t.Error("the other key no longer authenticates on B")
	}

	// And the other way round.
	deadline = time.Now().Add(limit)
	noErr(t)(b.PutAdvertiser(ctx, Advertiser{ID: "adv2", Name: "Beta"}))
	bk, err := b.CreateAdvertiserKey(ctx, "adv2")
	if err != nil {
		t.Fatal(err)
	}
	within(t, deadline, "B's key on A", func() bool {
		p, ok := a.Authenticate(bk)
		return ok && p.AdvertiserID == "adv2"
	})
	if st := b.Stats(); st.Advertisers != 2 || st.Campaigns != 2 || st.Ads != 51 || st.AdvertiserKeys != 2 || st.IngestKeys != 0 {
		t.Errorf("B's Stats = %+v", st)
	}
	if st := a.Stats(); st.Advertisers != 2 || st.Campaigns != 2 || st.Ads != 51 || st.AdvertiserKeys != 2 || st.IngestKeys != 0 {
		t.Errorf("A's Stats = %+v", st)
	}
}

// noErr fails the test on the error of a call returning a value and an error.
func noErr(t *testing.T) func(any, error) {
	return func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestFeedStats: followers count what they applied, skip what their own process wrote, and
// report lag.
func TestFeedStats(t *testing.T) {
	ctx := context.Background()
	o := freshSQLite(t, "")
	a, b := openWith(t, o, &testClock{t: testNow}), openWith(t, o, &testClock{t: testNow})
	noErr(t)(a.PutAdvertiser(ctx, Advertiser{ID: "adv", Name: "Acme"}))
	noErr(t)(a.PutCampaign(ctx, Campaign{ID: "camp", AdvertiserID: "adv", Name: "C", CPCBidMicros: 100}))
	if _, err := a.PutAds(ctx, []Ad{{ID: "x", CampaignID: "camp", LandingURL: "https://x.example/"}, {ID: "y", CampaignID: "camp", LandingURL: "https://y.example/"}}); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.Ad("x"); ok {
		t.Fatal("B has the ad before polling")
	}
	time.Sleep(20 * time.Millisecond)
	if st := b.Stats(); st.FeedLagSeconds < 0.02 {
		t.Errorf("lag %v s after 20 ms without a poll", st.FeedLagSeconds)
	}
	for _, c := range []*Catalog{a, b} {
		if err := c.poll(ctx); err != nil {
			t.Fatal(err)
		}
	}
	want := FeedInfo{FeedSeq: 4, FeedHeadSeq: 4, FeedChangesApplied: 4}
	if st := b.Stats(); st.FeedInfo != (FeedInfo{FeedSeq: 4, FeedHeadSeq: 4, FeedChangesApplied: 4, FeedLagSeconds: st.FeedLagSeconds}) || st.FeedLagSeconds > 1 {
		t.Errorf("B's feed stats = %+v, want %+v", st.FeedInfo, want)
	}
	want.FeedChangesApplied = 0 // A wrote them all itself
	if st := a.Stats(); st.FeedInfo != (FeedInfo{FeedSeq: 4, FeedHeadSeq: 4, FeedLagSeconds: st.FeedLagSeconds}) {
		t.Errorf("A's feed stats = %+v, want %+v", st.FeedInfo, want)
	}
	if _, ok := b.Ad("y"); !ok {
		t.Error("B lacks the ad after polling")
	}
	// A rejected write appends nothing.
	if _, err := a.PutAd(ctx, Ad{ID: "z", CampaignID: "nope", LandingURL: "https://z.example/"}); err == nil {
		t.Fatal("ad of a missing campaign accepted")
	}
	if head, err := a.readHead(ctx); err != nil || head != 4 {
		t.Errorf("head %d, %v after a rejected write; want 4", head, err)
	}
}

// TestFeedTrimAndReload: old change rows are trimmed by age and by count, and a process whose
// position was trimmed away reloads the whole catalog, dropping keys that are gone.
func TestFeedTrimAndReload(t *testing.T) { forEachBackend(t, testFeedTrimAndReload) }

func testFeedTrimAndReload(t *testing.T, o Options) {
	ctx := context.Background()
	clock := &testClock{t: testNow}
	o.FeedMaxRows = 5
	a, b := openWith(t, o, clock), openWith(t, o, clock)
	noErr(t)(a.PutAdvertiser(ctx, Advertiser{ID: "adv", Name: "Acme"}))
	noErr(t)(a.PutCampaign(ctx, Campaign{ID: "camp", AdvertiserID: "adv", Name: "C", CPCBidMicros: 100}))
	ik, err := a.CreateIngestKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.poll(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.Authenticate(ik); !ok {
		t.Fatal("B lacks the key")
	}
	// The key goes without a change row (by hand): only a reload notices.
	if _, err := a.db.ExecContext(ctx, `DELETE FROM api_keys`); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		noErr(t)(a.PutAd(ctx, Ad{ID: fmt.Sprint("ad", i), CampaignID: "camp", LandingURL: "https://a.example/"}))
	}
	n, err := a.trimFeed(ctx)
	if err != nil || n != 8 {
		t.Fatalf("trimFeed by count = %d, %v; want 8 of 13 rows", n, err)
	}
	if err := b.poll(ctx); err != nil {
		t.Fatal(err)
	}
	st := b.Stats()
	if st.FeedReloads != 1 || st.FeedSeq != 13 || st.Ads != 10 || st.IngestKeys != 0 {
		t.Errorf("B after falling behind the trimmed feed: %+v", st)
	}
	if _, ok := b.Authenticate(ik); ok {
		t.Error("a key deleted from the database still authenticates after the reload")
	}
	// By age: nothing is an hour old yet; then everything is.
	if n, err := a.trimFeed(ctx); err != nil || n != 0 {
		t.Fatalf("trimFeed = %d, %v; want 0", n, err)
	}
	clock.Set(testNow.Add(DefaultFeedRetention + time.Second))
	if n, err := a.trimFeed(ctx); err != nil || n != 5 {
		t.Fatalf("trimFeed by age = %d, %v; want 5", n, err)
	}
	// Up to date, B needs no rows; a new change is applied without a reload.
	if err := b.poll(ctx); err != nil {
		t.Fatal(err)
	}
	noErr(t)(a.PutAd(ctx, Ad{ID: "late", CampaignID: "camp", LandingURL: "https://late.example/"}))
	if err := b.poll(ctx); err != nil {
		t.Fatal(err)
	}
	if st := b.Stats(); st.FeedReloads != 1 || st.FeedSeq != 14 || st.Ads != 11 {
		t.Errorf("B after one more change: %+v", st)
	}
	// A third process starting now needs no feed: it loads everything.
	c := openWith(t, o, clock)
	if st := c.Stats(); st.FeedSeq != 14 || st.Ads != 11 || st.Campaigns != 1 {
		t.Errorf("new process: %+v", st)
	}
}

// TestFeedConcurrentWriters: random writes through two processes at once, each following the
// feed of the other, never lose a change: at the end both indexes equal the database. With
// "incremental" every change comes through the feed; with "trimmed" the feed is trimmed so
// hard that followers also fall behind it and reload while writes go on.
func TestFeedConcurrentWriters(t *testing.T) {
	for _, trim := range []bool{false, true} {
		name := "incremental"
		if trim {
			name = "trimmed"
		}
		t.Run(name, func(t *testing.T) {
			forEachBackend(t, func(t *testing.T, o Options) { testFeedConcurrentWriters(t, o, trim) })
		})
	}
}

func testFeedConcurrentWriters(t *testing.T, o Options, trim bool) {
	seed := testSeed(t)
	ctx := context.Background()
	clock := &testClock{t: testNow}
	o.FeedInterval = 20 * time.Millisecond
	if trim {
		o.FeedMaxRows = 4
	}
	cats := []*Catalog{openWith(t, o, clock), openWith(t, o, clock)}
	runCtx, stop := context.WithCancel(ctx)
	var runs sync.WaitGroup
	for _, c := range cats {
		runs.Go(func() {
			if err := c.Run(runCtx); err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	if trim {
		runs.Go(func() { // much more eager than Run's trimming
			for runCtx.Err() == nil {
				if _, err := cats[0].trimFeed(runCtx); err != nil && runCtx.Err() == nil {
					t.Errorf("trimFeed: %v", err)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}

	const writersPerCat, opsPerWriter = 2, 40
	zones := []string{"UTC", "Asia/Kolkata", "America/New_York", "Europe/Paris"}
	var mu sync.Mutex
	var keys []string // every key created
	var writers sync.WaitGroup
	for ci, c := range cats {
		for w := range writersPerCat {
			rng := rand.New(rand.NewPCG(seed, uint64(ci*writersPerCat+w)))
			writers.Go(func() {
				for range opsPerWriter {
					// Campaign i belongs to advertiser i%3, except on purpose now and then.
					adv := fmt.Sprint("adv", rng.IntN(3))
					cn := rng.IntN(6)
					camp, owner := fmt.Sprint("camp", cn), fmt.Sprint("adv", cn%3)
					ad := func() Ad {
						var bid *int64
						if rng.IntN(3) == 0 {
							bid = ptr(rng.Int64N(1000))
						}
						return Ad{ID: fmt.Sprint("ad", rng.IntN(30)), CampaignID: fmt.Sprint("camp", rng.IntN(6)),
							LandingURL: fmt.Sprintf("https://x.example/%d", rng.IntN(1000)), CPCBidMicros: bid}
					}
					var err error
					switch op := rng.IntN(10); {
					case op < 2:
						clock.Set(testNow.Add(time.Duration(rng.IntN(1000)) * time.Second))
						_, err = c.PutAdvertiser(ctx, Advertiser{ID: adv, Name: fmt.Sprint("n", rng.IntN(100)), Timezone: zones[rng.IntN(len(zones))]})
					case op < 4:
						if rng.IntN(10) == 0 {
							owner = adv
						}
						st := StatusActive
						if rng.IntN(2) == 0 {
							st = StatusPaused
						}
						_, err = c.PutCampaign(ctx, Campaign{ID: camp, AdvertiserID: owner, Name: "c", Status: st,
							CPCBidMicros: rng.Int64N(1000), DailyBudgetMicros: rng.Int64N(10000)})
					case op < 6:
						_, err = c.PutAd(ctx, ad())
					case op < 8:
						ads := make([]Ad, 1+rng.IntN(8))
						for i := range ads {
							ads[i] = ad()
						}
						_, err = c.PutAds(ctx, ads) // per-ad rejections are fine
					case op < 9:
						var k string
						if k, err = c.CreateAdvertiserKey(ctx, adv); err == nil {
							mu.Lock()
							keys = append(keys, k)
							mu.Unlock()
						}
					default:
						var k string
						if k, err = c.CreateIngestKey(ctx); err == nil {
							mu.Lock()
							keys = append(keys, k)
							mu.Unlock()
						}
					}
					// A missing parent or a change of owner is refused; anything else (a
					// duplicate key between processes, a lock error) is a failure.
					var ae *httpapi.Error
					if err != nil && !errors.As(err, &ae) && !errors.Is(err, ErrNotFound) {
						t.Errorf("seed %d: write through catalog %d: %v", seed, ci, err)
					}
				}
			})
		}
	}
	writers.Wait()
	stop()
	runs.Wait()
	for i, c := range cats {
		if err := c.poll(ctx); err != nil {
			t.Fatalf("seed %d: final poll of catalog %d: %v", seed, i, err)
		}
	}
	for i, c := range cats {
		if st := c.Stats(); !trim && st.FeedReloads != 0 {
			t.Errorf("seed %d: catalog %d reloaded from an untrimmed feed: %+v", seed, i, st)
		}
		checkIndexMatchesDB(t, fmt.Sprintf("seed %d: catalog %d", seed, i), c)
		for _, k := range keys {
			if _, ok := c.Authenticate(k); !ok {
				t.Errorf("seed %d: catalog %d: a created key does not authenticate", seed, i)
			}
		}
		t.Logf("catalog %d: %+v", i, c.Stats())
	}
}

// checkIndexMatchesDB compares everything in c's index with its database.
func checkIndexMatchesDB(t *testing.T, name string, c *Catalog) {
	t.Helper()
	ctx := context.Background()
	fresh := &Catalog{db: c.db, d: c.d, log: c.log, now: c.now, ads: newAdIndex()}
	if err := fresh.load(ctx); err != nil {
		t.Fatalf("%s: load: %v", name, err)
	}
	got, want := c.Stats(), fresh.Stats()
	if got.Advertisers != want.Advertisers || got.Campaigns != want.Campaigns || got.Ads != want.Ads ||
		got.AdvertiserKeys != want.AdvertiserKeys || got.IngestKeys != want.IngestKeys {
		t.Errorf("%s: index counts %+v, database %+v", name, got, want)
	}
	fresh.advertisers.ids.Range(func(k, _ any) bool {
		id := k.(string)
		g, _ := c.Advertiser(id)
		w, _ := fresh.Advertiser(id)
		if g.Name != w.Name || g.Timezone != w.Timezone || g.Location.String() != w.Location.String() ||
			len(g.TimezoneChanges) != len(w.TimezoneChanges) {
			t.Errorf("%s: advertiser %s: index %+v, database %+v", name, id, g, w)
			return true
		}
		for i := range w.TimezoneChanges {
			gc, wc := g.TimezoneChanges[i], w.TimezoneChanges[i]
			if !gc.At.Equal(wc.At) || gc.From.String() != wc.From.String() || gc.To.String() != wc.To.String() {
				t.Errorf("%s: advertiser %s time zone change %d: index %+v, database %+v", name, id, i, gc, wc)
			}
		}
		return true
	})
	fresh.campaigns.ids.Range(func(k, _ any) bool {
		id := k.(string)
		g, _ := c.Campaign(id)
		w, _ := fresh.Campaign(id)
		if g != w {
			t.Errorf("%s: campaign %s: index %+v, database %+v", name, id, g, w)
		}
		return true
	})
	rows, err := c.db.QueryContext(ctx, `SELECT id FROM ads`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		g, _ := c.Ad(id)
		w, _ := fresh.Ad(id)
		if g != w {
			t.Errorf("%s: ad %s: index %+v, database %+v", name, id, g, w)
		}
	}
	fresh.keys.Range(func(k, v any) bool {
		if g, ok := c.keys.Load(k); !ok || g != v {
			h := k.([sha256.Size]byte)
			t.Errorf("%s: key %x: index %+v, database %+v", name, h[:4], g, v)
		}
		return true
	})
}
