package ingest

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/adpulse/adpulse/internal/clicktoken"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/httpapi"
)

// Ad is what the hot path needs to know about an ad, from the in-memory catalog index.
type Ad struct {
	CampaignID, AdvertiserID, LandingURL, CatalogID string
	BidMicros                                       int64
	// ClickPriceMicros, when > 0, is the price a click that carries none (no auction price)
	// is recorded with: an auto-CPC campaign's price is decided here, once, and travels in
	// the event, so charging it again on replay gives the same money.
	ClickPriceMicros int64
}

// Ads looks ads up without touching a database.
type Ads interface {
	LookupAd(id string) (Ad, bool)
}

// Bots tells general invalid traffic (bots, crawlers, prefetches, link previews, bad user
// agents, data-centre addresses) from people; ivt.Filter is the implementation.
type Bots interface {
	// Request returns why a /c, /i or /click request is invalid traffic, or
	// event.ReasonNone.
	Request(r *http.Request) event.Reason
	// UserAgent returns why an event reported with this user agent is invalid traffic, or
	// event.ReasonNone: the verdict of POST /events, where only the user agent of the
	// original request is known.
	UserAgent(userAgent string) event.Reason
}

// Options configures the handlers.
type Options struct {
	Intake    *Intake
	Ads       Ads
	Tokens    *clicktoken.Keyring
	Bots      Bots
	PublicURL string // base of click and impression URLs, e.g. https://t.example.com
	ClickTTL  time.Duration
	Limits    BatchLimits
	MaxBody   int64 // bytes of a POST /events body
	// BodyIdle and BodyTimeout bound the wait for a POST /events body: a client that sends
	// nothing for BodyIdle, or has not sent the whole body after BodyTimeout, is answered and
	// cut off. Defaults 10s and 60s (the server's ReadTimeout).
	BodyIdle, BodyTimeout time.Duration
	// WriteTimeout bounds the writing of a response once it is ready. Default 10s: every
	// response of these handlers is small.
	WriteTimeout time.Duration
	Now          func() time.Time
	Logger       *slog.Logger
}

// Defaults of Options.
const (
	DefaultBodyIdle     = 10 * time.Second
	DefaultBodyTimeout  = 60 * time.Second
	DefaultWriteTimeout = 10 * time.Second
)

// Handlers serves the ingest endpoints of the API contract.
type Handlers struct {
	o       Options
	parsers sync.Pool // *batchParser
	scratch sync.Pool // *batchScratch
}

// batchScratch is the reusable memory of one POST /events request.
type batchScratch struct {
	body     []byte
	lines    []ParsedLine
	events   []event.Event
	outcomes []Outcome
}

// maxPooledBody and maxPooledLines keep one huge request from pinning its buffers in the
// pool: a 300 KB body of 100,000 tiny lines needs 37 MB of lines and events.
const (
	maxPooledBody  = 4 << 20
	maxPooledLines = 16 << 10
)

func (h *Handlers) putScratch(sc *batchScratch) {
	if cap(sc.body) > maxPooledBody || cap(sc.lines) > maxPooledLines || cap(sc.events) > maxPooledLines {
		return
	}
	clear(sc.lines) // drop references to this request's strings
	clear(sc.events)
	h.scratch.Put(sc)
}

// NewHandlers returns the ingest handlers.
func NewHandlers(o Options) *Handlers {
	if o.BodyIdle <= 0 {
		o.BodyIdle = DefaultBodyIdle
	}
	if o.BodyTimeout <= 0 {
		o.BodyTimeout = DefaultBodyTimeout
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	return &Handlers{o: o}
}

// Register adds the ingest routes to mux: the event endpoints and POST /api/v1/click-urls.
func (h *Handlers) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /c/{token}", h.clickRedirect)
	mux.HandleFunc("GET /i/{token}", h.impressionPixel)
	mux.HandleFunc("POST /click", h.appClick)
	mux.HandleFunc("POST /events", h.events)
	h.RegisterClickURLs(mux)
}

