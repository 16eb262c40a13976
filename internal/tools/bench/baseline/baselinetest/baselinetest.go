// Package baselinetest is the shared test of every baseline.Store: duplicates count once, in
// the bucket of their first event, series come in aligned buckets, and top lists are exact
// with ties by ad id ascending.
package baselinetest

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/tools/bench/baseline"
)

// Run checks s, which must be empty. run makes the ids of this run distinct from earlier ones.
func Run(t *testing.T, s baseline.Store, run string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m := time.Now().Add(-10 * time.Minute).Truncate(2 * time.Minute) // an even minute
	ad := func(n string) string { return run + "-ad-" + n }
	imp := func(n string) string { return run + "-imp-" + n }
	click := func(a, i string, at time.Time) baseline.Event {
		return baseline.Event{Kind: baseline.Click, AdID: ad(a), ImpressionID: imp(i), Time: at}
	}
	batches := [][]baseline.Event{
		{click("a", "1", m.Add(5*time.Second)), {Kind: baseline.Impression, AdID: ad("a"), ImpressionID: imp("1"), Time: m}},
		{click("b", "2", m.Add(10*time.Second)), click("b", "3", m.Add(20*time.Second))},
		{click("c", "4", m.Add(70*time.Second)), click("c", "5", m.Add(80*time.Second))},
		// A retry of imp-1's click in the next minute, and one in the same batch: both duplicates.
		{click("a", "1", m.Add(65*time.Second)), click("b", "2", m.Add(11*time.Second))},
	}
	for i, b := range batches {
		if _, err := s.Record(ctx, b); err != nil {
			t.Fatalf("record batch %d: %v", i, err)
		}
	}
	// One at a time, concurrently, as the click handler records them.
	errc := make(chan error, 3)
	for _, i := range []string{"6", "7", "7"} {
		go func() {
			_, err := s.Record(ctx, []baseline.Event{click("d", i, m.Add(30*time.Second))})
			errc <- err
		}()
	}
	for range 3 {
		if err := <-errc; err != nil {
			t.Fatalf("record: %v", err)
		}
	}

	ads := []string{ad("a"), ad("b"), ad("c"), ad("d"), ad("none")}
	got, err := s.Series(ctx, ads, m.Add(-2*time.Minute), m.Add(4*time.Minute), time.Minute)
	if err != nil {
		t.Fatalf("series: %v", err)
	}
	mu := m.Unix()
	want := map[string]map[int64]baseline.Counts{
		ad("a"): {mu: {1, 1}},
		ad("b"): {mu: {0, 2}},
		ad("c"): {mu + 60: {0, 2}},
		ad("d"): {mu: {0, 2}},
	}
	for _, a := range ads {
		g := map[int64]baseline.Counts{}
		for b, c := range got[a] {
			if c != (baseline.Counts{}) {
				g[b] = c
			}
		}
		w := want[a]
		if w == nil {
			w = map[int64]baseline.Counts{}
		}
		if len(g) != len(w) {
			t.Errorf("series %s: got %v, want %v", a, g, w)
			continue
		}
		for b, c := range w {
			if g[b] != c {
				t.Errorf("series %s at %d: got %v, want %v (all: %v)", a, b, g[b], c, g)
			}
		}
	}
	// Two-minute buckets start at even minutes: c's clicks fall in m's bucket.
	got, err = s.Series(ctx, []string{ad("c")}, m, m.Add(4*time.Minute), 2*time.Minute)
	if err != nil {
		t.Fatalf("series 2m: %v", err)
	}
	if c := got[ad("c")][mu]; c != (baseline.Counts{0, 2}) {
		t.Errorf("2m series of c: %v", got[ad("c")])
	}

	for _, tc := range []struct {
		n    int
		want []baseline.TopItem
	}{
		{10, []baseline.TopItem{{AdID: ad("b"), Value: 2}, {AdID: ad("c"), Value: 2}, {AdID: ad("d"), Value: 2}, {AdID: ad("a"), Value: 1}}},
		{2, []baseline.TopItem{{AdID: ad("b"), Value: 2}, {AdID: ad("c"), Value: 2}}},
		{1, []baseline.TopItem{{AdID: ad("b"), Value: 2}}},
	} {
		items, err := s.Top(ctx, baseline.Click, tc.n, m, m.Add(3*time.Minute))
		if err != nil {
			t.Fatalf("top: %v", err)
		}
		if !slices.Equal(items, tc.want) {
			t.Errorf("top %d clicks: got %v, want %v", tc.n, items, tc.want)
		}
	}
	items, err := s.Top(ctx, baseline.Impression, 10, m, m.Add(3*time.Minute))
	if err != nil {
		t.Fatalf("top impressions: %v", err)
	}
	if !slices.Equal(items, []baseline.TopItem{{AdID: ad("a"), Value: 1}}) {
		t.Errorf("top impressions: %v", items)
	}
	// A window after the first minute: c only (a's retry at m+65s is a duplicate).
	items, err = s.Top(ctx, baseline.Click, 10, m.Add(time.Minute), m.Add(3*time.Minute))
	if err != nil {
		t.Fatalf("top: %v", err)
	}
	if !slices.Equal(items, []baseline.TopItem{{AdID: ad("c"), Value: 2}}) {
		t.Errorf("top over [m+1, m+3): %v", items)
	}
}
