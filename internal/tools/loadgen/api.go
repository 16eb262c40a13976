package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
)

// api calls the authenticated endpoints: catalog setup, /metrics and /metrics/top.
type api struct {
	base    string // API base URL, without a trailing slash
	metrics string // base URL of /metrics and /metrics/top
	key     string
	c       *http.Client
}

// errNoMetrics: the server does not serve the metrics endpoints (yet).
var errNoMetrics = errors.New("the server answers 404 for the metrics endpoints")

// statusError is a non-2xx answer.
type statusError struct {
	method, url string
	status      int
	body        string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("%s %s: %d %s", e.method, e.url, e.status, e.body)
}

func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

// do sends a request and decodes a 2xx JSON answer into out (when not nil).
func (a *api) do(ctx context.Context, method, rawURL, ctype string, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, rawURL, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+a.key)
	req.Header.Set("User-Agent", toolUA)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := a.c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, rawURL, err)
	}
	if resp.StatusCode/100 != 2 {
		return &statusError{method: method, url: rawURL, status: resp.StatusCode, body: snippet(b)}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: decode %q: %w", method, rawURL, snippet(b), err)
		}
	}
	return nil
}

// parallel runs fn(0..n-1) on up to workers goroutines and returns the first error; after
// it, ctx is cancelled and the remaining calls are skipped.
func parallel(ctx context.Context, n, workers int, fn func(ctx context.Context, i int) error) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	for i := 0; i < n && ctx.Err() == nil; i++ {
		g.Go(func() error { return fn(ctx, i) })
	}
	return g.Wait()
}

var timezones = [...]string{"UTC", "Asia/Kolkata", "America/New_York", "Europe/Berlin"}

// campaignBid is the deterministic CPC bid of campaign j: 0.10 to 1.05.
func campaignBid(j int) int64 { return 100_000 + int64(j*7919%20)*50_000 }

// bulkChunk is the number of ads per POST /api/v1/bulk/ads (the server takes 100,000 lines).
const bulkChunk = 10_000

