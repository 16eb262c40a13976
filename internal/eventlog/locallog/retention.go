package locallog

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/adpulse/adpulse/internal/eventlog"
)

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
		Checkpoints:      l.stats.checkpoints.Load(),
		SegmentsDeleted:  l.stats.deleted.Load(),
		AppendWait:       Histogram{Counts: make([]int64, len(l.stats.waitCounts)), Sum: time.Duration(l.stats.waitNanos.Load())},
		Partitions:       make([]PartitionStats, len(l.parts)),
	}
	for i := range l.stats.waitCounts {
		st.AppendWait.Counts[i] = l.stats.waitCounts[i].Load()
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
