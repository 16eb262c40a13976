package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/client"
	"github.com/adpulse/adpulse/internal/config"
	"github.com/adpulse/adpulse/internal/server"
)

const (
	testAdminKey = "adp_admin_client-test-0123456789"
	testSecret   = "k1:0123456789abcdef0123456789abcdef"
	browserUA    = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
)

// startServer runs a full embedded adpulse in this process on a loopback port, with data in
// dir, and returns its base URL and a function that stops it.
func startServer(dir string, mutate func(*config.Config)) (string, func() error, error) {
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.Listen = "127.0.0.1:0"
	cfg.OpsListen = "127.0.0.1:0"
	cfg.AdminKey = testAdminKey
	cfg.ClickSecret = testSecret
	// Tests send far more from one loopback address than the default limits allow a client.
	cfg.RateLimitIP, cfg.RateLimitKey = 0, 0
	if mutate != nil {
		mutate(&cfg)
	}
	app, err := server.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return "", nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx) }()
	select {
	case <-app.Ready():
	case err := <-done:
		cancel()
		return "", nil, fmt.Errorf("server stopped: %w", err)
	case <-time.After(30 * time.Second):
		cancel()
		return "", nil, errors.New("server not ready after 30s")
	}
	stop := func() error { cancel(); return <-done }
	return "http://" + app.APIAddr(), stop, nil
}

func startTestServer(t *testing.T, mutate func(*config.Config)) string {
	t.Helper()
	base, stop, err := startServer(t.TempDir(), mutate)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("server: %v", err)
		}
	})
	return base
}

