package locallog

import (
	"context"
	"fmt"
	"hash/crc32"
	"sort"
	"time"

	"github.com/adpulse/adpulse/internal/eventlog"
)

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
	return l.read(ctx, partition, offset, maxBytes, nil)
}

// ReadBuffered implements eventlog.BufferedReader: Read into buf's memory, which holds the
// file chunks the values alias and the messages, so a consumer that keeps up reads without
// allocating.
func (l *Log) ReadBuffered(ctx context.Context, partition int, offset int64, maxBytes int, buf *eventlog.ReadBuffer) ([]eventlog.Message, error) {
	buf.Data = buf.Data[:0]
	out, err := l.read(ctx, partition, offset, maxBytes, buf)
	if cap(out) > cap(buf.Msgs) {
		buf.Msgs = out[:0]
	}
	return out, err
}

var _ eventlog.BufferedReader = (*Log)(nil)

// read is Read, or ReadBuffered with a non-nil buf.
func (l *Log) read(ctx context.Context, partition int, offset int64, maxBytes int, buf *eventlog.ReadBuffer) ([]eventlog.Message, error) {
	p, err := l.partition(ctx, partition)
	if err != nil {
		return nil, err
	}
	budget := max(maxBytes, 1)
	var out []eventlog.Message
	var arena *[]byte
	if buf != nil {
		arena = &buf.Data
		if cap(buf.Msgs) > 0 {
			out = buf.Msgs[:0]
		}
	}
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
			// Sized by what is readable, not only by the budget: a consumer woken by each
			// group commit reads a few records, and a budget-sized slice (64 KiB) per wake-up
			// would cost the click path more in allocation and GC than the read itself.
			out = make([]eventlog.Message, 0, min(end-next, int64(budget/64+1), 1024))
		}
		var full bool
		out, next, full, err = p.readSegment(v, next, budget, &used, out, l.crc, arena)
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
// the budget stopped it. Chunks are carved from arena when it is not nil (ReadBuffered).
func (p *partition) readSegment(v view, from int64, budget int, used *int, out []eventlog.Message, tab *crc32.Table, arena *[]byte) ([]eventlog.Message, int64, bool, error) {
	e := p.entry(v.seg, from, false, 0)
	r := recordReader{
		f:     v.seg.f,
		limit: v.limit,
		chunk: min(max(budget+budget/4+indexInterval+headerSize, 16<<10), 4<<20),
		fresh: true,
		arena: arena,
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
