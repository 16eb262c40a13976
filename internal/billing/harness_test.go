package billing

import (
	"context"
	"errors"
	"hash/fnv"
	"math/rand/v2"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/billing/ledger"
	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/metricstore/pebblestore"
	"github.com/cockroachdb/pebble/vfs"
)

// fakeClock is an injectable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock(t time.Time) *fakeClock { return &fakeClock{t: t} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// fakeCatalog is a mutable in-memory Catalog that resolves ad bids through the campaign at
// lookup time, like the real one.
type fakeCatalog struct {
	mu    sync.RWMutex
	ads   map[string]fakeAd
	camps map[string]catalog.CampaignInfo
	advs  map[string]catalog.AdvertiserInfo
}

type fakeAd struct {
	campaign, catalogID string
	bid                 int64 // 0: the campaign's
}

func newFakeCatalog() *fakeCatalog {
	return &fakeCatalog{ads: map[string]fakeAd{}, camps: map[string]catalog.CampaignInfo{}, advs: map[string]catalog.AdvertiserInfo{}}
}

func (f *fakeCatalog) Ad(id string) (catalog.AdInfo, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	a, ok := f.ads[id]
	if !ok {
		return catalog.AdInfo{}, false
	}
	c := f.camps[a.campaign]
	bid := c.CPCBidMicros
	if a.bid != 0 {
		bid = a.bid
	}
	return catalog.AdInfo{AdID: id, CampaignID: a.campaign, AdvertiserID: c.AdvertiserID, CatalogID: a.catalogID, CPCBidMicros: bid}, true
}

func (f *fakeCatalog) Campaign(id string) (catalog.CampaignInfo, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	c, ok := f.camps[id]
	return c, ok
}

func (f *fakeCatalog) Advertiser(id string) (catalog.AdvertiserInfo, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	a, ok := f.advs[id]
	return a, ok
}

func (f *fakeCatalog) CampaignIDs() []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	ids := make([]string, 0, len(f.camps))
	for id := range f.camps {
		ids = append(ids, id)
	}
	return ids
}

func (f *fakeCatalog) advertiser(t testing.TB, id, tz string) {
	loc, err := time.LoadLocation(tz)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.advs[id] = catalog.AdvertiserInfo{AdvertiserID: id, Timezone: tz, Location: loc}
}

func (f *fakeCatalog) campaign(c catalog.CampaignInfo) {
	if c.Status == "" {
		c.Status = catalog.StatusActive
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.camps[c.CampaignID] = c
}

func (f *fakeCatalog) update(id string, fn func(c *catalog.CampaignInfo)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.camps[id]
	fn(&c)
	f.camps[id] = c
}

func (f *fakeCatalog) ad(id, campaign string, bid int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ads[id] = fakeAd{campaign: campaign, bid: bid}
}

// memLog is an in-memory eventlog.Log for the simulations that append thousands of times
// (locallog's fsyncs would dominate them); the concurrency test uses locallog.
type memLog struct {
	mu    sync.Mutex
	parts [][]eventlog.Message
	now   func() time.Time
}

var _ eventlog.Log = (*memLog)(nil)

func newMemLog(partitions int, now func() time.Time) *memLog {
	return &memLog{parts: make([][]eventlog.Message, partitions), now: now}
}

func (l *memLog) Partitions() int { return len(l.parts) }

func (l *memLog) Append(_ context.Context, msgs []eventlog.Message) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range msgs {
		m := &msgs[i]
		if m.Partition < 0 || int(m.Partition) >= len(l.parts) {
			return eventlog.ErrBadPartition
		}
		m.Offset = int64(len(l.parts[m.Partition]))
		m.Time = l.now().Truncate(time.Millisecond)
		l.parts[m.Partition] = append(l.parts[m.Partition], eventlog.Message{Partition: m.Partition, Offset: m.Offset, Time: m.Time, Value: append([]byte(nil), m.Value...)})
	}
	return nil
}

