// Package ingest is the front of the pipeline: the HTTP handlers that receive clicks
// (GET /c/{token}, POST /click), impression pixels (GET /i/{token}) and batches
// (POST /events), and the Intake that turns accepted events into durable log records.
//
// Invariants:
//   - A handler answers 2xx/302 only after Intake.Record returned nil: every event it
//     acknowledges is durable in the log.
//   - Each idempotency key reaches the log at most once within the dedup window: keys are
//     reserved before the append and committed after it. A key is released only when its
//     event is certainly not durable (the log said eventlog.ErrNotAppended, or the append
//     never started). When that cannot be known (an append timed out, a round failed half
//     way) the key stays reserved, a "maybe", until the resolver has looked for its event in
//     the log: retries meanwhile wait and get 503, never a second append.
//   - The client's context never decides an append's fate: a client that hangs up after its
//     events were handed to the log leaves them to finish, and its retry finds them
//     recorded.
//   - Reservations are taken in one global order (by key hash): a request that finds a key
//     in flight keeps only the keys before it in that order, so two overlapping batches can
//     never each hold a key the other waits for.
//   - An event is appended at most MaxHold after it was received; the stages after the log
//     count on that bound (their Slack) for finality and duplicate filtering.
//   - A request that fails (bad input, or the log is unavailable) changes nothing already
//     accepted.
//   - An event's partition is its ad's (Partition), except for an ad this Intake finds hot
//     when salting is on (hot.go): then it is a function of the ad and the event's key. Every
//     copy of one event that reaches the log is in one partition, so the stages'
//     per-partition duplicate filter sees them all.
package ingest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
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
// store failed, or a key stayed in flight too long). Nothing of the request was acknowledged,
// and a retry is safe.
var ErrUnavailable = errors.New("ingest: unavailable")

// Intake appends events to the log exactly once per idempotency key.
type Intake struct {
	log      eventlog.Log
	keys     dedup.Store
	inFlight time.Duration // how long to wait for another request's reservation
	maxHold  time.Duration
	timeout  time.Duration // bound of one call to the log or the dedup store
	now      func() time.Time
	maybe    *resolver
	hot      *hotAds // nil: salting off

	bufs sync.Pool // *recordBuf

	accepted, duplicates, failures, tooSlow atomic.Int64
	invalidClicks                           [256]atomic.Int64 // accepted invalid clicks by event.Reason
}

// IntakeOptions configures an Intake. Log and Dedup are required.
type IntakeOptions struct {
	Log   eventlog.Log
	Dedup dedup.Store
	// InFlightWait bounds how long a retry waits for the first attempt of the same key to
	// finish (default 3 s); past it the retry gets ErrUnavailable and may try again.
	InFlightWait time.Duration
	// MaxHold bounds how long after its receive time an event may still be handed to the
	// log (default InFlightWait + 1 s). Past it the request gets ErrUnavailable and nothing
	// is appended: the stages after the log rely on receive times being at most this (plus
	// the append itself) behind the log's order.
	MaxHold time.Duration
	// BackendTimeout bounds each call to the log and the dedup store (default 10 s). A
	// timed-out append has an unknown outcome: its keys wait for the resolver.
	BackendTimeout time.Duration
	// ResolveAfter is how long after an append with an unknown outcome its keys are looked
	// up in the log (default 2 s): long enough for anything still on its way to have landed.
	ResolveAfter time.Duration
	// Hot configures the salting of hot ads over several partitions (off unless
	// Hot.Salts >= 2). It needs a dedup store that never forgets a durable key
	// (dedup.Memory): see hot.go.
	Hot HotOptions
	// Now is the clock that receive times come from (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
}