// RegisterClickURLs adds only POST /api/v1/click-urls, which needs the catalog and the click
// keys but no intake: the /api/v1 routes answer on every process, whatever its roles.
func (h *Handlers) RegisterClickURLs(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/v1/click-urls", h.clickURLs)
}

// transparentGIF is the smallest valid 1x1 transparent GIF.
var transparentGIF = []byte("GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")

var errBadToken = httpapi.BadField("token", "malformed or bad signature")

// recordOne records a single event; it is the click and pixel path.
func (h *Handlers) recordOne(ctx context.Context, e *event.Event, now time.Time) error {
	evs := [1]event.Event{*e}
	var out [1]Outcome
	if err := h.o.Intake.Record(ctx, evs[:], now, out[:]); err != nil {
		h.o.Logger.Warn("record event", "err", err)
		return httpapi.Errorf(httpapi.CodeUnavailable, "event log unavailable, retry")
	}
	return nil
}

// recordToken verifies the token of a /c or /i request and resolves its ad: the shared start
// of both. It writes the error response itself and returns ok=false when there is none to
// record. HEAD requests (link checkers, unfurlers) learn the answer but record nothing.
func (h *Handlers) recordToken(w http.ResponseWriter, r *http.Request, typ event.Type) (ad Ad, ok bool) {
	w.Header()["Cache-Control"] = noStore
	tok, err := h.o.Tokens.Verify(r.PathValue("token"))
	if err != nil {
		httpapi.WriteError(w, errBadToken)
		return ad, false
	}
	if ad, ok = h.o.Ads.LookupAd(tok.AdID); !ok {
		httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeNotFound, "ad_id: no such ad"))
		return ad, false
	}
	now := h.o.Now()
	e := event.Event{Type: typ, ImpressionID: tok.ImpressionID, UserID: tok.UserID}
	switch {
	case typ == event.TypeClick && tok.Expired(now, h.o.ClickTTL):
		e.Invalid = event.ReasonExpired
	default:
		e.Invalid = h.o.Bots.Request(r)
	}
	h.setSource(r, &e, "")
	if typ == event.TypeClick {
		e.PriceMicros = tok.PriceMicros
	}
	fill(&e, tok.AdID, ad, now)
	if r.Method != http.MethodHead {
		if err := h.recordOne(r.Context(), &e, now); err != nil {
			httpapi.WriteError(w, err)
			return ad, false
		}
	}
	return ad, true
}

func (h *Handlers) clickRedirect(w http.ResponseWriter, r *http.Request) {
	if ad, ok := h.recordToken(w, r, event.TypeClick); ok {
		redirect(w, ad.LandingURL)
	}
}

// redirect answers 302 to a landing URL. The URL always comes from the catalog, which only
// stores absolute http(s) URLs: nothing in the request can choose where a person is sent.
func redirect(w http.ResponseWriter, landingURL string) {
	h := w.Header()
	h["Location"] = []string{landingURL}
	h["Cache-Control"] = noStore
	h["Referrer-Policy"] = noReferrer
	w.WriteHeader(http.StatusFound)
}

// Header values shared by every /c and /i response, assigned to the canonical keys directly:
// Header.Set would canonicalize the key and allocate a new one-element slice per request.
// Their capacity is their length, so an Add appends to a copy; nothing may write into them.
var (
	noStore    = []string{"no-store"}[:1:1]
	noReferrer = []string{"no-referrer"}[:1:1]
)

func fill(e *event.Event, adID string, ad Ad, now time.Time) {
	e.AdID, e.CampaignID, e.AdvertiserID = adID, ad.CampaignID, ad.AdvertiserID
	if e.Type == event.TypeClick && e.PriceMicros == 0 && ad.ClickPriceMicros > 0 {
		e.PriceMicros = ad.ClickPriceMicros
	}
	if e.CatalogID == "" {
		e.CatalogID = ad.CatalogID
	}
	e.Time, e.RecvTime = now.UnixMicro(), now.UnixMicro()
}

