package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/adpulse/adpulse/internal/clicktoken"
	"github.com/adpulse/adpulse/internal/config"
)

// freshCatalogDSN returns a --catalog-dsn naming a database of its own for one test: "" for
// the embedded SQLite, a PostgreSQL schema or a MySQL/MariaDB database (dropped at the end),
// or skips when the server's address is not in the environment.
func freshCatalogDSN(t *testing.T, backend string) string {
	t.Helper()
	var b [8]byte
	_, _ = rand.Read(b[:])
	name := "t_" + hex.EncodeToString(b[:])
	exec := func(driver, dsn, stmt, cleanup string) {
		db, err := sql.Open(driver, dsn)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
		t.Cleanup(func() { _, _ = db.Exec(cleanup); db.Close() })
	}
	switch backend {
	case "sqlite":
		return ""
	case "postgres":
		dsn := os.Getenv("ADPULSE_TEST_POSTGRES_DSN")
		if dsn == "" {
			t.Skip("ADPULSE_TEST_POSTGRES_DSN not set: PostgreSQL catalog test skipped")
		}
		exec("pgx", dsn, "CREATE SCHEMA "+name, "DROP SCHEMA "+name+" CASCADE")
		u, _ := url.Parse(dsn)
		q := u.Query()
		q.Set("search_path", name)
		u.RawQuery = q.Encode()
		return u.String()
	case "mysql":
		dsn := os.Getenv("ADPULSE_TEST_MYSQL_DSN")
		if dsn == "" {
			t.Skip("ADPULSE_TEST_MYSQL_DSN not set: MySQL catalog test skipped")
		}
		exec("mysql", dsn, "CREATE DATABASE "+name, "DROP DATABASE "+name)
		cfg, err := mysql.ParseDSN(dsn)
		if err != nil {
			t.Fatal(err)
		}
		cfg.DBName = name
		return "mysql://" + cfg.FormatDSN()
	}
	t.Fatalf("unknown backend %s", backend)
	return ""
}

