// Package locallog is the embedded event log: a partitioned, append-only log in a local
// directory, the eventlog.Log of a single-machine adpulse. Ingest appends encoded events to it;
// aggregation, charging and the archive read it by offset.
//
// On disk, Dir/META holds the partition count and Dir/p<N>/ holds partition N's segment
// files, each named by the offset of its first record (00000000000000001234.log). A record is
// a 16-byte header (value length, CRC32C, append time in unix milliseconds) and its value;
// offsets are implicit (segment base plus position in the segment).
//
// Invariants:
//   - Acknowledged means durable. Append returns nil only after its records were written and
//     fdatasynced (and, for a new segment, after its directory entry was synced). One committer
//     goroutine does every write: it gathers all pending requests, writes each partition's
//     records with one write call, syncs the dirty partition files in parallel and then wakes
//     the waiters, so many concurrent Appends share one sync (group commit).
//   - Readers see only durable records. A partition's end offset, and the bytes readers may
//     read, advance after the sync, never before: a consumer must never count a record that a
//     crash could still take away.
//   - Offsets are dense per partition. Append times never decrease within a partition (the
//     clock is clamped to the last time used), so time lookups and retention can trust the
//     order of segments and index entries.
//   - At Open only the last segment of each partition is scanned and verified: a crash can tear
//     nothing else. A torn tail is truncated, and logged. A bad record anywhere else is
//     reported by Read as ErrCorrupt, never skipped.
//   - Retention deletes whole sealed segments, oldest first, never the active one.
//   - A failed round is rolled back, not retried: when a write or sync of any partition
//     fails, every partition the round wrote is truncated back to its size before the round
//     (a segment the round created is removed) and synced, and the in-memory state is
//     restored, so the log continues from its last published record. Retrying the sync would
//     be unsound: after a failed fsync Linux may have dropped the dirty pages, or marked them
//     clean without writing them, so the page cache no longer says what the disk holds. The
//     round's Appends fail with eventlog.ErrNotAppended and later rounds proceed (a full disk
//     refuses appends until space returns). Records acknowledged before are never touched:
//     they lie below the truncation point. Only if the rollback fails too does the log fail
//     for good: the round's Appends get an error of unknown outcome, Err reports the failure,
//     Run returns it, and reopening recovers.
//
// Lock order: Log.mu, then partition.mu; segment.buildMu before partition.mu. No file I/O is
// done while holding Log.mu or a partition.mu, so a slow disk never blocks readers.
package locallog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/cockroachdb/pebble/vfs"
)

var _ eventlog.Log = (*Log)(nil)

// Defaults of Options.
const (
	DefaultSegmentBytes   = 128 << 20
	DefaultRetention      = 7 * 24 * time.Hour
	DefaultRetentionCheck = time.Minute
)

// maxRoundBytes bounds the bytes one group commit takes, so that a burst of large batches is
// written in several rounds instead of one unbounded buffer.
const maxRoundBytes = 16 << 20

// Options configure a Log.
type Options struct {
	// Dir holds the log; it is created if missing.
	Dir string
	// Partitions is the number of partitions. Zero means the count stored in Dir; a different
	// count than the stored one is an error (records are partitioned by key: changing the
	// count would silently move keys).
	Partitions int
	// SegmentBytes is the size at which a partition starts a new segment file. A segment
	// exceeds it only by holding a single record larger than it. Default 128 MiB.
	SegmentBytes int64
	// Retention is how long records are kept: sealed segments whose newest record is older
	// are deleted by Run. Default 7 days; negative keeps everything.
	Retention time.Duration
	// RetentionCheck is how often Run enforces Retention. Default one minute.
	RetentionCheck time.Duration
	// Logger receives recovery and retention reports. Default: discard.
	Logger *slog.Logger
	// Now is the clock stamping append times and judging retention. Default time.Now.
	Now func() time.Time
	// FS is the file system the log lives in; every file operation goes through it. Default
	// vfs.Default, the operating system's. Its files must also have a Truncate(size int64)
	// error method, as vfs.Default's do: recovery cuts a torn tail with it, and a failed
	// commit is rolled back with it (without it, a failed commit fails the log for good).
	FS vfs.FS
}

// Stats are the log's counters and sizes, for the server to export as metrics.
type Stats struct {
	AppendedMessages int64         // messages acknowledged by Append
	AppendedBytes    int64         // value bytes acknowledged by Append
	Commits          int64         // group commits that acknowledged at least one request
	Rollbacks        int64         // group commits that failed and were rolled back (or failed the log)
	Syncs            int64         // fdatasync calls on segment files
	SyncTime         time.Duration // time spent in those calls, summed (they overlap across partitions)
	SegmentsDeleted  int64         // segments deleted by retention
	Partitions       []PartitionStats
}

// PartitionStats describe one partition as readers see it.
type PartitionStats struct {
	Start    int64 // first retained offset
	End      int64 // next offset to be assigned
	Segments int
	Bytes    int64 // durable bytes in segment files
}

