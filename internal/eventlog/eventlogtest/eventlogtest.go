// Package eventlogtest is the conformance suite of the eventlog.Log contract. Every
// implementation (locallog, kafkalog) runs it from its own tests:
//
//	func TestConformance(t *testing.T) {
//		eventlogtest.Run(t, func(t *testing.T, partitions int) eventlogtest.Opener { ... })
//	}
//
// The suite checks the invariants written on eventlog.Log: offsets start at the start offset
// and grow by one per message, acknowledged messages are readable exactly once, in order and
// byte for byte, across close and reopen, from many concurrent appenders; and the edge cases
// of the API (end of partition, out of range, bad partition, closed log, buffer reuse).
//
// It is written against the interface only, so it needs no clock control: times are checked
// against the wall clock with a generous tolerance and against what Append reported.
// Random choices come from a seed printed in the log of the test that uses it.
package eventlogtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/eventlog"
)

// Factory creates fresh, empty storage for a log with the given number of partitions and
// returns an Opener over it. Cleanup of the storage is the factory's business (t.TempDir,
// t.Cleanup).
type Factory func(t *testing.T, partitions int) Opener

// Opener opens a Log over the storage its Factory created, failing t if it cannot. The suite
// calls it again after closing the previous Log to check durability; it never keeps two Logs
// open over the same storage.
type Opener func(t *testing.T) eventlog.Log

// Run runs the conformance suite against the implementation made by newLog. Its subtests are
// parallel, so they run after the calling test function returns; each has its own storage.
//
// Where the eventlog.Log comments leave room, the suite pins one behaviour so that consumers
// can rely on it with any backend:
//   - Read never returns more than maxBytes of values unless it returns a single message (a
//     Kafka backend trims the record batches a fetch returns);
//   - Read past the end offset returns no message and either no error or ErrOffsetOutOfRange;
//   - OffsetForTime on an empty partition returns its end offset, without error;
//   - Append with a context already done returns the context's error.
func Run(t *testing.T, newLog Factory) {
	tests := []struct {
		name string
		fn   func(*testing.T, Factory)
	}{
		{"Partitions", testPartitions},
		{"EmptyLog", testEmptyLog},
		{"OffsetsAndTimes", testOffsetsAndTimes},
		{"ReadInOrder", testReadInOrder},
		{"ReadMaxBytes", testReadMaxBytes},
		{"ReadManySmall", testReadManySmall},
		{"ReadAtAndPastEnd", testReadAtAndPastEnd},
		{"ReadBelowStart", testReadBelowStart},
		{"BadPartition", testBadPartition},
		{"OffsetForTime", testOffsetForTime},
		{"ConcurrentAppends", testConcurrentAppends},
		{"Reopen", testReopen},
		{"Closed", testClosed},
		{"CanceledContext", testCanceledContext},
		{"NoAliasing", testNoAliasing},
		{"ReadBuffered", testReadBuffered},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newLog)
		})
	}
}

// opened is a Log under test that is closed at the end of the test unless the test closed it.
type opened struct {
	eventlog.Log
	closed bool
}

func open(t *testing.T, o Opener) *opened {
	t.Helper()
	l := &opened{Log: o(t)}
	t.Cleanup(func() {
		if !l.closed {
			_ = l.Log.Close()
		}
	})
	return l
}

