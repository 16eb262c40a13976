package sivt

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/ivt/ivtgen"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/testseed"
	"github.com/cockroachdb/pebble"
)

// restartStage stops only the stage, abruptly (a round in progress is not committed), and
// opens it again on the same database: it rebuilds its rules from the log.
func (p *pipeline) restartStage(ctx context.Context) {
	p.t.Helper()
	p.stageCancel()
	<-p.stageDone
	if err := p.stage.Close(); err != nil {
		p.t.Fatal(err)
	}
	p.runStage(ctx)
}

func (p *pipeline) runStage(ctx context.Context) {
	p.t.Helper()
	var err error
	if p.stage, err = Open(ctx, Options{Dir: "ivt2", FS: p.fs, Log: p.log, Metrics: p.metrics, Refunder: BillingRefunder(p.charger),
		Consumer: "ivt2", Rules: p.rules, Now: p.clk.Now, PollInterval: 2 * time.Millisecond, RefundInterval: 5 * time.Millisecond}); err != nil {
		p.t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	p.stageCancel, p.stageDone = cancel, done
	go func() {
		defer close(done)
		if err := p.stage.Run(sctx); err != nil && !errors.Is(err, context.Canceled) {
			p.t.Errorf("stage: %v", err)
		}
	}()
}

type verdictSet map[string]verdictRecord

func verdicts(t *testing.T, s *Stage) verdictSet {
	out := verdictSet{}
	err := s.read(func(r pebble.Reader) error {
		it, err := r.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixVerdict}, UpperBound: []byte{prefixVerdict + 1}})
		if err != nil {
			return err
		}
		defer it.Close()
		for it.First(); it.Valid(); it.Next() {
			var v verdictRecord
			ok, err := getJSON(r, it.Key(), &v)
			if err != nil || !ok {
				return err
			}
			v.CreditSeq = 0 // numbering follows commit order, which restarts may split differently
			out[string(it.Key()[1:])] = v
		}
		return it.Error()
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDeterministicAcrossRestarts: the same labelled traffic judged by a stage that never
// stops and by one restarted at random moments (each restart rebuilds its rules from the log)
// gives the same verdicts, evidence included, the same credits and the same metric moves.
// The restarted stage runs beside the first one, on the same log, billing and metric store,
// under its own consumer name, so its credits are billing's repeats (already refunded).
func TestDeterministicAcrossRestarts(t *testing.T) {
	seed := testseed.Seed(t)
	rng := rand.New(rand.NewPCG(seed, 7))
	gen := ivtgen.Generate(ivtgen.Config{Seed: seed, Start: t0, Duration: 4 * time.Minute, Humans: 300, Floods: 3, DatacenterBots: 0, Drips: 3})
	evs := make([]event.Event, len(gen))
	for i := range gen {
		evs[i] = gen[i].Event
	}
	restartedDecidesTheSame(t, rng, evs, DefaultRules(), 200)
}

// TestDeterministicAcrossRestartsInAFlood: one user clicking six times over the flood limit
// for longer than the rules' span (a click a second for 12 minutes, on ever other ads) amid
// people, with restarts in the middle of the flood: the windows hold only the newest of its
// clicks (60 a minute, 40 kept), and a rebuild starts from within the flood.
func TestDeterministicAcrossRestartsInAFlood(t *testing.T) {
	rng := rand.New(rand.NewPCG(testseed.Seed(t), 8))
	var evs []event.Event
	for i := range 720 {
		at := t0.Add(time.Duration(i) * time.Second)
		user, ip := "bot", "81.0.0.200"
		if rng.IntN(10) == 0 {
			user, ip = fmt.Sprint("u", rng.IntN(30)), fmt.Sprint("81.0.1.", rng.IntN(30))
		}
		imp := fmt.Sprint("f", i)
		ad := fmt.Sprint("ad-", i%50)
		evs = append(evs, impEv(at, ad, imp, user, ip, user), clickEv(at.Add(1500*time.Millisecond), ad, imp, user, ip, user))
	}
	sortByTime(evs)
	restartedDecidesTheSame(t, rng, evs, DefaultRules(), 60)
}

// allCredits returns every credit of an advertiser, newest first.
func allCredits(t *testing.T, s *Stage, adv string) []Credit {
	var all []Credit
	for before := uint64(0); ; {
		page, next, err := s.Credits(adv, MaxCreditsPage, before)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page...)
		if next == 0 {
			return all
		}
		before = next
	}
}

// restartedDecidesTheSame sends evs to a stage that never stops and to one restarted once in
// about restartOneIn events, and fails unless both decide the same.
func restartedDecidesTheSame(t *testing.T, rng *rand.Rand, gen []event.Event, rules Rules, restartOneIn int) {
	restartedDecidesTheSameAppended(t, rng, gen, nil, rules, restartOneIn)
}

