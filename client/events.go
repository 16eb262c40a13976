package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/adpulse/adpulse/internal/event"
)

// Event is one line of POST /events.
//
// Every event must carry its idempotency key, which is what makes resending it safe:
// impressions and clicks their ImpressionID (the server counts one impression and one click
// per impression id), other interactions their EventID. SendEvents refuses an event without
// it. (The server would key an interaction without an event id by its type and impression id,
// which silently merges two add_to_cart of one impression; the client asks for the id.)
type Event struct {
	Type         string    // "impression", "click", or an interaction name matching [a-z][a-z0-9_]{0,31}
	AdID         string    // required
	ImpressionID string    // required for impressions and clicks
	EventID      string    // required for other interactions
	UserID       string    // optional
	CatalogID    string    // optional; impressions default to the ad's
	Time         time.Time // event time; zero means the server's receive time
	CPCMicros    int64     // clicks only: the auction price; 0 means the ad's bid
	UserAgent    string    // optional: the original request's, so bots are recorded as invalid
}

// wireEvent is the JSON of an Event.
type wireEvent struct {
	Type         string `json:"type"`
	AdID         string `json:"ad_id"`
	ImpressionID string `json:"impression_id,omitempty"`
	EventID      string `json:"event_id,omitempty"`
	UserID       string `json:"user_id,omitempty"`
	CatalogID    string `json:"catalog_id,omitempty"`
	EventTime    string `json:"event_time,omitempty"`
	CPCMicros    int64  `json:"cpc_micros,omitempty"`
	UserAgent    string `json:"user_agent,omitempty"`
}

const (
	maxMicros    = 1_000_000_000_000_000 // 1e15, the contract's bound on money
	maxUserAgent = 1024
	// maxLineBytes is the server's bound on one event (ingest.MaxLineBytes).
	maxLineBytes = 64 << 10
)

// Validate checks e against the server's rules for what it can check without the catalog:
// id syntax (1-64 characters of [A-Za-z0-9._:-]), the type, the idempotency key and the price.
// The server still rejects, per line, an unknown ad or an event_time outside its window.
func (e *Event) Validate() error {
	typ, _, ok := event.ParseTypeName(e.Type)
	if !ok {
		return fieldError("type", "must be impression, click or match [a-z][a-z0-9_]{0,31}")
	}
	if !event.ValidID(e.AdID) {
		return fieldError("ad_id", idRule)
	}
	for _, f := range [...]struct{ name, v string }{
		{"impression_id", e.ImpressionID}, {"event_id", e.EventID}, {"user_id", e.UserID}, {"catalog_id", e.CatalogID},
	} {
		if f.v != "" && !event.ValidID(f.v) {
			return fieldError(f.name, idRule)
		}
	}
	switch {
	case typ != event.TypeInteraction && e.ImpressionID == "":
		return fieldError("impression_id", "is required for "+e.Type+"s: it is their idempotency key")
	case typ == event.TypeInteraction && e.EventID == "":
		return fieldError("event_id", "is required for interactions: it is their idempotency key")
	case e.CPCMicros < 0 || e.CPCMicros > maxMicros:
		return fieldError("cpc_micros", "must be an integer from 0 to 1e15")
	case e.CPCMicros != 0 && typ != event.TypeClick:
		return fieldError("cpc_micros", "only clicks carry a price")
	case len(e.UserAgent) > maxUserAgent:
		return fieldError("user_agent", "longer than 1024 bytes")
	case !e.Time.IsZero() && (e.Time.Year() < 1970 || e.Time.Year() > 9999):
		return fieldError("event_time", "must be within years 1970-9999")
	}
	return nil
}

const idRule = "must be 1-64 characters of [A-Za-z0-9._:-]"

// FieldError is an event the client refused before sending it: the field and what is wrong.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

func fieldError(field, reason string) error { return &FieldError{Field: field, Reason: reason} }

func (e *Event) wire() wireEvent {
	w := wireEvent{
		Type: e.Type, AdID: e.AdID, ImpressionID: e.ImpressionID, EventID: e.EventID, UserID: e.UserID,
		CatalogID: e.CatalogID, CPCMicros: e.CPCMicros, UserAgent: e.UserAgent,
	}
	if !e.Time.IsZero() {
		w.EventTime = e.Time.UTC().Format(time.RFC3339Nano)
	}
	return w
}

