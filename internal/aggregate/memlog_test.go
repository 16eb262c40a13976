package aggregate

import (
	"context"
	"sync"
	"time"

	"github.com/adpulse/adpulse/internal/eventlog"
)

// memLog is an in-memory eventlog.Log for tests: dense offsets from 0, values shared (the
// aggregator must not write to them), append time from a clock.
type memLog struct {
	mu     sync.Mutex
	parts  [][]eventlog.Message
	now    func() time.Time
	closed bool
}

var _ eventlog.Log = (*memLog)(nil)

func newMemLog(partitions int, now func() time.Time) *memLog {
	return &memLog{parts: make([][]eventlog.Message, partitions), now: now}
}

func (l *memLog) Partitions() int { return len(l.parts) }

func (l *memLog) Append(_ context.Context, msgs []eventlog.Message) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return eventlog.ErrClosed
	}
	now := l.now().Truncate(time.Millisecond)
	for i := range msgs {
		m := &msgs[i]
		if m.Partition < 0 || int(m.Partition) >= len(l.parts) {
			return eventlog.ErrBadPartition
		}
		m.Offset, m.Time = int64(len(l.parts[m.Partition])), now
		l.parts[m.Partition] = append(l.parts[m.Partition], *m)
	}
	return nil
}

func (l *memLog) Read(ctx context.Context, partition int, offset int64, maxBytes int) ([]eventlog.Message, error) {
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
	if offset < 0 || offset > int64(len(p)) {
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

func (l *memLog) Offsets(_ context.Context, partition int) (int64, int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if partition < 0 || partition >= len(l.parts) {
		return 0, 0, eventlog.ErrBadPartition
	}
	return 0, int64(len(l.parts[partition])), nil
}

func (l *memLog) OffsetForTime(_ context.Context, partition int, t time.Time) (int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if partition < 0 || partition >= len(l.parts) {
		return 0, eventlog.ErrBadPartition
	}
	for _, m := range l.parts[partition] {
		if !m.Time.Before(t) {
			return m.Offset, nil
		}
	}
	return int64(len(l.parts[partition])), nil
}

func (l *memLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	return nil
}