// Log is a partitioned log in a local directory. It is safe for concurrent use.
type Log struct {
	opts   Options
	logger *slog.Logger
	now    func() time.Time
	crc    *crc32.Table
	fs     vfs.FS
	parts  []*partition
	lock   io.Closer // holds the directory lock while open

	mu      sync.Mutex // guards pending, closed, failed
	pending []*request
	closed  bool
	failed  error         // sticky: why a round could not be rolled back
	dead    chan struct{} // closed when failed is set: ends Run

	isClosed atomic.Bool   // closed, readable without mu
	kick     chan struct{} // wakes the committer; buffered, so a kick is never lost
	closing  chan struct{} // closed by Close: ends Run
	stopped  chan struct{} // closed when the committer has exited
	reqs     sync.Pool     // of *request

	// Owned by the committer goroutine.
	batch      []*request
	dirty      []*partition
	roundMsgs  int64
	roundBytes int64

	stats struct {
		msgs, bytes, commits, rollbacks, syncs, syncNanos, deleted atomic.Int64
	}
}

// request is one Append waiting for its group commit.
type request struct {
	msgs  []eventlog.Message
	taken bool          // guarded by Log.mu: the committer has copied msgs and will not touch them again
	err   error         // the commit's outcome, written before done is signalled
	done  chan struct{} // buffered: the committer never blocks on a waiter that gave up
}

// partition is one partition's segments and write state.
type partition struct {
	id     int32
	dir    string
	fs     vfs.FS
	logger *slog.Logger

	mu   sync.RWMutex // guards segs, end, and the reader-visible fields of segments
	segs []*segment   // ascending by base; the last is the active segment; nil once closed
	end  int64        // durable end offset: readers never look past it

	// Owned by the committer goroutine (and by Open before it starts).
	active  *segment // segment being appended to; listed in segs once it holds durable records
	next    int64    // next offset to assign
	lastMs  int64    // last append time assigned, for the monotonic clamp
	wsize   int64    // bytes written (or being written) to active
	lastIdx int64    // position of active's last index entry
	chunks  []chunk  // this round's writes, one per target segment
	nchunks int
	err     error     // this round's write error
	saved   tailState // the fields above as they were before this round, for a rollback
}

// tailState is a partition's append position, saved at the start of a round.
type tailState struct {
	active              *segment
	next, lastMs, wsize int64
	lastIdx             int64
}

// chunk is one round's records for one segment: a single write call.
type chunk struct {
	seg             *segment
	create          bool // the segment file is created by this round (a roll)
	pos             int64
	buf             []byte
	idx             []indexEntry
	firstMs, lastMs int64
}

