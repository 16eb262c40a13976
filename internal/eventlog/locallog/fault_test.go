package locallog

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/eventlog"
)

var seedFlag = flag.Uint64("seed", 0, "seed of the random tests (0: from the clock)")

// testSeed returns the seed of a randomized test and logs it, so that a failure can be replayed.
func testSeed(t testing.TB) uint64 {
	t.Helper()
	s := *seedFlag
	if s == 0 {
		s = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay with -seed %d)", s, s)
	return s
}

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
	opts := Options{Dir: testDir(t), Partitions: 3, SegmentBytes: 4 << 10, FS: fs}
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
