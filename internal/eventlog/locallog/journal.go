package locallog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"sync"
	"time"

	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/cockroachdb/pebble/vfs"
)

// The journal makes a round that writes to several partitions durable with one fdatasync
// instead of one per partition. Such a round writes each partition's records to its segment
// without syncing it, and the same records, partition by partition, as one frame appended to
// the journal file, which is then synced: the round is durable once the journal is. A round
// that writes to one partition only syncs that segment directly (a frame would add a sync,
// not save one), and so does every partition that rolls to a new segment in a round: a sealed
// segment is always synced, so a crash can still tear only a partition's last segment.
//
// Invariant: every acknowledged record is either in its segment below the last sync of that
// segment, or in a frame of a journal file that is still there. A checkpoint keeps it while
// the journal is replaced: once the journal passes Options.JournalBytes, the committer syncs
// every segment written without a sync since the last checkpoint, then creates the next
// journal file, and only then removes the old one.
//
// Recovery (Open) first validates each partition's tail as without a journal, then replays
// the journal files in order: a record below the partition's recovered end is already there
// (the segment's pages reached the disk), the rest is appended and synced. A journal record
// beyond the recovered end with records missing in between would mean a sync lied: Open
// refuses it rather than leave a hole. A torn frame is the tail of the journal, written by a
// round that was never acknowledged, and ends the replay of its file. Open then checkpoints,
// so every run starts with an empty journal.
//
// On disk, Dir/journal/ holds the journal files, each named by its sequence number like a
// segment (00000000000000000007.log). A frame is
//
//	[0:4]  body length, uint32 little endian
//	[4:8]  CRC32C of the body
//	[8:]   body: for each partition, its id (uint32), the offset of its first record (int64),
//	       the length of its records (uint32), and the records as they are in the segment
//
// The records keep their own framing and checksums, so a replayed record is the very bytes
// the segment would have held.

// DefaultJournalBytes is the journal size at which the committer checkpoints.
const DefaultJournalBytes = 64 << 20

const (
	frameHeaderSize = 8
	framePartHeader = 16
	// maxFrameBytes bounds a frame's body. A round larger than this (one Append of huge
	// values) syncs its segments directly; recovery refuses longer lengths as torn.
	maxFrameBytes = 1 << 30
)

const journalDirName = "journal"

// journal is the open journal file; owned by the committer goroutine once Open returns.
type journal struct {
	dir  string
	seq  int64
	f    vfs.File
	size int64 // bytes of the frames of acknowledged rounds
	// written is the frame of the round in progress, once written and synced: size grows by
	// it when the whole round succeeds. A round can fail after its frame was synced (another
	// partition's sync failed), and its rollback then cuts the frame off.
	written int64
	frame   []byte
}

// journaled reports whether a round writes p through the journal rather than syncing it: p
// appends to its active segment only (no roll).
func (p *partition) journaled() bool {
	return p.nchunks == 1 && !p.chunks[0].create
}

// useJournal decides how the round in l.dirty is made durable: through a journal frame when
// at least two partitions can go into it, else by syncing every dirty segment. It marks the
// partitions that go into the frame.
func (l *Log) useJournal() bool {
	if l.journal == nil || len(l.dirty) < 2 {
		return false
	}
	n, size := 0, 0
	for _, p := range l.dirty {
		if p.journaled() {
			n++
			size += framePartHeader + len(p.chunks[0].buf)
		}
	}
	return n >= 2 && size <= maxFrameBytes
}

// writeFrame appends the records of the partitions in l.dirty that are journaled as one frame
// and syncs the journal. On error the journal may hold part of the frame: rollbackJournal cuts
// it off, as it cuts off a synced frame of a round that failed elsewhere.
func (l *Log) writeFrame() error {
	j := l.journal
	b := append(j.frame[:0], make([]byte, frameHeaderSize)...)
	for _, p := range l.dirty {
		if !p.journaled() {
			continue
		}
		c := &p.chunks[0]
		b = binary.LittleEndian.AppendUint32(b, uint32(p.id))
		b = binary.LittleEndian.AppendUint64(b, uint64(p.saved.next))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(c.buf)))
		b = append(b, c.buf...)
	}
	binary.LittleEndian.PutUint32(b[0:4], uint32(len(b)-frameHeaderSize))
	binary.LittleEndian.PutUint32(b[4:8], crc32.Checksum(b[frameHeaderSize:], l.crc))
	if cap(b) <= 4*maxRoundBytes {
		j.frame = b
	} else {
		j.frame = nil
	}
	if _, err := j.f.WriteAt(b, j.size); err != nil {
		return fmt.Errorf("locallog: write journal %d: %w", j.seq, err)
	}
	if err := l.syncFile(j.f); err != nil {
		return fmt.Errorf("locallog: sync journal %d: %w", j.seq, err)
	}
	j.written = int64(len(b))
	return nil
}

