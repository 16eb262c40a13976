package catalog

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/testseed"
)

// TestPutAdsModel sends random bulk requests and checks every per-ad error, the timestamps
// written back, the stored ads, the in-memory index and the change feed's rows against a
// model of the upsert rules: a new ad is created, an existing one updated (created_at kept),
// an ad may move between campaigns of its advertiser only, an unknown campaign is refused,
// an id met twice in one request is created or updated by the first and updated by the
// second, and the feed gets one row per accepted ad, in request order. Large requests pass
// several chunks of ids read (inChunk) and of rows inserted (insertChunk), with existing ads
// in every chunk, on every backend.
func TestPutAdsModel(t *testing.T) { forEachBackend(t, testPutAdsModel) }

func testPutAdsModel(t *testing.T, o Options) {
	seed := testseed.Seed(t)
	rng := rand.New(rand.NewPCG(seed, 0))
	clock := &testClock{t: testNow}
	c := openWith(t, o, clock)
	ctx := context.Background()
	for a := range 2 {
		if _, err := c.PutAdvertiser(ctx, Advertiser{ID: fmt.Sprintf("adv%d", a), Name: "A"}); err != nil {
			t.Fatal(err)
		}
	}
	owner := map[string]string{}
	for k := range 4 {
		id := fmt.Sprintf("cmp%d", k)
		owner[id] = fmt.Sprintf("adv%d", k%2)
		if _, err := c.PutCampaign(ctx, Campaign{ID: id, AdvertiserID: owner[id], Name: "C", CPCBidMicros: 1000}); err != nil {
			t.Fatal(err)
		}
	}
	type modelAd struct {
		ad               Ad
		created, updated time.Time
	}
	model := map[string]modelAd{}
	for round := range 12 {
		clock.Set(testNow.Add(time.Duration(round+1) * time.Minute))
		now := clock.Now()
		n, ids := 1+rng.IntN(40), 100
		if round%4 == 3 { // over 1,000 distinct ids (2-3 chunks read), 9-11 chunks of rows; by round 7 most ids exist
			n, ids = 3*inChunk+2*insertChunk+rng.IntN(300), 4*inChunk
		}
		ads := make([]Ad, n)
		for i := range ads {
			a := Ad{
				ID:         fmt.Sprintf("ad%d", rng.IntN(ids)),
				CampaignID: fmt.Sprintf("cmp%d", rng.IntN(5)), // cmp4 does not exist
				LandingURL: fmt.Sprintf("https://shop.example/p/%d/%d", round, i),
			}
			if rng.IntN(3) == 0 {
				a.CatalogID = fmt.Sprintf("cat%d", rng.IntN(9))
			}
			if rng.IntN(3) == 0 {
				a.CPCBidMicros = ptr(int64(rng.IntN(5000)))
			}
			if i > 0 && rng.IntN(8) == 0 {
				a.ID = ads[rng.IntN(i)].ID // the same id again in this request
			}
			ads[i] = a
		}
		feedFrom := feedHead(t, c)
		errs, err := c.putAds(ctx, ads) // PutAds on a copy; this one writes the stamps back
		if err != nil {
			t.Fatalf("seed %d, round %d: %v", seed, round, err)
		}
		var accepted []string
		touched := map[string]bool{}
		for i, a := range ads {
			var want string
			m, exists := model[a.ID]
			switch {
			case owner[a.CampaignID] == "":
				want = "does not exist"
			case exists && owner[m.ad.CampaignID] != owner[a.CampaignID]:
				want = "another advertiser"
			}
			if got := fmt.Sprint(errs[i]); want == "" && errs[i] != nil || want != "" && (errs[i] == nil || !strings.Contains(got, want)) {
				t.Fatalf("seed %d, round %d, ad %d (%s in %s): error %q, want %q", seed, round, i, a.ID, a.CampaignID, got, want)
			}
			if want != "" {
				continue
			}
			if !exists {
				m.created = now
			}
			m.updated = now
			if !a.CreatedAt.Equal(m.created) || !a.UpdatedAt.Equal(now) {
				t.Fatalf("seed %d, round %d, ad %d (%s): stamps written back %v / %v, want %v / %v", seed, round, i, a.ID, a.CreatedAt, a.UpdatedAt, m.created, now)
			}
			stored := a
			stored.CreatedAt, stored.UpdatedAt = time.Time{}, time.Time{}
			m.ad = stored
			model[a.ID] = m
			accepted = append(accepted, a.ID)
			touched[a.ID] = true
		}
		if got := feedSince(t, c, feedFrom); strings.Join(got, " ") != strings.Join(accepted, " ") {
			t.Fatalf("seed %d, round %d: change feed has %d ad rows, want %d (one per accepted ad, in order):\n got %v\nwant %v", seed, round, len(got), len(accepted), got, accepted)
		}
		for id, m := range model {
			if !touched[id] && round != 11 {
				continue // every ad is read back at the end
			}
			got, err := c.GetAd(ctx, id)
			if err != nil {
				t.Fatalf("seed %d, round %d: GetAd(%s): %v", seed, round, id, err)
			}
			w := m.ad
			if got.CampaignID != w.CampaignID || got.LandingURL != w.LandingURL || got.CatalogID != w.CatalogID ||
				fmt.Sprint(deref(got.CPCBidMicros)) != fmt.Sprint(deref(w.CPCBidMicros)) || !got.CreatedAt.Equal(m.created) || !got.UpdatedAt.Equal(m.updated) {
				t.Fatalf("seed %d, round %d: ad %s = %+v (bid %v), want %+v (bid %v) created %v updated %v", seed, round, id, got, deref(got.CPCBidMicros), w, deref(w.CPCBidMicros), m.created, m.updated)
			}
			info, ok := c.Ad(id)
			if !ok || info.CampaignID != w.CampaignID || info.AdvertiserID != owner[w.CampaignID] || info.LandingURL != w.LandingURL {
				t.Fatalf("seed %d, round %d: index has %s as %+v (%v), want %+v", seed, round, id, info, ok, w)
			}
		}
	}
}

// feedHead is the change feed's last sequence number.
func feedHead(t *testing.T, c *Catalog) int64 {
	t.Helper()
	var seq int64
	if err := c.db.QueryRow(`SELECT seq FROM catalog_feed_head WHERE id = 1`).Scan(&seq); err != nil {
		t.Fatal(err)
	}
	return seq
}

// feedSince returns the object ids of the ad rows of the change feed after seq, in order.
func feedSince(t *testing.T, c *Catalog, seq int64) []string {
	t.Helper()
	rows, err := c.db.Query(c.d.q(`SELECT kind, object_id FROM catalog_changes WHERE seq > ? ORDER BY seq`), seq)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var kind, id string
		if err := rows.Scan(&kind, &id); err != nil {
			t.Fatal(err)
		}
		if kind == changeAd {
			ids = append(ids, id)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return ids
}

func deref(p *int64) any {
	if p == nil {
		return nil
	}
	return *p
}
