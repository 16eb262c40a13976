package locallog

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/vfs"
)

// indexInterval is the spacing of sparse index entries in bytes: a Read skips at most this
// much (plus one record) to reach its offset. At 24 bytes an entry, a full 128 MiB segment
// costs 768 KiB of index.
const indexInterval = 4096

// scanChunk is the read size of sequential scans (recovery, lazy index builds).
const scanChunk = 1 << 20

type indexEntry struct {
	off int64 // offset of the record
	pos int64 // its file position
	ms  int64 // its append time; non-decreasing along the index
}

// segment is one file of a partition, holding the records from offset base on. Its name is
// the base offset, so a directory listing alone gives every segment's offset range: a sealed
// segment ends where the next one begins.
type segment struct {
	base int64
	path string
	f    vfs.File

	// refs counts the partition's segment list (one reference while the segment is listed)
	// and every reader using f. The last release closes f, so retention and Close never pull
	// a file from under a pread in flight.
	refs atomic.Int32

	// Reader-visible state, guarded by the owning partition's mu.
	size    int64        // readable bytes: durable bytes of the active segment, all bytes of a sealed one
	firstMs int64        // append time of the first record; -1 while the segment is empty
	lastMs  int64        // append time of the last record; -1 when not known (sealed in an earlier run, not yet indexed)
	index   []indexEntry // sparse index; complete only when indexed
	indexed bool
	bad     int64 // position of the first unparseable header a lazy index build met, -1 if none

	// buildMu serializes lazy index builds of a sealed segment. Lock order: buildMu, then
	// partition.mu.
	buildMu sync.Mutex
}

func newSegment(fsys vfs.FS, dir string, base int64, f vfs.File) *segment {
	s := &segment{base: base, path: segmentPath(fsys, dir, base), f: f, firstMs: -1, lastMs: -1, bad: -1}
	s.refs.Store(1)
	return s
}

func segmentPath(fsys vfs.FS, dir string, base int64) string {
	return fsys.PathJoin(dir, fmt.Sprintf("%020d.log", base))
}

// createSegment creates a new segment file. It refuses to replace one (vfs.FS.Create would):
// a file already there is one this log does not know about, and its records are not ours
// to drop.
func createSegment(fsys vfs.FS, path string) (vfs.File, error) {
	if _, err := fsys.Stat(path); err == nil {
		return nil, fmt.Errorf("create %s: %w", path, os.ErrExist)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	return fsys.Create(path)
}

// release drops one reference; the last one closes the file.
func (s *segment) release() {
	if s.refs.Add(-1) == 0 {
		_ = s.f.Close() // read-only by now: nothing left to lose
	}
}

// listSegments returns the base offsets of the segment files in dir, ascending.
func listSegments(fsys vfs.FS, dir string) ([]int64, error) {
	names, err := fsys.List(dir)
	if err != nil {
		return nil, err
	}
	var bases []int64
	for _, n := range names {
		name, ok := strings.CutSuffix(n, ".log")
		if !ok || len(name) != 20 {
			continue
		}
		base, err := strconv.ParseInt(name, 10, 64)
		if err != nil || base < 0 {
			continue
		}
		bases = append(bases, base)
	}
	sort.Slice(bases, func(i, j int) bool { return bases[i] < bases[j] })
	return bases, nil
}

// lookup returns the index entry to start a scan for offset off from: the last entry at or
// before it. The index must not be empty.
func lookup(index []indexEntry, off int64) indexEntry {
	i := sort.Search(len(index), func(i int) bool { return index[i].off > off })
	return index[max(i-1, 0)]
}

// lookupTime returns the last index entry whose time is before ms, or the first entry.
func lookupTime(index []indexEntry, ms int64) indexEntry {
	i := sort.Search(len(index), func(i int) bool { return index[i].ms >= ms })
	return index[max(i-1, 0)]
}

// scanResult is what a sequential scan of a segment learned.
type scanResult struct {
	index   []indexEntry
	count   int64 // records scanned
	end     int64 // position after the last good record
	firstMs int64
	lastMs  int64
	err     error // why the scan stopped before the limit, nil if it did not
}

// scan walks the records of f from position 0 up to limit, building a sparse index. With
// verify it checks every checksum (recovery of the active segment); without it reads headers
// only (lazy index of a sealed segment, whose checksums Read verifies). It stops at the first
// bad record, or after maxRecords records.
func scan(f vfs.File, base, limit, maxRecords int64, verify bool, tab *crc32.Table) scanResult {
	r := recordReader{f: f, limit: limit, chunk: scanChunk}
	res := scanResult{firstMs: -1, lastMs: -1}
	lastIdx := int64(-indexInterval)
	for res.end < limit && res.count < maxRecords {
		pos := res.end
		hd, err := r.header(pos)
		if err == nil && verify {
			_, err = r.record(pos, hd, tab)
		}
		if err != nil {
			res.err = err
			break
		}
		if pos-lastIdx >= indexInterval {
			res.index = append(res.index, indexEntry{off: base + res.count, pos: pos, ms: hd.ms})
			lastIdx = pos
		}
		if res.firstMs < 0 {
			res.firstMs = hd.ms
		}
		res.lastMs = hd.ms
		res.count++
		res.end = pos + headerSize + int64(hd.vlen)
	}
	return res
}

// readFirstTime returns the append time of a segment's first record from its header alone.
func readFirstTime(f vfs.File, size int64) (int64, error) {
	r := recordReader{f: f, limit: size, chunk: headerSize}
	hd, err := r.header(0)
	if err != nil {
		return 0, err
	}
	return hd.ms, nil
}

// syncDir makes a directory's entries (created or removed files) durable.
func syncDir(fsys vfs.FS, dir string) error {
	d, err := fsys.OpenDir(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// isTorn reports whether err is about the bytes of a record (short, unparseable or failing its
// checksum) rather than about reading them.
func isTorn(err error) bool {
	return errors.Is(err, errShort) || errors.Is(err, errBadRecord)
}

// truncate cuts f to size bytes. vfs.File has no Truncate, but the files of vfs.Default (an
// *os.File inside) have one; a file system whose files lack it cannot recover a torn tail or
// roll back a failed commit.
func truncate(f vfs.File, size int64) error {
	t, ok := f.(interface{ Truncate(size int64) error })
	if !ok {
		return fmt.Errorf("truncate: %T has no Truncate method", f)
	}
	return t.Truncate(size)
}

// readFile returns the contents of a small file.
func readFile(fsys vfs.FS, path string) ([]byte, error) {
	f, err := fsys.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}
