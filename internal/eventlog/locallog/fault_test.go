package locallog

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/testseed"

	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/cockroachdb/pebble/vfs"
)

// testSeed is the repository's seed convention (internal/testseed).
func testSeed(t testing.TB) uint64 { return testseed.Seed(t) }

// outcomes records what every Append of a randomized test returned, by value: each value is
// appended once, so a value read back names the Append that wrote it.
type outcomes struct {
	mu      sync.Mutex
	acked   map[string]eventlog.Message // Append returned nil: offset and time as reported
	refused map[string]error            // Append returned an error wrapping ErrNotAppended
	unknown map[string]error            // any other error
}

func newOutcomes() *outcomes {
	return &outcomes{acked: map[string]eventlog.Message{}, refused: map[string]error{}, unknown: map[string]error{}}
}

func (o *outcomes) record(msgs []eventlog.Message, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, m := range msgs {
		v := string(m.Value)
		switch {
		case err == nil:
			o.acked[v] = m
		case errors.Is(err, eventlog.ErrNotAppended):
			o.refused[v] = err
		default:
			o.unknown[v] = err
		}
	}
}

// check reads every partition of l and checks it against the outcomes: every acknowledged
// message is there once, at the offset and time Append reported; nothing refused is there;
// offsets are dense and every record is whole (readAll fails on a torn one). A message of
// unknown outcome may be there only when settle is set (the log was reopened after a failure
// or a crash); check then settles it: found, it counts as acknowledged from now on, and
// missing, as refused, so that a later crash can neither lose nor resurrect it. It returns
// the number of messages read.
func (o *outcomes) check(t *testing.T, l *Log, settle bool) int {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	seen := map[string]bool{}
	found := map[string]eventlog.Message{} // of unknown outcome
	n, bad := 0, 0
	errorf := func(format string, args ...any) {
		t.Helper()
		if bad++; bad > 20 {
			t.Fatalf("too many errors")
		}
		t.Errorf(format, args...)
	}
	for p := range l.Partitions() {
		start, _, err := l.Offsets(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		next := start
		for _, m := range readAll(t, l, p, start) {
			n++
			if m.Offset != next {
				t.Fatalf("partition %d: offset %d follows %d", p, m.Offset, next-1)
			}
			next++
			v := string(m.Value)
			if seen[v] {
				errorf("partition %d offset %d: %q is in the log twice", p, m.Offset, v)
			}
			seen[v] = true
			if a, ok := o.acked[v]; ok {
				if a.Partition != int32(p) || a.Offset != m.Offset || !a.Time.Equal(m.Time) {
					errorf("%q acknowledged at p%d @%d %v, read at p%d @%d %v", v, a.Partition, a.Offset, a.Time, p, m.Offset, m.Time)
				}
				continue
			}
			if err, ok := o.refused[v]; ok {
				errorf("partition %d offset %d: %q is in the log, but its Append returned %v", p, m.Offset, v, err)
				continue
			}
			if err, ok := o.unknown[v]; ok {
				if !settle {
					errorf("partition %d offset %d: %q is visible, but its Append returned %v", p, m.Offset, v, err)
				}
				found[v] = m
				continue
			}
			errorf("partition %d offset %d: %q was never appended", p, m.Offset, v)
		}
	}
	for v, m := range o.acked {
		if !seen[v] {
			errorf("acknowledged %q (p%d @%d) is missing", v, m.Partition, m.Offset)
		}
	}
	if settle {
		for v, err := range o.unknown {
			if m, ok := found[v]; ok {
				o.acked[v] = m
			} else {
				o.refused[v] = fmt.Errorf("lost in a failure or crash: %w", err)
			}
		}
		clear(o.unknown)
	}
	return n
}

// TestCanceledAppendNeverDurable cancels Appends at random moments, often while the committer
// holds their records between write and sync. An Append whose records became durable must
// not return an error: a client told "failed" retries, and the retry would count twice.
func TestCanceledAppendNeverDurable(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 4))
	var rngMu sync.Mutex
	randN := func(n int64) int64 {
		rngMu.Lock()
		defer rngMu.Unlock()
		return rng.Int64N(n)
	}
	// Slow syncs widen the window in which a request is taken but not yet durable.
	fs := newFaultFS()
	fs.setInject(func(op faultOp, _ string) (error, bool) {
		if op == opSync {
			time.Sleep(time.Duration(randN(int64(2 * time.Millisecond))))
		}
		return nil, false
	})
	opts := Options{Dir: testDir(t), Partitions: 3, SegmentBytes: 4 << 10, JournalBytes: 8 << 10, FS: fs}
	l := mustOpen(t, opts)

	o := newOutcomes()
	const appenders, each = 16, 40
	var wg sync.WaitGroup
	for g := range appenders {
		wg.Go(func() {
			for i := range each {
				msgs := make([]eventlog.Message, 1+randN(3))
				for j := range msgs {
					msgs[j] = eventlog.Message{Partition: int32(randN(3)), Value: fmt.Appendf(nil, "g%d-%d-%d", g, i, j)}
				}
				ctx, cancel := context.WithCancel(context.Background())
				switch randN(4) {
				case 0: // never canceled
				case 1:
					cancel()
				default:
					d := time.Duration(randN(int64(3 * time.Millisecond)))
					time.AfterFunc(d, cancel)
				}
				err := l.Append(ctx, msgs)
				cancel()
				o.record(msgs, err)
			}
		})
	}
	wg.Wait()
	t.Logf("%d acknowledged, %d not appended, %d unknown", len(o.acked), len(o.refused), len(o.unknown))
	for v, err := range o.unknown {
		t.Errorf("Append of %q = %v: neither nil nor ErrNotAppended", v, err)
		break
	}
	for v, err := range o.refused {
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Append of %q = %v: not appended, but not for its canceled context", v, err)
			break
		}
	}
	o.check(t, l, false)
	mustClose(t, l)
	o.check(t, mustOpen(t, opts), false)
}