// Open opens (or creates) the log in opts.Dir, recovering the tail of every partition, and
// starts its committer. Call Close to release it, and Run to enforce retention.
func Open(opts Options) (*Log, error) {
	if opts.Dir == "" {
		return nil, errors.New("locallog: Options.Dir is empty")
	}
	if opts.SegmentBytes <= 0 {
		opts.SegmentBytes = DefaultSegmentBytes
	}
	if opts.Retention == 0 {
		opts.Retention = DefaultRetention
	}
	if opts.RetentionCheck <= 0 {
		opts.RetentionCheck = DefaultRetentionCheck
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	l := &Log{
		opts:    opts,
		logger:  opts.Logger,
		now:     opts.Now,
		crc:     crc32.MakeTable(crc32.Castagnoli),
		fs:      opts.FS,
		kick:    make(chan struct{}, 1),
		closing: make(chan struct{}),
		stopped: make(chan struct{}),
		dead:    make(chan struct{}),
	}
	l.reqs.New = func() any { return &request{done: make(chan struct{}, 1)} }

	if err := l.createDir(opts.Dir); err != nil {
		return nil, fmt.Errorf("locallog: create %s: %w", opts.Dir, err)
	}
	lock, err := l.fs.Lock(l.fs.PathJoin(opts.Dir, "LOCK"))
	if err != nil {
		return nil, fmt.Errorf("locallog: lock %s (is another log open on it?): %w", opts.Dir, err)
	}
	l.lock = lock
	n, err := l.loadMeta()
	if err == nil {
		for i := range n {
			var p *partition
			if p, err = l.openPartition(i); err != nil {
				break
			}
			l.parts = append(l.parts, p)
		}
	}
	if err == nil {
		err = syncDir(l.fs, opts.Dir) // partition directories created above
	}
	if err != nil {
		l.closeFiles()
		return nil, err
	}
	go l.commitLoop()
	return l, nil
}

// createDir creates dir if it is missing and makes its entry in its parent durable, so a
// crash cannot take away a directory whose files were synced.
func (l *Log) createDir(dir string) error {
	if _, err := l.fs.Stat(dir); err == nil {
		return nil
	}
	if err := l.fs.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return syncDir(l.fs, l.fs.PathDir(dir))
}

const metaMagic = "adpulse-locallog 1"

// loadMeta returns the partition count stored in Dir, storing opts.Partitions for a new log.
func (l *Log) loadMeta() (int, error) {
	path := l.fs.PathJoin(l.opts.Dir, "META")
	b, err := readFile(l.fs, path)
	if errors.Is(err, fs.ErrNotExist) {
		n := l.opts.Partitions
		if n <= 0 {
			return 0, fmt.Errorf("locallog: new log in %s needs Options.Partitions > 0", l.opts.Dir)
		}
		return n, writeFileDurably(l.fs, path, fmt.Appendf(nil, "%s\npartitions %d\n", metaMagic, n))
	}
	if err != nil {
		return 0, fmt.Errorf("locallog: read %s: %w", path, err)
	}
	var n int
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	if len(lines) == 2 && string(lines[0]) == metaMagic {
		if v, ok := bytes.CutPrefix(lines[1], []byte("partitions ")); ok {
			n, _ = strconv.Atoi(string(v))
		}
	}
	if n <= 0 {
		return 0, fmt.Errorf("locallog: %s is not a log's META file: %q", path, b)
	}
	if l.opts.Partitions != 0 && l.opts.Partitions != n {
		return 0, fmt.Errorf("locallog: %s has %d partitions, Options.Partitions is %d", l.opts.Dir, n, l.opts.Partitions)
	}
	return n, nil
}

// writeFileDurably writes a small file so that a crash leaves either no file or all of it.
func writeFileDurably(fsys vfs.FS, path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := fsys.Create(tmp)
	if err != nil {
		return fmt.Errorf("locallog: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fsys.Rename(tmp, path)
	}
	if err == nil {
		err = syncDir(fsys, fsys.PathDir(path))
	}
	if err != nil {
		return fmt.Errorf("locallog: write %s: %w", path, err)
	}
	return nil
}

// openPartition opens partition id's segments, validating and if need be truncating the tail
// of the last one. Older segments are only opened: their first header gives their start
// time, and their index is built on first read.
func (l *Log) openPartition(id int) (*partition, error) {
	dir := l.fs.PathJoin(l.opts.Dir, "p"+strconv.Itoa(id))
	if err := l.fs.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("locallog: create %s: %w", dir, err)
	}
	bases, err := listSegments(l.fs, dir)
	if err != nil {
		return nil, fmt.Errorf("locallog: list segments of partition %d: %w", id, err)
	}
	p := &partition{id: int32(id), dir: dir, fs: l.fs, logger: l.logger}
	var segs []*segment
	fail := func(err error) (*partition, error) {
		for _, s := range segs {
			s.release()
		}
		if p.active != nil {
			_ = p.active.f.Close()
		}
		return nil, err
	}
	for p.active == nil {
		if len(bases) == 0 {
			f, err := createSegment(l.fs, segmentPath(l.fs, dir, 0))
			if err != nil {
				return fail(fmt.Errorf("locallog: create first segment of partition %d: %w", id, err))
			}
			if err := syncDir(l.fs, dir); err != nil {
				_ = f.Close()
				return fail(fmt.Errorf("locallog: %w", err))
			}
			p.active = newSegment(l.fs, dir, 0, f)
			p.lastIdx = -indexInterval
			break
		}
		base := bases[len(bases)-1]
		f, err := l.fs.OpenReadWrite(segmentPath(l.fs, dir, base))
		if err != nil {
			return fail(fmt.Errorf("locallog: open segment %d of partition %d: %w", base, id, err))
		}
		s := newSegment(l.fs, dir, base, f)
		if err := l.recoverTail(p, s); err != nil {
			_ = f.Close()
			return fail(err)
		}
		if s.firstMs < 0 && len(bases) > 1 {
			// An empty segment after others is a roll whose records did not survive. Drop it,
			// so the previous segment becomes the tail and is validated like any tail.
			_ = f.Close()
			if err := l.fs.Remove(s.path); err != nil {
				return fail(fmt.Errorf("locallog: remove empty segment: %w", err))
			}
			if err := syncDir(l.fs, dir); err != nil {
				return fail(fmt.Errorf("locallog: %w", err))
			}
			l.logger.Warn("locallog: removed empty last segment", "partition", id, "segment", s.path)
			bases = bases[:len(bases)-1]
			continue
		}
		p.active = s
	}
	prevMs := int64(0)
	for _, base := range bases[:max(len(bases)-1, 0)] {
		f, err := l.fs.Open(segmentPath(l.fs, dir, base))
		if err != nil {
			return fail(fmt.Errorf("locallog: open segment %d of partition %d: %w", base, id, err))
		}
		s := newSegment(l.fs, dir, base, f)
		segs = append(segs, s)
		st, err := f.Stat()
		if err != nil {
			return fail(fmt.Errorf("locallog: stat segment %d of partition %d: %w", base, id, err))
		}
		s.size = st.Size()
		ms, err := readFirstTime(f, s.size)
		if err != nil {
			if !isTorn(err) {
				return fail(fmt.Errorf("locallog: segment %d of partition %d: %w", base, id, err))
			}
			// Reads of this segment will report it (bad at 0); until then order it by its
			// predecessor, so time lookups stay monotonic.
			l.logger.Error("locallog: unreadable first record in sealed segment", "partition", id, "segment", s.path, "err", err)
			s.bad, s.indexed, ms = 0, true, prevMs
		}
		s.firstMs, prevMs = ms, ms
	}
	p.segs = append(segs, p.active)
	p.end = p.next
	return p, nil
}

// recoverTail scans the active segment s, verifying every record, and truncates it after the
// last good one: whatever follows was not acknowledged (it was never synced, or its sync
// never returned), so dropping it loses nothing a client was promised.
func (l *Log) recoverTail(p *partition, s *segment) error {
	st, err := s.f.Stat()
	if err != nil {
		return fmt.Errorf("locallog: stat %s: %w", s.path, err)
	}
	size := st.Size()
	res := scan(s.f, s.base, size, 1<<62, true, l.crc)
	if res.err != nil && !isTorn(res.err) {
		return fmt.Errorf("locallog: recover %s: %w", s.path, res.err)
	}
	if res.end < size {
		l.logger.Warn("locallog: truncating torn tail", "partition", p.id, "segment", s.path,
			"at_byte", res.end, "dropped_bytes", size-res.end, "kept_records", res.count, "reason", res.err)
		if err := truncate(s.f, res.end); err != nil {
			return fmt.Errorf("locallog: truncate %s: %w", s.path, err)
		}
		if err := s.f.SyncData(); err != nil {
			return fmt.Errorf("locallog: sync %s: %w", s.path, err)
		}
	}
	s.size, s.index, s.indexed = res.end, res.index, true
	s.firstMs, s.lastMs = res.firstMs, res.lastMs
	p.next = s.base + res.count
	p.lastMs = res.lastMs
	p.wsize = res.end
	p.lastIdx = -indexInterval
	if len(res.index) > 0 {
		p.lastIdx = res.index[len(res.index)-1].pos
	}
	return nil
}

// Partitions returns the number of partitions.
func (l *Log) Partitions() int { return len(l.parts) }

func (l *Log) partition(ctx context.Context, i int) (*partition, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if i < 0 || i >= len(l.parts) {
		return nil, fmt.Errorf("locallog: partition %d of %d: %w", i, len(l.parts), eventlog.ErrBadPartition)
	}
	if l.isClosed.Load() {
		return nil, eventlog.ErrClosed
	}
	return l.parts[i], nil
}

// Append makes msgs durable and sets their Offset and Time. It returns once the group commit
// that took them has synced. ctx can only withdraw a request the committer has not taken yet
// (Append then returns ctx's error, wrapping eventlog.ErrNotAppended); once taken, the
// records may reach the disk, so Append waits for the outcome and reports it, whatever ctx
// says: a caller told "canceled" about records that became durable would append them twice.
// Errors wrapping ErrNotAppended (refused, withdrawn, rolled back) promise the records are
// not and never will be durable; any other error leaves the outcome unknown.
func (l *Log) Append(ctx context.Context, msgs []eventlog.Message) error {
	if err := ctx.Err(); err != nil {
		return eventlog.NotAppended(err)
	}
	for i := range msgs {
		if p := msgs[i].Partition; p < 0 || int(p) >= len(l.parts) {
			return eventlog.NotAppended(fmt.Errorf("locallog: append to partition %d of %d: %w", p, len(l.parts), eventlog.ErrBadPartition))
		}
		if n := len(msgs[i].Value); n > MaxValueBytes {
			return eventlog.NotAppended(fmt.Errorf("locallog: append: value of %d bytes exceeds %d", n, MaxValueBytes))
		}
	}
	req := l.reqs.Get().(*request)
	req.msgs, req.taken, req.err = msgs, false, nil
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		l.putRequest(req)
		return eventlog.NotAppended(eventlog.ErrClosed)
	}
	if l.failed != nil {
		err := l.failed
		l.mu.Unlock()
		l.putRequest(req)
		return refusedAfter(err)
	}
	if len(msgs) == 0 {
		l.mu.Unlock()
		l.putRequest(req)
		return nil
	}
	l.pending = append(l.pending, req)
	l.mu.Unlock()
	select {
	case l.kick <- struct{}{}:
	default:
	}

	select {
	case <-req.done:
	case <-ctx.Done():
		l.mu.Lock()
		if !req.taken {
			// Still queued: nothing of it was encoded or written. Withdraw it.
			if i := slices.Index(l.pending, req); i >= 0 {
				l.pending = slices.Delete(l.pending, i, i+1)
			}
			l.mu.Unlock()
			l.putRequest(req)
			return eventlog.NotAppended(fmt.Errorf("locallog: append withdrawn before commit: %w", ctx.Err()))
		}
		l.mu.Unlock()
		<-req.done // taken: the records may become durable, so the outcome is owed
	}
	err := req.err
	l.putRequest(req)
	return err
}

