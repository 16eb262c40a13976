package ingest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/dedup"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/testseed"
	"github.com/cespare/xxhash/v2"
)

// lateLog is a log whose appends can succeed, fail cleanly, report an unknown outcome and
// land or not, or report an unknown outcome and land only later (after the resolver may have
// looked): the one way a second copy of an event gets past the embedded dedup store.
type lateLog struct {
	*memLog
	rng  func() int // 0-99, drawn per append
	mu   sync.Mutex
	late [][]eventlog.Message
}

func (l *lateLog) Append(ctx context.Context, msgs []eventlog.Message) error {
	switch r := l.rng(); {
	case r < 70:
		return l.memLog.Append(ctx, msgs)
	case r < 76:
		_ = l.memLog.Append(ctx, msgs)
		return errors.New("timed out waiting for the brokers")
	case r < 82:
		return errors.New("timed out waiting for the brokers")
	case r < 88:
		return eventlog.NotAppended(errors.New("disk full"))
	default:
		cp := make([]eventlog.Message, len(msgs))
		for i, m := range msgs {
			cp[i] = eventlog.Message{Partition: m.Partition, Value: append([]byte(nil), m.Value...)}
		}
		l.mu.Lock()
		l.late = append(l.late, cp)
		l.mu.Unlock()
		return errors.New("timed out waiting for the brokers")
	}
}

// land appends the late batches.
func (l *lateLog) land() {
	l.mu.Lock()
	late := l.late
	l.late = nil
	l.mu.Unlock()
	for _, b := range late {
		_ = l.memLog.Append(context.Background(), b)
	}
}

// streamCounts counts the log as the stages after it do: each partition in offset order
// through its own duplicate filter (dedup.Window over event.Key). It returns the count per
// key and the partitions each ad's events are in.
func streamCounts(t *testing.T, l *memLog) (map[string]int, map[string]map[int32]bool) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	counts, parts := map[string]int{}, map[string]map[int32]bool{}
	for p, msgs := range l.parts {
		w := dedup.NewWindow((24 * time.Hour).Microseconds(), (5 * time.Second).Microseconds())
		for _, m := range msgs {
			var e event.Event
			if err := e.Decode(m.Value); err != nil {
				t.Fatal(err)
			}
			if parts[e.AdID] == nil {
				parts[e.AdID] = map[int32]bool{}
			}
			parts[e.AdID][int32(p)] = true
			if !w.Observe(xxhash.Sum64String(e.Key()), e.RecvTime) {
				counts[e.Key()]++
			}
		}
	}
	return counts, parts
}