// TestSyncFailure: a failed fsync fails the Appends of its commit with ErrNotAppended, and
// its records are rolled back (gone, also after a reopen); later Appends succeed. If the
// rollback fails too, the log fails for good: the outcome is unknown, Err and Run report the
// failure, and Appends are refused until the log is reopened.
func TestSyncFailure(t *testing.T) {
	dir := testDir(t)
	var failing sync.Mutex
	failNext := 0 // syncs to fail; -1: all
	fs := newFaultFS()
	fs.setInject(func(op faultOp, path string) (error, bool) {
		failing.Lock()
		defer failing.Unlock()
		if op == opSync && failNext != 0 {
			failNext--
			return errors.New("injected EIO"), false
		}
		return nil, false
	})
	setFail := func(n int) {
		failing.Lock()
		failNext = n
		failing.Unlock()
	}
	l := mustOpen(t, Options{Dir: dir, Partitions: 1, FS: fs})
	acked := appendN(t, l, 0, 5, "ok")
	setFail(1)
	ctx := context.Background()
	if err := l.Append(ctx, []eventlog.Message{{Value: []byte("rolled back")}}); !errors.Is(err, eventlog.ErrNotAppended) {
		t.Fatalf("Append whose sync failed = %v, want ErrNotAppended", err)
	}
	if err := l.Err(); err != nil {
		t.Fatalf("Err after a rolled-back commit = %v", err)
	}
	acked = append(acked, appendN(t, l, 0, 2, "after")...)
	checkSame(t, readAll(t, l, 0, 0), acked)

	setFail(-1)
	if err := l.Append(ctx, []eventlog.Message{{Value: []byte("unknown")}}); err == nil || errors.Is(err, eventlog.ErrNotAppended) {
		t.Fatalf("Append whose sync and rollback failed = %v, want an error of unknown outcome", err)
	}
	if l.Err() == nil {
		t.Fatal("Err = nil after a failed rollback")
	}
	if err := l.Run(ctx); err == nil {
		t.Fatal("Run of a failed log = nil")
	}
	setFail(0)
	if err := l.Append(ctx, []eventlog.Message{{Value: []byte("refused")}}); !errors.Is(err, eventlog.ErrNotAppended) {
		t.Fatalf("Append to a failed log = %v, want a refusal (ErrNotAppended)", err)
	}
	checkSame(t, readAll(t, l, 0, 0), acked)
	mustClose(t, l)

	l = mustOpen(t, Options{Dir: dir})
	// The record of unknown outcome may or may not be there (its write reached the page
	// cache); everything acknowledged must be, and nothing rolled back or refused.
	got := readAll(t, l, 0, 0)
	checkSame(t, got[:len(acked)], acked)
	if len(got) > len(acked)+1 || len(got) == len(acked)+1 && string(got[len(acked)].Value) != "unknown" {
		t.Errorf("after reopen the log holds %q", values(got))
	}
	appendN(t, l, 0, 1, "works")
}

