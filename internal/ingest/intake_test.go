package ingest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/testseed"

	"github.com/adpulse/adpulse/internal/dedup"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
)

// faultLog wraps memLog with the behaviours of a real log under trouble. Each Append consults
// mode: how long it takes, and whether it then lands the records and what it reports.
type faultLog struct {
	*memLog
	delay  time.Duration
	mode   atomic.Int32
	failed atomic.Bool // Err reports a failure
}

const (
	logOK            = iota
	logCtxAfterTaken // honours ctx like a log that gives up waiting: records land, ctx.Err() returned
	logUnknownLanded // the records land, the caller is told an unknown error
	logUnknownLost   // the records do not land, the caller is told an unknown error
	logNotAppended   // the records do not land, and the log says so
)

func (l *faultLog) Append(ctx context.Context, msgs []eventlog.Message) error {
	mode := l.mode.Load()
	if mode == logCtxAfterTaken {
		done := make(chan error, 1)
		go func() {
			time.Sleep(l.delay)
			done <- l.memLog.Append(context.Background(), msgs)
		}()
		select {
		case err := <-done:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	time.Sleep(l.delay)
	switch mode {
	case logUnknownLanded:
		_ = l.memLog.Append(ctx, msgs)
		return errors.New("timed out waiting for the brokers")
	case logUnknownLost:
		return errors.New("timed out waiting for the brokers")
	case logNotAppended:
		return eventlog.NotAppended(errors.New("disk full"))
	}
	return l.memLog.Append(ctx, msgs)
}

func (l *faultLog) Err() error {
	if l.failed.Load() {
		return errors.New("rollback failed")
	}
	return nil
}

func clickEvents(ids ...string) []event.Event {
	evs := make([]event.Event, len(ids))
	for i, id := range ids {
		evs[i] = event.Event{Type: event.TypeClick, ImpressionID: id, AdID: fmt.Sprintf("ad%d", i%5)}
	}
	return evs
}

// countInLog counts the log's copies of each impression id.
func countInLog(t *testing.T, l *memLog) map[string]int {
	n := map[string]int{}
	for _, e := range l.events(t) {
		n[e.ImpressionID]++
	}
	return n
}

func newTestIntake(l eventlog.Log, o IntakeOptions) (*Intake, context.CancelFunc) {
	o.Log, o.Dedup = l, dedup.NewMemory(24*time.Hour)
	in := NewIntake(o)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _ = in.Run(ctx) }()
	return in, cancel
}

// A client that hangs up after the log took its events must not get them appended twice by
// its retry: the append does not depend on the client's context.
func TestClientAbortThenRetryCountsOnce(t *testing.T) {
	l := &faultLog{memLog: newMemLog(4), delay: 20 * time.Millisecond}
	l.mode.Store(logCtxAfterTaken)
	in, stop := newTestIntake(l, IntakeOptions{})
	defer stop()
	evs := clickEvents("a", "b", "c")
	out := make([]Outcome, len(evs))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Millisecond)
	defer cancel()
	_ = in.Record(ctx, evs, time.Now(), out) // the client is gone before the log answers
	if err := in.Record(context.Background(), evs, time.Now(), out); err != nil {
		t.Fatalf("retry: %v", err)
	}
	for id, n := range countInLog(t, l.memLog) {
		if n != 1 {
			t.Errorf("impression %s: %d copies in the log after an aborted request and its retry, want 1", id, n)
		}
	}
}

