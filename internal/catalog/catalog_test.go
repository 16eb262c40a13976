package catalog

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/url"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/httpapi"
)

const testAdminKey = "test-admin-key"

// testClock is the injected clock of the tests.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// testNow is 20:00 UTC: already the next day in Asia/Kolkata (UTC+5:30), which the budget day
// tests rely on.
var testNow = time.Date(2026, 11, 21, 20, 0, 0, 0, time.UTC)

// openAt opens a SQLite catalog file.
func openAt(t *testing.T, path string, clock *testClock) *Catalog {
	t.Helper()
	return openWith(t, Options{DSN: path}, clock)
}

func ptr[T any](v T) *T { return &v }

func TestDialectRebind(t *testing.T) {
	pg, _ := dialectFor(DialectPostgres)
	if got := pg.q(`SELECT a FROM t WHERE b = ? AND c = ?`); got != `SELECT a FROM t WHERE b = $1 AND c = $2` {
		t.Errorf("postgres rebind = %q", got)
	}
	for _, d := range []Dialect{"", DialectSQLite, DialectMySQL} {
		dd, err := dialectFor(d)
		if err != nil {
			t.Fatal(err)
		}
		if got := dd.q(`b = ?`); got != `b = ?` {
			t.Errorf("%q rebind = %q", d, got)
		}
	}
	if _, err := dialectFor("oracle"); err == nil {
		t.Error("unknown dialect accepted")
	}
}

func TestOpenNeedsADatabase(t *testing.T) {
	if _, err := Open(context.Background(), Options{}); err == nil {
		t.Fatal("Open with neither DB nor DSN succeeded")
	}
}

func TestSQLitePragmas(t *testing.T) {
	c := openAt(t, filepath.Join(t.TempDir(), "catalog.db"), &testClock{t: testNow})
	ctx := context.Background()
	for pragma, want := range map[string]string{"journal_mode": "wal", "synchronous": "2", "foreign_keys": "1", "busy_timeout": "10000"} {
		var got string
		if err := c.db.QueryRowContext(ctx, "PRAGMA "+pragma).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("PRAGMA %s = %s, want %s", pragma, got, want)
		}
	}
}

// TestStoreRoundTrip covers the Go API: timestamps, defaults, the distinction between an unset
// and a zero bid override, fixed ownership and the in-memory lookups.
func TestStoreRoundTrip(t *testing.T) { forEachBackend(t, testStoreRoundTrip) }

