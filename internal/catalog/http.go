package catalog

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/httpapi"
)

// HandlerOptions configure the catalog's HTTP handlers. Zero values take the defaults.
type HandlerOptions struct {
	// CampaignState gives GET /api/v1/campaigns/{id} its "serving_status" and "budget" (the
	// billing package owns both). When nil, the serving status comes from status and schedule
	// alone and the budget shows zero spend.
	CampaignState func(ctx context.Context, c Campaign) (servingStatus string, budget any)
	MaxBodyBytes  int64 // single-object bodies; default 64 KiB
	MaxBulkBytes  int64 // POST /api/v1/bulk/ads; default 32 MiB
	MaxBulkLines  int   // default 100,000
	BulkBatchSize int   // ads per transaction; default 1,000
	Logger        *slog.Logger

	// CampaignPerformance, when set, gives campaign reads their "performance" (conversions,
	// their value, spend and ROAS; the attribution package owns it).
	CampaignPerformance func(ctx context.Context, c Campaign) any
}

// Handler serves the catalog endpoints of the API. It expects the principal in the request
// context (Catalog.Middleware).
type Handler struct {
	c *Catalog
	o HandlerOptions
}

// maxBulkLineBytes bounds one NDJSON line: a 2048-byte landing URL fully \u-escaped plus the
// other fields fits.
const maxBulkLineBytes = 64 << 10

// maxListedErrors caps the errors listed in a bulk response (as for POST /events); Rejected
// still counts them all.
const maxListedErrors = 1000

// NewHandler returns the catalog's HTTP handlers.
func NewHandler(c *Catalog, o HandlerOptions) *Handler {
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = 64 << 10
	}
	if o.MaxBulkBytes <= 0 {
		o.MaxBulkBytes = 32 << 20
	}
	if o.MaxBulkLines <= 0 {
		o.MaxBulkLines = 100_000
	}
	if o.BulkBatchSize <= 0 {
		o.BulkBatchSize = 1000
	}
	if o.Logger == nil {
		o.Logger = c.log
	}
	return &Handler{c: c, o: o}
}

// Register adds the catalog's routes to mux.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.HandleFunc("PUT /api/v1/advertisers/{id}", h.putAdvertiser)
	mux.HandleFunc("GET /api/v1/advertisers/{id}", h.getAdvertiser)
	mux.HandleFunc("PUT /api/v1/campaigns/{id}", h.putCampaign)
	mux.HandleFunc("GET /api/v1/campaigns/{id}", h.getCampaign)
	mux.HandleFunc("PUT /api/v1/ads/{id}", h.putAd)
	mux.HandleFunc("GET /api/v1/ads/{id}", h.getAd)
	mux.HandleFunc("POST /api/v1/bulk/ads", h.bulkAds)
	mux.HandleFunc("POST /api/v1/advertisers/{id}/keys", h.createAdvertiserKey)
	mux.HandleFunc("POST /api/v1/ingest-keys", h.createIngestKey)
}

// Wire shapes. Optional values are null when unset.

type advertiserJSON struct {
	ID                     string  `json:"id"`
	Name                   string  `json:"name"`
	Timezone               string  `json:"timezone"`
	AttributionClickWindow *string `json:"attribution_click_window"`
	AttributionViewWindow  *string `json:"attribution_view_window"`
	CreatedAt              string  `json:"created_at"`
	UpdatedAt              string  `json:"updated_at"`
}

type campaignJSON struct {
	ID                string  `json:"id"`
	AdvertiserID      string  `json:"advertiser_id"`
	Name              string  `json:"name"`
	Status            Status  `json:"status"`
	CPCBidMicros      int64   `json:"cpc_bid_micros"`
	DailyBudgetMicros int64   `json:"daily_budget_micros"`
	TotalBudgetMicros int64   `json:"total_budget_micros"`
	StartTime         *string `json:"start_time"`
	EndTime           *string `json:"end_time"`
	AutoCPC           bool    `json:"auto_cpc"`
	CreatedAt         string  `json:"created_at"`
	UpdatedAt         string  `json:"updated_at"`
	ServingStatus     string  `json:"serving_status"`
	Budget            any     `json:"budget"`
	Performance       any     `json:"performance,omitempty"`
}