func newClient(t testing.TB, cfg client.Config) *client.Client {
	t.Helper()
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// setupCatalog makes advertiser adv1, campaign c1 (bid 0.50) and ads ad0..ad{n-1}.
func setupCatalog(ctx context.Context, c *client.Client, ads int) error {
	if _, err := c.PutAdvertiser(ctx, "adv1", client.AdvertiserInput{Name: "Acme", Timezone: "UTC"}); err != nil {
		return err
	}
	if _, err := c.PutCampaign(ctx, "c1", client.CampaignInput{AdvertiserID: "adv1", Name: "Diwali", Status: client.StatusActive, CPCBidMicros: 500_000}); err != nil {
		return err
	}
	for i := range ads {
		if _, err := c.PutAd(ctx, fmt.Sprint("ad", i), client.AdInput{CampaignID: "c1", LandingURL: "https://shop.example/p/" + fmt.Sprint(i), CatalogID: "cat7"}); err != nil {
			return err
		}
	}
	return nil
}

// waitFor polls check until it returns nil or 15s have passed.
func waitFor(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %v after 15s", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func adTotals(ctx context.Context, c *client.Client, ids ...string) (map[string]client.Point, error) {
	m, err := c.Metrics(ctx, client.MetricsQuery{AdIDs: ids, Start: time.Now().Add(-time.Hour), End: time.Now().Add(time.Minute)})
	if err != nil {
		return nil, err
	}
	out := map[string]client.Point{}
	for i := range m.Series {
		out[m.Series[i].ID()] = m.Series[i].Totals()
	}
	return out, nil
}

// TestSignedURLsAcceptedByServer signs offline and checks the real server takes the URLs:
// 302 to the landing page for the click, the GIF for the impression, and both counted.
func TestSignedURLsAcceptedByServer(t *testing.T) {
	base := startTestServer(t, nil)
	ctx := context.Background()
	c := newClient(t, client.Config{BaseURL: base, Key: testAdminKey})
	if err := setupCatalog(ctx, c, 1); err != nil {
		t.Fatal(err)
	}
	s, err := client.NewSigner(client.SignerConfig{Secret: testSecret, BaseURL: base})
	if err != nil {
		t.Fatal(err)
	}
	urls, err := s.URLs("ad0", "imp-1", "u1", 400_000)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(urls.ExpiresAt); d < 59*time.Minute || d > time.Hour {
		t.Errorf("ExpiresAt %v: want about an hour from now", urls.ExpiresAt)
	}
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(u string) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		req.Header.Set("User-Agent", browserUA)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	if resp := get(urls.ImpressionURL); resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "image/gif" {
		t.Fatalf("impression URL: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	resp := get(urls.ClickURL)
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "https://shop.example/p/0" {
		t.Fatalf("click URL: %d Location %q, want 302 to the landing page", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp := get(urls.ClickURL); resp.StatusCode != http.StatusFound {
		t.Fatalf("repeated click: %d, want 302", resp.StatusCode)
	}
	// A token signed with another secret is refused and redirects nowhere.
	other, _ := client.NewSigner(client.SignerConfig{Secret: "k1:another-secret-0123456789abcdef", BaseURL: base})
	forged, _, _ := other.ClickURL("ad0", "imp-2", "", 0)
	if resp := get(forged); resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Location") != "" {
		t.Fatalf("forged click URL: %d Location %q, want 400 and none", resp.StatusCode, resp.Header.Get("Location"))
	}

	waitFor(t, "metrics of the signed click", func() error {
		tot, err := adTotals(ctx, c, "ad0")
		if err != nil {
			return err
		}
		if p := tot["ad0"]; p.Impressions != 1 || p.Clicks != 1 || p.SpendMicros != 400_000 {
			return fmt.Errorf("impressions %d clicks %d spend %d, want 1, 1, 400000", p.Impressions, p.Clicks, p.SpendMicros)
		}
		return nil
	})

	// The click is in the ledger at the signed price, and refunds once.
	var click *client.Click
	waitFor(t, "ledger entry", func() (err error) { click, err = c.Click(ctx, "imp-1"); return err })
	if click.ChargedMicros != 400_000 || click.AdID != "ad0" || click.CampaignID != "c1" || click.Status != "charged" {
		t.Fatalf("click %+v", click)
	}
	ref, err := c.RefundClick(ctx, "imp-1")
	if err != nil || ref.RefundedMicros != 400_000 || ref.AlreadyRefunded || ref.Status != "refunded" {
		t.Fatalf("refund: %+v, %v", ref, err)
	}
	ref, err = c.RefundClick(ctx, "imp-1")
	if err != nil || ref.RefundedMicros != 0 || !ref.AlreadyRefunded {
		t.Fatalf("second refund: %+v, %v", ref, err)
	}

	// User views count the impression by the ad's catalog id.
	waitFor(t, "user views", func() error {
		v, err := c.UserViews(ctx, "u1", time.Time{})
		if err != nil {
			return err
		}
		if v.UserID != "u1" || v.Catalogs["cat7"] != 1 {
			return fmt.Errorf("views %+v", v)
		}
		return nil
	})
}

// TestCatalogAndFeed round-trips the catalog and reads the serving feed.
func TestCatalogAndFeed(t *testing.T) {
	base := startTestServer(t, nil)
	ctx := context.Background()
	c := newClient(t, client.Config{BaseURL: base, Key: testAdminKey})
	if err := setupCatalog(ctx, c, 1); err != nil {
		t.Fatal(err)
	}
	adv, err := c.GetAdvertiser(ctx, "adv1")
	if err != nil || adv.Name != "Acme" || adv.Timezone != "UTC" || adv.CreatedAt.IsZero() {
		t.Fatalf("GetAdvertiser: %+v, %v", adv, err)
	}
	bid := int64(700_000)
	ad, err := c.PutAd(ctx, "ad9", client.AdInput{CampaignID: "c1", LandingURL: "https://shop.example/9", CPCBidMicros: &bid})
	if err != nil || ad.CPCBidMicros == nil || *ad.CPCBidMicros != bid || ad.CatalogID != "" {
		t.Fatalf("PutAd: %+v, %v", ad, err)
	}
	if ad, err = c.GetAd(ctx, "ad0"); err != nil || ad.CatalogID != "cat7" || ad.CPCBidMicros != nil {
		t.Fatalf("GetAd: %+v, %v", ad, err)
	}
	camp, err := c.PutCampaign(ctx, "c2", client.CampaignInput{AdvertiserID: "adv1", Name: "Holi", CPCBidMicros: 300_000, DailyBudgetMicros: 5_000_000})
	if err != nil || camp.ServingStatus != client.StatusActive || camp.Budget.RemainingTodayMicros == nil || *camp.Budget.RemainingTodayMicros != 5_000_000 {
		t.Fatalf("PutCampaign: %+v, %v", camp, err)
	}
	if camp, err = c.GetCampaign(ctx, "c1"); err != nil || camp.Budget.RemainingTodayMicros != nil || camp.Budget.Day == "" {
		t.Fatalf("GetCampaign (unlimited): %+v, %v", camp, err)
	}
	waitFor(t, "serving feed", func() error {
		feed, err := c.ServingCampaigns(ctx)
		if err != nil {
			return err
		}
		got := map[string]client.ServingCampaign{}
		for _, sc := range feed {
			got[sc.CampaignID] = sc
		}
		if got["c1"].CPCBidMicros != 500_000 || got["c2"].CPCBidMicros != 300_000 || got["c2"].Pacing <= 0 {
			return fmt.Errorf("feed %+v", feed)
		}
		return nil
	})

	// Errors come back typed, from the contract's error body.
	_, err = c.GetAd(ctx, "nope")
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != 404 || ae.Code != client.CodeNotFound || ae.Message == "" {
		t.Fatalf("GetAd(nope): %v", err)
	}
	_, err = c.PutAd(ctx, "ad8", client.AdInput{CampaignID: "c1", LandingURL: "javascript:alert(1)"})
	if !errors.As(err, &ae) || ae.Status != 400 || ae.Code != client.CodeInvalidArgument || !strings.Contains(ae.Message, "landing_url") {
		t.Fatalf("PutAd(bad URL): %v", err)
	}
	bad := newClient(t, client.Config{BaseURL: base, Key: "wrong"})
	if _, err = bad.GetAd(ctx, "ad0"); !errors.As(err, &ae) || ae.Status != 401 || ae.Code != client.CodeUnauthenticated {
		t.Fatalf("wrong key: %v", err)
	}
	// An ingest key may send events but not read the catalog.
	key, err := c.CreateIngestKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ing := newClient(t, client.Config{BaseURL: base, Key: key})
	if _, err = ing.GetAd(ctx, "ad0"); !errors.As(err, &ae) || ae.Status != 403 || ae.Code != client.CodePermissionDenied {
		t.Fatalf("ingest key reading the catalog: %v", err)
	}
	if res, err := ing.SendEvents(ctx, []client.Event{{Type: "impression", AdID: "ad0", ImpressionID: "imp-k"}}); err != nil || res.Accepted != 1 {
		t.Fatalf("ingest key sending: %+v, %v", res, err)
	}
	// A bad id never reaches the server.
	if _, err = c.GetAd(ctx, "../metrics"); err == nil || errors.As(err, &ae) {
		t.Fatalf("GetAd(bad id): %v, want a client-side error", err)
	}
}

// TestSendEventsDedupAndMetrics sends a batch with duplicates and bad events, sends it again,
// and checks the counts in /metrics and /metrics/top are each event once.
func TestSendEventsDedupAndMetrics(t *testing.T) {
	base := startTestServer(t, nil)
	ctx := context.Background()
	c := newClient(t, client.Config{BaseURL: base, Key: testAdminKey})
	if err := setupCatalog(ctx, c, 2); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	evs := []client.Event{
		{Type: "impression", AdID: "ad0", ImpressionID: "i1", UserID: "u1", Time: now},
		{Type: "impression", AdID: "ad0", ImpressionID: "i2"},
		{Type: "impression", AdID: "ad0", ImpressionID: "i1"}, // duplicate of 0
		{Type: "click", AdID: "ad0", ImpressionID: "i1", CPCMicros: 250_000, UserAgent: browserUA},
		{Type: "click", AdID: "ad0", ImpressionID: "i1"},             // duplicate of 3
		{Type: "impression", AdID: "bad id", ImpressionID: "i3"},     // refused by the client
		{Type: "impression", AdID: "ad-unknown", ImpressionID: "i4"}, // refused by the server
		{Type: "add_to_cart", AdID: "ad0", ImpressionID: "i1", EventID: "e1"},
		{Type: "add_to_cart", AdID: "ad0", ImpressionID: "i1", EventID: "e2"},
		{Type: "add_to_cart", AdID: "ad0", EventID: "e1"},      // duplicate of 7
		{Type: "add_to_cart", AdID: "ad0", ImpressionID: "i1"}, // no event id: refused by the client
		{Type: "impression", AdID: "ad1", ImpressionID: "j1"},
		{Type: "impression", AdID: "ad0", ImpressionID: "i5", Time: now.Add(-48 * time.Hour)}, // too late: server
	}
	res, err := c.SendEvents(ctx, evs)
	if err != nil {
		t.Fatal(err)
	}
	if res.Accepted != 6 || res.Duplicates != 3 || res.Rejected != 4 {
		t.Fatalf("result %+v, want 6 accepted, 3 duplicates, 4 rejected", res)
	}
	var idx []int
	for _, e := range res.Errors {
		idx = append(idx, e.Index)
	}
	if fmt.Sprint(idx) != "[5 6 10 12]" {
		t.Fatalf("errors %+v, want indexes 5 6 10 12", res.Errors)
	}
	if res.Errors[1].Code != client.CodeNotFound || !strings.Contains(res.Errors[0].Message, "ad_id") ||
		!strings.Contains(res.Errors[2].Message, "event_id") || !strings.Contains(res.Errors[3].Message, "event_time") {
		t.Fatalf("errors %+v", res.Errors)
	}

	// The same batch again, as after a lost answer: nothing counts twice.
	res, err = c.SendEvents(ctx, evs)
	if err != nil || res.Accepted != 0 || res.Duplicates != 9 || res.Rejected != 4 {
		t.Fatalf("resent: %+v, %v; want 0 accepted, 9 duplicates", res, err)
	}

	waitFor(t, "metrics", func() error {
		tot, err := adTotals(ctx, c, "ad0", "ad1")
		if err != nil {
			return err
		}
		a0, a1 := tot["ad0"], tot["ad1"]
		if a0.Impressions != 2 || a0.Clicks != 1 || a0.SpendMicros != 250_000 || a0.Interactions["add_to_cart"] != 2 || a1.Impressions != 1 {
			return fmt.Errorf("ad0 %+v ad1 %+v", a0, a1)
		}
		return nil
	})
	m, err := c.Metrics(ctx, client.MetricsQuery{CampaignIDs: []string{"c1"}, Interval: time.Hour})
	if err != nil || m.Interval != "1h" || len(m.Series) != 1 || m.Series[0].CampaignID != "c1" || m.Series[0].Totals().Impressions != 3 {
		t.Fatalf("campaign metrics: %+v, %v", m, err)
	}
	waitFor(t, "top", func() error {
		top, err := c.Top(ctx, client.TopQuery{N: 5, Metric: client.MetricImpressions, By: client.ByAd})
		if err != nil {
			return err
		}
		if top.Metric != "impressions" || top.By != "ad" || fmt.Sprint(top.Items) != "[{ad0 2} {ad1 1}]" {
			return fmt.Errorf("top %+v", top)
		}
		return nil
	})
	if _, err := c.Metrics(ctx, client.MetricsQuery{AdIDs: []string{"ad0"}, CampaignIDs: []string{"c1"}}); err == nil {
		t.Fatal("Metrics with two kinds of ids: no error")
	}
}

// countingTransport records the size and line count of the request bodies it passes on.
type countingTransport struct {
	mu     sync.Mutex
	bodies []int
	lines  []int
}

func (ct *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return nil, err
		}
		ct.mu.Lock()
		ct.bodies = append(ct.bodies, len(b))
		ct.lines = append(ct.lines, strings.Count(string(b), "\n"))
		ct.mu.Unlock()
		r.Body = io.NopCloser(strings.NewReader(string(b)))
	}
	return http.DefaultTransport.RoundTrip(r)
}

// TestBatchSplitting checks batches are split by the event and byte limits, and halved when
// the server answers 413 for a limit the client was not told.
func TestBatchSplitting(t *testing.T) {
	const maxBody = 2 << 10
	base := startTestServer(t, func(cfg *config.Config) { cfg.MaxBody = maxBody })
	ctx := context.Background()
	admin := newClient(t, client.Config{BaseURL: base, Key: testAdminKey})
	if err := setupCatalog(ctx, admin, 1); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		cfg   client.Config
		check func(bodies, lines []int) bool
	}{
		{"count", client.Config{MaxBatch: 7}, func(bodies, lines []int) bool {
			return fmt.Sprint(lines) == "[7 7 7 7 1]"
		}},
		{"bytes", client.Config{MaxBatchBytes: 300}, func(bodies, lines []int) bool {
			return len(bodies) >= 7 && slices.Max(bodies) <= 300
		}},
		{"413", client.Config{}, func(bodies, lines []int) bool {
			// The whole batch is refused, then sent in halves under the server's limit.
			return len(bodies) == 3 && bodies[0] > maxBody && fmt.Sprint(lines) == "[29 14 15]"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ct := &countingTransport{}
			tc.cfg.BaseURL, tc.cfg.Key, tc.cfg.HTTPClient = base, testAdminKey, &http.Client{Transport: ct}
			c := newClient(t, tc.cfg)
			evs := make([]client.Event, 30)
			for i := range evs {
				evs[i] = client.Event{Type: "impression", AdID: "ad0", ImpressionID: fmt.Sprintf("split%s-%03d-padding-padding-pad", tc.name, i)}
			}
			// Bad events, one refused by the client and one by the server: their indexes
			// must survive the splitting.
			evs[3].ImpressionID = ""
			evs[20].AdID = "ad-unknown"
			res, err := c.SendEvents(ctx, evs)
			if err != nil {
				t.Fatal(err)
			}
			if res.Accepted != 28 || res.Rejected != 2 || len(res.Errors) != 2 || res.Errors[0].Index != 3 || res.Errors[1].Index != 20 {
				t.Fatalf("result %+v, want 28 accepted and events 3 and 20 rejected", res)
			}
			if !tc.check(ct.bodies, ct.lines) {
				t.Fatalf("request bodies of %v bytes and %v lines", ct.bodies, ct.lines)
			}
		})
	}
}
