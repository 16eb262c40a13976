package locallog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/eventlog/eventlogtest"
)

func TestConformance(t *testing.T) {
	eventlogtest.Run(t, func(t *testing.T, partitions int) eventlogtest.Opener {
		dir := testDir(t)
		return func(t *testing.T) eventlog.Log {
			l, err := Open(Options{Dir: dir, Partitions: partitions})
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			return l
		}
	})
}

// Small segments make rolls happen in the conformance suite too.
func TestConformanceSmallSegments(t *testing.T) {
	eventlogtest.Run(t, func(t *testing.T, partitions int) eventlogtest.Opener {
		dir := testDir(t)
		return func(t *testing.T) eventlog.Log {
			l, err := Open(Options{Dir: dir, Partitions: partitions, SegmentBytes: 300})
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			return l
		}
	})
}

// testDir is a fresh directory for a log, removed after the test unless it failed: then it is
// kept for inspection and its path logged.
func testDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "locallog-"+strings.ReplaceAll(t.Name(), "/", "_")+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log data kept in %s", dir)
			return
		}
		_ = os.RemoveAll(dir)
	})
	return dir
}

// fakeClock is an injectable clock that moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// logBuffer collects a Log's slog output for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func mustOpen(t *testing.T, opts Options) *Log {
	t.Helper()
	l, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func mustClose(t *testing.T, l *Log) {
	t.Helper()
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// appendN appends n messages to partition p, one Append each, and returns them as acknowledged.
func appendN(t *testing.T, l *Log, p, n int, tag string) []eventlog.Message {
	t.Helper()
	var out []eventlog.Message
	for i := range n {
		m := []eventlog.Message{{Partition: int32(p), Value: fmt.Appendf(nil, "%s-%d-%s", tag, i, strings.Repeat("v", i%40))}}
		if err := l.Append(context.Background(), m); err != nil {
			t.Fatalf("Append: %v", err)
		}
		out = append(out, m[0])
	}
	return out
}

func readAll(t *testing.T, l *Log, p int, from int64) []eventlog.Message {
	t.Helper()
	var out []eventlog.Message
	for {
		got, err := l.Read(context.Background(), p, from, 1<<20)
		if err != nil {
			t.Fatalf("Read(%d, %d): %v", p, from, err)
		}
		if len(got) == 0 {
			return out
		}
		out = append(out, got...)
		from = got[len(got)-1].Offset + 1
	}
}

func checkSame(t *testing.T, got, want []eventlog.Message) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d messages, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Offset != want[i].Offset || !got[i].Time.Equal(want[i].Time) || !bytes.Equal(got[i].Value, want[i].Value) {
			t.Fatalf("message %d: got @%d %v %q, want @%d %v %q", i,
				got[i].Offset, got[i].Time, got[i].Value, want[i].Offset, want[i].Time, want[i].Value)
		}
	}
}

