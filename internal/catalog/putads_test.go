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

// TestPutAdsModel sends random bulk requests and checks every per-ad error, the stored ads,
// their timestamps and the in-memory index against a model of the upsert rules: a new ad is
// created, an existing one updated (created_at kept), an ad may move between campaigns of
// its advertiser only, an unknown campaign is refused, and an id met twice in one request is
// created or updated by the first and updated by the second. The requests mix new ids,
// existing ones, repeats within a request and chunk-sized requests (past inChunk and
// insertChunk), on every backend.
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
		ad      Ad
		created time.Time
	}
	model := map[string]modelAd{}
	for round := range 12 {
		clock.Set(testNow.Add(time.Duration(round+1) * time.Minute))
		now := clock.Now()
		n := 1 + rng.IntN(40)
		if round%4 == 3 {
			n = inChunk + insertChunk + rng.IntN(300)
		}
		ads := make([]Ad, n)
		for i := range ads {
			a := Ad{
				ID:         fmt.Sprintf("ad%d", rng.IntN(60+n)),
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
		errs, err := c.PutAds(ctx, ads)
		if err != nil {
			t.Fatalf("seed %d, round %d: %v", seed, round, err)
		}
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
			m.ad = a
			model[a.ID] = m
		}
		for id, m := range model {
			got, err := c.GetAd(ctx, id)
			if err != nil {
				t.Fatalf("seed %d, round %d: GetAd(%s): %v", seed, round, id, err)
			}
			w := m.ad
			if got.CampaignID != w.CampaignID || got.LandingURL != w.LandingURL || got.CatalogID != w.CatalogID ||
				fmt.Sprint(deref(got.CPCBidMicros)) != fmt.Sprint(deref(w.CPCBidMicros)) || !got.CreatedAt.Equal(m.created) {
				t.Fatalf("seed %d, round %d: ad %s = %+v (bid %v), want %+v (bid %v) created %v", seed, round, id, got, deref(got.CPCBidMicros), w, deref(w.CPCBidMicros), m.created)
			}
			info, ok := c.Ad(id)
			if !ok || info.CampaignID != w.CampaignID || info.AdvertiserID != owner[w.CampaignID] || info.LandingURL != w.LandingURL {
				t.Fatalf("seed %d, round %d: index has %s as %+v (%v), want %+v", seed, round, id, info, ok, w)
			}
		}
	}
}

func deref(p *int64) any {
	if p == nil {
		return nil
	}
	return *p
}
