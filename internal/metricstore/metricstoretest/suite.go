// Package metricstoretest is the conformance suite of metricstore.Store: every implementation
// (pebblestore, clickhousestore) runs it from its own tests with Run.
//
// The suite writes only buckets within the last four days of the wall clock, so it holds for
// any store that keeps at least that much minute data. Random cases are driven by the seed
// given to Run (callers take it from testseed.Seed; 0 picks one from the clock); it is
// logged and named in every failure message, so a failure can be replayed exactly.
package metricstoretest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/metricstore"
)

// Opener opens the store under test. The first call of an Opener creates an empty store;
// each later call, made after the previous store was closed, reopens the same data.
type Opener func() (metricstore.Store, error)

// Factory returns an Opener for a new, empty store, cleaning up with t.Cleanup.
type Factory func(t *testing.T) Opener

// Run runs the conformance suite. seed drives the random cases (0 picks one and logs it).
func Run(t *testing.T, newStore Factory, seed uint64) {
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("metricstoretest seed %d", seed)
	cases := []struct {
		name string
		f    func(t *testing.T, open Opener, seed uint64)
	}{
		{"EmptySeriesInRequestOrder", testEmpty},
		{"ApplyAndRead", testApplyAndRead},
		{"AdditiveAndNegative", testAdditive},
		{"LevelsAreSeparate", testLevels},
		{"IntervalsAndZonesMatchModel", testIntervalsModel},
		{"AlignmentEchoed", testAlignment},
		{"CheckpointFence", testCheckpointFence},
		{"FinalFlags", testFinal},
		{"ReopenKeepsEverything", testReopen},
		{"InvalidInput", testInvalid},
		{"Closed", testClosed},
		{"ConcurrentApplyAndQuery", testConcurrent},
		{"Reconciled", testReconciled},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.f(t, newStore(t), seed)
		})
	}
}

func mustOpen(t *testing.T, open Opener) metricstore.Store {
	t.Helper()
	s, err := open()
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return s
}

// base is a minute a little over two days ago, on an hour boundary, so ranges around it hold
// days, hours and minutes of every kind.
func base() int64 {
	now := time.Now().Unix() / 60
	return (now - 2*1440) / 60 * 60
}

func rg(p int32, from, to int64) metricstore.OffsetRange {
	return metricstore.OffsetRange{Partition: p, From: from, To: to}
}

func mt(minute int64) time.Time { return time.Unix(minute*60, 0).UTC() }

func apply(t *testing.T, s metricstore.Store, c *metricstore.Commit) {
	t.Helper()
	if c.Consumer == "" {
		c.Consumer = "test"
	}
	if err := s.Apply(context.Background(), c); err != nil {
		t.Fatalf("apply: %v", err)
	}
}

func query(t *testing.T, s metricstore.Store, q metricstore.Query) *metricstore.Result {
	t.Helper()
	r, err := s.Query(context.Background(), q)
	if err != nil {
		t.Fatalf("query %+v: %v", q, err)
	}
	return r
}

func testEmpty(t *testing.T, open Opener, _ uint64) {
	s := mustOpen(t, open)
	defer s.Close()
	m := base()
	ids := []string{"z", "a", "m", "a"}
	r := query(t, s, metricstore.Query{Level: metricstore.LevelAd, IDs: ids, Start: mt(m), End: mt(m + 10), Interval: time.Minute})
	if len(r.Series) != len(ids) {
		t.Fatalf("got %d series, want %d", len(r.Series), len(ids))
	}
	for i, se := range r.Series {
		if se.ID != ids[i] {
			t.Errorf("series %d is %q, want %q (request order)", i, se.ID, ids[i])
		}
		if len(se.Points) != 10 {
			t.Fatalf("series %q has %d points, want 10", se.ID, len(se.Points))
		}
		for j, p := range se.Points {
			if !p.Time.Equal(mt(m+int64(j))) || p.Time.Location() != time.UTC {
				t.Errorf("point %d at %v, want %v UTC", j, p.Time, mt(m+int64(j)))
			}
			if !p.IsZero() || p.Final {
				t.Errorf("point %d = %v final=%v, want zero, not final", j, p.Counts, p.Final)
			}
		}
	}
}