func segmentFiles(t *testing.T, dir string, p int) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, fmt.Sprintf("p%d", p), "*.log"))
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// TestTornTail simulates a filesystem that kept only part of the unsynced writes of a crash:
// whatever trails the acknowledged records in the active segment must be cut away at Open,
// and appends must continue right after the last acknowledged record.
func TestTornTail(t *testing.T) {
	tab := crc32.MakeTable(crc32.Castagnoli)
	record := func(v string) []byte { return appendRecord(nil, tab, 1_700_000_000_000, []byte(v)) }
	cases := []struct {
		name string
		tail func(rng *rand.Rand) []byte
	}{
		{"garbage", func(rng *rand.Rand) []byte {
			b := make([]byte, 1+rng.IntN(200))
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			return b
		}},
		{"partial header", func(*rand.Rand) []byte { return record("unacknowledged")[:headerSize-5] }},
		{"partial value", func(*rand.Rand) []byte { r := record("unacknowledged"); return r[:len(r)-3] }},
		{"bad crc", func(*rand.Rand) []byte { r := record("unacknowledged"); r[5] ^= 0x40; return r }},
		{"flipped value byte", func(*rand.Rand) []byte { r := record("unacknowledged"); r[len(r)-1] ^= 1; return r }},
		{"zeros", func(*rand.Rand) []byte { return make([]byte, 4096) }},
		{"huge length", func(*rand.Rand) []byte { r := record("x"); r[3] = 0xff; return r }},
		{"good then torn", func(*rand.Rand) []byte {
			// A record that made it, unacknowledged, and one that did not: keeping the first
			// is allowed (it was durable before the crash), but the torn one must go.
			r := record("made-it")
			return append(r, record("torn")[:10]...)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(testSeed(t), 1))
			dir := testDir(t)
			logs := &logBuffer{}
			opts := Options{Dir: dir, Partitions: 2, Logger: slog.New(slog.NewTextHandler(logs, nil))}
			l := mustOpen(t, opts)
			acked := appendN(t, l, 1, 25, "acked")
			mustClose(t, l)

			files := segmentFiles(t, dir, 1)
			last := files[len(files)-1]
			f, err := os.OpenFile(last, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(tc.tail(rng)); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}

			l = mustOpen(t, opts)
			got := readAll(t, l, 1, 0)
			if tc.name == "good then torn" && len(got) == len(acked)+1 {
				got = got[:len(acked)]
			}
			checkSame(t, got, acked)
			if !strings.Contains(logs.String(), "truncating torn tail") {
				t.Errorf("recovery did not log the truncation; log:\n%s", logs)
			}
			_, end, _ := l.Offsets(context.Background(), 1)
			more := appendN(t, l, 1, 3, "after")
			if more[0].Offset != end {
				t.Errorf("first append after recovery got offset %d, want %d", more[0].Offset, end)
			}
			mustClose(t, l)

			l = mustOpen(t, opts)
			all := readAll(t, l, 1, 0)
			checkSame(t, all[len(all)-3:], more)
			checkSame(t, all[:len(acked)], acked)
			if kept := len(all) - len(acked) - len(more); kept != 0 && (kept != 1 || tc.name != "good then torn") {
				t.Errorf("log holds %d records beyond the acknowledged ones", kept)
			}
		})
	}
}

