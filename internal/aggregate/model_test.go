package aggregate

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/eventlog/eventlogtest"
	"github.com/adpulse/adpulse/internal/eventlog/locallog"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/metricstore/pebblestore"
	"github.com/cockroachdb/pebble/vfs"
)

var modelSteps = flag.Int("model.steps", 800, "time steps of TestModel (about 45 events each)")

// checkStore wraps the store under test: it can fail an Apply without applying it (a crash
// between computing and committing), and it checks finality: no commit may touch a bucket
// that an earlier commit declared final.
type checkStore struct {
	metricstore.Store
	mu          sync.Mutex
	applies     int
	failAt      int   // fail the Apply with this number (1-based); 0: never
	finalBefore int64 // Unix seconds, the highest committed
	violations  []string
}

var errInjected = errors.New("injected failure before commit")

func (s *checkStore) Apply(ctx context.Context, c *metricstore.Commit) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applies++
	if s.applies == s.failAt {
		return errInjected
	}
	for _, d := range c.Deltas {
		if s.finalBefore != 0 && (d.Minute+1)*60 <= s.finalBefore && len(s.violations) < 10 {
			s.violations = append(s.violations, fmt.Sprintf("commit %d changes %v %q at %v, final before %v",
				s.applies, d.Level, d.ID, time.Unix(d.Minute*60, 0).UTC(), time.Unix(s.finalBefore, 0).UTC()))
		}
	}
	err := s.Store.Apply(ctx, c)
	if err == nil && !c.FinalBefore.IsZero() {
		s.finalBefore = max(s.finalBefore, c.FinalBefore.Unix())
	}
	return err
}

// modelEnv is one model test: a clock, a log, a store on a file system that can lose
// unsynced writes, and the aggregator currently running.
type modelEnv struct {
	t     *testing.T
	seed  uint64
	parts int           // log partitions
	span  time.Duration // DedupSpan
	rng   *rand.Rand
	clock atomic.Int64 // Unix micros
	log   eventlog.Log
	fs    *vfs.MemFS
	store *checkStore
	opts  Options

	agg    *Aggregator
	cancel context.CancelFunc
	runErr chan error
}

const (
	modelLateness = 2 * time.Hour
	modelSlack    = 10 * time.Second
)

func (m *modelEnv) now() time.Time { return time.UnixMicro(m.clock.Load()) }

func (m *modelEnv) openStore() {
	s, err := pebblestore.Open("db", pebblestore.Options{FS: m.fs, Now: m.now, CacheBytes: 8 << 20})
	if err != nil {
		m.t.Fatalf("seed %d: open store: %v", m.seed, err)
	}
	if m.store == nil {
		m.store = &checkStore{}
	}
	m.store.Store = s
	// Commits lost in a crash took their FinalBefore with them: check against what survived.
	cp, err := s.Checkpoint(context.Background(), DefaultConsumer)
	if err != nil {
		m.t.Fatal(err)
	}
	m.store.finalBefore = 0
	if !cp.FinalBefore.IsZero() {
		m.store.finalBefore = cp.FinalBefore.Unix()
	}
}

func (m *modelEnv) start() {
	o := m.opts
	o.Store = m.store
	a, err := New(o)
	if err != nil {
		m.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.agg, m.cancel, m.runErr = a, cancel, make(chan error, 1)
	go func() { m.runErr <- a.Run(ctx) }()
}

// waitCaughtUp waits until the aggregator has consumed and committed the whole log.
func (m *modelEnv) waitCaughtUp() {
	ends := logEnds(m.t, m.log)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		st := m.agg.Stats()
		done := len(st.Partitions) == len(ends)
		for p := range st.Partitions {
			done = done && st.Partitions[p].Committed == ends[p]
		}
		if done {
			return
		}
		select {
		case err := <-m.runErr:
			m.t.Fatalf("seed %d: aggregator stopped: %v", m.seed, err)
		case <-time.After(2 * time.Millisecond):
		}
	}
	m.t.Fatalf("seed %d: aggregator did not catch up with %v: %+v", m.seed, ends, m.agg.Stats().Partitions)
}

