package servingredis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/adpulse/adpulse/internal/billing"
)

const addrEnv = "ADPULSE_TEST_REDIS_ADDR"

// The tests read Redis with a plain client and their own types, as an ad server would.

func testAddr(t testing.TB) string {
	t.Helper()
	addr := os.Getenv(addrEnv)
	if addr == "" {
		t.Skipf("no test Redis: set %s=host:port (e.g. 127.0.0.1:6379) to run the servingredis tests", addrEnv)
	}
	return addr
}

// reader is an ad server's client.
func reader(t testing.TB) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: testAddr(t)})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// testPrefix returns a key prefix no other test run uses, and deletes its keys when the test
// ends (unless it failed: then they are kept for a look).
func testPrefix(t testing.TB) string {
	t.Helper()
	rdb := reader(t)
	var b [6]byte
	_, _ = rand.Read(b[:])
	prefix := "adpulse-test:serving:" + hex.EncodeToString(b[:]) + ":"
	t.Logf("key prefix %s", prefix)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("keys kept under %s*", prefix)
			return
		}
		ctx := context.Background()
		iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			rdb.Unlink(ctx, iter.Val())
		}
	})
	return prefix
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func open(t testing.TB, o Options) *Publisher {
	t.Helper()
	o.Addr = testAddr(t)
	if o.KeyPrefix == "" {
		o.KeyPrefix = testPrefix(t)
	}
	p, err := Open(context.Background(), o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

type adCampaign struct {
	CPCBidMicros int64   `json:"cpc_bid_micros"`
	Pacing       float64 `json:"pacing"`
	Status       string  `json:"status"`
}

type adMeta struct {
	Version     int64  `json:"version"`
	ChangedAt   string `json:"changed_at"`
	PublishedAt string `json:"published_at"`
	Campaigns   int    `json:"campaigns"`
}

// readFeed is an ad server's read: one HGETALL.
func readFeed(ctx context.Context, rdb *redis.Client, prefix string) (map[string]adCampaign, adMeta, error) {
	h, err := rdb.HGetAll(ctx, prefix+"serving:campaigns").Result()
	if err != nil {
		return nil, adMeta{}, err
	}
	var meta adMeta
	if m, ok := h["#meta"]; !ok {
		return nil, meta, fmt.Errorf("no #meta in %v", h)
	} else if err := json.Unmarshal([]byte(m), &meta); err != nil {
		return nil, meta, err
	}
	delete(h, "#meta")
	out := make(map[string]adCampaign, len(h))
	for id, v := range h {
		var c adCampaign
		if err := json.Unmarshal([]byte(v), &c); err != nil {
			return nil, meta, fmt.Errorf("campaign %s: %w", id, err)
		}
		out[id] = c
	}
	return out, meta, nil
}

func feedOf(cs ...billing.FeedCampaign) *billing.Feed {
	return &billing.Feed{Campaigns: append([]billing.FeedCampaign{}, cs...)}
}

func TestFeed(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)}
	p := open(t, Options{Now: clk.Now})
	prefix := p.o.KeyPrefix
	rdb := reader(t)

	if n, _ := rdb.Exists(ctx, prefix+"serving:campaigns").Result(); n != 0 {
		t.Fatal("a feed before the first Publish")
	}
	if err := p.Publish(ctx, feedOf(
		billing.FeedCampaign{CampaignID: "c1", CPCBidMicros: 500_000, Pacing: 0.8},
		billing.FeedCampaign{CampaignID: "c2", CPCBidMicros: 70_000, Pacing: 1},
	)); err != nil {
		t.Fatal(err)
	}
	got, meta, err := readFeed(ctx, rdb, prefix)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]adCampaign{"c1": {500_000, 0.8, "active"}, "c2": {70_000, 1, "active"}}
	if !maps.Equal(got, want) {
		t.Errorf("feed %v, want %v", got, want)
	}
	if want := (adMeta{1, "2026-11-21T10:00:00Z", "2026-11-21T10:00:00Z", 2}); meta != want {
		t.Errorf("meta %+v, want %+v", meta, want)
	}
	if v, _ := rdb.Get(ctx, prefix+"serving:version").Int64(); v != 1 {
		t.Errorf("serving:version %d, want 1", v)
	}
	if ttl, _ := rdb.PTTL(ctx, prefix+"serving:campaigns").Result(); ttl != -1 {
		t.Errorf("feed TTL %v without FeedTTL", ttl)
	}

	// The same feed again: the version stays, published_at moves.
	clk.Add(time.Second)
	if err := p.Publish(ctx, feedOf(
		billing.FeedCampaign{CampaignID: "c1", CPCBidMicros: 500_000, Pacing: 0.8},
		billing.FeedCampaign{CampaignID: "c2", CPCBidMicros: 70_000, Pacing: 1},
	)); err != nil {
		t.Fatal(err)
	}
	_, meta, _ = readFeed(ctx, rdb, prefix)
	if want := (adMeta{1, "2026-11-21T10:00:00Z", "2026-11-21T10:00:01Z", 2}); meta != want {
		t.Errorf("meta after an unchanged publish %+v, want %+v", meta, want)
	}

	// c2 leaves serving, c1's pacing changes.
	clk.Add(time.Second)
	if err := p.Publish(ctx, feedOf(billing.FeedCampaign{CampaignID: "c1", CPCBidMicros: 500_000, Pacing: 0.5})); err != nil {
		t.Fatal(err)
	}
	got, meta, _ = readFeed(ctx, rdb, prefix)
	if want := map[string]adCampaign{"c1": {500_000, 0.5, "active"}}; !maps.Equal(got, want) {
		t.Errorf("feed %v, want %v", got, want)
	}
	if meta.Version != 2 || meta.Campaigns != 1 || meta.ChangedAt != "2026-11-21T10:00:02Z" {
		t.Errorf("meta %+v", meta)
	}

	// No campaign serving: the feed is empty, not missing.
	if err := p.Publish(ctx, feedOf()); err != nil {
		t.Fatal(err)
	}
	got, meta, err = readFeed(ctx, rdb, prefix)
	if err != nil || len(got) != 0 || meta.Version != 3 || meta.Campaigns != 0 {
		t.Errorf("empty feed: %v %+v %v", got, meta, err)
	}
	if n, _ := rdb.Exists(ctx, p.nextKey).Result(); n != 0 {
		t.Errorf("the next feed's key %s is left", p.nextKey)
	}
	s := p.Stats()
	if s.FeedWrites != 3 || s.FeedRefreshes != 1 || s.FeedErrors != 0 || s.FeedVersion != 3 || s.FeedCampaigns != 0 {
		t.Errorf("stats %+v", s)
	}
}