type adJSON struct {
	ID           string  `json:"id"`
	CampaignID   string  `json:"campaign_id"`
	LandingURL   string  `json:"landing_url"`
	CatalogID    *string `json:"catalog_id"`
	CPCBidMicros *int64  `json:"cpc_bid_micros"`
	CreatedAt    string  `json:"created_at"`
	UpdatedAt    string  `json:"updated_at"`
}

// Request bodies. Money and times are raw so that their checks can name the field and refuse
// what encoding/json would accept or coerce (500000.0, "500000", 5e5).

type advertiserBody struct {
	ID                     *string `json:"id"`
	Name                   string  `json:"name"`
	Timezone               string  `json:"timezone"`
	AttributionClickWindow *string `json:"attribution_click_window"`
	AttributionViewWindow  *string `json:"attribution_view_window"`
}

type campaignBody struct {
	ID                *string         `json:"id"`
	AdvertiserID      string          `json:"advertiser_id"`
	Name              string          `json:"name"`
	Status            string          `json:"status"`
	CPCBidMicros      json.RawMessage `json:"cpc_bid_micros"`
	DailyBudgetMicros json.RawMessage `json:"daily_budget_micros"`
	TotalBudgetMicros json.RawMessage `json:"total_budget_micros"`
	StartTime         json.RawMessage `json:"start_time"`
	EndTime           json.RawMessage `json:"end_time"`
	AutoCPC           *bool           `json:"auto_cpc"`
}

type adBody struct {
	ID           *string         `json:"id"`
	CampaignID   string          `json:"campaign_id"`
	LandingURL   string          `json:"landing_url"`
	CatalogID    *string         `json:"catalog_id"`
	CPCBidMicros json.RawMessage `json:"cpc_bid_micros"`
}

func formatOptTime(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := httpapi.FormatTime(t)
	return &s
}

func advertiserOut(a Advertiser) advertiserJSON {
	return advertiserJSON{ID: a.ID, Name: a.Name, Timezone: a.Timezone,
		AttributionClickWindow: formatOptWindow(a.ClickWindow), AttributionViewWindow: formatOptWindow(a.ViewWindow),
		CreatedAt: httpapi.FormatTime(a.CreatedAt), UpdatedAt: httpapi.FormatTime(a.UpdatedAt)}
}

func adOut(a Ad) adJSON {
	out := adJSON{ID: a.ID, CampaignID: a.CampaignID, LandingURL: a.LandingURL, CPCBidMicros: a.CPCBidMicros,
		CreatedAt: httpapi.FormatTime(a.CreatedAt), UpdatedAt: httpapi.FormatTime(a.UpdatedAt)}
	if a.CatalogID != "" {
		out.CatalogID = &a.CatalogID
	}
	return out
}

func (h *Handler) campaignOut(ctx context.Context, cp Campaign) campaignJSON {
	out := campaignJSON{
		ID: cp.ID, AdvertiserID: cp.AdvertiserID, Name: cp.Name, Status: cp.Status,
		CPCBidMicros: cp.CPCBidMicros, DailyBudgetMicros: cp.DailyBudgetMicros, TotalBudgetMicros: cp.TotalBudgetMicros,
		StartTime: formatOptTime(cp.StartTime), EndTime: formatOptTime(cp.EndTime), AutoCPC: cp.AutoCPC,
		CreatedAt: httpapi.FormatTime(cp.CreatedAt), UpdatedAt: httpapi.FormatTime(cp.UpdatedAt),
	}
	if h.o.CampaignPerformance != nil {
		out.Performance = h.o.CampaignPerformance(ctx, cp)
	}
	if h.o.CampaignState != nil {
		out.ServingStatus, out.Budget = h.o.CampaignState(ctx, cp)
		return out
	}
	now := h.c.now()
	var loc *time.Location
	if adv, ok := h.c.Advertiser(cp.AdvertiserID); ok {
		loc = adv.Location
	}
	out.ServingStatus = ScheduleStatus(cp, now)
	out.Budget = NewBudget(cp, loc, now, 0, 0)
	return out
}

