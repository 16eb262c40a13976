// Package dedup is the first line of "each event counts once": it reserves idempotency keys
// (event.Event.Key) before events are appended to the log, so a retried click or a resent batch
// never reaches the stream twice.
//
// The protocol is reserve -> append -> commit, or reserve -> (append failed) -> release. A key
// in flight (reserved, append not yet finished) is neither free nor a proven duplicate: the
// caller waits until its owner commits or releases it, so a retry is never answered "already
// recorded" for an event that then fails to become durable.
//
// Implementations: Memory (embedded; rebuilt on start from the log, or from a snapshot plus
// the log after it, so the key and its event are committed together by construction) and
// redisdedup (scale-out; reserve with a short TTL, append, then confirm with the full window).
package dedup

import (
	"context"
	"time"
)

// Status is the outcome of reserving one key.
type Status uint8

// Reservation outcomes.
const (
	Reserved  Status = iota // the key was free; the caller now owns it and must Commit or Release it
	Duplicate               // an event with this key was committed within the window
	InFlight                // another request holds the key and has not finished; ask again shortly
)

func (s Status) String() string {
	return [...]string{"reserved", "duplicate", "in_flight"}[s]
}

// Store holds the idempotency keys of the dedup window.
type Store interface {
	// Reserve tries to take each key; out[i] receives the status of keys[i]. now is the
	// receive time that starts the key's window.
	Reserve(ctx context.Context, keys []string, now time.Time, out []Status) error
	// Commit marks reserved keys as recorded: their events are durable in the log.
	Commit(ctx context.Context, keys []string, now time.Time) error
	// Release frees reserved keys whose events did not become durable.
	Release(ctx context.Context, keys []string) error
	Close() error
}
