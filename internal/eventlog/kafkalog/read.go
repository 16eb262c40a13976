package kafkalog

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/adpulse/adpulse/internal/eventlog"
)

// maxAttempts bounds the tries of one fetch or offset request; between tries the partition
// leaders are reloaded (a leader moved, a broker restarted).
const maxAttempts = 5

// partition is the read state of one partition: the window of fetched records no Read has
// returned yet. from is the offset the window's fetch started at: a Read at any offset in
// [from, last record] is answered from it (offsets missing in that range have no record, as
// a fetch from them would also say). Records keep their meaning forever, so a window is never
// stale; it may outlive retention by a moment. There is one window per partition: consumers
// sharing a Log and reading one partition at different positions take turns refetching.
type partition struct {
	mu      sync.Mutex // held across a fetch: Reads of one partition go one at a time
	from    int64
	pending []eventlog.Message
}

// take returns the pending records from offset on, up to maxBytes of values (at least one), and
// drops them and everything before from the window. ok is false if offset is outside the
// window (which is then dropped).
func (p *partition) take(offset int64, maxBytes int) (out []eventlog.Message, ok bool) {
	n := len(p.pending)
	if n == 0 || offset < p.from || offset > p.pending[n-1].Offset {
		p.pending = nil
		return nil, false
	}
	i, _ := slices.BinarySearchFunc(p.pending, offset, func(m eventlog.Message, off int64) int {
		return cmp.Compare(m.Offset, off)
	})
	j, used := i, 0
	for j < n && (j == i || used+len(p.pending[j].Value) <= maxBytes) {
		used += len(p.pending[j].Value)
		j++
	}
	// A capped slice: a caller appending to it must not write over the rest of the window.
	out = p.pending[i:j:j]
	if p.pending = p.pending[j:]; len(p.pending) == 0 {
		p.pending = nil
	} else {
		p.from = p.pending[0].Offset
	}
	return out, true
}

// check returns the error for an operation on partition, if any.
func (l *Log) check(partition int) error {
	if l.closed.Load() {
		return eventlog.ErrClosed
	}
	if partition < 0 || partition >= len(l.parts) {
		return fmt.Errorf("kafkalog: partition %d of %d: %w", partition, len(l.parts), eventlog.ErrBadPartition)
	}
	return nil
}

// Read implements eventlog.Log. It fetches at least FetchBytes (with no wait) when the
// partition's window cannot answer, and trims what it returns to maxBytes; the rest stays in
// the window for the next Read.
func (l *Log) Read(ctx context.Context, partition int, offset int64, maxBytes int) ([]eventlog.Message, error) {
	if err := l.check(partition); err != nil {
		return nil, err
	}
	if offset < 0 {
		return nil, fmt.Errorf("kafkalog: read partition %d at %d: %w", partition, offset, eventlog.ErrOffsetOutOfRange)
	}
	maxBytes = max(maxBytes, 1)
	p := &l.parts[partition]
	p.mu.Lock()
	defer p.mu.Unlock()
	if out, ok := p.take(offset, maxBytes); ok {
		l.stats.reads.Add(1)
		l.stats.windowReads.Add(1)
		return out, nil
	}
	msgs, err := l.fetch(ctx, int32(partition), offset, max(maxBytes, l.opts.FetchBytes))
	if err != nil {
		return nil, err
	}
	l.stats.reads.Add(1)
	p.from, p.pending = offset, msgs
	out, _ := p.take(offset, maxBytes)
	return out, nil
}

