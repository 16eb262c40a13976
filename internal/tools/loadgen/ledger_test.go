package loadgen

import (
	"testing"
	"time"
)

const testBase = 29_000_000 // a Unix minute (2025)

// at is second s of minute m after testBase.
func at(m int64, s float64) time.Time {
	return time.Unix((testBase+m)*60, 0).Add(time.Duration(s * float64(time.Second)))
}

// op is one step of a ledger scenario: a request with refs, sent at send and answered at
// done with out. rejected lists rejected refs of an acknowledged batch.
type op struct {
	refs      []lineRef
	send      time.Time
	done      time.Time
	out       outcome
	rejected  []int
	wantMust  [2]int // mustAccept, mustDup
	checkMust bool
}

func runOps(t *testing.T, l *ledger, ops []op) {
	t.Helper()
	for i, o := range ops {
		before := make([]uint8, len(o.refs))
		l.begin(o.refs, o.send, before)
		rej := func(j int) bool {
			for _, r := range o.rejected {
				if r == j {
					return true
				}
			}
			return false
		}
		a, d := l.finish(o.refs, before, o.out, o.done, rej)
		if o.checkMust && [2]int{a, d} != o.wantMust {
			t.Errorf("op %d: mustAccept, mustDup = %d, %d; want %v", i, a, d, o.wantMust)
		}
	}
}

func TestLedgerExpectations(t *testing.T) {
	imp := func(v int64) []lineRef { return []lineRef{{v, keyImp}} }
	clk := func(v int64) []lineRef { return []lineRef{{v, keyClick}} }
	type minuteWant struct {
		m int64
		b Bound
	}
	for _, tc := range []struct {
		name    string
		flags   viewFlags
		exact   int64 // minute of the cart line's event_time when cart is used
		ops     func(v int64) []op
		metric  Metric
		total   Bound
		minutes []minuteWant
		bots    int64
	}{
		{
			name: "acknowledged once", metric: MetricImpressions,
			ops:   func(v int64) []op { return []op{{refs: imp(v), send: at(5, 10), done: at(5, 11), out: outAcked}} },
			total: Bound{1, 1}, minutes: []minuteWant{{5, Bound{1, 1}}, {4, Bound{}}, {6, Bound{}}},
		},
		{
			name: "acknowledged twice counts once", metric: MetricClicks,
			ops: func(v int64) []op {
				return []op{{refs: clk(v), send: at(5, 10), done: at(5, 11), out: outAcked}, {refs: clk(v), send: at(5, 12), done: at(5, 13), out: outAcked}}
			},
			total: Bound{1, 1}, minutes: []minuteWant{{5, Bound{1, 1}}},
		},
		{
			name: "receive time may fall in either minute", metric: MetricImpressions,
			ops:   func(v int64) []op { return []op{{refs: imp(v), send: at(5, 59.9), done: at(6, 0.1), out: outAcked}} },
			total: Bound{1, 1}, minutes: []minuteWant{{5, Bound{0, 1}}, {6, Bound{0, 1}}},
		},
		{
			name: "a duplicate's acknowledgement bounds the first send's recording", metric: MetricClicks,
			ops: func(v int64) []op {
				return []op{{refs: clk(v), send: at(5, 50), done: at(8, 0), out: outUnknown}, {refs: clk(v), send: at(6, 10), done: at(6, 20), out: outAcked}}
			},
			total: Bound{1, 1}, minutes: []minuteWant{{5, Bound{0, 1}}, {6, Bound{0, 1}}, {7, Bound{}}, {8, Bound{}}},
		},
		{
			name: "no answer: may or may not count", metric: MetricClicks,
			ops:   func(v int64) []op { return []op{{refs: clk(v), send: at(5, 10), done: at(5, 20), out: outUnknown}} },
			total: Bound{0, 1}, minutes: []minuteWant{{5, Bound{0, 1}}},
		},
		{
			name: "4xx: nothing recorded", metric: MetricClicks,
			ops:   func(v int64) []op { return []op{{refs: clk(v), send: at(5, 10), done: at(5, 20), out: outNotRecorded}} },
			total: Bound{0, 0}, minutes: []minuteWant{{5, Bound{}}},
		},
		{
			name: "event_time decides the minute", metric: MetricAddToCart, exact: 2,
			ops: func(v int64) []op {
				return []op{{refs: []lineRef{{v, keyCart}}, send: at(5, 59.9), done: at(6, 1), out: outAcked}}
			},
			total: Bound{1, 1}, minutes: []minuteWant{{2, Bound{1, 1}}, {5, Bound{}}, {6, Bound{}}},
		},
		{
			name: "a bot's impression counts nowhere", flags: vfBot, metric: MetricImpressions, bots: 1,
			ops:   func(v int64) []op { return []op{{refs: imp(v), send: at(5, 10), done: at(5, 11), out: outAcked}} },
			total: Bound{0, 0},
		},
		{
			name: "a bot's click is invalid", flags: vfBot, metric: MetricInvalidClicks,
			ops:   func(v int64) []op { return []op{{refs: clk(v), send: at(5, 10), done: at(5, 11), out: outAcked}} },
			total: Bound{1, 1}, minutes: []minuteWant{{5, Bound{1, 1}}},
		},
		{
			name: "an expired click is invalid", flags: vfExpired, metric: MetricInvalidClicks,
			ops:   func(v int64) []op { return []op{{refs: clk(v), send: at(5, 10), done: at(5, 11), out: outAcked}} },
			total: Bound{1, 1}, minutes: []minuteWant{{5, Bound{1, 1}}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLedger(testBase)
			v := l.addView(7, tc.flags)
			if tc.exact != 0 {
				l.setEventTime(v, keyCart, at(tc.exact, 30).Unix())
			}
			runOps(t, l, tc.ops(v))
			e, tr := buildExpected(l, testLayout)
			if tr.BotImpressions != tc.bots {
				t.Errorf("bot impressions %d, want %d", tr.BotImpressions, tc.bots)
			}
			for lv, id := range [numLevels]string{"lg-ad-7", "lg-cmp-7", "lg-adv-3"} {
				s := e.levels[lv][id]
				if s == nil {
					s = newSeries()
				}
				if got := s.total[tc.metric]; got != tc.total {
					t.Errorf("%v %s total %v = %v, want %v", Level(lv), id, tc.metric, got, tc.total)
				}
				for _, mw := range tc.minutes {
					var got Bound
					if b := s.minutes[testBase+mw.m]; b != nil {
						got = b[tc.metric]
					}
					if got != mw.b {
						t.Errorf("%v %s minute +%d %v = %v, want %v", Level(lv), id, mw.m, tc.metric, got, mw.b)
					}
				}
			}
		})
	}
}

