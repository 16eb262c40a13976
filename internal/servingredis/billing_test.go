package servingredis

import (
	"context"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/adpulse/adpulse/internal/billing"
	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/eventlog/locallog"
	"github.com/adpulse/adpulse/internal/metricstore/pebblestore"
)

// fakeCatalog is a mutable billing.Catalog and billing.CampaignLister.
type fakeCatalog struct {
	mu    sync.Mutex
	ads   map[string]catalog.AdInfo
	camps map[string]catalog.CampaignInfo
}

func (f *fakeCatalog) Ad(id string) (catalog.AdInfo, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.ads[id]
	if ok {
		a.CPCBidMicros = f.camps[a.CampaignID].CPCBidMicros
	}
	return a, ok
}

func (f *fakeCatalog) Campaign(id string) (catalog.CampaignInfo, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.camps[id]
	return c, ok
}

func (f *fakeCatalog) Advertiser(id string) (catalog.AdvertiserInfo, bool) {
	return catalog.AdvertiserInfo{AdvertiserID: id, Timezone: "UTC", Location: time.UTC}, id == "adv1"
}

func (f *fakeCatalog) CampaignIDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Collect(maps.Keys(f.camps))
}

// stack is a billing Charger publishing through a Publisher, as the server wires them.
type stack struct {
	t       *testing.T
	dir     string
	prefix  string
	cat     *fakeCatalog
	log     *locallog.Log
	charger *billing.Charger
	pub     *Publisher
	stop    func()
	// startViews starts RunViews when start was told not to.
	startViews func()
}

// start opens the log, metric store, Publisher and Charger and runs them. With runViews
// false the Publisher's RunViews is not started (startViews does it).
func (s *stack) start(runViews bool) {
	t := s.t
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var err error
	if s.log, err = locallog.Open(locallog.Options{Dir: filepath.Join(s.dir, "log"), Partitions: 2}); err != nil {
		t.Fatal(err)
	}
	store, err := pebblestore.Open(filepath.Join(s.dir, "metrics"), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.pub = open(t, Options{KeyPrefix: s.prefix})
	s.charger, err = billing.Open(ctx, billing.Options{
		Dir: filepath.Join(s.dir, "billing"), Log: s.log, Catalog: s.cat, Metrics: store,
		Publisher: s.pub, OnViews: s.pub.ViewsCommitted, FeedInterval: FeedInterval,
		PollInterval: 5 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.charger.Run(ctx); err != nil {
			t.Errorf("charger: %v", err)
		}
	}()
	views := func() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.pub.RunViews(ctx, s.charger); err != nil {
				t.Errorf("RunViews: %v", err)
			}
		}()
	}
	if runViews {
		views()
	}
	var once sync.Once
	s.stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			s.charger.Close()
			s.pub.Close()
			store.Close()
			s.log.Close()
		})
	}
	if !runViews {
		s.startViews = views
	}
	t.Cleanup(s.stop)
}

func (s *stack) append(evs ...event.Event) {
	s.t.Helper()
	msgs := make([]eventlog.Message, len(evs))
	for i := range evs {
		msgs[i] = eventlog.Message{Partition: int32(i % 2), Value: evs[i].AppendBinary(nil)}
	}
	if err := s.log.Append(context.Background(), msgs); err != nil {
		s.t.Fatal(err)
	}
}

var seq int

func impression(user, cat string) event.Event {
	seq++
	now := time.Now().UnixMicro()
	return event.Event{Type: event.TypeImpression, Time: now, RecvTime: now, AdID: "a1", CampaignID: "c1", AdvertiserID: "adv1",
		ImpressionID: "i" + strconv.Itoa(seq), UserID: user, CatalogID: cat}
}

func click(ad, campaign string) event.Event {
	seq++
	now := time.Now().UnixMicro()
	return event.Event{Type: event.TypeClick, Time: now, RecvTime: now, AdID: ad, CampaignID: campaign, AdvertiserID: "adv1",
		ImpressionID: "k" + strconv.Itoa(seq)}
}

// within waits for cond and returns how long it took; it fails the test past limit.
func within(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > 5*limit {
			t.Fatalf("%s: not after %v", what, time.Since(start))
		}
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(start)
	t.Logf("%s: %v", what, took.Round(time.Millisecond))
	if took > limit {
		t.Errorf("%s took %v, want at most %v", what, took, limit)
	}
}

func feedIDs(rdb *redis.Client, prefix string) map[string]adCampaign {
	got, _, err := readFeed(context.Background(), rdb, prefix)
	if err != nil {
		return nil
	}
	return got
}

