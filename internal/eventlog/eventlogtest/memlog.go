package eventlogtest

import (
	"context"
	"sync"
	"time"

	"github.com/adpulse/adpulse/internal/eventlog"
)

// MemLog is an in-memory eventlog.Log for the tests of the stages that read the log: dense
// offsets from 0 (or from the start TrimFront moves, as the log's retention would), append
// times from a clock, values shared with readers (a stage must not write to them). It keeps
// the contract of eventlog.Log except durability, which it has no use for.
type MemLog struct {
	mu     sync.Mutex
	parts  [][]eventlog.Message
	start  []int64
	now    func() time.Time
	closed bool
}

var _ eventlog.Log = (*MemLog)(nil)

// NewMemLog returns an empty log of partitions partitions whose append times come from now
// (time.Now if nil).
func NewMemLog(partitions int, now func() time.Time) *MemLog {
	if now == nil {
		now = time.Now
	}
	return &MemLog{parts: make([][]eventlog.Message, partitions), start: make([]int64, partitions), now: now}
}

// Partitions implements eventlog.Log.
func (l *MemLog) Partitions() int { return len(l.parts) }

// Append implements eventlog.Log.
func (l *MemLog) Append(_ context.Context, msgs []eventlog.Message) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return eventlog.NotAppended(eventlog.ErrClosed)
	}
	for i := range msgs {
		if p := msgs[i].Partition; p < 0 || int(p) >= len(l.parts) {
			return eventlog.NotAppended(eventlog.ErrBadPartition)
		}
	}
	now := l.now().Truncate(time.Millisecond)
	for i := range msgs {
		m := &msgs[i]
		m.Offset, m.Time = int64(len(l.parts[m.Partition])), now
		l.parts[m.Partition] = append(l.parts[m.Partition], *m)
	}
	return nil
}

// Read implements eventlog.Log.
func (l *MemLog) Read(ctx context.Context, partition int, offset int64, maxBytes int) ([]eventlog.Message, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, eventlog.ErrClosed
	}
	if partition < 0 || partition >= len(l.parts) {
		return nil, eventlog.ErrBadPartition
	}
	p := l.parts[partition]
	if offset < l.start[partition] || offset > int64(len(p)) {
		return nil, eventlog.ErrOffsetOutOfRange
	}
	var out []eventlog.Message
	size := 0
	for _, m := range p[offset:] {
		if len(out) > 0 && size+len(m.Value) > maxBytes {
			break
		}
		out = append(out, m)
		size += len(m.Value)
	}
	return out, nil
}

// Offsets implements eventlog.Log.
func (l *MemLog) Offsets(_ context.Context, partition int) (int64, int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if partition < 0 || partition >= len(l.parts) {
		return 0, 0, eventlog.ErrBadPartition
	}
	return l.start[partition], int64(len(l.parts[partition])), nil
}

// OffsetForTime implements eventlog.Log.
func (l *MemLog) OffsetForTime(_ context.Context, partition int, t time.Time) (int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if partition < 0 || partition >= len(l.parts) {
		return 0, eventlog.ErrBadPartition
	}
	for _, m := range l.parts[partition][l.start[partition]:] {
		if !m.Time.Before(t) {
			return m.Offset, nil
		}
	}
	return int64(len(l.parts[partition])), nil
}

// Close implements eventlog.Log.
func (l *MemLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	return nil
}

// TrimFront drops the messages of partition before offset, as log retention does: reads
// below it fail with ErrOffsetOutOfRange.
func (l *MemLog) TrimFront(partition int, offset int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.start[partition] = max(l.start[partition], min(offset, int64(len(l.parts[partition]))))
}

// Messages returns the retained messages of every partition, partition by partition.
func (l *MemLog) Messages() []eventlog.Message {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []eventlog.Message
	for p, msgs := range l.parts {
		out = append(out, msgs[l.start[p]:]...)
	}
	return out
}
