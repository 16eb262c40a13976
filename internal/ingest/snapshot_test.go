package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/dedup"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/eventlog/eventlogtest"
	"github.com/adpulse/adpulse/internal/snapfile"
	"github.com/adpulse/adpulse/internal/testseed"
	"github.com/cockroachdb/pebble/vfs"
)

// snapEnv is a log, the live dedup store an intake would keep beside it, and a clock.
type snapEnv struct {
	t      *testing.T
	rng    *rand.Rand
	now    time.Time
	window time.Duration
	log    *eventlogtest.MemLog
	live   *dedup.Memory
	fs     vfs.FS
	ids    int
}

func newSnapEnv(t *testing.T, seed uint64, fs vfs.FS) *snapEnv {
	rng := rand.New(rand.NewPCG(seed, 7))
	e := &snapEnv{t: t, rng: rng, now: time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC), window: 10 * time.Minute, fs: fs}
	e.log = eventlogtest.NewMemLog(1+rng.IntN(4), func() time.Time { return e.now })
	e.live = dedup.NewMemory(e.window)
	return e
}

func (e *snapEnv) snap() KeySnapshot {
	return KeySnapshot{FS: e.fs, Path: "dedup-keys", Log: e.log, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// ingest takes n events as the intake would: reserve, append, commit; a duplicate within the
// window is dropped. Some ids repeat, so duplicates and keys reused after their window occur.
func (e *snapEnv) ingest(n int) {
	ctx := context.Background()
	for range n {
		e.now = e.now.Add(time.Duration(e.rng.IntN(2000)) * time.Millisecond)
		id := e.rng.IntN(e.ids + 1)
		if id == e.ids {
			e.ids++
		}
		recv := e.now.Add(-time.Duration(e.rng.IntN(1500)) * time.Millisecond)
		ev := event.Event{Type: event.TypeClick, ImpressionID: fmt.Sprintf("imp-%d", id), AdID: fmt.Sprintf("ad-%d", id%7), Time: recv.UnixMicro(), RecvTime: recv.UnixMicro()}
		out := make([]dedup.Status, 1)
		if err := e.live.Reserve(ctx, []string{ev.Key()}, recv, out); err != nil {
			e.t.Fatal(err)
		}
		if out[0] != dedup.Reserved {
			continue
		}
		p := int32(id % e.log.Partitions())
		if err := e.log.Append(ctx, []eventlog.Message{{Partition: p, Value: ev.AppendBinary(nil)}}); err != nil {
			e.t.Fatal(err)
		}
		if err := e.live.Commit(ctx, []string{ev.Key()}, recv); err != nil {
			e.t.Fatal(err)
		}
	}
}

type entries map[[2]uint64]uint32

func entriesOf(m *dedup.Memory, now time.Time) entries {
	out := entries{}
	m.Entries(now, func(fp [2]uint64, exp uint32) { out[fp] = exp })
	return out
}

// rebuilt is the store a start without any snapshot builds.
func (e *snapEnv) rebuilt() entries {
	mem := dedup.NewMemory(e.window)
	if _, err := RestoreKeys(context.Background(), e.log, mem, e.window, e.now, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		e.t.Fatal(err)
	}
	return entriesOf(mem, e.now)
}

// sameKeys fails unless got holds what want holds. The rebuild starts at the first offset
// appended within the window, and windows end on whole minutes, so a key whose window ends
// within the current minute may be in one and not the other; both treat it alike within a
// minute, and nothing else may differ.
func sameKeys(t *testing.T, what string, got, want entries, now time.Time) {
	t.Helper()
	edge := uint32(now.Unix()/60) + 1
	bad := 0
	for fp, exp := range want {
		if g, ok := got[fp]; (!ok && exp > edge) || (ok && g != exp) {
			bad++
		}
	}
	for fp, exp := range got {
		if _, ok := want[fp]; !ok && exp > edge {
			bad++
		}
	}
	if bad > 0 {
		t.Fatalf("%s: %d keys differ from the rebuild from the log (%d keys, rebuild %d)", what, bad, len(got), len(want))
	}
}

// TestKeySnapshotEqualsRebuild: a snapshot plus the log after it gives the keys a rebuild
// from the whole log gives, whatever the log, the time the snapshot was taken and how long
// before the start.
func TestKeySnapshotEqualsRebuild(t *testing.T) {
	seed := testseed.Seed(t)
	for round := range 20 {
		e := newSnapEnv(t, seed+uint64(round), vfs.NewMem())
		e.ingest(e.rng.IntN(800))
		if _, err := e.snap().Write(context.Background(), e.live, e.now); err != nil {
			t.Fatal(err)
		}
		e.ingest(e.rng.IntN(400))
		e.now = e.now.Add(time.Duration(e.rng.IntN(int(2 * e.window))))
		ld, err := e.snap().Load(context.Background(), e.window, e.now)
		if err != nil {
			t.Fatal(err)
		}
		if ld.Offsets == nil {
			t.Fatalf("round %d: snapshot not used: %s", round, ld.Why)
		}
		want := e.rebuilt()
		sameKeys(t, fmt.Sprintf("round %d: snapshot and tail", round), entriesOf(ld.Keys, e.now), want, e.now)
		sameKeys(t, fmt.Sprintf("round %d: live store", round), entriesOf(e.live, e.now), want, e.now)
	}
}

// TestKeySnapshotUnusableFallsBack: a corrupt, truncated, foreign or stale snapshot is not
// used, and the keys are rebuilt from the log.
func TestKeySnapshotUnusableFallsBack(t *testing.T) {
	seed := testseed.Seed(t)
	cases := []struct {
		name  string
		spoil func(e *snapEnv)
	}{
		{"flipped byte", func(e *snapEnv) { spoilFile(t, e.fs, func(b []byte) []byte { b[len(b)/2] ^= 0x10; return b }) }},
		{"truncated", func(e *snapEnv) { spoilFile(t, e.fs, func(b []byte) []byte { return b[:len(b)-5] }) }},
		{"empty", func(e *snapEnv) { spoilFile(t, e.fs, func([]byte) []byte { return nil }) }},
		{"other window", func(e *snapEnv) { e.window *= 2 }},
		{"version 1 (128-bit fingerprints)", func(e *snapEnv) { rewriteVersion(t, e.fs, 1) }},
		{"clock before the snapshot", func(e *snapEnv) { e.now = e.now.Add(-time.Hour) }},
		{"log replaced", func(e *snapEnv) {
			old := e.log
			e.log = eventlogtest.NewMemLog(old.Partitions(), func() time.Time { return e.now })
			e.live = dedup.NewMemory(e.window)
			e.ingest(2000) // other events, past the snapshot's offsets
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newSnapEnv(t, seed, vfs.NewMem())
			e.ingest(500)
			if _, err := e.snap().Write(context.Background(), e.live, e.now); err != nil {
				t.Fatal(err)
			}
			e.ingest(50)
			c.spoil(e)
			ld, err := e.snap().Load(context.Background(), e.window, e.now)
			if err != nil {
				t.Fatal(err)
			}
			if ld.Offsets != nil {
				t.Fatal("an unusable snapshot was used")
			}
			sameKeys(t, "fallback", entriesOf(ld.Keys, e.now), e.rebuilt(), e.now)
		})
	}
}

// rewriteVersion rewrites the snapshot whole (checksum included) as of another version.
func rewriteVersion(t *testing.T, fs vfs.FS, version uint32) {
	t.Helper()
	var body []byte
	err := snapfile.Read(fs, "dedup-keys", keySnapshotKind, keySnapshotVersion, func(r io.Reader) (err error) {
		body, err = io.ReadAll(r)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	err = snapfile.Write(fs, "dedup-keys", keySnapshotKind, version, func(w io.Writer) error {
		_, err := w.Write(body)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func spoilFile(t *testing.T, fs vfs.FS, f func([]byte) []byte) {
	t.Helper()
	r, err := fs.Open("dedup-keys")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(r)
	r.Close()
	if err != nil {
		t.Fatal(err)
	}
	b = f(b)
	w, err := fs.Create("dedup-keys")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	w.Close()
}

// TestKeySnapshotWaitsForInFlightKeys: an event durable in the log whose key is not yet
// committed when the snapshot starts is in the snapshot (or after its offsets), never lost.
func TestKeySnapshotWaitsForInFlightKeys(t *testing.T) {
	e := newSnapEnv(t, testseed.Seed(t), vfs.NewMem())
	ctx := context.Background()
	e.ingest(100)
	ev := event.Event{Type: event.TypeClick, ImpressionID: "in-flight", AdID: "ad-1", RecvTime: e.now.UnixMicro(), Time: e.now.UnixMicro()}
	out := make([]dedup.Status, 1)
	if err := e.live.Reserve(ctx, []string{ev.Key()}, e.now, out); err != nil || out[0] != dedup.Reserved {
		t.Fatal(out, err)
	}
	if err := e.log.Append(ctx, []eventlog.Message{{Partition: 0, Value: ev.AppendBinary(nil)}}); err != nil {
		t.Fatal(err)
	}
	go func() { // the append's caller commits a little later
		time.Sleep(50 * time.Millisecond)
		_ = e.live.Commit(ctx, []string{ev.Key()}, e.now)
	}()
	if _, err := e.snap().Write(ctx, e.live, e.now); err != nil {
		t.Fatal(err)
	}
	ld, err := e.snap().Load(ctx, e.window, e.now)
	if err != nil || ld.Offsets == nil {
		t.Fatal(err, ld.Why)
	}
	if ld.Events != 0 {
		t.Fatalf("%d events read after the snapshot, want 0", ld.Events)
	}
	out[0] = dedup.Reserved
	if err := ld.Keys.Reserve(ctx, []string{ev.Key()}, e.now, out); err != nil || out[0] != dedup.Duplicate {
		t.Fatalf("the durable event's key after the restart: %v (%v), want duplicate", out[0], err)
	}
}

// crashFS fails every operation after the first left ones, as a process killed at that
// moment would stop doing anything.
type crashFS struct {
	vfs.FS
	left *int
}

var errCrashed = errors.New("crashed")

func (c crashFS) step() error {
	if *c.left <= 0 {
		return errCrashed
	}
	*c.left--
	return nil
}

func (c crashFS) Create(name string) (vfs.File, error) {
	if err := c.step(); err != nil {
		return nil, err
	}
	f, err := c.FS.Create(name)
	return crashFile{f, c}, err
}

func (c crashFS) Rename(a, b string) error {
	if err := c.step(); err != nil {
		return err
	}
	return c.FS.Rename(a, b)
}

func (c crashFS) OpenDir(name string) (vfs.File, error) {
	if err := c.step(); err != nil {
		return nil, err
	}
	f, err := c.FS.OpenDir(name)
	return crashFile{f, c}, err
}

type crashFile struct {
	vfs.File
	c crashFS
}

func (f crashFile) Write(p []byte) (int, error) {
	if err := f.c.step(); err != nil {
		return 0, err
	}
	// Half of a write may reach the file before the crash.
	return f.File.Write(p)
}

func (f crashFile) Sync() error {
	if err := f.c.step(); err != nil {
		return err
	}
	return f.File.Sync()
}

// TestKeySnapshotCrash kills the process at every step of writing a snapshot, on a file
// system that drops what was not synced: the start after it uses the old snapshot or the new
// one (never a torn one), and the keys equal the rebuild from the log.
func TestKeySnapshotCrash(t *testing.T) {
	seed := testseed.Seed(t)
	for step := 0; ; step++ {
		mem := vfs.NewStrictMem()
		e := newSnapEnv(t, seed, mem)
		e.ingest(300)
		if _, err := e.snap().Write(context.Background(), e.live, e.now); err != nil {
			t.Fatal(err)
		}
		e.ingest(300)
		left := step
		e.fs = crashFS{FS: mem, left: &left}
		_, werr := e.snap().Write(context.Background(), e.live, e.now)
		mem.ResetToSyncedState()
		e.fs = mem
		e.ingest(100)
		ld, err := e.snap().Load(context.Background(), e.window, e.now)
		if err != nil {
			t.Fatal(err)
		}
		if ld.Offsets == nil {
			t.Fatalf("crash at step %d: no snapshot used after the crash: %s", step, ld.Why)
		}
		sameKeys(t, fmt.Sprintf("crash at step %d", step), entriesOf(ld.Keys, e.now), e.rebuilt(), e.now)
		if werr == nil {
			t.Logf("%d crash points checked", step)
			return
		}
		if !errors.Is(werr, errCrashed) {
			t.Fatal(werr)
		}
	}
}

// TestKeySnapshotVersion2RoundTrip: a key snapshot is written as version 2, is not readable
// as version 1, and the store loaded from it answers "duplicate" for every committed key whose
// window has not ended and "reserved" for a key never seen.
func TestKeySnapshotVersion2RoundTrip(t *testing.T) {
	e := newSnapEnv(t, testseed.Seed(t), vfs.NewMem())
	e.ingest(1500)
	if _, err := e.snap().Write(context.Background(), e.live, e.now); err != nil {
		t.Fatal(err)
	}
	read := func(r io.Reader) error { _, err := io.Copy(io.Discard, r); return err }
	if err := snapfile.Read(e.fs, "dedup-keys", keySnapshotKind, 2, read); err != nil {
		t.Fatalf("read as version 2: %v", err)
	}
	if err := snapfile.Read(e.fs, "dedup-keys", keySnapshotKind, 1, read); err == nil {
		t.Fatal("a version 2 snapshot was read as version 1")
	}
	ld, err := e.snap().Load(context.Background(), e.window, e.now)
	if err != nil || ld.Offsets == nil {
		t.Fatalf("Load: %v (%s)", err, ld.Why)
	}
	live := entriesOf(e.live, e.now)
	if got := entriesOf(ld.Keys, e.now); len(got) != len(live) {
		t.Fatalf("loaded %d keys, live store holds %d", len(got), len(live))
	}
	var keys []string
	for id := range e.ids {
		ev := event.Event{Type: event.TypeClick, ImpressionID: fmt.Sprintf("imp-%d", id), AdID: fmt.Sprintf("ad-%d", id%7)}
		keys = append(keys, ev.Key())
	}
	keys = append(keys, "never-seen")
	want, got := make([]dedup.Status, len(keys)), make([]dedup.Status, len(keys))
	if err := e.live.Reserve(context.Background(), keys, e.now, want); err != nil {
		t.Fatal(err)
	}
	if err := ld.Keys.Reserve(context.Background(), keys, e.now, got); err != nil {
		t.Fatal(err)
	}
	dups := 0
	for i := range keys {
		if got[i] != want[i] {
			t.Fatalf("key %q: %v from the snapshot, %v live", keys[i], got[i], want[i])
		}
		if got[i] == dedup.Duplicate {
			dups++
		}
	}
	if dups == 0 || got[len(got)-1] != dedup.Reserved {
		t.Fatalf("%d duplicates, new key %v: the test checks nothing", dups, got[len(got)-1])
	}
}