// TestTornTailNotResurrected: a torn record followed by one that still parses must be cut off
// at Open, not merely skipped. Otherwise the next append, overwriting the torn record exactly,
// would make the stale one after it readable again at the next Open.
func TestTornTailNotResurrected(t *testing.T) {
	tab := crc32.MakeTable(crc32.Castagnoli)
	dir := testDir(t)
	opts := Options{Dir: dir, Partitions: 1}
	l := mustOpen(t, opts)
	acked := appendN(t, l, 0, 5, "acked")
	mustClose(t, l)

	next := []byte("next-append-value")
	torn := appendRecord(nil, tab, 1, bytes.Repeat([]byte("t"), len(next))) // as long as the next append
	torn[4] ^= 1
	stale := appendRecord(nil, tab, 1, []byte("stale"))
	files := segmentFiles(t, dir, 0)
	f, err := os.OpenFile(files[len(files)-1], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(append(torn, stale...)); err != nil {
		t.Fatal(err)
	}
	f.Close()

	l = mustOpen(t, opts)
	m := []eventlog.Message{{Value: next}}
	if err := l.Append(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	mustClose(t, l)
	l = mustOpen(t, opts)
	checkSame(t, readAll(t, l, 0, 0), append(acked, m[0]))
}

// TestReadersSeeOnlyDurable holds a commit between its write and its sync: readers must see
// neither the records nor the new end offset until the sync returned.
func TestReadersSeeOnlyDurable(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	fs := newFaultFS()
	l := mustOpen(t, Options{Dir: testDir(t), Partitions: 1, FS: fs})
	fs.setInject(holdFirstSync(entered, release))
	ctx := context.Background()
	done := make(chan error, 1)
	msg := []eventlog.Message{{Value: []byte("pending")}}
	go func() { done <- l.Append(ctx, msg) }()
	<-entered // written, not yet synced
	if _, end, _ := l.Offsets(ctx, 0); end != 0 {
		t.Errorf("end offset %d before the sync returned, want 0", end)
	}
	if got, err := l.Read(ctx, 0, 0, 1<<20); err != nil || len(got) != 0 {
		t.Errorf("Read before the sync returned = %d messages, %v; want none", len(got), err)
	}
	if st := l.Stats(); st.Partitions[0].End != 0 || st.AppendedMessages != 0 {
		t.Errorf("Stats before the sync returned: %+v", st)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, l, 0, 0); len(got) != 1 || string(got[0].Value) != "pending" {
		t.Errorf("after the sync, read %v", got)
	}
}

func values(ms []eventlog.Message) []string {
	var out []string
	for _, m := range ms {
		out = append(out, string(m.Value))
	}
	return out
}

func TestSegmentRoll(t *testing.T) {
	dir := testDir(t)
	const segBytes = 1000
	opts := Options{Dir: dir, Partitions: 1, SegmentBytes: segBytes}
	l := mustOpen(t, opts)
	var want []eventlog.Message
	// Singles, then batches that must be split across segments within one commit.
	want = append(want, appendN(t, l, 0, 30, "single")...)
	for i := range 5 {
		b := make([]eventlog.Message, 40)
		for j := range b {
			b[j].Value = fmt.Appendf(nil, "batch-%d-%d-%s", i, j, strings.Repeat("x", j))
		}
		if err := l.Append(context.Background(), b); err != nil {
			t.Fatal(err)
		}
		want = append(want, b...)
	}
	// A record larger than a segment gets one of its own.
	big := []eventlog.Message{{Value: bytes.Repeat([]byte("B"), 3*segBytes)}}
	if err := l.Append(context.Background(), big); err != nil {
		t.Fatal(err)
	}
	want = append(want, big...)
	want = append(want, appendN(t, l, 0, 3, "tail")...)
	checkSame(t, readAll(t, l, 0, 0), want)

	// Files are named by their base offset, hold a contiguous run of records, and exceed
	// SegmentBytes only with a single record.
	files := segmentFiles(t, dir, 0)
	if len(files) < 5 {
		t.Fatalf("only %d segments after %d bytes with SegmentBytes %d", len(files), len(want)*40, segBytes)
	}
	next := int64(0)
	for _, name := range files {
		var base int64
		if _, err := fmt.Sscanf(filepath.Base(name), "%020d.log", &base); err != nil {
			t.Fatal(err)
		}
		if base != next {
			t.Errorf("segment %s: base %d, want %d", name, base, next)
		}
		st, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		n := int64(0)
		for pos := 0; pos < len(b); n++ {
			hd, err := parseHeader(b[pos:])
			if err != nil {
				t.Fatal(err)
			}
			pos += headerSize + hd.vlen
		}
		if st.Size() > segBytes && n != 1 {
			t.Errorf("segment %s has %d bytes in %d records, over SegmentBytes", name, st.Size(), n)
		}
		next = base + n
	}
	if next != int64(len(want)) {
		t.Errorf("segments hold %d records, want %d", next, len(want))
	}
	st := l.Stats()
	if st.Partitions[0].Segments != len(files) || st.Partitions[0].End != int64(len(want)) {
		t.Errorf("Stats = %+v, want %d segments ending at %d", st.Partitions[0], len(files), len(want))
	}
	mustClose(t, l)

	// Reopened, sealed segments are indexed lazily; everything still reads back.
	l = mustOpen(t, opts)
	checkSame(t, readAll(t, l, 0, 0), want)
	more := appendN(t, l, 0, 50, "more")
	if more[0].Offset != int64(len(want)) {
		t.Errorf("append after reopen at %d, want %d", more[0].Offset, len(want))
	}
	checkSame(t, readAll(t, l, 0, 0), append(want, more...))
}

// TestRandomReads checks the sparse index: reads at random offsets, across segments, before and
// after a reopen (which leaves sealed segments to be indexed lazily), with random maxBytes.
func TestRandomReads(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 2))
	dir := testDir(t)
	opts := Options{Dir: dir, Partitions: 1, SegmentBytes: 64 << 10}
	l := mustOpen(t, opts)
	var want []eventlog.Message
	for range 20 {
		b := make([]eventlog.Message, 200)
		for j := range b {
			b[j].Value = fmt.Appendf(nil, "%d-%s", len(want)+j, strings.Repeat("r", rng.IntN(300)))
		}
		if err := l.Append(context.Background(), b); err != nil {
			t.Fatal(err)
		}
		want = append(want, b...)
	}
	check := func(l *Log) {
		for range 300 {
			off := rng.Int64N(int64(len(want)))
			maxBytes := 1 + rng.IntN(20000)
			got, err := l.Read(context.Background(), 0, off, maxBytes)
			if err != nil {
				t.Fatalf("Read(%d): %v", off, err)
			}
			if len(got) == 0 {
				t.Fatalf("Read(%d) returned nothing", off)
			}
			total := 0
			for _, m := range got {
				total += len(m.Value)
			}
			if len(got) > 1 && total > maxBytes {
				t.Fatalf("Read(%d, %d) returned %d bytes", off, maxBytes, total)
			}
			checkSame(t, got, want[off:off+int64(len(got))])
		}
	}
	check(l)
	mustClose(t, l)
	check(mustOpen(t, opts))
}

