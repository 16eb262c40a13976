// Package ingest is the front of the pipeline: the HTTP handlers that receive clicks
// (GET /c/{token}, POST /click), impression pixels (GET /i/{token}) and batches
// (POST /events), and the Intake that turns accepted events into durable log records.
//
// Invariants:
//   - A handler answers 2xx/302 only after Intake.Record returned nil: every event it
//     acknowledges is durable in the log.
//   - Each idempotency key reaches the log at most once within the dedup window: keys are
//     reserved before the append, committed after it, released if it fails.
//   - A request that fails (bad input, or the log is unavailable) changes nothing already
//     accepted.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/adpulse/adpulse/internal/dedup"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/cespare/xxhash/v2"
)

// Outcome is what happened to one event given to Record.
type Outcome uint8

// Outcomes of Record.
const (
	Accepted  Outcome = iota // appended to the log
	Duplicate                // its key was already recorded; nothing appended
)

// ErrUnavailable is returned when events cannot be made durable now (the log or the dedup
// store failed, or a key stayed in flight too long). Nothing of the request was acknowledged.
var ErrUnavailable = errors.New("ingest: unavailable")

// Intake appends events to the log exactly once per idempotency key.
type Intake struct {
	log      eventlog.Log
	keys     dedup.Store
	inFlight time.Duration // how long to wait for another request's reservation

	bufs sync.Pool // *recordBuf

	accepted, duplicates, failures atomic.Int64
}

// IntakeOptions configures an Intake.
type IntakeOptions struct {
	Log   eventlog.Log
	Dedup dedup.Store
	// InFlightWait bounds how long a retry waits for the first attempt of the same key to
	// finish (default 5 s); past it the retry gets ErrUnavailable and may try again.
	InFlightWait time.Duration
}

// NewIntake returns an Intake.
func NewIntake(o IntakeOptions) *Intake {
	if o.InFlightWait <= 0 {
		o.InFlightWait = 5 * time.Second
	}
	return &Intake{log: o.Log, keys: o.Dedup, inFlight: o.InFlightWait}
}

// recordBuf holds the scratch space of one Record call.
type recordBuf struct {
	keys     []string
	status   []dedup.Status
	msgs     []eventlog.Message
	values   []byte
	reserved []string
	idx      []int
	seen     map[string]struct{}
}

// Partition is the log partition of an ad's events: a hash of the ad id, so one ad's events
// stay in order in one partition.
func Partition(adID string, partitions int) int32 {
	return int32(xxhash.Sum64String(adID) % uint64(partitions))
}