func (h *Handlers) impressionPixel(w http.ResponseWriter, r *http.Request) {
	if _, ok := h.recordToken(w, r, event.TypeImpression); !ok {
		return
	}
	w.Header().Set("Content-Type", "image/gif")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(transparentGIF)
}

// appClick is POST /click: a click an app reports, answered with the landing URL.
func (h *Handlers) appClick(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	var req struct {
		AdID         string `json:"ad_id"`
		ImpressionID string `json:"impression_id"`
		UserID       string `json:"user_id"`
		DeviceID     string `json:"device_id"`
	}
	if err := httpapi.DecodeJSON(w, r, 64<<10, &req); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if req.ImpressionID == "" {
		req.ImpressionID = r.Header.Get("Idempotency-Key")
	}
	if req.AdID == "" {
		httpapi.WriteError(w, httpapi.BadField("ad_id", "is required"))
		return
	}
	if req.ImpressionID == "" {
		httpapi.WriteError(w, httpapi.BadField("impression_id", "is required (or an Idempotency-Key header): clicks must be idempotent"))
		return
	}
	e := event.Event{Type: event.TypeClick, AdID: req.AdID, ImpressionID: req.ImpressionID, UserID: req.UserID, DeviceID: req.DeviceID}
	if err := e.Validate(); err != nil {
		fe := err.(*event.FieldError)
		httpapi.WriteError(w, httpapi.BadField(fe.Field, fe.Reason))
		return
	}
	ad, ok := h.o.Ads.LookupAd(req.AdID)
	if !ok {
		httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeNotFound, "ad_id: no such ad"))
		return
	}
	e.Invalid = h.o.Bots.Request(r)
	h.setSource(r, &e, req.DeviceID)
	now := h.o.Now()
	fill(&e, req.AdID, ad, now)
	if err := h.recordOne(r.Context(), &e, now); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	redirect(w, ad.LandingURL)
}

// batchResponse is the answer to POST /events.
type batchResponse struct {
	Accepted   int         `json:"accepted"`
	Duplicates int         `json:"duplicates"`
	Rejected   int         `json:"rejected"`
	Errors     []LineError `json:"errors"`
}

// maxListedErrors caps the errors listed in one response; Rejected still counts them all.
const maxListedErrors = 1000

func (h *Handlers) events(w http.ResponseWriter, r *http.Request) {
	if _, err := httpapi.Require(r, "an admin or ingest key", httpapi.RoleAdmin, httpapi.RoleIngest); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	sc, _ := h.scratch.Get().(*batchScratch)
	if sc == nil {
		sc = &batchScratch{}
	}
	defer h.putScratch(sc)
	// The body is read as it arrives, never allocated from Content-Length: a client that
	// announces 10 MiB and sends nothing costs a connection, not 10 MiB.
	body, err := httpapi.ReadBody(w, r, h.o.MaxBody, sc.body, h.o.BodyIdle, h.o.BodyTimeout)
	sc.body = body
	httpapi.SetWriteTimeout(w, h.o.WriteTimeout)
	if err != nil {
		var tooLarge *http.MaxBytesError
		var timeout *httpapi.BodyTimeoutError
		switch {
		case errors.As(err, &tooLarge):
			httpapi.WriteError(w, httpapi.Errorf(httpapi.CodePayloadTooLarge, "body: larger than the limit of "+itoa(int(h.o.MaxBody))+" bytes; nothing was accepted"))
		case errors.As(err, &timeout):
			httpapi.WriteError(w, httpapi.BadField("body", "timed out: no bytes for "+h.o.BodyIdle.String()+", or not complete within "+h.o.BodyTimeout.String()+"; nothing was accepted"))
		default:
			httpapi.WriteError(w, httpapi.BadField("body", "could not be read"))
		}
		return
	}
	now := h.o.Now()
	bp, _ := h.parsers.Get().(*batchParser)
	if bp == nil {
		bp = &batchParser{}
	}
	lines, err := bp.parse(body, now, h.o.Limits, sc.lines)
	h.parsers.Put(bp)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	sc.lines = lines

	resp := batchResponse{Errors: []LineError{}}
	evs := sc.events[:0]
	for i := range lines {
		pl := &lines[i]
		if pl.Err == nil && pl.Event.Type == event.TypeConversion {
			evs = append(evs, pl.Event) // no ad: the attribution stage finds the one it credits
			continue
		}
		if pl.Err == nil {
			ad, ok := h.o.Ads.LookupAd(pl.Event.AdID)
			if !ok {
				pl.Err = &LineError{Line: pl.Line, Code: httpapi.CodeNotFound, Message: "ad_id: no such ad"}
			} else {
				e := pl.Event
				if pl.UserAgent != "" && (e.Type == event.TypeClick || e.Type == event.TypeImpression) {
					e.Invalid = h.o.Bots.UserAgent(pl.UserAgent)
				}
				h.judgeAddress(&e)
				t, recv := e.Time, e.RecvTime
				fill(&e, e.AdID, ad, now)
				e.Time, e.RecvTime = t, recv
				evs = append(evs, e)
				continue
			}
		}
		resp.Rejected++
		if len(resp.Errors) < maxListedErrors {
			resp.Errors = append(resp.Errors, *pl.Err)
		}
	}
	sc.events = evs
	out := append(sc.outcomes[:0], make([]Outcome, len(evs))...)
	sc.outcomes = out
	if err := h.o.Intake.Record(r.Context(), evs, now, out); err != nil {
		h.o.Logger.Warn("record batch", "events", len(evs), "err", err)
		httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeUnavailable, "event log unavailable, nothing was accepted; retry the batch"))
		return
	}
	for _, o := range out {
		if o == Accepted {
			resp.Accepted++
		} else {
			resp.Duplicates++
		}
	}
	httpapi.SetWriteTimeout(w, h.o.WriteTimeout) // the wait for durability may have used up the last one
	httpapi.WriteJSON(w, http.StatusOK, resp)
}