func testApplyAndRead(t *testing.T, open Opener, _ uint64) {
	s := mustOpen(t, open)
	defer s.Close()
	m := base() + 7
	c := metricstore.Counts{Impressions: 40, Clicks: 3, SpendMicros: 1500000}
	c.AddInvalid(event.ReasonExpired, 2)
	c.AddInvalid(event.ReasonBot, 1)
	c.AddInteraction("add_to_cart", 1)
	c.AddInteraction("purchase", 5)
	apply(t, s, &metricstore.Commit{Deltas: []metricstore.Delta{
		{Level: metricstore.LevelAd, ID: "1", Minute: m, Counts: c},
		{Level: metricstore.LevelAd, ID: "1", Minute: m + 2, Counts: metricstore.Counts{Impressions: 7, Clicks: 1}},
	}})
	r := query(t, s, metricstore.Query{Level: metricstore.LevelAd, IDs: []string{"1"}, Start: mt(m), End: mt(m + 3), Interval: time.Minute})
	want := []metricstore.Counts{c, {}, {Impressions: 7, Clicks: 1}}
	for i, p := range r.Series[0].Points {
		if !p.Equal(&want[i]) {
			t.Errorf("point %d = %v, want %v", i, p.Counts, want[i])
		}
	}
}

func testAdditive(t *testing.T, open Opener, _ uint64) {
	s := mustOpen(t, open)
	defer s.Close()
	m := base() + 30
	d := func(c metricstore.Counts) []metricstore.Delta {
		return []metricstore.Delta{{Level: metricstore.LevelCampaign, ID: "c", Minute: m, Counts: c}}
	}
	apply(t, s, &metricstore.Commit{Deltas: d(metricstore.Counts{Clicks: 2, SpendMicros: 1000, Interactions: map[string]int64{"x": 1}})})
	apply(t, s, &metricstore.Commit{Deltas: d(metricstore.Counts{Clicks: 1, SpendMicros: -300, Interactions: map[string]int64{"x": 2, "y": 1}})})
	apply(t, s, &metricstore.Commit{Deltas: d(metricstore.Counts{Clicks: -1, InvalidClicks: 1, InvalidByReason: map[event.Reason]int64{event.ReasonBot: 1}})})
	want := metricstore.Counts{Clicks: 2, SpendMicros: 700, InvalidClicks: 1,
		InvalidByReason: map[event.Reason]int64{event.ReasonBot: 1}, Interactions: map[string]int64{"x": 3, "y": 1}}
	for _, iv := range []time.Duration{time.Minute, time.Hour, 24 * time.Hour} {
		r := query(t, s, metricstore.Query{Level: metricstore.LevelCampaign, IDs: []string{"c"}, Start: mt(m), End: mt(m + 1), Interval: iv})
		if got := r.Series[0].Points[0].Counts; !got.Equal(&want) {
			t.Errorf("interval %v: got %v, want %v", iv, got, want)
		}
	}
}

func testLevels(t *testing.T, open Opener, _ uint64) {
	s := mustOpen(t, open)
	defer s.Close()
	m := base()
	var ds []metricstore.Delta
	for i, l := range metricstore.Levels {
		ds = append(ds, metricstore.Delta{Level: l, ID: "same", Minute: m, Counts: metricstore.Counts{Impressions: int64(i + 1)}})
	}
	apply(t, s, &metricstore.Commit{Deltas: ds})
	for i, l := range metricstore.Levels {
		r := query(t, s, metricstore.Query{Level: l, IDs: []string{"same", "sam", "samee"}, Start: mt(m), End: mt(m + 1), Interval: time.Minute})
		if got := r.Series[0].Points[0].Impressions; got != int64(i+1) {
			t.Errorf("level %v: impressions %d, want %d", l, got, i+1)
		}
		for _, se := range r.Series[1:] {
			if !se.Points[0].IsZero() {
				t.Errorf("level %v id %q: %v, want zero (ids must not bleed into each other)", l, se.ID, se.Points[0].Counts)
			}
		}
	}
}

// model is a naive store: a list of deltas summed on demand.
type model []metricstore.Delta

