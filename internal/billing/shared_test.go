package billing

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/billing/ledger"
	"github.com/adpulse/adpulse/internal/billing/ledger/ledgertest"
	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog/eventlogtest"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/metricstore/pebblestore"
	"github.com/adpulse/adpulse/internal/testseed"
	"github.com/cockroachdb/pebble/vfs"
)

// TestSharedLedger runs three process nodes on one SQL ledger over one log, as a consumer
// group would: partitions split between them and moved mid-run (Revoke on one node, Assign on
// another, sometimes without the Revoke: a zombie), duplicate clicks and impressions in the
// log, refunds through random nodes, small daily and total budgets on shared campaigns.
// Afterwards every budget that ran out is spent exactly, every click key has one ledger
// entry, spend equals the ledger, the metric store's spend equals the ledger, and the view
// counts are exact.
func TestSharedLedger(t *testing.T) {
	t.Run("pebble", func(t *testing.T) {
		// One process's chargers sharing one embedded ledger: the same protocol, without
		// a database server.
		st, err := ledger.OpenPebble(filepath.Join(t.TempDir(), "billing"), ledger.PebbleOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		testSharedLedger(t, func() ledger.Store { return st })
	})
	for _, b := range ledgertest.SQLBackends {
		t.Run(b.Name, func(t *testing.T) {
			db, prefix := b.OpenDB(t)
			testSharedLedger(t, func() ledger.Store {
				st, err := ledger.OpenSQL(context.Background(), db, b.Dialect, ledger.SQLOptions{Prefix: prefix})
				if err != nil {
					t.Fatal(err)
				}
				return st
			})
		})
	}
}

const sharedNodes, sharedPartitions = 3, 8

type sharedNode struct {
	c      *Charger
	cancel context.CancelFunc
	done   chan error
}

func testSharedLedger(t *testing.T, openLedger func() ledger.Store) {
	seed := testseed.Seed(t)
	rng := rand.New(rand.NewPCG(seed, 1))
	ctx := context.Background()
	clock := newClock(t0)
	cat := newFakeCatalog()
	cat.advertiser(t, "adv1", "UTC")
	budgets := []catalog.CampaignInfo{
		{CampaignID: "daily", AdvertiserID: "adv1", CPCBidMicros: 300_000, DailyBudgetMicros: 2_000_000},
		{CampaignID: "total", AdvertiserID: "adv1", CPCBidMicros: 700_000, TotalBudgetMicros: 3_100_000},
		{CampaignID: "both", AdvertiserID: "adv1", CPCBidMicros: 450_000, DailyBudgetMicros: 1_500_001, TotalBudgetMicros: 2_600_000},
		{CampaignID: "open", AdvertiserID: "adv1", CPCBidMicros: 100_000},
	}
	var ads []string
	for _, c := range budgets {
		cat.campaign(c)
		for i := range 4 { // several ads, so each campaign's clicks span partitions
			id := fmt.Sprintf("%s-ad%d", c.CampaignID, i)
			cat.ad(id, c.CampaignID, 0)
			ads = append(ads, id)
		}
	}
	log := eventlogtest.NewMemLog(sharedPartitions, clock.Now)
	metrics, err := pebblestore.Open("metrics", pebblestore.Options{FS: vfs.NewMem(), Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer metrics.Close()

	// The OnViews seam: the highest committed total each key was reported with, by any node.
	var viewsMu sync.Mutex
	reported := map[string]int64{}
	onViews := func(vs []ViewCount) {
		viewsMu.Lock()
		defer viewsMu.Unlock()
		for _, v := range vs {
			k := v.UserID + "/" + v.CatalogID
			reported[k] = max(reported[k], v.Count)
		}
	}
	nodes := make([]*sharedNode, sharedNodes)
	owner := make([]int, sharedPartitions) // who the group thinks owns each partition
	start := func(i int) {
		c, err := Open(ctx, Options{Ledger: openLedger(), Group: true, Node: fmt.Sprintf("n%d", i), Log: log, Catalog: cat,
			Metrics: metrics, Now: clock.Now, PollInterval: time.Millisecond, FeedInterval: time.Hour, OnViews: onViews})
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		n := &sharedNode{c: c, cancel: cancel, done: make(chan error, 1)}
		go func() { n.done <- c.Run(rctx) }()
		nodes[i] = n
	}
	started := sharedNodes - 1 // the last node joins mid-run
	for i := range started {
		start(i)
	}
	defer func() {
		for _, n := range nodes {
			if n != nil {
				n.cancel()
				n.c.Close()
			}
		}
	}()
	for p := range sharedPartitions {
		owner[p] = p % started
		if err := nodes[owner[p]].c.Assign(ctx, []int32{int32(p)}); err != nil {
			t.Fatal(err)
		}
	}

	var clicks []event.Event // every click appended, duplicates included
	views := map[string]int64{}
	seenImp := map[string]bool{}
	when := func() time.Time { return t0.Add(time.Duration(rng.IntN(3600)) * time.Second) }
	newClick := func(i int) event.Event {
		if len(clicks) > 0 && rng.IntN(8) == 0 {
			return clicks[rng.IntN(len(clicks))] // the same click again
		}
		ad := ads[rng.IntN(len(ads))]
		info, _ := cat.Ad(ad)
		at := when()
		return event.Event{Type: event.TypeClick, Time: at.UnixMicro(), RecvTime: at.UnixMicro(), AdID: ad, CampaignID: info.CampaignID,
			AdvertiserID: info.AdvertiserID, ImpressionID: fmt.Sprintf("i%d-%d", i, rng.IntN(1<<30))}
	}
	newImpression := func(i int) event.Event {
		ad := ads[rng.IntN(len(ads))]
		info, _ := cat.Ad(ad)
		at := when()
		ev := event.Event{Type: event.TypeImpression, Time: at.UnixMicro(), RecvTime: at.UnixMicro(), AdID: ad, CampaignID: info.CampaignID,
			AdvertiserID: info.AdvertiserID, ImpressionID: fmt.Sprintf("v%d", i), UserID: fmt.Sprintf("u%d", rng.IntN(3)), CatalogID: fmt.Sprintf("k%d", rng.IntN(2))}
		if !seenImp[ev.ImpressionID] {
			seenImp[ev.ImpressionID] = true
			views[ev.UserID+"/"+ev.CatalogID]++
		}
		return ev
	}
	refunded := 0
	for phase := range 8 {
		var batch []event.Event
		for i := range 25 + rng.IntN(25) {
			id := phase*1000 + i
			if rng.IntN(4) == 0 {
				ev := newImpression(id)
				batch = append(batch, ev)
				if rng.IntN(5) == 0 {
					batch = append(batch, ev) // a retried impression
				}
				continue
			}
			ev := newClick(id)
			clicks = append(clicks, ev)
			batch = append(batch, ev)
		}
		appendEvents(t, log, batch...)
		// Refunds through random nodes, of clicks that may or may not be charged yet.
		for range rng.IntN(4) {
			ev := clicks[rng.IntN(len(clicks))]
			r, err := nodes[rng.IntN(started)].c.Refund(ctx, ev.ImpressionID)
			switch {
			case errors.Is(err, ErrNotFound):
			case err != nil:
				t.Fatalf("phase %d: refund %s: %v", phase, ev.ImpressionID, err)
			case !r.AlreadyRefunded:
				refunded++
			}
		}
		switch phase {
		case 2: // a node joins while the others charge and publish
			start(started)
			started++
		case 5: // a node restarts: its partitions are assigned again after its Open
			i := rng.IntN(started)
			nodes[i].cancel()
			if err := <-nodes[i].done; err != nil {
				t.Fatalf("node %d: Run: %v", i, err)
			}
			nodes[i].c.Close()
			start(i)
			for p := range sharedPartitions {
				if owner[p] == i {
					if err := nodes[i].c.Assign(ctx, []int32{int32(p)}); err != nil {
						t.Fatal(err)
					}
				}
			}
			t.Logf("phase %d: node %d restarted", phase, i)
		}
		// A takeover: the partition moves to another node, with or without the Revoke.
		p := rng.IntN(sharedPartitions)
		from, to := owner[p], (owner[p]+1+rng.IntN(started-1))%started
		zombie := rng.IntN(3) == 0
		if !zombie {
			nodes[from].c.Revoke([]int32{int32(p)})
		}
		if err := nodes[to].c.Assign(ctx, []int32{int32(p)}); err != nil {
			t.Fatalf("phase %d: assign %d to node %d: %v", phase, p, to, err)
		}
		owner[p] = to
		t.Logf("phase %d: partition %d moved from node %d to node %d (zombie %v)", phase, p, from, to, zombie)
		time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
	}
	// The last phase runs every budget out, with no refund after it.
	var flood []event.Event
	for i := range 60 {
		for _, c := range budgets[:3] {
			ad := fmt.Sprintf("%s-ad%d", c.CampaignID, i%4)
			at := t0.Add(time.Duration(i) * time.Second)
			ev := event.Event{Type: event.TypeClick, Time: at.UnixMicro(), RecvTime: at.UnixMicro(), AdID: ad, CampaignID: c.CampaignID,
				AdvertiserID: "adv1", ImpressionID: fmt.Sprintf("flood-%s-%d", c.CampaignID, i)}
			clicks = append(clicks, ev)
			flood = append(flood, ev)
		}
	}
	appendEvents(t, log, flood...)
	waitShared(t, nodes, log, metrics)

	// A zombie cannot commit: a node that still believes it owns a partition the group gave
	// to another node is fenced, drops it and charges nothing from it.
	p := int32(rng.IntN(sharedPartitions))
	zombie := nodes[(owner[p]+1)%sharedNodes].c
	zombie.Revoke([]int32{p}) // (a no-op) then a stale claim, as a node that missed its revocation has
	zst := openLedger()
	zc, err := Open(ctx, Options{Ledger: zst, Group: true, Node: "zombie", Log: log, Catalog: cat, Metrics: metrics, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer zc.Close()
	if err := zc.Assign(ctx, []int32{p}); err != nil {
		t.Fatal(err)
	}
	if err := nodes[owner[p]].c.Assign(ctx, []int32{p}); err != nil { // the real owner claims again
		t.Fatal(err)
	}
	late := event.Event{Type: event.TypeClick, Time: t0.UnixMicro(), RecvTime: t0.UnixMicro(), CampaignID: "open", AdvertiserID: "adv1", ImpressionID: "late"}
	for _, ad := range ads {
		if partitionOf(ad, sharedPartitions) == p {
			late.AdID = ad
			info, _ := cat.Ad(ad)
			late.CampaignID = info.CampaignID
			break
		}
	}
	if late.AdID == "" {
		t.Fatalf("no ad in partition %d", p)
	}
	clicks = append(clicks, late)
	appendEvents(t, log, late)
	if _, err := zc.w.round(ctx); err != nil {
		t.Fatalf("zombie round: %v", err)
	}
	if zs := zc.Stats(); zs.Fenced != 1 || zs.Commits != 0 || zs.ClicksCharged != 0 || len(zc.Owned()) != 0 {
		t.Fatalf("zombie after its round: fenced %d, commits %d, charged %d, owns %v", zs.Fenced, zs.Commits, zs.ClicksCharged, zc.Owned())
	}
	// One click refunded through every node at once is credited once.
	var target string
	for _, ev := range clicks {
		if c, err := nodes[0].c.ClickByID(ev.ImpressionID); err == nil && c.CampaignID == "open" && c.Status == "charged" && c.ChargedMicros > 0 {
			target = ev.ImpressionID
			break
		}
	}
	if target == "" {
		t.Fatal("no charged click of campaign open to refund")
	}
	var credited sync.Map
	var wg sync.WaitGroup
	for i, n := range nodes {
		for j := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := n.c.Refund(ctx, target)
				if err != nil {
					t.Errorf("node %d: refund %s: %v", i, target, err)
					return
				}
				credited.Store(fmt.Sprint(i, "/", j), r.RefundedMicros)
			}()
		}
	}
	wg.Wait()
	var credits int
	credited.Range(func(_, v any) bool {
		if v.(int64) > 0 {
			credits++
		}
		return true
	})
	if credits != 1 {
		t.Fatalf("click %s refunded concurrently through every node: credited %d times", target, credits)
	}
	waitShared(t, nodes, log, metrics)
	for _, n := range nodes {
		n.cancel()
		if err := <-n.done; err != nil {
			t.Fatalf("Run: %v", err)
		}
	}

	// Every click key has exactly one ledger entry (the ledger's key is unique; none is
	// missing), spend equals the ledger, budgets that ran out are spent exactly.
	st := nodes[0].c.store
	led, err := sumLedger(st)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]bool{}
	for _, ev := range clicks {
		keys[ev.Key()] = true
	}
	for k := range keys {
		if _, ok := led.entries[k]; !ok {
			t.Errorf("click %s has no ledger entry", k)
		}
	}
	if len(led.entries) != len(keys) {
		t.Errorf("%d ledger entries for %d click keys", len(led.entries), len(keys))
	}
	checkStoredSpend(t, st, cat, led)
	day := t0.Truncate(24 * time.Hour).Unix()
	days, totals, err := st.Spend(ctx, []spendKey{{Campaign: "daily", DayStart: day}, {Campaign: "both", DayStart: day}, {Campaign: "total", DayStart: day}})
	if err != nil {
		t.Fatal(err)
	}
	if got := days[spendKey{Campaign: "daily", DayStart: day}]; got != 2_000_000 {
		t.Errorf("campaign daily: spend %d, want its daily budget 2000000", got)
	}
	if got := totals["total"]; got != 3_100_000 {
		t.Errorf("campaign total: spend %d, want its total budget 3100000", got)
	}
	if got := days[spendKey{Campaign: "both", DayStart: day}]; got != 1_500_001 {
		t.Errorf("campaign both: spend %d, want its daily budget 1500001", got)
	}
	// The metric store has the ledger's spend, once.
	res, err := metrics.Query(ctx, metricstore.Query{Level: metricstore.LevelCampaign, IDs: []string{"daily", "total", "both", "open"}, Interval: 24 * time.Hour,
		Start: t0.Truncate(24 * time.Hour), End: t0.Truncate(24 * time.Hour).Add(24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range res.Series {
		var sum int64
		for _, pt := range s.Points {
			sum += pt.SpendMicros
		}
		if sum != led.total[s.ID] {
			t.Errorf("campaign %s: metric store spend %d, ledger %d", s.ID, sum, led.total[s.ID])
		}
	}
	// Views: each impression once, whatever the duplicates and takeovers.
	got := map[string]int64{}
	err = st.ScanViews(ctx, dayOf(t0, time.UTC), func(v ledger.ViewCount) error {
		got[v.UserID+"/"+v.CatalogID] = v.Count
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(views) {
		t.Errorf("views %v, want %v", got, views)
	}
	viewsMu.Lock()
	if fmt.Sprint(reported) != fmt.Sprint(views) {
		t.Errorf("views reported through OnViews %v, want %v", reported, views)
	}
	viewsMu.Unlock()
	// Every node answers the same.
	for _, ev := range clicks[:20] {
		var answers []Click
		for _, n := range nodes {
			c, err := n.c.ClickByID(ev.ImpressionID)
			if err != nil {
				t.Fatal(err)
			}
			answers = append(answers, c)
		}
		if answers[0] != answers[1] || answers[1] != answers[2] {
			t.Errorf("nodes disagree on %s: %+v", ev.ImpressionID, answers)
		}
	}
	var fenced, retries, conflicts int64
	for _, n := range nodes {
		s := n.c.Stats()
		fenced, retries, conflicts = fenced+s.Fenced, retries+s.Retries, conflicts+s.MetricConflicts
	}
	t.Logf("%d clicks (%d keys), %d refunds, %d ledger entries; %d fenced rounds, %d retried transactions, %d journal conflicts",
		len(clicks), len(keys), refunded, len(led.entries), fenced, retries, conflicts)
}

// waitShared waits until the owners have consumed every partition to its end and the
// metric store has every journal entry.
func waitShared(t *testing.T, nodes []*sharedNode, log *eventlogtest.MemLog, metrics metricstore.Store) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		done := true
		committed := map[int]int64{}
		var next uint64
		for _, n := range nodes {
			s := n.c.Stats()
			next = max(next, s.JournalNext)
			for _, ps := range s.Partitions {
				committed[ps.Partition] = max(committed[ps.Partition], ps.Committed)
			}
		}
		for p := range sharedPartitions {
			_, end, _ := log.Offsets(context.Background(), p)
			if committed[p] < end {
				done = false
			}
		}
		if done {
			jn, err := nodes[0].c.store.JournalNext(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			cp, err := metrics.Checkpoint(context.Background(), DefaultConsumer)
			if err != nil {
				t.Fatal(err)
			}
			if uint64(cp.Offsets[JournalPartition]) == jn {
				return
			}
			for _, n := range nodes {
				select {
				case n.c.kick <- struct{}{}:
				default:
				}
			}
		}
		if time.Now().After(deadline) {
			owned := make([][]int32, len(nodes))
			for i, n := range nodes {
				owned[i] = n.c.Owned()
			}
			t.Fatalf("not caught up after 60s: committed %v, owned %v, journal next %d", committed, owned, next)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestAssignRevoke: a Charger in a group consumes only what it was assigned; Revoke stops it
// at once; Assign refuses partitions the log does not have; a node that claims a partition
// resumes from the offset the previous owner committed.
func TestAssignRevoke(t *testing.T) {
	ctx := context.Background()
	clock := newClock(t0)
	cat := newFakeCatalog()
	cat.advertiser(t, "adv1", "UTC")
	cat.campaign(catalog.CampaignInfo{CampaignID: "c1", AdvertiserID: "adv1", CPCBidMicros: 100_000})
	cat.ad("a1", "c1", 0)
	log := eventlogtest.NewMemLog(4, clock.Now)
	metrics, err := pebblestore.Open("metrics", pebblestore.Options{FS: vfs.NewMem(), Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer metrics.Close()
	st, err := ledger.OpenPebble(filepath.Join(t.TempDir(), "billing"), ledger.PebbleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	open := func(node string) *Charger {
		c, err := Open(ctx, Options{Ledger: st, Group: true, Node: node, Log: log, Catalog: cat, Metrics: metrics, Now: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	a, b := open("a"), open("b")
	p := partitionOf("a1", 4)
	if err := a.Assign(ctx, []int32{4}); err == nil {
		t.Fatal("Assign of a partition the log does not have succeeded")
	}
	click := func(imp string) event.Event {
		return event.Event{Type: event.TypeClick, Time: t0.UnixMicro(), RecvTime: t0.UnixMicro(), AdID: "a1", CampaignID: "c1", AdvertiserID: "adv1", ImpressionID: imp}
	}
	appendEvents(t, log, click("i1"))
	if n, err := a.w.round(ctx); err != nil || n != 0 {
		t.Fatalf("round of a node that owns nothing: %d, %v", n, err)
	}
	if err := a.Assign(ctx, []int32{p}); err != nil {
		t.Fatal(err)
	}
	if n, err := a.w.round(ctx); err != nil || n != 1 {
		t.Fatalf("round after Assign: %d, %v", n, err)
	}
	a.Revoke([]int32{p})
	appendEvents(t, log, click("i2"))
	if n, err := a.w.round(ctx); err != nil || n != 0 || len(a.Owned()) != 0 {
		t.Fatalf("round after Revoke: %d, %v, owns %v", n, err, a.Owned())
	}
	if err := b.Assign(ctx, []int32{p}); err != nil {
		t.Fatal(err)
	}
	if n, err := b.w.round(ctx); err != nil || n != 1 {
		t.Fatalf("the new owner's round: %d messages (want only i2), %v", n, err)
	}
	for _, imp := range []string{"i1", "i2"} {
		if c, err := b.ClickByID(imp); err != nil || c.ChargedMicros != 100_000 {
			t.Fatalf("%s: %+v, %v", imp, c, err)
		}
	}
	if s := b.Stats(); len(s.Partitions) != 1 || s.Partitions[0].Partition != int(p) || s.Partitions[0].Lag != 0 || s.Claims != 1 {
		t.Fatalf("stats of the new owner: %+v", s)
	}
}

// TestLedgerWaitsAreBounded: a refund waiting on a ledger row another transaction holds gives
// up at RoundTimeout with an error, instead of hanging the request.
func TestLedgerWaitsAreBounded(t *testing.T) {
	for _, b := range ledgertest.SQLBackends {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			db, prefix := b.OpenDB(t)
			st, err := ledger.OpenSQL(ctx, db, b.Dialect, ledger.SQLOptions{Prefix: prefix})
			if err != nil {
				t.Fatal(err)
			}
			metrics, err := pebblestore.Open("metrics", pebblestore.Options{FS: vfs.NewMem()})
			if err != nil {
				t.Fatal(err)
			}
			defer metrics.Close()
			cat := newFakeCatalog()
			c, err := Open(ctx, Options{Ledger: st, Group: true, Log: eventlogtest.NewMemLog(1, nil), Catalog: cat, Metrics: metrics, RoundTimeout: 300 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := st.Update(ctx, func(context.Context, ledger.Tx) (*ledger.Writes, error) {
				return &ledger.Writes{Entries: []ledger.Entry{{Key: "c:held", State: ledger.StateCharged, CampaignID: "c1"}}}, nil
			}); err != nil {
				t.Fatal(err)
			}
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			var key string
			q := "SELECT click_key FROM " + prefix + "ledger WHERE click_key = 'c:held' FOR UPDATE"
			if err := tx.QueryRowContext(ctx, q).Scan(&key); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			_, err = c.Refund(ctx, "held")
			if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
				t.Fatalf("refund of a locked click: %v after %v", err, time.Since(start))
			}
			t.Logf("refund gave up after %v: %v", time.Since(start).Round(time.Millisecond), err)
		})
	}
}

// TestEmbeddedTakeoverStopsTheOldCharger: embedded, Open claims every partition, so a second
// Charger on the same ledger fences the first, whose next round fails (Run would return it)
// without writing anything.
func TestEmbeddedTakeoverStopsTheOldCharger(t *testing.T) {
	h := basicSetup(t)
	appendEvents(t, h.log, h.click("i1", "a1", t0, 0))
	o := h.opts
	o.Metrics, o.Ledger = h.ms, h.ledger
	second, err := Open(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if _, err := h.c.w.round(context.Background()); !errors.Is(err, ledger.ErrFenced) {
		t.Fatalf("round of the superseded charger: %v", err)
	}
	if n, err := second.w.round(context.Background()); err != nil || n != 1 {
		t.Fatalf("round of the new charger: %d, %v", n, err)
	}
	if e := h.entry("i1"); e.ChargedMicros != 500_000 {
		t.Fatalf("i1: %+v", e)
	}
}