// fetch reads records of partition from offset on from its leader, without waiting.
func (l *Log) fetch(ctx context.Context, partition int32, offset int64, maxBytes int) ([]eventlog.Message, error) {
	var lastErr error
	for attempt := range maxAttempts {
		if attempt > 0 {
			l.stats.retries.Add(1)
			if err := sleep(ctx, backoff(attempt)); err != nil {
				return nil, fmt.Errorf("kafkalog: read partition %d at %d: %w (after %v)", partition, offset, err, lastErr)
			}
		}
		leader, topicID, gen, err := l.leader(ctx, partition)
		if err != nil {
			lastErr = err
			continue
		}
		req := kmsg.NewPtrFetchRequest()
		req.ReplicaID = -1
		req.MaxWaitMillis = 0 // Read never waits for new records
		req.MinBytes = 1
		req.MaxBytes = int32(min(maxBytes, 1<<30))
		req.IsolationLevel = 0 // up to the high watermark: records on every in-sync replica
		req.SessionID, req.SessionEpoch = 0, -1
		rt := kmsg.NewFetchRequestTopic()
		rt.Topic, rt.TopicID = l.topic, topicID // name up to v12, id from v13
		rp := kmsg.NewFetchRequestTopicPartition()
		rp.Partition = partition
		rp.FetchOffset = offset
		rp.PartitionMaxBytes = req.MaxBytes
		rp.CurrentLeaderEpoch, rp.LastFetchedEpoch, rp.LogStartOffset = -1, -1, -1
		rt.Partitions = append(rt.Partitions, rp)
		req.Topics = append(req.Topics, rt)
		l.stats.fetches.Add(1)
		resp, err := req.RequestWith(ctx, l.cl.Broker(int(leader)))
		if err == nil && resp.ErrorCode != 0 {
			err = kerr.ErrorForCode(resp.ErrorCode)
		}
		if err != nil {
			if !retriable(ctx, err) {
				return nil, fmt.Errorf("kafkalog: read partition %d at %d: %w", partition, offset, err)
			}
			lastErr = err
			l.invalidate(gen)
			continue
		}
		var got *kmsg.FetchResponseTopicPartition
		for i := range resp.Topics {
			t := &resp.Topics[i]
			if t.Topic != l.topic && t.TopicID != topicID {
				continue
			}
			for j := range t.Partitions {
				if t.Partitions[j].Partition == partition {
					got = &t.Partitions[j]
				}
			}
		}
		if got == nil {
			lastErr = errors.New("partition missing from fetch response")
			l.invalidate(gen)
			continue
		}
		fp, _ := kgo.ProcessFetchPartition(kgo.ProcessFetchPartitionOpts{
			Offset:    offset,
			Topic:     l.topic,
			Partition: partition,
		}, got, l.decomp, nil)
		if fp.Err != nil && len(fp.Records) == 0 {
			switch {
			case errors.Is(fp.Err, kerr.OffsetOutOfRange):
				return nil, l.outOfRange(ctx, partition, offset)
			case retriable(ctx, fp.Err):
				lastErr = fp.Err
				l.invalidate(gen)
				continue
			default:
				return nil, fmt.Errorf("kafkalog: read partition %d at %d: %w", partition, offset, fp.Err)
			}
		}
		// A bad batch after good ones: return the good prefix; the next Read starts at the bad
		// batch and reports it.
		msgs := make([]eventlog.Message, len(fp.Records))
		var bytes int64
		for i, r := range fp.Records {
			v := r.Value[:len(r.Value):len(r.Value)]
			msgs[i] = eventlog.Message{Partition: partition, Offset: r.Offset, Time: r.Timestamp, Value: v}
			bytes += int64(len(v))
		}
		l.stats.fetchBytes.Add(bytes)
		return msgs, nil
	}
	return nil, fmt.Errorf("kafkalog: read partition %d at %d: %d attempts: %w", partition, offset, maxAttempts, lastErr)
}

// outOfRange is the error of a fetch the broker answered OFFSET_OUT_OF_RANGE: below the
// first retained offset, or past the end (as locallog, both are ErrOffsetOutOfRange).
func (l *Log) outOfRange(ctx context.Context, partition int32, offset int64) error {
	start, end, err := l.Offsets(ctx, int(partition))
	if err != nil {
		return fmt.Errorf("kafkalog: read partition %d at %d: %w", partition, offset, eventlog.ErrOffsetOutOfRange)
	}
	return fmt.Errorf("kafkalog: read partition %d at %d, retained [%d, %d): %w", partition, offset, start, end, eventlog.ErrOffsetOutOfRange)
}

// Offsets implements eventlog.Log: the log start offset and the high watermark.
func (l *Log) Offsets(ctx context.Context, partition int) (start, end int64, err error) {
	if err := l.check(partition); err != nil {
		return 0, 0, err
	}
	if start, err = l.listOffset(ctx, int32(partition), -2); err != nil {
		return 0, 0, err
	}
	if end, err = l.listOffset(ctx, int32(partition), -1); err != nil {
		return 0, 0, err
	}
	return start, end, nil
}