func (l *memLog) Read(_ context.Context, p int, offset int64, maxBytes int) ([]eventlog.Message, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if p < 0 || p >= len(l.parts) {
		return nil, eventlog.ErrBadPartition
	}
	var out []eventlog.Message
	n := 0
	for o := offset; o < int64(len(l.parts[p])); o++ {
		m := l.parts[p][o]
		if len(out) > 0 && n+len(m.Value) > maxBytes {
			break
		}
		n += len(m.Value)
		out = append(out, m)
	}
	return out, nil
}

func (l *memLog) Offsets(_ context.Context, p int) (int64, int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if p < 0 || p >= len(l.parts) {
		return 0, 0, eventlog.ErrBadPartition
	}
	return 0, int64(len(l.parts[p])), nil
}

func (l *memLog) OffsetForTime(_ context.Context, p int, t time.Time) (int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	i := sort.Search(len(l.parts[p]), func(i int) bool { return !l.parts[p][i].Time.Before(t) })
	return int64(i), nil
}

func (l *memLog) Close() error { return nil }

func partitionOf(adID string, n int) int32 {
	h := fnv.New32a()
	h.Write([]byte(adID))
	return int32(h.Sum32() % uint32(n))
}

// appendEvents encodes and appends events, partitioned by ad id.
func appendEvents(t testing.TB, l eventlog.Log, evs ...event.Event) {
	t.Helper()
	msgs := make([]eventlog.Message, len(evs))
	for i := range evs {
		msgs[i] = eventlog.Message{Partition: partitionOf(evs[i].AdID, l.Partitions()), Value: evs[i].AppendBinary(nil)}
	}
	if err := l.Append(context.Background(), msgs); err != nil {
		t.Fatalf("append: %v", err)
	}
}

// faultyStore wraps a metric store and fails Apply on demand: before it reaches the store, or
// after the store committed (the caller then hears an error for a commit that went in).
type faultyStore struct {
	metricstore.Store
	mu         sync.Mutex
	rng        *rand.Rand
	failBefore float64
	failAfter  float64
}

var errInjected = errors.New("injected failure")

func (f *faultyStore) Apply(ctx context.Context, c *metricstore.Commit) error {
	f.mu.Lock()
	before, after := f.rng != nil && f.rng.Float64() < f.failBefore, f.rng != nil && f.rng.Float64() < f.failAfter
	f.mu.Unlock()
	if before {
		return errInjected
	}
	if err := f.Store.Apply(ctx, c); err != nil {
		return err
	}
	if after {
		return errInjected
	}
	return nil
}

// harness is a charger with its metric store on a strict in-memory file system, so that a
// crash (dropping everything not synced) can be simulated.
type harness struct {
	t      testing.TB
	fs     *vfs.MemFS
	log    eventlog.Log
	cat    *fakeCatalog
	clock  *fakeClock
	store  *pebblestore.Store
	ledger *ledger.Pebble
	ms     *faultyStore
	c      *Charger
	opts   Options // template for Open
}

func newHarness(t testing.TB, log eventlog.Log, cat *fakeCatalog, clock *fakeClock) *harness {
	h := &harness{t: t, fs: vfs.NewStrictMem(), log: log, cat: cat, clock: clock, ms: &faultyStore{}}
	h.opts = Options{Log: log, Catalog: cat, Now: clock.Now, PollInterval: time.Millisecond}
	h.open()
	t.Cleanup(func() {
		h.c.Close()
		h.ledger.Close()
		h.store.Close()
	})
	return h
}

func (h *harness) open() {
	h.t.Helper()
	var err error
	h.store, err = pebblestore.Open("metrics", pebblestore.Options{FS: h.fs, Now: h.clock.Now})
	if err != nil {
		h.t.Fatalf("open metric store: %v", err)
	}
	h.ms.Store = h.store
	h.ledger, err = ledger.OpenPebble("billing", ledger.PebbleOptions{FS: h.fs})
	if err != nil {
		h.t.Fatalf("open billing ledger: %v", err)
	}
	o := h.opts
	o.Metrics = h.ms
	o.Ledger = h.ledger
	h.c, err = Open(context.Background(), o)
	if err != nil {
		h.t.Fatalf("open billing: %v", err)
	}
}

