package e2e

// Catalog feed: two processes on one PostgreSQL catalog (each with its own data dir for the
// rest). A click URL issued by A answers on B, an ingest key made on A works on B, and a new
// landing URL set on A is where B redirects, each within 2 s.

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // driver "pgx"
)

const envPostgresDSN = "ADPULSE_TEST_POSTGRES_DSN" // postgres://postgres@127.0.0.1:5432/test?sslmode=disable

// sharedCatalogDSN creates a PostgreSQL schema of its own for the test, dropped at its end, and
// returns a DSN whose connections use it.
func sharedCatalogDSN(t *testing.T) string {
	t.Helper()
	server := os.Getenv(envPostgresDSN)
	if server == "" {
		t.Skipf("%s not set: a catalog shared by two processes needs a PostgreSQL server", envPostgresDSN)
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	schema := "e2e_" + hex.EncodeToString(b[:])
	admin, err := sql.Open("pgx", server)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(`CREATE SCHEMA ` + schema); err != nil {
		admin.Close()
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		if _, err := admin.Exec(`DROP SCHEMA ` + schema + ` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
		admin.Close()
	})
	u, err := url.Parse(server)
	if err != nil {
		t.Fatalf("%s: %v", envPostgresDSN, err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

func TestCatalogFeedAcrossProcesses(t *testing.T) {
	needBinary(t)
	dsn := sharedCatalogDSN(t)
	e := newEnv(t)
	args := []string{"--admin-key", testAdminKey, "--click-secret", testClickSecret, "--catalog-dsn", dsn}
	a := e.start(args...)
	b := e.start(append(args, "--data-dir", filepath.Join(e.dir, "data-b"))...)
	c := newClient(4)
	ctx := context.Background()
	const limit = 2 * time.Second

	// eventually retries check until it passes or 2 s after start have gone by.
	eventually := func(what string, start time.Time, check func() (bool, string)) {
		t.Helper()
		for {
			ok, got := check()
			if ok {
				return
			}
			if time.Since(start) > limit {
				t.Fatalf("%s: not in force on B within %v of the change on A; last: %s", what, limit, got)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	start := time.Now()
	cat := setupCatalog(t, c, a.base, testAdminKey, "f", 1, 1, 1)
	ad := cat.ads[0]
	tok, err := clickToken(ctx, c, a.base, testAdminKey, ad.id, "imp-feed-1", "u1")
	if err != nil {
		t.Fatal(err)
	}
	eventually("click URL issued by A", start, func() (bool, string) {
		resp, err := rawGet(b.api, "/c/"+tok)
		if err != nil {
			return false, err.Error()
		}
		return resp.status == 302 && resp.header.Get("Location") == ad.landing, resp.String()
	})

	start = time.Now()
	var key struct {
		Key string `json:"key"`
	}
	mustJSON(t, c, "POST", a.base+"/api/v1/ingest-keys", testAdminKey, nil, 200, &key)
	line := []byte(`{"type":"impression","impression_id":"imp-feed-2","ad_id":"` + ad.id + `"}` + "\n")
	eventually("ingest key made on A", start, func() (bool, string) {
		resp, err := do(ctx, c, "POST", b.base+"/events", key.Key, map[string]string{"Content-Type": "application/x-ndjson"}, line)
		if err != nil {
			return false, err.Error()
		}
		return resp.status == 200, resp.String()
	})

	start = time.Now()
	landing := "https://feed.example/new-landing"
	mustJSON(t, c, "PUT", a.base+"/api/v1/ads/"+ad.id, testAdminKey, map[string]any{"campaign_id": ad.campaign, "landing_url": landing}, 200, nil)
	eventually("landing URL changed on A", start, func() (bool, string) {
		resp, err := rawGet(b.api, "/c/"+tok)
		if err != nil {
			return false, err.Error()
		}
		return resp.status == 302 && resp.header.Get("Location") == landing, resp.String()
	})
}
