package feeds

import (
	"errors"
	"log/slog"
	"net/http"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/httpapi"
)

// Handler serves the feed endpoints: the versions and rollback (admin), and a campaign's
// budget recommendation (admin, or the campaign's advertiser).
type Handler struct {
	store *Store
	// owner returns the advertiser of a campaign, from the catalog's index.
	owner func(campaignID string) (string, bool)
	log   *slog.Logger
}

// NewHandler returns the feed endpoints over store.
func NewHandler(store *Store, campaignOwner func(string) (string, bool), log *slog.Logger) *Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Handler{store: store, owner: campaignOwner, log: log}
}

// Register adds the routes to mux.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/feeds", h.list)
	mux.HandleFunc("POST /api/v1/feeds/{feed}/rollback", h.rollback)
	mux.HandleFunc("GET /api/v1/campaigns/{id}/recommendations", h.recommendation)
}

type versionJSON struct {
	Version     string  `json:"version"`
	State       string  `json:"state"`
	Active      bool    `json:"active"`
	Rows        int64   `json:"rows"`
	Files       int     `json:"files"`
	ProcessedAt string  `json:"processed_at"`
	Reason      *string `json:"reason"`
}

type feedJSON struct {
	Feed          string        `json:"feed"`
	ActiveVersion *string       `json:"active_version"`
	Versions      []versionJSON `json:"versions"`
	Truncated     bool          `json:"truncated"`
}

func (h *Handler) feed(r *http.Request, name string) (feedJSON, error) {
	out := feedJSON{Feed: name, Versions: []versionJSON{}}
	active, err := h.store.Active(r.Context(), name)
	if err != nil {
		return out, err
	}
	if active != "" {
		out.ActiveVersion = &active
	}
	vs, more, err := h.store.Versions(r.Context(), name)
	if err != nil {
		return out, err
	}
	out.Truncated = more
	for _, v := range vs {
		j := versionJSON{Version: v.Version, State: v.State, Active: v.Version == active, Rows: v.Rows, Files: v.Files,
			ProcessedAt: httpapi.FormatTime(v.ProcessedAt)}
		if v.Reason != "" {
			reason := v.Reason
			j.Reason = &reason
		}
		out.Versions = append(out.Versions, j)
	}
	return out, nil
}

func (h *Handler) list(w http.ResponseWriter, r *http.Request) {
	if err := httpapi.RequireAdmin(r); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	var out struct {
		Feeds []feedJSON `json:"feeds"`
	}
	for _, name := range FeedNames() {
		f, err := h.feed(r, name)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		out.Feeds = append(out.Feeds, f)
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}

func (h *Handler) rollback(w http.ResponseWriter, r *http.Request) {
	if err := httpapi.RequireAdmin(r); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	name := r.PathValue("feed")
	if _, ok := defs[name]; !ok {
		httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeNotFound, "feed: no such feed (auto_cpc, budget_recommendations)"))
		return
	}
	var body struct {
		Version string `json:"version"`
	}
	if err := httpapi.DecodeJSON(w, r, 4<<10, &body); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if !ValidName(body.Version) {
		httpapi.WriteError(w, httpapi.BadField("version", "must be 1-64 characters of [A-Za-z0-9._-]"))
		return
	}
	err := h.store.Rollback(r.Context(), name, body.Version)
	switch {
	case errors.Is(err, ErrNotFound):
		httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeNotFound, "version: no such version of "+name))
		return
	case errors.Is(err, ErrNotLoaded):
		httpapi.WriteError(w, httpapi.BadField("version", "was rejected or has expired; only loaded versions can be made active"))
		return
	case err != nil:
		h.fail(w, r, err)
		return
	}
	h.log.Info("feeds: rolled back", "feed", name, "version", body.Version)
	f, err := h.feed(r, name)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, f)
}

type recommendationJSON struct {
	Recommendation
	LoadedAt string `json:"loaded_at"`
}

func (h *Handler) recommendation(w http.ResponseWriter, r *http.Request) {
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
	// Another advertiser's campaign answers exactly as a missing one.
	if owner, ok := h.owner(id); !ok || !p.CanSee(owner) {
		httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeNotFound, "id: no such campaign"))
		return
	}
	rec, err := h.store.Recommendation(r.Context(), id)
	if errors.Is(err, ErrNotFound) {
		httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeNotFound, "id: no budget recommendation for this campaign in the active budget_recommendations version"))
		return
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, recommendationJSON{Recommendation: rec, LoadedAt: httpapi.FormatTime(rec.LoadedAt)})
}

func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	h.log.Error("feeds request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeUnavailable, "the catalog database did not answer; retry"))
}