func TestRetention(t *testing.T) {
	dir := testDir(t)
	clock := &fakeClock{now: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)}
	opts := Options{Dir: dir, Partitions: 2, SegmentBytes: 500, Retention: 24 * time.Hour, Now: clock.Now}
	l := mustOpen(t, opts)
	ctx := context.Background()

	old := appendN(t, l, 0, 40, "old") // several segments, day 0
	clock.Add(12 * time.Hour)
	mid := appendN(t, l, 0, 40, "mid") // day 0.5
	// Partition 1 holds one old segment only: the active one, which retention never deletes.
	appendN(t, l, 1, 3, "lonely")
	clock.Add(13 * time.Hour) // "old" is now 25h old, "mid" 13h

	if err := l.EnforceRetention(); err != nil {
		t.Fatal(err)
	}
	start, end, _ := l.Offsets(ctx, 0)
	if start == 0 || start > mid[0].Offset {
		t.Fatalf("after retention start = %d, want in (0, %d]", start, mid[0].Offset)
	}
	// Whole segments only: what is gone is all old; what is kept of old is in the segment
	// that also holds the first "mid" record.
	if _, err := l.Read(ctx, 0, start-1, 100); !errors.Is(err, eventlog.ErrOffsetOutOfRange) {
		t.Errorf("Read below the new start = %v, want ErrOffsetOutOfRange", err)
	}
	all := append(old, mid...)
	checkSame(t, readAll(t, l, 0, start), all[start:end])
	if off, _ := l.OffsetForTime(ctx, 0, clock.Now().Add(-100*time.Hour)); off != start {
		t.Errorf("OffsetForTime(long ago) = %d, want start %d", off, start)
	}
	if s1, _, _ := l.Offsets(ctx, 1); s1 != 0 {
		t.Errorf("partition 1 start %d: its only (active) segment was deleted", s1)
	}
	if st := l.Stats(); st.SegmentsDeleted == 0 || st.Partitions[0].Start != start {
		t.Errorf("Stats = %+v", st)
	}
	files := segmentFiles(t, dir, 0)
	if first := filepath.Base(files[0]); first != fmt.Sprintf("%020d.log", start) {
		t.Errorf("first segment file %s, want base %d", first, start)
	}

	// Much later, even the segments of "mid" go, but the active segment stays.
	clock.Add(48 * time.Hour)
	if err := l.EnforceRetention(); err != nil {
		t.Fatal(err)
	}
	start2, end2, _ := l.Offsets(ctx, 0)
	if start2 <= start || end2 != end || len(segmentFiles(t, dir, 0)) != 1 {
		t.Errorf("after more retention: offsets %d, %d with %d files", start2, end2, len(segmentFiles(t, dir, 0)))
	}
	mustClose(t, l)

	// The start offset survives a reopen (it is the first file's name) and appends continue.
	l = mustOpen(t, opts)
	if s, e, _ := l.Offsets(ctx, 0); s != start2 || e != end2 {
		t.Errorf("after reopen offsets %d, %d; want %d, %d", s, e, start2, end2)
	}
	if m := appendN(t, l, 0, 1, "new"); m[0].Offset != end2 {
		t.Errorf("append after reopen at %d, want %d", m[0].Offset, end2)
	}
}

