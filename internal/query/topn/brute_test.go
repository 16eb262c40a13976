package topn

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
)

// TestBruteTies checks brute force where it is needed most, ids tied by the hundred, with the
// window's ids numbered densely (first seen together) and sparsely (interleaved with ids seen
// only outside the window), so both ways of adding up (the array over the numbers' range and
// the radix sort) answer, against a ranking computed directly.
func TestBruteTies(t *testing.T) {
	seed := testSeed(t)
	for _, spread := range []int{1, 9} {
		t.Run(fmt.Sprintf("spread=%d", spread), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, uint64(spread)))
			clk := &clock{t: time.Date(2026, 11, 21, 10, 37, 20, 0, time.UTC)}
			ix := New(Options{Now: clk.Now})
			ix.bruteLimit = 1 << 30 // every query by brute force
			now := ix.nowMinute()
			want := map[string]int64{}
			var batch []metricstore.Delta
			for i := range 3000 {
				for j := range spread - 1 { // seen only two hours ago
					batch = append(batch, metricstore.Delta{Level: metricstore.LevelAd, ID: "old" + strconv.Itoa(i*spread+j), Minute: now - 120, Counts: metricstore.Counts{Clicks: 1}})
				}
				id := "ad" + strconv.Itoa(r.IntN(1_000_000))
				minute := now - r.Int64N(60)
				clicks := int64(1)
				if r.IntN(50) == 0 {
					clicks = 1 + r.Int64N(3)
				}
				if r.IntN(40) == 0 {
					clicks = -1 // a refund: sums at or below zero are never ranked
				}
				batch = append(batch, metricstore.Delta{Level: metricstore.LevelAd, ID: id, Minute: minute, Counts: metricstore.Counts{Clicks: clicks}})
				want[id] += clicks
			}
			ix.Add(batch)
			ix.Maintain()
			var ranked []Item
			for id, v := range want {
				if v > 0 {
					ranked = append(ranked, Item{ID: id, Value: v})
				}
			}
			slices.SortFunc(ranked, func(a, b Item) int { return cmp.Or(cmp.Compare(b.Value, a.Value), cmp.Compare(a.ID, b.ID)) })
			for _, n := range []int{1, 7, 100, 1000, len(ranked), len(ranked) + 5} {
				got, err := ix.Top(context.Background(), Query{Level: metricstore.LevelAd, Metric: Clicks, N: min(n, MaxN), From: now - 59, To: now + 1})
				if err != nil {
					t.Fatal(err)
				}
				if exp := ranked[:min(n, MaxN, len(ranked))]; !slices.Equal(got, exp) {
					t.Fatalf("seed %d: top %d: got %d items, first %v; want %d, first %v", seed, n, len(got), got[:min(3, len(got))], len(exp), exp[:min(3, len(exp))])
				}
			}
		})
	}
}

// TestRadixSortByID checks the radix sort against the standard library's over random ids of
// every width up to 32 bits.
func TestRadixSortByID(t *testing.T) {
	seed := testSeed(t)
	r := rand.New(rand.NewPCG(seed, 1))
	for _, limit := range []uint32{1, 2, 3, 2048, 2049, 1 << 20, 10_000_000, 1<<32 - 1} {
		items := make([]topItem, 1+r.IntN(5000))
		for i := range items {
			items[i] = topItem{id: r.Uint32N(limit), v: int64(i)}
		}
		want := slices.Clone(items)
		slices.SortStableFunc(want, func(a, b topItem) int { return cmp.Compare(a.id, b.id) })
		got, _ := radixSortByID(items, make([]topItem, len(items)), limit)
		if !slices.Equal(got, want) {
			t.Fatalf("seed %d, limit %d: radix sort differs from a stable sort", seed, limit)
		}
	}
}

