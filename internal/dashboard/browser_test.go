package dashboard_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/server/servertest"
	"github.com/chromedp/chromedp"
)

const (
	adminKey  = servertest.AdminKey
	browserUA = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
)

// chromiumPath finds the browser the test drives: ADPULSE_TEST_CHROMIUM, or Debian's chromium.
func chromiumPath(t *testing.T) string {
	if p := os.Getenv("ADPULSE_TEST_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("browser tests skipped: no chromium on PATH (apt-get install -y chromium, or set ADPULSE_TEST_CHROMIUM to a Chrome binary)")
	return ""
}

// artifactDir is where screenshots go: ADPULSE_TEST_ARTIFACTS, or a fresh directory under the
// system's temp dir that outlives the test (its path is logged).
func artifactDir(t *testing.T) string {
	dir := os.Getenv("ADPULSE_TEST_ARTIFACTS")
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "adpulse-ui-artifacts-"); err != nil {
			t.Fatal(err)
		}
	} else {
		dir = filepath.Join(dir, "dashboard")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("dashboard screenshots: %s", dir)
	fmt.Fprintf(os.Stderr, "dashboard screenshots: %s\n", dir)
	return dir
}

func startServer(t *testing.T) string {
	t.Helper()
	return servertest.Start(t, nil).URL
}

// apiClient calls the adpulse API with a key, failing the test on anything but a 2xx.
type apiClient struct {
	t    *testing.T
	base string
	key  string
	http *http.Client
}

func (c apiClient) do(method, path, body string, out any) {
	c.t.Helper()
	req, err := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	if strings.HasPrefix(body, "{\"type\"") {
		req.Header.Set("Content-Type", "application/x-ndjson")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		c.t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
}

type metricsAnswer struct {
	StartTime string `json:"start_time"`
	EndTime   string `json:"end_time"`
	Series    []struct {
		Points []struct {
			Time          string           `json:"time"`
			Impressions   int64            `json:"impressions"`
			Clicks        int64            `json:"clicks"`
			InvalidClicks int64            `json:"invalid_clicks"`
			SpendMicros   int64            `json:"spend_micros"`
			ByReason      map[string]int64 `json:"invalid_by_reason"`
		} `json:"points"`
	} `json:"series"`
}

// sendEvents posts impressions and clicks for ad, with ids unique to prefix, and bots clicks
// from a crawler's user agent (invalid, reason bot).
func sendEvents(c apiClient, prefix, ad string, imps, clicks, bots int) {
	var b strings.Builder
	now := time.Now().UTC().Format(time.RFC3339)
	for i := 0; i < imps; i++ {
		fmt.Fprintf(&b, `{"type":"impression","impression_id":"%s-%d","ad_id":"%s","user_agent":%q,"event_time":%q}`+"\n", prefix, i, ad, browserUA, now)
	}
	for i := 0; i < clicks; i++ {
		fmt.Fprintf(&b, `{"type":"click","impression_id":"%s-%d","ad_id":"%s","user_agent":%q,"event_time":%q}`+"\n", prefix, i, ad, browserUA, now)
	}
	for i := 0; i < bots; i++ {
		fmt.Fprintf(&b, `{"type":"click","impression_id":"%s-bot-%d","ad_id":"%s","user_agent":"Googlebot/2.1 (+http://www.google.com/bot.html)","event_time":%q}`+"\n", prefix, i, ad, now)
	}
	var out struct{ Accepted, Rejected int }
	c.do("POST", "/events", b.String(), &out)
	if out.Rejected != 0 || out.Accepted != imps+clicks+bots {
		c.t.Fatalf("events for %s: %+v", ad, out)
	}
}

// waitClicks waits until /metrics shows want clicks for the campaign over the last hour.
func waitClicks(c apiClient, campaign string, want int64) {
	c.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var m metricsAnswer
		c.do("GET", "/metrics?interval=1h&campaign_ids="+campaign, "", &m)
		var got int64
		for _, p := range m.Series[0].Points {
			got += p.Clicks
		}
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("campaign %s: %d clicks in /metrics, want %d", campaign, got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// consoleWatch collects console errors and warnings, uncaught exceptions and failed loads
// of a tab.
type consoleWatch struct {
	mu   sync.Mutex
	errs []string
}

func (w *consoleWatch) listen(ctx context.Context) {
	msgs := chromedp.Console(ctx)
	go func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleWarning || m.IsException() {
				w.mu.Lock()
				w.errs = append(w.errs, m.String()+" "+m.URL)
				w.mu.Unlock()
			}
		}
	}()
}

// take returns and clears what was collected.
func (w *consoleWatch) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	e := w.errs
	w.errs = nil
	return e
}

