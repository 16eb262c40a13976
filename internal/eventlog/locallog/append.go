package locallog

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"slices"
	"sync"
	"time"

	"github.com/adpulse/adpulse/internal/eventlog"
)

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
	start := time.Now()
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
	l.observeWait(time.Since(start))
	err := req.err
	l.putRequest(req)
	return err
}

// observeWait adds one taken Append's wait to Stats.AppendWait.
func (l *Log) observeWait(d time.Duration) {
	i, _ := slices.BinarySearch(AppendWaitBounds[:], d) // the first bound >= d
	l.stats.waitCounts[i].Add(1)
	l.stats.waitNanos.Add(int64(d))
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
			if j := l.journal; j != nil && j.size >= l.opts.JournalBytes && l.Err() == nil {
				_ = l.checkpoint() // reported by checkpoint; a failed sync fails the log
			}
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

// commit makes every dirty partition durable and then publishes the new records to readers:
// through one journal frame and one sync when several partitions can share it (see
// journal.go), else by syncing each dirty segment, in parallel. If any write or sync fails,
// it rolls the whole round back and returns an error wrapping eventlog.ErrNotAppended; if the
// rollback fails too, it fails the log and returns an error of unknown outcome.
func (l *Log) commit() error {
	if len(l.dirty) == 0 {
		return nil
	}
	journal := l.useJournal()
	var wg sync.WaitGroup
	var writeErrs []error
	for _, p := range l.dirty {
		if journal && p.journaled() {
			p.err = l.flush(p, false) // one write call each; the frame makes them durable
			writeErrs = append(writeErrs, p.err)
			continue
		}
		wg.Go(func() { p.err = l.flush(p, true) })
	}
	frameTried := false
	var frameErr error
	if journal && errors.Join(writeErrs...) == nil {
		frameTried = true
		frameErr = l.writeFrame()
	}
	wg.Wait()
	errs := []error{frameErr}
	for _, p := range l.dirty {
		errs = append(errs, p.err)
	}
	err := errors.Join(errs...)
	if err == nil {
		if frameTried {
			l.journal.size += l.journal.written
			l.journal.written = 0
		}
		for _, p := range l.dirty {
			p.unsynced = journal && p.journaled()
			p.publish()
		}
		l.notifyAppended()
		l.stats.commits.Add(1)
		l.stats.msgs.Add(l.roundMsgs)
		l.stats.bytes.Add(l.roundBytes)
	} else {
		l.stats.rollbacks.Add(1)
		var rerrs []error
		for _, p := range l.dirty {
			rerrs = append(rerrs, l.rollback(p))
		}
		if frameTried {
			rerrs = append(rerrs, l.rollbackJournal())
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

// flush writes each of the partition's chunks with one call and, with sync, syncs it. A roll
// creates the new segment only after the old one is synced, so a crash can only ever tear the
// last one. Without sync (a journaled partition) there is exactly one chunk and no roll.
func (l *Log) flush(p *partition, sync bool) error {
	created := false
	if c := &p.chunks[0]; c.create && p.unsynced {
		// The round rolls first thing: the segment it seals holds records written through
		// the journal, and a sealed segment must be durable before the next one exists.
		if err := l.syncFile(p.saved.active.f); err != nil {
			return fmt.Errorf("locallog: partition %d: sync segment %d: %w", p.id, p.saved.active.base, err)
		}
	}
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
		if !sync {
			continue
		}
		if err := l.syncFile(c.seg.f); err != nil {
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
	if l.failed != nil {
		l.mu.Unlock()
		return
	}
	l.failed = err
	close(l.dead)
	l.mu.Unlock()
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
	p.saved = tailState{}
}
