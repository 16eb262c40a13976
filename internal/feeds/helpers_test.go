package feeds

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // driver "pgx"
	"github.com/parquet-go/parquet-go"

	"github.com/adpulse/adpulse/internal/archive"
	"github.com/adpulse/adpulse/internal/catalog"
)

// backend is a catalog database the store tests run against: SQLite always, PostgreSQL and
// MySQL/MariaDB when their DSN is in the environment, each test in a database of its own.
type backend struct {
	name, env string
	fresh     func(t *testing.T, serverDSN string) catalog.Options
}

var backends = []backend{
	{name: "sqlite", fresh: func(t *testing.T, _ string) catalog.Options {
		return catalog.Options{Dialect: catalog.DialectSQLite, DSN: filepath.Join(t.TempDir(), "catalog.db")}
	}},
	{name: "postgres", env: "ADPULSE_TEST_POSTGRES_DSN", fresh: freshPostgres},
	{name: "mysql", env: "ADPULSE_TEST_MYSQL_DSN", fresh: freshMySQL},
}

func forEachBackend(t *testing.T, test func(t *testing.T, o catalog.Options)) {
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

func testDBName() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "t_" + hex.EncodeToString(b[:])
}

func openAdmin(t *testing.T, driver, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("connect to %s: %v", driver, err)
	}
	return db
}

func freshPostgres(t *testing.T, serverDSN string) catalog.Options {
	schema := testDBName()
	admin := openAdmin(t, "pgx", serverDSN)
	if _, err := admin.Exec(`CREATE SCHEMA ` + schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = admin.Exec(`DROP SCHEMA ` + schema + ` CASCADE`); admin.Close() })
	u, err := url.Parse(serverDSN)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return catalog.Options{Dialect: catalog.DialectPostgres, Driver: "pgx", DSN: u.String()}
}

func freshMySQL(t *testing.T, serverDSN string) catalog.Options {
	db := testDBName()
	admin := openAdmin(t, "mysql", serverDSN)
	if _, err := admin.Exec(`CREATE DATABASE ` + db); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = admin.Exec(`DROP DATABASE ` + db); admin.Close() })
	cfg, err := mysql.ParseDSN(serverDSN)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DBName = db
	return catalog.Options{Dialect: catalog.DialectMySQL, Driver: "mysql", DSN: cfg.FormatDSN()}
}

// openStore opens a catalog on o and the feed store in its database.
func openStore(t *testing.T, o catalog.Options) (*catalog.Catalog, *Store) {
	t.Helper()
	c, err := catalog.Open(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	db, d := c.DB()
	s, err := OpenStore(context.Background(), db, d, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c, s
}

// file is one data file of a version as a test writes it.
type file struct {
	name string
	data []byte
	rows int64
}

func csvFile(name string, header string, lines ...string) file {
	var b bytes.Buffer
	b.WriteString(header + "\n")
	for _, l := range lines {
		b.WriteString(l + "\n")
	}
	return file{name: name, data: b.Bytes(), rows: int64(len(lines))}
}

func ndjsonFile(name string, lines ...string) file {
	var b bytes.Buffer
	for _, l := range lines {
		b.WriteString(l + "\n")
	}
	return file{name: name, data: b.Bytes(), rows: int64(len(lines))}
}

type bidRow struct {
	CatalogID string `parquet:"catalog_id"`
	BidMicros int64  `parquet:"bid_micros"`
}

func parquetBids(t *testing.T, name string, rows ...bidRow) file {
	var b bytes.Buffer
	w := parquet.NewGenericWriter[bidRow](&b)
	if _, err := w.Write(rows); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return file{name: name, data: b.Bytes(), rows: int64(len(rows))}
}

func manifestOf(files ...file) []byte {
	var m Manifest
	for _, f := range files {
		sum := sha256.Sum256(f.data)
		m.Files = append(m.Files, ManifestFile{Path: f.name, Rows: f.rows, SHA256: hex.EncodeToString(sum[:])})
	}
	b, _ := json.Marshal(m)
	return b
}

// drop writes a version's files and then, unless manifest is nil, its manifest.
func drop(t *testing.T, loc archive.Target, feed, version string, manifest []byte, files ...file) {
	t.Helper()
	ctx := context.Background()
	for _, f := range files {
		if err := loc.Put(ctx, feed+"/"+version+"/"+f.name, f.data); err != nil {
			t.Fatal(err)
		}
	}
	if manifest != nil {
		if err := loc.Put(ctx, feed+"/"+version+"/"+ManifestName, manifest); err != nil {
			t.Fatal(err)
		}
	}
}

func dirTarget(t *testing.T) archive.Target {
	loc, err := archive.NewDirTarget(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func newLoader(t *testing.T, loc archive.Target, s *Store, mut func(*Options)) *Loader {
	t.Helper()
	o := Options{Location: loc, Store: s, CampaignExists: func(id string) bool { return id != "nope" }}
	if mut != nil {
		mut(&o)
	}
	l, err := NewLoader(o)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func poll(t *testing.T, l *Loader) {
	t.Helper()
	if err := l.Poll(context.Background()); err != nil {
		t.Fatalf("poll: %v", err)
	}
}

func versionOf(t *testing.T, s *Store, feed, version string) VersionInfo {
	t.Helper()
	v, err := s.version(context.Background(), feed, version)
	if err != nil {
		t.Fatalf("version %s/%s: %v", feed, version, err)
	}
	return v
}

func active(t *testing.T, s *Store, feed string) string {
	t.Helper()
	v, err := s.Active(context.Background(), feed)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func countRows(t *testing.T, s *Store, table, version string) int {
	t.Helper()
	var n int
	if err := s.db.QueryRow(s.q(fmt.Sprintf(`SELECT COUNT(*) FROM %s WHERE version = ?`, table)), version).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