func (m model) series(t *testing.T, q metricstore.Query) [][]metricstore.Counts {
	b, err := q.Buckets()
	if err != nil {
		t.Fatalf("buckets: %v", err)
	}
	out := make([][]metricstore.Counts, len(q.IDs))
	for i, id := range q.IDs {
		out[i] = make([]metricstore.Counts, len(b)-1)
		for _, d := range m {
			if d.Level != q.Level || d.ID != id {
				continue
			}
			for j := 0; j+1 < len(b); j++ {
				if b[j] <= d.Minute && d.Minute < b[j+1] {
					out[i][j].Add(&d.Counts)
				}
			}
		}
	}
	return out
}

// Zones worth testing: fractional offsets (+05:30, +05:45), DST with 1h and 30m shifts,
// negative offsets, and a zone far east of UTC.
var zones = []string{"Asia/Kolkata", "Asia/Kathmandu", "America/New_York", "Australia/Lord_Howe", "Pacific/Chatham", "Pacific/Kiritimati"}

func testIntervalsModel(t *testing.T, open Opener, seed uint64) {
	s := mustOpen(t, open)
	defer s.Close()
	rng := rand.New(rand.NewPCG(seed, 1))
	lo := base() - 1440/2 + int64(rng.IntN(60))
	span := int64(3 * 1440)
	var m model
	ids := []string{"a", "b", "c"}
	for range 20 {
		var c metricstore.Commit
		for range 1 + rng.IntN(40) {
			d := metricstore.Delta{Level: metricstore.Levels[rng.IntN(3)], ID: ids[rng.IntN(len(ids))], Minute: lo + rng.Int64N(span)}
			d.Impressions = rng.Int64N(100)
			d.Clicks = rng.Int64N(5)
			d.SpendMicros = rng.Int64N(1e6) - 1e5
			if rng.IntN(3) == 0 {
				d.AddInvalid(event.Reason(1+rng.IntN(3)), 1+rng.Int64N(3))
			}
			if rng.IntN(3) == 0 {
				d.AddInteraction([]string{"add_to_cart", "purchase", "view_item"}[rng.IntN(3)], 1+rng.Int64N(3))
			}
			c.Deltas = append(c.Deltas, d)
			m = append(m, d)
		}
		apply(t, s, &c)
	}
	type iv struct {
		d    time.Duration
		zone string
	}
	ivs := []iv{{time.Minute, ""}, {5 * time.Minute, ""}, {7 * time.Minute, ""}, {time.Hour, ""}, {2 * time.Hour, ""},
		{90 * time.Minute, ""}, {24 * time.Hour, ""}, {48 * time.Hour, ""}, {time.Hour, "Asia/Kolkata"}}
	for _, z := range zones {
		ivs = append(ivs, iv{24 * time.Hour, z})
	}
	ivs = append(ivs, iv{48 * time.Hour, "Asia/Kolkata"})
	for _, x := range ivs {
		var loc *time.Location
		if x.zone != "" {
			var err error
			if loc, err = time.LoadLocation(x.zone); err != nil {
				t.Fatalf("load zone: %v", err)
			}
		}
		// A few random sub-ranges too, so edges fall everywhere.
		ranges := [][2]int64{{lo, lo + span}}
		for range 3 {
			a := lo + rng.Int64N(span)
			ranges = append(ranges, [2]int64{a, a + 1 + rng.Int64N(span-(a-lo))})
		}
		for _, rg := range ranges {
			for _, l := range metricstore.Levels {
				q := metricstore.Query{Level: l, IDs: []string{"c", "a", "b", "nope"}, Start: mt(rg[0]), End: mt(rg[1]), Interval: x.d, Location: loc}
				got := query(t, s, q)
				want := m.series(t, q)
				for i := range want {
					if len(got.Series[i].Points) != len(want[i]) {
						t.Fatalf("seed %d %v %s %v %s: %d points, want %d", seed, x.d, x.zone, l, q.IDs[i], len(got.Series[i].Points), len(want[i]))
					}
					for j := range want[i] {
						if p := got.Series[i].Points[j]; !p.Equal(&want[i][j]) {
							t.Fatalf("seed %d interval %v zone %q level %v id %q range [%v, %v) point %d at %v: got %v, want %v",
								seed, x.d, x.zone, l, q.IDs[i], mt(rg[0]), mt(rg[1]), j, p.Time, p.Counts, want[i][j])
						}
					}
				}
			}
		}
	}
}