func (l *opened) close(t *testing.T) {
	t.Helper()
	l.closed = true
	if err := l.Log.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func newRand(t *testing.T) *rand.Rand {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	return rand.New(rand.NewPCG(uint64(seed), 0x5eed))
}

func value(tag string, i, size int) []byte {
	v := fmt.Appendf(nil, "%s-%06d-", tag, i)
	for len(v) < size {
		v = append(v, byte('a'+len(v)%26))
	}
	return v
}

func msgs(partition int, tag string, n, size int) []eventlog.Message {
	ms := make([]eventlog.Message, n)
	for i := range ms {
		ms[i] = eventlog.Message{Partition: int32(partition), Value: value(tag, i, size)}
	}
	return ms
}

func appendOK(t *testing.T, l eventlog.Log, ms []eventlog.Message) {
	t.Helper()
	if err := l.Append(context.Background(), ms); err != nil {
		t.Fatalf("Append: %v", err)
	}
}

func offsets(t *testing.T, l eventlog.Log, p int) (start, end int64) {
	t.Helper()
	start, end, err := l.Offsets(context.Background(), p)
	if err != nil {
		t.Fatalf("Offsets(%d): %v", p, err)
	}
	return start, end
}

// readAll reads partition p from offset from to its end, checking what every Read promises.
func readAll(t *testing.T, l eventlog.Log, p int, from int64, maxBytes int) []eventlog.Message {
	t.Helper()
	_, end := offsets(t, l, p)
	var out []eventlog.Message
	for next := from; next < end; {
		got, err := l.Read(context.Background(), p, next, maxBytes)
		if err != nil {
			t.Fatalf("Read(%d, %d, %d): %v", p, next, maxBytes, err)
		}
		if len(got) == 0 {
			t.Fatalf("Read(%d, %d, %d) returned nothing before end offset %d", p, next, maxBytes, end)
		}
		for _, m := range got {
			if m.Offset != next || m.Partition != int32(p) {
				t.Fatalf("Read(%d, ...) returned partition %d offset %d, want partition %d offset %d", p, m.Partition, m.Offset, p, next)
			}
			next++
		}
		out = append(out, got...)
	}
	return out
}

// sameMessages checks that got holds exactly want (as acknowledged by Append), in order.
func sameMessages(t *testing.T, got, want []eventlog.Message) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d messages, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Partition != w.Partition || g.Offset != w.Offset || !g.Time.Equal(w.Time) || !bytes.Equal(g.Value, w.Value) {
			t.Fatalf("message %d: got {p%d @%d %v %q}, want {p%d @%d %v %q}", i,
				g.Partition, g.Offset, g.Time, g.Value, w.Partition, w.Offset, w.Time, w.Value)
		}
	}
}

func testPartitions(t *testing.T, newLog Factory) {
	for _, n := range []int{1, 3} {
		l := open(t, newLog(t, n))
		if got := l.Partitions(); got != n {
			t.Errorf("Partitions() = %d, want %d", got, n)
		}
	}
}

func testEmptyLog(t *testing.T, newLog Factory) {
	l := open(t, newLog(t, 2))
	for p := range 2 {
		start, end := offsets(t, l, p)
		if start != 0 || end != 0 {
			t.Errorf("Offsets(%d) of a new log = %d, %d; want 0, 0", p, start, end)
		}
		got, err := l.Read(context.Background(), p, 0, 1<<20)
		if err != nil || len(got) != 0 {
			t.Errorf("Read(%d, 0) of a new log = %d messages, %v; want none, nil", p, len(got), err)
		}
		off, err := l.OffsetForTime(context.Background(), p, time.Now().Add(-time.Hour))
		if err != nil || off != 0 {
			t.Errorf("OffsetForTime(%d) of a new log = %d, %v; want 0, nil", p, off, err)
		}
	}
	if err := l.Append(context.Background(), nil); err != nil {
		t.Errorf("Append(nil) = %v, want nil", err)
	}
}

func testOffsetsAndTimes(t *testing.T, newLog Factory) {
	const parts = 3
	l := open(t, newLog(t, parts))
	var starts, next [parts]int64
	for p := range parts {
		starts[p], next[p] = offsets(t, l, p)
	}
	batches := [][]eventlog.Message{
		msgs(0, "single", 1, 20),
		msgs(1, "batch", 5, 20),
		// One batch over every partition, interleaved: offsets are per partition.
		{{Partition: 2, Value: []byte("x0")}, {Partition: 0, Value: []byte("x1")}, {Partition: 2, Value: []byte("x2")},
			{Partition: 1, Value: []byte("x3")}, {Partition: 0, Value: []byte("x4")}, {Partition: 2, Value: []byte("x5")}},
		msgs(0, "again", 3, 20),
		{{Partition: 1, Value: nil}}, // an empty value is a message too
	}
	for _, b := range batches {
		before := time.Now()
		for i := range b {
			b[i].Offset, b[i].Time = -42, time.Time{} // Append must overwrite both
		}
		appendOK(t, l, b)
		after := time.Now()
		for i, m := range b {
			if m.Offset != next[m.Partition] {
				t.Errorf("message %d of batch (partition %d): offset %d, want %d", i, m.Partition, m.Offset, next[m.Partition])
			}
			next[m.Partition]++
			// Clocks of a remote broker may differ a little; a zero or stale time is the bug.
			if m.Time.Before(before.Add(-2*time.Second)) || m.Time.After(after.Add(2*time.Second)) {
				t.Errorf("message %d: time %v, not within the Append call [%v, %v]", i, m.Time, before, after)
			}
			if m.Time.UnixNano()%int64(time.Millisecond) != 0 {
				t.Errorf("message %d: time %v has sub-millisecond precision", i, m.Time)
			}
		}
	}
	for p := range parts {
		start, end := offsets(t, l, p)
		if start != starts[p] || end != next[p] {
			t.Errorf("Offsets(%d) = %d, %d; want %d, %d", p, start, end, starts[p], next[p])
		}
	}
}

