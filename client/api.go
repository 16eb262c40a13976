package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/adpulse/adpulse/internal/event"
)

// MetricsQuery is GET /metrics. Exactly one of AdIDs, CampaignIDs and AdvertiserIDs is set:
// one series per id, in that order.
type MetricsQuery struct {
	AdIDs, CampaignIDs, AdvertiserIDs []string
	Start, End                        time.Time     // zero: the server's defaults (an hour ago, now)
	Interval                          time.Duration // whole minutes; zero means 1m
	TZ                                string        // IANA zone aligning day buckets (day intervals only)
}

// Metrics is the answer of GET /metrics. Start and End are aligned to the interval.
type Metrics struct {
	Start    time.Time `json:"start_time"`
	End      time.Time `json:"end_time"`
	Interval string    `json:"interval"` // normalised: "1m", "1h", "1d"
	Series   []Series  `json:"series"`
}

// Series is the buckets of one ad, campaign or advertiser; exactly one of the ids is set.
type Series struct {
	AdID         string  `json:"ad_id,omitempty"`
	CampaignID   string  `json:"campaign_id,omitempty"`
	AdvertiserID string  `json:"advertiser_id,omitempty"`
	Points       []Point `json:"points"`
}

// ID is the series' id, whichever kind it is.
func (s *Series) ID() string { return s.AdID + s.CampaignID + s.AdvertiserID }

// Totals sums the points of the series.
func (s *Series) Totals() Point {
	var t Point
	for _, p := range s.Points {
		t.Impressions += p.Impressions
		t.Clicks += p.Clicks
		t.InvalidClicks += p.InvalidClicks
		t.SpendMicros += p.SpendMicros
		for k, v := range p.Interactions {
			if t.Interactions == nil {
				t.Interactions = map[string]int64{}
			}
			t.Interactions[k] += v
		}
	}
	return t
}

// Point is one bucket.
type Point struct {
	Time            time.Time        `json:"time"`
	Impressions     int64            `json:"impressions"`
	Clicks          int64            `json:"clicks"`
	InvalidClicks   int64            `json:"invalid_clicks"`
	SpendMicros     int64            `json:"spend_micros"`
	Interactions    map[string]int64 `json:"interactions,omitempty"`
	Final           bool             `json:"final"` // no later event can change it
	InvalidByReason map[string]int64 `json:"invalid_by_reason,omitempty"`
}

