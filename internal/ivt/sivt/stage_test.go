package sivt

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/aggregate"
	"github.com/adpulse/adpulse/internal/billing"
	"github.com/adpulse/adpulse/internal/billing/ledger"
	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/eventlog/eventlogtest"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/metricstore/pebblestore"
	"github.com/cespare/xxhash/v2"
	"github.com/cockroachdb/pebble/vfs"
)

const bid = 100_000

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.t) {
		c.t = t
	}
}

// testCatalog knows every ad "ad-N" of campaign "camp-(N%5)" of advertiser "adv-(N%2)"
// (ivtgen's default ads), all active with a large budget.
type testCatalog struct{}

func (testCatalog) Ad(id string) (catalog.AdInfo, bool) {
	var n int
	if _, err := fmt.Sscanf(id, "ad-%d", &n); err != nil {
		return catalog.AdInfo{}, false
	}
	return catalog.AdInfo{AdID: id, CampaignID: fmt.Sprintf("camp-%d", n%5), AdvertiserID: fmt.Sprintf("adv-%d", n%2), CPCBidMicros: bid}, true
}

func (testCatalog) Campaign(id string) (catalog.CampaignInfo, bool) {
	var n int
	if _, err := fmt.Sscanf(id, "camp-%d", &n); err != nil {
		return catalog.CampaignInfo{}, false
	}
	return catalog.CampaignInfo{CampaignID: id, AdvertiserID: fmt.Sprintf("adv-%d", n%2), Status: catalog.StatusActive,
		CPCBidMicros: bid, DailyBudgetMicros: 1e15}, true
}

func (testCatalog) Advertiser(id string) (catalog.AdvertiserInfo, bool) {
	return catalog.AdvertiserInfo{AdvertiserID: id, Timezone: "UTC", Location: time.UTC}, true
}

// pipeline is the log, the metric store, aggregation, billing and the stage, on one clock.
type pipeline struct {
	t       *testing.T
	clk     *clock
	log     *eventlogtest.MemLog
	fs      vfs.FS
	metrics *pebblestore.Store
	charger *billing.Charger
	stage   *Stage
	agg     *aggregate.Aggregator
	cancel  context.CancelFunc
	done    chan struct{}
	rules   Rules

	// A second stage, run and restarted on its own (replay_test.go).
	stageCancel context.CancelFunc
	stageDone   chan struct{}
	first       *Stage
	ledgers     []*ledger.Pebble
}

// firstStage is the stage start opened, whatever runStage opened since.
func (p *pipeline) firstStage() *Stage { return p.first }

func newPipeline(t *testing.T, start time.Time, rules Rules) *pipeline {
	p := &pipeline{t: t, clk: &clock{t: start}, fs: vfs.NewMem(), rules: rules}
	p.log = eventlogtest.NewMemLog(4, p.clk.Now)
	var err error
	if p.metrics, err = pebblestore.Open("metrics", pebblestore.Options{FS: p.fs, Now: p.clk.Now}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.stop(); p.closeLedgers(); p.metrics.Close() })
	p.start()
	return p
}