// Auth. Writes need the admin key; reads take the admin key or an advertiser key, which sees
// only its own advertiser's objects (others answer 404 exactly as missing ones).

func pathID(r *http.Request) (string, error) {
	id := r.PathValue("id")
	if !event.ValidID(id) {
		return "", httpapi.BadField("id", "must be 1-64 characters of [A-Za-z0-9._:-]")
	}
	return id, nil
}

// notFound is the one answer for both missing objects and other advertisers' objects.
func notFound(kind string) error {
	return httpapi.Errorf(httpapi.CodeNotFound, "id: no such "+kind)
}

// fail writes err: API errors as they are, missing objects as 404, anything else as an
// internal error (logged, not shown).
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, kind string, err error) {
	var ae *httpapi.Error
	switch {
	case errors.As(err, &ae):
		httpapi.WriteError(w, ae)
	case errors.Is(err, ErrNotFound):
		httpapi.WriteError(w, notFound(kind))
	case errors.Is(err, context.Canceled):
		httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeUnavailable, "request canceled"))
	default:
		h.o.Logger.Error("catalog request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		httpapi.WriteError(w, err)
	}
}

// readObject reads a single JSON object body of at most MaxBodyBytes.
func (h *Handler) readObject(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.o.MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return httpapi.Errorf(httpapi.CodePayloadTooLarge, "body: larger than "+strconv.FormatInt(h.o.MaxBodyBytes, 10)+" bytes")
		}
		return httpapi.BadField("body", "could not be read")
	}
	return decodeObject(body, v)
}

// decodeObject decodes exactly one JSON object, refusing unknown fields, with errors that name
// the field. It serves both request bodies and bulk lines so both report alike.
func decodeObject(data []byte, v any) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return httpapi.BadField("body", "a JSON object is required")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var typ *json.UnmarshalTypeError
		var syn *json.SyntaxError
		switch {
		case errors.As(err, &typ):
			if typ.Field == "" {
				return httpapi.BadField("body", "must be a JSON object")
			}
			return httpapi.BadField(typ.Field, "must be "+kindName(typ.Type))
		case errors.As(err, &syn):
			return httpapi.BadField("body", "invalid JSON: "+syn.Error())
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			f, uerr := strconv.Unquote(strings.TrimPrefix(err.Error(), "json: unknown field "))
			if uerr != nil {
				f = "body"
			}
			return httpapi.BadField(f, "unknown field")
		case errors.Is(err, io.ErrUnexpectedEOF):
			return httpapi.BadField("body", "invalid JSON: unexpected end")
		}
		return httpapi.BadField("body", "invalid JSON: "+err.Error())
	}
	if _, err := dec.Token(); err != io.EOF {
		return httpapi.BadField("body", "trailing data after the JSON object")
	}
	return nil
}

func kindName(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int64, reflect.Int32:
		return "an integer"
	case reflect.Struct, reflect.Map:
		return "a JSON object"
	case reflect.Bool:
		return "true or false"
	}
	return t.String()
}

// rawMicros parses an optional money field: a JSON integer literal, or null/absent.
func rawMicros(field string, raw json.RawMessage) (int64, bool, error) {
	s := string(bytes.TrimSpace(raw))
	if s == "" || s == "null" {
		return 0, false, nil
	}
	digits := strings.TrimPrefix(s, "-")
	if digits == "" || strings.Trim(digits, "0123456789") != "" {
		return 0, false, httpapi.BadField(field, "must be an integer number of micros")
	}
	if len(digits) != len(s) && strings.Trim(digits, "0") != "" {
		return 0, false, httpapi.BadField(field, "must not be negative")
	}
	v, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || v > MaxMicros {
		return 0, false, httpapi.BadField(field, "must be at most "+strconv.FormatInt(MaxMicros, 10))
	}
	return v, true, nil
}