// NewIntake returns an Intake. Run must be running for keys with an unknown outcome to be
// resolved.
func NewIntake(o IntakeOptions) *Intake {
	if o.InFlightWait <= 0 {
		o.InFlightWait = 3 * time.Second
	}
	if o.MaxHold <= 0 {
		o.MaxHold = o.InFlightWait + time.Second
	}
	if o.BackendTimeout <= 0 {
		o.BackendTimeout = 10 * time.Second
	}
	if o.ResolveAfter <= 0 {
		o.ResolveAfter = 2 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	in := &Intake{log: o.Log, keys: o.Dedup, inFlight: o.InFlightWait, maxHold: o.MaxHold, timeout: o.BackendTimeout, now: o.Now}
	if o.Hot.Salts >= 2 {
		in.hot = newHotAds(o.Hot)
	}
	in.maybe = newResolver(o.Log, o.Dedup, o.ResolveAfter, o.BackendTimeout, o.Logger)
	in.maybe.hot = in.hot
	return in
}

// Run resolves keys whose append had an unknown outcome until ctx ends.
func (in *Intake) Run(ctx context.Context) error { return in.maybe.run(ctx) }

// recordBuf holds the scratch space of one Record call.
type recordBuf struct {
	keys     []string
	status   []dedup.Status
	msgs     []eventlog.Message
	values   []byte
	reserved []string
	idx      []int
	seen     map[string]struct{}

	// scratch of reserve
	ask     []string
	got     []dedup.Status
	order   []keyOrder
	release []string
}

// keyOrder places one key in the global reservation order.
type keyOrder struct {
	hash uint64
	i    int
}

// partitionKey is what an event's partition is the hash of: its ad id, or for a conversion
// (which has no ad) its user id, so a user's conversions stay in order in one partition.
func partitionKey(e *event.Event) string {
	if e.Type == event.TypeConversion {
		return e.UserID
	}
	return e.AdID
}

// Partition is the log partition of an ad's events: a hash of the ad id, so one ad's events
// stay in order in one partition.
func Partition(adID string, partitions int) int32 {
	return int32(xxhash.Sum64String(adID) % uint64(partitions))
}

// Record makes evs durable, each at most once per idempotency key, and sets out[i] to what
// happened to evs[i]. Every event must have passed Validate; now is the receive time. On
// error nothing is acknowledged and out is meaningless; the keys were released, or are held
// until the resolver knows whether their events are in the log.
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
	// The store calls are bounded but not cancelled by the client (see reserve and
	// appendReserved); one detached context serves all of them.
	bctx := context.WithoutCancel(ctx)
	if err := in.reserve(ctx, bctx, b, now); err != nil {
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
		if evs[i].Type == event.TypeClick && evs[i].Invalid != event.ReasonNone {
			in.invalidClicks[evs[i].Invalid].Add(1) // counted once durable below, or undone
		}
		start := len(b.values)
		b.values = evs[i].AppendBinary(b.values)
		p := Partition(partitionKey(&evs[i]), partitions)
		if in.hot != nil {
			p = in.hot.place(&evs[i], b.keys[i], p, partitions)
		}
		b.msgs = append(b.msgs, eventlog.Message{
			Partition: p,
			Value:     b.values[start:len(b.values):len(b.values)],
		})
		b.reserved = append(b.reserved, b.keys[i])
	}
	if len(b.msgs) > 0 {
		if err := in.appendReserved(bctx, b, now); err != nil {
			in.failures.Add(1)
			for i := range evs {
				if out[i] == Accepted && evs[i].Type == event.TypeClick && evs[i].Invalid != event.ReasonNone {
					in.invalidClicks[evs[i].Invalid].Add(-1)
				}
			}
			return err
		}
	}
	if in.hot != nil {
		in.hot.observe(evs, out, now)
	}
	in.accepted.Add(int64(len(b.msgs)))
	in.duplicates.Add(int64(len(evs) - len(b.msgs)))
	return nil
}

// appendReserved appends b.msgs, whose keys b.reserved this request holds, and settles the
// keys: committed when durable, released when certainly not, handed to the resolver when
// nobody can tell yet.
//
// Neither the append nor what follows it may depend on the client still waiting: a client
// that hangs up after the log took its events must find them recorded when it retries, so
// bctx is the request's context without its cancellation.
func (in *Intake) appendReserved(bctx context.Context, b *recordBuf, received time.Time) error {
	if held := in.now().Sub(received); held > in.maxHold {
		in.tooSlow.Add(1)
		in.release(bctx, b.reserved)
		return fmt.Errorf("%w: events received %v ago, past the %v an event may wait for the log", ErrUnavailable, held.Round(time.Millisecond), in.maxHold)
	}
	// values may have been reallocated while appending; re-slice from the final buffer.
	off := 0
	for i := range b.msgs {
		n := len(b.msgs[i].Value)
		b.msgs[i].Value = b.values[off : off+n : off+n]
		off += n
	}
	started := time.Now()
	actx, cancel := context.WithTimeout(bctx, in.timeout)
	err := in.log.Append(actx, b.msgs)
	cancel()
	switch {
	case err == nil:
	case errors.Is(err, eventlog.ErrNotAppended):
		in.release(bctx, b.reserved)
		return fmt.Errorf("%w: append: %v", ErrUnavailable, err)
	default:
		in.maybe.add(b.reserved, b.msgs, started)
		return fmt.Errorf("%w: append outcome unknown (retry later): %v", ErrUnavailable, err)
	}
	cctx, cancel := context.WithTimeout(bctx, in.timeout)
	defer cancel()
	if err := in.keys.Commit(cctx, b.reserved, received); err != nil {
		// The events are durable, so they are acknowledged; only their keys may expire
		// early. The stages' duplicate filter (dedup.Window) is the second line of defence.
		in.failures.Add(1)
	}
	return nil
}

// release frees keys whose events are certainly not in the log.
func (in *Intake) release(ctx context.Context, keys []string) {
	if len(keys) == 0 {
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), in.timeout)
	defer cancel()
	_ = in.keys.Release(rctx, keys) // a reservation that cannot be freed expires (Redis) or waits for a restart
}