// OffsetForTime implements eventlog.Log with Kafka's timestamp lookup.
func (l *Log) OffsetForTime(ctx context.Context, partition int, t time.Time) (int64, error) {
	if err := l.check(partition); err != nil {
		return 0, err
	}
	// Times are whole milliseconds: "at or after t" is "at or after t rounded up".
	ms := t.UnixMilli()
	if t.Before(time.UnixMilli(ms)) {
		ms-- // UnixMilli rounds toward zero; a negative time needs its floor
	}
	if t.After(time.UnixMilli(ms)) {
		ms++
	}
	ms = max(ms, 0) // negative timestamps are the special queries (-1 end, -2 start, ...)
	off, err := l.listOffset(ctx, int32(partition), ms)
	if err != nil {
		return 0, err
	}
	if off < 0 { // no record at or after t
		return l.listOffset(ctx, int32(partition), -1)
	}
	return off, nil
}

// listOffset asks the partition's leader for the offset of timestamp ts (-2 the log start, -1
// the high watermark). The client routes the request to the leader.
func (l *Log) listOffset(ctx context.Context, partition int32, ts int64) (int64, error) {
	var lastErr error
	for attempt := range maxAttempts {
		if attempt > 0 {
			l.stats.retries.Add(1)
			if err := sleep(ctx, backoff(attempt)); err != nil {
				return 0, fmt.Errorf("kafkalog: list offset %d of partition %d: %w (after %v)", ts, partition, err, lastErr)
			}
		}
		req := kmsg.NewPtrListOffsetsRequest()
		req.ReplicaID = -1
		req.IsolationLevel = 0
		rt := kmsg.NewListOffsetsRequestTopic()
		rt.Topic = l.topic
		rp := kmsg.NewListOffsetsRequestTopicPartition()
		rp.Partition = partition
		rp.Timestamp = ts
		rp.CurrentLeaderEpoch = -1
		rt.Partitions = append(rt.Partitions, rp)
		req.Topics = append(req.Topics, rt)
		resp, err := req.RequestWith(ctx, l.cl)
		if err == nil {
			err = errors.New("partition missing from list offsets response")
			for _, t := range resp.Topics {
				for _, p := range t.Partitions {
					if t.Topic == l.topic && p.Partition == partition {
						if err = kerr.ErrorForCode(p.ErrorCode); err == nil {
							return p.Offset, nil
						}
					}
				}
			}
		}
		if !retriable(ctx, err) {
			return 0, fmt.Errorf("kafkalog: list offset %d of partition %d: %w", ts, partition, err)
		}
		lastErr = err
		l.cl.ForceMetadataRefresh()
	}
	return 0, fmt.Errorf("kafkalog: list offset %d of partition %d: %d attempts: %w", ts, partition, maxAttempts, lastErr)
}

// leader returns the partition's leader as last loaded, loading the metadata if it is unknown.
func (l *Log) leader(ctx context.Context, partition int32) (leader int32, topicID [16]byte, gen uint64, err error) {
	l.metaMu.Lock()
	defer l.metaMu.Unlock()
	if l.leaders == nil || l.leaders[partition] < 0 {
		tm, err := l.describeTopic(ctx)
		if err != nil {
			return 0, topicID, 0, err
		}
		l.setMeta(tm)
		if l.leaders[partition] < 0 {
			return 0, topicID, 0, fmt.Errorf("kafkalog: partition %d has no leader", partition)
		}
	}
	return l.leaders[partition], l.topicID, l.metaGen, nil
}

// invalidate forgets the leaders loaded as generation gen, so the next leader call reloads
// them; a generation already replaced (another reader reloaded) is left alone.
func (l *Log) invalidate(gen uint64) {
	l.metaMu.Lock()
	if l.metaGen == gen {
		l.leaders = nil
	}
	l.metaMu.Unlock()
}

// retriable reports whether a request that failed with err may succeed if tried again after
// reloading the leaders.
func retriable(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil || errors.Is(err, kgo.ErrClientClosed) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var ke *kerr.Error
	if errors.As(err, &ke) {
		return ke.Retriable || ke == kerr.UnknownTopicOrPartition
	}
	return true // network errors, an unknown broker id, a malformed answer
}

func backoff(attempt int) time.Duration {
	return time.Duration(25<<min(attempt-1, 5)) * time.Millisecond
}
