package topn

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/testseed"

	"github.com/adpulse/adpulse/internal/metricstore"
)

// testSeed is the repository's seed convention (internal/testseed).
func testSeed(t testing.TB) uint64 { return testseed.Seed(t) }

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// owners is a test catalog: ads in campaigns in advertisers; ads may move between the
// campaigns of their advertiser.
type owners struct {
	mu         sync.Mutex
	adCampaign map[string]string
	campAdv    map[string]string
}

func (o *owners) AdCampaign(ad string) (string, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	c, ok := o.adCampaign[ad]
	return c, ok
}

func (o *owners) AdAdvertiser(ad string) (string, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	c, ok := o.adCampaign[ad]
	if !ok {
		return "", false
	}
	a, ok := o.campAdv[c]
	return a, ok
}

func (o *owners) CampaignAdvertiser(c string) (string, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	a, ok := o.campAdv[c]
	return a, ok
}

// model is the naive truth: per level, id and minute, the totals.
type model struct {
	data [3]map[string]map[int64]vals
}

func newModel() *model {
	m := &model{}
	for i := range m.data {
		m.data[i] = make(map[string]map[int64]vals)
	}
	return m
}

func (m *model) add(d *metricstore.Delta) {
	byMin := m.data[d.Level-1][d.ID]
	if byMin == nil {
		byMin = make(map[int64]vals)
		m.data[d.Level-1][d.ID] = byMin
	}
	v := byMin[d.Minute]
	v.add(&vals{d.Clicks, d.Impressions, d.SpendMicros})
	byMin[d.Minute] = v
}

