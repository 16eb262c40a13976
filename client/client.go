// Package client is the Go client of adpulse for ad servers and the teams that integrate with
// it. It does three things:
//
//   - Signs click and impression URLs offline (Signer), in the same token format as the
//     server, so an ad server makes no request per served ad.
//   - Sends events in batches (Client.SendEvents, Batcher) with retries, backoff and
//     splitting over the server's limits.
//   - Reads metrics, the top-N, the serving feed and user views, and reads and writes the
//     catalog (advertisers, campaigns, ads) and the click ledger, with typed structs.
//
// Retrying is safe because adpulse deduplicates every event by its idempotency key: the
// impression id for impressions and clicks (one of each per impression id), the event id for
// other interactions. A batch whose answer was lost, resent, counts each event once; the events
// the lost attempt recorded come back as duplicates. That is why SendEvents refuses, before
// sending anything, an event without its key.
//
// Errors from the server are *APIError, carrying the status, the contract's error code and,
// for 429, the Retry-After the server asked for.
//
// A Client and a Batcher are safe for concurrent use. The package uses nothing beyond the
// standard library and the server's own token and id code.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Defaults of Config.
const (
	DefaultMaxBatch       = 100_000  // the server's --max-batch default
	DefaultMaxBatchBytes  = 10 << 20 // the server's --max-body default
	DefaultMaxAttempts    = 8
	DefaultInitialBackoff = 100 * time.Millisecond
	DefaultMaxBackoff     = 10 * time.Second
	DefaultAttemptTimeout = 60 * time.Second
)

// Config configures a Client. Only BaseURL is required.
type Config struct {
	// BaseURL is where the adpulse API listens, e.g. "https://adpulse.example.com". A path
	// prefix (behind a proxy) is kept.
	BaseURL string
	// Key is sent as "Authorization: Bearer KEY": the admin key, an ingest key (POST /events
	// only) or an advertiser key (that advertiser's objects and metrics).
	Key string
	// HTTPClient makes the requests; nil means a client of its own with pooled connections.
	// It must not follow redirects for the catalog and query calls to see errors as they are;
	// none of the endpoints this package calls redirects.
	HTTPClient *http.Client

	// MaxBatch and MaxBatchBytes are the server's --max-batch and --max-body; SendEvents
	// splits larger batches. Zero means the server's defaults. If the server answers 413 all
	// the same, the batch is halved and sent again.
	MaxBatch      int
	MaxBatchBytes int

	// MaxAttempts bounds the attempts of one request (first try included); zero means
	// DefaultMaxAttempts, 1 turns retrying off. The context's deadline bounds them too.
	MaxAttempts int
	// Backoff before retry n (from 0) is a random duration in [d/2, d] with
	// d = min(MaxBackoff, InitialBackoff * 2^n), or the server's Retry-After if longer.
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// AttemptTimeout bounds one attempt, so a server that hangs costs one attempt, not the
	// whole deadline. Zero means DefaultAttemptTimeout.
	AttemptTimeout time.Duration
}

// Client calls the adpulse HTTP API. Make one with New; it is safe for concurrent use.
type Client struct {
	base     string // without a trailing slash
	key      string
	hc       *http.Client
	maxBatch int
	maxBytes int
	attempts int
	initial  time.Duration
	maxBack  time.Duration
	perTry   time.Duration
	// sleep waits d or until ctx is done; tests replace it to record the waits.
	sleep func(ctx context.Context, d time.Duration) error
}

// New returns a Client for cfg.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(cfg.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("adpulse client: BaseURL %q must be an absolute http or https URL", cfg.BaseURL)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("adpulse client: BaseURL %q must not have a query or fragment", cfg.BaseURL)
	}
	c := &Client{
		base:     strings.TrimRight(cfg.BaseURL, "/"),
		key:      cfg.Key,
		hc:       cfg.HTTPClient,
		maxBatch: orDefault(cfg.MaxBatch, DefaultMaxBatch),
		maxBytes: orDefault(cfg.MaxBatchBytes, DefaultMaxBatchBytes),
		attempts: orDefault(cfg.MaxAttempts, DefaultMaxAttempts),
		initial:  orDefault(cfg.InitialBackoff, DefaultInitialBackoff),
		maxBack:  orDefault(cfg.MaxBackoff, DefaultMaxBackoff),
		perTry:   orDefault(cfg.AttemptTimeout, DefaultAttemptTimeout),
		sleep:    sleepCtx,
	}
	if c.hc == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 64
		c.hc = &http.Client{Transport: t}
	}
	if c.maxBatch < 1 || c.maxBytes < 1 || c.attempts < 1 || c.initial <= 0 || c.maxBack <= 0 || c.perTry <= 0 {
		return nil, errors.New("adpulse client: batch limits, attempts, backoffs and timeouts must be positive")
	}
	return c, nil
}

