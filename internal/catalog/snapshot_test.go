package catalog

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/vfs"

	"github.com/adpulse/adpulse/internal/snapfile"
	"github.com/adpulse/adpulse/internal/testseed"
)

// crash abandons c the way kill -9 would: no snapshot at close, the database handle dropped.
func crash(c *Catalog) {
	c.snap.path = ""
	_ = c.Close()
}

// openSnap opens a catalog with snapshots at path and no periodic writes.
func openSnap(t *testing.T, o Options, path string) *Catalog {
	t.Helper()
	o.SnapshotPath, o.SnapshotInterval = path, -1
	o.AdminKey, o.Now = testAdminKey, (&testClock{t: testNow}).Now
	c, err := Open(context.Background(), o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { crash(c) })
	return c
}

// checkSameAsLoad compares c's index with a full load of its database, attribution windows
// included.
func checkSameAsLoad(t *testing.T, name string, c *Catalog) {
	t.Helper()
	checkIndexMatchesDB(t, name, c)
	fresh := &Catalog{db: c.db, d: c.d, log: c.log, now: c.now, ads: newAdIndex()}
	if err := fresh.load(context.Background()); err != nil {
		t.Fatal(err)
	}
	fresh.advertisers.ids.Range(func(k, _ any) bool {
		g, _ := c.Advertiser(k.(string))
		w, _ := fresh.Advertiser(k.(string))
		if fmt.Sprint(windowList(g.WindowChanges)) != fmt.Sprint(windowList(w.WindowChanges)) {
			t.Errorf("%s: advertiser %s windows: index %v, database %v", name, k, windowList(g.WindowChanges), windowList(w.WindowChanges))
		}
		return true
	})
}

func windowList(ws []WindowChange) []string {
	var out []string
	for _, w := range ws {
		out = append(out, fmt.Sprint(w.At.UnixNano(), fmtDur(w.Click), fmtDur(w.View)))
	}
	return out
}

func fmtDur(d *time.Duration) string {
	if d == nil {
		return "nil"
	}
	return d.String()
}

func TestSnapshotRoundTrip(t *testing.T) { forEachBackend(t, testSnapshotRoundTrip) }

func testSnapshotRoundTrip(t *testing.T, o Options) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "catalog.snap")
	a := openSnap(t, o, path)
	if a.snap.used {
		t.Fatal("a first start used a snapshot")
	}
	day := 24 * time.Hour
	noErr(t)(a.PutAdvertiser(ctx, Advertiser{ID: "adv", Name: "Acme", Timezone: "UTC"}))
	noErr(t)(a.PutAdvertiser(ctx, Advertiser{ID: "adv", Name: "Acme", Timezone: "Asia/Kolkata", ClickWindow: &day}))
	noErr(t)(a.PutAdvertiser(ctx, Advertiser{ID: "adv2", Name: "Other", Timezone: "UTC"}))
	noErr(t)(a.PutCampaign(ctx, Campaign{ID: "camp", AdvertiserID: "adv", Name: "C", CPCBidMicros: 100,
		StartTime: testNow.Add(-time.Hour), EndTime: testNow.Add(day), DailyBudgetMicros: 5000}))
	noErr(t)(a.PutCampaign(ctx, Campaign{ID: "camp2", AdvertiserID: "adv2", Name: "D", CPCBidMicros: 7, AutoCPC: true}))
	for i := range 300 {
		ad := Ad{ID: fmt.Sprint("ad", i), CampaignID: "camp", LandingURL: fmt.Sprintf("https://a.example/%d", i)}
		if i%3 == 0 {
			ad.CatalogID, ad.CPCBidMicros = fmt.Sprint("sku", i), ptr(int64(i))
		}
		if i%5 == 0 {
			ad.CampaignID = "camp2"
		}
		noErr(t)(a.PutAd(ctx, ad))
	}
	advKey, err := a.CreateAdvertiserKey(ctx, "adv")
	if err != nil {
		t.Fatal(err)
	}
	gone, err := a.CreateIngestKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.WriteSnapshot(); err != nil {
		t.Fatal(err)
	}
	// After the snapshot: updates, new objects and a revoked key, which only the feed knows.
	noErr(t)(a.PutAd(ctx, Ad{ID: "ad1", CampaignID: "camp", LandingURL: "https://changed.example/", CPCBidMicros: ptr(int64(0))}))
	noErr(t)(a.PutCampaign(ctx, Campaign{ID: "camp", AdvertiserID: "adv", Name: "C", CPCBidMicros: 250, Status: StatusPaused}))
	noErr(t)(a.PutAdvertiser(ctx, Advertiser{ID: "adv3", Name: "New", Timezone: "Europe/Paris"}))
	noErr(t)(a.PutCampaign(ctx, Campaign{ID: "camp3", AdvertiserID: "adv3", Name: "E", CPCBidMicros: 9}))
	noErr(t)(a.PutAd(ctx, Ad{ID: "late", CampaignID: "camp3", LandingURL: "https://late.example/"}))
	noErr(t)(a.PutAdvertiser(ctx, Advertiser{ID: "adv", Name: "Acme", Timezone: "America/New_York"}))
	revokeKey(t, a, gone)
	ingest, err := a.CreateIngestKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	crash(a)

	b := openSnap(t, o, path)
	if !b.snap.used {
		t.Fatal("the snapshot was not used")
	}
	checkSameAsLoad(t, "after restart", b)
	if info, ok := b.Ad("late"); !ok || info.AdvertiserID != "adv3" {
		t.Errorf("an ad created after the snapshot: %+v, %v", info, ok)
	}
	if info, _ := b.Ad("ad1"); info.LandingURL != "https://changed.example/" || info.CPCBidMicros != 0 {
		t.Errorf("an ad changed after the snapshot: %+v", info)
	}
	if info, _ := b.Ad("ad2"); info.CPCBidMicros != 250 {
		t.Errorf("an ad of a campaign whose bid changed after the snapshot: %+v", info)
	}
	if _, ok := b.Authenticate(gone); ok {
		t.Error("a key revoked after the snapshot authenticates")
	}
	for _, k := range []string{advKey, ingest, testAdminKey} {
		if _, ok := b.Authenticate(k); !ok {
			t.Errorf("key %q does not authenticate", k[:6])
		}
	}
	// A clean close writes a snapshot at the current position; the next start needs no
	// change from the feed.
	if err := b.WriteSnapshot(); err != nil {
		t.Fatal(err)
	}
	crash(b)
	c := openSnap(t, o, path)
	if !c.snap.used || c.Stats().FeedChangesApplied != 0 {
		t.Errorf("restart after a current snapshot: used %v, %+v", c.snap.used, c.Stats())
	}
	checkSameAsLoad(t, "after a current snapshot", c)
}