// clickURLs is POST /api/v1/click-urls: signed click and impression URLs for an ad server.
func (h *Handlers) clickURLs(w http.ResponseWriter, r *http.Request) {
	if err := httpapi.RequireAdmin(r); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	var req struct {
		AdID         string `json:"ad_id"`
		ImpressionID string `json:"impression_id"`
		UserID       string `json:"user_id"`
		CPCMicros    *int64 `json:"cpc_micros"`
	}
	if err := httpapi.DecodeJSON(w, r, 64<<10, &req); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	tok := clicktoken.Claims{AdID: req.AdID, ImpressionID: req.ImpressionID, UserID: req.UserID, IssuedAt: h.o.Now()}
	for _, f := range [...]struct{ name, v string }{{"ad_id", req.AdID}, {"impression_id", req.ImpressionID}} {
		if f.v == "" {
			httpapi.WriteError(w, httpapi.BadField(f.name, "is required"))
			return
		}
	}
	for _, f := range [...]struct{ name, v string }{{"ad_id", req.AdID}, {"impression_id", req.ImpressionID}, {"user_id", req.UserID}} {
		if f.v != "" && !event.ValidID(f.v) {
			httpapi.WriteError(w, httpapi.BadField(f.name, "must be 1-64 characters of [A-Za-z0-9._:-]"))
			return
		}
	}
	if req.CPCMicros != nil {
		if *req.CPCMicros <= 0 || *req.CPCMicros > maxMicros {
			httpapi.WriteError(w, httpapi.BadField("cpc_micros", "must be an integer from 1 to 1e15"))
			return
		}
		tok.PriceMicros = *req.CPCMicros
	}
	if _, ok := h.o.Ads.LookupAd(req.AdID); !ok {
		httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeNotFound, "ad_id: no such ad"))
		return
	}
	s, err := h.o.Tokens.Sign(tok)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	base := strings.TrimRight(h.o.PublicURL, "/")
	httpapi.WriteJSON(w, http.StatusOK, map[string]string{
		"click_url":      base + "/c/" + s,
		"impression_url": base + "/i/" + s,
		"expires_at":     httpapi.FormatTime(tok.IssuedAt.Add(h.o.ClickTTL)),
	})
}
