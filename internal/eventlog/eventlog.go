// Package eventlog defines the event log: the durable, partitioned, append-only sequence of
// encoded events between ingest and every consumer (aggregation, charging, archive).
//
// Invariants every implementation keeps (the conformance suite in eventlogtest checks them):
//   - Append returns nil only once every message is durable (fsynced, or acknowledged by all
//     in-sync replicas), and then each message has its partition offset set.
//   - Offsets in a partition start at 0 (or the first retained offset), grow by one per
//     message, and never change meaning: Read at an offset always returns the same bytes.
//   - A partition is read in offset order; what Read returns was acknowledged by Append or was
//     durable before a crash (never a torn or corrupted record).
package eventlog

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Message is one record of the log.
type Message struct {
	Partition int32
	Offset    int64     // set by Append; ignored on input
	Time      time.Time // append time, set by Append (millisecond precision)
	Value     []byte
}

// Log is a partitioned, durable, append-only log.
type Log interface {
	// Partitions is the fixed number of partitions, numbered from 0.
	Partitions() int
	// Append makes msgs durable and sets their Offset and Time. Concurrent calls share the
	// cost of syncing (group commit). On error, none of msgs may be treated as acknowledged.
	// An error wrapping ErrNotAppended means none of msgs is durable or will become durable
	// (the caller may release what it reserved for them); any other error means the outcome
	// is unknown: some of msgs may be or become durable, so the caller must find out from
	// the log before letting anyone append them again. Once msgs may have been handed to
	// storage, ctx no longer shortens the wait: Append returns the outcome, not ctx.Err().
	Append(ctx context.Context, msgs []Message) error
	// Read returns messages of partition from offset on, at least one if any exist past
	// offset, and about maxBytes of values at most. It does not wait for new messages: at the
	// end of the partition it returns none. An offset below the first retained one returns
	// ErrOffsetOutOfRange.
	Read(ctx context.Context, partition int, offset int64, maxBytes int) ([]Message, error)
	// Offsets returns the first retained offset and the end offset (the next to be assigned).
	Offsets(ctx context.Context, partition int) (start, end int64, err error)
	// OffsetForTime returns the first offset whose append time is at or after t, or the end
	// offset if there is none.
	OffsetForTime(ctx context.Context, partition int, t time.Time) (int64, error)
	Close() error
}

// A Notifier is a Log that can tell its readers when new messages became readable, so a
// consumer that caught up waits for the next commit instead of polling (locallog implements
// it; Kafka readers poll).
type Notifier interface {
	// Appended returns a channel that is closed once messages appended after the call are
	// readable (it may also close earlier, without new messages). Take it before reading, so
	// a commit between the read and the wait is not missed.
	Appended() <-chan struct{}
}

// A BufferedReader is a Log whose reads can reuse the caller's memory. It is for a consumer
// that is done with each batch before it reads the next (the aggregator reads millions of
// events a second, and a fresh buffer per Read cost it more in allocation, page faults and GC
// than the read itself).
type BufferedReader interface {
	// ReadBuffered is Read, except that the messages and their values are stored in buf,
	// whose memory it reuses: they are valid only until the next ReadBuffered with buf.
	ReadBuffered(ctx context.Context, partition int, offset int64, maxBytes int, buf *ReadBuffer) ([]Message, error)
}

// ReadBuffer is the memory a BufferedReader reuses from one read to the next. The zero value
// is ready to use; one ReadBuffer serves one read at a time. Its fields belong to the Log.
type ReadBuffer struct {
	Msgs []Message
	Data []byte
}

// Sentinel errors.
var (
	ErrOffsetOutOfRange = errors.New("eventlog: offset out of range")
	ErrClosed           = errors.New("eventlog: closed")
	ErrBadPartition     = errors.New("eventlog: no such partition")
	// ErrNotAppended marks an Append error after which none of the messages is, or will
	// ever be, durable: they were refused, withdrawn before any write, or rolled back.
	ErrNotAppended = errors.New("eventlog: not appended")
)

// NotAppended wraps err so that errors.Is(result, ErrNotAppended) holds.
func NotAppended(err error) error {
	if err == nil || errors.Is(err, ErrNotAppended) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrNotAppended, err)
}

// An Assignee processes a share of the log's partitions that can change while it runs: the
// stages of a process node, when process nodes share the log (kafkalog.Membership). A
// partition is revoked before it is assigned again, and calls are not concurrent.
type Assignee interface {
	// Assign starts processing partitions from what the shared stores say was committed for
	// them, fencing whoever processed them before.
	Assign(ctx context.Context, partitions []int32) error
	// Revoke stops processing partitions. It returns once nothing more will be written for
	// them by this process.
	Revoke(partitions []int32)
}
