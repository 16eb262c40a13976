package server

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/ivt/sivt"

	"github.com/adpulse/adpulse/internal/clicktoken"
	"github.com/adpulse/adpulse/internal/config"
)

// TestRestartKeepsSecretsAndDedup runs the real assembly twice on one data dir: the generated
// admin key and click secret survive, and a click repeated after the restart is not counted
// again (the dedup keys were rebuilt from the log).
func TestRestartKeepsSecretsAndDedup(t *testing.T) {
	dir := t.TempDir()
	run := func(f func(app *App, base string)) {
		cfg := testConfig(dir)
		cfg.IVTRules = true // its reasons must show in /metrics
		app, cancel, done := runApp(t, cfg)
		defer cancel()
		select {
		case <-app.Ready():
		case err := <-done:
			t.Fatal(err)
		}
		f(app, "http://"+app.APIAddr())
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	var adminKey, clickURL string
	c := benchClient(4)
	click := func(base string) {
		req, _ := http.NewRequest("GET", clickURL, nil)
		req.Header.Set("User-Agent", browserUA)
		resp, err := c.Do(req)
		if err != nil || resp.StatusCode != http.StatusFound {
			t.Fatalf("click: %v %v", resp, err)
		}
		resp.Body.Close()
	}
	run(func(app *App, base string) {
		adminKey = app.AdminKey()
		if !strings.HasPrefix(adminKey, "adp_admin_") {
			t.Fatalf("admin key %q", adminKey)
		}
		for _, f := range []string{"admin-key", "click-secret"} {
			st, err := os.Stat(filepath.Join(dir, "secrets", f))
			if err != nil || st.Mode().Perm() != 0o600 {
				t.Fatalf("%s: %v %v", f, st, err)
			}
		}
		do := func(method, path, body string) {
			req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+adminKey)
			resp, err := c.Do(req)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("%s %s: %v %v", method, path, resp, err)
			}
			resp.Body.Close()
		}
		do("PUT", "/api/v1/advertisers/a1", `{"name":"A"}`)
		do("PUT", "/api/v1/campaigns/c1", `{"advertiser_id":"a1","name":"C","cpc_bid_micros":1}`)
		do("PUT", "/api/v1/ads/ad1", `{"campaign_id":"c1","landing_url":"https://x.example/"}`)
		secret, _ := os.ReadFile(filepath.Join(dir, "secrets", "click-secret"))
		kr, err := clicktoken.ParseKeyring(strings.TrimSpace(string(secret)))
		if err != nil {
			t.Fatal(err)
		}
		tok, _ := kr.Sign(clicktoken.Claims{AdID: "ad1", ImpressionID: "imp1", IssuedAt: time.Now()})
		clickURL = base + "/c/" + tok
		click(base)
		click(base)
		// Wait until the click is committed to the metric store, so that after the restart
		// only a rebuild of the top-N index can show it.
		for deadline := time.Now().Add(10 * time.Second); ; {
			if body := topN(t, c, base, adminKey); strings.Contains(body, `"clicks":1`) {
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("click never visible in top-N: %s", body)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if n := app.ingest.intake.Stats(); n.Accepted != 1 || n.Duplicates != 1 {
			t.Fatalf("first run: %+v", n)
		}
		resp, err := c.Get("http://" + app.OpsAddr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, name := range []string{"adpulse_eventlog_syncs_total", "adpulse_ingest_events_accepted_total 1", "adpulse_aggregate_lag_messages",
			"adpulse_aggregate_watermark_delay_seconds", "adpulse_billing_charged_micros_total", "adpulse_http_request_duration_seconds", "adpulse_topn_bytes",
			`adpulse_eventlog_append_wait_seconds_bucket{le="0.005"}`, "adpulse_metricstore_block_cache_hits_total", "adpulse_metricstore_block_cache_misses_total"} {
			if !strings.Contains(string(body), name) {
				t.Errorf("ops /metrics lacks %s", name)
			}
		}
		// The invalid-traffic breakdown names every behavioural reason, zero included.
		for _, r := range sivt.Reasons {
			for _, m := range []string{"adpulse_ivt_flagged_clicks_total", "adpulse_ingest_invalid_clicks_total"} {
				if series := m + `{reason="` + r.String() + `"}`; !strings.Contains(string(body), series) {
					t.Errorf("ops /metrics lacks %s", series)
				}
			}
		}
	})
	run(func(app *App, base string) {
		if app.AdminKey() != adminKey {
			t.Fatal("admin key changed across restarts")
		}
		clickURL = base + clickURL[strings.Index(clickURL, "/c/"):]
		click(base)
		if n := app.ingest.intake.Stats(); n.Accepted != 0 || n.Duplicates != 1 {
			t.Fatalf("after restart: %+v", n)
		}
		// The top-N index lives in memory: it must have been rebuilt from the metric store
		// before the API listener opened.
		if body := topN(t, c, base, adminKey); !strings.Contains(body, `"items":[{"ad_id":"ad1","clicks":1}]`) {
			t.Fatalf("top-N after restart: %s", body)
		}
	})
}

func topN(t *testing.T, c *http.Client, base, key string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/metrics/top?minutes=10", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// TestOpenFailures: the idempotency keys load beside the catalog, and the roles open after
// both. A failure of the keys' load (while the catalog loads) or of a role stops the start
// with that failure and leaves the data dir whole and unlocked: the next start, with the
// cause removed, serves.
func TestOpenFailures(t *testing.T) {
	for _, tc := range []struct {
		name, blocked, want string
	}{
		// A file where the metric store's directory goes: the process role cannot open.
		{"a role fails", "metrics", "metric"},
		// A file where the snapshots go: the keys cannot load (the catalog writes none here).
		{"the keys fail", "snapshots", "snapshots dir"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			start := func() (*App, context.CancelFunc, <-chan error) {
				cfg := testConfig(dir)
				cfg.CatalogSnapshotInterval = 0
				return runApp(t, cfg)
			}
			blocked := filepath.Join(dir, tc.blocked)
			if err := os.WriteFile(blocked, []byte("in the way"), 0o600); err != nil {
				t.Fatal(err)
			}
			app, cancel, done := start()
			select {
			case <-app.Ready():
				t.Fatal("ready although it could not open")
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("start failed with %v, want an error about %q", err, tc.want)
				}
			}
			cancel()

			if err := os.Remove(blocked); err != nil {
				t.Fatal(err)
			}
			app, cancel, done = start()
			defer cancel()
			select {
			case <-app.Ready():
			case err := <-done:
				t.Fatalf("second start: %v", err)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// testConfig is the default configuration on dir, listening on free loopback ports.
func testConfig(dir string) config.Config {
	cfg := config.Default()
	cfg.DataDir, cfg.Listen, cfg.OpsListen = dir, "127.0.0.1:0", "127.0.0.1:0"
	return cfg
}