// TestWithBilling drives the Publisher by a real billing Charger, as the server wires it: the
// feed and the views are in Redis within a second of a change, and the views equal billing's
// across a restart, including one whose last commits were never written to Redis.
func TestWithBilling(t *testing.T) {
	rdb := reader(t)
	s := &stack{t: t, dir: t.TempDir(), prefix: testPrefix(t), cat: &fakeCatalog{
		ads: map[string]catalog.AdInfo{
			"a1": {AdID: "a1", CampaignID: "c1", AdvertiserID: "adv1"},
			"a2": {AdID: "a2", CampaignID: "c2", AdvertiserID: "adv1"},
		},
		camps: map[string]catalog.CampaignInfo{
			"c1": {CampaignID: "c1", AdvertiserID: "adv1", Status: catalog.StatusActive, CPCBidMicros: 100_000, DailyBudgetMicros: 250_000},
			"c2": {CampaignID: "c2", AdvertiserID: "adv1", Status: catalog.StatusActive, CPCBidMicros: 50_000},
		},
	}}
	s.start(true)
	within(t, "first feed", time.Second, func() bool { return len(feedIDs(rdb, s.prefix)) == 2 })
	if c := feedIDs(rdb, s.prefix)["c2"]; c != (adCampaign{50_000, 1, "active"}) {
		t.Errorf("c2 in the feed: %+v", c)
	}

	today := time.Now().UTC()
	date := today.Format(time.DateOnly)
	viewsEqual := func(want map[string]map[string]int64) func() bool {
		return func() bool {
			for user, w := range want {
				if got := readViews(t, rdb, s.prefix, date, user); !maps.Equal(got, w) {
					return false
				}
			}
			return true
		}
	}
	checkBilling := func(want map[string]map[string]int64) {
		t.Helper()
		for user, w := range want {
			got, err := s.charger.UserViews(context.Background(), user, today)
			if err != nil || !maps.Equal(got, w) {
				t.Errorf("billing's views of %s: %v %v, want %v", user, got, err, w)
			}
		}
	}

	s.append(impression("u1", "cat7"), impression("u1", "cat7"), impression("u2", "cat8"))
	want := map[string]map[string]int64{"u1": {"cat7": 2}, "u2": {"cat8": 1}}
	within(t, "views", time.Second, viewsEqual(want))
	checkBilling(want)

	// c1's daily budget (250 000) runs out at its third click.
	s.append(click("a1", "c1"), click("a1", "c1"), click("a1", "c1"))
	within(t, "budget exhausted: c1 leaves the feed", time.Second, func() bool {
		f := feedIDs(rdb, s.prefix)
		_, ok := f["c1"]
		return f != nil && !ok
	})
	st, err := s.charger.Status(catalog.Campaign{ID: "c1", AdvertiserID: "adv1", Status: catalog.StatusActive, CPCBidMicros: 100_000, DailyBudgetMicros: 250_000})
	if err != nil || st.ServingStatus != catalog.ServingBudgetExhausted {
		t.Errorf("c1 in billing: %+v %v", st, err)
	}

	s.cat.mu.Lock()
	c2 := s.cat.camps["c2"]
	c2.Status = catalog.StatusPaused
	s.cat.camps["c2"] = c2
	s.cat.mu.Unlock()
	within(t, "paused: c2 leaves the feed", time.Second, func() bool {
		f := feedIDs(rdb, s.prefix)
		return f != nil && len(f) == 0
	})

	// Restart, with the impressions of the downtime, and the views publisher starting only
	// after billing committed them: the totals handed over meanwhile are never written by
	// themselves, and the resync must bring them.
	s.stop()
	s.log, err = locallog.Open(locallog.Options{Dir: filepath.Join(s.dir, "log"), Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	s.append(impression("u1", "cat7"), impression("u3", "cat7"))
	s.log.Close()
	s.start(false)
	want = map[string]map[string]int64{"u1": {"cat7": 3}, "u2": {"cat8": 1}, "u3": {"cat7": 1}}
	deadline := time.Now().Add(5 * time.Second)
	for s.charger.Stats().ViewsCounted < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("billing did not count the downtime's views: %+v", s.charger.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	s.startViews()
	within(t, "views after a restart", time.Second, viewsEqual(want))
	checkBilling(want)
	s.append(impression("u2", "cat8"))
	want["u2"]["cat8"] = 2
	within(t, "views after the resync", time.Second, viewsEqual(want))
	checkBilling(want)
	if ps := s.pub.Stats(); ps.Resyncs != 1 || ps.ViewsDeferred == 0 || ps.ViewsErrors != 0 || ps.FeedErrors != 0 {
		t.Errorf("publisher stats %+v", ps)
	}
}

// BenchmarkFeedCycle is one FeedInterval's work at 10 000 campaigns: billing computes the feed
// (Charger.Feed) and the Publisher writes it, changed (a new version) or unchanged.
func BenchmarkFeedCycle(b *testing.B) {
	addr := testAddr(b)
	cat := &fakeCatalog{ads: map[string]catalog.AdInfo{}, camps: map[string]catalog.CampaignInfo{}}
	for i := range 10_000 {
		id := "c" + strconv.Itoa(i)
		cat.camps[id] = catalog.CampaignInfo{CampaignID: id, AdvertiserID: "adv1", Status: catalog.StatusActive, CPCBidMicros: 100_000, DailyBudgetMicros: 1e9}
	}
	dir := b.TempDir()
	log, err := locallog.Open(locallog.Options{Dir: filepath.Join(dir, "log"), Partitions: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer log.Close()
	store, err := pebblestore.Open(filepath.Join(dir, "metrics"), pebblestore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	ctx := context.Background()
	c, err := billing.Open(ctx, billing.Options{Dir: filepath.Join(dir, "billing"), Log: log, Catalog: cat, Metrics: store})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	p, err := Open(ctx, Options{Addr: addr, KeyPrefix: testPrefix(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	b.Run("compute", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.Feed(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	feed, err := c.Feed(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("publish=changed", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			feed.Campaigns[0].CPCBidMicros = int64(i)
			if err := p.Publish(ctx, feed); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("publish=unchanged", func(b *testing.B) {
		for b.Loop() {
			if err := p.Publish(ctx, feed); err != nil {
				b.Fatal(err)
			}
		}
	})
}
