// Package archive is the raw archive of the event log: every event of every partition,
// valid or invalid, as Parquet files (zstd) in a Hive layout by receive time, on a local
// directory or in S3, for Spark, Trino, DuckDB and the batch path's reconciliation.
//
// Layout. A file holds the offsets [first, end) of one partition, in offset order, and is
// named by them: dt=YYYY-MM-DD/hour=HH/pPPPP-oFFFFFFFFFFFF-EEEEEEEEEEEE.parquet, in the
// directory of the UTC receive time of its first event. Files of a partition cover its
// offsets without gap or overlap (a record that does not decode is skipped and counted).
//
// Cut rule. A file starts at the partition's committed offset and takes events in order. It
// ends before the first event that (a) has an offset that is a multiple of MaxFileEvents, or
// (b) was received at or after the end of the file's window: the ArchiveInterval-aligned
// span of time (ArchiveInterval divides an hour) holding the first event's receive time.
// Both depend only on the log, so reading again from the same offset cuts at the same
// place. An event received out of order (by at most ingest's slack) before the window stays
// in the file, so near an hour boundary such an event may sit in the next hour's directory;
// its recv_time column is exact. The one cut that depends on the clock is the idle close: a
// caught-up partition closes its file once Slack has passed after the window's end, so an
// event is archived within ArchiveInterval + Slack + PollInterval of its receipt at any
// traffic. That cut is recorded in the checkpoint before the file is written.
//
// Exactly once. Per partition the checkpoint (_checkpoints/pPPPP.json) holds the committed
// offset: every offset below it is in a durable file. A file is written in one atomic step
// (temporary file, fsync, rename, fsync of the directory; one PutObject on S3), and then the
// checkpoint moves to its end. After a crash the archiver resumes at the checkpoint, and the
// first file it writes has the same offsets, hence the same name and rows, as any file the
// crash may have left past the checkpoint, which it replaces. In case the cut rule changed in
// between (other options), the archiver first deletes any other file of the partition
// starting at the checkpoint. So each event of the log is in exactly one file.
//
// One Archiver writes a given archive at a time.
package archive

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
)

// DefaultSubdir is the archive's directory under the data dir when no destination is set.
const DefaultSubdir = "archive"

// Options configure an Archiver. Log is required, and Target or Dest.
type Options struct {
	Log eventlog.Log
	// Target stores the files. When nil, Dest is opened with OpenTarget.
	Target Target
	// Dest is a local directory or s3://bucket/prefix.
	Dest string
	// S3 configures an s3:// Dest.
	S3 S3Options
	// ArchiveInterval is the length of a file's receive-time window (default 5m). It must
	// divide an hour.
	ArchiveInterval time.Duration
	// Slack is how long after its window's end an idle partition closes its file (default
	// 5s): events received out of order or appended late by that much still join it.
	Slack time.Duration
	// MaxFileEvents bounds a file: files also end at offsets that are multiples of it
	// (default 1<<18). A file is built in memory, at about its compressed size.
	MaxFileEvents int64
	// Retention deletes dt= directories whose whole day is older than this; 0 keeps all.
	Retention time.Duration
	// RetentionEvery is how often retention runs (default 1h; also on start).
	RetentionEvery time.Duration
	// ReadBytes bounds one log read (default 1 MiB).
	ReadBytes int
	// PollInterval is the pause when every partition is caught up (default 1s).
	PollInterval time.Duration
	// RetryInterval is the pause after a failed read or write (default 1s); the partition
	// then resumes from its checkpoint.
	RetryInterval time.Duration
	// Now is the clock of the idle close and of retention (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
	// Unassigned starts the Archiver owning no partition: a consumer group hands them out
	// with Assign and Revoke. By default it owns every partition of the log.
	Unassigned bool
	// UnhealthyAfter is how long the target may fail without a success before Err reports
	// it (default 30s).
	UnhealthyAfter time.Duration
}

