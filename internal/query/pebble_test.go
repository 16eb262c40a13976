package query

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/httpapi"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/metricstore/pebblestore"
	"github.com/adpulse/adpulse/internal/query/topn"
)

func openPebble(tb testing.TB) *pebblestore.Store {
	s, err := pebblestore.Open(tb.TempDir(), pebblestore.Options{Now: func() time.Time { return testNow }})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// TestWithPebbleStore runs the handler on the real embedded store: the contract's example
// reads back byte for byte, random queries agree with the fake store, and a range past the
// minute retention is a 400 naming start_time.
func TestWithPebbleStore(t *testing.T) {
	ps := openPebble(t)
	fake := newFakeStore()
	owners := &fakeOwners{adCampaign: map[string]string{"1": "c1", "2": "c1"}, campAdv: map[string]string{"c1": "a1"}}
	now := func() time.Time { return testNow }
	hp, err := New(Options{Store: ps, Owners: owners, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	hf, _ := New(Options{Store: fake, Owners: owners, Now: now})
	mp, mf := http.NewServeMux(), http.NewServeMux()
	hp.Register(mp)
	hf.Register(mf)

	c1 := metricstore.Counts{Impressions: 40, Clicks: 3, SpendMicros: 1500000}
	c1.AddInteraction("add_to_cart", 1)
	c2 := metricstore.Counts{Impressions: 7, Clicks: 1, SpendMicros: 500000}
	c2.AddInvalid(event.ReasonBot, 1)
	deltas := []metricstore.Delta{
		{Level: metricstore.LevelAd, ID: "1", Minute: t0("2026-11-21T10:00:00Z").Unix() / 60, Counts: c1},
		{Level: metricstore.LevelAd, ID: "1", Minute: t0("2026-11-21T10:02:00Z").Unix() / 60, Counts: c2},
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 3))
	for range 500 {
		var c metricstore.Counts
		c.Impressions, c.Clicks, c.SpendMicros = r.Int64N(50), r.Int64N(5), r.Int64N(5)*100000
		deltas = append(deltas, metricstore.Delta{Level: metricstore.Levels[r.IntN(3)], ID: fmt.Sprint(1 + r.IntN(3)),
			Minute: testNow.Unix()/60 - r.Int64N(3*1440), Counts: c})
	}
	commit := &metricstore.Commit{Consumer: "test", Deltas: deltas, FinalBefore: t0("2026-11-21T10:01:00Z")}
	for _, s := range []metricstore.Store{ps, fake} {
		if err := s.Apply(context.Background(), commit); err != nil {
			t.Fatal(err)
		}
	}
	fake.finalBefore = commit.FinalBefore

	get := func(mux *http.ServeMux, target string) (int, string) {
		req := httptest.NewRequest("GET", target, nil)
		req = req.WithContext(httpapi.WithPrincipal(req.Context(), admin))
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, req)
		return w.Code, w.Body.String()
	}
	queries := []string{"/metrics?ad_ids=1&start_time=2026-11-21T10:00:00Z&end_time=2026-11-21T10:03:00Z&interval=1m"}
	intervals := []string{"1m", "5m", "15m", "1h", "90m", "1d", "2d"}
	for range 60 {
		start := testNow.Add(-time.Duration(r.Int64N(3*1440*60)) * time.Second)
		end := start.Add(time.Duration(1+r.Int64N(2*1440*60)) * time.Second)
		iv := intervals[r.IntN(len(intervals))]
		q := fmt.Sprintf("/metrics?%s=1,2,3,1&start_time=%d&end_time=%d&interval=%s",
			[]string{"ad_ids", "campaign_ids", "advertiser_ids"}[r.IntN(3)], start.Unix(), end.Unix(), iv)
		if iv == "1d" && r.IntN(2) == 0 {
			q += "&tz=Asia/Kolkata"
		}
		queries = append(queries, q)
	}
	for _, q := range queries {
		cp, bp := get(mp, q)
		cf, bf := get(mf, q)
		if cp != cf || bp != bf {
			t.Fatalf("seed %d: %s\npebble %d %s\nfake   %d %s", seed, q, cp, bp, cf, bf)
		}
	}
	code, body := get(mp, "/metrics?ad_ids=1&start_time=2026-10-01T00:00:00Z&end_time=2026-10-01T01:00:00Z")
	if code != 400 || !strings.Contains(body, `"message":"start_time: `) {
		t.Errorf("expired range: %d %s", code, body)
	}
}

// BenchmarkMetrics measures GET /metrics for 10 ads over 24 hours at 1m (14,400 points), on
// the fake store (the handler's own cost: parsing, checks, encoding) and on pebblestore (end to
// end, warm cache).
//
//	go test -run XXX -bench BenchmarkMetrics ./internal/query
func BenchmarkMetrics(b *testing.B) {
	var deltas []metricstore.Delta
	cur := testNow.Unix() / 60
	for ad := range 10 {
		for m := cur - 1440; m <= cur; m++ {
			c := metricstore.Counts{Impressions: 40 + m%7, Clicks: m % 3, SpendMicros: (m % 3) * 400000}
			if m%5 == 0 {
				c.AddInteraction("add_to_cart", 1)
			}
			deltas = append(deltas, metricstore.Delta{Level: metricstore.LevelAd, ID: fmt.Sprint("ad", ad), Minute: m, Counts: c})
		}
	}
	owners := &fakeOwners{adCampaign: map[string]string{}, campAdv: map[string]string{}}
	for i := range 10 {
		owners.adCampaign[fmt.Sprint("ad", i)] = "c1"
	}
	owners.campAdv["c1"] = "a1"
	target := "/metrics?ad_ids=ad0,ad1,ad2,ad3,ad4,ad5,ad6,ad7,ad8,ad9&start_time=" + fmt.Sprint((cur-1439)*60) + "&end_time=" + fmt.Sprint((cur+1)*60)
	for _, c := range []struct {
		name string
		open func(testing.TB) metricstore.Store
		who  httpapi.Principal
	}{
		{"fake", func(testing.TB) metricstore.Store { return newCachedStore() }, admin},
		{"pebble", func(tb testing.TB) metricstore.Store { return openPebble(tb) }, admin},
		{"pebble/advertiser-key", func(tb testing.TB) metricstore.Store { return openPebble(tb) }, adv1},
	} {
		b.Run("10ads-24h-1m/"+c.name, func(b *testing.B) {
			store := c.open(b) // per run: b.Run calls this function more than once
			if err := store.Apply(context.Background(), &metricstore.Commit{Consumer: "bench", Deltas: deltas}); err != nil {
				b.Fatal(err)
			}
			h, _ := New(Options{Store: store, Index: topn.New(topn.Options{}), Owners: owners, Now: func() time.Time { return testNow }})
			mux := http.NewServeMux()
			h.Register(mux)
			req := httptest.NewRequest("GET", target, nil)
			req = req.WithContext(httpapi.WithPrincipal(req.Context(), c.who))
			b.ReportAllocs()
			b.ResetTimer()
			var n int
			for range b.N {
				w := httptest.NewRecorder()
				mux.ServeHTTP(w, req)
				if w.Code != 200 {
					b.Fatalf("%d %s", w.Code, w.Body)
				}
				n = w.Body.Len()
			}
			b.SetBytes(int64(n))
		})
	}
}

// cachedStore answers from a fake store once and then returns the same result for the same
// query, so the benchmark measures the handler, not the fake.
type cachedStore struct {
	*fakeStore
	cache map[string]*metricstore.Result
}

func newCachedStore() *cachedStore {
	return &cachedStore{fakeStore: newFakeStore(), cache: map[string]*metricstore.Result{}}
}

func (s *cachedStore) Query(ctx context.Context, q metricstore.Query) (*metricstore.Result, error) {
	key := fmt.Sprint(q)
	if res, ok := s.cache[key]; ok {
		return res, nil
	}
	res, err := s.fakeStore.Query(ctx, q)
	if err == nil {
		s.cache[key] = res
	}
	return res, err
}

// TestReconciledInJSON: a point of an hour a reconciliation marked carries
// "reconciled":true; the others do not have the field.
func TestReconciledInJSON(t *testing.T) {
	ps := openPebble(t)
	h, err := New(Options{Store: ps, Owners: &fakeOwners{adCampaign: map[string]string{"1": "c1"}, campAdv: map[string]string{"c1": "a1"}}, Now: func() time.Time { return testNow }})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	h.Register(mux)
	hour := t0("2026-11-21T10:00:00Z")
	ctx := context.Background()
	if err := ps.Apply(ctx, &metricstore.Commit{Consumer: "aggregate", FinalBefore: hour.Add(2 * time.Hour),
		Deltas: []metricstore.Delta{{Level: metricstore.LevelAd, ID: "1", Minute: hour.Unix() / 60, Counts: metricstore.Counts{Clicks: 2}}}}); err != nil {
		t.Fatal(err)
	}
	if err := ps.Apply(ctx, &metricstore.Commit{Consumer: "reconcile", Ranges: []metricstore.OffsetRange{{Partition: 0, From: 0, To: 1}},
		ReconciledHours: []int64{hour.Unix() / 3600}}); err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("GET", "/metrics?ad_ids=1&start_time=2026-11-21T10:00:00Z&end_time=2026-11-21T12:00:00Z&interval=1h", nil)
	req = req.WithContext(httpapi.WithPrincipal(req.Context(), admin))
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, req)
	body := w.Body.String()
	if w.Code != 200 || strings.Count(body, `"reconciled":true`) != 1 || !strings.Contains(body, `"clicks":2,"invalid_clicks":0,"spend_micros":0,`) || !strings.Contains(body, `"final":true,"reconciled":true}`) {
		t.Errorf("%d %s", w.Code, body)
	}
}