// crash drops whatever the charger and the metric store did not sync, and reopens both.
func (h *harness) crash() {
	h.t.Helper()
	h.fs.SetIgnoreSyncs(true)
	h.c.Close()
	h.ledger.Close()
	h.store.Close()
	h.fs.ResetToSyncedState()
	h.fs.SetIgnoreSyncs(false)
	h.open()
}

// restart closes cleanly and reopens.
func (h *harness) restart() {
	h.t.Helper()
	if err := h.c.Close(); err != nil {
		h.t.Fatal(err)
	}
	if err := h.ledger.Close(); err != nil {
		h.t.Fatal(err)
	}
	if err := h.store.Close(); err != nil {
		h.t.Fatal(err)
	}
	h.open()
}

// sync consumes everything in the log and publishes the journal, without Run.
func (h *harness) sync() {
	h.t.Helper()
	ctx := context.Background()
	for {
		n, err := h.c.w.round(ctx)
		if err != nil {
			h.t.Fatalf("round: %v", err)
		}
		if n == 0 {
			break
		}
	}
	if err := h.c.publish(ctx); err != nil {
		h.t.Fatalf("publish: %v", err)
	}
}

// refund refunds the click named id (its impression id or event_id), without Run.
func (h *harness) refund(id string) (Refund, error) {
	r, err := h.c.refund(context.Background(), id)
	if err != nil && !errors.Is(err, ErrNotFound) {
		h.t.Fatalf("refund: %v", err)
	}
	return r, err
}

func (h *harness) status(id string) CampaignStatus {
	h.t.Helper()
	info, ok := h.cat.Campaign(id)
	if !ok {
		h.t.Fatalf("no campaign %s", id)
	}
	st, err := h.c.Status(campaignOf(info))
	if err != nil {
		h.t.Fatal(err)
	}
	return st
}

// click builds a valid click on ad at t, resolving ids through the catalog as ingest does.
func (h *harness) click(imp, adID string, t time.Time, price int64) event.Event {
	h.t.Helper()
	ad, ok := h.cat.Ad(adID)
	if !ok {
		h.t.Fatalf("no ad %s", adID)
	}
	return event.Event{Type: event.TypeClick, Time: t.UnixMicro(), RecvTime: t.UnixMicro(), PriceMicros: price,
		AdID: adID, CampaignID: ad.CampaignID, AdvertiserID: ad.AdvertiserID, ImpressionID: imp}
}

// ledgerSums totals the ledger: per campaign and per (campaign, day), charged entries only.
type ledgerSums struct {
	total   map[string]int64
	days    map[spendKey]int64
	entries map[string]ledgerEntry
}

func (h *harness) ledgerSums() ledgerSums {
	h.t.Helper()
	s, err := sumLedger(h.c.store)
	if err != nil {
		h.t.Fatal(err)
	}
	return s
}

// sumLedger totals a ledger's entries.
func sumLedger(st ledger.Store) (ledgerSums, error) {
	s := ledgerSums{total: map[string]int64{}, days: map[spendKey]int64{}, entries: map[string]ledgerEntry{}}
	err := st.ScanLedger(context.Background(), func(e ledger.Entry) error {
		s.entries[e.Key] = e
		if e.State == stateCharged {
			s.total[e.CampaignID] += e.ChargedMicros
			s.days[spendKey{Campaign: e.CampaignID, DayStart: e.DayStart}] += e.ChargedMicros
		}
		return nil
	})
	return s, err
}