// rawTime parses an optional time field: an RFC 3339 string, or Unix seconds as a JSON integer
// or a string.
func rawTime(field string, raw json.RawMessage) (time.Time, error) {
	s := string(bytes.TrimSpace(raw))
	if s == "" || s == "null" {
		return time.Time{}, nil
	}
	if s[0] == '"' {
		var str string
		if err := json.Unmarshal(raw, &str); err != nil {
			return time.Time{}, httpapi.BadField(field, "must be RFC 3339 or Unix seconds")
		}
		s = str
	}
	t, err := httpapi.ParseTime(s)
	if err != nil {
		return time.Time{}, httpapi.BadField(field, err.Error())
	}
	return t, nil
}

func checkBodyID(bodyID *string, id string) error {
	if bodyID != nil && *bodyID != id {
		return httpapi.BadField("id", "must match the id in the path")
	}
	return nil
}

func (h *Handler) putAdvertiser(w http.ResponseWriter, r *http.Request) {
	put(h, w, r, "advertiser", func(id string, b *advertiserBody) (Advertiser, error) {
		if err := checkBodyID(b.ID, id); err != nil {
			return Advertiser{}, err
		}
		a := Advertiser{ID: id, Name: b.Name, Timezone: b.Timezone}
		var err error
		if a.ClickWindow, err = parseOptWindow("attribution_click_window", b.AttributionClickWindow); err != nil {
			return Advertiser{}, err
		}
		if a.ViewWindow, err = parseOptWindow("attribution_view_window", b.AttributionViewWindow); err != nil {
			return Advertiser{}, err
		}
		return a, nil
	}, h.c.PutAdvertiser, func(_ context.Context, a Advertiser) any { return advertiserOut(a) })
}