// dropFeed writes one version of a feed, its manifest last.
func dropFeed(t *testing.T, root, feed, version string, files map[string]string) {
	t.Helper()
	dir := filepath.Join(root, feed, version)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var m struct {
		Files []map[string]any `json:"files"`
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256([]byte(data))
		rows := strings.Count(data, "\n") - 1 // CSV: minus the header
		m.Files = append(m.Files, map[string]any{"path": name, "rows": rows, "sha256": hex.EncodeToString(sum[:])})
	}
	b, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, "_manifest.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func apiCall(t *testing.T, method, url, key, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestAutoCPCThroughServer: a click on an auto_cpc campaign is charged the active feed's bid
// for its ad's catalog id, capped by the campaign's bid, and the ad's own bid where the feed
// has no row; other campaigns keep their bid. A new version, and a rollback, reach the click
// path. Budget recommendations answer per campaign, only to its advertiser. The feed tables
// live in the catalog database: SQLite, PostgreSQL and MySQL/MariaDB.
func TestAutoCPCThroughServer(t *testing.T) {
	for _, backend := range []string{"sqlite", "postgres", "mysql"} {
		t.Run(backend, func(t *testing.T) {
			dsn := freshCatalogDSN(t, backend)
			feedsDir := t.TempDir()
			app, base := startApp(t, func(c *config.Config) {
				c.CatalogDSN = dsn
				c.FeedsURL = feedsDir
				c.FeedsInterval = time.Second
			})
			admin := testAdminKey
			for _, c := range []struct{ path, body string }{
				{"/api/v1/advertisers/adv1", `{"name":"Acme"}`},
				{"/api/v1/advertisers/adv2", `{"name":"Other"}`},
				{"/api/v1/campaigns/auto", `{"advertiser_id":"adv1","name":"A","cpc_bid_micros":500000,"auto_cpc":true}`},
				{"/api/v1/campaigns/fixed", `{"advertiser_id":"adv2","name":"F","cpc_bid_micros":450000}`},
				{"/api/v1/ads/low", `{"campaign_id":"auto","landing_url":"https://shop.example/1","catalog_id":"catLow"}`},
				{"/api/v1/ads/high", `{"campaign_id":"auto","landing_url":"https://shop.example/2","catalog_id":"catHigh"}`},
				{"/api/v1/ads/none", `{"campaign_id":"auto","landing_url":"https://shop.example/3","catalog_id":"catNone","cpc_bid_micros":200000}`},
				{"/api/v1/ads/fixedad", `{"campaign_id":"fixed","landing_url":"https://shop.example/4","catalog_id":"catLow"}`},
			} {
				if code, body := apiCall(t, "PUT", base+c.path, admin, c.body); code != 200 {
					t.Fatalf("PUT %s: %d %s", c.path, code, body)
				}
			}
			if _, body := apiCall(t, "GET", base+"/api/v1/campaigns/auto", admin, ""); !strings.Contains(body, `"auto_cpc":true`) {
				t.Fatalf("campaign: %s", body)
			}
			dropFeed(t, feedsDir, "auto_cpc", "v1", map[string]string{
				"part-1.csv": "catalog_id,bid_micros\ncatLow,300000\n",
				"part-2.csv": "catalog_id,bid_micros\ncatHigh,900000\n",
			})
			dropFeed(t, feedsDir, "budget_recommendations", "r1", map[string]string{
				"r.csv": "campaign_id,recommended_daily_budget_micros,expected_clicks,reason\nauto,7000000,120,headroom\n",
			})
			waitBids := func(version string) {
				deadline := time.Now().Add(20 * time.Second)
				for app.feeds.bids.Version() != version {
					if time.Now().After(deadline) {
						_, body := apiCall(t, "GET", base+"/api/v1/feeds", admin, "")
						t.Fatalf("auto_cpc %s never in use: %s", version, body)
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
			waitBids("v1")

			kr, _ := clicktoken.ParseKeyring("k1:0123456789abcdef0123456789abcdef")
			c := benchClient(2)
			click := func(ad, imp string) {
				tok, _ := kr.Sign(clicktoken.Claims{AdID: ad, ImpressionID: imp, IssuedAt: time.Now()})
				req, _ := http.NewRequest("GET", base+"/c/"+tok, nil)
				req.Header.Set("User-Agent", browserUA)
				resp, err := c.Do(req)
				if err != nil || resp.StatusCode != http.StatusFound {
					t.Fatalf("click %s: %v %v", ad, resp, err)
				}
				resp.Body.Close()
			}
			charged := func(imp string, want int64) {
				t.Helper()
				wantS := fmt.Sprintf(`"charged_micros":%d`, want)
				deadline := time.Now().Add(20 * time.Second)
				for {
					code, body := apiCall(t, "GET", base+"/api/v1/clicks/"+imp, admin, "")
					if code == 200 && strings.Contains(body, wantS) && strings.Contains(body, fmt.Sprintf(`"price_micros":%d`, want)) {
						return
					}
					if time.Now().After(deadline) {
						t.Fatalf("click %s: %d %s, want %s", imp, code, body, wantS)
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
			click("low", "i-low")
			click("high", "i-high")
			click("none", "i-none")
			click("fixedad", "i-fixed")
			charged("i-low", 300_000)   // the feed's bid
			charged("i-high", 500_000)  // capped by the campaign's bid
			charged("i-none", 200_000)  // no row: the ad's bid
			charged("i-fixed", 450_000) // not auto_cpc: its own bid

			// A new version reaches the click path; so does a rollback.
			dropFeed(t, feedsDir, "auto_cpc", "v2", map[string]string{"a.csv": "catalog_id,bid_micros\ncatLow,100000\n"})
			waitBids("v2")
			click("low", "i-low-2")
			charged("i-low-2", 100_000)
			if code, body := apiCall(t, "POST", base+"/api/v1/feeds/auto_cpc/rollback", admin, `{"version":"v1"}`); code != 200 || !strings.Contains(body, `"active_version":"v1"`) {
				t.Fatalf("rollback: %d %s", code, body)
			}
			waitBids("v1")
			click("low", "i-low-3")
			charged("i-low-3", 300_000)

			code, body := apiCall(t, "GET", base+"/api/v1/feeds", admin, "")
			if code != 200 || !strings.Contains(body, `"version":"v2","state":"loaded","active":false,"rows":1`) {
				t.Errorf("feeds: %d %s", code, body)
			}

			// Recommendations: the campaign's advertiser and the admin see it; another
			// advertiser's key gets the 404 of a missing campaign.
			_, kb := apiCall(t, "POST", base+"/api/v1/advertisers/adv1/keys", admin, "")
			_, kb2 := apiCall(t, "POST", base+"/api/v1/advertisers/adv2/keys", admin, "")
			var k1, k2 struct{ Key string }
			_ = json.Unmarshal([]byte(kb), &k1)
			_ = json.Unmarshal([]byte(kb2), &k2)
			for _, key := range []string{admin, k1.Key} {
				code, body := apiCall(t, "GET", base+"/api/v1/campaigns/auto/recommendations", key, "")
				if code != 200 || !strings.Contains(body, `"recommended_daily_budget_micros":7000000`) || !strings.Contains(body, `"version":"r1"`) {
					t.Errorf("recommendation: %d %s", code, body)
				}
			}
			if code, body := apiCall(t, "GET", base+"/api/v1/campaigns/auto/recommendations", k2.Key, ""); code != 404 {
				t.Errorf("another advertiser's recommendation: %d %s", code, body)
			}
			if code, body := apiCall(t, "GET", base+"/api/v1/campaigns/fixed/recommendations", k2.Key, ""); code != 404 || !strings.Contains(body, "no budget recommendation") {
				t.Errorf("no recommendation: %d %s", code, body)
			}
			_ = context.Background
		})
	}
}
