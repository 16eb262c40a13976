// Package dashboard serves the web dashboard at /ui/ and the two small reads it needs that
// the rest of the API does not offer: the campaigns a key may see (GET /api/v1/campaigns)
// and ingest health (GET /api/v1/health/ingest).
//
// The dashboard is static HTML, CSS and JavaScript embedded in the binary (embed.FS), with
// its charting library vendored (scripts/update-uplot.sh): a browser showing it talks to this
// server alone. The pages hold no data: every number comes from the API with the key the user
// signed in with, kept in the tab's sessionStorage and sent as the bearer header, so what a
// page shows is exactly what that key may read (an advertiser key sees its own advertiser
// only; the server enforces it, the pages merely follow). API answers are marked no-store and
// the pages fetch with cache: "no-store", so nothing read under one key is served from a
// cache to another.
//
// Invariants:
//   - The static files are public and carry no data; they are served with a Content Security
//     Policy that allows scripts, styles, images and connections from this origin only.
//   - GET /api/v1/campaigns answers an advertiser key with that advertiser's campaigns only,
//     whatever advertiser_id it names (another advertiser's: 404, as elsewhere in the API).
//   - GET /api/v1/health/ingest takes the admin key only: it describes the whole system.
package dashboard

import (
	"embed"
	"io/fs"
	"maps"
	"net/http"
	"slices"
	"time"

	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/httpapi"
)

//go:embed static
var staticFiles embed.FS

// MaxCampaigns bounds one answer of GET /api/v1/campaigns; more are reported as truncated.
const MaxCampaigns = 1000

// contentSecurityPolicy keeps the dashboard on this origin: no inline script, nothing fetched
// from anywhere else, no framing.
const contentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// Campaigns is what the dashboard reads of the catalog: the in-memory index.
type Campaigns interface {
	CampaignIDs() []string
	Campaign(id string) (catalog.CampaignInfo, bool)
	Advertiser(id string) (catalog.AdvertiserInfo, bool)
}

// Options configure a Handler.
type Options struct {
	Catalog Campaigns
	// Health reports ingest health for GET /api/v1/health/ingest; nil answers 404 there.
	Health func() Health
	Now    func() time.Time
}

// Handler serves the dashboard and its reads.
type Handler struct {
	o      Options
	static http.Handler
}

// New returns a Handler.
func New(o Options) *Handler {
	if o.Now == nil {
		o.Now = time.Now
	}
	sub, err := fs.Sub(staticFiles, "static")
	if err != nil {
		panic(err) // the embedded tree always has static/
	}
	return &Handler{o: o, static: http.StripPrefix("/ui/", http.FileServerFS(sub))}
}

// Register adds the dashboard's routes to mux.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /ui", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/", http.StatusMovedPermanently)
	})
	mux.HandleFunc("GET /ui/", h.serveStatic)
	mux.HandleFunc("GET /api/v1/campaigns", h.listCampaigns)
	if h.o.Health != nil {
		mux.HandleFunc("GET /api/v1/health/ingest", h.ingestHealth)
	}
}

func (h *Handler) serveStatic(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", contentSecurityPolicy)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("X-Frame-Options", "DENY")
	// Revalidate every time: a new binary's pages must not mix with an old one's scripts.
	hd.Set("Cache-Control", "no-cache")
	h.static.ServeHTTP(w, r)
}

// CampaignItem is one campaign of GET /api/v1/campaigns, from the in-memory catalog index.
type CampaignItem struct {
	CampaignID        string     `json:"campaign_id"`
	AdvertiserID      string     `json:"advertiser_id"`
	Status            string     `json:"status"`
	CPCBidMicros      int64      `json:"cpc_bid_micros"`
	DailyBudgetMicros int64      `json:"daily_budget_micros"`
	TotalBudgetMicros int64      `json:"total_budget_micros"`
	StartTime         *time.Time `json:"start_time"`
	EndTime           *time.Time `json:"end_time"`
}

type campaignList struct {
	Role         string         `json:"role"`
	AdvertiserID *string        `json:"advertiser_id"`
	Campaigns    []CampaignItem `json:"campaigns"`
	Truncated    bool           `json:"truncated"`
}