// TestFeedRewrittenWhenNotOurs: an unchanged feed is written whole again when the live one
// is gone (Redis lost it) or another publisher replaced it.
func TestFeedRewrittenWhenNotOurs(t *testing.T) {
	ctx := context.Background()
	p := open(t, Options{})
	prefix := p.o.KeyPrefix
	rdb := reader(t)
	f := feedOf(billing.FeedCampaign{CampaignID: "c1", CPCBidMicros: 1, Pacing: 1})
	if err := p.Publish(ctx, f); err != nil {
		t.Fatal(err)
	}
	rdb.Del(ctx, prefix+"serving:campaigns")
	if err := p.Publish(ctx, f); err != nil {
		t.Fatal(err)
	}
	got, meta, err := readFeed(ctx, rdb, prefix)
	if err != nil || len(got) != 1 || meta.Version != 2 {
		t.Fatalf("after a loss: %v %+v %v", got, meta, err)
	}

	other := open(t, Options{KeyPrefix: prefix})
	if err := other.Publish(ctx, feedOf(billing.FeedCampaign{CampaignID: "c9", CPCBidMicros: 9, Pacing: 1})); err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(ctx, f); err != nil {
		t.Fatal(err)
	}
	got, meta, _ = readFeed(ctx, rdb, prefix)
	if _, ok := got["c1"]; !ok || len(got) != 1 || meta.Version != 4 {
		t.Errorf("after another publisher: %v %+v", got, meta)
	}
}

func TestFeedTTL(t *testing.T) {
	ctx := context.Background()
	p := open(t, Options{FeedTTL: 5 * time.Second})
	rdb := reader(t)
	f := feedOf(billing.FeedCampaign{CampaignID: "c1", CPCBidMicros: 1, Pacing: 1})
	for i := range 2 { // a write, then a refresh: both set the TTL
		if i == 1 {
			rdb.PExpire(ctx, p.FeedKey(), time.Second)
		}
		if err := p.Publish(ctx, f); err != nil {
			t.Fatal(err)
		}
		if ttl, _ := rdb.PTTL(ctx, p.FeedKey()).Result(); ttl <= 4*time.Second || ttl > 5*time.Second {
			t.Errorf("publish %d: feed TTL %v, want 5s", i, ttl)
		}
	}
}