// refusedAfter is the error of an Append refused because the log failed: its records were
// never taken, so they are certainly not appended.
func refusedAfter(failure error) error {
	return eventlog.NotAppended(fmt.Errorf("locallog: append refused after an earlier write failure: %w", failure))
}

func (l *Log) putRequest(req *request) {
	req.msgs, req.err = nil, nil
	l.reqs.Put(req)
}

// commitLoop is the committer: the only goroutine that writes segment files.
func (l *Log) commitLoop() {
	defer close(l.stopped)
	for range l.kick {
		for {
			n, failed, closed := l.gather()
			if n == 0 {
				if closed {
					return
				}
				break
			}
			err := failed
			if err == nil {
				err = l.commit()
			} else {
				err = refusedAfter(err)
			}
			for i, req := range l.batch {
				req.err = err
				req.done <- struct{}{}
				l.batch[i] = nil
			}
			l.batch = l.batch[:0]
		}
	}
}

// gather takes pending requests (up to maxRoundBytes, at least one) into l.batch and, unless
// the log has failed, encodes their records into their partitions' chunks, assigning offsets
// and times. It holds Log.mu throughout, which is what makes reading the callers' msgs safe:
// a caller that gives up takes Log.mu too, and then sees taken.
func (l *Log) gather() (n int, failed error, closed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	failed, closed = l.failed, l.closed
	if len(l.pending) == 0 {
		return 0, failed, closed
	}
	ms := l.now().UnixMilli()
	segBytes := l.opts.SegmentBytes
	l.roundMsgs, l.roundBytes = 0, 0
	var size int64
	for n < len(l.pending) && (n == 0 || size < maxRoundBytes) {
		req := l.pending[n]
		n++
		req.taken = true
		l.batch = append(l.batch, req)
		if failed != nil {
			continue
		}
		for i := range req.msgs {
			m := &req.msgs[i]
			p := l.parts[m.Partition]
			if p.nchunks == 0 {
				l.dirty = append(l.dirty, p)
				p.saved = tailState{active: p.active, next: p.next, lastMs: p.lastMs, wsize: p.wsize, lastIdx: p.lastIdx}
			}
			p.add(l.crc, segBytes, ms, m)
			size += headerSize + int64(len(m.Value))
			l.roundBytes += int64(len(m.Value))
		}
		l.roundMsgs += int64(len(req.msgs))
	}
	rest := copy(l.pending, l.pending[n:])
	clear(l.pending[rest:])
	l.pending = l.pending[:rest]
	return n, failed, closed
}

