package locallog

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/cockroachdb/pebble/vfs"
)

// appendSpread appends rounds Appends, each with one message for every partition, and returns
// the acknowledged messages by partition.
func appendSpread(t testing.TB, l *Log, rounds int, tag string) [][]eventlog.Message {
	t.Helper()
	byPart := make([][]eventlog.Message, l.Partitions())
	for r := range rounds {
		msgs := make([]eventlog.Message, l.Partitions())
		for p := range msgs {
			msgs[p] = eventlog.Message{Partition: int32(p), Value: fmt.Appendf(nil, "%s-%d-%d-%s", tag, r, p, strings.Repeat("v", r%50))}
		}
		if err := l.Append(context.Background(), msgs); err != nil {
			t.Fatalf("Append: %v", err)
		}
		for p := range msgs {
			byPart[p] = append(byPart[p], msgs[p])
		}
	}
	return byPart
}

func journalFiles(t *testing.T, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, journalDirName, "*.log"))
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// TestJournalOneSyncPerRound: a round that writes to every partition costs one fdatasync (the
// journal's), a round that writes to one partition one too (its segment's), and what the
// journal alone made durable survives a crash that drops every unsynced segment write.
func TestJournalOneSyncPerRound(t *testing.T) {
	fs := vfs.NewStrictMem()
	opts := Options{Dir: "/log", Partitions: 4, FS: fs}
	l, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	before := l.Stats().Syncs
	want := appendSpread(t, l, 10, "spread")
	if got := l.Stats().Syncs - before; got != 10 {
		t.Errorf("10 rounds over 4 partitions made %d fdatasyncs, want 10 (one journal sync each)", got)
	}
	before = l.Stats().Syncs
	want[2] = append(want[2], appendN(t, l, 2, 5, "single")...)
	if got := l.Stats().Syncs - before; got != 5 {
		t.Errorf("5 rounds on one partition made %d fdatasyncs, want 5", got)
	}
	_ = l.Close()
	fs.ResetToSyncedState() // a power cut: the segments lose what only the journal synced

	l, err = Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for p := range want {
		checkSame(t, readAll(t, l, p, 0), want[p])
	}
}

// TestJournalCheckpoint: past JournalBytes the committer syncs the segments and starts an empty
// journal, keeping one file; a crash after any number of checkpoints loses nothing acknowledged.
func TestJournalCheckpoint(t *testing.T) {
	fs := vfs.NewStrictMem()
	opts := Options{Dir: "/log", Partitions: 3, SegmentBytes: 4 << 10, JournalBytes: 2 << 10, FS: fs}
	want := make([][]eventlog.Message, opts.Partitions)
	for run := range 3 {
		l, err := Open(opts)
		if err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		for p := range want {
			checkSame(t, readAll(t, l, p, 0), want[p])
		}
		got := appendSpread(t, l, 60, fmt.Sprint("run", run))
		for p := range want {
			want[p] = append(want[p], got[p]...)
		}
		if n := l.Stats().Checkpoints; n < 3 {
			t.Errorf("run %d: %d checkpoints, want several with a %d-byte journal", run, n, opts.JournalBytes)
		}
		names, err := fs.List("/log/" + journalDirName)
		if err != nil || len(names) != 1 {
			t.Errorf("run %d: journal files %v (%v), want one", run, names, err)
		}
		_ = l.Close()
		fs.ResetToSyncedState()
	}
}

// TestJournalTornFrame: a frame cut short (a round whose journal write the crash interrupted)
// ends the replay; everything acknowledged is there and appends continue after it.
func TestJournalTornFrame(t *testing.T) {
	dir := testDir(t)
	opts := Options{Dir: dir, Partitions: 2}
	l := mustOpen(t, opts)
	want := appendSpread(t, l, 20, "acked")
	mustClose(t, l)
	files := journalFiles(t, dir)
	if len(files) != 1 {
		t.Fatalf("journal files %v, want one", files)
	}
	// A frame of the right shape whose body never made it, then one whose bytes are wrong.
	f, err := os.OpenFile(files[0], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte{200, 0, 0, 0, 1, 2, 3, 4, 9, 9}); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()

	l = mustOpen(t, opts)
	more := appendSpread(t, l, 5, "after")
	mustClose(t, l)
	l = mustOpen(t, opts)
	for p := range want {
		checkSame(t, readAll(t, l, p, 0), append(want[p], more[p]...))
	}
}