// TestRetentionAfterReopen: segments sealed in an earlier run have no known last time until
// indexed; retention bounds it by the next segment's first record.
func TestRetentionAfterReopen(t *testing.T) {
	dir := testDir(t)
	clock := &fakeClock{now: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)}
	opts := Options{Dir: dir, Partitions: 1, SegmentBytes: 500, Retention: time.Hour, Now: clock.Now}
	l := mustOpen(t, opts)
	appendN(t, l, 0, 40, "old")
	clock.Add(30 * time.Minute)
	recent := appendN(t, l, 0, 40, "recent")
	mustClose(t, l)

	clock.Add(40 * time.Minute) // "old" is 70 min old, "recent" 40
	l = mustOpen(t, opts)
	if err := l.EnforceRetention(); err != nil {
		t.Fatal(err)
	}
	start, _, _ := l.Offsets(context.Background(), 0)
	if start == 0 || start > recent[0].Offset {
		t.Errorf("start after retention = %d, want in (0, %d]", start, recent[0].Offset)
	}
}

// TestRunEnforcesRetention checks the Run loop itself (on its first pass, so the test does
// not depend on the ticker).
func TestRunEnforcesRetention(t *testing.T) {
	clock := &fakeClock{now: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)}
	l := mustOpen(t, Options{Dir: testDir(t), Partitions: 1, SegmentBytes: 500, Retention: time.Hour, Now: clock.Now})
	appendN(t, l, 0, 40, "old")
	clock.Add(2 * time.Hour)
	appendN(t, l, 0, 1, "new")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if s, _, _ := l.Offsets(context.Background(), 0); s > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run did not enforce retention")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
}

// TestOffsetForTimeAcrossSegments uses an injected clock so every record's time is known.
func TestOffsetForTimeAcrossSegments(t *testing.T) {
	dir := testDir(t)
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := &fakeClock{now: t0}
	opts := Options{Dir: dir, Partitions: 1, SegmentBytes: 700, Now: clock.Now}
	l := mustOpen(t, opts)
	for i := range 200 {
		appendN(t, l, 0, 1, fmt.Sprint(i))
		clock.Add(time.Second) // record i is stamped t0 + i s
	}
	check := func(l *Log) {
		for _, tc := range []struct {
			at   time.Time
			want int64
		}{
			{t0.Add(-time.Hour), 0},
			{t0, 0},
			{t0.Add(time.Nanosecond), 1},
			{t0.Add(57 * time.Second), 57},
			{t0.Add(57*time.Second - time.Millisecond), 57},
			{t0.Add(57*time.Second + time.Millisecond), 58},
			{t0.Add(199 * time.Second), 199},
			{t0.Add(200 * time.Second), 200},
		} {
			got, err := l.OffsetForTime(context.Background(), 0, tc.at)
			if err != nil || got != tc.want {
				t.Errorf("OffsetForTime(t0+%v) = %d, %v; want %d", tc.at.Sub(t0), got, err, tc.want)
			}
		}
	}
	check(l)
	mustClose(t, l)
	check(mustOpen(t, opts)) // sealed segments now indexed lazily

	// A clock going backwards does not make append times decrease.
	l2 := mustOpen(t, Options{Dir: testDir(t), Partitions: 1, Now: clock.Now})
	a := appendN(t, l2, 0, 1, "a")
	clock.Add(-time.Hour)
	b := appendN(t, l2, 0, 1, "b")
	if b[0].Time.Before(a[0].Time) {
		t.Errorf("append time went backwards: %v then %v", a[0].Time, b[0].Time)
	}
}

