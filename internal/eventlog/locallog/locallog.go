// Package locallog is the embedded event log: a partitioned, append-only log in a local
// directory, the eventlog.Log of a single-machine adpulse. Ingest appends encoded events to it;
// aggregation, charging and the archive read it by offset.
//
// On disk, Dir/META holds the partition count and Dir/p<N>/ holds partition N's segment
// files, each named by the offset of its first record (00000000000000001234.log). A record is
// a 16-byte header (value length, CRC32C, append time in unix milliseconds) and its value;
// offsets are implicit (segment base plus position in the segment). Dir/journal/ holds the
// journal (journal.go), which lets one fdatasync make a round over many partitions durable.
//
// Invariants:
//   - Acknowledged means durable. Append returns nil only after its records were written and
//     fdatasynced (and, for a new segment, after its directory entry was synced). One committer
//     goroutine does every write: it gathers all pending requests, writes each partition's
//     records with one write call, makes them durable and then wakes the waiters, so many
//     concurrent Appends share one sync (group commit). A round that touches several
//     partitions is made durable by one synced journal frame holding the same records; a
//     round that touches one partition, or rolls a segment, syncs the segment files in
//     parallel. Either way every acknowledged record is in a synced segment or in a journal
//     file that Open replays.
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
//     fails, every partition the round wrote, and the journal, is truncated back to its size
//     before the round (a segment the round created is removed) and synced, and the in-memory state is
//     restored, so the log continues from its last published record. Retrying the sync would
//     be unsound: after a failed fsync Linux may have dropped the dirty pages, or marked them
//     clean without writing them, so the page cache no longer says what the disk holds. The
//     round's Appends fail with eventlog.ErrNotAppended and later rounds proceed (a full disk
//     refuses appends until space returns). Records acknowledged before are never touched:
//     they lie below the truncation point. Only if the rollback fails too does the log fail
//     for good: the round's Appends get an error of unknown outcome, Err reports the failure,
//     Run returns it, and reopening recovers.
//   - An Append's context can withdraw it only while it is queued. Once the committer took
//     its records they may reach the disk, so Append waits for the outcome: an error must
//     never be reported for records that became durable (the client would append them again).
//
// Every file operation goes through Options.FS (a pebble vfs.FS), so tests run the log on file
// systems that fail or forget. The code follows the log's jobs: open.go opens and recovers,
// append.go is the committer (group commit and rollback), journal.go the journal that lets one
// sync cover many partitions (and its checkpoints and replay), read.go reads by offset and time,
// retention.go deletes old segments and reports stats; segment.go and record.go hold the
// on-disk formats.
//
// Lock order: Log.mu, then partition.mu; segment.buildMu before partition.mu. No file I/O is
// done while holding Log.mu or a partition.mu, so a slow disk never blocks readers.
package locallog

import (
	"context"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/cockroachdb/pebble/vfs"
)

var (
	_ eventlog.Log      = (*Log)(nil)
	_ eventlog.Notifier = (*Log)(nil)
)

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
	// JournalBytes is the journal size at which the committer syncs the segments written
	// through the journal and starts an empty one (see journal.go). Default 64 MiB.
	JournalBytes int64
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
	Syncs            int64         // fdatasync calls on segment and journal files
	Checkpoints      int64         // journal checkpoints (segments synced, journal emptied)
	SyncTime         time.Duration // time spent in those calls, summed (they overlap across partitions)
	SegmentsDeleted  int64         // segments deleted by retention
	// AppendWait counts the Appends the committer took by how long each waited, from the
	// call to its outcome: the queue before a round plus the round's write and sync. It is
	// what the log adds to a click's latency.
	AppendWait Histogram
	Partitions []PartitionStats
}

// AppendWaitBounds are the upper bounds of Stats.AppendWait's buckets.
var AppendWaitBounds = [...]time.Duration{
	500 * time.Microsecond, time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond,
	10 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond,
	250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2500 * time.Millisecond,
}

// Histogram is a distribution of durations over AppendWaitBounds.
type Histogram struct {
	// Counts[i] counts the values at most AppendWaitBounds[i] and above the bound before
	// it; the last element counts those above every bound (not cumulative).
	Counts []int64
	Sum    time.Duration
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

	// appended is closed, and replaced, after every round that published records, waking
	// the readers waiting in Appended (a broadcast: any number of consumers).
	notifyMu sync.Mutex
	appended chan struct{}

	// Owned by the committer goroutine.
	journal    *journal // nil while Open replays the journal
	batch      []*request
	dirty      []*partition
	roundMsgs  int64
	roundBytes int64

	stats struct {
		msgs, bytes, commits, rollbacks, syncs, syncNanos, deleted, checkpoints atomic.Int64
		waitNanos                                                               atomic.Int64
		waitCounts                                                              [len(AppendWaitBounds) + 1]atomic.Int64
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
	// unsynced: active was written through the journal since its last sync; the next
	// checkpoint syncs it.
	unsynced bool
	chunks   []chunk // this round's writes, one per target segment
	nchunks  int
	err      error     // this round's write error
	saved    tailState // the fields above as they were before this round, for a rollback
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

// Partitions returns the number of partitions.
func (l *Log) Partitions() int { return len(l.parts) }

// Appended implements eventlog.Notifier: the channel closes after the next round that makes
// records readable (or at Close).
func (l *Log) Appended() <-chan struct{} {
	l.notifyMu.Lock()
	defer l.notifyMu.Unlock()
	if l.appended == nil {
		l.appended = make(chan struct{})
	}
	return l.appended
}

// notifyAppended wakes the readers waiting in Appended.
func (l *Log) notifyAppended() {
	l.notifyMu.Lock()
	defer l.notifyMu.Unlock()
	if l.appended != nil {
		close(l.appended)
		l.appended = nil
	}
}

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
