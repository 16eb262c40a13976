package billing

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/httpapi"
)

// HandlerOptions configure the billing HTTP handlers.
type HandlerOptions struct {
	Logger *slog.Logger
	// Explain, if set, is asked about every click GET /api/v1/clicks/{id} shows; a non-nil
	// answer is added to it as "invalid_traffic" (the behavioural rules' verdict and evidence).
	Explain func(c Click) (any, error)
}

// Handler serves billing's endpoints. It expects the principal in the request context (the
// catalog's auth middleware puts it there).
//
//   - GET /api/v1/serving/campaigns: the serving feed (Feed). Admin key.
//   - GET /api/v1/users/{user_id}/views?date=YYYY-MM-DD: a user's views per catalog id on a
//     UTC day (default today). Admin key only: the counts span every advertiser's ads, so
//     an advertiser key gets 403 (not 404: nothing is hidden about an object it does not
//     own; the endpoint is simply not for it).
//   - GET /api/v1/clicks/{id}: the ledger entry of a valid click (Click). id is the click's
//     idempotency key as sent: its impression id, or its event_id for a click sent without
//     one. Admin key, or the advertiser key of the click's advertiser (others: 404).
//   - POST /api/v1/clicks/{id}/refund: credit the click back (Refund). Admin key.
//     Idempotent: a repeat answers 200 with already_refunded true and refunded_micros 0. A
//     click not charged (yet) answers 404.
type Handler struct {
	c       *Charger
	log     *slog.Logger
	explain func(Click) (any, error)
}

// NewHandler returns the billing HTTP handlers of c.
func NewHandler(c *Charger, o HandlerOptions) *Handler {
	if o.Logger == nil {
		o.Logger = c.opts.Logger
	}
	return &Handler{c: c, log: o.Logger, explain: o.Explain}
}

// Register adds billing's routes to mux.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/serving/campaigns", h.servingCampaigns)
	mux.HandleFunc("GET /api/v1/users/{user_id}/views", h.userViews)
	mux.HandleFunc("GET /api/v1/clicks/{id}", h.getClick)
	mux.HandleFunc("POST /api/v1/clicks/{id}/refund", h.refund)
}

// fail writes err: API errors as they are, engine states as their codes, anything else as an
// internal error (logged, not shown).
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ae *httpapi.Error
	switch {
	case errors.As(err, &ae):
		httpapi.WriteError(w, ae)
	case errors.Is(err, ErrNotFound):
		httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeNotFound, "id: no charged click with this impression id or event_id (unknown, invalid, or not charged yet)"))
	case errors.Is(err, ErrClosed), errors.Is(err, ErrNotRunning):
		httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeUnavailable, "billing is not running"))
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeUnavailable, "request canceled"))
	default:
		h.log.Error("billing request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		httpapi.WriteError(w, err)
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, http.StatusOK, v)
}

func (h *Handler) servingCampaigns(w http.ResponseWriter, r *http.Request) {
	if err := httpapi.RequireAdmin(r); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	feed, err := h.c.Feed(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, feed)
}

type viewsJSON struct {
	UserID   string           `json:"user_id"`
	Date     string           `json:"date"`
	Catalogs map[string]int64 `json:"catalogs"`
}

func (h *Handler) userViews(w http.ResponseWriter, r *http.Request) {
	if err := httpapi.RequireAdmin(r); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	user := r.PathValue("user_id")
	if !event.ValidID(user) {
		httpapi.WriteError(w, httpapi.BadField("user_id", "must be 1-64 characters of [A-Za-z0-9._:-]"))
		return
	}
	q := r.URL.Query()
	day := h.c.opts.Now().UTC()
	if q.Has("date") {
		d, err := time.Parse(time.DateOnly, q.Get("date"))
		if err != nil {
			httpapi.WriteError(w, httpapi.BadField("date", "must be a date as YYYY-MM-DD"))
			return
		}
		day = d
	}
	if !h.c.ViewsRetained(day) {
		httpapi.WriteError(w, httpapi.BadField("date", "views are kept for the last "+strconv.Itoa(h.c.opts.ViewRetentionDays)+" UTC days only"))
		return
	}
	counts, err := h.c.UserViews(r.Context(), user, day)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, viewsJSON{UserID: user, Date: day.Format(time.DateOnly), Catalogs: counts})
}

func clickID(r *http.Request) (string, error) {
	id := r.PathValue("id")
	if !event.ValidID(id) {
		return "", httpapi.BadField("id", "must be 1-64 characters of [A-Za-z0-9._:-]")
	}
	return id, nil
}

func (h *Handler) getClick(w http.ResponseWriter, r *http.Request) {
	p, err := httpapi.RequireReader(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	id, err := clickID(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	click, err := h.c.ClickByID(id)
	if err == nil && !p.CanSee(click.AdvertiserID) {
		err = ErrNotFound // another advertiser's click answers exactly as a missing one
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if h.explain != nil {
		x, err := h.explain(click)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		if x != nil {
			writeJSON(w, struct {
				Click
				InvalidTraffic any `json:"invalid_traffic"`
			}{click, x})
			return
		}
	}
	writeJSON(w, click)
}

func (h *Handler) refund(w http.ResponseWriter, r *http.Request) {
	if err := httpapi.RequireAdmin(r); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	id, err := clickID(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	res, err := h.c.Refund(r.Context(), id)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if !res.AlreadyRefunded {
		h.log.Info("billing: click refunded", "id", id, "campaign_id", res.CampaignID, "micros", res.RefundedMicros)
	}
	writeJSON(w, res)
}
