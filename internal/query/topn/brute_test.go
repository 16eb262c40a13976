package topn

import (
	"cmp"
	"context"
	"fmt"
	"maps"
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
// the buckets of sumSparse) answer, against a ranking computed directly; and the tied ids
// ordered by their bytes, by the byte order of every id, and by an order of some of them
// (ids first seen after it was built).
func TestBruteTies(t *testing.T) {
	seed := testSeed(t)
	for _, spread := range []int{1, 9} {
		t.Run(fmt.Sprintf("spread=%d", spread), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, uint64(spread)))
			clk := &clock{t: time.Date(2026, 11, 21, 10, 37, 20, 0, time.UTC)}
			ix := New(Options{Now: clk.Now})
			ix.bruteLimit = 1 << 30 // every query by brute force
			ix.orderMinTies = -1    // by bytes until the second step
			now := ix.nowMinute()
			want := map[string]int64{}
			add := func(prefix string, events int) {
				var batch []metricstore.Delta
				for i := range events {
					for j := range spread - 1 { // seen only two hours ago
						batch = append(batch, metricstore.Delta{Level: metricstore.LevelAd, ID: "old" + prefix + strconv.Itoa(i*spread+j), Minute: now - 120, Counts: metricstore.Counts{Clicks: 1}})
					}
					id := prefix + strconv.Itoa(r.IntN(1_000_000))
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
			}
			check := func(step string) {
				t.Helper()
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
						t.Fatalf("seed %d, %s: top %d: got %d items, first %v; want %d, first %v", seed, step, n, len(got), got[:min(3, len(got))], len(exp), exp[:min(3, len(exp))])
					}
				}
			}
			add("ad", 3000)
			check("by bytes")
			ix.orderMinTies = 1
			check("starting an order")
			ix.orderWG.Wait()
			if ix.st.levels[0].order.cur.Load() == nil {
				t.Fatal("no byte order was built")
			}
			check("by the order")
			add("a", 40) // new ids, some sorting before every ranked one: fewer than an eighth
			check("partly by the order")
			ix.orderWG.Wait()
			if st := ix.Stats(); st.OrderBuilds != 1 {
				t.Fatalf("%d order builds, want 1 (the new ids are too few for another)", st.OrderBuilds)
			}
			add("b", 3000)
			check("new ids, a new order starting")
			ix.orderWG.Wait()
			if st := ix.Stats(); st.OrderBuilds != 2 {
				t.Fatalf("%d order builds, want 2", st.OrderBuilds)
			}
			check("by the merged order")
		})
	}
}

// TestBuildOrder checks the byte order of ids, built at once and in steps (merging new ids
// into a previous order), against a sort of the ids, for ids that share long prefixes, ids that are
// prefixes of others, and ids equal in their 8 bytes after the common prefix.
func TestBuildOrder(t *testing.T) {
	seed := testSeed(t)
	r := rand.New(rand.NewPCG(seed, 3))
	tab := newInternTable()
	var ids []string
	intern := func(id string) {
		if _, added := tab.intern(id); added {
			ids = append(ids, id)
		}
	}
	var ord *byteOrder
	for step := range 6 {
		for range 1 + r.IntN(2000) {
			switch r.IntN(4) {
			case 0:
				intern("campaign-000-ad-" + strconv.Itoa(r.IntN(100000)))
			case 1:
				intern("campaign-000-ad-" + strconv.Itoa(r.IntN(100)) + "-variant-" + strconv.Itoa(r.IntN(30)))
			case 2:
				intern("campaign-000-ad-" + strconv.Itoa(r.IntN(10))[:1])
			default:
				id := strconv.FormatUint(r.Uint64(), 36)
				intern(id[:1+r.IntN(len(id))])
			}
		}
		if step%2 == 0 {
			ord = buildOrder(ord, tab.recs, tab.arena)
		} else {
			ord = buildOrder(nil, tab.recs, tab.arena)
		}
		want := make([]uint32, len(ids))
		for i := range want {
			want[i] = uint32(i)
		}
		slices.SortFunc(want, func(a, b uint32) int { return cmp.Compare(ids[a], ids[b]) })
		if int(ord.n) != len(ids) || !slices.Equal(ord.order, want) {
			t.Fatalf("seed %d, step %d: order of %d ids differs from a sort of %d", seed, step, ord.n, len(ids))
		}
	}
}