// An append whose outcome is unknown holds its keys until the log has been checked: the
// retry waits (503) rather than appending a second copy, and afterwards learns the truth.
func TestUnknownAppendOutcomeResolvedFromLog(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mode   int32
		landed bool
	}{{"landed", logUnknownLanded, true}, {"lost", logUnknownLost, false}} {
		t.Run(tc.name, func(t *testing.T) {
			l := &faultLog{memLog: newMemLog(2)}
			l.mode.Store(tc.mode)
			in, stop := newTestIntake(l, IntakeOptions{InFlightWait: 50 * time.Millisecond, ResolveAfter: 100 * time.Millisecond})
			defer stop()
			evs := clickEvents("x", "y")
			out := make([]Outcome, len(evs))
			if err := in.Record(context.Background(), evs, time.Now(), out); !errors.Is(err, ErrUnavailable) {
				t.Fatalf("first attempt: %v, want ErrUnavailable", err)
			}
			l.mode.Store(logOK)
			if err := in.Record(context.Background(), evs, time.Now(), out); !errors.Is(err, ErrUnavailable) {
				t.Fatalf("retry before the outcome is known: %v, want ErrUnavailable (keys held)", err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for in.Stats().MaybeKeys > 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if err := in.Record(context.Background(), evs, time.Now(), out); err != nil {
				t.Fatalf("retry after resolution: %v", err)
			}
			want := Accepted
			if tc.landed {
				want = Duplicate
			}
			if out[0] != want || out[1] != want {
				t.Fatalf("retry after resolution: outcomes %v, want %v", out, want)
			}
			for id, n := range countInLog(t, l.memLog) {
				if n != 1 {
					t.Errorf("impression %s: %d copies in the log, want 1", id, n)
				}
			}
			if st := in.Stats(); st.Resolved != 2 || (st.Recovered == 2) != tc.landed {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// A log that has failed on its own is not trusted to say an event is missing: the keys stay
// held (the process restarts and rebuilds them from the log).
func TestUnknownOutcomeOnFailedLogKeepsKeys(t *testing.T) {
	l := &faultLog{memLog: newMemLog(1)}
	l.mode.Store(logUnknownLost)
	l.failed.Store(true)
	in, stop := newTestIntake(l, IntakeOptions{InFlightWait: 20 * time.Millisecond, ResolveAfter: 20 * time.Millisecond})
	defer stop()
	evs := clickEvents("z")
	out := make([]Outcome, 1)
	_ = in.Record(context.Background(), evs, time.Now(), out)
	time.Sleep(200 * time.Millisecond)
	l.mode.Store(logOK)
	if err := in.Record(context.Background(), evs, time.Now(), out); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("retry on a failed log: %v, want ErrUnavailable", err)
	}
	if n := len(l.memLog.events(t)); n != 0 {
		t.Fatalf("%d events appended, want 0", n)
	}
}

// ErrNotAppended is certain: the keys are free at once and the retry is appended.
func TestNotAppendedReleasesKeys(t *testing.T) {
	l := &faultLog{memLog: newMemLog(1)}
	l.mode.Store(logNotAppended)
	in, stop := newTestIntake(l, IntakeOptions{InFlightWait: 20 * time.Millisecond})
	defer stop()
	evs := clickEvents("n")
	out := make([]Outcome, 1)
	if err := in.Record(context.Background(), evs, time.Now(), out); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("got %v, want ErrUnavailable", err)
	}
	l.mode.Store(logOK)
	if err := in.Record(context.Background(), evs, time.Now(), out); err != nil || out[0] != Accepted {
		t.Fatalf("retry: %v %v", err, out)
	}
}

// keyAtATime is a dedup store that reserves a batch's keys one by one in the order given,
// yielding in between, as a pipeline of single-key calls to a Redis cluster does: two
// batches' reservations interleave.
type keyAtATime struct{ *dedup.Memory }

func (s keyAtATime) Reserve(ctx context.Context, keys []string, now time.Time, out []dedup.Status) error {
	for i := range keys {
		if err := s.Memory.Reserve(ctx, keys[i:i+1], now, out[i:i+1]); err != nil {
			return err
		}
		time.Sleep(50 * time.Microsecond)
	}
	return nil
}

// Overlapping batches that reserve the same keys in different orders never wait for each
// other until they give up: reservations are held in one global order.
func TestOverlappingBatchesDoNotDeadlock(t *testing.T) {
	l := &faultLog{memLog: newMemLog(4), delay: time.Millisecond}
	in := NewIntake(IntakeOptions{Log: l, Dedup: keyAtATime{dedup.NewMemory(24 * time.Hour)}, InFlightWait: time.Second})
	seed := testseed.Seed(t)
	var wg sync.WaitGroup
	var failures atomic.Int64
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(g)))
			for round := range 10 {
				// A fresh key space each round, shared by all goroutines, in random orders.
				var ids []string
				for _, k := range rng.Perm(12)[:8] {
					ids = append(ids, fmt.Sprintf("r%d-k%d", round, k))
				}
				evs := clickEvents(ids...)
				out := make([]Outcome, len(evs))
				if err := in.Record(context.Background(), evs, time.Now(), out); err != nil {
					failures.Add(1)
					t.Logf("goroutine %d round %d: %v", g, round, err)
				}
			}
		})
	}
	wg.Wait()
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d batches failed: overlapping reservations waited on each other", n)
	}
	for id, n := range countInLog(t, l.memLog) {
		if n != 1 {
			t.Fatalf("impression %s: %d copies", id, n)
		}
	}
}

// An event that waited longer than MaxHold is not appended: the stages after the log count
// on receive times being at most that far behind the log's order.
func TestMaxHoldRefusesStaleEvents(t *testing.T) {
	l := &faultLog{memLog: newMemLog(1)}
	in, stop := newTestIntake(l, IntakeOptions{MaxHold: time.Second})
	defer stop()
	evs := clickEvents("old")
	out := make([]Outcome, 1)
	if err := in.Record(context.Background(), evs, time.Now().Add(-2*time.Second), out); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("got %v, want ErrUnavailable", err)
	}
	if err := in.Record(context.Background(), evs, time.Now(), out); err != nil || out[0] != Accepted {
		t.Fatalf("retry: %v %v (the refused attempt must have released its key)", err, out)
	}
	if n := len(l.memLog.events(t)); n != 1 {
		t.Fatalf("%d events in the log, want 1", n)
	}
}