// add encodes m as the partition's next record, rolling to a new segment first if m would
// push the active one past segBytes.
func (p *partition) add(tab *crc32.Table, segBytes, ms int64, m *eventlog.Message) {
	recSize := headerSize + int64(len(m.Value))
	switch {
	case p.wsize > 0 && p.wsize+recSize > segBytes:
		p.active = newSegment(p.fs, p.dir, p.next, nil)
		p.active.indexed = true
		p.wsize = 0
		p.startChunk(true)
	case p.nchunks == 0:
		p.startChunk(false)
	}
	c := &p.chunks[p.nchunks-1]
	ms = max(ms, p.lastMs)
	p.lastMs = ms
	if p.wsize == 0 || p.wsize-p.lastIdx >= indexInterval {
		c.idx = append(c.idx, indexEntry{off: p.next, pos: p.wsize, ms: ms})
		p.lastIdx = p.wsize
	}
	if c.firstMs < 0 {
		c.firstMs = ms
	}
	c.lastMs = ms
	c.buf = appendRecord(c.buf, tab, ms, m.Value)
	m.Offset, m.Time = p.next, time.UnixMilli(ms)
	p.next++
	p.wsize += recSize
}

func (p *partition) startChunk(create bool) {
	if p.nchunks == len(p.chunks) {
		p.chunks = append(p.chunks, chunk{})
	}
	c := &p.chunks[p.nchunks]
	p.nchunks++
	c.seg, c.create, c.pos = p.active, create, p.wsize
	c.buf, c.idx = c.buf[:0], c.idx[:0]
	c.firstMs, c.lastMs = -1, -1
}

// commit writes and syncs every dirty partition, in parallel, and then publishes the new
// records to readers. If any partition fails, it rolls the whole round back and returns an
// error wrapping eventlog.ErrNotAppended; if the rollback fails too, it fails the log and
// returns an error of unknown outcome.
func (l *Log) commit() error {
	if len(l.dirty) == 0 {
		return nil
	}
	var wg sync.WaitGroup
	for _, p := range l.dirty[1:] {
		wg.Go(func() { p.err = l.flush(p) })
	}
	l.dirty[0].err = l.flush(l.dirty[0])
	wg.Wait()
	var errs []error
	for _, p := range l.dirty {
		errs = append(errs, p.err)
	}
	err := errors.Join(errs...)
	if err == nil {
		for _, p := range l.dirty {
			p.publish()
		}
		l.stats.commits.Add(1)
		l.stats.msgs.Add(l.roundMsgs)
		l.stats.bytes.Add(l.roundBytes)
	} else {
		l.stats.rollbacks.Add(1)
		var rerrs []error
		for _, p := range l.dirty {
			rerrs = append(rerrs, l.rollback(p))
		}
		if rerr := errors.Join(rerrs...); rerr != nil {
			err = fmt.Errorf("locallog: commit failed and could not be rolled back (%w): %w", rerr, err)
			l.fail(err)
		} else {
			l.logger.Warn("locallog: commit failed; rolled back", "messages", l.roundMsgs, "err", err)
			err = eventlog.NotAppended(fmt.Errorf("locallog: commit failed, rolled back: %w", err))
		}
	}
	for _, p := range l.dirty {
		p.resetChunks()
	}
	clear(l.dirty)
	l.dirty = l.dirty[:0]
	return err
}

// flush writes each of the partition's chunks with one call and syncs it. A roll creates the
// new segment only after the old one is synced, so a crash can only ever tear the last one.
func (l *Log) flush(p *partition) error {
	created := false
	for i := range p.chunks[:p.nchunks] {
		c := &p.chunks[i]
		if c.create {
			f, err := createSegment(p.fs, c.seg.path)
			if err != nil {
				return fmt.Errorf("locallog: partition %d: create segment: %w", p.id, err)
			}
			c.seg.f, created = f, true
		}
		if _, err := c.seg.f.WriteAt(c.buf, c.pos); err != nil {
			return fmt.Errorf("locallog: partition %d: write segment %d: %w", p.id, c.seg.base, err)
		}
		start := time.Now()
		err := c.seg.f.SyncData()
		l.stats.syncs.Add(1)
		l.stats.syncNanos.Add(int64(time.Since(start)))
		if err != nil {
			return fmt.Errorf("locallog: partition %d: sync segment %d: %w", p.id, c.seg.base, err)
		}
	}
	if created {
		if err := syncDir(p.fs, p.dir); err != nil {
			return fmt.Errorf("locallog: partition %d: %w", p.id, err)
		}
	}
	return nil
}

