// Package query serves the analytics API: GET /metrics (time series of ads, campaigns or
// advertisers, read from the metric store) and GET /metrics/top (the top N over the last
// minutes, from the in-memory index of package topn). It is the read end of the pipeline:
// aggregate -> metric store -> query. Embedded, both also show what the aggregator counted
// but has not committed yet (Options.Pending; the index is fed as the aggregator counts), so
// an acknowledged event is visible within milliseconds whatever the commit interval.
//
// Invariants:
//   - Tenancy: an advertiser key only ever sees its own advertiser's objects. Naming any
//     other (or unknown) id answers 404 naming it, before anything is read, so a key cannot
//     probe which ids exist; /metrics/top is implicitly filtered to the key's advertiser.
//     Admin keys see everything (unknown ids simply have zeros). Every other caller gets 401
//     or 403.
//   - Responses follow API.md exactly: /metrics has one series per requested id in request
//     order (an id named twice is answered once, where it first appears), every bucket of the
//     aligned range, and echoes the aligned range and the normalised interval; /metrics/top
//     lists only positive values, highest first, ties by id ascending.
//   - Every rejected request is a 4xx naming the bad parameter; nothing a caller sends makes
//     the handlers panic or do unbounded work (ids, points per series, points per response
//     and windows are bounded before anything is read).
//   - Pending counts are added exactly: each event once, whether its commit lands before,
//     during or after the read (metricstore/pending.go). A point that includes any is not
//     final and not reconciled; finality and reconciliation describe the committed state.
//   - What a request holds does not grow with its response: /metrics reads the store in
//     chunks of at most ChunkPoints points and writes each before reading the next. Every
//     wait has a deadline: store and index reads StoreTimeout, each piece of a response
//     WriteIdle, a whole response WriteTimeout, so a client that stops reading is cut off.
package query

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/adpulse/adpulse/internal/httpapi"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/query/topn"
)

// Owners tells who owns ads and campaigns (the server adapts the catalog to it). Advertiser
// ownership never changes; an ad's campaign may.
type Owners = topn.Owners

// TopIndex answers top-N queries; *topn.Index implements it.
type TopIndex interface {
	Top(ctx context.Context, q topn.Query) ([]topn.Item, error)
}

var _ TopIndex = (*topn.Index)(nil)

// Options configure a Handler. Store and Owners are required.
type Options struct {
	Store  metricstore.Store
	Index  TopIndex // nil: GET /metrics/top answers 503
	Owners Owners
	// Pending, if set, is the writer whose uncommitted counts /metrics adds to the store's
	// (the embedded aggregator): an event is visible as soon as it is counted, not when it
	// is committed. Points with pending counts are not final. Spend and conversions come
	// from their own stages' commits only.
	Pending metricstore.PendingReader
	// PendingWait bounds how long a request waits for Pending to count what the log held
	// when the request came (default 100ms): within it, a request sees every event
	// acknowledged before it; past it (a replay, a backlog) it answers with what is counted.
	PendingWait time.Duration
	Now         func() time.Time // default time.Now
	Logger      *slog.Logger

	// StoreTimeout bounds each read of the store or the index (default 30s).
	StoreTimeout time.Duration
	// WriteIdle bounds the writing of each piece of a response (default 10s): a client that
	// reads nothing for that long is cut off. WriteTimeout bounds a whole response (default
	// 2m: the largest response, MaxTotalPoints points of about 150 bytes, at 128 KB/s).
	WriteIdle, WriteTimeout time.Duration
}

// Defaults of Options.
const (
	DefaultStoreTimeout = 30 * time.Second
	DefaultPendingWait  = 100 * time.Millisecond
	DefaultWriteIdle    = 10 * time.Second
	DefaultWriteTimeout = 2 * time.Minute
)

// Stats are the handler's counters since New.
type Stats struct {
	MetricsRequests int64 // GET /metrics answered 200
	TopRequests     int64 // GET /metrics/top answered 200
	Rejected        int64 // 4xx answers
	Failed          int64 // 5xx answers
}

// Handler serves the analytics endpoints.
type Handler struct {
	opts Options

	zoneMu sync.Mutex
	zones  map[string]*time.Location // loaded zones; only valid names enter, so it is bounded

	bufs sync.Pool // *[]byte: response buffers of /metrics

	metricsOK, topOK, rejected, failed atomic.Int64
}