// disrupt stops the running aggregator in one of several ways and starts a new one.
func (m *modelEnv) disrupt() string {
	// Let it run a little first, so the stop lands anywhere: mid-read, mid-commit, idle.
	time.Sleep(time.Duration(m.rng.IntN(3000)) * time.Microsecond)
	var how string
	switch m.rng.IntN(4) {
	case 0:
		how = "orderly stop"
		m.cancel()
		if err := <-m.runErr; err != nil {
			m.t.Fatalf("seed %d: orderly stop: %v", m.seed, err)
		}
	case 1:
		how = "Close without flush"
		m.agg.Close()
		if err := <-m.runErr; err != nil && !errors.Is(err, ErrClosed) {
			m.t.Fatalf("seed %d: run after Close: %v", m.seed, err)
		}
	case 2:
		how = "failed commit"
		m.store.mu.Lock()
		m.store.failAt = m.store.applies + 1
		m.store.mu.Unlock()
		m.clock.Add(1e6) // something to commit even when idle: the watermark moves
		select {
		case err := <-m.runErr:
			if !errors.Is(err, errInjected) {
				m.t.Fatalf("seed %d: run ended with %v, want the injected failure", m.seed, err)
			}
		case <-time.After(10 * time.Second):
			m.t.Fatalf("seed %d: aggregator did not commit within 10s: %+v", m.seed, m.agg.Stats())
		}
		m.agg.Close()
	case 3:
		how = "power loss"
		// From now on nothing reaches the disk; then the process dies.
		m.fs.SetIgnoreSyncs(true)
		m.agg.Close()
		<-m.runErr
		if err := m.store.Store.Close(); err != nil {
			m.t.Fatalf("seed %d: close store: %v", m.seed, err)
		}
		m.fs.ResetToSyncedState()
		m.fs.SetIgnoreSyncs(false)
		m.openStore()
	}
	m.cancel()
	m.start()
	return how
}

// TestModel feeds a random event stream (duplicates near and far, out-of-order and late
// events, invalid clicks and impressions, every event type, undecodable records, several
// partitions) through the real aggregator into the real Pebble store, stopping and crashing
// the aggregator at random points, and compares every bucket with a naive model.
func TestModel(t *testing.T) {
	seed := testSeed(t)
	// A few rounds from one seed, each with its own shape: one partition or several, a
	// short duplicate span or a longer one.
	for round, shape := range []struct {
		log   string
		parts int
		span  time.Duration
	}{{"memlog", 4, 40 * time.Minute}, {"memlog", 1, 7 * time.Minute}, {"memlog", 7, 3 * time.Hour}, {"locallog", 3, time.Hour}} {
		t.Run(fmt.Sprintf("%s,partitions=%d,span=%v", shape.log, shape.parts, shape.span), func(t *testing.T) {
			runModel(t, seed+uint64(round), shape.log, shape.parts, shape.span)
		})
	}
}

func runModel(t *testing.T, seed uint64, logKind string, parts int, span time.Duration) {
	t.Logf("round seed %d", seed)
	m := &modelEnv{t: t, seed: seed, parts: parts, span: span, rng: rand.New(rand.NewPCG(seed, 42)), fs: vfs.NewStrictMem()}
	t0 := time.Date(2026, 11, 21, 16, 0, 0, 0, time.UTC)
	m.clock.Store(t0.UnixMicro())
	switch logKind {
	case "memlog":
		m.log = eventlogtest.NewMemLog(parts, m.now)
	case "locallog":
		l, err := locallog.Open(locallog.Options{Dir: t.TempDir(), Partitions: parts, Now: m.now})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		m.log = l
	}
	m.opts = Options{
		Log:            m.log,
		CommitInterval: time.Duration(1+m.rng.IntN(20)) * time.Millisecond,
		MaxLateness:    modelLateness,
		Slack:          modelSlack,
		DedupSpan:      span,
		ReadBytes:      1 + m.rng.IntN(4000), // small reads: many batches, commits mid-stream
		PollInterval:   time.Millisecond,
		MaxPending:     50 + m.rng.IntN(500),
		Now:            m.now,
	}
	m.openStore()
	m.start()
	gen := &generator{rng: m.rng, history: make([][]event.Event, parts)}
	var disruptions []string
	for step := range *modelSteps {
		m.clock.Add(int64(m.rng.IntN(120)) * 1e6)
		msgs := gen.step(m.now())
		if err := m.log.Append(context.Background(), msgs); err != nil {
			t.Fatal(err)
		}
		if m.rng.IntN(12) == 0 {
			disruptions = append(disruptions, fmt.Sprintf("step %d: %s", step, m.disrupt()))
		}
	}
	t.Logf("disruptions: %v", disruptions)
	m.waitCaughtUp()
	// Once idle, everything up to now - slack - lateness is final: move the clock so that
	// part of the range is final and part is not.
	m.clock.Add(int64(modelLateness/time.Microsecond) / 2)
	m.cancel()
	if err := <-m.runErr; err != nil {
		t.Fatalf("seed %d: orderly stop: %v", seed, err)
	}
	st := m.agg.Stats()
	t.Logf("stats: consumed %d counted %d dups %d uncounted %d corrupt %d commits %d, final before %v",
		st.EventsConsumed, st.EventsCounted, st.Duplicates, st.Uncounted, st.Corrupt, st.Commits, st.FinalBefore)
	if len(m.store.violations) > 0 {
		t.Fatalf("seed %d: finality broken: %v", seed, m.store.violations)
	}
	if st.LateAfterFinal != 0 {
		t.Errorf("seed %d: %d events counted after their bucket was final", seed, st.LateAfterFinal)
	}
	want := buildModel(t, m.log, span)
	compareModel(t, seed, m.store, want, m.agg.FinalBefore())
	m.agg.Close()
	m.store.Store.Close()
}

