package sivt

import (
	"net/http"
	"strconv"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/httpapi"
)

// Handler serves the stage's endpoint:
//
//   - GET /api/v1/advertisers/{id}/credits?limit=N&before=SEQ: the advertiser's credit trail,
//     newest first (limit 1-1000, default 100; next_before pages on). Admin key, or the
//     advertiser's own key (another advertiser's answers 404, as a missing one would).
type Handler struct{ s *Stage }

// NewHandler returns the stage's HTTP handler.
func NewHandler(s *Stage) *Handler { return &Handler{s} }

// Register adds the stage's routes to mux.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/advertisers/{id}/credits", h.credits)
}

type creditsJSON struct {
	AdvertiserID string   `json:"advertiser_id"`
	Credits      []Credit `json:"credits"`
	// NextBefore is the before parameter of the next (older) page; absent on the last one.
	NextBefore uint64 `json:"next_before,omitempty"`
}

func (h *Handler) credits(w http.ResponseWriter, r *http.Request) {
	p, err := httpapi.RequireReader(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	id := r.PathValue("id")
	if !event.ValidID(id) {
		httpapi.WriteError(w, httpapi.BadField("id", "must be 1-64 characters of [A-Za-z0-9._:-]"))
		return
	}
	if !p.CanSee(id) {
		httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeNotFound, "id: no such advertiser"))
		return
	}
	q := r.URL.Query()
	limit := 100
	if q.Has("limit") {
		n, err := strconv.Atoi(q.Get("limit"))
		if err != nil || n < 1 || n > MaxCreditsPage {
			httpapi.WriteError(w, httpapi.BadField("limit", "must be an integer from 1 to 1000"))
			return
		}
		limit = n
	}
	var before uint64
	if q.Has("before") {
		n, err := strconv.ParseUint(q.Get("before"), 10, 64)
		if err != nil || n == 0 {
			httpapi.WriteError(w, httpapi.BadField("before", "must be a positive integer (a next_before of an earlier page)"))
			return
		}
		before = n
	}
	out, next, err := h.s.Credits(id, limit, before)
	if err != nil {
		if err == ErrClosed {
			httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeUnavailable, "the invalid-traffic stage is not running"))
			return
		}
		httpapi.WriteError(w, err)
		return
	}
	if out == nil {
		out = []Credit{}
	}
	w.Header().Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, http.StatusOK, creditsJSON{AdvertiserID: id, Credits: out, NextBefore: next})
}