// restartedDecidesTheSameAppended is restartedDecidesTheSame with the append time of each
// event (ascending; nil: its receive time), which may follow its receive time by up to the
// slack, as when ingest holds events.
func restartedDecidesTheSameAppended(t *testing.T, rng *rand.Rand, gen []event.Event, appendAt []int64, rules Rules, restartOneIn int) {
	p := newPipeline(t, t0, rules)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p.runStage(ctx)
	defer func() { p.stageCancel(); <-p.stageDone; p.stage.Close() }()
	restarts := 0
	for i := range gen {
		if appendAt == nil {
			p.send(gen[i])
		} else {
			p.sendAt(time.UnixMicro(appendAt[i]), gen[i])
		}
		if rng.IntN(restartOneIn) == 0 {
			if rng.IntN(2) == 0 {
				time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
			}
			p.restartStage(ctx)
			restarts++
		}
	}
	p.clk.Set(p.clk.Now().Add(2 * time.Second))
	// The deadline is generous (a -race run on a loaded machine replays slowly) and the
	// stages' stats are printed when it passes, so a stage that is stuck shows apart from one
	// that is slow.
	var a, b Stats
	caughtUp := func() bool {
		a, b = p.firstStage().Stats(), p.stage.Stats()
		return a.Lag == 0 && b.Lag == 0 && a.CreditsPending == 0 && b.CreditsPending == 0 &&
			a.JournalApplied == a.JournalNext && b.JournalApplied == b.JournalNext && b.EventsConsumed+a.EventsConsumed > 0
	}
	for deadline := time.Now().Add(90 * time.Second); !caughtUp(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for both stages to catch up:\nuninterrupted %+v\nrestarted %+v", a, b)
		}
	}
	// Lag is measured at the start of a round: wait for one more.
	time.Sleep(50 * time.Millisecond)
	want, got := verdicts(t, p.firstStage()), verdicts(t, p.stage)
	t.Logf("%d events, %d restarts, %d verdicts", len(gen), restarts, len(want))
	if len(want) == 0 {
		t.Fatal("no verdicts: the traffic does not exercise the rules")
	}
	if !maps.EqualFunc(want, got, func(a, b verdictRecord) bool {
		return a.Reason == b.Reason && a.Late == b.Late && a.TriggeredBy == b.TriggeredBy && a.DecidedAt == b.DecidedAt && a.Evidence.Source == b.Evidence.Source && a.Evidence.Count == b.Evidence.Count &&
			a.Evidence.FirstClickTime == b.Evidence.FirstClickTime
	}) {
		for k, v := range want {
			if g, ok := got[k]; !ok || g.Reason != v.Reason || g.Late != v.Late || g.TriggeredBy != v.TriggeredBy {
				t.Errorf("click %s: uninterrupted %+v, restarted %+v (present %v)", k, v, g, ok)
			}
		}
		for k, g := range got {
			if _, ok := want[k]; !ok {
				t.Errorf("click %s: only the restarted stage flagged it: %+v", k, g)
			}
		}
		t.FailNow()
	}
	// The same credits: the first stage's are billing's refunds, the restarted one's are
	// billing's answers "already refunded" with the same amounts.
	for _, adv := range []string{"adv-0", "adv-1"} {
		a, b := allCredits(t, p.firstStage(), adv), allCredits(t, p.stage, adv)
		sum := func(cs []Credit) (n int64) {
			for _, c := range cs {
				if c.Status != "credited" {
					t.Errorf("credit %+v not settled", c)
				}
				n += c.CreditedMicros
			}
			return n
		}
		if len(a) != len(b) || sum(a) != sum(b) {
			t.Errorf("%s: %d credits of %d micros uninterrupted, %d of %d restarted", adv, len(a), sum(a), len(b), sum(b))
		}
		// Both consumers moved the same clicks: the store holds two equal moves.
		if c := p.counts(metricstore.LevelAdvertiser, adv, t0); c.InvalidClicks != 2*int64(len(a)) {
			t.Errorf("%s: %d invalid clicks in the store, want twice %d", adv, c.InvalidClicks, len(a))
		}
	}
}

