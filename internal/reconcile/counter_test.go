package reconcile

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/testseed"
)

// TestIncrementalCountsEqualFreshCounts: one counter carried from hour to hour (what the
// hourly job does) finds exactly the differences, counts and duplicates that a fresh
// reading of each hour's whole span finds, while reading each archive row at most once.
func TestIncrementalCountsEqualFreshCounts(t *testing.T) {
	p := newPipeline(t, testseed.Seed(t))
	ctx := context.Background()
	// Differences in every checked hour, the lost late event among them.
	corrupt := append(append(deltas(p.byPart[0][900:940], -1), deltas(p.byPart[1][1200:1230], +1)...),
		deltas(p.byPart[2][1500:1520], +1)...)
	corrupt = append(corrupt, deltas([]event.Event{p.late}, -1)...)
	if err := p.store.Apply(ctx, &metricstore.Commit{Consumer: "corruption", Deltas: corrupt}); err != nil {
		t.Fatal(err)
	}
	o := p.options
	o.setDefaults()
	inc := newCounter(&o, p.h0, time.Time{})
	var incRows, freshRows int64
	diffs := 0
	for h := p.h0; h.Before(p.h0.Add(3 * time.Hour)); h = h.Add(time.Hour) {
		fresh, err := runOnce(ctx, &o, h, h.Add(time.Hour), false, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := runOnce(ctx, &o, h, h.Add(time.Hour), false, inc)
		if err != nil {
			t.Fatal(err)
		}
		inc.forget(h.Add(time.Hour))
		if !reflect.DeepEqual(got.Diffs, fresh.Diffs) || got.Counted != fresh.Counted || got.Buckets != fresh.Buckets || got.Gaps != fresh.Gaps {
			t.Errorf("hour %v: incremental %d diffs, %d counted, %d buckets, %d gaps; fresh %d, %d, %d, %d",
				h, len(got.Diffs), got.Counted, got.Buckets, got.Gaps, len(fresh.Diffs), fresh.Counted, fresh.Buckets, fresh.Gaps)
		}
		diffs += len(got.Diffs)
		incRows += got.Rows
		freshRows += fresh.Rows
	}
	if diffs == 0 {
		t.Fatal("no differences: the test does not exercise the comparison")
	}
	var total int64
	for _, evs := range p.byPart {
		total += int64(len(evs))
	}
	t.Logf("rows read: incremental %d, fresh %d, archive %d", incRows, freshRows, total)
	if incRows > total {
		t.Errorf("the incremental counter read %d rows of an archive of %d: some twice", incRows, total)
	}
	if freshRows <= incRows {
		t.Errorf("fresh readings read %d rows, the incremental one %d: the span is not re-read", freshRows, incRows)
	}
	if len(inc.counts) == 0 {
		t.Error("nothing kept for the hours after the checked ones")
	}
}