// Record makes evs durable, each at most once per idempotency key, and sets out[i] to what
// happened to evs[i]. Every event must have passed Validate. On error nothing is
// acknowledged: reservations are released, and out is meaningless.
func (in *Intake) Record(ctx context.Context, evs []event.Event, now time.Time, out []Outcome) error {
	b, _ := in.bufs.Get().(*recordBuf)
	if b == nil {
		b = &recordBuf{}
	}
	defer in.bufs.Put(b)
	b.keys, b.status = b.keys[:0], b.status[:0]
	for i := range evs {
		b.keys = append(b.keys, evs[i].Key())
		b.status = append(b.status, dedup.Reserved)
	}
	// Duplicates inside one batch never reach the store: the store would report the second
	// as in flight (held by this very request) and we would wait on ourselves.
	if len(evs) > 1 {
		if b.seen == nil {
			b.seen = make(map[string]struct{}, len(evs))
		}
		clear(b.seen)
		for i, k := range b.keys {
			if _, dup := b.seen[k]; dup {
				b.status[i] = dedup.Duplicate
				continue
			}
			b.seen[k] = struct{}{}
		}
	}
	if err := in.reserve(ctx, b, now); err != nil {
		in.failures.Add(1)
		return err
	}

	b.msgs, b.values, b.reserved = b.msgs[:0], b.values[:0], b.reserved[:0]
	partitions := in.log.Partitions()
	for i := range evs {
		if b.status[i] != dedup.Reserved {
			out[i] = Duplicate
			continue
		}
		out[i] = Accepted
		start := len(b.values)
		b.values = evs[i].AppendBinary(b.values)
		b.msgs = append(b.msgs, eventlog.Message{
			Partition: Partition(evs[i].AdID, partitions),
			Value:     b.values[start:len(b.values):len(b.values)],
		})
		b.reserved = append(b.reserved, b.keys[i])
	}
	if len(b.msgs) > 0 {
		// values may have been reallocated while appending; re-slice from the final buffer.
		off := 0
		for i := range b.msgs {
			n := len(b.msgs[i].Value)
			b.msgs[i].Value = b.values[off : off+n : off+n]
			off += n
		}
		if err := in.log.Append(ctx, b.msgs); err != nil {
			// Release with a fresh context: the request's may be what was cancelled.
			_ = in.keys.Release(context.WithoutCancel(ctx), b.reserved)
			in.failures.Add(1)
			return fmt.Errorf("%w: append: %v", ErrUnavailable, err)
		}
		if err := in.keys.Commit(context.WithoutCancel(ctx), b.reserved, now); err != nil {
			// The events are durable, so they are acknowledged; only their keys may expire
			// early. The aggregator's own dedup is the second line of defence.
			in.failures.Add(1)
		}
	}
	in.accepted.Add(int64(len(b.msgs)))
	in.duplicates.Add(int64(len(evs) - len(b.msgs)))
	return nil
}

// reserve reserves every key whose status is still Reserved (not an in-batch duplicate),
// waiting for keys that another request holds in flight.
func (in *Intake) reserve(ctx context.Context, b *recordBuf, now time.Time) error {
	b.idx = b.idx[:0]
	for i, st := range b.status {
		if st == dedup.Reserved {
			b.idx = append(b.idx, i)
		}
	}
	deadline := time.Now().Add(in.inFlight)
	wait := 500 * time.Microsecond
	var keys []string
	var got []dedup.Status
	for len(b.idx) > 0 {
		keys, got = keys[:0], got[:0]
		for _, i := range b.idx {
			keys = append(keys, b.keys[i])
			got = append(got, 0)
		}
		if err := in.keys.Reserve(ctx, keys, now, got); err != nil {
			return fmt.Errorf("%w: reserve: %v", ErrUnavailable, err)
		}
		pending := b.idx[:0]
		for j, i := range b.idx {
			if got[j] == dedup.InFlight {
				pending = append(pending, i)
				continue
			}
			b.status[i] = got[j]
		}
		b.idx = pending
		if len(pending) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			in.releaseReserved(ctx, b)
			return fmt.Errorf("%w: %d keys stayed in flight", ErrUnavailable, len(pending))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			in.releaseReserved(ctx, b)
			return fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, 20*time.Millisecond)
		for _, i := range pending {
			b.status[i] = dedup.Reserved // ask again
		}
	}
	return nil
}

// releaseReserved frees the keys this request already holds when it gives up.
func (in *Intake) releaseReserved(ctx context.Context, b *recordBuf) {
	pending := make(map[int]bool, len(b.idx))
	for _, i := range b.idx {
		pending[i] = true
	}
	var held []string
	for i, st := range b.status {
		if st == dedup.Reserved && !pending[i] {
			held = append(held, b.keys[i])
		}
	}
	_ = in.keys.Release(context.WithoutCancel(ctx), held)
}

// IntakeStats counts what Record did.
type IntakeStats struct {
	Accepted, Duplicates, Failures int64
}

// Stats returns counters since start.
func (in *Intake) Stats() IntakeStats {
	return IntakeStats{Accepted: in.accepted.Load(), Duplicates: in.duplicates.Load(), Failures: in.failures.Load()}
}