// start opens and runs billing, aggregation and the stage.
func (p *pipeline) start() {
	t := p.t
	ctx, cancel := context.WithCancel(context.Background())
	var err error
	if p.charger, err = openCharger(ctx, p); err != nil {
		t.Fatal(err)
	}
	if p.agg, err = aggregate.New(aggregate.Options{Log: p.log, Store: p.metrics, Now: p.clk.Now, CommitInterval: 5 * time.Millisecond,
		PollInterval: 2 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if p.stage, err = Open(ctx, Options{Dir: "ivt", FS: p.fs, Log: p.log, Metrics: p.metrics, Refunder: BillingRefunder(p.charger),
		Rules: p.rules, Now: p.clk.Now, PollInterval: 2 * time.Millisecond, RefundInterval: 5 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	p.first = p.stage
	p.cancel, p.done = cancel, make(chan struct{})
	var wg sync.WaitGroup
	for _, run := range []func(context.Context) error{p.charger.Run, p.agg.Run, p.stage.Run} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(ctx); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, billing.ErrClosed) {
				t.Errorf("run: %v", err)
			}
		}()
	}
	go func() { wg.Wait(); close(p.done) }()
}

func (p *pipeline) stop() {
	if p.cancel == nil {
		return
	}
	p.cancel()
	<-p.done
	p.cancel = nil
	p.first.Close()
	p.charger.Close()
	p.closeLedgers()
	p.agg.Close()
}

// send appends events at their receive times (the clock follows them).
func (p *pipeline) send(evs ...event.Event) {
	for i := range evs {
		e := &evs[i]
		p.clk.Set(time.UnixMicro(e.RecvTime))
		part := int32(xxhash.Sum64String(e.AdID) % 4)
		if err := p.log.Append(context.Background(), []eventlog.Message{{Partition: part, Value: e.AppendBinary(nil)}}); err != nil {
			p.t.Fatal(err)
		}
	}
}

// settle moves the clock past the holdback and waits until every stage has consumed the log
// and every credit is settled.
func (p *pipeline) settle() {
	p.t.Helper()
	p.clk.Set(p.clk.Now().Add(2 * time.Second))
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		st, bs := p.stage.Stats(), p.charger.Stats()
		lagB := int64(0)
		for _, ps := range bs.Partitions {
			lagB += ps.Lag
		}
		if st.Lag == 0 && st.EventsConsumed > 0 && lagB == 0 && st.CreditsPending == 0 && st.JournalApplied == st.JournalNext {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	p.t.Fatalf("the pipeline did not settle: %+v", p.stage.Stats())
}

func clickEv(at time.Time, ad, imp, user, ip, device string) event.Event {
	n := 0
	fmt.Sscanf(ad, "ad-%d", &n)
	return event.Event{Type: event.TypeClick, AdID: ad, CampaignID: fmt.Sprintf("camp-%d", n%5), AdvertiserID: fmt.Sprintf("adv-%d", n%2),
		ImpressionID: imp, UserID: user, SourceIP: ip, DeviceID: device, Time: at.UnixMicro(), RecvTime: at.UnixMicro()}
}

func impEv(at time.Time, ad, imp, user, ip, device string) event.Event {
	e := clickEv(at, ad, imp, user, ip, device)
	e.Type = event.TypeImpression
	return e
}

func (p *pipeline) counts(level metricstore.Level, id string, from time.Time) metricstore.Counts {
	p.t.Helper()
	res, err := p.metrics.Query(context.Background(), metricstore.Query{Level: level, IDs: []string{id}, Start: from.Truncate(24 * time.Hour),
		End: from.Truncate(24 * time.Hour).Add(24 * time.Hour), Interval: 24 * time.Hour})
	if err != nil {
		p.t.Fatal(err)
	}
	var c metricstore.Counts
	for _, pt := range res.Series[0].Points {
		c.Add(&pt.Counts)
	}
	return c
}

// eventually polls cond for up to 20 seconds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// openCharger opens billing on its Pebble ledger in the pipeline's file system; the ledger is
// closed when the test ends, after the charger.
func openCharger(ctx context.Context, p *pipeline) (*billing.Charger, error) {
	lg, err := ledger.OpenPebble("billing", ledger.PebbleOptions{FS: p.fs})
	if err != nil {
		return nil, err
	}
	c, err := billing.Open(ctx, billing.Options{Ledger: lg, Log: p.log, Catalog: testCatalog{}, Metrics: p.metrics,
		Now: p.clk.Now, PollInterval: 2 * time.Millisecond})
	if err != nil {
		lg.Close()
		return nil, err
	}
	p.ledgers = append(p.ledgers, lg)
	return c, nil
}

// closeLedgers closes the ledgers whose chargers are closed.
func (p *pipeline) closeLedgers() {
	for _, lg := range p.ledgers {
		lg.Close()
	}
	p.ledgers = nil
}

func sortByTime(evs []event.Event) {
	slices.SortStableFunc(evs, func(a, b event.Event) int { return cmp.Compare(a.RecvTime, b.RecvTime) })
}

// sendAt appends an event at append time at (the clock moves there).
func (p *pipeline) sendAt(at time.Time, e event.Event) {
	p.clk.Set(at)
	part := int32(xxhash.Sum64String(e.AdID) % 4)
	if err := p.log.Append(context.Background(), []eventlog.Message{{Partition: part, Value: e.AppendBinary(nil)}}); err != nil {
		p.t.Fatal(err)
	}
}