// TestHotSaltingModel: random clicks with one ad turning hot and cold again and again, retries
// of earlier clicks at any later time (so across transitions), and appends that succeed, fail,
// or have an unknown outcome, some landing only after the resolver looked. Counted as the
// stages count (per partition, duplicate filter), every click in the log counts exactly once
// and every acknowledged click is in the log, while the hot ad was spread over partitions.
func TestHotSaltingModel(t *testing.T) {
	seed := testseed.Seed(t)
	rng := rand.New(rand.NewPCG(seed, seed^0x5a17))
	var rngMu sync.Mutex
	l := &lateLog{memLog: newMemLog(8), rng: func() int { rngMu.Lock(); defer rngMu.Unlock(); return rng.IntN(100) }}
	clock := time.Unix(1_800_000_000, 0)
	var clockMu sync.Mutex
	now := func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return clock }
	in := NewIntake(IntakeOptions{
		Log: l, Dedup: dedup.NewMemory(24 * time.Hour),
		InFlightWait: 5 * time.Millisecond, ResolveAfter: time.Millisecond, Now: now,
		Hot: HotOptions{Salts: 4, Share: 0.3, MinEvents: 20, Interval: time.Second, Cooldown: time.Nanosecond},
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = in.Run(ctx) }()

	type click struct{ id, ad string }
	var sent []click
	acked := map[string]bool{}
	const steps = 4000
	for step := range steps {
		clockMu.Lock()
		clock = clock.Add(10 * time.Millisecond)
		clockMu.Unlock()
		hotPhase := (step/400)%2 == 1 // the hot ad takes most clicks every other 4 s
		n := 1 + rng.IntN(4)
		evs := make([]event.Event, 0, n)
		for range n {
			var c click
			if len(sent) > 0 && rng.IntN(4) == 0 {
				c = sent[rng.IntN(len(sent))] // a retry, maybe long after the first copy
			} else {
				c = click{id: fmt.Sprintf("imp-%d", len(sent)), ad: fmt.Sprintf("ad%d", rng.IntN(20))}
				if hotPhase && rng.IntN(10) < 7 {
					c.ad = "hot"
				}
				sent = append(sent, c)
			}
			e := event.Event{Type: event.TypeClick, ImpressionID: c.id, AdID: c.ad, CampaignID: "c1", AdvertiserID: "a1"}
			e.RecvTime = now().UnixMicro()
			e.Time = e.RecvTime
			evs = append(evs, e)
		}
		out := make([]Outcome, len(evs))
		if err := in.Record(context.Background(), evs, now(), out); err == nil {
			for i := range evs {
				acked[evs[i].ImpressionID] = true
			}
		}
		if rng.IntN(50) == 0 {
			time.Sleep(2 * time.Millisecond) // let the resolver settle what is due
			if rng.IntN(2) == 0 {
				l.land()
			}
		}
	}
	// Settle: the resolver decides every held key, late appends land, and then every click
	// is retried once more (a retry of a released key whose first copy landed late).
	deadline := time.Now().Add(10 * time.Second)
	for in.Stats().MaybeKeys > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	l.land()

	counts, parts := streamCounts(t, l.memLog)
	inLog := map[string]bool{}
	for _, e := range l.events(t) {
		inLog[e.Key()] = true
	}
	for k := range inLog {
		if counts[k] != 1 {
			t.Errorf("seed %d: key %s counted %d times, want 1", seed, k, counts[k])
		}
	}
	for id := range acked {
		k := (&event.Event{Type: event.TypeClick, ImpressionID: id}).Key()
		if !inLog[k] {
			t.Errorf("seed %d: acknowledged click %s is not in the log", seed, id)
		}
	}
	st := in.Stats()
	t.Logf("seed %d: %d clicks sent, %d in the log, %d acknowledged, %d salted, %d transitions, %d pinned, hot ad in %d partitions",
		seed, len(sent), len(inLog), len(acked), st.Hot.Salted, st.Hot.Transitions, st.Hot.Pinned, len(parts["hot"]))
	if st.Hot.Transitions < 4 || len(parts["hot"]) < 2 || st.Hot.Pinned == 0 {
		t.Errorf("the model did not exercise salting: %+v, hot ad in %d partitions", st.Hot, len(parts["hot"]))
	}
}

// TestResolverFindsSaltedEvent: an append of a hot ad's click with an unknown outcome lands in
// a salted partition, not the ad's home; the resolver looks there, finds it and commits the
// key, so a retry is a duplicate and the log holds one copy.
func TestResolverFindsSaltedEvent(t *testing.T) {
	l := &faultLog{memLog: newMemLog(8)}
	clock := time.Unix(1_800_000_000, 0)
	in, stop := newTestIntake(l, IntakeOptions{
		InFlightWait: 20 * time.Millisecond, ResolveAfter: 10 * time.Millisecond,
		Now: func() time.Time { return clock },
		Hot: HotOptions{Salts: 8, Share: 0.5, MinEvents: 10, Interval: time.Second},
	})
	defer stop()
	home := Partition("hot", 8)
	// One second of the ad taking every click makes it hot.
	for i := range 20 {
		evs := []event.Event{{Type: event.TypeClick, ImpressionID: fmt.Sprintf("warm-%d", i), AdID: "hot"}}
		if err := in.Record(context.Background(), evs, clock, make([]Outcome, 1)); err != nil {
			t.Fatal(err)
		}
		clock = clock.Add(100 * time.Millisecond)
	}
	if in.Stats().Hot.HotAds != 1 {
		t.Fatalf("the ad is not hot: %+v", in.Stats().Hot)
	}
	// A click whose salt puts it away from home.
	var ev event.Event
	for i := 0; ; i++ {
		ev = event.Event{Type: event.TypeClick, ImpressionID: fmt.Sprintf("imp-%d", i), AdID: "hot"}
		if saltedPartition(home, ev.Key(), 8, 8) != home {
			break
		}
	}
	l.mode.Store(logUnknownLanded)
	out := make([]Outcome, 1)
	if err := in.Record(context.Background(), []event.Event{ev}, clock, out); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("append with an unknown outcome: %v, want ErrUnavailable", err)
	}
	l.mode.Store(logOK)
	deadline := time.Now().Add(5 * time.Second)
	for in.Stats().MaybeKeys > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if st := in.Stats(); st.Recovered != 1 {
		t.Fatalf("resolver: %+v, want the salted click found in the log", st)
	}
	if err := in.Record(context.Background(), []event.Event{ev}, clock, out); err != nil || out[0] != Duplicate {
		t.Fatalf("retry after the resolver found the click: %v, %v; want a duplicate", err, out[0])
	}
	copies := 0
	for p, msgs := range l.parts {
		for _, m := range msgs {
			var e event.Event
			if err := e.Decode(m.Value); err != nil {
				t.Fatal(err)
			}
			if e.ImpressionID == ev.ImpressionID {
				copies++
				if int32(p) == home {
					t.Errorf("the click is in its home partition %d, want a salted one", p)
				}
			}
		}
	}
	if copies != 1 {
		t.Fatalf("%d copies of the click in the log, want 1", copies)
	}
}

