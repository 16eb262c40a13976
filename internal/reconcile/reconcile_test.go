package reconcile

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/aggregate"
	"github.com/adpulse/adpulse/internal/archive"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/eventlog/eventlogtest"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/metricstore/pebblestore"
	"github.com/adpulse/adpulse/internal/testseed"
)

const (
	parts       = 3
	maxLateness = 2 * time.Hour
	dedupSpan   = time.Hour
	slack       = 2 * time.Second
)

// pipeline is a log counted by the real aggregator into a Pebble store and archived by the
// real archiver: the two sides a reconciliation compares.
type pipeline struct {
	log     *eventlogtest.MemLog
	store   *pebblestore.Store
	target  archive.Target
	dir     string
	h0      time.Time // first checked hour
	late    event.Event
	byPart  [parts][]event.Event // by offset
	options Options
}

// newPipeline appends traffic received over five hours, the checked three in the middle:
// impressions, clicks valid and invalid, interactions, a few events late by up to
// maxLateness (one of them kept aside as p.late), and in partition 2 events sent twice,
// which the aggregator's duplicate filter drops and the reconciliation must drop too.
func newPipeline(t *testing.T, seed uint64) *pipeline {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 11))
	p := &pipeline{log: eventlogtest.NewMemLog(parts, nil), dir: t.TempDir()}
	p.h0 = time.Now().UTC().Add(-30 * time.Hour).Truncate(time.Hour)
	start := p.h0.Add(-time.Hour)
	for part := range parts {
		recv := start.UnixMicro()
		for recv < p.h0.Add(4*time.Hour).UnixMicro() {
			recv += rng.Int64N(10_000_000)
			ad := rng.IntN(40)
			e := event.Event{Type: event.TypeImpression, Time: recv - rng.Int64N(3_000_000), RecvTime: recv,
				AdID: fmt.Sprintf("ad-%02d", ad), CampaignID: fmt.Sprintf("cmp-%d", ad/8), AdvertiserID: fmt.Sprintf("adv-%d", ad/20),
				ImpressionID: fmt.Sprintf("imp-%d-%d", part, recv)}
			switch r := rng.IntN(100); {
			case r < 10:
				e.Type = event.TypeClick
			case r < 12:
				e.Type, e.Invalid = event.TypeClick, event.ReasonBot
			case r < 14:
				e.Type, e.Name, e.EventID = event.TypeInteraction, "add_to_cart", fmt.Sprintf("ev-%d-%d", part, recv)
			case r < 15:
				e.Invalid = event.ReasonDatacenter // an invalid impression: not counted
			case r < 17:
				e.Time = recv - rng.Int64N(maxLateness.Microseconds()-time.Minute.Microseconds()) // late
			}
			p.add(part, e)
			if part == 2 && rng.IntN(50) == 0 {
				dup := e
				dup.RecvTime += rng.Int64N(dedupSpan.Microseconds() / 2)
				p.add(part, dup)
			}
		}
	}
	// The late event: in the checked hours, received after them.
	p.late = event.Event{Type: event.TypeClick, Time: p.h0.Add(90 * time.Minute).UnixMicro(), RecvTime: p.h0.Add(3*time.Hour + 10*time.Minute).UnixMicro(),
		AdID: "ad-late", CampaignID: "cmp-0", AdvertiserID: "adv-0", ImpressionID: "imp-late"}
	p.add(1, p.late)
	// Traffic after the span, so the archive visibly covers it.
	for part := range parts {
		p.add(part, event.Event{Type: event.TypeImpression, Time: p.h0.Add(7 * time.Hour).UnixMicro(), RecvTime: p.h0.Add(7 * time.Hour).UnixMicro(), AdID: "ad-00", ImpressionID: fmt.Sprintf("after-%d", part)})
	}

	var err error
	p.store, err = pebblestore.Open(t.TempDir(), pebblestore.Options{MinuteRetention: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.store.Close() })
	p.target, err = archive.NewDirTarget(p.dir)
	if err != nil {
		t.Fatal(err)
	}
	ag, err := aggregate.New(aggregate.Options{Log: p.log, Store: p.store, MaxLateness: maxLateness, DedupSpan: dedupSpan, Slack: slack, CommitInterval: 10 * time.Millisecond, PollInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ar, err := archive.New(archive.Options{Log: p.log, Target: p.target, Slack: slack, ArchiveInterval: 20 * time.Minute, MaxFileEvents: 2000, PollInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = ag.Run(ctx) }()
	go func() { defer wg.Done(); _ = ar.Run(ctx) }()
	deadline := time.Now().Add(time.Minute)
	for {
		done := !ag.Stats().FinalBefore.Before(p.h0.Add(3 * time.Hour))
		for _, ps := range ag.Stats().Partitions {
			done = done && ps.Committed == ps.End && ps.End > 0
		}
		for i, ps := range ar.Stats().Partitions {
			_, end, _ := p.log.Offsets(ctx, i)
			done = done && ps.Committed == end
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pipeline did not catch up: aggregate %+v archive %+v", ag.Stats(), ar.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	ag.Close()
	ar.Close()
	t.Logf("aggregate: %d counted, %d duplicates; archive: %d files, %.1f bytes/event",
		ag.Stats().EventsCounted, ag.Stats().Duplicates, ar.Stats().FilesWritten, ar.Stats().BytesPerEvent)
	if ag.Stats().Duplicates == 0 {
		t.Fatal("no duplicates in the log: the test does not exercise the filter")
	}
	p.options = Options{Archive: p.target, Store: p.store, MaxLateness: maxLateness, MaxClockSkew: time.Minute, DedupSpan: dedupSpan, Slack: slack}
	return p
}

func (p *pipeline) add(part int, e event.Event) {
	if err := p.log.Append(context.Background(), []eventlog.Message{{Partition: int32(part), Value: e.AppendBinary(nil)}}); err != nil {
		panic(err)
	}
	p.byPart[part] = append(p.byPart[part], e)
}

// deltas counts events at the three levels, as the aggregator would (no duplicates among
// them), times sign.
func deltas(evs []event.Event, sign int64) []metricstore.Delta {
	acc := map[Key]*metricstore.Counts{}
	for _, e := range evs {
		if e.Type != event.TypeClick && e.Invalid != event.ReasonNone {
			continue
		}
		for l, id := range []string{e.AdID, e.CampaignID, e.AdvertiserID} {
			if id == "" {
				continue
			}
			k := Key{metricstore.Level(l + 1), id, e.Time / 60e6}
			c := acc[k]
			if c == nil {
				c = &metricstore.Counts{}
				acc[k] = c
			}
			switch {
			case e.Type == event.TypeImpression:
				c.Impressions += sign
			case e.Type == event.TypeClick && e.Invalid == event.ReasonNone:
				c.Clicks += sign
			case e.Type == event.TypeClick:
				c.AddInvalid(e.Invalid, sign)
			default:
				c.AddInteraction(e.Name, sign)
			}
		}
	}
	var out []metricstore.Delta
	for k, c := range acc {
		out = append(out, metricstore.Delta{Level: k.Level, ID: k.ID, Minute: k.Minute, Counts: *c})
	}
	return out
}

func run(t *testing.T, p *pipeline, repair bool) *Report {
	t.Helper()
	rep, err := Run(context.Background(), p.options, p.h0, p.h0.Add(3*time.Hour), repair)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	if err := rep.WriteTable(&sb); err != nil {
		t.Fatal(err)
	}
	t.Logf("repair=%v:\n%s", repair, sb.String())
	return rep
}

// TestFindsAndRepairsExactlyTheCorruption: a store that agrees with the archive shows no
// difference; one with a batch dropped, a batch doubled and a late event lost shows exactly
// those buckets with exactly those differences; a repair fixes them and marks the hours
// reconciled, and a second repair finds nothing and changes nothing.
func TestFindsAndRepairsExactlyTheCorruption(t *testing.T) {
	seed := testseed.Seed(t)
	p := newPipeline(t, seed)
	ctx := context.Background()
	if rep := run(t, p, false); len(rep.Diffs) != 0 || rep.Gaps != 0 || rep.Duplicates == 0 || rep.Counted == 0 {
		t.Fatalf("the pipeline's own store: %d differences, %d gaps, %d duplicates, %d counted", len(rep.Diffs), rep.Gaps, rep.Duplicates, rep.Counted)
	}

	// The corruption, and what the archive will say about each bucket (archive - store).
	dropped := p.byPart[0][900:940]
	doubled := p.byPart[1][1200:1230]
	corrupt := append(append(deltas(dropped, -1), deltas(doubled, +1)...), deltas([]event.Event{p.late}, -1)...)
	if err := p.store.Apply(ctx, &metricstore.Commit{Consumer: "corruption", Deltas: corrupt}); err != nil {
		t.Fatal(err)
	}
	want := map[Key]metricstore.Counts{}
	lo, hi := p.h0.Unix()/60, p.h0.Add(3*time.Hour).Unix()/60
	for _, d := range corrupt {
		if d.Minute < lo || d.Minute >= hi {
			continue // outside the checked hours
		}
		k := Key{d.Level, d.ID, d.Minute}
		c := want[k]
		neg := metricstore.Counts{}
		neg.Add(&d.Counts)
		c = minus(&c, &neg)
		want[k] = c
	}
	for k, c := range want {
		if c.IsZero() {
			delete(want, k)
		}
	}
	rep := run(t, p, false)
	if len(rep.Diffs) != len(want) {
		t.Errorf("%d differences, want %d", len(rep.Diffs), len(want))
	}
	for _, d := range rep.Diffs {
		got := minus(&d.Archive, &d.Store)
		w, ok := want[d.Key]
		if !ok || !got.Equal(&w) {
			t.Errorf("%v: archive - store = %v, want %v (expected: %v)", d.Key, got, w, ok)
		}
	}
	late := Key{metricstore.LevelAd, "ad-late", p.late.Time / 60e6}
	if _, ok := want[late]; !ok {
		t.Fatal("the lost late event is not among the expected differences")
	}

	rep = run(t, p, true)
	if rep.Repaired != len(want) {
		t.Errorf("repaired %d buckets, want %d", rep.Repaired, len(want))
	}
	if rep := run(t, p, false); len(rep.Diffs) != 0 {
		t.Fatalf("%d differences after the repair", len(rep.Diffs))
	}
	if rep := run(t, p, true); rep.Repaired != 0 {
		t.Fatalf("a second repair corrected %d buckets", rep.Repaired)
	}
	res, err := p.store.Query(ctx, metricstore.Query{Level: metricstore.LevelAd, IDs: []string{"ad-late", "ad-01"}, Start: p.h0.Add(-time.Hour), End: p.h0.Add(4 * time.Hour), Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range res.Series {
		for i, pt := range s.Points {
			if want := i >= 1 && i <= 3; pt.Reconciled != want {
				t.Errorf("%s %v: reconciled %v, want %v", s.ID, pt.Time, pt.Reconciled, want)
			}
		}
	}
}

// TestConcurrentRepairsCorrectOnce: repairs racing over the same corruption correct it
// once: the fence makes the later one compare again.
func TestConcurrentRepairsCorrectOnce(t *testing.T) {
	p := newPipeline(t, testseed.Seed(t))
	ctx := context.Background()
	doubled := p.byPart[2][1000:1100]
	if err := p.store.Apply(ctx, &metricstore.Commit{Consumer: "corruption", Deltas: deltas(doubled, +1)}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	reps := make([]*Report, 4)
	errs := make([]error, len(reps))
	for i := range reps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			reps[i], errs[i] = Run(ctx, p.options, p.h0, p.h0.Add(3*time.Hour), true)
		}()
	}
	wg.Wait()
	repaired := 0
	for i, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
		repaired += min(reps[i].Repaired, 1)
	}
	if repaired != 1 {
		t.Errorf("%d of the racing repairs corrected something, want 1", repaired)
	}
	if rep := run(t, p, false); len(rep.Diffs) != 0 {
		t.Fatalf("%d differences after racing repairs", len(rep.Diffs))
	}
}

// TestNotReady: hours that are not final, or that the archive does not cover, are refused.
func TestNotReady(t *testing.T) {
	p := newPipeline(t, testseed.Seed(t))
	ctx := context.Background()
	if _, err := Run(ctx, p.options, time.Now().Add(-time.Hour), time.Now(), false); err == nil || !strings.Contains(err.Error(), "not ready") {
		t.Errorf("reconciling the last hour: %v, want not ready", err)
	}
	// An archive missing its newest files (and so short of what the store counted).
	empty, _ := archive.NewDirTarget(t.TempDir())
	o := p.options
	o.Archive = empty
	if _, err := Run(ctx, o, p.h0, p.h0.Add(time.Hour), false); err == nil || !strings.Contains(err.Error(), "archived up to") {
		t.Errorf("reconciling against an empty archive: %v", err)
	}
}

// TestRangeBounded: a range longer than MaxRange is refused before anything is read.
func TestRangeBounded(t *testing.T) {
	_, err := Run(context.Background(), Options{}, time.Unix(0, 0), time.Unix(0, 0).Add(MaxRange+time.Hour), false)
	if err == nil || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("an 8-day range: %v", err)
	}
}