// TestFeedSwapIsAtomic: readers polling the feed while it changes always see one whole
// version: every campaign of a read has the bid of the version its meta names, and as many
// campaigns as the meta says.
func TestFeedSwapIsAtomic(t *testing.T) {
	ctx := context.Background()
	p := open(t, Options{Timeout: 10 * time.Second})
	prefix := p.o.KeyPrefix
	const versions, big, small = 40, 3000, 2000

	var done atomic.Bool
	var reads atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	for range 2 {
		rdb := reader(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !done.Load() {
				got, meta, err := readFeed(ctx, rdb, prefix)
				if err != nil {
					if err == redis.Nil || len(got) == 0 && meta.Version == 0 {
						continue // not published yet
					}
					errc <- err
					return
				}
				reads.Add(1)
				if len(got) != meta.Campaigns {
					errc <- fmt.Errorf("version %d: %d campaigns, meta says %d", meta.Version, len(got), meta.Campaigns)
					return
				}
				for id, c := range got {
					if c.CPCBidMicros != meta.Version {
						errc <- fmt.Errorf("version %d holds %s with the bid of version %d", meta.Version, id, c.CPCBidMicros)
						return
					}
				}
			}
		}()
	}
	for v := int64(1); v <= versions; v++ {
		n := big
		if v%2 == 0 {
			n = small // campaigns leave the feed, and come back
		}
		f := &billing.Feed{}
		for i := range n {
			f.Campaigns = append(f.Campaigns, billing.FeedCampaign{CampaignID: "c" + strconv.Itoa(i), CPCBidMicros: v, Pacing: 1})
		}
		if err := p.Publish(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	done.Store(true)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	t.Logf("%d consistent reads of %d versions", reads.Load(), versions)
	if reads.Load() == 0 {
		t.Error("no read saw a feed")
	}
}

func TestFeedErrorsCountedAndReturned(t *testing.T) {
	p := open(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Publish(ctx, feedOf()); err == nil {
		t.Fatal("Publish with a cancelled context succeeded")
	}
	if s := p.Stats(); s.FeedErrors != 1 {
		t.Errorf("FeedErrors %d, want 1", s.FeedErrors)
	}
	p.Close()
	if err := p.Publish(context.Background(), feedOf()); err == nil {
		t.Fatal("Publish after Close succeeded")
	}
}

// readViews is an ad server's read of one user's day.
func readViews(t testing.TB, rdb *redis.Client, prefix, date, user string) map[string]int64 {
	t.Helper()
	h, err := rdb.HGetAll(context.Background(), prefix+"views:"+date+":"+user).Result()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]int64, len(h))
	for k, v := range h {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("views %s %s: %q", user, k, v)
		}
		out[k] = n
	}
	return out
}

func TestPublishViewsExactAndExpiring(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	clk := &clock{t: now}
	p := open(t, Options{Now: clk.Now})
	prefix := p.o.KeyPrefix
	rdb := reader(t)
	round := map[string]map[string]int64{"u1": {"cat7": 3, "cat8": 1}, "u:2": {"cat7": 2}}
	for range 2 { // a retry of the same totals
		if err := p.PublishViews(ctx, now, round); err != nil {
			t.Fatal(err)
		}
	}
	// A restart: a new Publisher writes the same round again.
	p2 := open(t, Options{Now: clk.Now, KeyPrefix: prefix})
	if err := p2.PublishViews(ctx, now, round); err != nil {
		t.Fatal(err)
	}
	for user, want := range round {
		if got := readViews(t, rdb, prefix, "2026-11-21", user); !maps.Equal(got, want) {
			t.Errorf("views of %s: %v, want %v", user, got, want)
		}
	}
	// The hash expires ViewsTTL (48 h) after the day's end, by the publisher's clock.
	if ttl, err := rdb.PTTL(ctx, p.ViewsKey(now, "u1")).Result(); err != nil || ttl <= 61*time.Hour || ttl > 62*time.Hour {
		t.Errorf("TTL %v (%v), want 62h (to 2026-11-24T00:00Z)", ttl, err)
	}
	// A day whose hashes have expired is not written.
	old := now.Add(-3 * 24 * time.Hour)
	if err := p.PublishViews(ctx, old, round); err != nil {
		t.Fatal(err)
	}
	if n, _ := rdb.Exists(ctx, p.ViewsKey(old, "u1")).Result(); n != 0 {
		t.Error("views of an expired day written")
	}
	if s := p.Stats(); s.ViewsWritten != 6 || s.ViewsExpired != 3 {
		t.Errorf("stats %+v", s)
	}
}