func testReadInOrder(t *testing.T, newLog Factory) {
	const parts = 2
	l := open(t, newLog(t, parts))
	var want [parts][]eventlog.Message
	for i := range 10 {
		b := append(msgs(0, fmt.Sprint("a", i), 1+i, 50), msgs(1, fmt.Sprint("b", i), 2, 10)...)
		appendOK(t, l, b)
		for _, m := range b {
			want[m.Partition] = append(want[m.Partition], m)
		}
	}
	for p := range parts {
		sameMessages(t, readAll(t, l, p, 0, 1<<20), want[p])
		// From the middle, and with small reads that must resume where the last one ended.
		sameMessages(t, readAll(t, l, p, 7, 1<<20), want[p][7:])
		sameMessages(t, readAll(t, l, p, 0, 60), want[p])
	}
}

func testReadMaxBytes(t *testing.T, newLog Factory) {
	l := open(t, newLog(t, 1))
	const size = 100
	ms := msgs(0, "m", 20, size)
	appendOK(t, l, ms)
	ctx := context.Background()
	for _, maxBytes := range []int{1, size - 1, size, 250, 1000} {
		got, err := l.Read(ctx, 0, 0, maxBytes)
		if err != nil {
			t.Fatalf("Read(maxBytes=%d): %v", maxBytes, err)
		}
		if len(got) == 0 {
			t.Fatalf("Read(maxBytes=%d) returned nothing; want at least one message", maxBytes)
		}
		total := 0
		for _, m := range got {
			total += len(m.Value)
		}
		if len(got) > 1 && total > maxBytes {
			t.Errorf("Read(maxBytes=%d) returned %d messages with %d value bytes", maxBytes, len(got), total)
		}
		sameMessages(t, got, ms[:len(got)])
	}
	// A message larger than maxBytes is still returned, alone.
	big := msgs(0, "big", 1, 10_000)
	appendOK(t, l, big)
	got, err := l.Read(ctx, 0, big[0].Offset, 100)
	if err != nil {
		t.Fatalf("Read of a message larger than maxBytes: %v", err)
	}
	sameMessages(t, got, big)
}