// rollback undoes the round's writes to p, on disk and in memory. It removes the segments the
// round created, newest first, and syncs the directory, before it truncates the segment the
// round started in: a crash midway then leaves a shorter tail (the round's records in the old
// segment, still unacknowledged), never a truncated segment followed by a longer one.
// Truncating only what the round wrote keeps every record acknowledged before.
func (l *Log) rollback(p *partition) error {
	removed := false
	for i := p.nchunks - 1; i >= 0; i-- {
		c := &p.chunks[i]
		if !c.create {
			continue
		}
		if c.seg.f != nil {
			_ = c.seg.f.Close()
			c.seg.f = nil
		}
		if err := p.fs.Remove(c.seg.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("locallog: partition %d: roll back: remove segment %d: %w", p.id, c.seg.base, err)
		}
		removed = true
	}
	if removed {
		if err := syncDir(p.fs, p.dir); err != nil {
			return fmt.Errorf("locallog: partition %d: roll back: %w", p.id, err)
		}
	}
	if c := &p.chunks[0]; !c.create {
		if err := truncate(c.seg.f, c.pos); err != nil {
			return fmt.Errorf("locallog: partition %d: roll back: truncate segment %d: %w", p.id, c.seg.base, err)
		}
		if err := c.seg.f.SyncData(); err != nil {
			return fmt.Errorf("locallog: partition %d: roll back: sync segment %d: %w", p.id, c.seg.base, err)
		}
	}
	sv := p.saved
	p.active, p.next, p.lastMs, p.wsize, p.lastIdx = sv.active, sv.next, sv.lastMs, sv.wsize, sv.lastIdx
	return nil
}

// fail puts the log in its permanent failed state: Append refuses, Err and Run report err.
func (l *Log) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failed != nil {
		return
	}
	l.failed = err
	close(l.dead)
	l.logger.Error("locallog: write failed and could not be undone; refusing appends until reopened", "err", err)
}

// Err returns nil while the log is healthy, and the error that failed it once a failed round
// could not be rolled back. A failed log refuses appends; reopening it recovers.
func (l *Log) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failed
}

// publish makes the round's durable records visible to readers.
func (p *partition) publish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range p.chunks[:p.nchunks] {
		c := &p.chunks[i]
		s := c.seg
		if c.create {
			p.segs = append(p.segs, s)
		}
		s.index = append(s.index, c.idx...)
		if s.firstMs < 0 {
			s.firstMs = c.firstMs
		}
		s.lastMs = c.lastMs
		s.size = c.pos + int64(len(c.buf))
	}
	p.end = p.next
}

func (p *partition) resetChunks() {
	for i := range p.chunks[:p.nchunks] {
		c := &p.chunks[i]
		c.seg = nil
		if cap(c.buf) > 4*maxRoundBytes {
			c.buf = nil // one huge round should not pin its buffer forever
		}
	}
	p.nchunks = 0
	p.err = nil
}

// view is a pinned segment and the part of it a reader may use.
type view struct {
	seg    *segment
	endOff int64 // offset after the last readable record
	limit  int64 // readable bytes
}

// pin finds the segment holding offset off and takes a reference to it, building its index
// first if needed. It returns a nil view.seg if off is not below the end offset or is below
// the start offset; start and end are the partition's offsets at that moment.
func (p *partition) pin(off int64, tab *crc32.Table) (v view, start, end int64, err error) {
	for {
		p.mu.RLock()
		if p.segs == nil {
			p.mu.RUnlock()
			return view{}, 0, 0, eventlog.ErrClosed
		}
		start, end = p.segs[0].base, p.end
		if off < start || off >= end {
			p.mu.RUnlock()
			return view{}, start, end, nil
		}
		i := sort.Search(len(p.segs), func(i int) bool { return p.segs[i].base > off }) - 1
		v = p.viewLocked(i)
		v.seg.refs.Add(1)
		indexed := v.seg.indexed
		p.mu.RUnlock()
		if indexed {
			return v, start, end, nil
		}
		err := p.buildIndex(v)
		v.seg.release()
		if err != nil {
			return view{}, start, end, err
		}
	}
}

// viewLocked describes segs[i]; p.mu must be held.
func (p *partition) viewLocked(i int) view {
	s := p.segs[i]
	v := view{seg: s, endOff: p.end, limit: s.size}
	if i+1 < len(p.segs) {
		v.endOff = p.segs[i+1].base
	}
	if s.bad >= 0 {
		v.limit = min(v.limit, s.bad)
	}
	return v
}

// entry returns the index entry to scan from for offset off (by offset) or, with byTime, for
// the first record at or after ms.
func (p *partition) entry(s *segment, off int64, byTime bool, ms int64) indexEntry {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if len(s.index) == 0 {
		return indexEntry{off: s.base, ms: s.firstMs}
	}
	if byTime {
		return lookupTime(s.index, ms)
	}
	return lookup(s.index, off)
}