func (o *Options) setDefaults() {
	if o.ArchiveInterval <= 0 {
		o.ArchiveInterval = 5 * time.Minute
	}
	if o.Slack <= 0 {
		o.Slack = 5 * time.Second
	}
	if o.MaxFileEvents <= 0 {
		o.MaxFileEvents = 1 << 18
	}
	if o.RetentionEvery <= 0 {
		o.RetentionEvery = time.Hour
	}
	if o.ReadBytes <= 0 {
		o.ReadBytes = 1 << 20
	}
	if o.PollInterval <= 0 {
		o.PollInterval = time.Second
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.UnhealthyAfter <= 0 {
		o.UnhealthyAfter = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Stats are the archiver's counters since New.
type Stats struct {
	FilesWritten   int64
	EventsArchived int64
	BytesWritten   int64   // of data files
	BytesPerEvent  float64 // BytesWritten / EventsArchived
	Corrupt        int64   // log records that do not decode, skipped
	// Lost counts offsets the log dropped (its retention) before they were archived. Any
	// such loss also voids exactly-once for the file the archiver was writing then.
	Lost           int64
	OrphansDeleted int64 // files of a former cut rule replaced after a restart
	DirsDeleted    int64 // dt= directories removed by retention
	Errors         int64
	LastError      string
	LastErrorTime  time.Time
	Partitions     []PartitionStats
}

// PartitionStats describe one partition.
type PartitionStats struct {
	Partition int
	Owned     bool  // this Archiver writes it (see Assign)
	Committed int64 // offsets below are archived
	End       int64 // the log's end offset when last seen
	Lag       int64 // End - Committed
	Pending   int64 // events read into the open file
	// PendingSince is the receive time of the open file's first event (zero if none).
	PendingSince time.Time
}

// Archiver copies the event log into the archive.
type Archiver struct {
	opts   Options
	target Target
	parts  []*partState

	mu    sync.Mutex
	stats Stats
	// failingSince is when the first of the failures since the last success happened
	// (zero while the last attempt succeeded); Err reads it.
	failingSince time.Time

	closeOnce sync.Once
}

// partState is one partition's progress. Only Run's goroutine touches it, except the
// copies in Stats.
type partState struct {
	// owned says whether this Archiver writes the partition; step holds run while it
	// works on it, so Revoke can wait for the step in progress (assign.go).
	owned  atomic.Bool
	run    sync.Mutex
	cancel context.CancelFunc // of the step in progress; guarded by run's holder and cmu
	cmu    sync.Mutex

	p         int
	loaded    bool  // checkpoint read
	fresh     bool  // no file written since the checkpoint was read
	committed int64 // the checkpoint
	next      int64 // next offset to read
	forcedEnd int64 // >= 0: the open file ends exactly here (a recorded idle close)

	// The open file: rows of [committed, next).
	rows        int64
	evs         []event.Event // decoded, waiting for the writer
	offs        []int64
	recs        []record
	out         bytes.Buffer
	w           *parquet.GenericWriter[record]
	windowEnd   int64 // micros
	dir         string
	firstRecv   int64
	lastEndSeen int64
}

// writeBatch is how many rows go to the Parquet writer at once. Fixed, so that page
// boundaries, and so the bytes of a file, depend only on its rows.
const writeBatch = 1024

// New returns an Archiver; Run starts it.
func New(opts Options) (*Archiver, error) {
	if opts.Log == nil {
		return nil, errors.New("archive: Options.Log is nil")
	}
	opts.setDefaults()
	if time.Hour%opts.ArchiveInterval != 0 {
		return nil, fmt.Errorf("archive: ArchiveInterval %v does not divide an hour", opts.ArchiveInterval)
	}
	t := opts.Target
	if t == nil {
		var err error
		if t, err = OpenTarget(opts.Dest, opts.S3); err != nil {
			return nil, err
		}
	}
	a := &Archiver{opts: opts, target: t}
	for p := 0; p < opts.Log.Partitions(); p++ {
		st := &partState{p: p, forcedEnd: -1}
		st.owned.Store(!opts.Unassigned)
		a.parts = append(a.parts, st)
	}
	a.stats.Partitions = make([]PartitionStats, len(a.parts))
	for i := range a.stats.Partitions {
		a.stats.Partitions[i].Partition = i
		a.stats.Partitions[i].Owned = !opts.Unassigned
	}
	return a, nil
}

// Target is where the archive is written.
func (a *Archiver) Target() Target { return a.target }

// Close releases the Archiver. Call it after Run returned; it does not close the log.
func (a *Archiver) Close() error {
	a.closeOnce.Do(func() {
		for _, st := range a.parts {
			st.reset()
		}
	})
	return nil
}

// Stats returns a snapshot of the counters.
func (a *Archiver) Stats() Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.stats
	s.Partitions = append([]PartitionStats(nil), s.Partitions...)
	if s.EventsArchived > 0 {
		s.BytesPerEvent = float64(s.BytesWritten) / float64(s.EventsArchived)
	}
	return s
}

// Run archives until ctx ends (then it returns nil) or a failure that retrying cannot
// mend. Failed reads and writes are retried after RetryInterval, from the checkpoint.
func (a *Archiver) Run(ctx context.Context) error {
	var nextEnds, nextRetention time.Time
	for {
		if err := ctx.Err(); err != nil {
			return nil
		}
		if a.opts.Retention > 0 && !a.opts.Now().Before(nextRetention) {
			if err := a.applyRetention(ctx); err != nil && ctx.Err() == nil {
				a.opts.Logger.Warn("archive: retention failed", "err", err)
				a.noteError(err)
			}
			nextRetention = a.opts.Now().Add(a.opts.RetentionEvery)
		}
		if now := time.Now(); !now.Before(nextEnds) {
			a.refreshEnds(ctx)
			nextEnds = now.Add(time.Second)
		}
		progress, failed := false, false
		for _, st := range a.parts {
			n, owned, err := a.ownedStep(ctx, st)
			if !owned {
				continue
			}
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				if errors.Is(err, eventlog.ErrClosed) || errors.Is(err, errFatal) {
					a.noteError(err)
					return err
				}
				a.opts.Logger.Warn("archive: partition failed; resuming from its checkpoint", "partition", st.p, "err", err)
				a.noteError(err)
				st.run.Lock() // Assign and Revoke reset it too
				st.reset()
				st.run.Unlock()
				failed = true
				continue
			}
			progress = progress || n > 0
		}
		pause := time.Duration(0)
		switch {
		case failed:
			pause = a.opts.RetryInterval
		case !progress:
			pause = a.opts.PollInterval
		}
		if pause > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(pause):
			}
		}
	}
}

