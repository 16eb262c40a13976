package archive

import (
	"context"
	"crypto/sha256"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/testseed"
)

var errKilled = errors.New("injected crash")

// killer simulates a process that dies at its at-th write operation: that operation and
// every later one fails (reads too), as if nothing ran after it. With after, the at-th
// operation takes effect before it fails (the process died before it heard the answer).
type killer struct {
	mu    sync.Mutex
	ops   int
	at    int // 0: never
	after bool
	dead  bool
}

// write counts a write; it reports whether to do it and what to return.
func (k *killer) write() (do bool, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.dead {
		return false, errKilled
	}
	k.ops++
	if k.ops == k.at {
		k.dead = true
		return k.after, errKilled
	}
	return true, nil
}

func (k *killer) read() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.dead {
		return errKilled
	}
	return nil
}

func (k *killer) isDead() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.dead
}

// faultTarget puts a killer in front of any Target. With steps, the target counts its own
// write steps, and faultTarget only fails operations once the process is dead.
type faultTarget struct {
	Target
	k     *killer
	steps bool
}

func (f *faultTarget) write() (bool, error) {
	if f.steps {
		err := f.k.read()
		return err == nil, err
	}
	return f.k.write()
}

func (f *faultTarget) Put(ctx context.Context, key string, data []byte) error {
	do, err := f.write()
	if do {
		if perr := f.Target.Put(ctx, key, data); err == nil {
			err = perr
		}
	}
	return err
}

func (f *faultTarget) Delete(ctx context.Context, key string) error {
	do, err := f.write()
	if do {
		if derr := f.Target.Delete(ctx, key); err == nil {
			err = derr
		}
	}
	return err
}

func (f *faultTarget) DeleteAll(ctx context.Context, prefix string) error {
	do, err := f.write()
	if do {
		if derr := f.Target.DeleteAll(ctx, prefix); err == nil {
			err = derr
		}
	}
	return err
}

func (f *faultTarget) Get(ctx context.Context, key string) ([]byte, error) {
	if err := f.k.read(); err != nil {
		return nil, err
	}
	return f.Target.Get(ctx, key)
}

func (f *faultTarget) List(ctx context.Context, prefix string) ([]string, error) {
	if err := f.k.read(); err != nil {
		return nil, err
	}
	return f.Target.List(ctx, prefix)
}

// crashTest archives a growing log through many runs, each killed at a random point: a
// cancelled context at a random time, or a crash at the k-th write operation (of the
// target's own steps, through wrap). At the end, after a clean run, every event of the log
// must be archived exactly once with every field equal, and every file name written twice
// must have had the same content both times.
func crashTest(t *testing.T, base Target, wrap func(*killer) Target) {
	seed := testseed.Seed(t)
	rng := rand.New(rand.NewPCG(seed, 7))
	const parts = 3
	l := newMemLog(parts)
	gens := make([]*gen, parts)
	for p := range gens {
		gens[p] = &gen{rng: rand.New(rand.NewPCG(seed, uint64(p))), recv: t0.UnixMicro(), step: 300 * time.Millisecond}
	}
	clock := &fakeClock{}
	content := map[string][32]byte{}
	snapshot := func() {
		for _, k := range listAll(t, base, "") {
			if strings.HasPrefix(k, checkpointDir) {
				continue
			}
			b, err := base.Get(context.Background(), k)
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.Sum256(b)
			if old, ok := content[k]; ok && old != h {
				t.Fatalf("%s rewritten with different content", k)
			}
			content[k] = h
		}
	}
	opts := func(tg Target) Options {
		return Options{Log: l, Target: tg, ArchiveInterval: time.Minute, MaxFileEvents: 37, Slack: time.Second,
			PollInterval: time.Millisecond, RetryInterval: time.Millisecond, Now: clock.now}
	}
	var orphans, crashes int64
	rounds := 60
	if testing.Short() {
		rounds = 15
	}
	for round := range rounds {
		if rng.IntN(3) > 0 {
			for p, g := range gens {
				// Often a few events, which stay in the window of a file closed idle.
				l.appendEvents(p, g.batch(rng.IntN([]int{8, 150}[rng.IntN(2)])))
				if rng.IntN(10) == 0 {
					if err := l.Append(context.Background(), []eventlog.Message{{Partition: int32(p), Value: []byte{9, 9, 9}}}); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		// Sometimes far enough past the newest receive time for idle closes.
		clock.set(time.UnixMicro(gens[round%parts].recv).Add(time.Duration(rng.Int64N(int64(2*time.Minute))) - 30*time.Second))
		k := &killer{at: 1 + rng.IntN(20), after: rng.IntN(2) == 0}
		if rng.IntN(5) == 0 {
			k.at = 0
		}
		a, err := New(opts(wrap(k)))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		limit := time.After(time.Duration(rng.IntN(200)) * time.Millisecond)
	wait:
		for {
			select {
			case <-limit:
				break wait
			case <-time.After(time.Millisecond):
				if k.isDead() {
					crashes++
					break wait
				}
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		orphans += a.Stats().OrphansDeleted
		snapshot()
	}
	clock.set(time.UnixMicro(gens[0].recv).Add(time.Hour))
	a, err := New(opts(base))
	if err != nil {
		t.Fatal(err)
	}
	runUntil(t, a, caughtUp(l))
	a.Close()
	snapshot()
	orphans += a.Stats().OrphansDeleted
	if orphans != 0 {
		t.Errorf("%d orphans deleted: the cut rule did not repeat itself", orphans)
	}
	checkExactlyOnce(t, l, base)
	t.Logf("%d rounds, %d crashed at a write, %d files, %d events", rounds, crashes, len(content), len(l.all()))
}

func TestCrashLocal(t *testing.T) {
	dir := t.TempDir()
	base, err := newDirTarget(dir)
	if err != nil {
		t.Fatal(err)
	}
	base.noSync = true
	crashTest(t, base, func(k *killer) Target {
		tg := &dirTarget{root: dir, noSync: true}
		// The steps inside a Put (write, rename, directory sync) are crash points too: a
		// crash after the rename is a file written whose Put never returned.
		tg.fault = func(op, key string) error {
			_, err := k.write()
			return err
		}
		return &faultTarget{Target: tg, k: k, steps: true}
	})
}
