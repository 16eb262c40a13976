package catalog

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // driver "pgx"
)

// Integration tests against real databases run when their address is in the environment.
const (
	envPostgresDSN = "ADPULSE_TEST_POSTGRES_DSN" // postgres://postgres@127.0.0.1:5432/test?sslmode=disable
	envMySQLDSN    = "ADPULSE_TEST_MYSQL_DSN"    // root@tcp(127.0.0.1:3306)/test
)

// backend is a database the store tests run against.
type backend struct {
	name string
	// env names the variable holding the server's DSN; "" for SQLite, which always runs.
	env string
	// fresh creates an empty database of its own for one test (a SQLite file, a PostgreSQL
	// schema, a MySQL database), dropped when the test ends, and returns the Options that open
	// it. Opening the same Options again sees the same data.
	fresh func(t *testing.T, serverDSN string) Options
}

var backends = []backend{
	{name: "sqlite", fresh: freshSQLite},
	{name: "postgres", env: envPostgresDSN, fresh: freshPostgres},
	{name: "mysql", env: envMySQLDSN, fresh: freshMySQL},
}

// forEachBackend runs test once per backend as a subtest, each with a fresh, isolated database.
// A server backend whose DSN is not in the environment is skipped, saying so.
func forEachBackend(t *testing.T, test func(t *testing.T, o Options)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			var dsn string
			if b.env != "" {
				if dsn = os.Getenv(b.env); dsn == "" {
					t.Skipf("%s not set: %s tests skipped", b.env, b.name)
				}
			}
			test(t, b.fresh(t, dsn))
		})
	}
}

func freshSQLite(t *testing.T, _ string) Options {
	return Options{Dialect: DialectSQLite, DSN: filepath.Join(t.TempDir(), "catalog.db")}
}

// testDBName is a name no other test uses.
func testDBName() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "t_" + hex.EncodeToString(b[:])
}