// setup creates (upserts) the layout's advertisers, campaigns and ads. Budgets are unlimited
// unless dailyBudget is set.
func (a *api) setup(ctx context.Context, lay Layout, dailyBudget int64) error {
	const workers = 8
	err := parallel(ctx, lay.Advertisers, workers, func(ctx context.Context, k int) error {
		body, _ := json.Marshal(map[string]string{"name": "loadgen advertiser " + strconv.Itoa(k), "timezone": timezones[k%len(timezones)]})
		return a.do(ctx, http.MethodPut, a.base+"/api/v1/advertisers/"+lay.AdvertiserID(k), "application/json", body, nil)
	})
	if err != nil {
		return fmt.Errorf("create advertisers: %w", err)
	}
	err = parallel(ctx, lay.Campaigns, workers, func(ctx context.Context, j int) error {
		body, _ := json.Marshal(map[string]any{
			"advertiser_id": lay.AdvertiserID(lay.AdvertiserOf(j)), "name": "loadgen campaign " + strconv.Itoa(j),
			"status": "active", "cpc_bid_micros": campaignBid(j), "daily_budget_micros": dailyBudget, "total_budget_micros": 0,
		})
		return a.do(ctx, http.MethodPut, a.base+"/api/v1/campaigns/"+lay.CampaignID(j), "application/json", body, nil)
	})
	if err != nil {
		return fmt.Errorf("create campaigns: %w", err)
	}
	adJSON := func(i int, withID bool) []byte {
		m := map[string]string{"campaign_id": lay.CampaignID(lay.CampaignOf(i)), "landing_url": "https://shop.example/p/" + strconv.Itoa(i), "catalog_id": "cat" + strconv.Itoa(i%500)}
		if withID {
			m["id"] = lay.AdID(i)
		}
		b, _ := json.Marshal(m)
		return b
	}
	if lay.Ads <= 10 {
		err = parallel(ctx, lay.Ads, workers, func(ctx context.Context, i int) error {
			return a.do(ctx, http.MethodPut, a.base+"/api/v1/ads/"+lay.AdID(i), "application/json", adJSON(i, false), nil)
		})
		if err != nil {
			return fmt.Errorf("create ads: %w", err)
		}
		return nil
	}
	chunks := (lay.Ads + bulkChunk - 1) / bulkChunk
	err = parallel(ctx, chunks, 2, func(ctx context.Context, c int) error {
		var body bytes.Buffer
		from, to := c*bulkChunk, min((c+1)*bulkChunk, lay.Ads)
		for i := from; i < to; i++ {
			body.Write(adJSON(i, true))
			body.WriteByte('\n')
		}
		var resp struct {
			Accepted int `json:"accepted"`
			Rejected int `json:"rejected"`
			Errors   []struct {
				Line    int    `json:"line"`
				Message string `json:"message"`
			} `json:"errors"`
		}
		if err := a.do(ctx, http.MethodPost, a.base+"/api/v1/bulk/ads", "application/x-ndjson", body.Bytes(), &resp); err != nil {
			return err
		}
		if resp.Accepted != to-from {
			first := ""
			if len(resp.Errors) > 0 {
				first = fmt.Sprintf(" (line %d: %s)", resp.Errors[0].Line, resp.Errors[0].Message)
			}
			return fmt.Errorf("bulk ads %d-%d: %d of %d accepted%s", from, to-1, resp.Accepted, to-from, first)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("create ads: %w", err)
	}
	return nil
}

// preflight checks that the layout exists as this run assumes: the first and last ad, in the
// campaigns the layout puts them in.
func (a *api) preflight(ctx context.Context, lay Layout) error {
	for _, i := range []int{0, lay.Ads - 1} {
		var ad struct {
			CampaignID string `json:"campaign_id"`
		}
		if err := a.do(ctx, http.MethodGet, a.base+"/api/v1/ads/"+lay.AdID(i), "", nil, &ad); err != nil {
			var se *statusError
			if errors.As(err, &se) && se.status == http.StatusNotFound {
				return fmt.Errorf("ad %s does not exist: run with --setup, or give the --ads/--campaigns/--advertisers/--id-prefix of the run that created the ads", lay.AdID(i))
			}
			return fmt.Errorf("check ads: %w", err)
		}
		if want := lay.CampaignID(lay.CampaignOf(i)); ad.CampaignID != want {
			return fmt.Errorf("ad %s is in campaign %q, this layout says %q: give the --ads/--campaigns/--advertisers of the run that created the ads, or run with --setup", lay.AdID(i), ad.CampaignID, want)
		}
	}
	return nil
}

var levelParams = [numLevels]string{"ad_ids", "campaign_ids", "advertiser_ids"}

// maxPointsPerRequest bounds one /metrics answer (ids x points).
const maxPointsPerRequest = 200_000

func fmtMinute(m int64) string { return time.Unix(m*60, 0).UTC().Format(time.RFC3339) }

// fetchMetrics reads the 1m series of ids at lv over [start, end) (Unix minutes).
func (a *api) fetchMetrics(ctx context.Context, lv Level, ids []string, start, end int64) (observed, error) {
	obs := make(observed, len(ids))
	points := max(int(end-start), 1)
	chunk := max(1, min(500, maxPointsPerRequest/points))
	for from := 0; from < len(ids); from += chunk {
		part := ids[from:min(from+chunk, len(ids))]
		esc := make([]string, len(part))
		for i, id := range part {
			esc[i] = url.QueryEscape(id)
		}
		u := a.metrics + "/metrics?" + levelParams[lv] + "=" + strings.Join(esc, ",") +
			"&start_time=" + url.QueryEscape(fmtMinute(start)) + "&end_time=" + url.QueryEscape(fmtMinute(end)) + "&interval=1m"
		var resp metricsResponse
		if err := a.do(ctx, http.MethodGet, u, "", nil, &resp); err != nil {
			var se *statusError
			if errors.As(err, &se) && se.status == http.StatusNotFound {
				return nil, fmt.Errorf("%w: %s", errNoMetrics, se.body)
			}
			return nil, err
		}
		if len(resp.Series) != len(part) {
			return nil, fmt.Errorf("GET /metrics for %d %s ids answered %d series", len(part), lv, len(resp.Series))
		}
		for i, s := range resp.Series {
			if got := s.id(lv); got != "" && got != part[i] {
				return nil, fmt.Errorf("GET /metrics: series %d is %q, requested %q (series must come in request order)", i, got, part[i])
			}
			mins := make(map[int64]*counts, len(s.Points))
			for _, p := range s.Points {
				t, err := time.Parse(time.RFC3339, p.Time)
				if err != nil {
					return nil, fmt.Errorf("GET /metrics: series %s: point time %q: %w", part[i], p.Time, err)
				}
				m := floorDiv(t.Unix(), 60)
				c := mins[m]
				if c == nil {
					c = new(counts)
					mins[m] = c
				}
				c[MetricImpressions] += p.Impressions
				c[MetricClicks] += p.Clicks
				c[MetricInvalidClicks] += p.InvalidClicks
				c[MetricAddToCart] += p.Interactions["add_to_cart"]
				c[MetricOrder] += p.Interactions["order"]
			}
			obs[part[i]] = mins
		}
	}
	return obs, nil
}

type metricsResponse struct {
	Series []metricsSeries `json:"series"`
}

type metricsSeries struct {
	AdID         string         `json:"ad_id"`
	CampaignID   string         `json:"campaign_id"`
	AdvertiserID string         `json:"advertiser_id"`
	Points       []metricsPoint `json:"points"`
}

func (s *metricsSeries) id(lv Level) string {
	switch lv {
	case LevelCampaign:
		return s.CampaignID
	case LevelAdvertiser:
		return s.AdvertiserID
	}
	return s.AdID
}

type metricsPoint struct {
	Time          string           `json:"time"`
	Impressions   int64            `json:"impressions"`
	Clicks        int64            `json:"clicks"`
	InvalidClicks int64            `json:"invalid_clicks"`
	SpendMicros   int64            `json:"spend_micros"`
	Interactions  map[string]int64 `json:"interactions"`
}

// maxTopN is the largest n of GET /metrics/top.
const maxTopN = 1000

// fetchTop reads the top list of metric m by lv over [start, end).
func (a *api) fetchTop(ctx context.Context, lv Level, m Metric, n int, start, end int64) ([]topItem, error) {
	u := a.metrics + "/metrics/top?n=" + strconv.Itoa(n) + "&metric=" + m.String() + "&by=" + lv.String() +
		"&start_time=" + url.QueryEscape(fmtMinute(start)) + "&end_time=" + url.QueryEscape(fmtMinute(end))
	var resp struct {
		Items []map[string]json.RawMessage `json:"items"`
	}
	if err := a.do(ctx, http.MethodGet, u, "", nil, &resp); err != nil {
		var se *statusError
		if errors.As(err, &se) && se.status == http.StatusNotFound {
			return nil, fmt.Errorf("%w: %s", errNoMetrics, se.body)
		}
		return nil, err
	}
	if len(resp.Items) > n {
		return nil, fmt.Errorf("GET /metrics/top?n=%d answered %d items", n, len(resp.Items))
	}
	items := make([]topItem, len(resp.Items))
	for i, it := range resp.Items {
		idField := lv.String() + "_id"
		if err := json.Unmarshal(it[idField], &items[i].id); err != nil || items[i].id == "" {
			return nil, fmt.Errorf("GET /metrics/top: item %d has no %s", i, idField)
		}
		if err := json.Unmarshal(it[m.String()], &items[i].value); err != nil {
			return nil, fmt.Errorf("GET /metrics/top: item %d (%s) has no integer %s", i, items[i].id, m)
		}
	}
	return items, nil
}