// TestAppendCanceledWhileQueued: an Append whose context ends before the committer takes it is
// withdrawn and never written.
func TestAppendCanceledWhileQueued(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	fs := newFaultFS()
	l := mustOpen(t, Options{Dir: testDir(t), Partitions: 1, FS: fs})
	fs.setInject(holdFirstSync(entered, release))
	first := make(chan error, 1)
	go func() { first <- l.Append(context.Background(), []eventlog.Message{{Value: []byte("first")}}) }()
	<-entered // the committer is busy with "first"

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := l.Append(ctx, []eventlog.Message{{Value: []byte("withdrawn")}}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("queued Append with an expiring context = %v, want DeadlineExceeded", err)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 0, 1, "last")
	got := readAll(t, l, 0, 0)
	if len(got) != 2 || string(got[0].Value) != "first" || !strings.HasPrefix(string(got[1].Value), "last") {
		t.Errorf("log holds %q, want first and last only", values(got))
	}
}

// holdFirstSync is a faultFS injection that holds the first sync of a segment file until
// release is closed, after closing entered.
func holdFirstSync(entered, release chan struct{}) func(faultOp, string) (error, bool) {
	var hold sync.Once
	return func(op faultOp, path string) (error, bool) {
		if op == opSync && tracked(path) {
			hold.Do(func() {
				close(entered)
				<-release
			})
		}
		return nil, false
	}
}

// randomSizes picks a segment size and a journal size for one run of a crash or fault test:
// small segments roll in most rounds (each roll syncs its partition), large ones leave most
// rounds to the journal; a small journal checkpoints every few rounds, a large one never.
func randomSizes(rng *rand.Rand) (segmentBytes, journalBytes int64) {
	segs := [...]int64{1 << 10, 2 << 10, 1 << 20}
	journals := [...]int64{1 << 10, 8 << 10, 1 << 30}
	return segs[rng.IntN(len(segs))], journals[rng.IntN(len(journals))]
}

// errCrashed stands for the outcome of an Append that returned after the simulated crash
// began: whatever it said, only the reopened log can tell.
var errCrashed = errors.New("returned after the crash")

// appender appends random batches of unique values (tagged tag-g-i) to random partitions.
type appender struct {
	l     *Log
	o     *outcomes
	rng   *rand.Rand
	tag   string
	parts int
	i     int
}

// next appends one batch and records its outcome (as unknown if crashed is set by then).
// It returns Append's error.
func (a *appender) next(ctx context.Context, crashed *atomic.Bool) error {
	msgs := make([]eventlog.Message, 1+a.rng.IntN(4))
	for j := range msgs {
		v := fmt.Appendf(nil, "%s-%d-%d-", a.tag, a.i, j)
		for range a.rng.IntN(300) {
			v = append(v, byte('a'+a.rng.IntN(26)))
		}
		msgs[j] = eventlog.Message{Partition: int32(a.rng.IntN(a.parts)), Value: v}
	}
	a.i++
	err := a.l.Append(ctx, msgs)
	if crashed != nil && crashed.Load() {
		a.o.record(msgs, errCrashed)
	} else {
		a.o.record(msgs, err)
	}
	return err
}