// TestLedgerMustAccept checks what the ledger says a batch answer must contain.
func TestLedgerMustAccept(t *testing.T) {
	l := newLedger(testBase)
	v0, v1, v2, v3 := l.addView(0, 0), l.addView(1, 0), l.addView(2, 0), l.addView(3, 0)
	r := func(v int64) lineRef { return lineRef{v, keyImp} }
	runOps(t, l, []op{
		// v1 acknowledged before; v2 in flight elsewhere (no answer yet).
		{refs: []lineRef{r(v1)}, send: at(1, 0), done: at(1, 1), out: outAcked, checkMust: true, wantMust: [2]int{1, 0}},
	})
	// A batch of v0 (new), v1 (acknowledged), v2 (pending), v3 (new but rejected).
	pending := make([]uint8, 1)
	l.begin([]lineRef{r(v2)}, at(1, 2), pending)
	runOps(t, l, []op{
		{refs: []lineRef{r(v0), r(v1), r(v2), r(v3)}, send: at(1, 3), done: at(1, 4), out: outAcked, rejected: []int{3}, checkMust: true, wantMust: [2]int{1, 1}},
	})
	// A new line that another request also carried while it was in flight need not be accepted.
	l2 := newLedger(testBase)
	w := l2.addView(0, 0)
	before := make([]uint8, 1)
	l2.begin([]lineRef{r(w)}, at(1, 0), before)
	other := make([]uint8, 1)
	l2.begin([]lineRef{r(w)}, at(1, 1), other)
	if a, d := l2.finish([]lineRef{r(w)}, before, outAcked, at(1, 2), nil); a != 0 || d != 0 {
		t.Errorf("raced line: mustAccept, mustDup = %d, %d; want 0, 0", a, d)
	}
	if a, d := l2.finish([]lineRef{r(w)}, other, outAcked, at(1, 3), nil); a != 0 || d != 0 {
		t.Errorf("raced line, second answer: mustAccept, mustDup = %d, %d; want 0, 0", a, d)
	}
}