// TestDeterministicAcrossRestartsInAShortFlood: a flood window of a few seconds, one user
// clicking 20 times a second amid people, and a restart every 150 events or so: a rebuild
// starts with the flood window full of the flooder's clicks.
func TestDeterministicAcrossRestartsInAShortFlood(t *testing.T) {
	rng := rand.New(rand.NewPCG(testseed.Seed(t), 9))
	var evs []event.Event
	for i := range 1200 {
		at := t0.Add(time.Duration(i) * 50 * time.Millisecond)
		user, ip := "bot", "81.0.0.200"
		if rng.IntN(10) == 0 {
			user, ip = fmt.Sprint("u", rng.IntN(30)), fmt.Sprint("81.0.1.", rng.IntN(30))
		}
		imp := fmt.Sprint("f", i)
		ad := fmt.Sprint("ad-", i%50)
		evs = append(evs, impEv(at, ad, imp, user, ip, user), clickEv(at.Add(1500*time.Millisecond), ad, imp, user, ip, user))
	}
	sortByTime(evs)
	rules := DefaultRules()
	rules.FloodWindow, rules.ImpressionWindow, rules.ManyAdsWindow = 10*time.Second, 10*time.Second, 10*time.Second
	restartedDecidesTheSame(t, rng, evs, rules, 150)
}

// TestDeterministicAcrossRestartsInAShortHeldFlood is the short flood with receive times up
// to 4 s before the append times, in any order within that.
func TestDeterministicAcrossRestartsInAShortHeldFlood(t *testing.T) {
	rng := rand.New(rand.NewPCG(testseed.Seed(t), 10))
	type timed struct {
		ev event.Event
		at int64
	}
	var tev []timed
	for i := range 600 {
		at := t0.Add(time.Duration(i) * 50 * time.Millisecond)
		user, ip := "bot", "81.0.0.200"
		if rng.IntN(10) == 0 {
			user, ip = fmt.Sprint("u", rng.IntN(30)), fmt.Sprint("81.0.1.", rng.IntN(30))
		}
		imp := fmt.Sprint("f", i)
		ad := fmt.Sprint("ad-", i%50)
		for _, e := range []event.Event{impEv(at, ad, imp, user, ip, user), clickEv(at.Add(1500*time.Millisecond), ad, imp, user, ip, user)} {
			held := time.Duration(rng.IntN(4000)) * time.Millisecond
			tev = append(tev, timed{e, e.RecvTime + held.Microseconds()})
		}
	}
	slices.SortStableFunc(tev, func(a, b timed) int { return cmp.Compare(a.at, b.at) })
	evs, ats := make([]event.Event, len(tev)), make([]int64, len(tev))
	for i := range tev {
		evs[i], ats[i] = tev[i].ev, tev[i].at
	}
	rules := DefaultRules()
	rules.FloodWindow, rules.ImpressionWindow, rules.ManyAdsWindow = 10*time.Second, 10*time.Second, 10*time.Second
	restartedDecidesTheSameAppended(t, rng, evs, ats, rules, 150)
}

// TestRestartBeforeTheFirstRound: a new stage starts judging from the rules' span before the
// clock; stopped before it committed a round and opened again a span later, it still starts
// there, and judges every click a stage that never stopped judges.
func TestRestartBeforeTheFirstRound(t *testing.T) {
	rules := DefaultRules()
	rules.FloodWindow, rules.ImpressionWindow, rules.ManyAdsWindow = 10*time.Second, 10*time.Second, 10*time.Second
	p := newPipeline(t, t0, rules)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func() *Stage {
		s, err := Open(ctx, Options{Dir: "ivt2", FS: p.fs, Log: p.log, Metrics: p.metrics, Refunder: BillingRefunder(p.charger),
			Consumer: "ivt2", Rules: rules, Now: p.clk.Now, PollInterval: 2 * time.Millisecond, RefundInterval: 5 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	if err := open().Close(); err != nil { // never ran a round
		t.Fatal(err)
	}
	for i := range 500 { // 25 s of a flood at 20 clicks a second
		at := t0.Add(time.Duration(i) * 50 * time.Millisecond)
		p.send(clickEv(at, fmt.Sprint("ad-", i%50), fmt.Sprint("r", i), "bot", "81.0.0.200", "bot"))
	}
	p.stage = open()
	sctx, scancel := context.WithCancel(ctx)
	done := make(chan struct{})
	p.stageCancel, p.stageDone = scancel, done
	go func() {
		defer close(done)
		if err := p.stage.Run(sctx); err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("stage: %v", err)
		}
	}()
	defer func() { scancel(); <-done; p.stage.Close() }()
	p.clk.Set(p.clk.Now().Add(2 * time.Second))
	eventually(t, "both stages to catch up", func() bool {
		a, b := p.firstStage().Stats(), p.stage.Stats()
		return a.Lag == 0 && b.Lag == 0 && a.EventsConsumed > 0 && b.EventsConsumed > 0
	})
	time.Sleep(50 * time.Millisecond) // Lag is measured at the start of a round
	want, got := verdicts(t, p.firstStage()), verdicts(t, p.stage)
	if len(want) != 500 || len(got) != len(want) {
		t.Fatalf("%d clicks flagged by the stage that never stopped (want 500), %d by the one restarted before its first round", len(want), len(got))
	}
}
