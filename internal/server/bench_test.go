package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/clicktoken"
	"github.com/adpulse/adpulse/internal/config"
)

const testAdminKey = "adp_admin_test-key-0123456789"

// startApp runs a full embedded adpulse on a loopback port and returns its base URL.
func startApp(tb testing.TB, mutate func(*config.Config)) (*App, string) {
	tb.Helper()
	cfg := config.Default()
	cfg.DataDir = tb.TempDir()
	cfg.Listen = "127.0.0.1:0"
	cfg.OpsListen = "127.0.0.1:0"
	cfg.AdminKey = testAdminKey
	cfg.ClickSecret = "k1:0123456789abcdef0123456789abcdef"
	// Tests and benchmarks send far more from one loopback address than any client may.
	cfg.RateLimitIP, cfg.RateLimitKey = 0, 0
	if mutate != nil {
		mutate(&cfg)
	}
	app, cancel, done := runApp(tb, cfg)
	select {
	case <-app.Ready():
	case err := <-done:
		tb.Fatalf("app stopped: %v", err)
	case <-time.After(30 * time.Second):
		tb.Fatal("app not ready after 30s")
	}
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("app: %v", err)
		}
	})
	return app, "http://" + app.APIAddr()
}

// runApp runs an App on cfg until cancel; done yields what Run returned.
func runApp(tb testing.TB, cfg config.Config) (app *App, cancel context.CancelFunc, done <-chan error) {
	tb.Helper()
	app, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- app.Run(ctx) }()
	return app, cancel, ran
}

func mustDo(tb testing.TB, c *http.Client, method, url, body string) *http.Response {
	tb.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testAdminKey)
	resp, err := c.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	if resp.StatusCode >= 300 {
		b, _ := io.ReadAll(resp.Body)
		tb.Fatalf("%s %s: %d %s", method, url, resp.StatusCode, b)
	}
	return resp
}

func setupAds(tb testing.TB, base string, ads int) {
	c := &http.Client{}
	mustDo(tb, c, "PUT", base+"/api/v1/advertisers/adv1", `{"name":"Acme","timezone":"UTC"}`).Body.Close()
	mustDo(tb, c, "PUT", base+"/api/v1/campaigns/c1", `{"advertiser_id":"adv1","name":"C","status":"active","cpc_bid_micros":500000,"daily_budget_micros":0,"total_budget_micros":0}`).Body.Close()
	for i := 0; i < ads; i++ {
		mustDo(tb, c, "PUT", fmt.Sprintf("%s/api/v1/ads/ad%d", base, i), `{"campaign_id":"c1","landing_url":"https://shop.example/p/1"}`).Body.Close()
	}
}

func benchClient(conns int) *http.Client {
	return &http.Client{
		Transport: &http.Transport{MaxIdleConns: conns, MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

const browserUA = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"

// BenchmarkClickRedirect measures acknowledged (fsynced) clicks through GET /c/{token} over
// loopback HTTP with 128 concurrent clients, each click a new impression. The client runs in
// the same process, so it shares the two cores with the server.
func BenchmarkClickRedirect(b *testing.B) {
	_, base := startApp(b, nil)
	setupAds(b, base, 100)
	kr, _ := clicktoken.ParseKeyring("k1:0123456789abcdef0123456789abcdef")
	toks := make([]string, b.N)
	now := time.Now()
	for i := range toks {
		toks[i], _ = kr.Sign(clicktoken.Claims{AdID: fmt.Sprint("ad", i%100), ImpressionID: fmt.Sprint("imp-", i), IssuedAt: now})
	}
	c := benchClient(128)
	var next atomic.Int64
	b.SetParallelism(64)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest("GET", base+"/c/"+toks[next.Add(1)-1], nil)
			req.Header.Set("User-Agent", browserUA)
			resp, err := c.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusFound {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "clicks/s")
}

// BenchmarkEventsBatch measures events/s through POST /events in NDJSON batches of 1000
// impressions, each acknowledged only once fsynced.
func BenchmarkEventsBatch(b *testing.B) {
	_, base := startApp(b, nil)
	setupAds(b, base, 100)
	const batch = 1000
	c := benchClient(8)
	var seq atomic.Int64
	b.SetParallelism(2)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		// One body per goroutine, rewritten in place: each batch gets new impression ids by
		// overwriting a fixed-width batch number, so the client spends no time formatting.
		var buf bytes.Buffer
		var slots []int
		for i := 0; i < batch; i++ {
			buf.WriteString(`{"type":"impression","impression_id":"imp-`)
			slots = append(slots, buf.Len())
			fmt.Fprintf(&buf, `%012d-%d","ad_id":"ad%d","user_id":"user-%d","catalog_id":"cat-%d"}`+"\n", 0, i, i%100, i%5000, i%50)
		}
		body := buf.Bytes()
		for pb.Next() {
			n := fmt.Appendf(nil, "%012d", seq.Add(1))
			for _, at := range slots {
				copy(body[at:], n)
			}
			req, _ := http.NewRequest("POST", base+"/events", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+testAdminKey)
			req.Header.Set("Content-Type", "application/x-ndjson")
			resp, err := c.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			out, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !bytes.Contains(out, []byte(`"accepted":1000`)) {
				b.Errorf("status %d: %.200s", resp.StatusCode, out)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N*batch)/time.Since(start).Seconds(), "events/s")
}