func testStoreRoundTrip(t *testing.T, o Options) {
	clock := &testClock{t: testNow}
	c := openWith(t, o, clock)
	ctx := context.Background()

	a, err := c.PutAdvertiser(ctx, Advertiser{ID: "a1", Name: "Acme"})
	if err != nil {
		t.Fatal(err)
	}
	if a.Timezone != "UTC" || !a.CreatedAt.Equal(testNow) || !a.UpdatedAt.Equal(testNow) {
		t.Fatalf("PutAdvertiser = %+v", a)
	}
	clock.Set(testNow.Add(time.Hour))
	a, err = c.PutAdvertiser(ctx, Advertiser{ID: "a1", Name: "Acme Inc", Timezone: "Asia/Kolkata"})
	if err != nil {
		t.Fatal(err)
	}
	if !a.CreatedAt.Equal(testNow) || !a.UpdatedAt.Equal(testNow.Add(time.Hour)) {
		t.Fatalf("update kept created_at %v, updated_at %v", a.CreatedAt, a.UpdatedAt)
	}
	if got, _ := c.GetAdvertiser(ctx, "a1"); got != a {
		t.Fatalf("GetAdvertiser = %+v, want %+v", got, a)
	}
	if info, ok := c.Advertiser("a1"); !ok || info.Timezone != "Asia/Kolkata" || info.Location.String() != "Asia/Kolkata" {
		t.Fatalf("Advertiser(a1) = %+v, %v", info, ok)
	}

	start := time.Date(2026, 11, 1, 0, 0, 0, 500, time.UTC) // sub-second is dropped
	cp, err := c.PutCampaign(ctx, Campaign{ID: "c1", AdvertiserID: "a1", Name: "Diwali", CPCBidMicros: 500000, StartTime: start})
	if err != nil {
		t.Fatal(err)
	}
	if cp.Status != StatusActive || !cp.StartTime.Equal(start.Truncate(time.Second)) || !cp.EndTime.IsZero() {
		t.Fatalf("PutCampaign = %+v", cp)
	}
	if got, _ := c.GetCampaign(ctx, "c1"); got != cp {
		t.Fatalf("GetCampaign = %+v, want %+v", got, cp)
	}

	if _, err := c.PutAd(ctx, Ad{ID: "ad1", CampaignID: "c1", LandingURL: "https://shop.example/p/1"}); err != nil {
		t.Fatal(err)
	}
	ad0, err := c.PutAd(ctx, Ad{ID: "ad0", CampaignID: "c1", LandingURL: "https://shop.example/p/0", CatalogID: "cat7", CPCBidMicros: ptr[int64](0)})
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.GetAd(ctx, "ad0")
	if err != nil || got.CPCBidMicros == nil || *got.CPCBidMicros != 0 || got.CatalogID != "cat7" || !got.CreatedAt.Equal(ad0.CreatedAt) {
		t.Fatalf("GetAd(ad0) = %+v, %v", got, err)
	}
	if got, _ := c.GetAd(ctx, "ad1"); got.CPCBidMicros != nil || got.CatalogID != "" {
		t.Fatalf("GetAd(ad1) = %+v, want no override and no catalog id", got)
	}

	want1 := AdInfo{AdID: "ad1", CampaignID: "c1", AdvertiserID: "a1", LandingURL: "https://shop.example/p/1", CPCBidMicros: 500000, CampaignBidMicros: 500000}
	if info, ok := c.Ad("ad1"); !ok || info != want1 {
		t.Fatalf("Ad(ad1) = %+v, %v; want %+v", info, ok, want1)
	}
	if info, _ := c.Ad("ad0"); info.CPCBidMicros != 0 || info.CatalogID != "cat7" {
		t.Fatalf("Ad(ad0) = %+v, want the explicit zero override", info)
	}
	// A campaign bid change reaches its ads at once, except those with an override.
	if _, err := c.PutCampaign(ctx, Campaign{ID: "c1", AdvertiserID: "a1", Name: "Diwali", CPCBidMicros: 600000}); err != nil {
		t.Fatal(err)
	}
	if info, _ := c.Ad("ad1"); info.CPCBidMicros != 600000 {
		t.Errorf("after the campaign bid change Ad(ad1) bid = %d, want 600000", info.CPCBidMicros)
	}
	if info, _ := c.Ad("ad0"); info.CPCBidMicros != 0 {
		t.Errorf("after the campaign bid change Ad(ad0) bid = %d, want its override 0", info.CPCBidMicros)
	}
	if owner, ok := c.AdOwner("ad1"); !ok || owner != "a1" {
		t.Errorf("AdOwner(ad1) = %q, %v", owner, ok)
	}
	if owner, ok := c.CampaignOwner("c1"); !ok || owner != "a1" {
		t.Errorf("CampaignOwner(c1) = %q, %v", owner, ok)
	}
	for _, f := range []func() bool{
		func() bool { _, ok := c.AdOwner("nope"); return ok },
		func() bool { _, ok := c.CampaignOwner("nope"); return ok },
		func() bool { _, ok := c.Advertiser("nope"); return ok },
		func() bool { _, ok := c.Ad("nope"); return ok },
	} {
		if f() {
			t.Error("lookup of a missing id succeeded")
		}
	}

	// Ownership is fixed.
	if _, err := c.PutAdvertiser(ctx, Advertiser{ID: "a2", Name: "Other"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutCampaign(ctx, Campaign{ID: "c2", AdvertiserID: "a2", Name: "Other", CPCBidMicros: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutCampaign(ctx, Campaign{ID: "c1", AdvertiserID: "a2", Name: "Moved", CPCBidMicros: 1}); !isBadField(err, "advertiser_id") {
		t.Errorf("moving a campaign to another advertiser: err = %v", err)
	}
	if _, err := c.PutAd(ctx, Ad{ID: "ad1", CampaignID: "c2", LandingURL: "https://x.example/"}); !isBadField(err, "campaign_id") {
		t.Errorf("moving an ad to another advertiser's campaign: err = %v", err)
	}
	if _, err := c.PutCampaign(ctx, Campaign{ID: "c3", AdvertiserID: "a1", Name: "Second", CPCBidMicros: 7}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutAd(ctx, Ad{ID: "ad1", CampaignID: "c3", LandingURL: "https://x.example/"}); err != nil {
		t.Errorf("moving an ad between campaigns of one advertiser: %v", err)
	}
	if info, _ := c.Ad("ad1"); info.CampaignID != "c3" || info.CPCBidMicros != 7 {
		t.Errorf("after the move Ad(ad1) = %+v", info)
	}

	for _, err := range []error{
		func() error { _, err := c.GetAdvertiser(ctx, "nope"); return err }(),
		func() error { _, err := c.GetCampaign(ctx, "nope"); return err }(),
		func() error { _, err := c.GetAd(ctx, "nope"); return err }(),
		func() error { _, err := c.CreateAdvertiserKey(ctx, "nope"); return err }(),
	} {
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("err = %v, want ErrNotFound", err)
		}
	}

	// PutAds reports per-item errors and writes the rest.
	errs, err := c.PutAds(ctx, []Ad{
		{ID: "b1", CampaignID: "c1", LandingURL: "https://x.example/1"},
		{ID: "b2", CampaignID: "missing", LandingURL: "https://x.example/2"},
		{ID: "b3", CampaignID: "c1", LandingURL: "javascript:alert(1)"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if errs[0] != nil || !isBadField(errs[1], "campaign_id") || !isBadField(errs[2], "landing_url") {
		t.Errorf("PutAds errs = %v", errs)
	}
	if st := c.Stats(); st.Advertisers != 2 || st.Campaigns != 3 || st.Ads != 3 {
		t.Errorf("Stats = %+v", st)
	}
}

func isBadField(err error, field string) bool {
	var ae *httpapi.Error
	return errors.As(err, &ae) && ae.Code == httpapi.CodeInvalidArgument && strings.HasPrefix(ae.Message, field+": ")
}

func TestKeys(t *testing.T) { forEachBackend(t, testKeys) }

func testKeys(t *testing.T, o Options) {
	c := openWith(t, o, &testClock{t: testNow})
	ctx := context.Background()
	if _, err := c.PutAdvertiser(ctx, Advertiser{ID: "a1", Name: "Acme"}); err != nil {
		t.Fatal(err)
	}
	ak, err := c.CreateAdvertiserKey(ctx, "a1")
	if err != nil {
		t.Fatal(err)
	}
	ik, err := c.CreateIngestKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ak2, _ := c.CreateAdvertiserKey(ctx, "a1")
	if !strings.HasPrefix(ak, AdvertiserKeyPrefix) || !strings.HasPrefix(ik, IngestKeyPrefix) || ak == ak2 {
		t.Fatalf("keys %q %q %q", ak, ik, ak2)
	}
	if len(ak) < len(AdvertiserKeyPrefix)+43 || url.QueryEscape(ak) != ak {
		t.Errorf("key %q is short or not URL-safe", ak)
	}
	for key, want := range map[string]httpapi.Principal{
		ak:           {Role: httpapi.RoleAdvertiser, AdvertiserID: "a1"},
		ak2:          {Role: httpapi.RoleAdvertiser, AdvertiserID: "a1"},
		ik:           {Role: httpapi.RoleIngest},
		testAdminKey: {Role: httpapi.RoleAdmin},
	} {
		if p, ok := c.Authenticate(key); !ok || p != want {
			t.Errorf("Authenticate(%q) = %+v, %v; want %+v", key, p, ok, want)
		}
	}
	for _, key := range []string{"", "nope", ak + "x", ak[:len(ak)-1], testAdminKey + " "} {
		if p, ok := c.Authenticate(key); ok {
			t.Errorf("Authenticate(%q) = %+v", key, p)
		}
	}
	// Only hashes are stored.
	rows, err := c.db.QueryContext(ctx, `SELECT key_hash FROM api_keys`)
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]bool{}
	for rows.Next() {
		var h string
		if err := rows.Scan(&h); err != nil {
			t.Fatal(err)
		}
		stored[h] = true
	}
	rows.Close()
	for _, key := range []string{ak, ak2, ik} {
		sum := sha256.Sum256([]byte(key))
		if !stored[hex.EncodeToString(sum[:])] || stored[key] {
			t.Errorf("key %q: stored rows %v", key, stored)
		}
	}
	if st := c.Stats(); st.AdvertiserKeys != 2 || st.IngestKeys != 1 {
		t.Errorf("Stats = %+v", st)
	}
	// No admin key configured: nothing is admin.
	c.hasAdmin = false
	if _, ok := c.Authenticate(testAdminKey); ok {
		t.Error("admin key accepted with none configured")
	}
}

func TestScheduleStatusAndBudget(t *testing.T) {
	now := testNow
	for _, tc := range []struct {
		c    Campaign
		want string
	}{
		{Campaign{Status: StatusActive}, ServingActive},
		{Campaign{Status: StatusPaused}, ServingPaused},
		{Campaign{Status: StatusActive, StartTime: now.Add(time.Second)}, ServingNotStarted},
		{Campaign{Status: StatusActive, StartTime: now}, ServingActive},
		{Campaign{Status: StatusActive, EndTime: now}, ServingEnded},
		{Campaign{Status: StatusActive, StartTime: now.Add(-time.Hour), EndTime: now.Add(time.Hour)}, ServingActive},
		{Campaign{Status: StatusPaused, EndTime: now.Add(-time.Hour)}, ServingPaused},
	} {
		if got := ScheduleStatus(tc.c, now); got != tc.want {
			t.Errorf("ScheduleStatus(%+v) = %s, want %s", tc.c, got, tc.want)
		}
	}
	kolkata, _ := time.LoadLocation("Asia/Kolkata")
	for _, tc := range []struct {
		daily, total, spentToday, spentTotal int64
		want                                 *int64
	}{
		{0, 0, 0, 0, nil},
		{100, 0, 30, 30, ptr[int64](70)},
		{0, 100, 10, 90, ptr[int64](10)},
		{100, 1000, 0, 950, ptr[int64](50)},
		{100, 1000, 120, 120, ptr[int64](0)},
	} {
		b := NewBudget(Campaign{DailyBudgetMicros: tc.daily, TotalBudgetMicros: tc.total}, kolkata, now, tc.spentToday, tc.spentTotal)
		if b.Day != "2026-11-22" || (b.RemainingTodayMicros == nil) != (tc.want == nil) || tc.want != nil && *b.RemainingTodayMicros != *tc.want {
			t.Errorf("NewBudget(%+v) = %+v", tc, b)
		}
	}
	if b := NewBudget(Campaign{}, nil, now, 0, 0); b.Day != "2026-11-21" {
		t.Errorf("NewBudget with no location: day %s", b.Day)
	}
}

// TestRestart reopens the database: objects, keys and the index come back.
func TestRestart(t *testing.T) { forEachBackend(t, testRestart) }

func testRestart(t *testing.T, o Options) {
	clock := &testClock{t: testNow}
	ctx := context.Background()
	first := o
	first.AdminKey, first.Now = testAdminKey, clock.Now
	c, err := Open(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutAdvertiser(ctx, Advertiser{ID: "a1", Name: "Acme", Timezone: "Asia/Kolkata"}); err != nil {
		t.Fatal(err)
	}
	cp, err := c.PutCampaign(ctx, Campaign{ID: "c1", AdvertiserID: "a1", Name: "Diwali", Status: StatusPaused,
		CPCBidMicros: 500000, DailyBudgetMicros: 10_000_000, EndTime: testNow.Add(48 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	var ads []Ad
	for i := range 2500 {
		a := Ad{ID: benchAdID(i), CampaignID: "c1", LandingURL: benchURL(i)}
		if i%2 == 0 {
			a.CatalogID = "cat" + benchAdID(i)
			a.CPCBidMicros = ptr(int64(i))
		}
		ads = append(ads, a)
	}
	if errs, err := c.PutAds(ctx, ads); err != nil || errors.Join(errs...) != nil {
		t.Fatal(err, errs)
	}
	ak, _ := c.CreateAdvertiserKey(ctx, "a1")
	ik, _ := c.CreateIngestKey(ctx)
	before := c.Stats()
	wantAd, _ := c.Ad(benchAdID(42))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	c = openWith(t, o, clock)
	if after := c.Stats(); after.Advertisers != before.Advertisers || after.Campaigns != before.Campaigns ||
		after.Ads != before.Ads || after.AdvertiserKeys != 1 || after.IngestKeys != 1 {
		t.Fatalf("Stats after restart = %+v, before %+v", after, before)
	}
	if got, err := c.GetCampaign(ctx, "c1"); err != nil || got != cp {
		t.Fatalf("GetCampaign after restart = %+v, %v; want %+v", got, err, cp)
	}
	if got, ok := c.Ad(benchAdID(42)); !ok || got != wantAd {
		t.Fatalf("Ad after restart = %+v, want %+v", got, wantAd)
	}
	for i, a := range ads {
		info, ok := c.Ad(a.ID)
		wantBid := int64(500000)
		if a.CPCBidMicros != nil {
			wantBid = *a.CPCBidMicros
		}
		if !ok || info.LandingURL != a.LandingURL || info.CatalogID != a.CatalogID || info.CPCBidMicros != wantBid || info.AdvertiserID != "a1" {
			t.Fatalf("ad %d after restart: %+v, %v", i, info, ok)
		}
	}
	if info, ok := c.Campaign("c1"); !ok || info.Status != StatusPaused || !info.EndTime.Equal(cp.EndTime) {
		t.Fatalf("Campaign after restart = %+v", info)
	}
	if info, _ := c.Advertiser("a1"); info.Location == nil || info.Location.String() != "Asia/Kolkata" {
		t.Fatalf("Advertiser after restart = %+v", info)
	}
	if p, ok := c.Authenticate(ak); !ok || p.Role != httpapi.RoleAdvertiser || p.AdvertiserID != "a1" {
		t.Fatalf("advertiser key after restart: %+v, %v", p, ok)
	}
	if p, ok := c.Authenticate(ik); !ok || p.Role != httpapi.RoleIngest {
		t.Fatalf("ingest key after restart: %+v, %v", p, ok)
	}
}

// TestOpenWithDB uses a caller-owned *sql.DB, which Close leaves open.
func TestOpenWithDB(t *testing.T) {
	path := filepath.Join(t.TempDir(), "catalog.db")
	first := openAt(t, path, &testClock{t: testNow})
	ctx := context.Background()
	if _, err := first.PutAdvertiser(ctx, Advertiser{ID: "a1", Name: "Acme"}); err != nil {
		t.Fatal(err)
	}
	c, err := Open(ctx, Options{DB: first.db})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Advertiser("a1"); !ok {
		t.Fatal("advertiser not loaded")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := first.db.PingContext(ctx); err != nil {
		t.Fatalf("Close closed a caller's DB: %v", err)
	}
}

func TestInMemorySQLite(t *testing.T) {
	c, err := Open(context.Background(), Options{DSN: ":memory:"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.PutAdvertiser(context.Background(), Advertiser{ID: "a1", Name: "Acme"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetAdvertiser(context.Background(), "a1"); err != nil {
		t.Fatal(err)
	}
}

func FuzzCheckLandingURL(f *testing.F) {
	for _, s := range []string{"https://shop.example/p/9", "javascript:alert(1)", "//evil.com", "http://a@b", "https://a.example\\@b", "HTTP://X.COM", "http://[::1]:80/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if checkLandingURL(s) != nil {
			return
		}
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.Opaque != "" ||
			strings.ContainsAny(s, "\\ \t\r\n") || len(s) > MaxLandingURLLen {
			t.Fatalf("accepted %q", s)
		}
	})
}

func TestCampaignIDs(t *testing.T) {
	ctx := context.Background()
	c, err := Open(ctx, Options{DSN: ":memory:"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.PutAdvertiser(ctx, Advertiser{ID: "a1", Name: "A", Timezone: "UTC"}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"c2", "c1"} {
		if _, err := c.PutCampaign(ctx, Campaign{ID: id, AdvertiserID: "a1", Name: "C", Status: StatusActive, CPCBidMicros: 1}); err != nil {
			t.Fatal(err)
		}
	}
	ids := c.CampaignIDs()
	sort.Strings(ids)
	if strings.Join(ids, ",") != "c1,c2" {
		t.Fatalf("CampaignIDs = %v", ids)
	}
}

func TestTimezoneHistory(t *testing.T) { forEachBackend(t, testTimezoneHistory) }

// testTimezoneHistory: every change of an advertiser's time zone is recorded with the time it
// was made, in order, and survives a restart; a PUT that keeps the zone records nothing.
func testTimezoneHistory(t *testing.T, o Options) {
	clock := &testClock{t: testNow}
	ctx := context.Background()
	c := openWith(t, o, clock)
	put := func(tz string) {
		t.Helper()
		if _, err := c.PutAdvertiser(ctx, Advertiser{ID: "a1", Name: "Acme", Timezone: tz}); err != nil {
			t.Fatal(err)
		}
	}
	put("UTC")
	clock.Set(testNow.Add(time.Hour))
	put("Asia/Tokyo")
	put("Asia/Tokyo") // same microsecond, no change
	put("America/Los_Angeles")
	want := []string{"UTC>Asia/Tokyo@" + testNow.Add(time.Hour).String(), "Asia/Tokyo>America/Los_Angeles@" + testNow.Add(time.Hour+time.Microsecond).String()}
	check := func(when string) {
		t.Helper()
		info, _ := c.Advertiser("a1")
		var got []string
		for _, ch := range info.TimezoneChanges {
			got = append(got, ch.From.String()+">"+ch.To.String()+"@"+ch.At.UTC().String())
		}
		if !slices.Equal(got, want) || info.Location.String() != "America/Los_Angeles" {
			t.Errorf("%s: changes %q in %s, want %q", when, got, info.Location, want)
		}
	}
	check("after the PUTs")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c = openWith(t, o, clock)
	check("after a restart")
}