// Metrics returns time series per ad, campaign or advertiser.
func (c *Client) Metrics(ctx context.Context, q MetricsQuery) (*Metrics, error) {
	v := url.Values{}
	set := 0
	for _, f := range [...]struct {
		name string
		ids  []string
	}{{"ad_ids", q.AdIDs}, {"campaign_ids", q.CampaignIDs}, {"advertiser_ids", q.AdvertiserIDs}} {
		if len(f.ids) == 0 {
			continue
		}
		set++
		if err := validIDs(f.name, f.ids...); err != nil {
			return nil, err
		}
		v.Set(f.name, strings.Join(f.ids, ","))
	}
	if set != 1 {
		return nil, fieldError("ad_ids", "give exactly one of ad_ids, campaign_ids and advertiser_ids")
	}
	setTime(v, "start_time", q.Start)
	setTime(v, "end_time", q.End)
	if q.Interval != 0 {
		s, err := formatInterval(q.Interval)
		if err != nil {
			return nil, err
		}
		v.Set("interval", s)
	}
	if q.TZ != "" {
		v.Set("tz", q.TZ)
	}
	var out Metrics
	if err := c.do(ctx, request{method: http.MethodGet, path: "/metrics", query: v}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

func formatInterval(d time.Duration) (string, error) {
	if d <= 0 || d%time.Minute != 0 {
		return "", fieldError("interval", "must be a positive whole number of minutes")
	}
	switch {
	case d%(24*time.Hour) == 0:
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d", nil
	case d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h", nil
	}
	return strconv.FormatInt(int64(d/time.Minute), 10) + "m", nil
}

func setTime(v url.Values, name string, t time.Time) {
	if !t.IsZero() {
		v.Set(name, t.UTC().Format(time.RFC3339))
	}
}

// Ranking metrics and groupings of TopQuery.
const (
	MetricClicks      = "clicks"
	MetricImpressions = "impressions"
	MetricSpendMicros = "spend_micros"

	ByAd         = "ad"
	ByCampaign   = "campaign"
	ByAdvertiser = "advertiser"
)

// TopQuery is GET /metrics/top. Zero values take the server's defaults: N 10, the last 5
// minutes, by clicks, by ad.
type TopQuery struct {
	N            int
	Minutes      int       // whole-minute buckets up to now; or Start and End
	Start, End   time.Time // within the last 1440 minutes
	Metric       string    // MetricClicks, MetricImpressions, MetricSpendMicros
	By           string    // ByAd, ByCampaign, ByAdvertiser
	CampaignID   string    // rank only objects of this campaign
	AdvertiserID string    // rank only objects of this advertiser
}

// Top is the answer of GET /metrics/top: highest first, ties by id ascending, zeros omitted.
type Top struct {
	Start  time.Time `json:"start_time"`
	End    time.Time `json:"end_time"`
	Metric string    `json:"metric"`
	By     string    `json:"by"`
	Items  []TopItem `json:"items"`
}

// TopItem is one ranked id (an ad, campaign or advertiser id, per Top.By) and its value of
// Top.Metric.
type TopItem struct {
	ID    string
	Value int64
}

// UnmarshalJSON reads {"ad_id":"7","clicks":120} and its other id and metric spellings.
func (t *TopItem) UnmarshalJSON(b []byte) error {
	var m struct {
		AdID         *string `json:"ad_id"`
		CampaignID   *string `json:"campaign_id"`
		AdvertiserID *string `json:"advertiser_id"`
		Clicks       *int64  `json:"clicks"`
		Impressions  *int64  `json:"impressions"`
		SpendMicros  *int64  `json:"spend_micros"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	for _, id := range [...]*string{m.AdID, m.CampaignID, m.AdvertiserID} {
		if id != nil {
			t.ID = *id
		}
	}
	for _, v := range [...]*int64{m.Clicks, m.Impressions, m.SpendMicros} {
		if v != nil {
			t.Value = *v
		}
	}
	if t.ID == "" {
		return errors.New("top item without an id")
	}
	return nil
}

// MarshalJSON writes the item in the server's shape, keyed "id" and "value" since an item
// alone does not know its metric.
func (t TopItem) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		ID    string `json:"id"`
		Value int64  `json:"value"`
	}{t.ID, t.Value})
}

// Top returns the top N ads, campaigns or advertisers by a metric.
func (c *Client) Top(ctx context.Context, q TopQuery) (*Top, error) {
	v := url.Values{}
	if q.N != 0 {
		v.Set("n", strconv.Itoa(q.N))
	}
	if q.Minutes != 0 {
		v.Set("minutes", strconv.Itoa(q.Minutes))
	}
	setTime(v, "start_time", q.Start)
	setTime(v, "end_time", q.End)
	for _, f := range [...]struct{ name, v string }{{"metric", q.Metric}, {"by", q.By}, {"campaign_id", q.CampaignID}, {"advertiser_id", q.AdvertiserID}} {
		if f.v != "" {
			v.Set(f.name, f.v)
		}
	}
	var out Top
	if err := c.do(ctx, request{method: http.MethodGet, path: "/metrics/top", query: v}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Advertiser is an advertiser as stored.
type Advertiser struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Timezone  string    `json:"timezone"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// AdvertiserInput is the body of PUT /api/v1/advertisers/{id}.
type AdvertiserInput struct {
	Name     string `json:"name"`
	Timezone string `json:"timezone,omitempty"` // IANA zone of its budget days; default UTC
}

// Campaign statuses (Campaign.Status) and serving statuses (Campaign.ServingStatus).
const (
	StatusActive          = "active"
	StatusPaused          = "paused"
	StatusBudgetExhausted = "budget_exhausted"
	StatusNotStarted      = "not_started"
	StatusEnded           = "ended"
)

// CampaignInput is the body of PUT /api/v1/campaigns/{id}. Budgets of 0 are unlimited.
type CampaignInput struct {
	AdvertiserID      string     `json:"advertiser_id"`
	Name              string     `json:"name"`
	Status            string     `json:"status,omitempty"` // StatusActive (default) or StatusPaused
	CPCBidMicros      int64      `json:"cpc_bid_micros"`
	DailyBudgetMicros int64      `json:"daily_budget_micros"`
	TotalBudgetMicros int64      `json:"total_budget_micros"`
	StartTime         *time.Time `json:"start_time,omitempty"`
	EndTime           *time.Time `json:"end_time,omitempty"`
	// AutoCPC bids and charges the active auto_cpc feed's bid for each ad's catalog id,
	// capped by CPCBidMicros.
	AutoCPC bool `json:"auto_cpc,omitempty"`
}

// Campaign is a campaign as stored, with its serving status and budget.
type Campaign struct {
	ID                string     `json:"id"`
	AdvertiserID      string     `json:"advertiser_id"`
	Name              string     `json:"name"`
	Status            string     `json:"status"`
	CPCBidMicros      int64      `json:"cpc_bid_micros"`
	DailyBudgetMicros int64      `json:"daily_budget_micros"`
	TotalBudgetMicros int64      `json:"total_budget_micros"`
	StartTime         *time.Time `json:"start_time"`
	EndTime           *time.Time `json:"end_time"`
	AutoCPC           bool       `json:"auto_cpc"`
	CreatedAt         time.Time  `json:"created_at"`
	UpdatedAt         time.Time  `json:"updated_at"`
	ServingStatus     string     `json:"serving_status"`
	Budget            Budget     `json:"budget"`
}

// Budget is a campaign's spend on the advertiser's current day and in total.
type Budget struct {
	Day                  string `json:"day"` // YYYY-MM-DD in the advertiser's time zone
	SpentTodayMicros     int64  `json:"spent_today_micros"`
	RemainingTodayMicros *int64 `json:"remaining_today_micros"` // nil when unlimited
	SpentTotalMicros     int64  `json:"spent_total_micros"`
}

// AdInput is the body of PUT /api/v1/ads/{id}.
type AdInput struct {
	CampaignID   string `json:"campaign_id"`
	LandingURL   string `json:"landing_url"` // absolute http or https
	CatalogID    string `json:"catalog_id,omitempty"`
	CPCBidMicros *int64 `json:"cpc_bid_micros,omitempty"` // nil: the campaign's bid
}

// Ad is an ad as stored.
type Ad struct {
	ID           string    `json:"id"`
	CampaignID   string    `json:"campaign_id"`
	LandingURL   string    `json:"landing_url"`
	CatalogID    string    `json:"catalog_id"`     // "" when none
	CPCBidMicros *int64    `json:"cpc_bid_micros"` // nil when the campaign's applies
	CreatedAt    time.Time `json:"created_at"`
	UpdatedAt    time.Time `json:"updated_at"`
}

// PutAdvertiser creates or updates an advertiser (admin key).
func (c *Client) PutAdvertiser(ctx context.Context, id string, in AdvertiserInput) (*Advertiser, error) {
	return putObj[Advertiser](ctx, c, "/api/v1/advertisers/", id, in)
}

// GetAdvertiser returns an advertiser.
func (c *Client) GetAdvertiser(ctx context.Context, id string) (*Advertiser, error) {
	return getObj[Advertiser](ctx, c, "/api/v1/advertisers/", id)
}

// PutCampaign creates or updates a campaign (admin key).
func (c *Client) PutCampaign(ctx context.Context, id string, in CampaignInput) (*Campaign, error) {
	return putObj[Campaign](ctx, c, "/api/v1/campaigns/", id, in)
}

// GetCampaign returns a campaign with its serving status and budget.
func (c *Client) GetCampaign(ctx context.Context, id string) (*Campaign, error) {
	return getObj[Campaign](ctx, c, "/api/v1/campaigns/", id)
}

// PutAd creates or updates an ad (admin key).
func (c *Client) PutAd(ctx context.Context, id string, in AdInput) (*Ad, error) {
	return putObj[Ad](ctx, c, "/api/v1/ads/", id, in)
}

// GetAd returns an ad.
func (c *Client) GetAd(ctx context.Context, id string) (*Ad, error) {
	return getObj[Ad](ctx, c, "/api/v1/ads/", id)
}

// Click is the ledger entry of a charged click.
type Click struct {
	ID            string     `json:"id"` // the click's idempotency key as sent
	ImpressionID  string     `json:"impression_id,omitempty"`
	EventID       string     `json:"event_id,omitempty"`
	CampaignID    string     `json:"campaign_id"`
	AdID          string     `json:"ad_id"`
	AdvertiserID  string     `json:"advertiser_id"`
	EventTime     time.Time  `json:"event_time"`
	Day           string     `json:"day"`    // the budget day charged, in the advertiser's zone
	Status        string     `json:"status"` // "charged" or "refunded"
	PriceMicros   int64      `json:"price_micros"`
	ChargedMicros int64      `json:"charged_micros"`
	Reason        string     `json:"reason,omitempty"` // why it charged less than its price
	RefundedAt    *time.Time `json:"refunded_at,omitempty"`
}

// Refund is the answer of a refund: the refunded entry and what this call credited back.
type Refund struct {
	Click
	RefundedMicros  int64 `json:"refunded_micros"`  // 0 when it was already refunded
	AlreadyRefunded bool  `json:"already_refunded"` // an earlier call refunded it
}

// Click returns the ledger entry of a click by its idempotency key (its impression id, or its
// event id for a click sent with only one). Not yet charged, invalid or unknown: not_found.
func (c *Client) Click(ctx context.Context, id string) (*Click, error) {
	return getObj[Click](ctx, c, "/api/v1/clicks/", id)
}

// RefundClick credits a charged click back, exactly once (admin key). It is retried like a
// read, since a repeat changes nothing: a retry after a lost answer reports AlreadyRefunded.
func (c *Client) RefundClick(ctx context.Context, id string) (*Refund, error) {
	if err := validIDs("id", id); err != nil {
		return nil, err
	}
	var out Refund
	err := c.do(ctx, request{method: http.MethodPost, path: "/api/v1/clicks/" + id + "/refund", mode: retrySafe}, &out)
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// ServingCampaign is one campaign of the serving feed.
type ServingCampaign struct {
	CampaignID   string  `json:"campaign_id"`
	CPCBidMicros int64   `json:"cpc_bid_micros"`
	Pacing       float64 `json:"pacing"` // share of eligible requests to bid on, in (0,1]
}

// ServingCampaigns returns the campaigns to serve now: only active ones, with their pacing.
func (c *Client) ServingCampaigns(ctx context.Context) ([]ServingCampaign, error) {
	var out struct {
		Campaigns []ServingCampaign `json:"campaigns"`
	}
	if err := c.do(ctx, request{method: http.MethodGet, path: "/api/v1/serving/campaigns"}, &out); err != nil {
		return nil, err
	}
	return out.Campaigns, nil
}

// UserViews is how many impressions of each catalog id a user saw on one UTC day.
type UserViews struct {
	UserID   string           `json:"user_id"`
	Date     string           `json:"date"` // YYYY-MM-DD, UTC
	Catalogs map[string]int64 `json:"catalogs"`
}

// UserViews returns a user's views on the UTC day of date (zero: today). The server keeps
// the last 7 days.
func (c *Client) UserViews(ctx context.Context, userID string, date time.Time) (*UserViews, error) {
	v := url.Values{}
	if !date.IsZero() {
		v.Set("date", date.UTC().Format(time.DateOnly))
	}
	var out UserViews
	if err := c.get(ctx, "/api/v1/users/", userID, v, &out, "/views"); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateClickURLs asks the server for signed URLs (admin key). Signer makes the same URLs
// without a request.
func (c *Client) CreateClickURLs(ctx context.Context, adID, impressionID, userID string, cpcMicros int64) (*ClickURLs, error) {
	in := struct {
		AdID         string `json:"ad_id"`
		ImpressionID string `json:"impression_id"`
		UserID       string `json:"user_id,omitempty"`
		CPCMicros    int64  `json:"cpc_micros,omitempty"`
	}{adID, impressionID, userID, cpcMicros}
	body, err := json.Marshal(in)
	if err != nil {
		return nil, err
	}
	var out ClickURLs
	// Signing is free of side effects: safe to retry.
	if err := c.do(ctx, request{method: http.MethodPost, path: "/api/v1/click-urls", ctype: "application/json", body: body}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateIngestKey makes a key for POST /events only (admin key). It is not retried after a
// failure that may have made a key; an unused key does no harm, but the caller decides.
func (c *Client) CreateIngestKey(ctx context.Context) (string, error) {
	return c.createKey(ctx, "/api/v1/ingest-keys")
}

// CreateAdvertiserKey makes a key that reads one advertiser's objects and metrics (admin key).
// Retried like CreateIngestKey.
func (c *Client) CreateAdvertiserKey(ctx context.Context, advertiserID string) (string, error) {
	if err := validIDs("id", advertiserID); err != nil {
		return "", err
	}
	return c.createKey(ctx, "/api/v1/advertisers/"+advertiserID+"/keys")
}

func (c *Client) createKey(ctx context.Context, path string) (string, error) {
	var out struct {
		Key string `json:"key"`
	}
	if err := c.do(ctx, request{method: http.MethodPost, path: path, mode: retryRefused}, &out); err != nil {
		return "", err
	}
	return out.Key, nil
}

func putObj[T any](ctx context.Context, c *Client, prefix, id string, in any) (*T, error) {
	var out T
	if err := c.put(ctx, prefix, id, in, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

func getObj[T any](ctx context.Context, c *Client, prefix, id string) (*T, error) {
	var out T
	if err := c.get(ctx, prefix, id, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

func (c *Client) put(ctx context.Context, prefix, id string, in, out any) error {
	if err := validIDs("id", id); err != nil {
		return err
	}
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	// A PUT is an upsert: sending it twice stores the same object.
	return c.do(ctx, request{method: http.MethodPut, path: prefix + id, ctype: "application/json", body: body}, out)
}

func (c *Client) get(ctx context.Context, prefix, id string, q url.Values, out any, suffix ...string) error {
	if err := validIDs("id", id); err != nil {
		return err
	}
	return c.do(ctx, request{method: http.MethodGet, path: prefix + id + strings.Join(suffix, ""), query: q}, out)
}

// validIDs checks ids before they go into a path or query, so a bad id fails here with a
// clear message and never changes the path (ids of [A-Za-z0-9._:-] need no escaping).
func validIDs(field string, ids ...string) error {
	for _, id := range ids {
		if !event.ValidID(id) || id == "." || id == ".." {
			return fieldError(field, fmt.Sprintf("%q %s", id, idRule))
		}
	}
	return nil
}