func (m *model) top(q Query, o *owners) []Item {
	var out []Item
	for id, byMin := range m.data[q.Level-1] {
		if !m.passes(q, id, o) {
			continue
		}
		var s int64
		for minute, v := range byMin {
			if minute >= q.From && minute < q.To {
				s += v[q.Metric]
			}
		}
		if s > 0 {
			out = append(out, Item{id, s})
		}
	}
	slices.SortFunc(out, func(a, b Item) int {
		if c := cmp.Compare(b.Value, a.Value); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	if len(out) > q.N {
		out = out[:q.N]
	}
	return out
}

func (m *model) passes(q Query, id string, o *owners) bool {
	var adv, camp string
	var ok bool
	switch q.Level {
	case metricstore.LevelAd:
		if camp, ok = o.AdCampaign(id); !ok {
			return q.Advertiser == "" && q.Campaign == ""
		}
		adv, _ = o.CampaignAdvertiser(camp)
	case metricstore.LevelCampaign:
		camp = id
		if adv, ok = o.CampaignAdvertiser(id); !ok {
			return q.Advertiser == "" && q.Campaign == ""
		}
	default:
		adv = id
		if q.Campaign != "" {
			owner, ok := o.CampaignAdvertiser(q.Campaign)
			if !ok || owner != id {
				return false
			}
		}
		return q.Advertiser == "" || q.Advertiser == id
	}
	return (q.Advertiser == "" || q.Advertiser == adv) && (q.Campaign == "" || q.Campaign == camp)
}

// ScanMinutes makes the model a MinuteScanner, for Rebuild.
func (m *model) ScanMinutes(ctx context.Context, from, to int64, fn func(d *metricstore.Delta) error) error {
	for l := range m.data {
		for id, byMin := range m.data[l] {
			for minute, v := range byMin {
				if minute < from || minute >= to || v.isZero() {
					continue
				}
				d := metricstore.Delta{Level: levelOf(l), ID: id, Minute: minute}
				d.Clicks, d.Impressions, d.SpendMicros = v[0], v[1], v[2]
				if err := fn(&d); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// gen makes random traffic.
type gen struct {
	r       *rand.Rand
	o       *owners
	ads     []string
	camps   []string
	advs    []string
	zipf    *rand.Zipf
	skewed  bool
	maxVal  int64
	negRate float64
}

func newGen(r *rand.Rand, nAds, nCamps, nAdvs int, skewed bool) *gen {
	g := &gen{r: r, o: &owners{adCampaign: map[string]string{}, campAdv: map[string]string{}}, skewed: skewed}
	for i := range nAdvs {
		g.advs = append(g.advs, "adv"+strconv.Itoa(i))
	}
	for i := range nCamps {
		c := "c" + strconv.Itoa(i)
		g.camps = append(g.camps, c)
		g.o.campAdv[c] = g.advs[r.IntN(nAdvs)]
	}
	for i := range nAds {
		a := "ad" + strconv.Itoa(i)
		g.ads = append(g.ads, a)
		// Some ads are unknown to the catalog (at first: see moveOrCreate).
		if r.IntN(20) > 0 {
			g.o.adCampaign[a] = g.camps[r.IntN(nCamps)]
		}
	}
	g.zipf = rand.NewZipf(r, 1.2, 1, uint64(nAds-1))
	g.maxVal = 3
	return g
}

func (g *gen) ad() string {
	if g.skewed {
		return g.ads[g.zipf.Uint64()]
	}
	return g.ads[g.r.IntN(len(g.ads))]
}

// event returns the deltas of one event at all three levels.
func (g *gen) event(minute int64) []metricstore.Delta {
	ad := g.ad()
	var c metricstore.Counts
	c.Impressions = g.r.Int64N(g.maxVal + 1)
	c.Clicks = g.r.Int64N(g.maxVal + 1)
	if g.r.IntN(3) == 0 {
		c.SpendMicros = g.r.Int64N(5) * 100
	}
	if g.negRate > 0 && g.r.Float64() < g.negRate {
		c.Clicks, c.SpendMicros = -c.Clicks, -c.SpendMicros
	}
	ds := []metricstore.Delta{{Level: metricstore.LevelAd, ID: ad, Minute: minute, Counts: c}}
	camp, ok := g.o.AdCampaign(ad)
	if !ok {
		camp = "c-unknown"
	}
	adv, ok := g.o.CampaignAdvertiser(camp)
	if !ok {
		adv = "adv-unknown"
	}
	ds = append(ds, metricstore.Delta{Level: metricstore.LevelCampaign, ID: camp, Minute: minute, Counts: c},
		metricstore.Delta{Level: metricstore.LevelAdvertiser, ID: adv, Minute: minute, Counts: c})
	return ds
}

// moveOrCreate moves an ad to another campaign of its advertiser, or creates a missing one.
func (g *gen) moveOrCreate() {
	ad := g.ads[g.r.IntN(len(g.ads))]
	g.o.mu.Lock()
	defer g.o.mu.Unlock()
	c, ok := g.o.adCampaign[ad]
	if !ok {
		g.o.adCampaign[ad] = g.camps[g.r.IntN(len(g.camps))]
		return
	}
	adv := g.o.campAdv[c]
	for _, c2 := range g.camps {
		if g.o.campAdv[c2] == adv && g.r.IntN(3) == 0 {
			g.o.adCampaign[ad] = c2
			return
		}
	}
}

func (g *gen) query(now, lo int64, retention int64) Query {
	q := Query{Level: levelOf(g.r.IntN(3)), Metric: Metric(g.r.IntN(numMetrics)), N: 1 + g.r.IntN(12)}
	if g.r.IntN(10) == 0 {
		q.N = 1 + g.r.IntN(MaxN)
	}
	hi := now + 3
	q.From = lo + g.r.Int64N(hi-lo)
	var span int64
	switch g.r.IntN(4) {
	case 0:
		span = 1 + g.r.Int64N(5)
	case 1:
		span = 1 + g.r.Int64N(90)
	case 2:
		span = 60 * (1 + g.r.Int64N(4))
	default:
		span = 1 + g.r.Int64N(retention)
	}
	q.To = min(q.From+span, q.From+retention)
	switch g.r.IntN(6) {
	case 0:
		q.Advertiser = g.advs[g.r.IntN(len(g.advs))]
	case 1:
		q.Campaign = g.camps[g.r.IntN(len(g.camps))]
	case 2:
		q.Advertiser = g.advs[g.r.IntN(len(g.advs))]
		q.Campaign = g.camps[g.r.IntN(len(g.camps))]
	case 3:
		if g.r.IntN(4) == 0 {
			q.Advertiser = "adv-nobody"
		}
	}
	return q
}

func checkTop(t *testing.T, ix *Index, m *model, o *owners, q Query, seed uint64, what string) {
	t.Helper()
	got, err := ix.Top(context.Background(), q)
	if err != nil {
		t.Fatalf("seed %d %s: Top(%+v): %v", seed, what, q, err)
	}
	want := m.top(q, o)
	if !slices.Equal(got, want) {
		t.Fatalf("seed %d %s: Top(%+v)\n got %v\nwant %v\nstats %+v", seed, what, q, got, want, ix.Stats())
	}
}

// TestModel checks Top against brute force over random traffic with late and negative
// updates, ties, compactions, eviction, ownership changes and every query path.
func TestModel(t *testing.T) {
	seed := testSeed(t)
	cases := []struct {
		name           string
		skewed         bool
		nAds           int
		limit          int
		brute, members int
		negRate        float64
		maxVal         int64
	}{
		{"skewed", true, 400, 8, -1, -1, 0, 3},
		{"uniform-ties", false, 300, 4, -1, -1, 0, 1},
		{"negative", true, 200, 8, -1, -1, 0.2, 3},
		{"default-plan", true, 500, 16, bruteEntries, memberDirect, 0, 5},
		{"small-brute", false, 250, 6, 50, 5, 0.01, 2},
	}
	for ci, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			seed := seed + uint64(ci)
			r := rand.New(rand.NewPCG(seed, 7))
			clk := &clock{t: time.Date(2026, 11, 21, 9, 30, 0, 0, time.UTC)}
			g := newGen(r, c.nAds, 30, 6, c.skewed)
			g.negRate, g.maxVal = c.negRate, c.maxVal
			const retention = 4 * 60
			ix := New(Options{Retention: retention * time.Minute, Slack: time.Hour, TopLimit: c.limit, Owners: g.o, Now: clk.Now})
			ix.bruteLimit, ix.memberLimit = c.brute, c.members
			ix.orderMinTies = 8 // byte-order ranks built (in the background) and merged as ids come
			defer ix.orderWG.Wait()
			m := newModel()
			queries := 0
			for step := range 400 {
				now := ix.nowMinute()
				lo := ix.evictBefore(now)
				var batch []metricstore.Delta
				for range 1 + r.IntN(30) {
					minute := now - r.Int64N(3)
					switch r.IntN(8) {
					case 0: // late, anywhere in the retained range
						minute = now - r.Int64N(retention)
					case 1: // slightly in the future (clock skew)
						minute = now + r.Int64N(3)
					}
					batch = append(batch, g.event(minute)...)
				}
				for i := range batch {
					if batch[i].Minute >= lo {
						m.add(&batch[i])
					}
				}
				ix.Add(batch)
				if r.IntN(4) == 0 {
					ix.Maintain()
				}
				if r.IntN(20) == 0 {
					g.moveOrCreate()
				}
				for range 3 {
					q := g.query(now, max(lo, ix.st.floor), retention)
					checkTop(t, ix, m, g.o, q, seed, fmt.Sprintf("step %d", step))
					queries++
				}
				clk.set(clk.Now().Add(time.Duration(r.IntN(150)) * time.Second))
			}
			// A rebuilt index answers the same.
			ix2 := New(Options{Retention: retention * time.Minute, Slack: time.Hour, TopLimit: c.limit, Owners: g.o, Now: clk.Now})
			ix2.bruteLimit, ix2.memberLimit = c.brute, c.members
			ix2.orderMinTies = 8
			defer ix2.orderWG.Wait()
			if err := ix2.Rebuild(context.Background(), m); err != nil {
				t.Fatal(err)
			}
			ix.Maintain()
			now := ix.nowMinute()
			lo := max(ix.evictBefore(now), ix.st.floor, ix2.st.floor)
			for range 200 {
				q := g.query(now, lo, retention)
				checkTop(t, ix2, m, g.o, q, seed, "rebuilt")
				checkTop(t, ix, m, g.o, q, seed, "final")
			}
			s := ix.Stats()
			t.Logf("%d queries; stats %+v", queries, s)
		})
	}
}

func TestTopErrors(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 21, 9, 30, 0, 0, time.UTC)}
	ix := New(Options{Now: clk.Now})
	now := ix.nowMinute()
	bad := []Query{
		{Level: 0, N: 1, From: now, To: now + 1},
		{Level: 1, Metric: numMetrics, N: 1, From: now, To: now + 1},
		{Level: 1, N: 0, From: now, To: now + 1},
		{Level: 1, N: MaxN + 1, From: now, To: now + 1},
		{Level: 1, N: 1, From: now, To: now},
		{Level: 1, N: 1, From: now - 3000, To: now},
	}
	for _, q := range bad {
		if _, err := ix.Top(context.Background(), q); !errors.Is(err, ErrInvalidQuery) {
			t.Errorf("Top(%+v) = %v, want ErrInvalidQuery", q, err)
		}
	}
	if _, err := ix.Top(context.Background(), Query{Level: 1, N: 1, From: now, To: now + 1, Advertiser: "a"}); !errors.Is(err, ErrNoOwners) {
		t.Errorf("filter without owners: %v", err)
	}
	// Eviction moves the floor: a window before it is refused.
	clk.set(clk.Now().Add(30 * time.Hour))
	ix.Maintain()
	if _, err := ix.Top(context.Background(), Query{Level: 1, N: 1, From: now, To: now + 1}); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("evicted window: %v", err)
	}
	// Deltas below the floor, far in the future, or invalid are dropped.
	ix.Add([]metricstore.Delta{
		{Level: 1, ID: "a", Minute: now, Counts: metricstore.Counts{Clicks: 1}},
		{Level: 1, ID: "a", Minute: now + 30*60 + futureMinutes, Counts: metricstore.Counts{Clicks: 1}},
		{Level: 9, ID: "a", Minute: now + 30*60, Counts: metricstore.Counts{Clicks: 1}},
		{Level: 1, ID: "", Minute: now + 30*60, Counts: metricstore.Counts{Clicks: 1}},
		{Level: 1, ID: "a", Minute: now + 30*60, Counts: metricstore.Counts{Clicks: 1}},
	})
	ix.Maintain()
	if s := ix.Stats(); s.DeltasDropped != 4 || s.DeltasApplied != 1 {
		t.Errorf("stats %+v, want 4 dropped, 1 applied", s)
	}
}

