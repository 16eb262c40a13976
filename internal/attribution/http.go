package attribution

import (
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/httpapi"
)

// Handler serves GET /api/v1/conversions/{event_id}: why a conversion was credited to the
// touch it was, or why to none. Admin key, or the advertiser key of the credited touch's
// advertiser (anything else answers 404, as for a conversion that does not exist).
type Handler struct {
	s   *Stage
	log *slog.Logger
}

// NewHandler returns the attribution HTTP handler of s.
func NewHandler(s *Stage, log *slog.Logger) *Handler {
	if log == nil {
		log = s.o.Logger
	}
	return &Handler{s: s, log: log}
}

// Register adds the routes to mux.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/conversions/{event_id}", h.get)
}

type touchJSON struct {
	Type         string `json:"type"` // click or view
	ID           string `json:"id"`   // its impression id, or event_id
	Time         string `json:"time"`
	AdID         string `json:"ad_id"`
	CampaignID   string `json:"campaign_id"`
	AdvertiserID string `json:"advertiser_id"`
	// AgeSeconds is how long before the conversion the touch happened.
	AgeSeconds int64 `json:"age_seconds"`
}

type conversionJSON struct {
	EventID           string     `json:"event_id"`
	Type              string     `json:"type"`
	UserID            string     `json:"user_id"`
	CatalogID         string     `json:"catalog_id"`
	Time              string     `json:"time"`
	ValueMicros       int64      `json:"value_micros"`
	Model             string     `json:"model"`
	Credited          bool       `json:"credited"`
	Touch             *touchJSON `json:"touch"`
	Reason            *string    `json:"reason"`
	TouchesConsidered int        `json:"touches_considered"`
	Revisions         int        `json:"revisions"`
}

func (h *Handler) get(w http.ResponseWriter, r *http.Request) {
	p, err := httpapi.RequireReader(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	id := r.PathValue("event_id")
	if !event.ValidID(id) {
		httpapi.WriteError(w, httpapi.BadField("event_id", "must be 1-64 characters of [A-Za-z0-9._:-]"))
		return
	}
	c, err := h.s.Conversion(id)
	if err == nil && !(p.Role == httpapi.RoleAdmin || c.Credited && p.CanSee(c.Touch.AdvertiserID)) {
		err = ErrNotFound // another advertiser's conversion answers exactly as a missing one
	}
	switch {
	case errors.Is(err, ErrNotFound):
		httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeNotFound, "event_id: no such conversion (or not attributed yet: the stage is usually within a second of the log)"))
		return
	case errors.Is(err, ErrClosed):
		httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeUnavailable, "attribution is shutting down; retry"))
		return
	case err != nil:
		h.log.Error("attribution: read conversion", "event_id", id, "err", err)
		httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeInternal, "internal error"))
		return
	}
	out := conversionJSON{
		EventID: c.EventID, Type: c.Name, UserID: c.UserID, CatalogID: c.CatalogID,
		Time: formatMicros(c.Time), ValueMicros: c.ValueMicros, Model: h.s.o.Policy.Name(),
		Credited: c.Credited, TouchesConsidered: c.Touches, Revisions: c.Revisions,
	}
	if c.Credited {
		_, tid, _ := strings.Cut(c.Touch.Key, ":")
		out.Touch = &touchJSON{
			Type: c.Touch.Kind.String(), ID: tid, Time: formatMicros(c.Touch.Time),
			AdID: c.Touch.AdID, CampaignID: c.Touch.CampaignID, AdvertiserID: c.Touch.AdvertiserID,
			AgeSeconds: (c.Time - c.Touch.Time) / 1e6,
		}
	} else {
		reason := c.Reason
		out.Reason = &reason
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}

func formatMicros(us int64) string {
	return time.UnixMicro(us).UTC().Format(time.RFC3339Nano)
}