// generator makes a plausible event stream: ads in campaigns in advertisers, impressions
// followed by clicks and interactions on the same impression, retries.
type generator struct {
	rng     *rand.Rand
	imp     int
	evid    int
	history [][]event.Event // per partition
}

func adOf(i int) (ad, campaign, advertiser string) {
	return fmt.Sprintf("ad-%d", i), fmt.Sprintf("c-%d", i%7), fmt.Sprintf("adv-%d", i%7%3)
}

const modelAds = 25

var interactionNames = []string{"add_to_cart", "purchase", "view_item", "lead"}

func (g *generator) step(now time.Time) []eventlog.Message {
	rng := g.rng
	var msgs []eventlog.Message
	for range rng.IntN(90) {
		recv := now.UnixMicro() - rng.Int64N(int64(modelSlack/time.Microsecond)/2)
		i := rng.IntN(1 + rng.IntN(modelAds)) // skewed towards low ids
		p := i % len(g.history)
		var e event.Event
		h := g.history[p]
		switch r := rng.IntN(100); {
		case r < 12 && len(h) > 0:
			// A retry of a recent event: the same key, received again, maybe with a new
			// event time (a click's time is its receive time).
			e = h[max(0, len(h)-1-rng.IntN(min(len(h), 400)))]
			if rng.IntN(2) == 0 || e.Time < recv-modelLateness.Microseconds() {
				e.Time = recv // ingest would reject the old time as too late
			}
			e.RecvTime = recv
		case r < 14:
			// Undecodable: the aggregator must skip it without losing its place.
			msgs = append(msgs, eventlog.Message{Partition: int32(p), Value: []byte{9, 9, 9}})
			continue
		default:
			ad, c, adv := adOf(i)
			e = event.Event{AdID: ad, CampaignID: c, AdvertiserID: adv, RecvTime: recv, UserID: "u"}
			if rng.IntN(50) == 0 {
				e.CampaignID, e.AdvertiserID = "", "" // unresolved: counted at ad level only
			}
			switch t := rng.IntN(100); {
			case t < 55 || len(h) == 0:
				g.imp++
				e.Type, e.ImpressionID = event.TypeImpression, fmt.Sprintf("imp-%d", g.imp)
				if rng.IntN(20) == 0 {
					e.Invalid = event.ReasonBot
				}
			case t < 85:
				e.Type = event.TypeClick
				e.ImpressionID = fmt.Sprintf("imp-%d", g.imp-rng.IntN(min(g.imp, 30)))
				if rng.IntN(5) == 0 {
					e.Invalid = []event.Reason{event.ReasonExpired, event.ReasonBot, 3, 9}[rng.IntN(4)]
				}
			default:
				e.Type, e.Name = event.TypeInteraction, interactionNames[rng.IntN(len(interactionNames))]
				e.ImpressionID = fmt.Sprintf("imp-%d", g.imp-rng.IntN(min(g.imp, 30)))
				if rng.IntN(2) == 0 {
					g.evid++
					e.EventID = fmt.Sprintf("ev-%d", g.evid)
				}
			}
			switch r := rng.IntN(100); {
			case r < 80:
				e.Time = recv - rng.Int64N(30e6) // a little behind
			case r < 95:
				e.Time = recv - rng.Int64N(int64(modelLateness/time.Microsecond)) // late, within lateness
			default:
				e.Time = recv + rng.Int64N(300e6) // client clock ahead (within max skew)
			}
		}
		g.history[p] = append(g.history[p], e)
		msgs = append(msgs, eventlog.Message{Partition: int32(p), Value: e.AppendBinary(nil)})
	}
	return msgs
}

type modelKey struct {
	level  metricstore.Level
	id     string
	minute int64
}