// put is the shape of every PUT: admin only, a valid path id, a JSON object body turned into
// the object (fromBody validates), the upsert, and the stored object as the answer.
func put[B, T any](h *Handler, w http.ResponseWriter, r *http.Request, kind string,
	fromBody func(id string, b *B) (T, error),
	upsert func(context.Context, T) (T, error),
	out func(context.Context, T) any) {
	if err := httpapi.RequireAdmin(r); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	id, err := pathID(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	var b B
	if err := h.readObject(w, r, &b); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	v, err := fromBody(id, &b)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if v, err = upsert(r.Context(), v); err != nil {
		h.fail(w, r, kind, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, out(r.Context(), v))
}

func (h *Handler) getAdvertiser(w http.ResponseWriter, r *http.Request) {
	get(h, w, r, "advertiser", func(ctx context.Context, id string) (Advertiser, string, error) {
		a, err := h.c.GetAdvertiser(ctx, id)
		return a, id, err
	}, func(_ context.Context, a Advertiser) any { return advertiserOut(a) })
}

// get is the shape of every GET: an admin or advertiser key, a valid path id, the object, and
// 404 (the same as for a missing one) when it belongs to another advertiser.
func get[T any](h *Handler, w http.ResponseWriter, r *http.Request, kind string,
	load func(ctx context.Context, id string) (v T, owner string, err error),
	out func(context.Context, T) any) {
	p, err := httpapi.RequireReader(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	id, err := pathID(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	v, owner, err := load(r.Context(), id)
	if err == nil && !p.CanSee(owner) {
		err = ErrNotFound
	}
	if err != nil {
		h.fail(w, r, kind, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, out(r.Context(), v))
}

func (h *Handler) putCampaign(w http.ResponseWriter, r *http.Request) {
	put(h, w, r, "campaign", campaignFromBody, h.c.PutCampaign, func(ctx context.Context, cp Campaign) any { return h.campaignOut(ctx, cp) })
}

func campaignFromBody(id string, b *campaignBody) (Campaign, error) {
	if err := checkBodyID(b.ID, id); err != nil {
		return Campaign{}, err
	}
	cp := Campaign{ID: id, AdvertiserID: b.AdvertiserID, Name: b.Name, Status: Status(b.Status), AutoCPC: b.AutoCPC != nil && *b.AutoCPC}
	var err error
	var set bool
	if cp.CPCBidMicros, set, err = rawMicros("cpc_bid_micros", b.CPCBidMicros); err != nil {
		return Campaign{}, err
	}
	if !set {
		return Campaign{}, httpapi.BadField("cpc_bid_micros", "is required")
	}
	if cp.DailyBudgetMicros, _, err = rawMicros("daily_budget_micros", b.DailyBudgetMicros); err != nil {
		return Campaign{}, err
	}
	if cp.TotalBudgetMicros, _, err = rawMicros("total_budget_micros", b.TotalBudgetMicros); err != nil {
		return Campaign{}, err
	}
	if cp.StartTime, err = rawTime("start_time", b.StartTime); err != nil {
		return Campaign{}, err
	}
	if cp.EndTime, err = rawTime("end_time", b.EndTime); err != nil {
		return Campaign{}, err
	}
	return cp, nil
}

func (h *Handler) getCampaign(w http.ResponseWriter, r *http.Request) {
	get(h, w, r, "campaign", func(ctx context.Context, id string) (Campaign, string, error) {
		cp, err := h.c.GetCampaign(ctx, id)
		return cp, cp.AdvertiserID, err
	}, func(ctx context.Context, cp Campaign) any { return h.campaignOut(ctx, cp) })
}

func adFromBody(id string, b *adBody) (Ad, error) {
	if err := checkBodyID(b.ID, id); err != nil {
		return Ad{}, err
	}
	a := Ad{ID: id, CampaignID: b.CampaignID, LandingURL: b.LandingURL}
	if b.CatalogID != nil {
		if err := checkID("catalog_id", *b.CatalogID); err != nil {
			return Ad{}, err
		}
		a.CatalogID = *b.CatalogID
	}
	bid, set, err := rawMicros("cpc_bid_micros", b.CPCBidMicros)
	if err != nil {
		return Ad{}, err
	}
	if set {
		a.CPCBidMicros = &bid
	}
	return a, nil
}

func (h *Handler) putAd(w http.ResponseWriter, r *http.Request) {
	put(h, w, r, "ad", adFromBody, h.c.PutAd, func(_ context.Context, a Ad) any { return adOut(a) })
}

func (h *Handler) getAd(w http.ResponseWriter, r *http.Request) {
	get(h, w, r, "ad", h.c.getAd, func(_ context.Context, a Ad) any { return adOut(a) })
}

// LineError is one rejected line of a bulk request.
type LineError struct {
	Line    int    `json:"line"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// BulkResponse is the answer to POST /api/v1/bulk/ads, shaped like that of POST /events.
// Duplicates is always 0: a repeated ad is an upsert, not a duplicate.
type BulkResponse struct {
	Accepted   int         `json:"accepted"`
	Duplicates int         `json:"duplicates"`
	Rejected   int         `json:"rejected"`
	Errors     []LineError `json:"errors"`
}

// bulkAds reads the whole NDJSON body before writing anything, so a body over the size or
// line limit answers 413 with nothing accepted. Valid ads are then written in transactions of
// BulkBatchSize; a database failure midway answers 500 with the earlier batches kept (ads are
// upserts, so the client just retries the whole body).
func (h *Handler) bulkAds(w http.ResponseWriter, r *http.Request) {
	if err := httpapi.RequireAdmin(r); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	br := bufio.NewReaderSize(http.MaxBytesReader(w, r.Body, h.o.MaxBulkBytes), maxBulkLineBytes)
	var ads []Ad
	var lines []int // line number of each of ads
	var lineErrs []LineError
	reject := func(line int, err error) {
		var ae *httpapi.Error
		if !errors.As(err, &ae) {
			ae = httpapi.Errorf(httpapi.CodeInternal, "internal error")
		}
		lineErrs = append(lineErrs, LineError{Line: line, Code: ae.Code, Message: ae.Message})
	}
	for lineNo := 1; ; lineNo++ {
		line, tooLong, err := readLine(br)
		if err != nil && err != io.EOF {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				httpapi.WriteError(w, httpapi.Errorf(httpapi.CodePayloadTooLarge,
					"body: larger than "+strconv.FormatInt(h.o.MaxBulkBytes, 10)+" bytes; nothing was accepted"))
				return
			}
			httpapi.WriteError(w, httpapi.BadField("body", "could not be read"))
			return
		}
		if err == io.EOF && len(line) == 0 && !tooLong {
			break
		}
		if lineNo > h.o.MaxBulkLines {
			httpapi.WriteError(w, httpapi.Errorf(httpapi.CodePayloadTooLarge,
				"body: more than "+strconv.Itoa(h.o.MaxBulkLines)+" lines; nothing was accepted"))
			return
		}
		switch {
		case tooLong:
			reject(lineNo, httpapi.BadField("line", "longer than "+strconv.Itoa(maxBulkLineBytes)+" bytes"))
		case len(bytes.TrimSpace(line)) == 0:
			// Blank lines are allowed (a trailing newline, pretty printers) and keep numbering.
		default:
			var b adBody
			a, perr := Ad{}, decodeObject(line, &b)
			if perr == nil {
				if b.ID == nil {
					perr = httpapi.BadField("id", "is required")
				} else if perr = checkID("id", *b.ID); perr == nil {
					a, perr = adFromBody(*b.ID, &b)
				}
			}
			if perr != nil {
				reject(lineNo, perr)
				break
			}
			ads = append(ads, a)
			lines = append(lines, lineNo)
		}
		if err == io.EOF {
			break
		}
	}

	resp := BulkResponse{}
	for i := 0; i < len(ads); i += h.o.BulkBatchSize {
		j := min(i+h.o.BulkBatchSize, len(ads))
		errs, err := h.c.putAds(r.Context(), ads[i:j])
		if err != nil {
			h.fail(w, r, "ad", err)
			return
		}
		for k, e := range errs {
			if e != nil {
				reject(lines[i+k], e)
			} else {
				resp.Accepted++
			}
		}
	}
	resp.Rejected = len(lineErrs)
	slices.SortStableFunc(lineErrs, func(a, b LineError) int { return a.Line - b.Line })
	if len(lineErrs) > maxListedErrors {
		lineErrs = lineErrs[:maxListedErrors]
	}
	resp.Errors = append([]LineError{}, lineErrs...)
	httpapi.WriteJSON(w, http.StatusOK, resp)
}

// readLine returns the next line without its newline. A line longer than the reader's buffer
// is skipped to its end and reported as tooLong. At the end of the body err is io.EOF, with
// the last unterminated line, if any.
func readLine(br *bufio.Reader) (line []byte, tooLong bool, err error) {
	line, err = br.ReadSlice('\n')
	for errors.Is(err, bufio.ErrBufferFull) {
		tooLong = true
		_, err = br.ReadSlice('\n')
	}
	if tooLong {
		return nil, true, err
	}
	return bytes.TrimSuffix(line, []byte{'\n'}), false, err
}

type keyJSON struct {
	Key string `json:"key"`
}

func (h *Handler) createAdvertiserKey(w http.ResponseWriter, r *http.Request) {
	if err := httpapi.RequireAdmin(r); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	id, err := pathID(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	key, err := h.c.CreateAdvertiserKey(r.Context(), id)
	if err != nil {
		h.fail(w, r, "advertiser", err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, http.StatusOK, keyJSON{Key: key})
}

func (h *Handler) createIngestKey(w http.ResponseWriter, r *http.Request) {
	if err := httpapi.RequireAdmin(r); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	key, err := h.c.CreateIngestKey(r.Context())
	if err != nil {
		h.fail(w, r, "ingest key", err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, http.StatusOK, keyJSON{Key: key})
}
