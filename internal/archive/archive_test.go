package archive

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/testseed"
)

var t0 = time.Date(2025, 3, 14, 8, 50, 0, 0, time.UTC)

// listAll returns every key under prefix, recursively.
func listAll(t *testing.T, tg Target, prefix string) []string {
	t.Helper()
	keys, err := tg.List(context.Background(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, k := range keys {
		if strings.HasSuffix(k, "/") {
			out = append(out, listAll(t, tg, k)...)
		} else {
			out = append(out, k)
		}
	}
	return out
}

type pos struct {
	p   int32
	off int64
}

// readArchive reads every data file with the typed reader and checks its name and place
// against its rows. It fails on a row present twice.
func readArchive(t *testing.T, tg Target) map[pos]Row {
	t.Helper()
	rows := map[pos]Row{}
	for _, k := range listAll(t, tg, "") {
		if strings.HasPrefix(k, checkpointDir) {
			continue
		}
		dir, name := k[:strings.LastIndex(k, "/")+1], k[strings.LastIndex(k, "/")+1:]
		p, first, end, ok := parseFileName(name)
		if !ok {
			t.Fatalf("unexpected key %q", k)
		}
		b, err := tg.Get(context.Background(), k)
		if err != nil {
			t.Fatal(err)
		}
		rs, err := parquet.Read[Row](bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		if len(rs) == 0 {
			t.Fatalf("%s: empty", k)
		}
		if d := hourDir(rs[0].RecvTime); d != dir {
			t.Errorf("%s: first event received in %s", k, d)
		}
		for i, r := range rs {
			if int(r.Partition) != p || r.Offset < first || r.Offset >= end || (i > 0 && r.Offset <= rs[i-1].Offset) {
				t.Fatalf("%s: row %d at partition %d offset %d", k, i, r.Partition, r.Offset)
			}
			if _, dup := rows[pos{r.Partition, r.Offset}]; dup {
				t.Fatalf("%s: partition %d offset %d archived twice", k, r.Partition, r.Offset)
			}
			rows[pos{r.Partition, r.Offset}] = r
		}
	}
	return rows
}

// checkExactlyOnce checks that the archive holds every event of the log once, every field
// equal.
func checkExactlyOnce(t *testing.T, l *memLog, tg Target) {
	t.Helper()
	rows := readArchive(t, tg)
	msgs := l.all()
	corrupt := 0
	for _, m := range msgs {
		var want event.Event
		if err := want.Decode(m.Value); err != nil {
			corrupt++
			if _, ok := rows[pos{m.Partition, m.Offset}]; ok {
				t.Fatalf("partition %d offset %d does not decode but is archived", m.Partition, m.Offset)
			}
			continue
		}
		r, ok := rows[pos{m.Partition, m.Offset}]
		if !ok {
			t.Fatalf("partition %d offset %d not archived", m.Partition, m.Offset)
		}
		got, err := r.Event()
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("partition %d offset %d: archived %+v, logged %+v", m.Partition, m.Offset, got, want)
		}
	}
	if len(rows) != len(msgs)-corrupt {
		t.Errorf("archive holds %d events, the log %d (and %d corrupt records)", len(rows), len(msgs)-corrupt, corrupt)
	}
}

// fakeClock is a settable clock.
type fakeClock struct{ us atomic.Int64 }

func (c *fakeClock) now() time.Time  { return time.UnixMicro(c.us.Load()) }
func (c *fakeClock) set(t time.Time) { c.us.Store(t.UnixMicro()) }

// runDeadline bounds runUntil. It only ends a run that is stuck: a race-enabled run on two
// cores shared with the rest of the suite takes close to a minute for the largest logs here.
const runDeadline = 5 * time.Minute

// runUntil runs a until cond holds (checked every few ms) or runDeadline passes.
func runUntil(t *testing.T, a *Archiver, cond func(Stats) bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	deadline := time.Now().Add(runDeadline)
	for !cond(a.Stats()) {
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("timed out; stats %+v", a.Stats())
		}
		time.Sleep(2 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// caughtUp reports whether every partition of l is archived.
func caughtUp(l *memLog) func(Stats) bool {
	return func(s Stats) bool {
		for _, ps := range s.Partitions {
			_, end, _ := l.Offsets(context.Background(), ps.Partition)
			if ps.Committed != end {
				return false
			}
		}
		return true
	}
}

func TestArchiveLocal(t *testing.T) {
	seed := testseed.Seed(t)
	l := newMemLog(3)
	g := &gen{rng: rand.New(rand.NewPCG(seed, 1)), recv: t0.UnixMicro(), step: 300 * time.Millisecond}
	for p := 0; p < 3; p++ {
		l.appendEvents(p, g.batch(3000))
	}
	tg, err := NewDirTarget(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{}
	clock.set(t0.Add(24 * time.Hour))
	a, err := New(Options{Log: l, Target: tg, MaxFileEvents: 1000, PollInterval: time.Millisecond, Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	runUntil(t, a, caughtUp(l))
	checkExactlyOnce(t, l, tg)
	s := a.Stats()
	t.Logf("files %d events %d bytes %d (%.1f bytes/event)", s.FilesWritten, s.EventsArchived, s.BytesWritten, s.BytesPerEvent)
	if s.EventsArchived != 9000 || s.Errors != 0 {
		t.Errorf("stats %+v", s)
	}
	keys := listAll(t, tg, "")
	for _, k := range keys[:5] {
		t.Log(k)
	}
}

// TestIntervalFlush: at low traffic, a file is closed once its window (and Slack) has
// passed, on the real clock, and a later event starts a new file.
func TestIntervalFlush(t *testing.T) {
	l := newMemLog(2)
	tg, err := NewDirTarget(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	const interval, slack, poll = 400 * time.Millisecond, 50 * time.Millisecond, 10 * time.Millisecond
	a, err := New(Options{Log: l, Target: tg, ArchiveInterval: interval, Slack: slack, PollInterval: poll})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	one := func(p int) (time.Time, time.Duration) {
		e := event.Event{Type: event.TypeImpression, AdID: "ad-1", ImpressionID: fmt.Sprintf("imp-%d", time.Now().UnixNano())}
		sent := time.Now()
		e.RecvTime, e.Time = sent.UnixMicro(), sent.UnixMicro()
		before := a.Stats().EventsArchived
		l.appendEvents(p, []event.Event{e})
		for a.Stats().EventsArchived == before {
			if time.Since(sent) > 10*interval {
				t.Fatalf("event not archived after %v", time.Since(sent))
			}
			time.Sleep(time.Millisecond)
		}
		return sent, time.Since(sent)
	}
	for i := range 3 {
		_, took := one(i % 2)
		t.Logf("event %d archived after %v (bound: interval %v + slack %v + poll %v)", i, took, interval, slack, poll)
		// Generous for the race detector on a shared machine; the point is that a lone
		// event is not left waiting for traffic.
		if took > interval+slack+poll+time.Second {
			t.Errorf("took %v", took)
		}
	}
	s := a.Stats()
	if s.FilesWritten != 3 {
		t.Errorf("files %d, want 3", s.FilesWritten)
	}
	for _, ps := range s.Partitions {
		if ps.Lag != 0 || ps.Pending != 0 {
			t.Errorf("partition %+v", ps)
		}
	}
	checkExactlyOnce(t, l, tg)
}

// TestSchema reads a file back as a generic reader does: column names, physical and logical
// types, optionality and compression, and every row through parquet-go's untyped row reader
// (not the typed Row the archiver writes with), compared with the log.
func TestSchema(t *testing.T) {
	seed := testseed.Seed(t)
	l := newMemLog(2)
	g := &gen{rng: rand.New(rand.NewPCG(seed, 2)), recv: t0.UnixMicro(), step: time.Second}
	l.appendEvents(0, g.batch(500))
	l.appendEvents(1, g.batch(500))
	tg, err := NewDirTarget(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{}
	clock.set(t0.Add(time.Hour * 24))
	a, err := New(Options{Log: l, Target: tg, PollInterval: time.Millisecond, Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	runUntil(t, a, caughtUp(l))

	want := []struct{ name, typ string }{
		{"partition", "required int32 (INT(32,true))"},
		{"offset", "required int64 (INT(64,true))"},
		{"type", "required byte_array (STRING)"},
		{"name", "optional byte_array (STRING)"},
		{"invalid_reason", "optional byte_array (STRING)"},
		{"event_time", "required int64 (TIMESTAMP(isAdjustedToUTC=true,unit=MICROS))"},
		{"recv_time", "required int64 (TIMESTAMP(isAdjustedToUTC=true,unit=MICROS))"},
		{"price_micros", "required int64 (INT(64,true))"},
		{"ad_id", "required byte_array (STRING)"},
		{"campaign_id", "optional byte_array (STRING)"},
		{"advertiser_id", "optional byte_array (STRING)"},
		{"impression_id", "optional byte_array (STRING)"},
		{"event_id", "optional byte_array (STRING)"},
		{"user_id", "optional byte_array (STRING)"},
		{"catalog_id", "optional byte_array (STRING)"},
		{"value_micros", "required int64 (INT(64,true))"},
		{"source_ip", "optional byte_array (STRING)"},
		{"device_id", "optional byte_array (STRING)"},
	}
	seen := map[pos]bool{}
	files := 0
	for _, k := range listAll(t, tg, "") {
		if !strings.HasPrefix(k, "dt=") {
			continue
		}
		files++
		b, err := tg.Get(context.Background(), k)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parquet.OpenFile(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		fields := f.Schema().Fields()
		if len(fields) != len(want) {
			t.Fatalf("%d columns, want %d:\n%s", len(fields), len(want), f.Schema())
		}
		for i, fl := range fields {
			got := fmt.Sprintf("%s %s", map[bool]string{true: "optional", false: "required"}[fl.Optional()], strings.ToLower(fl.Type().PhysicalType().String()))
			if lt := fl.Type().LogicalType(); lt != nil {
				got += " (" + lt.String() + ")"
			}
			if fl.Name() != want[i].name || got != want[i].typ {
				t.Errorf("column %d: %s %s, want %s %s", i, fl.Name(), got, want[i].name, want[i].typ)
			}
		}
		for _, rg := range f.Metadata().RowGroups {
			for _, c := range rg.Columns {
				if c.MetaData.Codec.String() != "ZSTD" {
					t.Errorf("%s: column %v compressed with %v", k, c.MetaData.PathInSchema, c.MetaData.Codec)
				}
			}
		}
		if files == 1 {
			t.Logf("%s schema:\n%s", k, f.Schema())
		}

		// The untyped reader: rows of parquet values, by column index.
		r := parquet.NewReader(f)
		col := map[string]int{}
		for i, fl := range fields {
			col[fl.Name()] = i
		}
		buf := make([]parquet.Row, 64)
		for {
			n, err := r.ReadRows(buf)
			for _, row := range buf[:n] {
				v := func(name string) parquet.Value { return row[col[name]] }
				str := func(name string) string {
					if v(name).IsNull() {
						return ""
					}
					return v(name).String()
				}
				p, off := v("partition").Int32(), v("offset").Int64()
				var e event.Event
				msgs, err := l.Read(context.Background(), int(p), off, 1)
				if err != nil || len(msgs) == 0 || msgs[0].Offset != off {
					t.Fatalf("partition %d offset %d not in the log: %v", p, off, err)
				}
				if err := e.Decode(msgs[0].Value); err != nil {
					t.Fatal(err)
				}
				reason := ""
				if e.Invalid != event.ReasonNone {
					reason = e.Invalid.String()
				}
				got := []any{str("type"), str("name"), str("invalid_reason"), v("event_time").Int64(), v("recv_time").Int64(),
					v("price_micros").Int64(), str("ad_id"), str("campaign_id"), str("advertiser_id"), str("impression_id"),
					str("event_id"), str("user_id"), str("catalog_id")}
				exp := []any{e.Type.String(), e.Name, reason, e.Time, e.RecvTime, e.PriceMicros, e.AdID, e.CampaignID,
					e.AdvertiserID, e.ImpressionID, e.EventID, e.UserID, e.CatalogID}
				if fmt.Sprint(got) != fmt.Sprint(exp) {
					t.Fatalf("partition %d offset %d: read %v, logged %v", p, off, got, exp)
				}
				if (e.Invalid == event.ReasonNone) != v("invalid_reason").IsNull() || (e.UserID == "") != v("user_id").IsNull() {
					t.Fatalf("partition %d offset %d: NULLs differ: %+v %v", p, off, e, row)
				}
				if seen[pos{p, off}] {
					t.Fatalf("partition %d offset %d twice", p, off)
				}
				seen[pos{p, off}] = true
			}
			if err != nil {
				break
			}
		}
		r.Close()
	}
	if len(seen) != 1000 {
		t.Errorf("generic reader saw %d events in %d files, want 1000", len(seen), files)
	}
}

// TestBytesPerEvent reports the archive's size per event for a realistic mix at 1000
// events per second on one partition: 100 s by default, a full five-minute file (and some)
// with ADPULSE_ARCHIVE_SIZE_EVENTS=300000.
func TestBytesPerEvent(t *testing.T) {
	n := 100_000
	if testing.Short() {
		n = 20_000
	}
	if v := os.Getenv("ADPULSE_ARCHIVE_SIZE_EVENTS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatal(err)
		}
	}
	l := newMemLog(1)
	g := &gen{rng: rand.New(rand.NewPCG(1, 2)), recv: t0.UnixMicro(), step: time.Millisecond}
	l.appendEvents(0, g.batch(n))
	logBytes := 0
	for _, m := range l.all() {
		logBytes += len(m.Value)
	}
	tg, err := NewDirTarget(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{}
	clock.set(t0.Add(24 * time.Hour))
	a, err := New(Options{Log: l, Target: tg, PollInterval: time.Millisecond, Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	runUntil(t, a, caughtUp(l))
	s := a.Stats()
	t.Logf("%d events in %d files: %d bytes, %.1f bytes/event (the log's encoding: %.1f bytes/event)",
		s.EventsArchived, s.FilesWritten, s.BytesWritten, s.BytesPerEvent, float64(logBytes)/float64(n))
}

// The Row that readers use has the schema the archiver writes.
func TestRowSchema(t *testing.T) {
	cols := func(s *parquet.Schema) string { return s.String()[strings.Index(s.String(), "{"):] }
	if r, w := cols(parquet.SchemaOf(Row{})), cols(parquet.SchemaOf(record{})); r != w {
		t.Errorf("Row's schema:\n%s\nwritten:\n%s", r, w)
	}
}

// retentionTest archives events of four days, then runs with Retention: the days that
// ended more than Retention ago go, the others stay whole.
func retentionTest(t *testing.T, tg Target) {
	l := newMemLog(2)
	days := []time.Time{t0.AddDate(0, 0, -10), t0.AddDate(0, 0, -3), t0.AddDate(0, 0, -1), t0}
	for i, d := range days {
		g := &gen{rng: rand.New(rand.NewPCG(uint64(i), 4)), recv: d.UnixMicro(), step: time.Second}
		l.appendEvents(i%2, g.batch(200))
	}
	clock := &fakeClock{}
	clock.set(t0.Add(time.Hour)) // 2025-03-14 09:50
	a, err := New(Options{Log: l, Target: tg, PollInterval: time.Millisecond, Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	runUntil(t, a, caughtUp(l))
	a.Close()
	checkExactlyOnce(t, l, tg)

	// Keep 48h: 2025-03-11 ended at 03-12 00:00, before 03-12 09:50: deleted. 03-13 stays.
	b, err := New(Options{Log: l, Target: tg, Retention: 48 * time.Hour, PollInterval: time.Millisecond, Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	runUntil(t, b, func(s Stats) bool { return s.DirsDeleted == 2 })
	top, err := tg.List(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"_checkpoints/", "dt=2025-03-13/", "dt=2025-03-14/"}
	if fmt.Sprint(top) != fmt.Sprint(want) {
		t.Errorf("after retention: %v, want %v", top, want)
	}
	rows := readArchive(t, tg)
	if len(rows) != 400 {
		t.Errorf("%d events left, want 400", len(rows))
	}
	for _, r := range rows {
		if r.RecvTime < t0.AddDate(0, 0, -1).UnixMicro() {
			t.Fatalf("event received %v kept", time.UnixMicro(r.RecvTime).UTC())
		}
	}
}

func TestRetentionLocal(t *testing.T) {
	tg, err := NewDirTarget(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	retentionTest(t, tg)
}

func TestRetentionS3(t *testing.T) {
	tg, err := NewS3Target("archive", "raw", fakeS3(t))
	if err != nil {
		t.Fatal(err)
	}
	retentionTest(t, tg)
}