// buildIndex scans a sealed segment's headers to build its sparse index (and learn its last
// append time). Segments of earlier runs are indexed this way on first use, so Open never
// reads them.
func (p *partition) buildIndex(v view) error {
	s := v.seg
	s.buildMu.Lock()
	defer s.buildMu.Unlock()
	p.mu.RLock()
	done := s.indexed
	p.mu.RUnlock()
	if done {
		return nil
	}
	want := v.endOff - s.base
	res := scan(s.f, s.base, v.limit, want, false, nil)
	if res.err != nil && !isTorn(res.err) {
		return fmt.Errorf("locallog: partition %d: index segment %d: %w", p.id, s.base, res.err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	s.index, s.indexed = res.index, true
	switch {
	case res.count < want:
		s.bad = res.end // reads reaching it fail with ErrCorrupt
		p.logger.Error("locallog: sealed segment is short of records", "partition", p.id, "segment", s.path,
			"records", res.count, "want", want, "at_byte", res.end, "reason", res.err)
	case res.end < v.limit:
		s.lastMs = res.lastMs
		p.logger.Warn("locallog: sealed segment has bytes after its last record", "partition", p.id, "segment", s.path,
			"bytes", v.limit-res.end)
	default:
		s.lastMs = res.lastMs
	}
	return nil
}

func corrupt(p *partition, s *segment, off int64, err error) error {
	if isTorn(err) {
		return fmt.Errorf("locallog: partition %d, segment %d, offset %d: %w: %v", p.id, s.base, off, ErrCorrupt, err)
	}
	return fmt.Errorf("locallog: partition %d, segment %d, offset %d: %w", p.id, s.base, off, err)
}

// Read returns messages of partition from offset on; see eventlog.Log. It may continue into
// the next segment to fill maxBytes. Values alias a buffer of their own, never reused.
func (l *Log) Read(ctx context.Context, partition int, offset int64, maxBytes int) ([]eventlog.Message, error) {
	p, err := l.partition(ctx, partition)
	if err != nil {
		return nil, err
	}
	budget := max(maxBytes, 1)
	var out []eventlog.Message
	used := 0
	for next := offset; ; {
		v, start, end, err := p.pin(next, l.crc)
		if err != nil {
			return nil, err
		}
		if v.seg == nil {
			if len(out) == 0 && (next < start || next > end) {
				return nil, fmt.Errorf("locallog: read partition %d at %d, retained [%d, %d): %w",
					partition, next, start, end, eventlog.ErrOffsetOutOfRange)
			}
			return out, nil // at the end, or retention overtook a read that has messages
		}
		if out == nil {
			out = make([]eventlog.Message, 0, min(budget/64+1, 1024))
		}
		var full bool
		out, next, full, err = p.readSegment(v, next, budget, &used, out, l.crc)
		v.seg.release()
		if err != nil {
			if len(out) > 0 {
				return out, nil // the good prefix; the next Read starts at the bad record and fails
			}
			return nil, err
		}
		if full || used >= budget {
			return out, nil
		}
	}
}

// readSegment appends the records of v from offset from on to out while they fit budget (the
// first message of a Read always fits). It returns the offset to continue from and whether
// the budget stopped it.
func (p *partition) readSegment(v view, from int64, budget int, used *int, out []eventlog.Message, tab *crc32.Table) ([]eventlog.Message, int64, bool, error) {
	e := p.entry(v.seg, from, false, 0)
	r := recordReader{
		f:     v.seg.f,
		limit: v.limit,
		chunk: min(max(budget+budget/4+indexInterval+headerSize, 16<<10), 4<<20),
		fresh: true,
	}
	pos, off := e.pos, e.off
	for off < v.endOff {
		hd, err := r.header(pos)
		if err != nil {
			return out, off, false, corrupt(p, v.seg, off, err)
		}
		if off >= from {
			if len(out) > 0 && *used+hd.vlen > budget {
				return out, off, true, nil
			}
			val, err := r.record(pos, hd, tab)
			if err != nil {
				return out, off, false, corrupt(p, v.seg, off, err)
			}
			out = append(out, eventlog.Message{Partition: p.id, Offset: off, Time: time.UnixMilli(hd.ms), Value: val})
			*used += hd.vlen
		}
		pos += headerSize + int64(hd.vlen)
		off++
	}
	return out, off, false, nil
}

// Offsets returns the first retained offset and the durable end offset of partition.
func (l *Log) Offsets(ctx context.Context, partition int) (start, end int64, err error) {
	p, err := l.partition(ctx, partition)
	if err != nil {
		return 0, 0, err
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.segs == nil {
		return 0, 0, eventlog.ErrClosed
	}
	return p.segs[0].base, p.end, nil
}

// OffsetForTime returns the first offset of partition whose append time is at or after t, or
// the end offset if there is none. Append times never decrease within a partition, so the
// segment to look in is the last one that starts before t.
func (l *Log) OffsetForTime(ctx context.Context, partition int, t time.Time) (int64, error) {
	p, err := l.partition(ctx, partition)
	if err != nil {
		return 0, err
	}
	ms := t.UnixMilli() // floor; records are stamped in whole milliseconds, so round up
	if t.Nanosecond()%int(time.Millisecond) != 0 {
		ms++
	}
	for {
		p.mu.RLock()
		if p.segs == nil {
			p.mu.RUnlock()
			return 0, eventlog.ErrClosed
		}
		j := sort.Search(len(p.segs), func(j int) bool {
			s := p.segs[j]
			return s.firstMs < 0 || s.firstMs >= ms
		})
		if j == 0 {
			start := p.segs[0].base
			p.mu.RUnlock()
			return start, nil
		}
		v := p.viewLocked(j - 1)
		v.seg.refs.Add(1)
		indexed := v.seg.indexed
		p.mu.RUnlock()
		if !indexed {
			err := p.buildIndex(v)
			v.seg.release()
			if err != nil {
				return 0, err
			}
			continue
		}
		off, err := p.scanTime(v, ms)
		v.seg.release()
		return off, err
	}
}

// scanTime returns the offset of the first record of v at or after ms, or v.endOff.
func (p *partition) scanTime(v view, ms int64) (int64, error) {
	e := p.entry(v.seg, 0, true, ms)
	r := recordReader{f: v.seg.f, limit: v.limit, chunk: 2 * indexInterval}
	pos, off := e.pos, e.off
	for ; off < v.endOff; off++ {
		hd, err := r.header(pos)
		if err != nil {
			return 0, corrupt(p, v.seg, off, err)
		}
		if hd.ms >= ms {
			return off, nil
		}
		pos += headerSize + int64(hd.vlen)
	}
	return v.endOff, nil
}

// Run enforces retention every Options.RetentionCheck until ctx ends or the log is closed,
// and returns nil then. Retention failures are logged and retried on the next tick: a full
// disk is better than a dead ingest. If the log fails for good (see Err), Run returns that
// error at once, so that the server stops and its supervisor restarts it, which recovers.
func (l *Log) Run(ctx context.Context) error {
	t := time.NewTicker(l.opts.RetentionCheck)
	defer t.Stop()
	for {
		if err := l.Err(); err != nil {
			return err
		}
		if err := l.EnforceRetention(); err != nil {
			if errors.Is(err, eventlog.ErrClosed) {
				return nil
			}
			l.logger.Error("locallog: retention", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-l.closing:
			return nil
		case <-l.dead:
		case <-t.C:
		}
	}
}

// EnforceRetention deletes, in every partition, the sealed segments whose newest record is
// older than Options.Retention, judged by Options.Now. The active segment is never deleted.
// A segment's newest record is known exactly once it was written or indexed in this run;
// otherwise the next segment's first record bounds it (times never decrease), which may keep a
// segment a little longer, never shorter.
func (l *Log) EnforceRetention() error {
	if l.opts.Retention < 0 {
		return nil
	}
	cutoff := l.now().Add(-l.opts.Retention).UnixMilli()
	var errs []error
	for _, p := range l.parts {
		p.mu.Lock()
		if p.segs == nil {
			p.mu.Unlock()
			return eventlog.ErrClosed
		}
		k := 0
		for ; k < len(p.segs)-1; k++ {
			newest := p.segs[k].lastMs
			if newest < 0 {
				newest = p.segs[k+1].firstMs
			}
			if newest < 0 || newest >= cutoff {
				break
			}
		}
		if k == 0 {
			p.mu.Unlock()
			continue
		}
		old := slices.Clone(p.segs[:k])
		p.segs = slices.Clone(p.segs[k:])
		start := p.segs[0].base
		p.mu.Unlock()

		// Unlink oldest first, so a crash midway leaves a contiguous run of segments. Readers
		// still holding a segment keep reading the unlinked file until they release it.
		for _, s := range old {
			if err := l.fs.Remove(s.path); err != nil {
				errs = append(errs, fmt.Errorf("locallog: retention: %w", err))
			}
			s.release()
			l.stats.deleted.Add(1)
		}
		l.logger.Info("locallog: retention deleted segments", "partition", p.id, "segments", k, "start", start)
	}
	return errors.Join(errs...)
}

// Stats returns the log's counters and the current state of every partition.
func (l *Log) Stats() Stats {
	st := Stats{
		AppendedMessages: l.stats.msgs.Load(),
		AppendedBytes:    l.stats.bytes.Load(),
		Commits:          l.stats.commits.Load(),
		Rollbacks:        l.stats.rollbacks.Load(),
		Syncs:            l.stats.syncs.Load(),
		SyncTime:         time.Duration(l.stats.syncNanos.Load()),
		SegmentsDeleted:  l.stats.deleted.Load(),
		Partitions:       make([]PartitionStats, len(l.parts)),
	}
	for i, p := range l.parts {
		p.mu.RLock()
		ps := PartitionStats{End: p.end, Segments: len(p.segs)}
		if len(p.segs) > 0 {
			ps.Start = p.segs[0].base
		}
		for _, s := range p.segs {
			ps.Bytes += s.size
		}
		p.mu.RUnlock()
		st.Partitions[i] = ps
	}
	return st
}

// Close stops accepting appends, lets the committer finish what it has taken, and releases
// the files (each closes once no reader uses it). Closing twice is a no-op.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.isClosed.Store(true)
	l.mu.Unlock()
	close(l.closing)
	select {
	case l.kick <- struct{}{}:
	default:
	}
	<-l.stopped
	return l.closeFiles()
}

func (l *Log) closeFiles() error {
	for _, p := range l.parts {
		p.mu.Lock()
		segs := p.segs
		p.segs = nil
		p.mu.Unlock()
		for _, s := range segs {
			s.release()
		}
		// After a failed roll the new segment may never have been listed.
		if a := p.active; a != nil && a.f != nil && (len(segs) == 0 || segs[len(segs)-1] != a) {
			_ = a.f.Close()
		}
	}
	if l.lock == nil {
		return nil
	}
	if err := l.lock.Close(); err != nil {
		return fmt.Errorf("locallog: close lock file: %w", err)
	}
	return nil
}