// TestCorruptSealedSegment: a bad record in an older segment is an error on read, not a gap.
func TestCorruptSealedSegment(t *testing.T) {
	dir := testDir(t)
	opts := Options{Dir: dir, Partitions: 1, SegmentBytes: 1000}
	l := mustOpen(t, opts)
	want := appendN(t, l, 0, 100, "m")
	mustClose(t, l)

	files := segmentFiles(t, dir, 0)
	if len(files) < 3 {
		t.Fatalf("want several segments, have %d", len(files))
	}
	b, err := os.ReadFile(files[1])
	if err != nil {
		t.Fatal(err)
	}
	var base int64
	fmt.Sscanf(filepath.Base(files[1]), "%020d.log", &base)
	hd, _ := parseHeader(b)
	second := headerSize + hd.vlen // flip a value byte of the segment's second record
	b[second+headerSize] ^= 0xff
	if err := os.WriteFile(files[1], b, 0o644); err != nil {
		t.Fatal(err)
	}

	l = mustOpen(t, opts) // Open does not scan sealed segments: it succeeds
	ctx := context.Background()
	got, err := l.Read(ctx, 0, base, 1)
	if err != nil {
		t.Fatalf("Read of the good record before the bad one: %v", err)
	}
	checkSame(t, got, want[base:base+1])
	if _, err := l.Read(ctx, 0, base+1, 1<<20); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Read of the corrupt record = %v, want ErrCorrupt", err)
	}
	// A Read running into the bad record returns the good prefix; the next one fails.
	got, err = l.Read(ctx, 0, 0, 1<<20)
	if err != nil {
		t.Errorf("Read up to the corrupt record: %v", err)
	}
	checkSame(t, got, want[:base+1])
	// A torn length in a sealed segment breaks its index: reads past it fail, not skip.
	b[second] = 0xff
	b[second+3] = 0x00
	mustClose(t, l)
	if err := os.WriteFile(files[1], b, 0o644); err != nil {
		t.Fatal(err)
	}
	l = mustOpen(t, opts)
	if _, err := l.Read(ctx, 0, base+2, 1<<20); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Read past a torn length = %v, want ErrCorrupt", err)
	}
}

func TestPartitionCountPersisted(t *testing.T) {
	dir := testDir(t)
	l := mustOpen(t, Options{Dir: dir, Partitions: 4})
	mustClose(t, l)
	if l, err := Open(Options{Dir: dir, Partitions: 8}); err == nil {
		l.Close()
		t.Fatal("reopening with a different partition count succeeded")
	}
	l = mustOpen(t, Options{Dir: dir})
	if l.Partitions() != 4 {
		t.Errorf("reopened with Partitions 0: %d partitions, want the stored 4", l.Partitions())
	}
	if _, err := Open(Options{Dir: testDir(t)}); err == nil {
		t.Error("a new log without a partition count opened")
	}
}

func TestDirectoryLocked(t *testing.T) {
	dir := testDir(t)
	l := mustOpen(t, Options{Dir: dir, Partitions: 1})
	if l2, err := Open(Options{Dir: dir, Partitions: 1}); err == nil {
		l2.Close()
		t.Fatal("a second Log opened the same directory")
	}
	mustClose(t, l)
	mustClose(t, mustOpen(t, Options{Dir: dir, Partitions: 1}))
}

// TestOpenFailureReleasesEverything: the partitions open side by side, and when one cannot,
// Open fails and closes what the others opened, files and lock: nothing under the directory
// stays open, and the next Open, the cause removed, succeeds.
func TestOpenFailureReleasesEverything(t *testing.T) {
	dir := testDir(t)
	mustClose(t, mustOpen(t, Options{Dir: dir, Partitions: 8}))
	p5 := filepath.Join(dir, "p5")
	if err := os.Rename(p5, p5+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p5, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	if l, err := Open(Options{Dir: dir}); err == nil {
		l.Close()
		t.Fatal("Open succeeded with a partition's directory replaced by a file")
	}
	if open := openFilesUnder(t, dir); len(open) > 0 {
		t.Fatalf("after the failed Open, still open: %v", open)
	}
	if err := os.Remove(p5); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p5+".away", p5); err != nil {
		t.Fatal(err)
	}
	mustClose(t, mustOpen(t, Options{Dir: dir}))
}

// openFilesUnder lists the files under dir this process holds open (Linux; elsewhere none).
func openFilesUnder(t *testing.T, dir string) []string {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Logf("cannot list open files: %v", err)
		return nil
	}
	var open []string
	for _, fd := range fds {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && strings.HasPrefix(target, dir+string(filepath.Separator)) {
			open = append(open, target)
		}
	}
	return open
}