// rollbackJournal cuts off whatever a failed round wrote past the journal's synced size.
func (l *Log) rollbackJournal() error {
	j := l.journal
	j.written = 0
	if err := truncate(j.f, j.size); err != nil {
		return fmt.Errorf("locallog: roll back: truncate journal %d: %w", j.seq, err)
	}
	if err := j.f.SyncData(); err != nil {
		return fmt.Errorf("locallog: roll back: sync journal %d: %w", j.seq, err)
	}
	return nil
}

// syncFile fdatasyncs f, counting the call in Stats.
func (l *Log) syncFile(f vfs.File) error {
	start := time.Now()
	err := f.SyncData()
	l.stats.syncs.Add(1)
	l.stats.syncNanos.Add(int64(time.Since(start)))
	return err
}

// checkpoint syncs every segment written since the last checkpoint without a sync, then
// replaces the journal by an empty one. A failed sync fails the log: the page cache no longer
// says what the segment holds, and only the journal (kept) can restore it at the next Open.
func (l *Log) checkpoint() error {
	var wg sync.WaitGroup
	errs := make([]error, len(l.parts))
	for i, p := range l.parts {
		if !p.unsynced {
			continue
		}
		wg.Go(func() {
			if err := l.syncFile(p.active.f); err != nil {
				errs[i] = fmt.Errorf("locallog: checkpoint: sync segment %d of partition %d: %w", p.active.base, p.id, err)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		l.fail(err)
		return err
	}
	for _, p := range l.parts {
		p.unsynced = false
	}
	old := l.journal
	next, err := createJournal(l.fs, old.dir, old.seq+1)
	if err != nil {
		// Nothing is lost: the old journal stays and keeps growing until a checkpoint works.
		l.logger.Error("locallog: checkpoint: cannot start the next journal file", "err", err)
		return err
	}
	l.journal = next
	_ = old.f.Close()
	if err := removeJournals(l.fs, old.dir, next.seq); err != nil {
		// A journal left behind only repeats records the segments hold: the next Open skips
		// them and removes it.
		l.logger.Warn("locallog: checkpoint: old journal not removed", "err", err)
	}
	l.stats.checkpoints.Add(1)
	return nil
}

// createJournal creates journal file seq in dir and makes its entry durable.
func createJournal(fsys vfs.FS, dir string, seq int64) (*journal, error) {
	path := segmentPath(fsys, dir, seq)
	f, err := createSegment(fsys, path)
	if err != nil {
		return nil, fmt.Errorf("locallog: create journal %s: %w", path, err)
	}
	if err := syncDir(fsys, dir); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("locallog: %w", err)
	}
	return &journal{dir: dir, seq: seq, f: f}, nil
}

// removeJournals removes the journal files in dir numbered below keep.
func removeJournals(fsys vfs.FS, dir string, keep int64) error {
	seqs, err := listSegments(fsys, dir)
	if err != nil {
		return err
	}
	removed := false
	for _, seq := range seqs {
		if seq >= keep {
			continue
		}
		if err := fsys.Remove(segmentPath(fsys, dir, seq)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		removed = true
	}
	if removed {
		return syncDir(fsys, dir)
	}
	return nil
}

// openJournal replays the journal files in Dir/journal into the partitions (opened, their
// tails validated), syncs what it appended, and starts an empty journal file.
func (l *Log) openJournal() error {
	dir := l.fs.PathJoin(l.opts.Dir, journalDirName)
	if err := l.createDir(dir); err != nil {
		return fmt.Errorf("locallog: create %s: %w", dir, err)
	}
	seqs, err := listSegments(l.fs, dir)
	if err != nil {
		return fmt.Errorf("locallog: list journal files: %w", err)
	}
	last := int64(-1)
	for _, seq := range seqs {
		if err := l.replayJournal(segmentPath(l.fs, dir, seq)); err != nil {
			return err
		}
		last = seq
	}
	if l.journal, err = createJournal(l.fs, dir, last+1); err != nil {
		return err
	}
	if err := removeJournals(l.fs, dir, last+1); err != nil {
		return fmt.Errorf("locallog: remove replayed journal files: %w", err)
	}
	return nil
}

// replayJournal appends the records of one journal file that the partitions lack. Appending
// goes through the committer's own round (gather's bookkeeping, then commit with every
// segment synced), so replayed records are indexed and rolled like any others.
func (l *Log) replayJournal(path string) error {
	data, err := readFile(l.fs, path)
	if err != nil {
		return fmt.Errorf("locallog: read journal %s: %w", path, err)
	}
	var replayed int64
	pending := 0
	for len(data) > 0 {
		body, rest, ok := l.nextFrame(data)
		if !ok {
			l.logger.Warn("locallog: journal ends in a torn frame (a round never acknowledged)", "journal", path, "dropped_bytes", len(data))
			break
		}
		data = rest
		for len(body) > 0 {
			if len(body) < framePartHeader {
				return fmt.Errorf("locallog: journal %s: %w: short partition header", path, ErrCorrupt)
			}
			id := binary.LittleEndian.Uint32(body[0:4])
			off := int64(binary.LittleEndian.Uint64(body[4:12]))
			n := binary.LittleEndian.Uint32(body[12:16])
			if id >= uint32(len(l.parts)) || uint64(n) > uint64(len(body)-framePartHeader) {
				return fmt.Errorf("locallog: journal %s: %w: partition %d, %d bytes", path, ErrCorrupt, id, n)
			}
			recs := body[framePartHeader : framePartHeader+int(n)]
			body = body[framePartHeader+int(n):]
			k, err := l.replayRecords(l.parts[id], off, recs)
			if err != nil {
				return fmt.Errorf("locallog: journal %s: %w", path, err)
			}
			replayed += k
			pending += int(n)
		}
		if pending >= maxRoundBytes {
			if err := l.commitReplay(); err != nil {
				return err
			}
			pending = 0
		}
	}
	if err := l.commitReplay(); err != nil {
		return err
	}
	if replayed > 0 {
		l.logger.Info("locallog: replayed journal", "journal", path, "records", replayed)
	}
	return nil
}

// nextFrame splits the first frame's body off data; ok is false if it is torn.
func (l *Log) nextFrame(data []byte) (body, rest []byte, ok bool) {
	if len(data) < frameHeaderSize {
		return nil, nil, false
	}
	n := binary.LittleEndian.Uint32(data[0:4])
	if n > maxFrameBytes || uint64(n) > uint64(len(data)-frameHeaderSize) {
		return nil, nil, false
	}
	body = data[frameHeaderSize : frameHeaderSize+int(n)]
	if crc32.Checksum(body, l.crc) != binary.LittleEndian.Uint32(data[4:8]) {
		return nil, nil, false
	}
	return body, data[frameHeaderSize+int(n):], true
}

// replayRecords adds to p's round the records of recs (framed, the first at offset off) that
// p does not hold yet, and returns how many.
func (l *Log) replayRecords(p *partition, off int64, recs []byte) (int64, error) {
	var added int64
	for pos := 0; pos < len(recs); off++ {
		if len(recs)-pos < headerSize {
			return added, fmt.Errorf("%w: partition %d: short record at offset %d", ErrCorrupt, p.id, off)
		}
		hd, err := parseHeader(recs[pos : pos+headerSize])
		if err != nil || hd.vlen > len(recs)-pos-headerSize {
			return added, fmt.Errorf("%w: partition %d: bad record at offset %d", ErrCorrupt, p.id, off)
		}
		rec := recs[pos : pos+headerSize+hd.vlen]
		pos += len(rec)
		if checksum(l.crc, rec) != hd.crc {
			return added, fmt.Errorf("%w: partition %d: checksum of record at offset %d", ErrCorrupt, p.id, off)
		}
		switch {
		case off < p.next:
			continue // the segment holds it
		case off > p.next:
			return added, fmt.Errorf("%w: partition %d ends at offset %d but the journal resumes at %d: acknowledged records are missing", ErrCorrupt, p.id, p.next, off)
		}
		if p.nchunks == 0 {
			l.dirty = append(l.dirty, p)
			p.saved = tailState{active: p.active, next: p.next, lastMs: p.lastMs, wsize: p.wsize, lastIdx: p.lastIdx}
		}
		p.add(l.crc, l.opts.SegmentBytes, hd.ms, &eventlog.Message{Value: rec[headerSize:]})
		added++
	}
	return added, nil
}

// commitReplay makes the replayed records gathered so far durable, syncing each segment.
func (l *Log) commitReplay() error {
	if err := l.commit(); err != nil {
		return fmt.Errorf("locallog: replay journal: %w", err)
	}
	return nil
}