func testAlignment(t *testing.T, open Opener, _ uint64) {
	s := mustOpen(t, open)
	defer s.Close()
	m := base()
	q := metricstore.Query{Level: metricstore.LevelAd, IDs: []string{"x"}, Start: mt(m + 7).Add(13 * time.Second), End: mt(m + 21).Add(time.Second), Interval: 5 * time.Minute}
	r := query(t, s, q)
	if !r.Start.Equal(mt(m+5)) || !r.End.Equal(mt(m+25)) || len(r.Series[0].Points) != 4 {
		t.Fatalf("aligned range [%v, %v) with %d points, want [%v, %v) with 4", r.Start, r.End, len(r.Series[0].Points), mt(m+5), mt(m+25))
	}
	kol, _ := time.LoadLocation("Asia/Kolkata")
	q = metricstore.Query{Level: metricstore.LevelAd, IDs: []string{"x"}, Start: mt(m), End: mt(m + 1), Interval: 24 * time.Hour, Location: kol}
	r = query(t, s, q)
	if len(r.Series[0].Points) != 1 || r.Start.In(kol).Hour() != 0 || r.Start.In(kol).Minute() != 0 || r.End.Sub(r.Start) != 24*time.Hour {
		t.Fatalf("Kolkata day bucket [%v, %v), want one local day", r.Start.In(kol), r.End.In(kol))
	}
}

func testCheckpointFence(t *testing.T, open Opener, _ uint64) {
	s := mustOpen(t, open)
	defer s.Close()
	ctx := context.Background()
	m := base()
	cp, err := s.Checkpoint(ctx, "agg")
	if err != nil || len(cp.Offsets) != 0 || !cp.FinalBefore.IsZero() {
		t.Fatalf("fresh checkpoint = %+v, %v; want empty", cp, err)
	}
	one := []metricstore.Delta{{Level: metricstore.LevelAd, ID: "a", Minute: m, Counts: metricstore.Counts{Clicks: 1}}}
	apply(t, s, &metricstore.Commit{Consumer: "agg", Ranges: []metricstore.OffsetRange{rg(0, 5, 10), rg(3, 0, 2)}, Deltas: one})
	apply(t, s, &metricstore.Commit{Consumer: "agg", Ranges: []metricstore.OffsetRange{rg(0, 10, 12)}, Deltas: one})
	cp, err = s.Checkpoint(ctx, "agg")
	if err != nil || len(cp.Offsets) != 2 || cp.Offsets[0] != 12 || cp.Offsets[3] != 2 {
		t.Fatalf("checkpoint = %+v, %v; want {0:12 3:2}", cp, err)
	}
	// Replaying the second commit, or one that skips ahead, must change nothing.
	for _, rg := range [][]metricstore.OffsetRange{{rg(0, 10, 12)}, {rg(0, 13, 14)}, {rg(3, 2, 3), rg(0, 11, 12)}} {
		err := s.Apply(ctx, &metricstore.Commit{Consumer: "agg", Ranges: rg, Deltas: one})
		if !errors.Is(err, metricstore.ErrConflict) {
			t.Fatalf("apply %v over {0:12 3:2}: %v, want ErrConflict", rg, err)
		}
	}
	cp, _ = s.Checkpoint(ctx, "agg")
	if cp.Offsets[0] != 12 || cp.Offsets[3] != 2 {
		t.Fatalf("refused commit moved offsets: %+v", cp)
	}
	r := query(t, s, metricstore.Query{Level: metricstore.LevelAd, IDs: []string{"a"}, Start: mt(m), End: mt(m + 1), Interval: time.Minute})
	if got := r.Series[0].Points[0].Clicks; got != 2 {
		t.Fatalf("clicks %d after refused commits, want 2", got)
	}
	// Another consumer has its own offsets.
	apply(t, s, &metricstore.Commit{Consumer: "charge", Ranges: []metricstore.OffsetRange{rg(0, 0, 1)}})
	if cp, _ := s.Checkpoint(ctx, "charge"); cp.Offsets[0] != 1 || len(cp.Offsets) != 1 {
		t.Fatalf("charge checkpoint %+v, want {0:1}", cp)
	}
	if cp, _ := s.Checkpoint(ctx, "agg"); cp.Offsets[0] != 12 {
		t.Fatalf("agg checkpoint changed by another consumer: %+v", cp)
	}
}