// testReadManySmall reads thousands of tiny messages per Read: framing overhead then dwarfs the
// values, which catches reads that size or reuse their buffers by value bytes alone.
func testReadManySmall(t *testing.T, newLog Factory) {
	l := open(t, newLog(t, 1))
	ms := make([]eventlog.Message, 5000)
	for i := range ms {
		ms[i].Value = []byte(fmt.Sprint(i))
	}
	appendOK(t, l, ms)
	for _, maxBytes := range []int{100, 4000, 1 << 20} {
		sameMessages(t, readAll(t, l, 0, 0, maxBytes), ms)
	}
	got, err := l.Read(context.Background(), 0, 1234, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	sameMessages(t, got, ms[1234:1234+len(got)])
}

func testReadAtAndPastEnd(t *testing.T, newLog Factory) {
	l := open(t, newLog(t, 1))
	appendOK(t, l, msgs(0, "m", 3, 10))
	_, end := offsets(t, l, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	begin := time.Now()
	got, err := l.Read(ctx, 0, end, 1<<20)
	if err != nil || len(got) != 0 {
		t.Errorf("Read at end = %d messages, %v; want none, nil", len(got), err)
	}
	// Not a speed assertion: Read must not wait for new messages (a long poll would take seconds).
	if el := time.Since(begin); el > 2*time.Second {
		t.Errorf("Read at end took %v; it must not wait for new messages", el)
	}
	// Past the end there is nothing to read: either none or out of range, never a message.
	got, err = l.Read(ctx, 0, end+5, 1<<20)
	if len(got) != 0 || (err != nil && !errors.Is(err, eventlog.ErrOffsetOutOfRange)) {
		t.Errorf("Read past end = %d messages, %v; want none and nil or ErrOffsetOutOfRange", len(got), err)
	}
}

func testReadBelowStart(t *testing.T, newLog Factory) {
	l := open(t, newLog(t, 1))
	appendOK(t, l, msgs(0, "m", 3, 10))
	start, _ := offsets(t, l, 0)
	for _, off := range []int64{start - 1, -1000} {
		if off >= start {
			continue
		}
		got, err := l.Read(context.Background(), 0, off, 1<<20)
		if !errors.Is(err, eventlog.ErrOffsetOutOfRange) || len(got) != 0 {
			t.Errorf("Read(%d) below start %d = %d messages, %v; want ErrOffsetOutOfRange", off, start, len(got), err)
		}
	}
}

func testBadPartition(t *testing.T, newLog Factory) {
	const parts = 2
	l := open(t, newLog(t, parts))
	ctx := context.Background()
	for _, p := range []int{-1, parts, 1000} {
		err := l.Append(ctx, []eventlog.Message{{Partition: int32(p), Value: []byte("x")}})
		if !errors.Is(err, eventlog.ErrBadPartition) {
			t.Errorf("Append to partition %d = %v, want ErrBadPartition", p, err)
		}
		if _, err := l.Read(ctx, p, 0, 100); !errors.Is(err, eventlog.ErrBadPartition) {
			t.Errorf("Read(%d) = %v, want ErrBadPartition", p, err)
		}
		if _, _, err := l.Offsets(ctx, p); !errors.Is(err, eventlog.ErrBadPartition) {
			t.Errorf("Offsets(%d) = %v, want ErrBadPartition", p, err)
		}
		if _, err := l.OffsetForTime(ctx, p, time.Now()); !errors.Is(err, eventlog.ErrBadPartition) {
			t.Errorf("OffsetForTime(%d) = %v, want ErrBadPartition", p, err)
		}
	}
	// A batch with one bad partition fails as a whole.
	err := l.Append(ctx, []eventlog.Message{{Partition: 0, Value: []byte("ok")}, {Partition: parts, Value: []byte("bad")}})
	if !errors.Is(err, eventlog.ErrBadPartition) {
		t.Errorf("Append of a batch with a bad partition = %v, want ErrBadPartition", err)
	}
}

func testOffsetForTime(t *testing.T, newLog Factory) {
	l := open(t, newLog(t, 2))
	ctx := context.Background()
	var all []eventlog.Message
	for i := range 5 {
		b := msgs(0, fmt.Sprint("t", i), 3, 10)
		appendOK(t, l, b)
		all = append(all, b...)
		time.Sleep(3 * time.Millisecond) // distinct append milliseconds between batches
	}
	_, end := offsets(t, l, 0)
	// want is the definition: the first offset whose append time is at or after at.
	want := func(at time.Time) int64 {
		for _, m := range all {
			if !m.Time.Before(at) {
				return m.Offset
			}
		}
		return end
	}
	probes := []time.Time{all[0].Time.Add(-time.Hour), all[len(all)-1].Time.Add(time.Hour)}
	for _, m := range all {
		probes = append(probes, m.Time, m.Time.Add(-time.Microsecond), m.Time.Add(time.Microsecond), m.Time.Add(time.Millisecond))
	}
	for _, at := range probes {
		got, err := l.OffsetForTime(ctx, 0, at)
		if err != nil {
			t.Fatalf("OffsetForTime(%v): %v", at, err)
		}
		if got != want(at) {
			t.Errorf("OffsetForTime(%v) = %d, want %d", at, got, want(at))
		}
	}
	// The other partition is empty: its end offset.
	if got, err := l.OffsetForTime(ctx, 1, all[0].Time); err != nil || got != 0 {
		t.Errorf("OffsetForTime on an empty partition = %d, %v; want 0, nil", got, err)
	}
}

// testConcurrentAppends has many goroutines append random batches while readers follow the
// partitions; afterwards every acknowledged message must be readable exactly once, at the
// offset Append reported.
func testConcurrentAppends(t *testing.T, newLog Factory) {
	const (
		parts      = 4
		appenders  = 32
		perAppends = 25
	)
	l := open(t, newLog(t, parts))
	rng := newRand(t)
	seeds := make([]uint64, appenders)
	for i := range seeds {
		seeds[i] = rng.Uint64()
	}

	type ack struct {
		partition int32
		offset    int64
	}
	var (
		mu    sync.Mutex
		acked = map[string]ack{}
	)
	ctx := context.Background()
	stop := make(chan struct{})
	var readers sync.WaitGroup
	for p := range parts {
		readers.Go(func() {
			// Followers see a growing prefix: contiguous offsets, never a gap or a repeat.
			var next int64
			for {
				got, err := l.Read(ctx, p, next, 4096)
				if err != nil {
					t.Errorf("follower Read(%d, %d): %v", p, next, err)
					return
				}
				for _, m := range got {
					if m.Offset != next {
						t.Errorf("follower of partition %d: offset %d, want %d", p, m.Offset, next)
						return
					}
					next++
				}
				if len(got) == 0 {
					select {
					case <-stop:
						return
					default:
						time.Sleep(100 * time.Microsecond)
					}
				}
			}
		})
	}

	var appendersWG sync.WaitGroup
	for g := range appenders {
		appendersWG.Go(func() {
			r := rand.New(rand.NewPCG(seeds[g], 1))
			for i := range perAppends {
				n := 1 + r.IntN(4)
				if r.IntN(10) == 0 {
					n = 50
				}
				b := make([]eventlog.Message, n)
				for j := range b {
					b[j] = eventlog.Message{Partition: int32(r.IntN(parts)), Value: fmt.Appendf(nil, "g%d-a%d-m%d", g, i, j)}
				}
				if err := l.Append(ctx, b); err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				mu.Lock()
				for _, m := range b {
					acked[string(m.Value)] = ack{m.Partition, m.Offset}
				}
				mu.Unlock()
			}
		})
	}
	appendersWG.Wait()
	close(stop)
	readers.Wait()
	if t.Failed() {
		return
	}

	seen := map[string]bool{}
	for p := range parts {
		for _, m := range readAll(t, l, p, 0, 1<<16) {
			v := string(m.Value)
			a, ok := acked[v]
			switch {
			case !ok:
				t.Errorf("partition %d offset %d: %q was never acknowledged", p, m.Offset, v)
			case seen[v]:
				t.Errorf("partition %d offset %d: %q read twice", p, m.Offset, v)
			case a.partition != int32(p) || a.offset != m.Offset:
				t.Errorf("%q acknowledged at partition %d offset %d, read at partition %d offset %d", v, a.partition, a.offset, p, m.Offset)
			}
			seen[v] = true
		}
	}
	if len(seen) != len(acked) {
		t.Errorf("read %d distinct messages, %d were acknowledged", len(seen), len(acked))
	}
}

func testReopen(t *testing.T, newLog Factory) {
	const parts = 3
	opener := newLog(t, parts)
	l := open(t, opener)
	var want [parts][]eventlog.Message
	add := func(l eventlog.Log, tag string) {
		for p := range parts {
			b := msgs(p, tag, 4+p, 30)
			appendOK(t, l, b)
			want[p] = append(want[p], b...)
		}
	}
	check := func(l eventlog.Log) {
		for p := range parts {
			start, end := offsets(t, l, p)
			if start != 0 || end != int64(len(want[p])) {
				t.Errorf("after reopen, Offsets(%d) = %d, %d; want 0, %d", p, start, end, len(want[p]))
			}
			sameMessages(t, readAll(t, l, p, 0, 1<<20), want[p])
		}
	}
	add(l, "first")
	l.close(t)

	l = open(t, opener)
	if l.Partitions() != parts {
		t.Fatalf("after reopen, Partitions() = %d, want %d", l.Partitions(), parts)
	}
	check(l)
	add(l, "second") // appends continue at the end offset
	l.close(t)

	l = open(t, opener)
	check(l)
	// Reopening without appending must not lose or add anything either.
	l.close(t)
	l = open(t, opener)
	check(l)
}

func testClosed(t *testing.T, newLog Factory) {
	l := open(t, newLog(t, 1))
	appendOK(t, l, msgs(0, "m", 1, 10))
	l.close(t)
	err := l.Append(context.Background(), msgs(0, "late", 1, 10))
	if !errors.Is(err, eventlog.ErrClosed) {
		t.Errorf("Append after Close = %v, want ErrClosed", err)
	}
}

func testCanceledContext(t *testing.T, newLog Factory) {
	l := open(t, newLog(t, 1))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.Append(ctx, msgs(0, "m", 1, 10)); !errors.Is(err, context.Canceled) {
		t.Errorf("Append with a canceled context = %v, want context.Canceled", err)
	}
	// The log still works for others.
	appendOK(t, l, msgs(0, "m", 1, 10))
}

// testNoAliasing checks both directions of buffer ownership: the caller may reuse a value's
// buffer once Append returns, and what Read returned stays valid (and private) afterwards.
func testNoAliasing(t *testing.T, newLog Factory) {
	l := open(t, newLog(t, 1))
	var want []eventlog.Message
	buf := make([]byte, 0, 64)
	for i := range 10 {
		buf = fmt.Appendf(buf[:0], "value-%d", i)
		m := []eventlog.Message{{Value: buf}}
		appendOK(t, l, m)
		want = append(want, eventlog.Message{Offset: m[0].Offset, Time: m[0].Time, Value: bytes.Clone(buf)})
		for j := range buf {
			buf[j] = 'X'
		}
	}
	// A batch whose values share one backing array, scribbled over after Append.
	shared := []byte("aaaabbbbcccc")
	batch := []eventlog.Message{{Value: shared[0:4]}, {Value: shared[4:8]}, {Value: shared[8:12]}}
	appendOK(t, l, batch)
	for _, m := range batch {
		want = append(want, eventlog.Message{Offset: m.Offset, Time: m.Time, Value: bytes.Clone(m.Value)})
	}
	copy(shared, "############")

	first := readAll(t, l, 0, 0, 1<<20)
	sameMessages(t, first, want)
	// More appends and reads must not change what an earlier Read returned ...
	for i := range 5 {
		appendOK(t, l, msgs(0, fmt.Sprint("later", i), 20, 100))
		readAll(t, l, 0, 0, 1<<20)
	}
	sameMessages(t, first, want)
	// ... and scribbling on a Read result must not change the log.
	for _, m := range first {
		for j := range m.Value {
			m.Value[j] = 'Z'
		}
	}
	sameMessages(t, readAll(t, l, 0, 0, 1<<20)[:len(want)], want)
}

// testReadBuffered checks that a BufferedReader's ReadBuffered returns what Read returns, with
// one buffer reused across reads of different sizes, partitions and offsets. Each result is
// checked before the next read, which may overwrite it.
func testReadBuffered(t *testing.T, newLog Factory) {
	l := open(t, newLog(t, 2))
	br, ok := l.Log.(eventlog.BufferedReader)
	if !ok {
		t.Skip("not an eventlog.BufferedReader")
	}
	for i := range 4 {
		appendOK(t, l, append(msgs(0, fmt.Sprint("a", i), 300, 40+i*30), msgs(1, fmt.Sprint("b", i), 50, 1000)...))
	}
	ctx := context.Background()
	var buf eventlog.ReadBuffer
	for _, maxBytes := range []int{1, 100, 4000, 1 << 20, 64} {
		for p := range 2 {
			want := readAll(t, l, p, 0, maxBytes)
			for next := int64(0); next < int64(len(want)); {
				got, err := br.ReadBuffered(ctx, p, next, maxBytes, &buf)
				if err != nil {
					t.Fatalf("ReadBuffered(%d, %d, %d): %v", p, next, maxBytes, err)
				}
				if len(got) == 0 {
					t.Fatalf("ReadBuffered(%d, %d, %d) returned nothing before end offset %d", p, next, maxBytes, len(want))
				}
				sameMessages(t, got, want[next:next+int64(len(got))])
				next += int64(len(got))
			}
			got, err := br.ReadBuffered(ctx, p, int64(len(want)), maxBytes, &buf)
			if err != nil || len(got) != 0 {
				t.Fatalf("ReadBuffered at the end of partition %d: %d messages, %v; want none", p, len(got), err)
			}
		}
	}
	if _, err := br.ReadBuffered(ctx, 5, 0, 100, &buf); !errors.Is(err, eventlog.ErrBadPartition) {
		t.Fatalf("ReadBuffered of a bad partition: %v, want ErrBadPartition", err)
	}
}