var errFatal = errors.New("archive: fatal")

// applyRetention deletes the dt= directories whose whole day ended more than Retention ago.
func (a *Archiver) applyRetention(ctx context.Context) error {
	keys, err := a.target.List(ctx, "")
	if err != nil {
		return err
	}
	cutoff := a.opts.Now().Add(-a.opts.Retention)
	for _, k := range keys {
		day, ok := strings.CutPrefix(k, "dt=")
		if !ok || !strings.HasSuffix(day, "/") {
			continue
		}
		d, err := time.Parse("2006-01-02", strings.TrimSuffix(day, "/"))
		if err != nil || d.Add(24*time.Hour).After(cutoff) {
			continue
		}
		a.opts.Logger.Info("archive: retention deletes a day", "dir", k)
		if err := a.target.DeleteAll(ctx, k); err != nil {
			return err
		}
		a.mu.Lock()
		a.stats.DirsDeleted++
		a.mu.Unlock()
	}
	return nil
}

// refreshEnds learns the log's end offsets, for the lag in Stats.
func (a *Archiver) refreshEnds(ctx context.Context) {
	for _, st := range a.parts {
		if !st.owned.Load() {
			continue
		}
		_, end, err := a.opts.Log.Offsets(ctx, st.p)
		st.run.Lock() // Assign and Revoke change the state under it
		if err == nil && st.owned.Load() && end > st.lastEndSeen {
			st.lastEndSeen = end
			a.publish(st)
		}
		st.run.Unlock()
	}
}

func (a *Archiver) noteError(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.failingSince.IsZero() {
		a.failingSince = time.Now()
	}
	a.stats.Errors++
	a.stats.LastError = err.Error()
	a.stats.LastErrorTime = a.opts.Now()
}

// reset drops the partition's in-memory state: it resumes from its checkpoint.
func (st *partState) reset() {
	st.loaded = false
	st.forcedEnd = -1
	st.discardFile()
}

func (st *partState) discardFile() {
	st.rows, st.evs, st.offs, st.w = 0, st.evs[:0], st.offs[:0], nil
	st.out.Reset()
	st.dir, st.windowEnd, st.firstRecv = "", 0, 0
}

// checkpoint is the JSON stored per partition.
type checkpoint struct {
	Partition int   `json:"partition"`
	Committed int64 `json:"committed"` // every offset below is archived
	// End, if set, is where the file starting at Committed ends: an idle close, recorded
	// before the file is written so that a rewrite cuts at the same place.
	End int64 `json:"end,omitempty"`
}

func (a *Archiver) load(ctx context.Context, st *partState) error {
	b, err := a.target.Get(ctx, checkpointKey(st.p))
	var cp checkpoint
	switch {
	case errors.Is(err, fs.ErrNotExist):
		start, _, err := a.opts.Log.Offsets(ctx, st.p)
		if err != nil {
			return err
		}
		cp = checkpoint{Partition: st.p, Committed: start}
	case err != nil:
		return err
	default:
		if err := json.Unmarshal(b, &cp); err != nil || cp.Partition != st.p || cp.Committed < 0 ||
			(cp.End != 0 && cp.End <= cp.Committed) {
			return fmt.Errorf("%w: bad checkpoint %s: %q", errFatal, checkpointKey(st.p), b)
		}
	}
	st.discardFile()
	st.committed, st.next, st.forcedEnd = cp.Committed, cp.Committed, -1
	if cp.End > 0 {
		st.forcedEnd = cp.End
	}
	st.loaded, st.fresh = true, true
	a.publish(st)
	return nil
}