func TestCompareBounds(t *testing.T) {
	l := newLedger(testBase)
	v := l.addView(0, 0)
	runOps(t, l, []op{{refs: []lineRef{{v, keyClick}}, send: at(3, 59.5), done: at(4, 0.5), out: outAcked}})
	e, _ := buildExpected(l, testLayout)
	e.start--
	e.end++
	ids := []string{"lg-ad-0"}
	obsAt := func(m int64, n int64) observed {
		c := counts{}
		c[MetricClicks] = n
		return observed{"lg-ad-0": {testBase + m: &c}}
	}
	for _, tc := range []struct {
		name              string
		obs               observed
		lost, double, bkt int64
	}{
		{"counted in the first minute", obsAt(3, 1), 0, 0, 0},
		{"counted in the second minute", obsAt(4, 1), 0, 0, 0},
		{"lost", observed{}, 1, 0, 0},
		{"double", obsAt(4, 2), 0, 1, 1},
		{"wrong minute", obsAt(2, 1), 0, 0, 1},
	} {
		var p problems
		r := compareLevel(e, LevelAd, ids, tc.obs, &p)
		if r.Lost != tc.lost || r.DoubleCounted != tc.double || r.BucketDouble != tc.bkt {
			t.Errorf("%s: %+v; want lost %d, double %d, bucket double %d", tc.name, r, tc.lost, tc.double, tc.bkt)
		}
		if (r.ok()) != (tc.lost+tc.double+tc.bkt == 0) || r.ok() != (p.total == 0) {
			t.Errorf("%s: ok %v with problems %v", tc.name, r.ok(), p.list)
		}
	}
}

func TestCompareTop(t *testing.T) {
	e := &expected{start: 0, end: 10}
	for i := range e.levels {
		e.levels[i] = map[string]*series{}
	}
	set := func(id string, lo, hi int64) {
		s := newSeries()
		s.total[MetricClicks] = Bound{lo, hi}
		e.levels[LevelAd][id] = s
	}
	set("lg-ad-1", 5, 5)
	set("lg-ad-2", 3, 4)
	set("lg-ad-3", 1, 1)
	for _, tc := range []struct {
		name  string
		n     int
		items []topItem
		want  TopResult
	}{
		{"exact", 10, []topItem{{"lg-ad-1", 5}, {"lg-ad-2", 4}, {"lg-ad-3", 1}}, TopResult{}},
		{"foreign ids are not judged", 10, []topItem{{"lg-ad-1", 5}, {"other-9", 4}, {"lg-ad-2", 3}, {"lg-ad-3", 1}}, TopResult{}},
		{"cut at n", 2, []topItem{{"lg-ad-1", 5}, {"lg-ad-2", 3}}, TopResult{}},
		{"missing", 10, []topItem{{"lg-ad-1", 5}, {"lg-ad-2", 3}}, TopResult{Lost: 1}},
		{"low", 10, []topItem{{"lg-ad-1", 4}, {"lg-ad-2", 3}, {"lg-ad-3", 1}}, TopResult{Lost: 1}},
		{"high", 10, []topItem{{"lg-ad-1", 6}, {"lg-ad-2", 3}, {"lg-ad-3", 1}}, TopResult{DoubleCounted: 1}},
		{"phantom", 10, []topItem{{"lg-ad-1", 5}, {"lg-ad-2", 3}, {"lg-ad-3", 1}, {"lg-ad-9", 1}}, TopResult{DoubleCounted: 1}},
		{"misordered", 10, []topItem{{"lg-ad-2", 3}, {"lg-ad-1", 5}, {"lg-ad-3", 1}}, TopResult{Misordered: 1}},
	} {
		var p problems
		got := compareTop(e, LevelAd, MetricClicks, tc.n, tc.items, "lg-", &p)
		got.By, got.Metric, got.Items = "", "", 0
		if got != tc.want {
			t.Errorf("%s: %+v, want %+v (%v)", tc.name, got, tc.want, p.list)
		}
	}
}