// metricSpend sums spend_micros of ids at level over every day the tests use.
func (h *harness) metricSpend(level metricstore.Level, ids ...string) map[string]int64 {
	h.t.Helper()
	res, err := h.store.Query(context.Background(), metricstore.Query{
		Level: level, IDs: ids, Interval: 24 * time.Hour,
		Start: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), End: time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC),
	})
	if err != nil {
		h.t.Fatalf("query metric store: %v", err)
	}
	out := map[string]int64{}
	for _, s := range res.Series {
		for _, p := range s.Points {
			out[s.ID] += p.SpendMicros
		}
	}
	return out
}

// checkMoney checks the money invariants: the ledger, the stored spend (per day and total)
// and the metric store's spend at every level agree exactly, and no budget is exceeded.
func (h *harness) checkMoney() ledgerSums {
	h.t.Helper()
	led := h.ledgerSums()
	byAd, byAdv := map[string]int64{}, map[string]int64{}
	var camps, ads, advs []string
	seen := map[string]bool{}
	for _, e := range led.entries {
		if e.State == stateCharged {
			byAd[e.AdID] += e.ChargedMicros
			byAdv[e.AdvertiserID] += e.ChargedMicros
		}
		for _, x := range []struct {
			l  *[]string
			id string
		}{{&camps, "c/" + e.CampaignID}, {&ads, "a/" + e.AdID}, {&advs, "v/" + e.AdvertiserID}} {
			if !seen[x.id] {
				seen[x.id] = true
				*x.l = append(*x.l, x.id[2:])
			}
		}
	}
	checkStoredSpend(h.t, h.c.store, h.cat, led)
	if len(camps) == 0 {
		return led
	}
	for _, lv := range []struct {
		level metricstore.Level
		ids   []string
		want  map[string]int64
	}{{metricstore.LevelCampaign, camps, led.total}, {metricstore.LevelAd, ads, byAd}, {metricstore.LevelAdvertiser, advs, byAdv}} {
		got := h.metricSpend(lv.level, lv.ids...)
		for _, id := range lv.ids {
			if got[id] != lv.want[id] {
				h.t.Errorf("%s %s: metric store spend %d, ledger %d", lv.level, id, got[id], lv.want[id])
			}
		}
	}
	return led
}

// checkStoredSpend checks that a ledger's stored spend (per day and total) equals the sums of
// its charged entries and exceeds no budget.
func checkStoredSpend(t testing.TB, st ledger.Store, cat Catalog, led ledgerSums) {
	t.Helper()
	stored := map[spendKey]bool{}
	totals := map[string]bool{}
	err := st.ScanSpend(context.Background(), func(k spendKey, v int64) error {
		stored[k] = true
		if v != led.days[k] {
			t.Errorf("campaign %s day from %s: stored spend %d, ledger sum %d", k.Campaign, dayStartString(k.DayStart), v, led.days[k])
		}
		if info, ok := cat.Campaign(k.Campaign); ok && info.DailyBudgetMicros > 0 && v > info.DailyBudgetMicros {
			t.Errorf("campaign %s day from %s: spend %d exceeds daily budget %d", k.Campaign, dayStartString(k.DayStart), v, info.DailyBudgetMicros)
		}
		return nil
	}, func(id string, total int64) error {
		totals[id] = true
		if total != led.total[id] {
			t.Errorf("campaign %s: stored total spend %d, ledger sum %d", id, total, led.total[id])
		}
		if info, ok := cat.Campaign(id); ok && info.TotalBudgetMicros > 0 && total > info.TotalBudgetMicros {
			t.Errorf("campaign %s: total spend %d exceeds total budget %d", id, total, info.TotalBudgetMicros)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range led.days {
		if v != 0 && !stored[k] {
			t.Errorf("campaign %s day from %s: ledger sum %d but no stored day spend", k.Campaign, dayStartString(k.DayStart), v)
		}
	}
	for id, v := range led.total {
		if v != 0 && !totals[id] {
			t.Errorf("campaign %s: ledger sum %d but no stored total", id, v)
		}
	}
}