func testFinal(t *testing.T, open Opener, _ uint64) {
	s := mustOpen(t, open)
	defer s.Close()
	ctx := context.Background()
	m := base()
	q := metricstore.Query{Level: metricstore.LevelAd, IDs: []string{"a"}, Start: mt(m), End: mt(m + 4), Interval: time.Minute}
	finals := func() []bool {
		r := query(t, s, q)
		var f []bool
		for _, p := range r.Series[0].Points {
			f = append(f, p.Final)
		}
		return f
	}
	apply(t, s, &metricstore.Commit{Consumer: "agg", FinalBefore: mt(m + 2)})
	if got := finals(); !slices.Equal(got, []bool{true, true, false, false}) {
		t.Fatalf("final flags %v with FinalBefore at the end of point 1", got)
	}
	if cp, _ := s.Checkpoint(ctx, "agg"); !cp.FinalBefore.Equal(mt(m + 2)) {
		t.Fatalf("checkpoint FinalBefore %v, want %v", cp.FinalBefore, mt(m+2))
	}
	// FinalBefore never moves back.
	apply(t, s, &metricstore.Commit{Consumer: "agg", FinalBefore: mt(m)})
	if got := finals(); !slices.Equal(got, []bool{true, true, false, false}) {
		t.Fatalf("final flags %v after a lower FinalBefore", got)
	}
	// With two consumers, the lower one decides.
	apply(t, s, &metricstore.Commit{Consumer: "charge", FinalBefore: mt(m + 1)})
	apply(t, s, &metricstore.Commit{Consumer: "agg", FinalBefore: mt(m + 3)})
	if got := finals(); !slices.Equal(got, []bool{true, false, false, false}) {
		t.Fatalf("final flags %v with FinalBefore agg=+3 charge=+1", got)
	}
	r := query(t, s, q)
	if !r.FinalBefore.Equal(mt(m + 1)) {
		t.Fatalf("result FinalBefore %v, want %v", r.FinalBefore, mt(m+1))
	}
	// A coarse bucket is final only when all of it is.
	q.Interval = time.Hour
	q.Start, q.End = mt(m), mt(m+60)
	if got := finals(); got[0] {
		t.Fatalf("hour bucket final while only its first minute is")
	}
}

func testReopen(t *testing.T, open Opener, _ uint64) {
	s := mustOpen(t, open)
	m := base()
	apply(t, s, &metricstore.Commit{Consumer: "agg", Ranges: []metricstore.OffsetRange{rg(1, 0, 9)}, FinalBefore: mt(m + 1),
		Deltas: []metricstore.Delta{{Level: metricstore.LevelAdvertiser, ID: "adv", Minute: m, Counts: metricstore.Counts{Impressions: 9, Interactions: map[string]int64{"lead": 2}}}}})
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	s = mustOpen(t, open)
	defer s.Close()
	cp, err := s.Checkpoint(context.Background(), "agg")
	if err != nil || cp.Offsets[1] != 9 || !cp.FinalBefore.Equal(mt(m+1)) {
		t.Fatalf("checkpoint after reopen %+v, %v", cp, err)
	}
	r := query(t, s, metricstore.Query{Level: metricstore.LevelAdvertiser, IDs: []string{"adv"}, Start: mt(m), End: mt(m + 1), Interval: time.Minute})
	want := metricstore.Counts{Impressions: 9, Interactions: map[string]int64{"lead": 2}}
	if p := r.Series[0].Points[0]; !p.Equal(&want) || !p.Final {
		t.Fatalf("after reopen: %v final=%v, want %v final", p.Counts, p.Final, want)
	}
}

