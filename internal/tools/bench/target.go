package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/adpulse/adpulse/client"
	"github.com/adpulse/adpulse/internal/clicktoken"
	"golang.org/x/sync/errgroup"
)

// target is one system under test: adpulse (a child the bench started, or a running one) or a
// baseline. Every scenario talks to it over HTTP only.
type target struct {
	name     string // "adpulse", "clickhouse", "redis"
	base     string // http://host:port of the API
	ops      string // http://host:port of the ops listener; "" when unknown
	adminKey string
	keys     *clicktoken.Keyring
	catalog  bool // ads must be created through the catalog API before events name them

	proc *child // when the bench started it: /proc figures and kill -9 are possible
	// the processes of a baseline whose RSS and CPU are summed (nil for adpulse), and a note
	// of what the figure covers
	pids    func(ctx context.Context) []int
	resNote string

	client *http.Client

	// ingest are the ingest nodes' http://host:port of a split deployment, which take the
	// clicks and batches (base is then its query node); empty: base takes everything.
	ingest []string
	apiMu  sync.Mutex
	api    *client.Client // the public client over client, for setup and reads; see apiClient
}

// apiClient is the public Go client for the target's catalog and query calls. One attempt
// per call: a bench must see failures, not retry them away.
func (t *target) apiClient() (*client.Client, error) {
	t.apiMu.Lock()
	defer t.apiMu.Unlock()
	if t.api != nil {
		return t.api, nil
	}
	c, err := client.New(client.Config{BaseURL: t.base, Key: t.adminKey, HTTPClient: t.client, MaxAttempts: 1, AttemptTimeout: 5 * time.Minute})
	if err != nil {
		return nil, err
	}
	t.api = c
	return c, nil
}

func (t *target) addr() string { return strings.TrimPrefix(t.base, "http://") }

// moveTo points the target at a restarted process's listeners (new ports) and drops the API
// client made for the old ones.
func (t *target) moveTo(api, ops string) {
	t.apiMu.Lock()
	defer t.apiMu.Unlock()
	t.base, t.ops, t.api = "http://"+api, "http://"+ops, nil
}

// ingestAddrs are the host:port the click loops spread their connections over.
func (t *target) ingestAddrs() []string {
	if len(t.ingest) == 0 {
		return []string{t.addr()}
	}
	out := make([]string, len(t.ingest))
	for i, u := range t.ingest {
		out[i] = strings.TrimPrefix(u, "http://")
	}
	return out
}

// ingestBase is the base URL the i-th sender of batches posts to.
func (t *target) ingestBase(i int) string {
	if len(t.ingest) == 0 {
		return t.base
	}
	return t.ingest[i%len(t.ingest)]
}

// pidList is the processes whose RSS and CPU the resource rows report.
func (t *target) pidList(ctx context.Context) []int {
	if t.proc != nil {
		return []int{t.proc.pid()}
	}
	if t.pids != nil {
		return t.pids(ctx)
	}
	return nil
}

func newAPIClient(conns int) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        conns,
			MaxIdleConnsPerHost: conns,
			IdleConnTimeout:     30 * time.Second,
			DisableCompression:  true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       5 * time.Minute,
	}
}

// doAt sends an authenticated request to base (the target, or an ingest node of a split
// deployment) and decodes a 2xx JSON answer into out (when not nil).
func (t *target) doAt(ctx context.Context, base, method, path, ctype string, body []byte, out any) error {
	b, err := t.fetch(ctx, base, method, path, ctype, body)
	if err != nil {
		return err
	}
	return decodeAnswer(method, path, b, out)
}

// fetch sends a request and returns the whole body of a 2xx answer: the request's latency
// ends when fetch returns, before the load generator decodes the answer.
func (t *target) fetch(ctx context.Context, base, method, path, ctype string, body []byte) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+t.adminKey)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("%s %s: %w", method, shortPath(path), &errStatus{resp.StatusCode, snippet(b)})
	}
	return b, nil
}

// decodeAnswer decodes the JSON answer b of method path into out (nil: not decoded).
func decodeAnswer(method, path string, b []byte, out any) error {
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: decode %s: %w", method, shortPath(path), snippet(b), err)
	}
	return nil
}

func shortPath(p string) string {
	if len(p) > 120 {
		return p[:120] + "..."
	}
	return p
}

// eventsResponse is the answer to POST /events.
type eventsResponse struct {
	Accepted   int `json:"accepted"`
	Duplicates int `json:"duplicates"`
	Rejected   int `json:"rejected"`
	Errors     []struct {
		Line    int    `json:"line"`
		Message string `json:"message"`
	} `json:"errors"`
}

// layout is a set of ads the bench creates: ad i is prefix-ad-i in campaign prefix-cmp-(i %
// campaigns), campaign j of advertiser prefix-adv-(j % advertisers).
type layout struct {
	prefix                      string
	ads, campaigns, advertisers int
}

