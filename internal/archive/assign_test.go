package archive

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/testseed"
)

// archiveBytes returns every data file's content by key.
func archiveBytes(t *testing.T, tg Target) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, k := range listAll(t, tg, "") {
		if strings.HasPrefix(k, checkpointDir) {
			continue
		}
		b, err := tg.Get(context.Background(), k)
		if err != nil {
			t.Fatal(err)
		}
		out[k] = string(b)
	}
	return out
}

// TestHandOverSameFiles: partitions handed from one Archiver to another in the middle of
// the log (Revoke, then Assign elsewhere, on the same target) give exactly the archive one
// Archiver writes alone: the same file names with the same bytes, each event once.
func TestHandOverSameFiles(t *testing.T) {
	seed := testseed.Seed(t)
	rng := rand.New(rand.NewPCG(seed, 3))
	const parts = 3
	l := newMemLog(parts)
	g := &gen{rng: rand.New(rand.NewPCG(seed, 1)), recv: t0.UnixMicro(), step: 50 * time.Millisecond}
	for p := range parts {
		l.appendEvents(p, g.batch(2000+rng.IntN(2000)))
	}
	clock := &fakeClock{}
	clock.set(t0.Add(24 * time.Hour)) // idle closes only at the log's end, in both runs
	opts := func(tg Target, unassigned bool) Options {
		return Options{Log: l, Target: tg, ArchiveInterval: time.Minute, MaxFileEvents: 97, ReadBytes: 4 << 10,
			PollInterval: time.Millisecond, Now: clock.now, Unassigned: unassigned}
	}

	ref, _ := NewDirTarget(t.TempDir())
	a, err := New(opts(ref, false))
	if err != nil {
		t.Fatal(err)
	}
	runUntil(t, a, caughtUp(l))
	a.Close()

	shared, _ := NewDirTarget(t.TempDir())
	x, _ := New(opts(shared, true))
	y, _ := New(opts(shared, true))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for _, ar := range []*Archiver{x, y} {
		wg.Add(1)
		go func() { defer wg.Done(); _ = ar.Run(ctx) }()
	}
	if err := x.Assign(ctx, []int32{0, 1, 2}); err != nil {
		t.Fatal(err)
	}
	if err := x.Assign(ctx, []int32{3}); err == nil {
		t.Fatal("assigning a partition the log does not have succeeded")
	}
	// Move partitions back and forth a few times, at random moments.
	owner := [parts]*Archiver{x, x, x}
	for range 8 {
		time.Sleep(time.Duration(rng.IntN(15)) * time.Millisecond)
		p := int32(rng.IntN(parts))
		from, to := owner[p], x
		if from == x {
			to = y
		}
		from.Revoke([]int32{p})
		if err := to.Assign(ctx, []int32{p}); err != nil {
			t.Fatal(err)
		}
		owner[p] = to
	}
	deadline := time.Now().Add(time.Minute)
	for {
		done := true
		for p := range parts {
			s := owner[p].Stats().Partitions[p]
			_, end, _ := l.Offsets(ctx, p)
			done = done && s.Owned && s.Committed == end
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not caught up: %+v / %+v", x.Stats().Partitions, y.Stats().Partitions)
		}
		time.Sleep(2 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	checkExactlyOnce(t, l, shared)
	want, got := archiveBytes(t, ref), archiveBytes(t, shared)
	if len(want) != len(got) {
		t.Errorf("%d files after hand-overs, %d written by one archiver", len(got), len(want))
	}
	for k, b := range want {
		if got[k] != b {
			t.Errorf("%s: differs after hand-overs (present %v)", k, got[k] != "")
		}
	}
	t.Logf("%d files identical; x wrote %d, y wrote %d", len(want), x.Stats().FilesWritten, y.Stats().FilesWritten)
}

// blockingTarget holds every data file Put until its context ends, counting Puts.
type blockingTarget struct {
	Target
	puts    atomic.Int64
	blocked chan struct{}
	once    sync.Once
}

func (b *blockingTarget) Put(ctx context.Context, key string, data []byte) error {
	b.puts.Add(1)
	if strings.HasPrefix(key, checkpointDir) {
		return b.Target.Put(ctx, key, data)
	}
	b.once.Do(func() { close(b.blocked) })
	<-ctx.Done()
	return ctx.Err()
}

// TestRevokeWaitsAndStops: Revoke cuts a write stalled on the target short, returns, and
// nothing is written for the partition after it; the stall is not counted as a failure.
func TestRevokeWaitsAndStops(t *testing.T) {
	l := newMemLog(1)
	g := &gen{rng: rand.New(rand.NewPCG(1, 1)), recv: t0.UnixMicro(), step: 50 * time.Millisecond}
	l.appendEvents(0, g.batch(500))
	base, _ := NewDirTarget(t.TempDir())
	tg := &blockingTarget{Target: base, blocked: make(chan struct{})}
	clock := &fakeClock{}
	clock.set(t0.Add(24 * time.Hour))
	a, err := New(Options{Log: l, Target: tg, MaxFileEvents: 100, PollInterval: time.Millisecond, Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	select {
	case <-tg.blocked:
	case <-time.After(10 * time.Second):
		t.Fatal("no write started")
	}
	revoked := make(chan struct{})
	go func() { a.Revoke([]int32{0}); close(revoked) }()
	select {
	case <-revoked:
	case <-time.After(10 * time.Second):
		t.Fatal("Revoke did not return while a write was stalled")
	}
	n := tg.puts.Load()
	time.Sleep(50 * time.Millisecond)
	if m := tg.puts.Load(); m != n {
		t.Errorf("%d writes after Revoke returned", m-n)
	}
	if s := a.Stats(); s.Errors != 0 || s.Partitions[0].Owned || len(a.Owned()) != 0 {
		t.Errorf("after Revoke: %+v", s)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// failingTarget fails every call while failing is set.
type failingTarget struct {
	Target
	failing atomic.Bool
}

var errDown = errors.New("target down")

func (f *failingTarget) Put(ctx context.Context, key string, data []byte) error {
	if f.failing.Load() {
		return errDown
	}
	return f.Target.Put(ctx, key, data)
}

func (f *failingTarget) Get(ctx context.Context, key string) ([]byte, error) {
	if f.failing.Load() {
		return nil, errDown
	}
	return f.Target.Get(ctx, key)
}

// TestErrReportsFailingTarget: Err names a target that keeps failing, and clears once a
// write succeeds again.
func TestErrReportsFailingTarget(t *testing.T) {
	l := newMemLog(1)
	g := &gen{rng: rand.New(rand.NewPCG(1, 2)), recv: t0.UnixMicro(), step: 50 * time.Millisecond}
	l.appendEvents(0, g.batch(300))
	base, _ := NewDirTarget(t.TempDir())
	tg := &failingTarget{Target: base}
	tg.failing.Store(true)
	clock := &fakeClock{}
	clock.set(t0.Add(24 * time.Hour))
	a, err := New(Options{Log: l, Target: tg, PollInterval: time.Millisecond, RetryInterval: time.Millisecond,
		UnhealthyAfter: 20 * time.Millisecond, Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; stats %+v", what, a.Stats())
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	wait("Err", func() bool { return a.Err() != nil })
	if !strings.Contains(a.Err().Error(), "target down") {
		t.Errorf("Err = %v", a.Err())
	}
	tg.failing.Store(false)
	wait("recovery", func() bool { return a.Err() == nil && a.Stats().Partitions[0].Committed == 300 })
	cancel()
	<-done
}