// memSource is billing's committed views.
type memSource struct {
	mu    sync.Mutex
	views map[viewKey]int64
	scans int
}

func (m *memSource) ScanViews(ctx context.Context, day time.Time, fn func(billing.ViewCount) error) error {
	m.mu.Lock()
	m.scans++
	var vs []billing.ViewCount
	for k, n := range m.views {
		if k.day == unixDay(day) {
			vs = append(vs, billing.ViewCount{Day: time.Unix(k.day, 0).UTC(), UserID: k.user, CatalogID: k.catalog, Count: n})
		}
	}
	m.mu.Unlock()
	for _, v := range vs {
		if err := fn(v); err != nil {
			return err
		}
	}
	return nil
}

// commit adds a round's views to the source and returns the totals billing hands OnViews.
func (m *memSource) commit(day time.Time, incs map[[2]string]int64) []billing.ViewCount {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.views == nil {
		m.views = make(map[viewKey]int64)
	}
	var out []billing.ViewCount
	for uc, n := range incs {
		k := viewKey{unixDay(day), uc[0], uc[1]}
		m.views[k] += n
		out = append(out, billing.ViewCount{Day: time.Unix(k.day, 0).UTC(), UserID: k.user, CatalogID: k.catalog, Count: m.views[k]})
	}
	return out
}