// reserve reserves every key whose status is still Reserved (not an in-batch duplicate),
// waiting for keys that another request holds in flight. Keys are held in one global order:
// after each round, the request keeps only the keys ordered before the first one it found in
// flight and releases the rest, so every waiting request holds only keys smaller than the one
// it waits for, and no two requests can wait for each other.
// ctx is the request's, to stop waiting when the client leaves; bctx the same without its
// cancellation, for the store calls.
func (in *Intake) reserve(ctx, bctx context.Context, b *recordBuf, now time.Time) error {
	b.idx = b.idx[:0]
	for i, st := range b.status {
		if st == dedup.Reserved {
			b.idx = append(b.idx, i)
		}
	}
	deadline := time.Now().Add(in.inFlight)
	wait := 500 * time.Microsecond
	for len(b.idx) > 0 {
		b.ask, b.got = b.ask[:0], b.got[:0]
		for _, i := range b.idx {
			b.ask = append(b.ask, b.keys[i])
			b.got = append(b.got, 0)
		}
		// The store call is bounded but not cancelled by the client: a Reserve cut off half
		// way would leave reservations nobody knows to release.
		rctx, cancel := context.WithTimeout(bctx, in.timeout)
		err := in.keys.Reserve(rctx, b.ask, now, b.got)
		cancel()
		if err != nil {
			in.releaseHeld(bctx, b)
			return fmt.Errorf("%w: reserve: %v", ErrUnavailable, err)
		}
		pending := b.idx[:0]
		first := -1 // in b.order, the first key found in flight
		for j, i := range b.idx {
			b.status[i] = b.got[j]
			if b.got[j] == dedup.InFlight {
				pending = append(pending, i)
			}
		}
		b.idx = pending
		if len(pending) == 0 {
			return nil
		}
		// Keep only the keys ordered before the first one in flight.
		in.sortKeys(b)
		for j, o := range b.order {
			if b.status[o.i] == dedup.InFlight {
				first = j
				break
			}
		}
		b.release = b.release[:0]
		for _, o := range b.order[first+1:] {
			if b.status[o.i] == dedup.Reserved {
				b.release = append(b.release, b.keys[o.i])
				b.status[o.i] = dedup.InFlight
				b.idx = append(b.idx, o.i)
			}
		}
		in.release(bctx, b.release)
		if time.Now().After(deadline) {
			in.releaseHeld(bctx, b)
			return fmt.Errorf("%w: %d keys stayed in flight for %v", ErrUnavailable, len(b.idx), in.inFlight)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			in.releaseHeld(bctx, b)
			return fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, 20*time.Millisecond)
	}
	return nil
}

// sortKeys fills b.order with the batch's undecided keys (reserved or in flight) in the
// global reservation order: by key hash, then key.
func (in *Intake) sortKeys(b *recordBuf) {
	b.order = b.order[:0]
	for i, st := range b.status {
		if st == dedup.Reserved || st == dedup.InFlight {
			b.order = append(b.order, keyOrder{xxhash.Sum64String(b.keys[i]), i})
		}
	}
	slices.SortFunc(b.order, func(x, y keyOrder) int {
		if c := cmp.Compare(x.hash, y.hash); c != 0 {
			return c
		}
		return cmp.Compare(b.keys[x.i], b.keys[y.i])
	})
}

// releaseHeld frees the keys this request holds when it gives up before appending.
func (in *Intake) releaseHeld(ctx context.Context, b *recordBuf) {
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
	in.release(ctx, held)
}

// IntakeStats counts what Record did.
type IntakeStats struct {
	Accepted, Duplicates, Failures int64
	// TooSlow counts requests refused because their events waited longer than MaxHold.
	TooSlow int64
	// MaybeKeys are keys whose append had an unknown outcome, waiting to be resolved;
	// Resolved and Recovered count what the resolver settled (Recovered: found in the log).
	MaybeKeys, Resolved, Recovered int64
	// InvalidClicks counts the invalid clicks appended, by reason: every named reason, zero
	// included, so a dashboard sees the series before the first one.
	InvalidClicks map[event.Reason]int64
	// Hot describes hot-ad salting (zero when it is off).
	Hot HotStats
}

// Stats returns counters since start.
func (in *Intake) Stats() IntakeStats {
	st := IntakeStats{Accepted: in.accepted.Load(), Duplicates: in.duplicates.Load(), Failures: in.failures.Load(), TooSlow: in.tooSlow.Load()}
	st.MaybeKeys, st.Resolved, st.Recovered = in.maybe.stats()
	if in.hot != nil {
		st.Hot = in.hot.stats()
	}
	st.InvalidClicks = make(map[event.Reason]int64)
	for r := range in.invalidClicks {
		if n := in.invalidClicks[r].Load(); n != 0 || event.Reason(r).Named() {
			st.InvalidClicks[event.Reason(r)] = n
		}
	}
	return st
}