func TestReadAfterClose(t *testing.T) {
	l := mustOpen(t, Options{Dir: testDir(t), Partitions: 1})
	appendN(t, l, 0, 1, "m")
	mustClose(t, l)
	ctx := context.Background()
	if _, err := l.Read(ctx, 0, 0, 100); !errors.Is(err, eventlog.ErrClosed) {
		t.Errorf("Read after Close = %v, want ErrClosed", err)
	}
	if _, _, err := l.Offsets(ctx, 0); !errors.Is(err, eventlog.ErrClosed) {
		t.Errorf("Offsets after Close = %v, want ErrClosed", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

// TestGroupCommit checks that concurrent appenders share syncs (the point of the committer).
func TestGroupCommit(t *testing.T) {
	l := mustOpen(t, Options{Dir: testDir(t), Partitions: 1})
	const appenders, each = 64, 20
	var wg sync.WaitGroup
	for range appenders {
		wg.Go(func() {
			for range each {
				if err := l.Append(context.Background(), []eventlog.Message{{Value: []byte("click")}}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	st := l.Stats()
	if st.AppendedMessages != appenders*each {
		t.Errorf("AppendedMessages = %d, want %d", st.AppendedMessages, appenders*each)
	}
	if st.Syncs >= appenders*each/2 {
		t.Errorf("%d syncs for %d appends: group commit is not grouping", st.Syncs, appenders*each)
	}
	t.Logf("%d appends, %d commits, %d syncs, %v syncing", st.AppendedMessages, st.Commits, st.Syncs, st.SyncTime)
}

// TestAppendedNotifies: the channel of Appended closes once a commit makes records readable
// (the aggregator waits on it instead of polling), not before, and a fresh one is handed out
// after; Close wakes waiters too.
func TestAppendedNotifies(t *testing.T) {
	l, err := Open(Options{Dir: testDir(t), Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	ch := l.Appended()
	select {
	case <-ch:
		t.Fatal("closed before any append")
	default:
	}
	if err := l.Append(context.Background(), []eventlog.Message{{Partition: 1, Value: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("not closed after an acknowledged append")
	}
	if msgs, err := l.Read(context.Background(), 1, 0, 1<<10); err != nil || len(msgs) != 1 {
		t.Fatalf("the notified record is not readable: %v %v", msgs, err)
	}
	next := l.Appended()
	select {
	case <-next:
		t.Fatal("a fresh channel is already closed")
	default:
	}
	l.Close()
	select {
	case <-next:
	case <-time.After(10 * time.Second):
		t.Fatal("Close does not wake waiters")
	}
}

// TestAppendWaitHistogram: every Append the committer took is counted once in
// Stats.AppendWait, in the bucket of its wait, which includes the round's sync.
func TestAppendWaitHistogram(t *testing.T) {
	const syncPause = 30 * time.Millisecond
	fs := newFaultFS()
	fs.setInject(func(op faultOp, _ string) (error, bool) {
		if op == opSync {
			time.Sleep(syncPause)
		}
		return nil, false
	})
	l := mustOpen(t, Options{Dir: testDir(t), Partitions: 2, FS: fs})
	const appends = 5
	for i := range appends {
		if err := l.Append(context.Background(), []eventlog.Message{{Partition: int32(i % 2), Value: []byte("click")}}); err != nil {
			t.Fatal(err)
		}
	}
	h := l.Stats().AppendWait
	if len(h.Counts) != len(AppendWaitBounds)+1 {
		t.Fatalf("%d buckets, want %d", len(h.Counts), len(AppendWaitBounds)+1)
	}
	var total int64
	for i, n := range h.Counts {
		total += n
		if n > 0 && i < len(AppendWaitBounds) && AppendWaitBounds[i] < syncPause {
			t.Errorf("%d appends at most %v, but each waited for a sync of %v", n, AppendWaitBounds[i], syncPause)
		}
	}
	if total != appends {
		t.Errorf("histogram counts %d appends, want %d", total, appends)
	}
	if h.Sum < appends*syncPause {
		t.Errorf("Sum = %v, want at least %v", h.Sum, appends*syncPause)
	}
}
