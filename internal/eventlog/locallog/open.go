package locallog

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"runtime"
	"strconv"
	"time"

	"github.com/cockroachdb/pebble/vfs"
	"golang.org/x/sync/errgroup"
)

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
	if opts.JournalBytes <= 0 {
		opts.JournalBytes = DefaultJournalBytes
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
		err = l.openPartitions(n)
	}
	if err == nil {
		err = syncDir(l.fs, opts.Dir) // partition directories created above
	}
	if err == nil {
		err = l.openJournal()
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

// openPartitions opens the n partitions side by side: each scans its last segment, which
// takes a while for a large log, and they share nothing. On an error the partitions that
// opened are in l.parts, for closeFiles.
func (l *Log) openPartitions(n int) error {
	parts := make([]*partition, n)
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	for i := range parts {
		g.Go(func() (err error) {
			parts[i], err = l.openPartition(i)
			return err
		})
	}
	err := g.Wait()
	for _, p := range parts {
		if p != nil {
			l.parts = append(l.parts, p)
		}
	}
	return err
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
	l.notifyAppended() // waiting readers find the log closed
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
	if l.journal != nil {
		_ = l.journal.f.Close() // every frame in it was synced when its round was acknowledged
		l.journal = nil
	}
	if l.lock == nil {
		return nil
	}
	if err := l.lock.Close(); err != nil {
		return fmt.Errorf("locallog: close lock file: %w", err)
	}
	return nil
}