// redisEquals waits until Redis holds src's views for the users named.
func redisEquals(t *testing.T, rdb *redis.Client, p *Publisher, src *memSource, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		src.mu.Lock()
		want := map[string]map[string]int64{}
		for k, n := range src.views {
			key := p.viewsPrefix + time.Unix(k.day, 0).UTC().Format(time.DateOnly) + ":" + k.user
			if want[key] == nil {
				want[key] = map[string]int64{}
			}
			want[key][k.catalog] = n
		}
		src.mu.Unlock()
		diff := ""
		for key, w := range want {
			got, err := rdb.HGetAll(context.Background(), key).Result()
			if err != nil {
				t.Fatal(err)
			}
			g := map[string]int64{}
			for c, v := range got {
				g[c], _ = strconv.ParseInt(v, 10, 64)
			}
			if !maps.Equal(g, w) {
				diff += fmt.Sprintf("%s: %v, want %v; ", key, g, w)
			}
		}
		if diff == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", within, diff)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func runViews(t *testing.T, p *Publisher, src ViewSource) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.RunViews(ctx, src) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("RunViews: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// TestViewsAcrossRestart: totals handed over but never written (the process died) are
// rewritten by the next process's resync, and handing the same round over twice counts it
// once.
func TestViewsAcrossRestart(t *testing.T) {
	now := time.Now().UTC()
	rdb := reader(t)
	src := &memSource{}
	yesterday := now.Add(-24 * time.Hour)
	src.commit(yesterday, map[[2]string]int64{{"u1", "cat1"}: 4}) // before the first start

	p := open(t, Options{})
	prefix := p.o.KeyPrefix
	p.ViewsCommitted(src.commit(now, map[[2]string]int64{{"u1", "cat7"}: 2})) // before RunViews: left to the resync
	stop := runViews(t, p, src)
	redisEquals(t, rdb, p, src, time.Second)
	p.ViewsCommitted(src.commit(now, map[[2]string]int64{{"u1", "cat7"}: 1, {"u2", "cat7"}: 5}))
	redisEquals(t, rdb, p, src, time.Second)
	stop()

	// Committed by billing, handed over, never written: the process dies.
	r3 := src.commit(now, map[[2]string]int64{{"u1", "cat8"}: 1, {"u2", "cat7"}: 1})
	p.ViewsCommitted(r3)
	p.Close()

	p2 := open(t, Options{KeyPrefix: prefix})
	runViews(t, p2, src)
	redisEquals(t, rdb, p2, src, time.Second)
	// The last round handed over again, and a new one twice: each counts once.
	p2.ViewsCommitted(r3)
	r4 := src.commit(now, map[[2]string]int64{{"u2", "cat7"}: 1, {"u3", "cat1"}: 1})
	p2.ViewsCommitted(r4)
	p2.ViewsCommitted(r4)
	redisEquals(t, rdb, p2, src, time.Second)
	if got := readViews(t, rdb, prefix, now.Format(time.DateOnly), "u2"); got["cat7"] != 7 {
		t.Errorf("u2 cat7 = %d, want 7", got["cat7"])
	}
	if s := p2.Stats(); s.Resyncs != 1 || s.ViewsPending != 0 {
		t.Errorf("stats %+v", s)
	}
}

// TestViewsResyncAfterRedisLoss: when Redis loses its data, RunViews notices that
// views:synced is gone and rewrites every live day.
func TestViewsResyncAfterRedisLoss(t *testing.T) {
	ctx := context.Background()
	now := time.Now().UTC()
	rdb := reader(t)
	src := &memSource{}
	p := open(t, Options{})
	p.syncedCheck = 20 * time.Millisecond
	runViews(t, p, src)
	p.ViewsCommitted(src.commit(now, map[[2]string]int64{{"u1", "cat7"}: 2, {"u2", "cat8"}: 1}))
	redisEquals(t, rdb, p, src, time.Second)
	for _, k := range []string{p.ViewsKey(now, "u1"), p.ViewsKey(now, "u2"), p.syncedKey} {
		rdb.Del(ctx, k)
	}
	redisEquals(t, rdb, p, src, 2*time.Second)
	// The resync counts itself once its writes are done: Redis can match a moment earlier.
	deadline := time.Now().Add(2 * time.Second)
	for p.Stats().Resyncs < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if s := p.Stats(); s.Resyncs != 2 {
		t.Errorf("resyncs %d, want 2", s.Resyncs)
	}
}

// TestViewsOverflowResyncs: past MaxPendingViews the queue is dropped and a resync writes
// the totals instead, so nothing is lost.
func TestViewsOverflowResyncs(t *testing.T) {
	now := time.Now().UTC()
	rdb := reader(t)
	src := &memSource{}
	p := open(t, Options{MaxPendingViews: 3})
	if err := p.Resync(context.Background(), src); err != nil { // as RunViews starts
		t.Fatal(err)
	}
	p.ViewsCommitted(src.commit(now, map[[2]string]int64{{"u1", "a"}: 1, {"u1", "b"}: 1}))
	p.ViewsCommitted(src.commit(now, map[[2]string]int64{{"u2", "a"}: 1, {"u2", "b"}: 1}))
	if s := p.Stats(); s.ViewsPending != 0 || s.ViewsDeferred != 4 {
		t.Errorf("after the overflow: %+v", s)
	}
	runViews(t, p, src)
	redisEquals(t, rdb, p, src, time.Second)
}

// TestViewsRetryAfterFailure: a write that fails is retried, and a newer total queued
// meanwhile is the one that stays.
func TestViewsRetryAfterFailure(t *testing.T) {
	now := time.Now().UTC()
	rdb := reader(t)
	src := &memSource{}
	p := open(t, Options{Timeout: 200 * time.Millisecond})
	if err := p.Resync(context.Background(), src); err != nil {
		t.Fatal(err)
	}
	p.ViewsCommitted(src.commit(now, map[[2]string]int64{{"u1", "a"}: 1}))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.drain(ctx); err == nil {
		t.Fatal("drain with a cancelled context succeeded")
	}
	p.ViewsCommitted(src.commit(now, map[[2]string]int64{{"u1", "a"}: 1, {"u1", "b"}: 1}))
	if s := p.Stats(); s.ViewsPending != 2 || s.ViewsErrors != 1 {
		t.Errorf("after a failure: %+v", s)
	}
	runViews(t, p, src)
	redisEquals(t, rdb, p, src, time.Second)
}

func TestLiveDays(t *testing.T) {
	p := &Publisher{o: Options{ViewsTTL: 48 * time.Hour}}
	now := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	var got []string
	for _, d := range p.liveDays(now) {
		got = append(got, d.Format(time.DateOnly))
	}
	want := fmt.Sprint([]string{"2026-11-22", "2026-11-21", "2026-11-20", "2026-11-19"})
	if fmt.Sprint(got) != want {
		t.Errorf("live days %v, want %v", got, want)
	}
	if d := unixDay(time.Date(1969, 12, 31, 23, 0, 0, 0, time.UTC)); d != -86400 {
		t.Errorf("unixDay before 1970: %d", d)
	}
}
