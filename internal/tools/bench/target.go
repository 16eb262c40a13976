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
	"time"

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
}

func (t *target) addr() string { return strings.TrimPrefix(t.base, "http://") }

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

// do sends an authenticated request and decodes a 2xx JSON answer into out (when not nil).
func (t *target) do(ctx context.Context, method, path, ctype string, body []byte, out any) error {
	return t.doAt(ctx, t.base, method, path, ctype, body, out)
}

// doAt is do against base (an ingest node of a split deployment).
func (t *target) doAt(ctx context.Context, base, method, path, ctype string, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+t.adminKey)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %w", method, shortPath(path), &errStatus{resp.StatusCode, snippet(b)})
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: decode %s: %w", method, shortPath(path), snippet(b), err)
		}
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
	err := parallel(ctx, l.advertisers, 4, func(ctx context.Context, k int) error {
		return t.do(ctx, http.MethodPut, "/api/v1/advertisers/"+l.prefix+"-adv-"+strconv.Itoa(k), "application/json",
			[]byte(`{"name":"bench","timezone":"UTC"}`), nil)
	})
	if err != nil {
		return fmt.Errorf("create advertisers: %w", err)
	}
	err = parallel(ctx, l.campaigns, 8, func(ctx context.Context, j int) error {
		body := fmt.Sprintf(`{"advertiser_id":"%s-adv-%d","name":"bench","status":"active","cpc_bid_micros":100000,"daily_budget_micros":0,"total_budget_micros":0}`, l.prefix, j%l.advertisers)
		return t.do(ctx, http.MethodPut, "/api/v1/campaigns/"+l.prefix+"-cmp-"+strconv.Itoa(j), "application/json", []byte(body), nil)
	})
	if err != nil {
		return fmt.Errorf("create campaigns: %w", err)
	}
	const chunk = 100_000
	chunks := (l.ads + chunk - 1) / chunk
	err = parallel(ctx, chunks, 2, func(ctx context.Context, c int) error {
		var b bytes.Buffer
		from, to := c*chunk, min((c+1)*chunk, l.ads)
		for i := from; i < to; i++ {
			fmt.Fprintf(&b, `{"id":"%s-ad-%d","campaign_id":"%s-cmp-%d","landing_url":"https://shop.example/p/%d"}`+"\n", l.prefix, i, l.prefix, i%l.campaigns, i)
		}
		var resp eventsResponse
		if err := t.do(ctx, http.MethodPost, "/api/v1/bulk/ads", "application/x-ndjson", b.Bytes(), &resp); err != nil {
			return err
		}
		if resp.Accepted != to-from {
			return fmt.Errorf("bulk ads %d-%d: %d of %d accepted (%v)", from, to-1, resp.Accepted, to-from, resp.Errors)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("create ads: %w", err)
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

// metricsPoint and friends decode /metrics and /metrics/top answers.
type metricsResponse struct {
	Series []struct {
		AdID   string `json:"ad_id"`
		Points []struct {
			Time        string `json:"time"`
			Impressions int64  `json:"impressions"`
			Clicks      int64  `json:"clicks"`
		} `json:"points"`
	} `json:"series"`
}

// totals reads the totals of metric ("clicks" or "impressions") per ad over [from, to) from
// /metrics, 1000 ads per request.
func (t *target) totals(ctx context.Context, ads []string, metric string, from, to time.Time) (map[string]int64, error) {
	out := make(map[string]int64, len(ads))
	step := "1m"
	if to.Sub(from) > 6*time.Hour {
		step = "1h"
	}
	for i := 0; i < len(ads); i += 1000 {
		part := ads[i:min(i+1000, len(ads))]
		var resp metricsResponse
		path := "/metrics?ad_ids=" + strings.Join(part, ",") + "&start_time=" + fmtTime(from) + "&end_time=" + fmtTime(to) + "&interval=" + step
		if err := t.do(ctx, http.MethodGet, path, "", nil, &resp); err != nil {
			return nil, err
		}
		if len(resp.Series) != len(part) {
			return nil, fmt.Errorf("/metrics for %d ads answered %d series", len(part), len(resp.Series))
		}
		for j, s := range resp.Series {
			var n int64
			for _, p := range s.Points {
				if metric == "impressions" {
					n += p.Impressions
				} else {
					n += p.Clicks
				}
			}
			out[part[j]] = n
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
	var resp struct {
		Items []map[string]json.RawMessage `json:"items"`
	}
	path := "/metrics/top?n=" + strconv.Itoa(n) + "&metric=" + metric + "&by=ad&start_time=" + fmtTime(from) + "&end_time=" + fmtTime(to)
	if err := t.do(ctx, http.MethodGet, path, "", nil, &resp); err != nil {
		return nil, err
	}
	items := make([]topItem, len(resp.Items))
	for i, it := range resp.Items {
		if err := json.Unmarshal(it["ad_id"], &items[i].id); err != nil {
			return nil, fmt.Errorf("/metrics/top item %d: no ad_id", i)
		}
		if err := json.Unmarshal(it[metric], &items[i].value); err != nil {
			return nil, fmt.Errorf("/metrics/top item %d: no %s", i, metric)
		}
	}
	return items, nil
}