// TestConcurrent runs Add, Maintain and Top at once (for the race detector) and then checks
// the result.
func TestConcurrent(t *testing.T) {
	seed := testSeed(t)
	r := rand.New(rand.NewPCG(seed, 1))
	clk := &clock{t: time.Date(2026, 11, 21, 9, 30, 0, 0, time.UTC)}
	g := newGen(r, 300, 20, 4, true)
	ix := New(Options{TopLimit: 8, Owners: g.o, Now: clk.Now})
	ix.bruteLimit = -1
	now := ix.nowMinute()
	var batches [][]metricstore.Delta
	m := newModel()
	for range 200 {
		var b []metricstore.Delta
		for range 20 {
			b = append(b, g.event(now-r.Int64N(120))...)
		}
		for i := range b {
			m.add(&b[i])
		}
		batches = append(batches, b)
	}
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	wg.Add(3)
	go func() {
		defer wg.Done()
		for _, b := range batches {
			ix.Add(b)
		}
		cancel()
	}()
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			ix.Maintain()
		}
	}()
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			if _, err := ix.Top(context.Background(), Query{Level: 1, N: 10, From: now - 100, To: now + 1, Advertiser: g.advs[0]}); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	wg.Wait()
	for _, q := range []Query{
		{Level: 1, Metric: Clicks, N: 10, From: now - 119, To: now + 1},
		{Level: 2, Metric: Impressions, N: 5, From: now - 37, To: now - 3},
		{Level: 1, Metric: SpendMicros, N: 7, From: now - 61, To: now - 59, Campaign: g.camps[1]},
	} {
		checkTop(t, ix, m, g.o, q, seed, "after concurrent load")
	}
}

