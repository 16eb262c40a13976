package loadgen

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/adpulse/adpulse/client"
	"golang.org/x/sync/errgroup"
)

// api calls the authenticated endpoints through the public client package: catalog setup
// at the target, /metrics and /metrics/top at the metrics URL.
type api struct {
	admin   *client.Client
	metrics *client.Client
}

func newAPI(target, metricsURL, key string, hc *http.Client) (*api, error) {
	admin, err := client.New(client.Config{BaseURL: target, Key: key, HTTPClient: hc})
	if err != nil {
		return nil, err
	}
	metrics, err := client.New(client.Config{BaseURL: metricsURL, Key: key, HTTPClient: hc})
	if err != nil {
		return nil, err
	}
	return &api{admin: admin, metrics: metrics}, nil
}

// errNoMetrics: the server does not serve the metrics endpoints (yet).
var errNoMetrics = errors.New("the server answers 404 for the metrics endpoints")

// notFound reports whether err is the server's 404.
func notFound(err error) bool {
	var ae *client.APIError
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound
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
		_, err := a.admin.PutAdvertiser(ctx, lay.AdvertiserID(k), client.AdvertiserInput{Name: "loadgen advertiser " + strconv.Itoa(k), Timezone: timezones[k%len(timezones)]})
		return err
	})
	if err != nil {
		return fmt.Errorf("create advertisers: %w", err)
	}
	err = parallel(ctx, lay.Campaigns, workers, func(ctx context.Context, j int) error {
		_, err := a.admin.PutCampaign(ctx, lay.CampaignID(j), client.CampaignInput{
			AdvertiserID: lay.AdvertiserID(lay.AdvertiserOf(j)), Name: "loadgen campaign " + strconv.Itoa(j),
			Status: client.StatusActive, CPCBidMicros: campaignBid(j), DailyBudgetMicros: dailyBudget,
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("create campaigns: %w", err)
	}
	adOf := func(i int) client.AdInput {
		return client.AdInput{CampaignID: lay.CampaignID(lay.CampaignOf(i)), LandingURL: "https://shop.example/p/" + strconv.Itoa(i), CatalogID: "cat" + strconv.Itoa(i%500)}
	}
	if lay.Ads <= 10 {
		err = parallel(ctx, lay.Ads, workers, func(ctx context.Context, i int) error {
			_, err := a.admin.PutAd(ctx, lay.AdID(i), adOf(i))
			return err
		})
		if err != nil {
			return fmt.Errorf("create ads: %w", err)
		}
		return nil
	}
	chunks := (lay.Ads + bulkChunk - 1) / bulkChunk
	err = parallel(ctx, chunks, 2, func(ctx context.Context, c int) error {
		from, to := c*bulkChunk, min((c+1)*bulkChunk, lay.Ads)
		ads := make([]client.BulkAd, 0, to-from)
		for i := from; i < to; i++ {
			ads = append(ads, client.BulkAd{ID: lay.AdID(i), AdInput: adOf(i)})
		}
		res, err := a.admin.BulkAds(ctx, ads)
		if err != nil {
			return err
		}
		if res.Accepted != to-from {
			first := ""
			if len(res.Errors) > 0 {
				first = fmt.Sprintf(" (ad %s: %s)", ads[res.Errors[0].Index].ID, res.Errors[0].Message)
			}
			return fmt.Errorf("bulk ads %d-%d: %d of %d accepted%s", from, to-1, res.Accepted, to-from, first)
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
		ad, err := a.admin.GetAd(ctx, lay.AdID(i))
		if err != nil {
			if notFound(err) {
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

// maxPointsPerRequest bounds one /metrics answer (ids x points).
const maxPointsPerRequest = 200_000

func minuteStart(m int64) time.Time { return time.Unix(m*60, 0).UTC() }

// fetchMetrics reads the 1m series of ids at lv over [start, end) (Unix minutes).
func (a *api) fetchMetrics(ctx context.Context, lv Level, ids []string, start, end int64) (observed, error) {
	obs := make(observed, len(ids))
	points := max(int(end-start), 1)
	chunk := max(1, min(500, maxPointsPerRequest/points))
	for from := 0; from < len(ids); from += chunk {
		part := ids[from:min(from+chunk, len(ids))]
		q := client.MetricsQuery{Start: minuteStart(start), End: minuteStart(end), Interval: time.Minute}
		switch lv {
		case LevelCampaign:
			q.CampaignIDs = part
		case LevelAdvertiser:
			q.AdvertiserIDs = part
		default:
			q.AdIDs = part
		}
		resp, err := a.metrics.Metrics(ctx, q)
		if err != nil {
			if notFound(err) {
				return nil, fmt.Errorf("%w: %v", errNoMetrics, err)
			}
			return nil, err
		}
		if len(resp.Series) != len(part) {
			return nil, fmt.Errorf("GET /metrics for %d %s ids answered %d series", len(part), lv, len(resp.Series))
		}
		for i, s := range resp.Series {
			if got := s.ID(); got != "" && got != part[i] {
				return nil, fmt.Errorf("GET /metrics: series %d is %q, requested %q (series must come in request order)", i, got, part[i])
			}
			mins := make(map[int64]*counts, len(s.Points))
			for _, p := range s.Points {
				m := floorDiv(p.Time.Unix(), 60)
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

// maxTopN is the largest n of GET /metrics/top.
const maxTopN = 1000

// fetchTop reads the top list of metric m by lv over [start, end).
func (a *api) fetchTop(ctx context.Context, lv Level, m Metric, n int, start, end int64) ([]topItem, error) {
	resp, err := a.metrics.Top(ctx, client.TopQuery{N: n, Metric: m.String(), By: lv.String(), Start: minuteStart(start), End: minuteStart(end)})
	if err != nil {
		if notFound(err) {
			return nil, fmt.Errorf("%w: %v", errNoMetrics, err)
		}
		return nil, err
	}
	if len(resp.Items) > n {
		return nil, fmt.Errorf("GET /metrics/top?n=%d answered %d items", n, len(resp.Items))
	}
	items := make([]topItem, len(resp.Items))
	for i, it := range resp.Items {
		items[i] = topItem{id: it.ID, value: it.Value}
	}
	return items, nil
}
