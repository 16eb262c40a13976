package reconcile

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/testseed"
)

// TestHourlyRepairsAndResumes: the hourly run checks closed hours in order from its
// progress file, repairs what differs, saves its progress, and a restart resumes where it
// stopped.
func TestHourlyRepairsAndResumes(t *testing.T) {
	p := newPipeline(t, testseed.Seed(t))
	ctx := context.Background()
	// Corrupt hour h0+1: one ad minute doubled.
	doubled := p.byPart[0][900:920]
	corrupt := deltas(doubled, +1)
	if err := p.store.Apply(ctx, &metricstore.Commit{Consumer: "corruption", Deltas: corrupt}); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "reconcile", "next-hour")
	if err := os.MkdirAll(filepath.Dir(state), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(state, []byte(p.h0.Format(time.RFC3339)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	runFor := func(hours int64) HourlyStats {
		t.Helper()
		h := NewHourly(p.options, state, true, nil)
		h.every = 5 * time.Millisecond
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- h.Run(rctx) }()
		deadline := time.Now().Add(2 * time.Minute)
		for h.Stats().Hours < hours {
			if time.Now().After(deadline) {
				t.Fatalf("hourly run: %+v", h.Stats())
			}
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		return h.Stats()
	}
	s := runFor(3)
	if s.Diffs == 0 || s.Repaired != s.Diffs || s.Failures != 0 {
		t.Errorf("first run: %+v", s)
	}
	b, _ := os.ReadFile(state)
	saved, err := time.Parse(time.RFC3339, string(b[:len(b)-1]))
	if err != nil || !saved.Equal(s.Next) || saved.Before(p.h0.Add(3*time.Hour)) {
		t.Fatalf("progress %q (%v), stats next %v", b, err, s.Next)
	}
	// A restart resumes at the saved hour and finds the repaired hours consistent.
	s2 := runFor(1)
	if s2.Next.Before(saved) || s2.Diffs != 0 {
		t.Errorf("after a restart: %+v (saved %v)", s2, saved)
	}
	if rep := run(t, p, false); len(rep.Diffs) != 0 {
		t.Errorf("%d differences after the hourly repair", len(rep.Diffs))
	}
}