// New returns a Handler.
func New(opts Options) (*Handler, error) {
	if opts.Store == nil {
		return nil, errors.New("query: Options.Store is required")
	}
	if opts.Owners == nil {
		return nil, errors.New("query: Options.Owners is required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.PendingWait <= 0 {
		opts.PendingWait = DefaultPendingWait
	}
	if opts.StoreTimeout <= 0 {
		opts.StoreTimeout = DefaultStoreTimeout
	}
	if opts.WriteIdle <= 0 {
		opts.WriteIdle = DefaultWriteIdle
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	return &Handler{opts: opts, zones: make(map[string]*time.Location)}, nil
}

// Register adds GET /metrics and GET /metrics/top to mux.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /metrics", h.serveMetrics)
	mux.HandleFunc("GET /metrics/top", h.serveTop)
}

// Stats returns the counters.
func (h *Handler) Stats() Stats {
	return Stats{MetricsRequests: h.metricsOK.Load(), TopRequests: h.topOK.Load(), Rejected: h.rejected.Load(), Failed: h.failed.Load()}
}

// catchUp lets Options.Pending count what the log acknowledged before the request, within
// PendingWait; a timeout is not an error (the answer is as fresh as the aggregator is).
func (h *Handler) catchUp(r *http.Request) {
	if h.opts.Pending == nil {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.opts.PendingWait)
	defer cancel()
	if err := h.opts.Pending.CatchUp(ctx); err != nil && ctx.Err() == nil {
		h.opts.Logger.Warn("waiting for the aggregator to count the log failed", "err", err)
	}
}

// zone loads a time zone, caching it: LoadLocation reads the zone database every time.
func (h *Handler) zone(name string) (*time.Location, error) {
	h.zoneMu.Lock()
	loc, ok := h.zones[name]
	h.zoneMu.Unlock()
	if ok {
		return loc, nil
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, err
	}
	h.zoneMu.Lock()
	if len(h.zones) < 4096 { // there are about 600 zone names; this only guards the map
		h.zones[name] = loc
	}
	h.zoneMu.Unlock()
	return loc, nil
}

// notFound is the answer for an id a caller may not see: the same as for one that does not
// exist.
func notFound(param, kind, id string) error {
	return httpapi.Errorf(httpapi.CodeNotFound, param+": "+kind+" "+quoteID(id)+" not found")
}

// owns reports whether advertiser adv owns the object id at level l.
func (h *Handler) owns(adv string, l metricstore.Level, id string) bool {
	var owner string
	var ok bool
	switch l {
	case metricstore.LevelAd:
		owner, ok = h.opts.Owners.AdAdvertiser(id)
	case metricstore.LevelCampaign:
		owner, ok = h.opts.Owners.CampaignAdvertiser(id)
	default:
		owner, ok = id, true
	}
	return ok && owner == adv
}

// fail writes err, counting it; internal errors are logged, never shown.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ae *httpapi.Error
	if errors.As(err, &ae) {
		if ae.Code == httpapi.CodeUnavailable || ae.Code == httpapi.CodeInternal {
			h.failed.Add(1)
		} else {
			h.rejected.Add(1)
		}
	} else {
		h.failed.Add(1)
		if r.Context().Err() == nil {
			h.opts.Logger.Error("analytics query failed", "path", r.URL.Path, "query", r.URL.RawQuery, "err", err)
		}
	}
	httpapi.WriteError(w, err)
}

// storeError maps a metric store error to the API.
func storeError(err error) error {
	switch {
	case errors.Is(err, metricstore.ErrExpired):
		return httpapi.BadField("start_time", trimPrefix(err)+"; use a coarser interval or a later start_time")
	case errors.Is(err, metricstore.ErrInvalidQuery):
		return httpapi.BadField("start_time", trimPrefix(err))
	case errors.Is(err, metricstore.ErrClosed):
		return httpapi.Errorf(httpapi.CodeUnavailable, "metric store: shutting down")
	case errors.Is(err, context.DeadlineExceeded):
		return httpapi.Errorf(httpapi.CodeUnavailable, "metric store: no answer in time, retry")
	}
	return fmt.Errorf("metric store query: %w", err)
}

func trimPrefix(err error) string {
	s := err.Error()
	const p = "metricstore: "
	if len(s) > len(p) && s[:len(p)] == p {
		return s[len(p):]
	}
	return s
}
