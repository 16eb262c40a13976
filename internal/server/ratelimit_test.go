package server

import (
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/adpulse/adpulse/internal/config"
)

// TestRateLimitWiring: the limits sit in front of the API's handlers, public endpoints by
// source address (from X-Forwarded-For of a trusted proxy), the authenticated API by key, and
// the ops listener counts what they refused.
func TestRateLimitWiring(t *testing.T) {
	app, base := startApp(t, func(c *config.Config) {
		c.RateLimitIP, c.RateLimitIPBurst = 0.001, 2
		c.RateLimitKey, c.RateLimitKeyBurst = 0.001, 3
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	})
	c := benchClient(2)
	get := func(path, xff, key string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", base+path, nil)
		req.Header.Set("User-Agent", browserUA)
		req.Header.Set("X-Forwarded-For", xff)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	for i := range 2 {
		if resp := get("/c/not-a-token", "198.51.100.1", ""); resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("request %d within the burst: %d, want the handler's 400", i, resp.StatusCode)
		}
	}
	resp := get("/c/not-a-token", "198.51.100.1", testAdminKey)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("third request of one source: %d Retry-After %q, want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if resp := get("/c/not-a-token", "198.51.100.2", ""); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("another source: %d", resp.StatusCode)
	}
	for i := range 3 {
		if resp := get("/api/v1/ads/nope", "198.51.100.1", testAdminKey); resp.StatusCode != http.StatusNotFound {
			t.Fatalf("keyed request %d (its source is limited, its key is not): %d", i, resp.StatusCode)
		}
	}
	if resp := get("/api/v1/ads/nope", "198.51.100.3", testAdminKey); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("fourth request of one key: %d, want 429", resp.StatusCode)
	}

	mresp, err := http.Get("http://" + app.OpsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	for _, want := range []string{
		`adpulse_ratelimit_limited_requests_total{kind="ip"} 1`,
		`adpulse_ratelimit_limited_requests_total{kind="key"} 1`,
		`adpulse_ratelimit_entries{kind="ip"} 2`,
		`adpulse_ratelimit_entries{kind="key"} 1`,
		`adpulse_ratelimit_overflow_requests_total{kind="ip"} 0`,
	} {
		if !strings.Contains(string(body), want+"\n") {
			t.Errorf("ops /metrics lacks %q", want)
		}
	}
}