// listCampaigns answers the campaigns the key may see, sorted by id, at most MaxCampaigns.
// It also says who the key is, which the dashboard needs to choose its pages.
func (h *Handler) listCampaigns(w http.ResponseWriter, r *http.Request) {
	p, err := httpapi.RequireReader(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	q := r.URL.Query()
	for _, name := range slices.Sorted(maps.Keys(q)) {
		if name != "advertiser_id" {
			httpapi.WriteError(w, httpapi.BadField(name, "unknown parameter (only advertiser_id)"))
			return
		}
		if len(q[name]) > 1 {
			httpapi.WriteError(w, httpapi.BadField(name, "given more than once"))
			return
		}
	}
	filter := q.Get("advertiser_id")
	if q.Has("advertiser_id") {
		if !event.ValidID(filter) {
			httpapi.WriteError(w, httpapi.BadField("advertiser_id", "must be 1-64 characters of [A-Za-z0-9._:-]"))
			return
		}
		if _, ok := h.o.Catalog.Advertiser(filter); !ok || !p.CanSee(filter) {
			httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeNotFound, "advertiser_id: no advertiser "+filter))
			return
		}
	}
	if p.Role == httpapi.RoleAdvertiser {
		filter = p.AdvertiserID
	}
	out := campaignList{Role: roleName(p.Role), Campaigns: []CampaignItem{}}
	if p.Role == httpapi.RoleAdvertiser {
		out.AdvertiserID = &p.AdvertiserID
	}
	ids := h.o.Catalog.CampaignIDs()
	slices.Sort(ids)
	for _, id := range ids {
		c, ok := h.o.Catalog.Campaign(id)
		if !ok || (filter != "" && c.AdvertiserID != filter) || !p.CanSee(c.AdvertiserID) {
			continue
		}
		if len(out.Campaigns) == MaxCampaigns {
			out.Truncated = true
			break
		}
		out.Campaigns = append(out.Campaigns, CampaignItem{
			CampaignID:        c.CampaignID,
			AdvertiserID:      c.AdvertiserID,
			Status:            string(c.Status),
			CPCBidMicros:      c.CPCBidMicros,
			DailyBudgetMicros: c.DailyBudgetMicros,
			TotalBudgetMicros: c.TotalBudgetMicros,
			StartTime:         timeOrNil(c.StartTime),
			EndTime:           timeOrNil(c.EndTime),
		})
	}
	w.Header().Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, http.StatusOK, out)
}

func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

// Health is the answer of GET /api/v1/health/ingest: counters since the process started
// and how far the stages behind the log trail it. Ingest is nil on a process without the
// ingest role.
type Health struct {
	Time     time.Time       `json:"time"`
	Ingest   *IngestHealth   `json:"ingest"`
	Pipeline *PipelineHealth `json:"pipeline"`
}

// IngestHealth counts what the ingest endpoints did with events since the process started.
type IngestHealth struct {
	EventsAccepted   int64            `json:"events_accepted"`
	EventsDuplicate  int64            `json:"events_duplicate"`
	RecordFailures   int64            `json:"record_failures"`
	TooSlow          int64            `json:"too_slow"`
	InvalidByReason  map[string]int64 `json:"invalid_clicks_by_reason"`
	UnresolvedAppend int64            `json:"unresolved_appends"`
}

// PipelineHealth says how far counting and charging trail the log.
type PipelineHealth struct {
	AggregateLagMessages  int64      `json:"aggregate_lag_messages"`
	BillingLagMessages    int64      `json:"billing_lag_messages"`
	WatermarkDelaySeconds float64    `json:"watermark_delay_seconds"`
	FinalBefore           *time.Time `json:"final_before"`
	LogRollbacks          int64      `json:"log_rollbacks"`
}

func (h *Handler) ingestHealth(w http.ResponseWriter, r *http.Request) {
	if err := httpapi.RequireAdmin(r); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if names := slices.Sorted(maps.Keys(r.URL.Query())); len(names) > 0 {
		httpapi.WriteError(w, httpapi.BadField(names[0], "unknown parameter (this endpoint takes none)"))
		return
	}
	out := h.o.Health()
	out.Time = h.o.Now().UTC()
	w.Header().Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, http.StatusOK, out)
}

func roleName(r httpapi.Role) string {
	if r == httpapi.RoleAdmin {
		return "admin"
	}
	return "advertiser"
}