func testInvalid(t *testing.T, open Opener, _ uint64) {
	s := mustOpen(t, open)
	defer s.Close()
	ctx := context.Background()
	m := base()
	for _, d := range []metricstore.Delta{{Level: 0, ID: "a", Minute: m}, {Level: 9, ID: "a", Minute: m}, {Level: metricstore.LevelAd, ID: "", Minute: m}, {Level: metricstore.LevelAd, ID: "a", Minute: -1}} {
		d.Clicks = 1
		if err := s.Apply(ctx, &metricstore.Commit{Consumer: "x", Deltas: []metricstore.Delta{d}}); !errors.Is(err, metricstore.ErrInvalidDelta) {
			t.Errorf("apply %+v: %v, want ErrInvalidDelta", d, err)
		}
	}
	for _, q := range []metricstore.Query{
		{Level: metricstore.LevelAd, Start: mt(m), End: mt(m), Interval: time.Minute},
		{Level: metricstore.LevelAd, Start: mt(m + 1), End: mt(m), Interval: time.Minute},
		{Level: metricstore.LevelAd, Start: mt(m), End: mt(m + 1), Interval: 30 * time.Second},
		{Level: metricstore.LevelAd, Start: mt(m), End: mt(m + 1), Interval: 0},
		{Level: 0, Start: mt(m), End: mt(m + 1), Interval: time.Minute},
	} {
		if _, err := s.Query(ctx, q); !errors.Is(err, metricstore.ErrInvalidQuery) {
			t.Errorf("query %+v: %v, want ErrInvalidQuery", q, err)
		}
	}
}

func testClosed(t *testing.T, open Opener, _ uint64) {
	s := mustOpen(t, open)
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	ctx := context.Background()
	m := base()
	if err := s.Apply(ctx, &metricstore.Commit{Consumer: "x"}); !errors.Is(err, metricstore.ErrClosed) {
		t.Errorf("apply after close: %v, want ErrClosed", err)
	}
	if _, err := s.Checkpoint(ctx, "x"); !errors.Is(err, metricstore.ErrClosed) {
		t.Errorf("checkpoint after close: %v, want ErrClosed", err)
	}
	if _, err := s.Query(ctx, metricstore.Query{Level: metricstore.LevelAd, IDs: []string{"a"}, Start: mt(m), End: mt(m + 1), Interval: time.Minute}); !errors.Is(err, metricstore.ErrClosed) {
		t.Errorf("query after close: %v, want ErrClosed", err)
	}
}

// testConcurrent checks, under the race detector, that queries run beside applies and that a
// result is one snapshot: every commit adds one impression to each of two minutes of one
// hour, so the hour total is always even and equals the sum of its minutes.
func testConcurrent(t *testing.T, open Opener, _ uint64) {
	s := mustOpen(t, open)
	defer s.Close()
	m := base()
	const commits = 50
	var wg sync.WaitGroup
	wg.Add(1)
	errc := make(chan error, 4)
	go func() {
		defer wg.Done()
		for i := range commits {
			err := s.Apply(context.Background(), &metricstore.Commit{Consumer: "w", Ranges: []metricstore.OffsetRange{rg(0, int64(i), int64(i+1))}, Deltas: []metricstore.Delta{
				{Level: metricstore.LevelAd, ID: "a", Minute: m + 1, Counts: metricstore.Counts{Impressions: 1}},
				{Level: metricstore.LevelAd, ID: "a", Minute: m + 59, Counts: metricstore.Counts{Impressions: 1}},
			}})
			if err != nil {
				errc <- fmt.Errorf("apply %d: %w", i, err)
				return
			}
		}
	}()
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range commits {
				r, err := s.Query(context.Background(), metricstore.Query{Level: metricstore.LevelAd, IDs: []string{"a", "a"}, Start: mt(m), End: mt(m + 60), Interval: 30 * time.Minute})
				if err != nil {
					errc <- err
					return
				}
				a, b := r.Series[0].Points, r.Series[1].Points
				if a[0].Impressions != a[1].Impressions || a[0].Impressions != b[0].Impressions || b[1].Impressions != a[1].Impressions {
					errc <- fmt.Errorf("torn read: %d+%d / %d+%d", a[0].Impressions, a[1].Impressions, b[0].Impressions, b[1].Impressions)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	r := query(t, s, metricstore.Query{Level: metricstore.LevelAd, IDs: []string{"a"}, Start: mt(m), End: mt(m + 60), Interval: time.Hour})
	if got := r.Series[0].Points[0].Impressions; got != 2*commits {
		t.Fatalf("hour total %d, want %d", got, 2*commits)
	}
}