func (a *Archiver) putCheckpoint(ctx context.Context, st *partState, cp checkpoint) error {
	b, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	if err := a.target.Put(ctx, checkpointKey(st.p), append(b, '\n')); err != nil {
		return err
	}
	a.mu.Lock()
	a.failingSince = time.Time{}
	a.mu.Unlock()
	return nil
}

// step reads one batch of partition st and archives what it completes. It returns the
// number of messages read.
func (a *Archiver) step(ctx context.Context, st *partState) (int, error) {
	if !st.loaded {
		if err := a.load(ctx, st); err != nil {
			return 0, err
		}
	}
	if st.forcedEnd >= 0 && st.next >= st.forcedEnd {
		return 0, a.finish(ctx, st, false)
	}
	msgs, err := a.opts.Log.Read(ctx, st.p, st.next, a.opts.ReadBytes)
	if errors.Is(err, eventlog.ErrOffsetOutOfRange) {
		return 0, a.skipLost(ctx, st)
	}
	if err != nil {
		return 0, err
	}
	if len(msgs) == 0 {
		st.lastEndSeen = st.next
		a.publish(st)
		if st.rows > 0 && a.opts.Now().UnixMicro() >= st.windowEnd+a.opts.Slack.Microseconds() {
			return 0, a.finish(ctx, st, true)
		}
		return 0, nil
	}
	for i := range msgs {
		m := &msgs[i]
		if m.Offset != st.next {
			return 0, fmt.Errorf("archive: partition %d: read offset %d, want %d", st.p, m.Offset, st.next)
		}
		if st.forcedEnd >= 0 && m.Offset == st.forcedEnd {
			if err := a.finish(ctx, st, false); err != nil {
				return 0, err
			}
		}
		if err := a.add(ctx, st, m); err != nil {
			return 0, err
		}
	}
	if st.forcedEnd >= 0 && st.next >= st.forcedEnd {
		if err := a.finish(ctx, st, false); err != nil {
			return 0, err
		}
	}
	if st.next > st.lastEndSeen {
		st.lastEndSeen = st.next
	}
	a.publish(st)
	return len(msgs), nil
}

// skipLost moves past offsets the log no longer has.
func (a *Archiver) skipLost(ctx context.Context, st *partState) error {
	start, _, err := a.opts.Log.Offsets(ctx, st.p)
	if err != nil {
		return err
	}
	if start <= st.next {
		return fmt.Errorf("archive: partition %d: offset %d out of range, first retained %d", st.p, st.next, start)
	}
	if st.rows > 0 {
		// The open file's events are still in memory: write them, then skip.
		if err := a.finish(ctx, st, true); err != nil {
			return err
		}
	}
	lost := start - st.next
	a.opts.Logger.Error("archive: the log dropped offsets before they were archived",
		"partition", st.p, "from", st.next, "to", start)
	a.mu.Lock()
	a.stats.Lost += lost
	a.mu.Unlock()
	a.noteError(fmt.Errorf("archive: partition %d: offsets [%d, %d) dropped by the log before archiving", st.p, st.next, start))
	st.committed, st.next = start, start
	return a.putCheckpoint(ctx, st, checkpoint{Partition: st.p, Committed: start})
}

// add puts message m into the open file, first closing it if m starts the next one.
func (a *Archiver) add(ctx context.Context, st *partState, m *eventlog.Message) error {
	if st.evs == nil {
		st.evs, st.offs, st.recs = make([]event.Event, 0, writeBatch), make([]int64, 0, writeBatch), make([]record, writeBatch)
	}
	st.evs = append(st.evs, event.Event{})
	e := &st.evs[len(st.evs)-1]
	if err := e.Decode(m.Value); err != nil {
		st.evs = st.evs[:len(st.evs)-1]
		a.opts.Logger.Warn("archive: skipping a record that does not decode", "partition", st.p, "offset", m.Offset)
		a.mu.Lock()
		a.stats.Corrupt++
		a.mu.Unlock()
		st.next = m.Offset + 1
		return nil
	}
	if st.rows > 0 && st.forcedEnd < 0 && (m.Offset%a.opts.MaxFileEvents == 0 || e.RecvTime >= st.windowEnd) {
		// The new event moves to the next file.
		ev := *e
		st.evs = st.evs[:len(st.evs)-1]
		if err := a.finish(ctx, st, false); err != nil {
			return err
		}
		st.evs = append(st.evs, ev)
		e = &st.evs[0]
	}
	if st.rows == 0 {
		iv := a.opts.ArchiveInterval.Microseconds()
		start := e.RecvTime - ((e.RecvTime%iv)+iv)%iv // floor, also before 1970
		st.windowEnd, st.dir, st.firstRecv = start+iv, hourDir(e.RecvTime), e.RecvTime
		st.w = parquet.NewGenericWriter[record](&st.out, parquet.Compression(&parquet.Zstd))
	}
	st.offs = append(st.offs, m.Offset)
	st.rows++
	st.next = m.Offset + 1
	if len(st.evs) == writeBatch {
		return st.flushRows()
	}
	return nil
}