type failingScanner struct{ err error }

func (f failingScanner) ScanMinutes(ctx context.Context, from, to int64, fn func(d *metricstore.Delta) error) error {
	d := metricstore.Delta{Level: metricstore.LevelAd, ID: "x", Minute: to - 1}
	d.Clicks = 1
	if err := fn(&d); err != nil {
		return err
	}
	return f.err
}

// TestRebuildAndRun: a failed scan leaves the index as it was; a good one replaces its
// contents, discards queued deltas and sets the floor; Run maintains until cancelled.
func TestRebuildAndRun(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 21, 9, 30, 0, 0, time.UTC)}
	ix := New(Options{Now: clk.Now, MaintainInterval: time.Millisecond})
	now := ix.nowMinute()
	ix.Add([]metricstore.Delta{{Level: metricstore.LevelAd, ID: "old", Minute: now, Counts: metricstore.Counts{Clicks: 5}}})
	boom := errors.New("boom")
	if err := ix.Rebuild(context.Background(), failingScanner{boom}); !errors.Is(err, boom) {
		t.Fatalf("Rebuild: %v", err)
	}
	q := Query{Level: metricstore.LevelAd, Metric: Clicks, N: 5, From: now, To: now + 1}
	if got, _ := ix.Top(context.Background(), q); !slices.Equal(got, []Item{{"old", 5}}) {
		t.Fatalf("after a failed rebuild: %v", got)
	}
	m := newModel()
	for _, d := range []metricstore.Delta{
		{Level: metricstore.LevelAd, ID: "a", Minute: now, Counts: metricstore.Counts{Clicks: 2}},
		{Level: metricstore.LevelAd, ID: "b", Minute: now - 1400, Counts: metricstore.Counts{Clicks: 3}},
		{Level: metricstore.LevelAd, ID: "gone", Minute: now - 2000, Counts: metricstore.Counts{Clicks: 9}},
	} {
		m.add(&d)
	}
	ix.Add([]metricstore.Delta{{Level: metricstore.LevelAd, ID: "queued", Minute: now, Counts: metricstore.Counts{Clicks: 1}}})
	if err := ix.Rebuild(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	q.From = now - 1439
	if got, _ := ix.Top(context.Background(), q); !slices.Equal(got, []Item{{"b", 3}, {"a", 2}}) {
		t.Fatalf("after rebuild: %v", got)
	}
	if s := ix.Stats(); s.Floor.Unix()/60 != ix.evictBefore(now) || s.RebuildDeltas != 2 {
		t.Fatalf("stats %+v", s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- ix.Run(ctx) }()
	ix.Add([]metricstore.Delta{{Level: metricstore.LevelAd, ID: "c", Minute: now, Counts: metricstore.Counts{Clicks: 7}}})
	for ix.Stats().Pending > 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got, _ := ix.Top(context.Background(), q); !slices.Equal(got, []Item{{"c", 7}, {"b", 3}, {"a", 2}}) {
		t.Fatalf("after Run: %v", got)
	}
}