// TestJournalGapRefused: if a partition ends below where the journal resumes (its synced
// records are gone, which only a lying disk does), Open refuses with ErrCorrupt instead of
// appending after a hole.
func TestJournalGapRefused(t *testing.T) {
	dir := testDir(t)
	opts := Options{Dir: dir, Partitions: 2, JournalBytes: 1 << 10}
	l := mustOpen(t, opts)
	appendSpread(t, l, 30, "before")
	if l.Stats().Checkpoints == 0 {
		t.Fatal("no checkpoint: the journal does not start past offset 0")
	}
	appendSpread(t, l, 2, "after") // leaves frames in the current journal
	mustClose(t, l)
	if err := os.Truncate(segmentFiles(t, dir, 0)[0], 0); err != nil {
		t.Fatal(err)
	}
	l, err := Open(opts)
	if err == nil {
		_ = l.Close()
		t.Fatal("Open succeeded over a partition that lost synced records")
	}
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "journal resumes") {
		t.Fatalf("Open: %v, want ErrCorrupt naming where the journal resumes", err)
	}
}

// FuzzJournalReplay: Open takes any journal file without panicking, and either refuses it
// with ErrCorrupt or opens a log whose partitions read back cleanly from start to end, each
// holding the records it held before. The file is the fuzzed bytes followed by one frame
// around the fuzzed body, so that the checksum does not hide the body's parser from the
// fuzzer.
func FuzzJournalReplay(f *testing.F) {
	crashed := crashedJournal(f)
	f.Add(crashed, []byte{})
	f.Add([]byte{}, crashed[frameHeaderSize:frameHeaderSize+binary.LittleEndian.Uint32(crashed)])
	f.Fuzz(func(t *testing.T, journal, body []byte) {
		var hdr [frameHeaderSize]byte
		binary.LittleEndian.PutUint32(hdr[0:4], uint32(len(body)))
		binary.LittleEndian.PutUint32(hdr[4:8], crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli)))
		journal = append(append(journal, hdr[:]...), body...)
		fs := vfs.NewMem()
		opts := Options{Dir: "/log", Partitions: 2, FS: fs}
		l := mustOpen(t, opts)
		before := appendN(t, l, 0, 3, "before")
		mustClose(t, l)
		dir := fs.PathJoin(opts.Dir, journalDirName)
		seqs, err := listSegments(fs, dir)
		if err != nil || len(seqs) != 1 {
			t.Fatalf("journal files %v (%v), want one", seqs, err)
		}
		jf, err := fs.Create(segmentPath(fs, dir, seqs[0]))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := jf.Write(journal); err != nil {
			t.Fatal(err)
		}
		_ = jf.Close()

		l, err = Open(opts)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open over a bad journal: %v, want ErrCorrupt", err)
			}
			return
		}
		defer l.Close()
		got := readAll(t, l, 0, 0)
		if len(got) < len(before) {
			t.Fatalf("partition 0 holds %d records after the replay, had %d", len(got), len(before))
		}
		checkSame(t, got[:len(before)], before)
		readAll(t, l, 1, 0)
	})
}

// crashedJournal is the journal a crash leaves behind: rounds over both partitions of a log
// whose segments were never synced, so recovery needs every frame.
func crashedJournal(tb testing.TB) []byte {
	fs := vfs.NewStrictMem()
	l, err := Open(Options{Dir: "/log", Partitions: 2, FS: fs})
	if err != nil {
		tb.Fatal(err)
	}
	appendSpread(tb, l, 5, "seed")
	dir := fs.PathJoin("/log", journalDirName)
	seqs, err := listSegments(fs, dir)
	if err != nil || len(seqs) != 1 {
		tb.Fatalf("journal files %v (%v), want one", seqs, err)
	}
	data, err := readFile(fs, segmentPath(fs, dir, seqs[0]))
	if err != nil {
		tb.Fatal(err)
	}
	_ = l.Close()
	return data
}