// Result is what the server made of a SendEvents call, summed over the requests it took.
type Result struct {
	// Accepted counts events recorded by this call.
	Accepted int
	// Duplicates counts valid events whose idempotency key was already recorded: sent
	// before, repeated within the batch, or recorded by an attempt of this call whose answer
	// was lost (so after a retry, Accepted+Duplicates is exact, the split between them is not).
	Duplicates int
	// Rejected counts invalid events, refused by the client or by the server.
	Rejected int
	// Errors lists the rejected events by their index in the slice given to SendEvents,
	// in index order. The server lists at most 1000 rejections per request, so Errors may be
	// shorter than Rejected when a request had more.
	Errors []EventError
}

// EventError is why one event was rejected.
type EventError struct {
	Index   int    // in the slice given to SendEvents
	Code    string // invalid_argument, or not_found for an unknown ad
	Message string // names the field
}

func (e EventError) Error() string {
	return fmt.Sprintf("event %d: %s: %s", e.Index, e.Code, e.Message)
}

// batchAnswer is the JSON answer of POST /events.
type batchAnswer struct {
	Accepted   int `json:"accepted"`
	Duplicates int `json:"duplicates"`
	Rejected   int `json:"rejected"`
	Errors     []struct {
		Line    int    `json:"line"`
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
}

// SendEvents posts events as NDJSON to POST /events, in as many requests as the server's
// limits need, one after another. Events that fail Validate are not sent and are reported in
// Result.Errors with the server's.
//
// Each request is retried after network errors, 429 (waiting at least its Retry-After) and
// 5xx, with capped exponential backoff and jitter, until it succeeds, Config.MaxAttempts is
// reached or ctx is done. Retrying is safe: the server deduplicates by idempotency key.
//
// On error, the Result counts the requests that did succeed. Sending the whole slice again
// is safe and is the simplest recovery: what was recorded comes back as duplicates.
func (c *Client) SendEvents(ctx context.Context, events []Event) (Result, error) {
	var res Result
	lines := make([][]byte, len(events))
	for i := range events {
		err := events[i].Validate()
		if err == nil {
			lines[i], err = json.Marshal(events[i].wire())
			if err == nil && len(lines[i]) > maxLineBytes {
				err = fieldError("body", "event longer than "+strconv.Itoa(maxLineBytes)+" bytes")
			}
		}
		if err != nil {
			lines[i] = nil
			res.Rejected++
			res.Errors = append(res.Errors, EventError{Index: i, Code: CodeInvalidArgument, Message: err.Error()})
		}
	}
	// Split into chunks of at most maxBatch events and maxBytes bytes (each line plus '\n').
	var chunk []int
	size := 0
	flush := func() error {
		if len(chunk) == 0 {
			return nil
		}
		err := c.sendChunk(ctx, lines, chunk, &res)
		chunk, size = chunk[:0], 0
		return err
	}
	for i, l := range lines {
		if l == nil {
			continue
		}
		if len(chunk) > 0 && (len(chunk) >= c.maxBatch || size+len(l)+1 > c.maxBytes) {
			if err := flush(); err != nil {
				sortErrors(&res)
				return res, err
			}
		}
		chunk = append(chunk, i)
		size += len(l) + 1
	}
	err := flush()
	sortErrors(&res)
	return res, err
}

func sortErrors(res *Result) {
	slices.SortStableFunc(res.Errors, func(a, b EventError) int { return a.Index - b.Index })
}

// sendChunk posts the lines at idx as one request. A 413 (the server's --max-body is smaller
// than Config.MaxBatchBytes) halves the chunk and tries again.
func (c *Client) sendChunk(ctx context.Context, lines [][]byte, idx []int, res *Result) error {
	size := 0
	for _, i := range idx {
		size += len(lines[i]) + 1
	}
	body := make([]byte, 0, size)
	for _, i := range idx {
		body = append(body, lines[i]...)
		body = append(body, '\n')
	}
	var ans batchAnswer
	err := c.do(ctx, request{method: http.MethodPost, path: "/events", ctype: "application/x-ndjson", body: body, mode: retrySafe}, &ans)
	var ae *APIError
	if errors.As(err, &ae) && ae.Status == http.StatusRequestEntityTooLarge && len(idx) > 1 {
		half := len(idx) / 2
		if err := c.sendChunk(ctx, lines, idx[:half], res); err != nil {
			return err
		}
		return c.sendChunk(ctx, lines, idx[half:], res)
	}
	if err != nil {
		return fmt.Errorf("send %d events: %w", len(idx), err)
	}
	res.Accepted += ans.Accepted
	res.Duplicates += ans.Duplicates
	res.Rejected += ans.Rejected
	for _, le := range ans.Errors {
		// Every line of the body is an event, so line n is idx[n-1].
		if le.Line < 1 || le.Line > len(idx) {
			continue
		}
		res.Errors = append(res.Errors, EventError{Index: idx[le.Line-1], Code: le.Code, Message: le.Message})
	}
	return nil
}