func orDefault[T int | time.Duration](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

// Error codes of the contract, the Code of an APIError.
const (
	CodeInvalidArgument  = "invalid_argument"
	CodeUnauthenticated  = "unauthenticated"
	CodePermissionDenied = "permission_denied"
	CodeNotFound         = "not_found"
	CodePayloadTooLarge  = "payload_too_large"
	CodeRateLimited      = "rate_limited"
	CodeUnavailable      = "unavailable"
	CodeInternal         = "internal"
)

// APIError is an error answer of the server: its status and the body
// {"error":{"code":...,"message":...}}. A body not in that shape (from a proxy, say) gets the
// code of its status and the start of the body as message.
type APIError struct {
	Status     int
	Code       string
	Message    string
	RetryAfter time.Duration // from the Retry-After header (429, sometimes 503); 0 if none
}

func (e *APIError) Error() string {
	return fmt.Sprintf("adpulse: %d %s: %s", e.Status, e.Code, e.Message)
}

// Temporary reports whether the same request may succeed later: 429 and 5xx.
func (e *APIError) Temporary() bool {
	return e.Status == http.StatusTooManyRequests || e.Status >= 500
}

// codeOfStatus is the contract's code for a status, for error bodies not in its shape.
func codeOfStatus(status int) string {
	switch status {
	case 400:
		return CodeInvalidArgument
	case 401:
		return CodeUnauthenticated
	case 403:
		return CodePermissionDenied
	case 404:
		return CodeNotFound
	case 413:
		return CodePayloadTooLarge
	case 429:
		return CodeRateLimited
	case 502, 503, 504: // from a proxy in front of adpulse
		return CodeUnavailable
	}
	return CodeInternal
}

func parseAPIError(resp *http.Response, now time.Time) *APIError {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &APIError{Status: resp.StatusCode, RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), now)}
	var body struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(b, &body) == nil && body.Error.Code != "" {
		e.Code, e.Message = body.Error.Code, body.Error.Message
		return e
	}
	e.Code = codeOfStatus(resp.StatusCode)
	e.Message = strings.TrimSpace(string(b))
	if len(e.Message) > 200 {
		e.Message = e.Message[:200] + "..."
	}
	if e.Message == "" {
		e.Message = http.StatusText(resp.StatusCode)
	}
	return e
}

// parseRetryAfter reads delay-seconds or an HTTP date (RFC 9110 §10.2.3).
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		if s < 0 {
			return 0
		}
		return time.Duration(min(s, 86400)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// retryMode says which failures a request may be retried after.
type retryMode int

const (
	// retrySafe: the request is idempotent (a read, an upsert, an event batch keyed by
	// idempotency keys): retry after network errors, 429 and 5xx.
	retrySafe retryMode = iota
	// retryRefused: retry only when the server certainly did nothing (429: the rate limiter
	// refuses before any work). For requests that create something new each time.
	retryRefused
)

// request is one API call; body is resent unchanged on every attempt.
type request struct {
	method, path string
	query        url.Values
	ctype        string
	body         []byte
	mode         retryMode
}

// do runs req with retries and decodes a 2xx JSON answer into out (when not nil). It returns
// the last error: an *APIError, a network error, or the context's error once the context is
// done (wrapping the last failure).
func (c *Client) do(ctx context.Context, req request, out any) error {
	u := c.base + req.path
	if len(req.query) > 0 {
		u += "?" + req.query.Encode()
	}
	var last error
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			wait := c.backoff(attempt - 1)
			var ae *APIError
			if errors.As(last, &ae) && ae.RetryAfter > wait {
				wait = ae.RetryAfter
			}
			// Waiting past the deadline only to fail is worse than failing now with the
			// server's own answer.
			if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
				return last
			}
			if err := c.sleep(ctx, wait); err != nil {
				return fmt.Errorf("%w (last attempt: %w)", err, last)
			}
		}
		err := c.attempt(ctx, u, req, out)
		if err == nil {
			return nil
		}
		last = err
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last attempt: %w)", ctx.Err(), last)
		}
		if attempt+1 >= c.attempts || !retryable(err, req.mode) {
			return last
		}
	}
}

func retryable(err error, mode retryMode) bool {
	var ae *APIError
	if errors.As(err, &ae) {
		if mode == retryRefused {
			return ae.Status == http.StatusTooManyRequests
		}
		return ae.Temporary()
	}
	var de *decodeError
	if errors.As(err, &de) {
		return false // a 2xx the client cannot read will not read better the next time
	}
	// A network error: the request may or may not have been done.
	return mode == retrySafe
}

// decodeError is a 2xx answer whose body is not what the contract says.
type decodeError struct{ err error }

func (e *decodeError) Error() string { return "adpulse client: decode answer: " + e.err.Error() }
func (e *decodeError) Unwrap() error { return e.err }

func (c *Client) attempt(ctx context.Context, u string, req request, out any) error {
	ctx, cancel := context.WithTimeout(ctx, c.perTry)
	defer cancel()
	var body io.Reader
	if req.body != nil {
		body = bytes.NewReader(req.body)
	}
	hr, err := http.NewRequestWithContext(ctx, req.method, u, body)
	if err != nil {
		return err
	}
	if req.ctype != "" {
		hr.Header.Set("Content-Type", req.ctype)
	}
	hr.Header.Set("Accept", "application/json")
	hr.Header.Set("User-Agent", "adpulse-go-client/1")
	if c.key != "" {
		hr.Header.Set("Authorization", "Bearer "+c.key)
	}
	resp, err := c.hc.Do(hr)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return parseAPIError(resp, time.Now())
	}
	// Read the whole answer before decoding: a connection dropped mid-body is a network
	// error (retried), not a decode error (not retried).
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return &decodeError{err}
	}
	return nil
}

// backoff is the jittered wait before retry n (from 0).
func (c *Client) backoff(n int) time.Duration {
	d := c.maxBack
	if n < 30 && c.initial<<n < c.maxBack && c.initial<<n > 0 {
		d = c.initial << n
	}
	return d/2 + rand.N(d/2+1)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