// TestQuietColdBlockCompacted checks that a past minute holding a few late updates in its live
// map is compacted once a maintain interval passes without a write to it, whatever their
// number, and not while updates keep coming; and that the answers stay the same throughout.
func TestQuietColdBlockCompacted(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 21, 10, 37, 20, 0, time.UTC)}
	ix := New(Options{Now: clk.Now})
	ix.bruteLimit = 1 << 30 // read blocks whole, the path the live map slows
	now := ix.nowMinute()
	minute := now - 10
	var batch []metricstore.Delta
	for i := range 1000 {
		batch = append(batch, metricstore.Delta{Level: metricstore.LevelAd, ID: "ad" + strconv.Itoa(i), Minute: minute, Counts: metricstore.Counts{Clicks: int64(1 + i%7)}})
	}
	ix.Add(batch)
	ix.Maintain()
	b := ix.st.levels[0].minutes[minute]
	if len(b.live) != 0 || b.base.entries() != 1000 {
		t.Fatalf("after the first maintain: %d live, %d frozen; want 0, 1000", len(b.live), b.base.entries())
	}
	top := func() []Item {
		t.Helper()
		got, err := ix.Top(context.Background(), Query{Level: metricstore.LevelAd, Metric: Clicks, N: 5, From: now - 59, To: now + 1})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	late := func(id string, clicks int64) {
		ix.Add([]metricstore.Delta{{Level: metricstore.LevelAd, ID: id, Minute: minute, Counts: metricstore.Counts{Clicks: clicks}}})
	}
	late("ad3", 100) // ad3 had 4: now first
	late("late-1", 50)
	ix.Maintain() // written since the last maintain: below coldMinLive, stays live
	if len(b.live) != 2 {
		t.Fatalf("a block written in the last interval: %d live, want 2", len(b.live))
	}
	want := []Item{{"ad3", 104}, {"late-1", 50}, {"ad104", 7}, {"ad111", 7}, {"ad118", 7}}
	if got := top(); !slices.Equal(got, want) {
		t.Fatalf("with live entries: %v, want %v", got, want)
	}
	late("late-2", 60)
	ix.Maintain()
	if len(b.live) != 3 {
		t.Fatalf("written again: %d live, want 3", len(b.live))
	}
	ix.Maintain() // a whole interval without a write: compacted
	if len(b.live) != 0 || b.sealed != nil || b.base.entries() != 1002 {
		t.Fatalf("a quiet block: %d live, sealed %v, %d frozen; want 0, nil, 1002", len(b.live), b.sealed != nil, b.base.entries())
	}
	want = []Item{{"ad3", 104}, {"late-2", 60}, {"late-1", 50}, {"ad104", 7}, {"ad111", 7}}
	if got := top(); !slices.Equal(got, want) {
		t.Fatalf("after the compaction: %v, want %v", got, want)
	}
}

// TestAppendMetric checks the frozen layer's in-place decoder against its iterator: every
// metric of random entries, zeros, negatives and values of many varint bytes among them.
func TestAppendMetric(t *testing.T) {
	seed := testSeed(t)
	r := rand.New(rand.NewPCG(seed, 11))
	for round := range 50 {
		b := newFrozenBuilder(0)
		id := uint32(0)
		for range r.IntN(300) {
			id += uint32(1 + r.IntN(1<<uint(r.IntN(20))))
			var v vals
			for m := range v {
				switch r.IntN(4) {
				case 0: // zero
				case 1:
					v[m] = int64(r.IntN(100))
				case 2:
					v[m] = -int64(r.IntN(1 << 40))
				default:
					v[m] = r.Int64()
				}
			}
			b.add(id, &v)
		}
		f := b.finish()
		for m := range numMetrics {
			var want []topItem
			for it := f.iter(); it.next(); {
				if it.v[m] != 0 {
					want = append(want, topItem{id: it.id, v: it.v[m]})
				}
			}
			if got := f.appendMetric(nil, m); !slices.Equal(got, want) {
				t.Fatalf("seed %d round %d metric %d:\n got %v\nwant %v", seed, round, m, got, want)
			}
		}
	}
}