// TestFirstByOrder checks the walk of the byte order against a sort: random ties, ties that
// come last in the order (the walk gives up, and the caller falls back to a heap), and that
// the bitmap is left clean either way.
func TestFirstByOrder(t *testing.T) {
	seed := testSeed(t)
	r := rand.New(rand.NewPCG(seed, 4))
	const n = 5000
	ord := &byteOrder{n: n, order: make([]uint32, n)}
	pos := make([]int, n)
	for i, num := range r.Perm(n) {
		ord.order[i], pos[num] = uint32(num), i
	}
	buf := &bruteBuf{}
	for _, c := range []struct {
		name    string
		ties, k int
		last    bool
	}{{"random", 2000, 100, false}, {"random, k near ties", 4000, 3000, false}, {"last in the order", 300, 10, true}} {
		var ids []uint32
		if c.last {
			ids = slices.Clone(ord.order[n-c.ties:])
		} else {
			for _, num := range r.Perm(n)[:c.ties] {
				ids = append(ids, uint32(num))
			}
		}
		want := slices.Clone(ids)
		slices.SortFunc(want, func(a, b uint32) int { return cmp.Compare(pos[a], pos[b]) })
		got, ok := firstByOrder(buf, ids, c.k, ord)
		if c.last {
			if ok {
				t.Fatalf("seed %d, %s: the walk did not give up", seed, c.name)
			}
		} else {
			if !ok {
				t.Fatalf("seed %d, %s: the walk gave up", seed, c.name)
			}
			if !slices.Equal(got, want[:c.k]) {
				t.Fatalf("seed %d, %s: got %v..., want %v...", seed, c.name, got[:3], want[:3])
			}
		}
		if slices.ContainsFunc(buf.marks, func(w uint64) bool { return w != 0 }) {
			t.Fatalf("seed %d, %s: the bitmap was left dirty", seed, c.name)
		}
	}
}

// TestAppendBlock checks that the entries brute force gathers from a block add up, per id,
// to the totals reading the block whole gives, for blocks with a frozen layer, a sealed layer
// being compacted and a live one, overlapping in every way, few and many newer entries.
func TestAppendBlock(t *testing.T) {
	seed := testSeed(t)
	r := rand.New(rand.NewPCG(seed, 5))
	randVals := func() vals {
		var v vals
		for m := range v {
			if r.IntN(3) > 0 {
				v[m] = r.Int64N(7) - 2
			}
		}
		return v
	}
	for round := range 40 {
		base := newFrozenBuilder(0)
		for id := uint32(0); id < 2000; id += 1 + uint32(r.IntN(3)) {
			v := randVals()
			base.add(id, &v)
		}
		b := &block{base: base.finish()}
		layer := func(n int) map[uint32]vals {
			l := map[uint32]vals{}
			for range n {
				l[uint32(r.IntN(2200))] = randVals()
			}
			return l
		}
		few := 1 + r.IntN(60)
		if round%4 == 0 {
			few = 1000 // more than an eighth of the frozen layer: read whole
		}
		b.sealed, b.live = layer(few), layer(few)
		if round%3 == 0 {
			b.sealed = nil
		}
		for m := range numMetrics {
			want := map[uint32]int64{}
			b.each(func(id uint32, v *vals) {
				if v[m] != 0 {
					want[id] = v[m]
				}
			})
			items, lo, hi := appendBlock(nil, b, m)
			got := map[uint32]int64{}
			for _, it := range items {
				got[it.id] += it.v
				if it.id < lo || it.id > hi {
					t.Fatalf("seed %d, round %d: number %d outside the range [%d, %d]", seed, round, it.id, lo, hi)
				}
			}
			maps.DeleteFunc(got, func(_ uint32, v int64) bool { return v == 0 })
			if !maps.Equal(got, want) {
				t.Fatalf("seed %d, round %d, metric %d: %d totals, want %d", seed, round, m, len(got), len(want))
			}
		}
	}
}

// panicOwners resolves every ad to advertiser a1 and campaign c1, or panics on a campaign
// lookup while panicking is set.
type panicOwners struct{ panicking bool }