func newBrowser(t *testing.T, chromium string) (context.Context, *consoleWatch) {
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("no-default-browser-check", true),
		chromedp.WindowSize(1280, 900),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelTab(); cancelAlloc() })
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	w := &consoleWatch{}
	w.listen(ctx)
	return ctx, w
}

// run runs actions with a deadline, failing the test with what was being done.
func run(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// get runs one action that returns a value, with a deadline.
func get[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// waitReady waits for the page's data-state="ready" (the route finished loading).
func waitReady() chromedp.Action[chromedp.Void] {
	return chromedp.WaitVisible(chromedp.CSS(`body[data-state="ready"]`))
}

func screenshot(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	png := get(t, ctx, "screenshot "+name, chromedp.FullScreenshot(100))
	path := filepath.Join(dir, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s", path)
}

// voidEval evaluates a script whose value does not matter.
func voidEval(expr string) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](expr + `; undefined`)
}

// navigate opens a dashboard route and waits until it has loaded.
func navigate(t *testing.T, ctx context.Context, base, route string) {
	t.Helper()
	run(t, ctx, "open "+route,
		voidEval(`document.body.dataset.state = "loading"`),
		chromedp.Navigate(base+"/ui/"+route),
		waitReady())
}

func noConsoleErrors(t *testing.T, w *consoleWatch, page string) {
	t.Helper()
	if errs := w.take(); len(errs) > 0 {
		t.Errorf("%s: console errors:\n  %s", page, strings.Join(errs, "\n  "))
	}
}

func signIn(t *testing.T, ctx context.Context, base, key string) {
	t.Helper()
	// Sign in with the keyboard alone: focus the field, type the key, press Enter.
	run(t, ctx, "sign in",
		chromedp.Navigate(base+"/ui/"),
		chromedp.WaitVisible(chromedp.CSS("#key")),
		chromedp.Focus(chromedp.CSS("#key")),
		chromedp.SendKeys(chromedp.CSS("#key"), key+"\r"),
		chromedp.WaitVisible(chromedp.CSS("#signout")),
		waitReady())
}

// chartData is what the campaign page's volume chart draws, read from its uPlot instance.
type chartData struct {
	Start, End, Interval, TZ string
	Xs                       []float64
	Imps, Clicks             []float64
}

func TestDashboardInBrowser(t *testing.T) {
	chromium := chromiumPath(t)
	dir := artifactDir(t)
	base := startServer(t)
	admin := apiClient{t: t, base: base, key: adminKey, http: &http.Client{Timeout: 10 * time.Second}}

	admin.do("PUT", "/api/v1/advertisers/acme", `{"name":"Acme","timezone":"Asia/Kolkata"}`, nil)
	admin.do("PUT", "/api/v1/advertisers/rival", `{"name":"Rival"}`, nil)
	admin.do("PUT", "/api/v1/campaigns/acme-spring", `{"advertiser_id":"acme","name":"Spring sale","cpc_bid_micros":250000,"daily_budget_micros":50000000,"total_budget_micros":500000000}`, nil)
	admin.do("PUT", "/api/v1/campaigns/rival-secret", `{"advertiser_id":"rival","name":"Rival launch","cpc_bid_micros":100000}`, nil)
	admin.do("PUT", "/api/v1/ads/acme-1", `{"campaign_id":"acme-spring","landing_url":"https://acme.example/1"}`, nil)
	admin.do("PUT", "/api/v1/ads/acme-2", `{"campaign_id":"acme-spring","landing_url":"https://acme.example/2"}`, nil)
	admin.do("PUT", "/api/v1/ads/rival-1", `{"campaign_id":"rival-secret","landing_url":"https://rival.example/1"}`, nil)
	var k struct{ Key string }
	admin.do("POST", "/api/v1/advertisers/acme/keys", "", &k)
	acmeKey := k.Key

	sendEvents(admin, "a1", "acme-1", 40, 6, 2)
	sendEvents(admin, "a2", "acme-2", 25, 3, 0)
	sendEvents(admin, "r1", "rival-1", 30, 5, 1)
	waitClicks(admin, "acme-spring", 9)
	waitClicks(admin, "rival-secret", 5)

	ctx, watch := newBrowser(t, chromium)

	t.Run("admin pages", func(t *testing.T) {
		signIn(t, ctx, base, adminKey)
		noConsoleErrors(t, watch, "sign in")
		for _, route := range []string{"#/", "#/campaigns", "#/campaign/acme-spring", "#/ads", "#/invalid", "#/health"} {
			navigate(t, ctx, base, route)
			errText := get(t, ctx, "error box "+route, chromedp.Evaluate[string](`document.querySelector("#error").textContent`))
			if errText != "" {
				t.Errorf("%s shows an error: %s", route, errText)
			}
			noConsoleErrors(t, watch, route)
		}
	})

	t.Run("invalid traffic and ingest health equal the API", func(t *testing.T) {
		navigate(t, ctx, base, "#/invalid")
		bots := get(t, ctx, "bot row", chromedp.Evaluate[string](`(document.querySelector('#invalid-table tr[data-reason="bot"]') || {dataset: {}}).dataset.value || ""`))
		if bots != "3" {
			t.Errorf("invalid clicks by bots %q, want 3 (2 of acme, 1 of rival)", bots)
		}
		navigate(t, ctx, base, "#/health")
		// 112 events were accepted: 40+6+2, 25+3 and 30+5+1.
		run(t, ctx, "accepted events",
			chromedp.Poll[chromedp.Void](`document.querySelector('#h-accepted').textContent === "112"`, chromedp.WithPollingTimeout(10*time.Second)))
		screenshot(t, ctx, dir, "ingest-health")
		noConsoleErrors(t, watch, "invalid and health")
	})

	// checkChart compares the campaign page's volume chart with /metrics asked for the same
	// window, interval and time zone, and returns the clicks it draws.
	checkChart := func(t *testing.T) float64 {
		t.Helper()
		got := get(t, ctx, "read chart", chromedp.Evaluate[chartData](`(() => {
			const box = document.querySelector('#chart-volume');
			const tbl = document.querySelector('#perf-table');
			const d = box.uplot.data;
			return {Start: tbl.dataset.start, End: tbl.dataset.end, Interval: tbl.dataset.interval, TZ: tbl.dataset.tz, Xs: d[0], Imps: d[1], Clicks: d[2]};
		})()`))
		q := url.Values{"campaign_ids": {"acme-spring"}, "start_time": {got.Start}, "end_time": {got.End}, "interval": {got.Interval}}
		if got.TZ != "" {
			q.Set("tz", got.TZ)
		}
		var m metricsAnswer
		admin.do("GET", "/metrics?"+q.Encode(), "", &m)
		pts := m.Series[0].Points
		if len(pts) != len(got.Xs) || len(pts) == 0 {
			t.Fatalf("chart has %d points, /metrics %d", len(got.Xs), len(pts))
		}
		var clicks float64
		for i, p := range pts {
			pt, _ := time.Parse(time.RFC3339, p.Time)
			if float64(pt.Unix()) != got.Xs[i] || float64(p.Impressions) != got.Imps[i] || float64(p.Clicks) != got.Clicks[i] {
				t.Errorf("point %d: chart (%v, %v imps, %v clicks), /metrics %+v", i, got.Xs[i], got.Imps[i], got.Clicks[i], p)
			}
			clicks += got.Clicks[i]
		}
		return clicks
	}

	t.Run("chart numbers equal /metrics", func(t *testing.T) {
		navigate(t, ctx, base, "#/campaign/acme-spring")
		if clicks := checkChart(t); clicks != 9 {
			t.Errorf("chart shows %v clicks, want 9", clicks)
		}
		totals := get(t, ctx, "totals", chromedp.Evaluate[string](`document.querySelector("#total-clicks").textContent`))
		if totals != "9" {
			t.Errorf("total clicks card %q, want 9", totals)
		}
		screenshot(t, ctx, dir, "campaign-desktop")

		// Days in New York over the last week: the buckets start at New York's midnight.
		run(t, ctx, "daily in New York",
			chromedp.SetValue(chromedp.CSS("#range"), "604800"),
			chromedp.SetValue(chromedp.CSS("#interval"), "1d"),
			chromedp.SetValue(chromedp.CSS("#tz"), "America/New_York"),
			chromedp.Click(chromedp.CSS(`form.controls button[type="submit"]`)),
			chromedp.WaitReady(chromedp.CSS(`#perf-table[data-interval="1d"][data-tz="America/New_York"]`)))
		if clicks := checkChart(t); clicks != 9 {
			t.Errorf("daily chart shows %v clicks, want 9", clicks)
		}
		noConsoleErrors(t, watch, "campaign, daily in New York")

		// A range given by its ends, in UTC, per 15 minutes.
		now := time.Now().UTC()
		run(t, ctx, "custom range",
			chromedp.SetValue(chromedp.CSS("#range"), "custom"),
			chromedp.SetValue(chromedp.CSS("#from"), now.Add(-2*time.Hour).Format("2006-01-02T15:04")),
			chromedp.SetValue(chromedp.CSS("#to"), now.Add(time.Hour).Format("2006-01-02T15:04")),
			chromedp.SetValue(chromedp.CSS("#interval"), "15m"),
			chromedp.Click(chromedp.CSS(`form.controls button[type="submit"]`)),
			chromedp.WaitReady(chromedp.CSS(`#perf-table[data-interval="15m"]`)))
		if clicks := checkChart(t); clicks != 9 {
			t.Errorf("custom-range chart shows %v clicks, want 9", clicks)
		}
		noConsoleErrors(t, watch, "campaign, custom range")

		// A zone that does not exist is refused on the page, naming the field.
		run(t, ctx, "bad zone",
			chromedp.SetValue(chromedp.CSS("#tz"), "Mars/Olympus"),
			chromedp.Click(chromedp.CSS(`form.controls button[type="submit"]`)),
			chromedp.WaitVisible(chromedp.CSS("#error")))
		if msg := get(t, ctx, "error text", chromedp.Evaluate[string](`document.querySelector("#error").textContent`)); !strings.Contains(msg, "Time zone") {
			t.Errorf("bad zone: error %q", msg)
		}
		noConsoleErrors(t, watch, "campaign, bad zone")
	})

	t.Run("live view changes after clicks", func(t *testing.T) {
		navigate(t, ctx, base, "#/")
		run(t, ctx, "live before",
			chromedp.WaitVisible(chromedp.CSS(`#top-table tbody tr[data-id="rival-secret"][data-value="5"]`)),
			chromedp.Poll[chromedp.Void](`document.querySelector('#live-hour').textContent === "14"`, chromedp.WithPollingTimeout(10*time.Second)))
		screenshot(t, ctx, dir, "overview-before")
		sendEvents(admin, "a3", "acme-2", 20, 20, 0)
		// acme-spring now has 29 clicks and leads the ranking; the live counters follow, and
		// the clicks per second over the last seconds are above zero.
		run(t, ctx, "live rate",
			chromedp.Poll[chromedp.Void](`parseFloat(document.querySelector('#live-rate').textContent) > 0`, chromedp.WithPollingTimeout(10*time.Second)))
		run(t, ctx, "live after",
			chromedp.WaitVisible(chromedp.CSS(`#top-table tbody tr:first-child[data-id="acme-spring"][data-value="29"]`)),
			chromedp.Poll[chromedp.Void](`document.querySelector('#live-hour').textContent === "34"`, chromedp.WithPollingTimeout(15*time.Second)))
		screenshot(t, ctx, dir, "overview-after-clicks")
		noConsoleErrors(t, watch, "live overview")
	})

	t.Run("advertiser sees only its own", func(t *testing.T) {
		run(t, ctx, "sign out", chromedp.Click(chromedp.CSS("#signout")), chromedp.WaitVisible(chromedp.CSS("#key")))
		stored := get(t, ctx, "storage", chromedp.Evaluate[string](`sessionStorage.getItem("adpulse.key") || ""`))
		if stored != "" {
			t.Errorf("key still in sessionStorage after sign out")
		}
		// Nothing read with the admin key stays on the page for the next person.
		if left := get(t, ctx, "page after sign out", chromedp.Evaluate[string](`document.querySelector("#page").innerText + document.querySelector("#who").innerText`)); left != "" {
			t.Errorf("after sign out the page still shows %q", left)
		}
		signIn(t, ctx, base, acmeKey)
		navigate(t, ctx, base, "#/campaigns")
		ids := get(t, ctx, "campaign list", chromedp.Evaluate[[]string](`[...document.querySelectorAll('#campaigns-table tbody th')].map(e => e.textContent)`))
		if strings.Join(ids, ",") != "acme-spring" {
			t.Errorf("advertiser's campaign list %v, want [acme-spring]", ids)
		}
		for _, route := range []string{"#/", "#/ads", "#/invalid", "#/campaign/acme-spring"} {
			navigate(t, ctx, base, route)
			run(t, ctx, "settle "+route, chromedp.Sleep(1500*time.Millisecond))
			body := get(t, ctx, "text of "+route, chromedp.Evaluate[string](`document.body.innerText`))
			if strings.Contains(body, "rival") {
				t.Errorf("%s shows another advertiser's objects to acme's key:\n%s", route, body)
			}
			noConsoleErrors(t, watch, "advertiser "+route)
		}
		navigate(t, ctx, base, "#/invalid")
		if bots := get(t, ctx, "acme's bot row", chromedp.Evaluate[string](`(document.querySelector('#invalid-table tr[data-reason="bot"]') || {dataset: {}}).dataset.value || ""`)); bots != "2" {
			t.Errorf("acme's invalid clicks by bots %q, want 2", bots)
		}
		navigate(t, ctx, base, "#/campaign/rival-secret")
		msg := get(t, ctx, "forbidden campaign", chromedp.Evaluate[string](`(document.querySelector("#not-found") || {}).textContent || ""`))
		body := get(t, ctx, "forbidden page", chromedp.Evaluate[string](`document.body.innerText`))
		if !strings.Contains(msg, "no campaign rival-secret") || strings.Contains(body, "Rival launch") {
			t.Errorf("rival's campaign page for acme's key: %q", body)
		}
		watch.take() // the 404 of the refused read is logged by the browser, as expected
		screenshot(t, ctx, dir, "advertiser-denied")
	})

	t.Run("phone viewport", func(t *testing.T) {
		run(t, ctx, "viewport", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2)))
		for _, route := range []string{"#/", "#/campaign/acme-spring", "#/invalid"} {
			navigate(t, ctx, base, route)
			run(t, ctx, "settle "+route, chromedp.Sleep(time.Second))
			overflow := get(t, ctx, "overflow "+route, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth + 1`))
			if overflow {
				t.Errorf("%s scrolls sideways at 390 px", route)
			}
			name := strings.NewReplacer("#/", "", "/", "-").Replace(route)
			if name == "" {
				name = "overview"
			}
			screenshot(t, ctx, dir, "phone-"+name)
		}
		noConsoleErrors(t, watch, "phone pages")
	})
}
