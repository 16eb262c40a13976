package metricstoretest

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
)

// testReconciled checks the reconciled marks: set by a commit's ReconciledHours on final
// hours only, shown on points whose every hour is marked, kept by spend-only commits,
// removed by a later commit that changes another counter in the hour, fenced with the
// commit, and durable.
func testReconciled(t *testing.T, open Opener, _ uint64) {
	s := mustOpen(t, open)
	ctx := context.Background()
	m := base() / 120 * 120 // an even hour, so 2h buckets start at it
	h0 := metricstore.HourOf(m)
	click := func(minute int64, n int64) metricstore.Delta {
		return metricstore.Delta{Level: metricstore.LevelAd, ID: "a", Minute: minute, Counts: metricstore.Counts{Clicks: n}}
	}
	apply(t, s, &metricstore.Commit{Consumer: "agg", Ranges: []metricstore.OffsetRange{rg(0, 0, 10)},
		Deltas: []metricstore.Delta{click(m+5, 3), click(m+65, 2), click(m+125, 1), click(m+185, 1)}, FinalBefore: mt(m + 180)})
	marks := func(interval time.Duration, start, end int64) []bool {
		t.Helper()
		r := query(t, s, metricstore.Query{Level: metricstore.LevelAd, IDs: []string{"a", "b"}, Start: mt(start), End: mt(end), Interval: interval})
		var out []bool
		for i, p := range r.Series[0].Points {
			if r.Series[1].Points[i].Reconciled != p.Reconciled {
				t.Fatalf("point %v: reconciled differs between ids of one query", p.Time)
			}
			out = append(out, p.Reconciled)
		}
		return out
	}
	if got := marks(time.Hour, m, m+240); slices.Contains(got, true) {
		t.Fatalf("reconciled %v before any reconciliation", got)
	}

	// Only final hours can be marked; the refused commit changes nothing.
	err := s.Apply(ctx, &metricstore.Commit{Consumer: "reconcile", Ranges: []metricstore.OffsetRange{rg(0, 0, 1)}, ReconciledHours: []int64{h0 + 3}})
	if !errors.Is(err, metricstore.ErrInvalidDelta) {
		t.Fatalf("marking a hour that is not final: %v, want ErrInvalidDelta", err)
	}
	if cp, _ := s.Checkpoint(ctx, "reconcile"); len(cp.Offsets) != 0 {
		t.Fatalf("refused commit moved the offsets: %v", cp.Offsets)
	}

	// A repair of hour 1 with the marks of hours 0 and 1.
	repair := &metricstore.Commit{Consumer: "reconcile", Ranges: []metricstore.OffsetRange{rg(0, 0, 1)},
		Deltas: []metricstore.Delta{click(m+65, -1)}, ReconciledHours: []int64{h0, h0 + 1}}
	apply(t, s, repair)
	if got := marks(time.Hour, m, m+240); !slices.Equal(got, []bool{true, true, false, false}) {
		t.Fatalf("hourly reconciled %v after marking hours 0 and 1", got)
	}
	if got := marks(2*time.Hour, m, m+240); !slices.Equal(got, []bool{true, false}) {
		t.Fatalf("2h reconciled %v: a bucket is reconciled only when every hour is", got)
	}
	if got := marks(time.Minute, m+58, m+62); !slices.Equal(got, []bool{true, true, true, true}) {
		t.Fatalf("minute reconciled %v", got)
	}
	// Replaying the repair is fenced: nothing twice.
	if err := s.Apply(ctx, repair); !errors.Is(err, metricstore.ErrConflict) {
		t.Fatalf("replayed repair: %v, want ErrConflict", err)
	}
	r := query(t, s, metricstore.Query{Level: metricstore.LevelAd, IDs: []string{"a"}, Start: mt(m + 60), End: mt(m + 120), Interval: time.Hour})
	if c := r.Series[0].Points[0].Clicks; c != 1 {
		t.Fatalf("clicks of hour 1 = %d after one repair of -1 from 2", c)
	}

	// Spend does not touch the marks; another counter does, in its hour only.
	apply(t, s, &metricstore.Commit{Consumer: "charge", Ranges: []metricstore.OffsetRange{rg(0, 0, 5)},
		Deltas: []metricstore.Delta{{Level: metricstore.LevelAd, ID: "a", Minute: m + 10, Counts: metricstore.Counts{SpendMicros: 500}}}})
	if got := marks(time.Hour, m, m+120); !slices.Equal(got, []bool{true, true}) {
		t.Fatalf("reconciled %v after a spend-only commit", got)
	}
	late := metricstore.Delta{Level: metricstore.LevelCampaign, ID: "c", Minute: m + 70, Counts: metricstore.Counts{Impressions: 1}}
	apply(t, s, &metricstore.Commit{Consumer: "agg", Ranges: []metricstore.OffsetRange{rg(0, 10, 11)}, Deltas: []metricstore.Delta{late}})
	if got := marks(time.Hour, m, m+120); !slices.Equal(got, []bool{true, false}) {
		t.Fatalf("reconciled %v after a late event in hour 1", got)
	}

	// Durable.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, open)
	defer s.Close()
	if got := marks(time.Hour, m, m+120); !slices.Equal(got, []bool{true, false}) {
		t.Fatalf("reconciled %v after reopening", got)
	}
	// A new reconciliation marks hour 1 again.
	apply(t, s, &metricstore.Commit{Consumer: "reconcile", Ranges: []metricstore.OffsetRange{rg(0, 1, 2)}, ReconciledHours: []int64{h0 + 1}})
	if got := marks(time.Hour, m, m+120); !slices.Equal(got, []bool{true, true}) {
		t.Fatalf("reconciled %v after marking hour 1 again", got)
	}
}