// buildModel counts the log naively: event.Decode, the duplicate rule by Key() strings and
// a linear look-back, and the counting rules of the package comment.
func buildModel(t *testing.T, l eventlog.Log, span time.Duration) map[modelKey]*metricstore.Counts {
	out := make(map[modelKey]*metricstore.Counts)
	add := func(l metricstore.Level, id string, minute int64, f func(c *metricstore.Counts)) {
		if id == "" {
			return
		}
		k := modelKey{l, id, minute}
		if out[k] == nil {
			out[k] = &metricstore.Counts{}
		}
		f(out[k])
	}
	for p := range l.Partitions() {
		var msgs []eventlog.Message
		for off := int64(0); ; {
			batch, err := l.Read(context.Background(), p, off, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			if len(batch) == 0 {
				break
			}
			msgs = append(msgs, batch...)
			off = batch[len(batch)-1].Offset + 1
		}
		latest := make(map[string]int64) // key -> latest receive time so far
		for _, msg := range msgs {
			var e event.Event
			if e.Decode(msg.Value) != nil {
				continue
			}
			// The rule: some earlier event of the partition with the same key was received at
			// most span before this one, i.e. the latest such receive time is that recent.
			k := e.Key()
			last, seen := latest[k]
			if k != "" {
				latest[k] = max(last, e.RecvTime)
			}
			if k != "" && seen && e.RecvTime-last <= span.Microseconds() {
				continue
			}
			if e.Type != event.TypeClick && e.Invalid != event.ReasonNone {
				continue
			}
			minute := e.Time / 60e6
			f := func(c *metricstore.Counts) {
				switch {
				case e.Type == event.TypeImpression:
					c.Impressions++
				case e.Type == event.TypeClick && e.Invalid == event.ReasonNone:
					c.Clicks++
				case e.Type == event.TypeClick:
					c.AddInvalid(e.Invalid, 1)
				default:
					c.AddInteraction(e.Name, 1)
				}
			}
			add(metricstore.LevelAd, e.AdID, minute, f)
			add(metricstore.LevelCampaign, e.CampaignID, minute, f)
			add(metricstore.LevelAdvertiser, e.AdvertiserID, minute, f)
		}
	}
	return out
}

func compareModel(t *testing.T, seed uint64, s metricstore.Store, want map[modelKey]*metricstore.Counts, finalBefore time.Time) {
	ids := map[metricstore.Level][]string{}
	lo, hi := int64(1<<62), int64(0)
	for k := range want {
		lo, hi = min(lo, k.minute), max(hi, k.minute)
	}
	for i := range modelAds {
		ad, c, adv := adOf(i)
		ids[metricstore.LevelAd] = append(ids[metricstore.LevelAd], ad)
		ids[metricstore.LevelCampaign] = append(ids[metricstore.LevelCampaign], c)
		ids[metricstore.LevelAdvertiser] = append(ids[metricstore.LevelAdvertiser], adv)
	}
	kolkata, err := time.LoadLocation("Asia/Kolkata")
	if err != nil {
		t.Fatal(err)
	}
	var finals, points int
	for _, iv := range []struct {
		d   time.Duration
		loc *time.Location
	}{{time.Minute, nil}, {5 * time.Minute, nil}, {time.Hour, nil}, {24 * time.Hour, nil}, {24 * time.Hour, kolkata}} {
		for _, level := range metricstore.Levels {
			q := metricstore.Query{Level: level, IDs: append(ids[level], "nope"), Start: time.Unix(lo*60, 0), End: time.Unix((hi+1)*60, 0), Interval: iv.d, Location: iv.loc}
			res, err := s.Query(context.Background(), q)
			if err != nil {
				t.Fatalf("seed %d: query: %v", seed, err)
			}
			if !res.FinalBefore.Equal(finalBefore) {
				t.Errorf("seed %d: result FinalBefore %v, aggregator says %v", seed, res.FinalBefore, finalBefore)
			}
			b, _ := q.Buckets()
			for i, se := range res.Series {
				for j, p := range se.Points {
					var exp metricstore.Counts
					for mnt := b[j]; mnt < b[j+1]; mnt++ {
						if c := want[modelKey{level, q.IDs[i], mnt}]; c != nil {
							exp.Add(c)
						}
					}
					if !p.Equal(&exp) {
						t.Fatalf("seed %d: interval %v zone %v %v %q at %v: store %v, model %v", seed, iv.d, iv.loc, level, q.IDs[i], p.Time, p.Counts, exp)
					}
					if wantFinal := b[j+1]*60 <= finalBefore.Unix(); p.Final != wantFinal {
						t.Fatalf("seed %d: %v %q at %v: final %v, want %v (final before %v)", seed, level, q.IDs[i], p.Time, p.Final, wantFinal, finalBefore)
					}
					points++
					if p.Final {
						finals++
					}
				}
			}
		}
	}
	if finals == 0 || finals == points {
		t.Errorf("seed %d: %d of %d points final; the test should see both", seed, finals, points)
	}
}

func logEnds(t *testing.T, l eventlog.Log) []int64 {
	ends := make([]int64, l.Partitions())
	for p := range ends {
		_, end, err := l.Offsets(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		ends[p] = end
	}
	return ends
}