func (o *panicOwners) AdCampaign(string) (string, bool) {
	if o.panicking {
		panic("owners lookup failed")
	}
	return "c1", true
}
func (o *panicOwners) AdAdvertiser(string) (string, bool)       { return "a1", true }
func (o *panicOwners) CampaignAdvertiser(string) (string, bool) { return "a1", true }

// TestBrutePanicDropsScratch checks that a query that panics half way through brute force (in
// an Owners callback, between sumSparse's adding up and its clearing) does not hand its
// half-written scratch to the next query, which must answer as before the panic.
func TestBrutePanicDropsScratch(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 21, 10, 37, 20, 0, time.UTC)}
	o := &panicOwners{}
	ix := New(Options{Now: clk.Now, Owners: o})
	ix.bruteLimit, ix.memberLimit = 1<<30, -1 // brute force, filter applied per id
	now := ix.nowMinute()
	var batch []metricstore.Delta
	for i := range 500 {
		for j := range 8 { // seen only two hours ago: the window's numbers are spread
			batch = append(batch, metricstore.Delta{Level: metricstore.LevelAd, ID: "old" + strconv.Itoa(i*8+j), Minute: now - 120, Counts: metricstore.Counts{Clicks: 1}})
		}
		batch = append(batch, metricstore.Delta{Level: metricstore.LevelAd, ID: "ad" + strconv.Itoa(i), Minute: now - int64(i%60), Counts: metricstore.Counts{Clicks: int64(1 + i%3)}})
	}
	ix.Add(batch)
	ix.Maintain()
	q := Query{Level: metricstore.LevelAd, Metric: Clicks, N: 10, From: now - 59, To: now + 1, Campaign: "c1"}
	want, err := ix.Top(context.Background(), q)
	if err != nil || len(want) != q.N {
		t.Fatalf("top: %v, %v", want, err)
	}
	o.panicking = true
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the query did not reach the panicking lookup")
			}
		}()
		_, _ = ix.Top(context.Background(), q)
	}()
	o.panicking = false
	got, err := ix.Top(context.Background(), q)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("after a panicked query: %v, %v; want %v", got, err, want)
	}
}

// TestSumSparse checks the bucketed sum against a map over random numbers of every spread up
// to 32 bits, with repeats, negative values and sums of zero, and that it comes out in
// number order.
func TestSumSparse(t *testing.T) {
	seed := testSeed(t)
	r := rand.New(rand.NewPCG(seed, 1))
	ix := New(Options{})
	run := &run{ix: ix, st: ix.st, lv: ix.st.levels[0]}
	buf := &bruteBuf{}
	for _, limit := range []uint32{1, 2, 1 << bucketBits, 1<<bucketBits + 1, 1 << 20, 10_000_000, 1<<32 - 1} {
		lo := uint32(r.Uint64N(1<<32 - uint64(limit)))
		items := make([]topItem, 1+r.IntN(5000))
		want := map[uint32]int64{}
		for i := range items {
			id := lo
			if i > 0 && r.IntN(3) == 0 {
				id = items[r.IntN(i)].id // a repeat
			} else if limit > 1 {
				id += r.Uint32N(limit)
			}
			items[i] = topItem{id: id, v: r.Int64N(5) - 1}
			want[id] += items[i].v
		}
		hi := lo
		for _, it := range items {
			hi = max(hi, it.id)
		}
		got := map[uint32]int64{}
		sums := run.sumSparse(buf, slices.Clone(items), lo, hi)
		for i, it := range sums {
			if i > 0 && it.id <= sums[i-1].id {
				t.Fatalf("seed %d, limit %d: number %d after %d, want number order", seed, limit, it.id, sums[i-1].id)
			}
			got[it.id] = it.v
		}
		maps.DeleteFunc(want, func(_ uint32, v int64) bool { return v <= 0 })
		if !maps.Equal(got, want) {
			t.Fatalf("seed %d, limit %d: %d sums, want %d", seed, limit, len(got), len(want))
		}
		if slices.ContainsFunc(buf.bucket, func(v int64) bool { return v != 0 }) || buf.touched != [len(buf.touched)]uint64{} {
			t.Fatalf("seed %d, limit %d: the bucket's sums or bitmap were left dirty", seed, limit)
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