// freshPostgres creates a schema and points search_path at it through the DSN, so every
// connection of the pool uses it.
func freshPostgres(t *testing.T, serverDSN string) Options {
	t.Helper()
	schema := testDBName()
	admin := openAdmin(t, "pgx", serverDSN)
	if _, err := admin.Exec(`CREATE SCHEMA ` + schema); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		if _, err := admin.Exec(`DROP SCHEMA ` + schema + ` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
		admin.Close()
	})
	u, err := url.Parse(serverDSN)
	if err != nil {
		t.Fatalf("%s: %v", envPostgresDSN, err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return Options{Dialect: DialectPostgres, Driver: "pgx", DSN: u.String()}
}

// freshMySQL creates a database and names it in the DSN.
func freshMySQL(t *testing.T, serverDSN string) Options {
	t.Helper()
	db := testDBName()
	admin := openAdmin(t, "mysql", serverDSN)
	if _, err := admin.Exec(`CREATE DATABASE ` + db); err != nil {
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		if _, err := admin.Exec(`DROP DATABASE ` + db); err != nil {
			t.Errorf("drop database %s: %v", db, err)
		}
		admin.Close()
	})
	cfg, err := mysql.ParseDSN(serverDSN)
	if err != nil {
		t.Fatalf("%s: %v", envMySQLDSN, err)
	}
	cfg.DBName = db
	return Options{Dialect: DialectMySQL, Driver: "mysql", DSN: cfg.FormatDSN()}
}

func openAdmin(t *testing.T, driver, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatalf("open %s: %v", driver, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		t.Fatalf("connect to %s: %v", driver, err)
	}
	return db
}

// openWith opens a catalog with the test admin key and clock, closed when the test ends.
func openWith(t *testing.T, o Options, clock *testClock) *Catalog {
	t.Helper()
	o.AdminKey, o.Now = testAdminKey, clock.Now
	c, err := Open(context.Background(), o)
	if err != nil {
		t.Fatalf("Open(%s): %v", o.Dialect, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestStorePortability covers what databases disagree on by default: case-sensitive ids (MySQL
// compares case-insensitively unless told otherwise), 4-byte UTF-8 and maximal lengths, and
// times given in another zone, which come back equal and in UTC.
func TestStorePortability(t *testing.T) { forEachBackend(t, testStorePortability) }

func testStorePortability(t *testing.T, o Options) {
	ctx := context.Background()
	clock := &testClock{t: testNow.Add(123456 * time.Microsecond)}
	c := openWith(t, o, clock)

	name := strings.Repeat("दिवाली🎆", MaxNameLen/8)
	lower, err := c.PutAdvertiser(ctx, Advertiser{ID: "acme", Name: name})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutAdvertiser(ctx, Advertiser{ID: "ACME", Name: "Upper"}); err != nil {
		t.Fatalf("ids differing only in case: %v", err)
	}
	if got, err := c.GetAdvertiser(ctx, "acme"); err != nil || got != lower {
		t.Fatalf("GetAdvertiser(acme) = %+v, %v; want %+v", got, err, lower)
	}
	if !lower.CreatedAt.Equal(clock.Now()) || lower.CreatedAt.Location() != time.UTC {
		t.Errorf("created_at %v, want %v in UTC", lower.CreatedAt, clock.Now())
	}

	kolkata, _ := time.LoadLocation("Asia/Kolkata")
	start := time.Date(2026, 12, 1, 5, 30, 0, 0, kolkata) // midnight UTC
	end := time.Date(2027, 3, 28, 2, 30, 0, 0, kolkata)
	cp, err := c.PutCampaign(ctx, Campaign{ID: "c", AdvertiserID: "acme", Name: "C", CPCBidMicros: MaxMicros,
		DailyBudgetMicros: MaxMicros, TotalBudgetMicros: MaxMicros, StartTime: start, EndTime: end})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutCampaign(ctx, Campaign{ID: "C", AdvertiserID: "ACME", Name: "Upper", CPCBidMicros: 1}); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetCampaign(ctx, "c")
	if err != nil || got != cp {
		t.Fatalf("GetCampaign = %+v, %v; want %+v", got, err, cp)
	}
	if !got.StartTime.Equal(start) || !got.EndTime.Equal(end) || got.StartTime.Location() != time.UTC ||
		got.StartTime != time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC) {
		t.Errorf("schedule %v - %v, want %v - %v in UTC", got.StartTime, got.EndTime, start, end)
	}

	landing := "https://shop.example/" + strings.Repeat("p", MaxLandingURLLen-len("https://shop.example/"))
	id := strings.Repeat("x", 64)
	if _, err := c.PutAd(ctx, Ad{ID: id, CampaignID: "c", LandingURL: landing, CatalogID: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutAd(ctx, Ad{ID: strings.ToUpper(id), CampaignID: "C", LandingURL: "https://x.example/"}); err != nil {
		t.Fatalf("ad ids differing only in case: %v", err)
	}
	if a, err := c.GetAd(ctx, id); err != nil || a.LandingURL != landing || a.CatalogID != id || a.CampaignID != "c" {
		t.Fatalf("GetAd = %+v, %v", a, err)
	}
	if _, err := c.GetAd(ctx, "X"+id[1:]); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetAd of a case variant: %v, want ErrNotFound", err)
	}
	if st := c.Stats(); st.Advertisers != 2 || st.Campaigns != 2 || st.Ads != 2 {
		t.Errorf("Stats = %+v", st)
	}
}

func TestParseDSN(t *testing.T) {
	for _, tc := range []struct {
		in, driver, dsn string
		d               Dialect
	}{
		{"postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "pgx", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", DialectPostgres},
		{"postgresql://u:p@db/adpulse", "pgx", "postgresql://u:p@db/adpulse", DialectPostgres},
		{"mysql://root@tcp(127.0.0.1:3306)/test", "mysql", "root@tcp(127.0.0.1:3306)/test", DialectMySQL},
		{"MySQL://u:p@tcp(db:3306)/adpulse?timeout=5s", "mysql", "u:p@tcp(db:3306)/adpulse?timeout=5s", DialectMySQL},
		{"sqlite:///var/lib/adpulse/catalog.db", "sqlite", "/var/lib/adpulse/catalog.db", DialectSQLite},
		{"sqlite://catalog.db", "sqlite", "catalog.db", DialectSQLite},
		{"sqlite:catalog.db", "sqlite", "catalog.db", DialectSQLite},
		{"file:catalog.db?mode=ro", "sqlite", "file:catalog.db?mode=ro", DialectSQLite},
		{"file:///tmp/catalog.db", "sqlite", "file:///tmp/catalog.db", DialectSQLite},
		{"/data/catalog.db", "sqlite", "/data/catalog.db", DialectSQLite},
		{":memory:", "sqlite", ":memory:", DialectSQLite},
	} {
		d, driver, dsn, err := ParseDSN(tc.in)
		if err != nil || d != tc.d || driver != tc.driver || dsn != tc.dsn {
			t.Errorf("ParseDSN(%q) = %q, %q, %q, %v; want %q, %q, %q", tc.in, d, driver, dsn, err, tc.d, tc.driver, tc.dsn)
		}
		if _, err := dialectFor(d); err != nil {
			t.Errorf("ParseDSN(%q): dialect %q: %v", tc.in, d, err)
		}
	}
	for _, in := range []string{"", "sqlite:", "sqlite://", "postgres://", "mysql://root@tcp(db)", "mysql://", "oracle://db/x", "redis://127.0.0.1:6379",
		// Mistyped server addresses, never a stray SQLite file.
		"postgres:/db", "root@tcp(127.0.0.1:3306)/test", "db.internal:5432", "adpulse"} {
		if d, driver, dsn, err := ParseDSN(in); err == nil {
			t.Errorf("ParseDSN(%q) = %q, %q, %q; want an error", in, d, driver, dsn)
		}
	}
}

// TestOpenParsedDSN opens each backend through the address a --catalog-dsn flag would carry.
func TestOpenParsedDSN(t *testing.T) {
	forEachBackend(t, func(t *testing.T, o Options) {
		flag := string(o.Dialect) + "://" + o.DSN
		if o.Dialect == DialectPostgres {
			flag = o.DSN
		}
		d, driver, dsn, err := ParseDSN(flag)
		if err != nil || d != o.Dialect || driver != o.Driver && o.Driver != "" {
			t.Fatalf("ParseDSN(%q) = %q, %q, %v", flag, d, driver, err)
		}
		c := openWith(t, Options{Dialect: d, Driver: driver, DSN: dsn}, &testClock{t: testNow})
		if _, err := c.PutAdvertiser(context.Background(), Advertiser{ID: "a1", Name: "Acme"}); err != nil {
			t.Fatal(err)
		}
	})
}