// TestCrash appends from many goroutines to a log on a file system that keeps only what was
// synced (vfs.NewStrictMem), crashes it at a random moment, reopens it, and does that again.
// After every crash, every acknowledged record is there exactly once at its offset, offsets
// are dense, no torn record is readable, and nothing is there that was never appended.
func TestCrash(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 5))
	fs := vfs.NewStrictMem()
	opts := Options{Dir: "/log", Partitions: 3, SegmentBytes: 1 << 10, FS: fs}
	o := newOutcomes()
	const appenders = 6
	for crash := range 12 {
		opts.SegmentBytes, opts.JournalBytes = randomSizes(rng)
		l, err := Open(opts)
		if err != nil {
			t.Fatalf("crash %d: reopen: %v", crash, err)
		}
		o.check(t, l, true)

		// Crash once a random number of Appends were acknowledged, while the others are
		// anywhere in their commit: queued, written, half synced across partitions.
		target := 1 + rng.Int64N(200)
		var crashed atomic.Bool
		var acks atomic.Int64
		var crashOnce sync.Once
		var wg sync.WaitGroup
		for g := range appenders {
			a := &appender{l: l, o: o, rng: rand.New(rand.NewPCG(seed, uint64(crash*appenders+g))),
				tag: fmt.Sprintf("c%d-g%d", crash, g), parts: opts.Partitions}
			wg.Go(func() {
				for !crashed.Load() {
					if err := a.next(context.Background(), &crashed); err != nil {
						if !crashed.Load() {
							t.Errorf("Append before the crash: %v", err)
						}
						return
					}
					if acks.Add(1) >= target {
						crashOnce.Do(func() {
							crashed.Store(true)
							fs.SetIgnoreSyncs(true) // from here on nothing becomes durable
						})
					}
				}
			})
		}
		wg.Wait()
		_ = l.Close()
		fs.ResetToSyncedState()
		fs.SetIgnoreSyncs(false)
		if t.Failed() {
			t.FailNow()
		}
	}
	l, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	n := o.check(t, l, true)
	t.Logf("%d records survive 12 crashes; %d acknowledged Appends lost none of theirs", n, len(o.acked))
}

// TestFaults fails every k-th create, write, sync, truncate or remove (k random, changing
// after each reopen), some after the operation happened (a sync that reached the disk but
// reported an error, a short write). Appends caught in a failed commit must fail with
// ErrNotAppended and the log must keep working, unless the rollback itself failed: then
// their outcome is unknown, Err and Run report the failure and later Appends are refused
// (with ErrNotAppended: nothing of them is ever written). Readers
// never see a record that was not acknowledged. After each phase the log is closed and the
// machine "crashes" (unsynced data is dropped): every acknowledged record survives, and
// nothing rolled back comes back.
func TestFaults(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 6))
	fs := newFaultFS()
	opts := Options{Dir: testDir(t), Partitions: 3, SegmentBytes: 2 << 10, FS: fs}
	o := newOutcomes()
	ctx := context.Background()
	var rollbacks, failures int
	for phase := range 14 {
		opts.SegmentBytes, opts.JournalBytes = randomSizes(rng)
		l := mustOpen(t, opts)
		o.check(t, l, true)

		k := int64(2 + rng.IntN(30))
		var ops atomic.Int64
		var frng sync.Mutex
		faultRng := rand.New(rand.NewPCG(seed, uint64(100+phase)))
		fs.setInject(func(op faultOp, _ string) (error, bool) {
			if ops.Add(1)%k != 0 {
				return nil, false
			}
			frng.Lock()
			defer frng.Unlock()
			return fmt.Errorf("injected %v failure: %w", op, syscall.EIO), faultRng.IntN(3) == 0
		})
		var wg sync.WaitGroup
		for g := range 4 {
			a := &appender{l: l, o: o, rng: rand.New(rand.NewPCG(seed, uint64(phase*4+g))),
				tag: fmt.Sprintf("f%d-g%d", phase, g), parts: opts.Partitions}
			wg.Go(func() {
				for range 25 {
					err := a.next(ctx, nil)
					if err != nil && !errors.Is(err, eventlog.ErrNotAppended) && l.Err() == nil {
						t.Errorf("Append = %v (unknown outcome) while the log reports no failure", err)
					}
				}
			})
		}
		wg.Wait()
		fs.setInject(nil)
		rollbacks += int(l.Stats().Rollbacks)
		a := &appender{l: l, o: o, rng: rand.New(rand.NewPCG(seed, uint64(1000+phase))), tag: fmt.Sprintf("f%d-after", phase), parts: opts.Partitions}
		before := l.Err()
		err := a.next(ctx, nil)
		failure := l.Err()
		switch {
		case before != nil && (!errors.Is(err, eventlog.ErrNotAppended) || !errors.Is(err, before)):
			// Refused before anything is written: certainly not appended, as the contract
			// says of refusals, and the failure is named.
			t.Errorf("phase %d: Append to a failed log = %v, want a refusal (ErrNotAppended) naming %v", phase, err, before)
		case before == nil && err != nil && (failure == nil || !errors.Is(err, eventlog.ErrNotAppended) || !errors.Is(err, failure)):
			// The committer checkpoints after it answers a round, so a checkpoint begun
			// before the faults stopped may fail the log after the appenders returned:
			// then, and only then, this Append may be refused, naming that failure.
			t.Errorf("phase %d: Append after the faults stopped = %v (log failure: %v)", phase, err, failure)
		}
		if failure != nil {
			failures++
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if err := l.Run(rctx); err == nil || rctx.Err() != nil {
				t.Errorf("phase %d: Run of a failed log = %v (context: %v), want the failure", phase, err, rctx.Err())
			}
			cancel()
		}
		o.check(t, l, false) // nothing unacknowledged is visible before a reopen
		mustClose(t, l)
		if err := fs.Crash(); err != nil {
			t.Fatal(err)
		}
		if t.Failed() {
			t.FailNow()
		}
	}
	l := mustOpen(t, opts)
	n := o.check(t, l, true)
	t.Logf("%d records, %d acknowledged Appends; %d rolled-back commits, %d phases ended with the log failed",
		n, len(o.acked), rollbacks, failures)
	if rollbacks == 0 {
		t.Error("no commit was rolled back: the faults missed")
	}
}