func TestSnapshotFallback(t *testing.T) {
	ctx := context.Background()
	o := freshSQLite(t, "")
	o.FeedMaxRows = 3
	path := filepath.Join(t.TempDir(), "catalog.snap")
	a := snapshotOfAds(t, o, path, 50)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Changes after the snapshot that a wrong fallback would miss.
	noErr(t)(a.PutAd(ctx, Ad{ID: "ad0", CampaignID: "camp", LandingURL: "https://changed.example/"}))
	noErr(t)(a.PutAd(ctx, Ad{ID: "new", CampaignID: "camp", LandingURL: "https://new.example/"}))
	crash(a)

	reopen := func(name string, wantUsed bool) {
		t.Helper()
		c := openSnap(t, o, path)
		if c.snap.used != wantUsed {
			t.Errorf("%s: snapshot used = %v, want %v", name, c.snap.used, wantUsed)
		}
		checkSameAsLoad(t, name, c)
		if info, ok := c.Ad("ad0"); !ok || info.LandingURL != "https://changed.example/" {
			t.Errorf("%s: ad0 = %+v, %v", name, info, ok)
		}
		crash(c)
	}
	reopen("good", true)
	write := func(b []byte) {
		t.Helper()
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []int{0, 10, len(good) / 2, len(good) - 1} {
		write(good[:n])
		reopen(fmt.Sprint("truncated to ", n), false)
	}
	for _, at := range []int{20, 40, len(good) / 3, len(good) / 2, len(good) - 20, len(good) - 2} {
		bad := append([]byte(nil), good...)
		bad[at] ^= 0x10
		write(bad)
		reopen(fmt.Sprint("bit flipped at ", at), false)
	}
	write(good)
	reopen("good again", true)

	// Another database: the snapshot names the one it was taken of.
	other := freshSQLite(t, "")
	c := openSnap(t, other, path)
	if c.snap.used || c.Stats().Ads != 0 {
		t.Errorf("another database: used %v, %+v", c.snap.used, c.Stats())
	}
	crash(c)

	// The feed trimmed past the snapshot's position.
	write(good)
	b := openSnap(t, o, path)
	for i := range 5 {
		noErr(t)(b.PutAd(ctx, Ad{ID: fmt.Sprint("more", i), CampaignID: "camp", LandingURL: "https://more.example/"}))
	}
	if _, err := b.trimFeed(ctx); err != nil {
		t.Fatal(err)
	}
	crash(b)
	write(good)
	reopen("feed trimmed", false)
}

// TestSnapshotOldVersion: a whole snapshot of another version (here the same body labelled
// version 1, whose ads were records to re-insert) is never read as this one: the start loads
// from the database.
func TestSnapshotOldVersion(t *testing.T) {
	o := freshSQLite(t, "")
	path := filepath.Join(t.TempDir(), "catalog.snap")
	a := snapshotOfAds(t, o, path, 20)
	var body []byte
	err := snapfile.Read(vfs.Default, path, snapKind, snapVersion, func(r io.Reader) (err error) {
		body, err = io.ReadAll(r)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	crash(a)
	for _, version := range []uint32{1, snapVersion + 1} {
		err := snapfile.Write(vfs.Default, path, snapKind, version, func(w io.Writer) error {
			_, err := w.Write(body)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		c := openSnap(t, o, path)
		if c.snap.used {
			t.Errorf("a snapshot of version %d was used", version)
		}
		checkSameAsLoad(t, fmt.Sprint("version ", version), c)
		crash(c)
	}
}

// TestSnapshotModel: random catalog writes, snapshots at random points and crashes; every
// restart's index equals a full load of the database.
func TestSnapshotModel(t *testing.T) {
	seed := testseed.Seed(t)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	ctx := context.Background()
	o := freshSQLite(t, "")
	if rng.IntN(2) == 0 {
		o.FeedMaxRows = int64(20 + rng.IntN(200)) // sometimes trimmed past the snapshot
	}
	path := filepath.Join(t.TempDir(), "catalog.snap")
	c := openSnap(t, o, path)
	zones := []string{"UTC", "Europe/Paris", "Asia/Kolkata"}
	var advs, camps, ads, keys []string
	campAdv := map[string]string{}
	used := 0
	for step := range 400 {
		switch op := rng.IntN(100); {
		case op < 8 || len(advs) == 0:
			id := fmt.Sprint("adv", rng.IntN(6))
			a := Advertiser{ID: id, Name: fmt.Sprint("n", rng.IntN(9)), Timezone: zones[rng.IntN(len(zones))]}
			if rng.IntN(3) == 0 {
				w := time.Duration(1+rng.IntN(48)) * time.Hour
				a.ClickWindow = &w
			}
			noErr(t)(c.PutAdvertiser(ctx, a))
			advs = append(advs, id)
		case op < 20 || len(camps) == 0:
			id := fmt.Sprint("camp", rng.IntN(12))
			adv, ok := campAdv[id]
			if !ok {
				adv = advs[rng.IntN(len(advs))]
				campAdv[id] = adv
				camps = append(camps, id)
			}
			cp := Campaign{ID: id, AdvertiserID: adv, Name: "c", CPCBidMicros: int64(rng.IntN(1000)), AutoCPC: rng.IntN(4) == 0}
			if rng.IntN(3) == 0 {
				cp.Status = StatusPaused
			}
			noErr(t)(c.PutCampaign(ctx, cp))
		case op < 80:
			id := fmt.Sprint("ad", rng.IntN(200))
			ad := Ad{ID: id, CampaignID: camps[rng.IntN(len(camps))], LandingURL: fmt.Sprintf("https://x.example/%d", rng.IntN(1e6))}
			if cur, err := c.GetAd(ctx, id); err == nil {
				ad.CampaignID = cur.CampaignID // ads keep their owner
			}
			if rng.IntN(2) == 0 {
				ad.CPCBidMicros = ptr(int64(rng.IntN(500)))
			}
			if rng.IntN(2) == 0 {
				ad.CatalogID = fmt.Sprint("sku", rng.IntN(50))
			}
			noErr(t)(c.PutAd(ctx, ad))
			ads = append(ads, id)
		case op < 86:
			k, err := c.CreateIngestKey(ctx)
			if err != nil {
				t.Fatal(err)
			}
			keys = append(keys, k)
		case op < 90 && len(keys) > 0:
			i := rng.IntN(len(keys))
			revokeKey(t, c, keys[i])
			keys = append(keys[:i], keys[i+1:]...)
		case op < 95:
			if err := c.WriteSnapshot(); err != nil {
				t.Fatal(err)
			}
		default:
			if rng.IntN(2) == 0 {
				if _, err := c.trimFeed(ctx); err != nil {
					t.Fatal(err)
				}
			}
			crash(c)
			c = openSnap(t, o, path)
			if c.snap.used {
				used++
			}
			checkSameAsLoad(t, fmt.Sprint("restart at step ", step), c)
			for _, k := range keys {
				if _, ok := c.Authenticate(k); !ok {
					t.Fatalf("step %d: a live key does not authenticate", step)
				}
			}
		}
	}
	t.Logf("%d ads written, %d restarts from a snapshot", len(ads), used)
}

// TestSnapshotDuringWrites: snapshots taken while ads and campaigns are being written (the
// periodic writer's situation) still restart into an index equal to a full load.
func TestSnapshotDuringWrites(t *testing.T) {
	ctx := context.Background()
	o := freshSQLite(t, "")
	path := filepath.Join(t.TempDir(), "catalog.snap")
	c := openSnap(t, o, path)
	noErr(t)(c.PutAdvertiser(ctx, Advertiser{ID: "adv", Name: "Acme"}))
	noErr(t)(c.PutCampaign(ctx, Campaign{ID: "camp0", AdvertiserID: "adv", Name: "C", CPCBidMicros: 1}))
	done := make(chan error, 1)
	go func() {
		for i := range 400 {
			if i%40 == 0 {
				if _, err := c.PutCampaign(ctx, Campaign{ID: fmt.Sprint("camp", i/40+1), AdvertiserID: "adv", Name: "C", CPCBidMicros: int64(i)}); err != nil {
					done <- err
					return
				}
			}
			if _, err := c.PutAd(ctx, Ad{ID: fmt.Sprint("ad", i%250), CampaignID: fmt.Sprint("camp", i/40+1), LandingURL: fmt.Sprint("https://a.example/", i)}); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	var mid []byte // a snapshot taken in the middle of the writes, restarted from at the end
	for snaps := 0; ; snaps++ {
		if err := c.WriteSnapshot(); err != nil {
			t.Fatal(err)
		}
		if snaps == 5 {
			var err error
			if mid, err = os.ReadFile(path); err != nil {
				t.Fatal(err)
			}
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d snapshots during the writes", snaps+1)
			crash(c)
			if mid == nil {
				t.Skip("the writes ended before a snapshot in their middle")
			}
			if err := os.WriteFile(path, mid, 0o600); err != nil {
				t.Fatal(err)
			}
			r := openSnap(t, o, path)
			if r.Stats().FeedChangesApplied == 0 {
				t.Error("the snapshot from the middle of the writes needed no change from the feed")
			}
			if !r.snap.used {
				t.Fatal("snapshot not used")
			}
			checkSameAsLoad(t, "after snapshots during writes", r)
			return
		default:
		}
	}
}

// TestSnapshotFailureCounted checks that a snapshot that cannot be written is counted, so a
// writer that keeps failing shows in the metrics, and that a good one is counted too.
func TestSnapshotFailureCounted(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "catalog.snap")
	c := openSnap(t, freshSQLite(t, ""), path)
	noErr(t)(c.PutAdvertiser(context.Background(), Advertiser{ID: "adv", Name: "Acme"}))
	if err := c.WriteSnapshot(); err != nil {
		t.Fatal(err)
	}
	c.snap.path = filepath.Join(dir, "catalog.snap", "under-a-file") // a file is not a directory
	if err := c.WriteSnapshot(); err == nil {
		t.Fatal("a snapshot under a file was written")
	}
	if st := c.Stats(); st.SnapshotWrites != 1 || st.SnapshotFailures != 1 {
		t.Fatalf("writes %d, failures %d; want 1 and 1", st.SnapshotWrites, st.SnapshotFailures)
	}
}

// snapshotOfAds opens a catalog on o with one advertiser, one campaign and n ads, and writes
// its snapshot to path.
func snapshotOfAds(t *testing.T, o Options, path string, n int) *Catalog {
	t.Helper()
	ctx := context.Background()
	a := openSnap(t, o, path)
	noErr(t)(a.PutAdvertiser(ctx, Advertiser{ID: "adv", Name: "Acme"}))
	noErr(t)(a.PutCampaign(ctx, Campaign{ID: "camp", AdvertiserID: "adv", Name: "C", CPCBidMicros: 100}))
	for i := range n {
		noErr(t)(a.PutAd(ctx, Ad{ID: fmt.Sprint("ad", i), CampaignID: "camp", LandingURL: "https://a.example/"}))
	}
	if err := a.WriteSnapshot(); err != nil {
		t.Fatal(err)
	}
	return a
}