func (st *partState) flushRows() error {
	if len(st.evs) == 0 {
		return nil
	}
	recs := st.recs[:len(st.evs)]
	for i := range st.evs {
		recs[i].set(int32(st.p), st.offs[i], &st.evs[i])
	}
	_, err := st.w.Write(recs)
	clear(recs)
	clear(st.evs)
	st.evs, st.offs = st.evs[:0], st.offs[:0]
	if err != nil {
		return fmt.Errorf("archive: encode: %w", err)
	}
	return nil
}

// finish writes the open file, [committed, next), and moves the checkpoint past it. idle
// marks an idle close, whose cut is recorded first.
func (a *Archiver) finish(ctx context.Context, st *partState, idle bool) error {
	first, end := st.committed, st.next
	if end == first {
		return nil
	}
	if st.rows == 0 {
		// Only records that do not decode: nothing to write.
		st.committed, st.forcedEnd = end, -1
		return a.putCheckpoint(ctx, st, checkpoint{Partition: st.p, Committed: end})
	}
	if err := st.flushRows(); err != nil {
		return err
	}
	if err := st.w.Close(); err != nil {
		return fmt.Errorf("archive: encode: %w", err)
	}
	name := fileName(st.p, first, end)
	if st.fresh {
		if err := a.deleteOrphans(ctx, st, name); err != nil {
			return err
		}
	}
	if idle && st.forcedEnd < 0 {
		if err := a.putCheckpoint(ctx, st, checkpoint{Partition: st.p, Committed: first, End: end}); err != nil {
			return err
		}
	}
	data := st.out.Bytes()
	if err := a.target.Put(ctx, st.dir+name, data); err != nil {
		return err
	}
	if err := a.putCheckpoint(ctx, st, checkpoint{Partition: st.p, Committed: end}); err != nil {
		return err
	}
	a.opts.Logger.Debug("archive: wrote", "file", st.dir+name, "events", st.rows, "bytes", len(data))
	a.mu.Lock()
	a.failingSince = time.Time{}
	a.stats.FilesWritten++
	a.stats.EventsArchived += st.rows
	a.stats.BytesWritten += int64(len(data))
	a.mu.Unlock()
	st.committed, st.forcedEnd, st.fresh = end, -1, false
	st.discardFile()
	a.publish(st)
	return nil
}

// deleteOrphans removes files of partition st starting at its checkpoint other than name:
// left by a crash under a different cut rule, they would overlap name.
func (a *Archiver) deleteOrphans(ctx context.Context, st *partState, name string) error {
	keys, err := a.target.List(ctx, st.dir)
	if err != nil {
		return err
	}
	prefix := st.dir + filePrefix(st.p, st.committed)
	for _, k := range keys {
		if strings.HasPrefix(k, prefix) && k != st.dir+name {
			a.opts.Logger.Warn("archive: deleting a file of a former cut rule", "file", k, "replaced_by", name)
			if err := a.target.Delete(ctx, k); err != nil {
				return err
			}
			a.mu.Lock()
			a.stats.OrphansDeleted++
			a.mu.Unlock()
		}
	}
	st.fresh = false
	return nil
}

func (a *Archiver) publish(st *partState) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ps := &a.stats.Partitions[st.p]
	ps.Owned = st.owned.Load()
	ps.Committed, ps.Pending = st.committed, st.rows
	if st.lastEndSeen > ps.End {
		ps.End = st.lastEndSeen
	}
	ps.Lag = max(ps.End-ps.Committed, 0)
	ps.PendingSince = time.Time{}
	if st.rows > 0 {
		ps.PendingSince = time.UnixMicro(st.firstRecv).UTC()
	}
}
