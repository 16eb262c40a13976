package attribution

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/eventlog/eventlogtest"
	"github.com/adpulse/adpulse/internal/ingest"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/metricstore/pebblestore"
	"github.com/adpulse/adpulse/internal/testseed"
	"github.com/cockroachdb/pebble/vfs"
)

// sharedWorld is random traffic for shared processing: touches and conversions of a few
// users, shuffled (touches arrive after the conversions they win) and duplicated.
type sharedWorld struct {
	touches, convs, all []event.Event
}

func newSharedWorld(rng *rand.Rand, t0 time.Time, span time.Duration) sharedWorld {
	randTime := func() int64 {
		return t0.Add(time.Duration(rng.Int64N(int64(span/time.Hour))) * time.Hour).UnixMicro()
	}
	users := []string{"u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"}
	var w sharedWorld
	for i := range 300 {
		ad := modelAds[rng.IntN(len(modelAds))]
		e := event.Event{Type: event.TypeImpression, Time: randTime(), AdID: ad.id, CampaignID: ad.campaign,
			AdvertiserID: ad.advertiser, CatalogID: ad.catalog, UserID: users[rng.IntN(len(users))], ImpressionID: fmt.Sprintf("imp-%d", i)}
		e.RecvTime = e.Time
		if rng.IntN(2) == 0 {
			e.Type = event.TypeClick
		}
		if rng.IntN(15) == 0 {
			e.Invalid = event.ReasonBot // never a touch
		} else {
			w.touches = append(w.touches, e)
		}
		w.all = append(w.all, e)
	}
	for i := range 120 {
		e := event.Event{Type: event.TypeConversion, Name: "order", Time: randTime(), EventID: fmt.Sprintf("o-%d", i),
			UserID: users[rng.IntN(len(users))], CatalogID: fmt.Sprintf("cat%d", 1+rng.IntN(3)), ValueMicros: (1 + rng.Int64N(100)) * 1_000_000}
		e.RecvTime = e.Time
		w.convs = append(w.convs, e)
		w.all = append(w.all, e)
	}
	for range 40 {
		w.all = append(w.all, w.all[rng.IntN(len(w.all))])
	}
	rng.Shuffle(len(w.all), func(i, j int) { w.all[i], w.all[j] = w.all[j], w.all[i] })
	return w
}

// want is what naiveCredit makes of the world, per level and id.
func (w *sharedWorld) want() map[metricstore.Level]map[string]metricstore.Counts {
	out := map[metricstore.Level]map[string]metricstore.Counts{}
	for _, conv := range w.convs {
		best := naiveCredit(conv, w.touches)
		if best == nil {
			continue
		}
		c := metricstore.Counts{Conversions: 1, ConversionValueMicros: conv.ValueMicros}
		if best.Type == event.TypeImpression {
			c.ViewConversions, c.ViewConversionValueMicros = 1, conv.ValueMicros
		}
		for l, id := range map[metricstore.Level]string{metricstore.LevelAd: best.AdID, metricstore.LevelCampaign: best.CampaignID, metricstore.LevelAdvertiser: best.AdvertiserID} {
			if out[l] == nil {
				out[l] = map[string]metricstore.Counts{}
			}
			x := out[l][id]
			x.Add(&c)
			out[l][id] = x
		}
	}
	return out
}