func newLayout(prefix string, ads int) layout {
	c := max(1, min(1000, ads/10))
	return layout{prefix: prefix, ads: ads, campaigns: c, advertisers: max(1, min(10, c))}
}

func (l layout) adID(i int) string { return l.prefix + "-ad-" + strconv.Itoa(i) }

// setupAds creates the layout's advertisers, campaigns and ads (adpulse only; the baselines
// keep no catalog). Ads go in bulk, 100,000 per request.
func (t *target) setupAds(ctx context.Context, l layout) error {
	if !t.catalog {
		return nil
	}
	api, err := t.apiClient()
	if err != nil {
		return err
	}
	err = parallel(ctx, l.advertisers, 4, func(ctx context.Context, k int) error {
		_, err := api.PutAdvertiser(ctx, l.prefix+"-adv-"+strconv.Itoa(k), client.AdvertiserInput{Name: "bench", Timezone: "UTC"})
		return err
	})
	if err != nil {
		return fmt.Errorf("create advertisers: %w", err)
	}
	err = parallel(ctx, l.campaigns, 8, func(ctx context.Context, j int) error {
		_, err := api.PutCampaign(ctx, l.prefix+"-cmp-"+strconv.Itoa(j), client.CampaignInput{
			AdvertiserID: l.prefix + "-adv-" + strconv.Itoa(j%l.advertisers), Name: "bench", Status: client.StatusActive, CPCBidMicros: 100_000,
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("create campaigns: %w", err)
	}
	const chunk = client.MaxBulkAds
	chunks := (l.ads + chunk - 1) / chunk
	err = parallel(ctx, chunks, 2, func(ctx context.Context, c int) error {
		from, to := c*chunk, min((c+1)*chunk, l.ads)
		ads := make([]client.BulkAd, 0, to-from)
		for i := from; i < to; i++ {
			ads = append(ads, client.BulkAd{ID: l.adID(i), AdInput: client.AdInput{
				CampaignID: l.prefix + "-cmp-" + strconv.Itoa(i%l.campaigns), LandingURL: "https://shop.example/p/" + strconv.Itoa(i),
			}})
		}
		res, err := api.BulkAds(ctx, ads)
		if err != nil {
			return err
		}
		if res.Accepted != to-from {
			return fmt.Errorf("bulk ads %d-%d: %d of %d accepted (%v)", from, to-1, res.Accepted, to-from, res.Errors)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("create ads: %w", err)
	}
	return t.waitCatalog(ctx, l.adID(l.ads-1))
}

// waitCatalog waits until every ingest node of a split deployment knows ad (the catalog change
// feed brings it within 2 s): clicks sent before would get 404, as the contract allows.
func (t *target) waitCatalog(ctx context.Context, ad string) error {
	body := []byte(`{"ad_id":"` + ad + `","impression_id":"catalog-probe"}`)
	for _, base := range t.ingest {
		deadline := time.Now().Add(30 * time.Second)
		for {
			err := t.doAt(ctx, base, http.MethodPost, "/api/v1/click-urls", "application/json", body, nil)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("ad %s unknown to %s 30s after it was created: %w", ad, base, err)
			}
			if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
				return err
			}
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

func fmtTime(t time.Time) string { return url.QueryEscape(t.UTC().Format(time.RFC3339)) }

// totals reads the totals of metric ("clicks" or "impressions") per ad over [from, to) from
// /metrics, 1000 ads per request.
func (t *target) totals(ctx context.Context, ads []string, metric string, from, to time.Time) (map[string]int64, error) {
	api, err := t.apiClient()
	if err != nil {
		return nil, err
	}
	out := make(map[string]int64, len(ads))
	step := time.Minute
	if to.Sub(from) > 6*time.Hour {
		step = time.Hour
	}
	for i := 0; i < len(ads); i += 1000 {
		part := ads[i:min(i+1000, len(ads))]
		resp, err := api.Metrics(ctx, client.MetricsQuery{AdIDs: part, Start: from, End: to, Interval: step})
		if err != nil {
			return nil, err
		}
		if len(resp.Series) != len(part) {
			return nil, fmt.Errorf("/metrics for %d ads answered %d series", len(part), len(resp.Series))
		}
		for j, s := range resp.Series {
			tot := s.Totals()
			if metric == "impressions" {
				out[part[j]] = tot.Impressions
			} else {
				out[part[j]] = tot.Clicks
			}
		}
	}
	return out, nil
}

type topItem struct {
	id    string
	value int64
}

// top reads /metrics/top by ad.
func (t *target) top(ctx context.Context, metric string, n int, from, to time.Time) ([]topItem, error) {
	api, err := t.apiClient()
	if err != nil {
		return nil, err
	}
	resp, err := api.Top(ctx, client.TopQuery{N: n, Metric: metric, By: client.ByAd, Start: from, End: to})
	if err != nil {
		return nil, err
	}
	items := make([]topItem, len(resp.Items))
	for i, it := range resp.Items {
		items[i] = topItem{id: it.ID, value: it.Value}
	}
	return items, nil
}