// TestDiskFull fills the disk: writes fail with ENOSPC (after writing part of their bytes)
// and so do creates. Appends must fail with ErrNotAppended, the log must stay healthy, and
// once space returns Appends succeed again. The log then holds exactly the acknowledged
// records, also after a crash.
func TestDiskFull(t *testing.T) {
	seed := testSeed(t)
	fs := newFaultFS()
	opts := Options{Dir: testDir(t), Partitions: 2, SegmentBytes: 2 << 10, JournalBytes: 8 << 10, FS: fs}
	l := mustOpen(t, opts)
	o := newOutcomes()
	ctx := context.Background()
	run := func(phase string, wantErr bool) {
		t.Helper()
		var wg sync.WaitGroup
		for g := range 4 {
			a := &appender{l: l, o: o, rng: rand.New(rand.NewPCG(seed, uint64(len(phase)*10+g))),
				tag: fmt.Sprintf("%s-g%d", phase, g), parts: opts.Partitions}
			wg.Go(func() {
				for range 20 {
					err := a.next(ctx, nil)
					switch {
					case !wantErr && err != nil:
						t.Errorf("%s: Append = %v", phase, err)
					case wantErr && (!errors.Is(err, eventlog.ErrNotAppended) || !errors.Is(err, syscall.ENOSPC)):
						t.Errorf("%s: Append = %v, want ErrNotAppended for ENOSPC", phase, err)
					}
				}
			})
		}
		wg.Wait()
	}
	run("before", false)
	var full atomic.Bool
	full.Store(true)
	fs.setInject(func(op faultOp, path string) (error, bool) {
		if full.Load() && (op == opWrite || op == opCreate) {
			return &os.PathError{Op: op.String(), Path: path, Err: syscall.ENOSPC}, op == opWrite
		}
		return nil, false
	})
	run("full", true)
	if err := l.Err(); err != nil {
		t.Fatalf("Err while the disk is full = %v; a full disk must not fail the log", err)
	}
	o.check(t, l, false)
	full.Store(false)
	run("freed", false)
	o.check(t, l, false)
	mustClose(t, l)
	if err := fs.Crash(); err != nil {
		t.Fatal(err)
	}
	l = mustOpen(t, opts)
	n := o.check(t, l, false)
	t.Logf("%d records; %d Appends refused while the disk was full", n, len(o.refused))
}