// appendByIngest appends events where ingest puts them: by ad id, conversions by user id.
func appendByIngest(t testing.TB, log eventlog.Log, evs []event.Event) {
	t.Helper()
	msgs := make([]eventlog.Message, len(evs))
	for i := range evs {
		key := evs[i].AdID
		if evs[i].Type == event.TypeConversion {
			key = evs[i].UserID
		}
		msgs[i] = eventlog.Message{Partition: ingest.Partition(key, log.Partitions()), Value: evs[i].AppendBinary(nil)}
	}
	if err := log.Append(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
}

// TestSharedModel runs three nodes' Shared stages on one log, one touches topic and one
// metric store while partitions move between them mid-stream: orderly moves (revoke, then
// assign), zombie moves (the new owner starts while the old one still runs and commits) and
// a node that leaves. A user's touches are on the partitions of their ads, their
// conversions on the partition of the user. At the end every level's conversions and values
// must equal naiveCredit's exactly.
func TestSharedModel(t *testing.T) {
	seed := testseed.Seed(t)
	rng := rand.New(rand.NewPCG(seed, 11))
	const parts = 4
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	span := 10 * 24 * time.Hour
	w := newSharedWorld(rng, t0, span)
	clock := &testClock{t: t0.Add(span + time.Hour)}
	log := eventlogtest.NewMemLog(parts, clock.Now)
	touches := eventlogtest.NewMemLog(parts, clock.Now)
	store, err := pebblestore.Open(t.TempDir(), pebblestore.Options{MinuteRetention: -1, HourRetention: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	fs := vfs.NewMem()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var nodes [3]*Shared
	runErr := make(chan error, len(nodes))
	for i := range nodes {
		nodes[i], err = NewShared(SharedOptions{Options: Options{
			Dir: fmt.Sprintf("node%d", i), FS: fs, Log: log, Metrics: store,
			Policy:      LastTouch{WindowsOf: modelWindows, MaxWindow: DefaultWindows.Click},
			MaxLateness: 30 * 24 * time.Hour, MaxTouches: 1000, CacheBytes: 1 << 20,
			ReadBytes: 200 + rng.IntN(1500), PollInterval: 2 * time.Millisecond,
		}, Touches: touches})
		if err != nil {
			t.Fatal(err)
		}
		go func() { runErr <- nodes[i].Run(ctx) }()
	}
	owner := [parts]int{}
	for p := range int32(parts) {
		if err := nodes[0].Assign(ctx, []int32{p}); err != nil {
			t.Fatal(err)
		}
	}
	moves, zombies := 0, 0
	for all := w.all; len(all) > 0; {
		n := min(len(all), 1+rng.IntN(25))
		appendByIngest(t, log, all[:n])
		all = all[n:]
		clock.Advance(time.Duration(1+rng.IntN(50)) * time.Millisecond)
		if rng.IntN(4) == 0 {
			p := int32(rng.IntN(parts))
			from := owner[p]
			to := (from + 1 + rng.IntN(len(nodes)-1)) % len(nodes)
			if rng.IntN(2) == 0 {
				nodes[from].Revoke([]int32{p})
				if err := nodes[to].Assign(ctx, []int32{p}); err != nil {
					t.Fatal(err)
				}
			} else { // zombie: both run it for a while
				if err := nodes[to].Assign(ctx, []int32{p}); err != nil {
					t.Fatal(err)
				}
				time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
				nodes[from].Revoke([]int32{p})
				zombies++
			}
			owner[p] = to
			moves++
		}
		time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
	}
	// A node leaves: its partitions go to the others.
	leaver := owner[0]
	for p := range int32(parts) {
		if owner[p] != leaver {
			continue
		}
		nodes[leaver].Revoke([]int32{p})
		owner[p] = (leaver + 1) % len(nodes)
		if err := nodes[owner[p]].Assign(ctx, []int32{p}); err != nil {
			t.Fatal(err)
		}
	}
	waitShared(t, store, log, touches, parts)
	cancel()
	for range nodes {
		if err := <-runErr; err != nil {
			t.Fatalf("Run: %v", err)
		}
	}
	checkSharedCounts(t, store, w.want(), t0.Add(-time.Hour), t0.Add(span+time.Hour))
	var st SharedStats
	var reattributed int64
	for _, n := range nodes {
		s := n.SharedStats()
		st.Restarts += s.Restarts
		st.TouchesCopied += s.TouchesCopied
		reattributed += n.Stats().Reattributed
	}
	t.Logf("%d moves (%d zombies), %d consumer restarts after a conflict, %d touches copied (%d distinct), %d credits moved by a late touch",
		moves, zombies, st.Restarts, st.TouchesCopied, len(w.touches), reattributed)
}

// waitShared waits until every partition's republisher has copied the whole log and every
// partition stage has committed the whole log and touches topic.
func waitShared(t *testing.T, store metricstore.Store, log, touches eventlog.Log, parts int) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	for {
		done := true
		for p := range int32(parts) {
			_, end, _ := log.Offsets(ctx, int(p))
			_, tend, _ := touches.Offsets(ctx, int(p))
			rep, err := store.Checkpoint(ctx, PartitionConsumer(TouchesConsumer, p))
			if err != nil {
				t.Fatal(err)
			}
			st, err := store.Checkpoint(ctx, PartitionConsumer(DefaultConsumer, p))
			if err != nil {
				t.Fatal(err)
			}
			if rep.Offsets[p] != end || st.Offsets[0] != end || st.Offsets[1] != tend {
				done = false
			}
		}
		if done {
			// The touches topic may still grow if a republisher copied after its commit
			// was read; check again once.
			time.Sleep(50 * time.Millisecond)
			again := true
			for p := range int32(parts) {
				_, tend, _ := touches.Offsets(ctx, int(p))
				st, _ := store.Checkpoint(ctx, PartitionConsumer(DefaultConsumer, p))
				again = again && st.Offsets[1] == tend
			}
			if again {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the owners did not catch up within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkSharedCounts compares every level's conversion counts over [from, to) with want.
func checkSharedCounts(t *testing.T, store metricstore.Store, want map[metricstore.Level]map[string]metricstore.Counts, from, to time.Time) {
	t.Helper()
	for _, l := range metricstore.Levels {
		ids := map[string]bool{}
		for _, ad := range modelAds {
			ids[map[metricstore.Level]string{metricstore.LevelAd: ad.id, metricstore.LevelCampaign: ad.campaign, metricstore.LevelAdvertiser: ad.advertiser}[l]] = true
		}
		var list []string
		for id := range ids {
			list = append(list, id)
		}
		res, err := store.Query(context.Background(), metricstore.Query{Level: l, IDs: list, Start: from, End: to, Interval: to.Sub(from).Truncate(time.Minute) + time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range res.Series {
			var c metricstore.Counts
			for _, p := range s.Points {
				c.Add(&p.Counts)
			}
			g, w := conversionsOnly(c), want[l][s.ID]
			if !g.Equal(&w) {
				t.Errorf("%s %s: got %v, want %v", l, s.ID, g, w)
			}
		}
	}
}

// TestSharedRebuildIsBounded: over 60 days of traffic arriving on time (touches up to the
// lateness late), partitions move between two nodes again and again, so each new owner
// rebuilds from a bounded replay (touches for TouchRetention, conversions for
// ConversionRetention) that starts long after the log does. Late touches after each move
// still move exactly the credits that were counted: the counts equal naiveCredit's.
func TestSharedRebuildIsBounded(t *testing.T) {
	seed := testseed.Seed(t)
	rng := rand.New(rand.NewPCG(seed, 12))
	const parts = 3
	t0 := time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC)
	clock := &testClock{t: t0}
	log := eventlogtest.NewMemLog(parts, clock.Now)
	touches := eventlogtest.NewMemLog(parts, clock.Now)
	store, err := pebblestore.Open(t.TempDir(), pebblestore.Options{MinuteRetention: -1, HourRetention: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var nodes [2]*Shared
	runErr := make(chan error, len(nodes))
	for i := range nodes {
		nodes[i], err = NewShared(SharedOptions{Options: Options{
			Dir: fmt.Sprintf("node%d", i), FS: vfs.NewMem(), Log: log, Metrics: store,
			Policy:      LastTouch{WindowsOf: modelWindows, MaxWindow: DefaultWindows.Click},
			MaxLateness: time.Hour, MaxTouches: 1000, CacheBytes: 1 << 20, PollInterval: 2 * time.Millisecond,
		}, Touches: touches})
		if err != nil {
			t.Fatal(err)
		}
		go func() { runErr <- nodes[i].Run(ctx) }()
	}
	owner := [parts]int{}
	for p := range int32(parts) {
		if err := nodes[0].Assign(ctx, []int32{p}); err != nil {
			t.Fatal(err)
		}
	}
	users := []string{"u1", "u2", "u3", "u4", "u5"}
	var w sharedWorld
	moves := 0
	for day := range 60 {
		for i := range 12 {
			now := t0.Add(time.Duration(day)*24*time.Hour + time.Duration(i)*2*time.Hour)
			clock.Advance(now.Sub(clock.Now()))
			var batch []event.Event
			for k := range 4 {
				ad := modelAds[rng.IntN(len(modelAds))]
				e := event.Event{Type: event.TypeClick, Time: now.Add(-time.Duration(rng.IntN(50)) * time.Minute).UnixMicro(), AdID: ad.id, CampaignID: ad.campaign,
					AdvertiserID: ad.advertiser, CatalogID: ad.catalog, UserID: users[rng.IntN(len(users))], ImpressionID: fmt.Sprintf("imp-%d-%d-%d", day, i, k)}
				if rng.IntN(3) > 0 {
					e.Type = event.TypeImpression
				}
				e.RecvTime = now.UnixMicro()
				w.touches = append(w.touches, e)
				batch = append(batch, e)
			}
			if rng.IntN(2) == 0 {
				e := event.Event{Type: event.TypeConversion, Name: "order", Time: now.Add(-time.Duration(rng.IntN(30)) * time.Minute).UnixMicro(), EventID: fmt.Sprintf("o-%d-%d", day, i),
					UserID: users[rng.IntN(len(users))], CatalogID: fmt.Sprintf("cat%d", 1+rng.IntN(3)), ValueMicros: (1 + rng.Int64N(100)) * 1_000_000, RecvTime: now.UnixMicro()}
				w.convs = append(w.convs, e)
				batch = append(batch, e)
			}
			rng.Shuffle(len(batch), func(i, j int) { batch[i], batch[j] = batch[j], batch[i] })
			appendByIngest(t, log, batch)
		}
		if day%5 == 4 {
			waitShared(t, store, log, touches, parts) // each move rebuilds from a long log
			p := int32(rng.IntN(parts))
			nodes[owner[p]].Revoke([]int32{p})
			owner[p] = 1 - owner[p]
			if err := nodes[owner[p]].Assign(ctx, []int32{p}); err != nil {
				t.Fatal(err)
			}
			moves++
		}
	}
	waitShared(t, store, log, touches, parts)
	cancel()
	for range nodes {
		if err := <-runErr; err != nil {
			t.Fatalf("Run: %v", err)
		}
	}
	checkSharedCounts(t, store, w.want(), t0.Add(-time.Hour), t0.Add(61*24*time.Hour))
	var consumed int64
	for _, n := range nodes {
		consumed += n.Stats().EventsConsumed
	}
	t.Logf("%d moves; %d touches, %d conversions; the stages consumed %d messages in all", moves, len(w.touches), len(w.convs), consumed)
}

// TestSharedTouchesTopicTimesDoNotForget: the touches topic's append times are when a
// touch was republished, not when it reached the log; a round that reads touches stamped
// far ahead of the conversions not yet read must not forget the touches those conversions
// need (the clock that forgets touches is the log's).
func TestSharedTouchesTopicTimesDoNotForget(t *testing.T) {
	logClock := &testClock{t: t0.Add(7 * 24 * time.Hour)}
	topicClock := &testClock{t: t0.Add(7*24*time.Hour + 3*time.Hour)}
	log := eventlogtest.NewMemLog(1, logClock.Now)
	touches := eventlogtest.NewMemLog(1, topicClock.Now)
	store, err := pebblestore.Open(t.TempDir(), pebblestore.Options{MinuteRetention: -1, HourRetention: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx := context.Background()
	s, err := openPartition(ctx, Options{Dir: "p0", FS: vfs.NewMem(), Log: log, Metrics: store}, touches, 0, "attribute/p0", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	k := click("imp-1", "ad1", "u1", t0.Add(time.Hour))
	if err := touches.Append(ctx, []eventlog.Message{{Value: k.AppendBinary(nil)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.round(ctx); err != nil {
		t.Fatal(err)
	}
	o := order("o1", "u1", 10_000_000, t0.Add(7*24*time.Hour-time.Minute))
	if err := log.Append(ctx, []eventlog.Message{{Value: o.AppendBinary(nil)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.round(ctx); err != nil {
		t.Fatal(err)
	}
	if c, err := s.Conversion("o1"); err != nil || !c.Credited || c.Touch.Key != k.Key() {
		t.Fatalf("o1: %+v, %v; want credited to %s", c, err, k.Key())
	}
}

// TestSharedLateWriteOfPreviousOwner: the previous owner of a partition commits a round
// after the new owner read the checkpoint and before the new owner's first commit (its
// last Apply landing late; the epoch fence only refuses it once the new owner has
// committed). The previous owner's round has the order only, decided without the click that
// wins it; the new owner's first round has that click only (the order's append time is
// later, so the round is trimmed before it). The new owner's commit must conflict and the
// stage rebuild with the previous owner's round in, so that the click takes the credit;
// landing beside it would leave the order uncredited for good (the rebuilt stage replays
// both and emits nothing).
func TestSharedLateWriteOfPreviousOwner(t *testing.T) {
	logClock := &testClock{t: t0.Add(2 * time.Hour)}
	topicClock := &testClock{t: t0.Add(time.Hour)}
	log := eventlogtest.NewMemLog(1, logClock.Now)
	touches := eventlogtest.NewMemLog(1, topicClock.Now)
	store, err := pebblestore.Open(t.TempDir(), pebblestore.Options{MinuteRetention: -1, HourRetention: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx := context.Background()
	fs := vfs.NewMem()
	open := func(dir string, epoch uint64) *Stage {
		s, err := openPartition(ctx, Options{Dir: dir, FS: fs, Log: log, Metrics: store}, touches, 0, "attribute/p0", epoch)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	old := open("old", 1)
	defer old.Close()
	next := open("next", 2) // the claim: epoch 2 reads the checkpoint

	o := order("o1", "u1", 10_000_000, t0.Add(90*time.Minute))
	if err := log.Append(ctx, []eventlog.Message{{Value: o.AppendBinary(nil)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := old.round(ctx); err != nil { // the previous owner's late write
		t.Fatal(err)
	}
	k := click("imp-1", "ad1", "u1", t0.Add(30*time.Minute))
	if err := touches.Append(ctx, []eventlog.Message{{Value: k.AppendBinary(nil)}}); err != nil {
		t.Fatal(err)
	}
	// The new owner runs as runStage does: rebuilt from the store after a conflict.
	for i := 0; ; i++ {
		if i > 20 {
			t.Fatal("the new owner did not catch up")
		}
		n, err := next.round(ctx)
		if errors.Is(err, metricstore.ErrConflict) {
			next.Close()
			next = open("next", 2)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 && !next.sh.replaying {
			break
		}
	}
	defer next.Close()
	if c, err := next.Conversion("o1"); err != nil || !c.Credited || c.Touch.Key != k.Key() {
		t.Fatalf("o1 in the new owner: %+v, %v; want credited to %s", c, err, k.Key())
	}
	res, err := store.Query(ctx, metricstore.Query{Level: metricstore.LevelCampaign, IDs: []string{"c-ad1"}, Start: t0, End: t0.Add(3 * time.Hour), Interval: 3 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	var got metricstore.Counts
	for _, p := range res.Series[0].Points {
		got.Add(&p.Counts)
	}
	if got.Conversions != 1 || got.ConversionValueMicros != 10_000_000 {
		t.Fatalf("c-ad1 in the store: %d conversions, %d value; want 1 and 10000000", got.Conversions, got.ConversionValueMicros)
	}
}