// TestHotDetectionHysteresis: an ad turns hot above Share of an interval's events, stays hot
// down to Share/2 and for Cooldown after, and a quiet node (below MinEvents) judges nothing.
func TestHotDetectionHysteresis(t *testing.T) {
	h := newHotAds(HotOptions{Salts: 4, Share: 0.4, MinEvents: 10, Interval: time.Second, Cooldown: 2 * time.Second})
	t0 := time.Unix(1_800_000_000, 0)
	second := func(i int, hotShare float64, total int) {
		evs := make([]event.Event, total)
		for j := range evs {
			evs[j] = event.Event{Type: event.TypeClick, AdID: fmt.Sprintf("cold%d", j)}
			if float64(j) < hotShare*float64(total) {
				evs[j].AdID = "hot"
			}
		}
		h.observe(evs, make([]Outcome, total), t0.Add(time.Duration(i)*time.Second))
	}
	isHot := func() bool { _, ok := (*h.hot.Load())["hot"]; return ok }
	steps := []struct {
		share float64
		total int
		want  bool // after the interval closes
	}{
		{0.9, 5, false},   // too quiet to judge
		{0.3, 100, false}, // below Share
		{0.5, 100, true},  // above: hot
		{0.25, 100, true}, // above Share/2: stays
		{0.1, 100, true},  // below: cooling down, within Cooldown
		{0.1, 100, false}, // Cooldown over: cold
		{0.45, 100, true}, // hot again
	}
	for i, s := range steps {
		second(i, s.share, s.total)
		second(i+1, 0, 0) // closes interval i (an empty batch only moves the clock)
		if got := isHot(); got != s.want {
			t.Fatalf("after interval %d (share %.2f of %d): hot=%v, want %v", i, s.share, s.total, got, s.want)
		}
	}
}

// BenchmarkRecordHot is Intake.Record of one click at a time from parallel requests, half of
// them on one ad, with salting off and on: the cost of counting ads and placing events.
func BenchmarkRecordHot(b *testing.B) {
	for _, bc := range []struct {
		name  string
		salts int
	}{{"off", 0}, {"on", 4}} {
		b.Run(bc.name, func(b *testing.B) {
			in := NewIntake(IntakeOptions{Log: newMemLog(8), Dedup: dedup.NewMemory(time.Hour),
				Hot: HotOptions{Salts: bc.salts, MinEvents: 100}})
			var seq atomic.Int64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				evs := make([]event.Event, 1)
				out := make([]Outcome, 1)
				for pb.Next() {
					i := seq.Add(1)
					ad := "hot"
					if i%2 == 0 {
						ad = fmt.Sprintf("ad%d", i%1000)
					}
					evs[0] = event.Event{Type: event.TypeClick, ImpressionID: fmt.Sprintf("imp-%d", i), AdID: ad}
					if err := in.Record(context.Background(), evs, time.Now(), out); err != nil {
						b.Fatal(err)
					}
				}
			})
			if bc.salts > 0 && in.Stats().Hot.Salted == 0 && b.N > 10000 {
				b.Fatalf("nothing salted: %+v", in.Stats().Hot)
			}
		})
	}
}
