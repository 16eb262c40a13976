package bulkimport_test

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	. "github.com/adpulse/adpulse/internal/bulkimport"
	"io"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/minio/minio-go/v7"

	"github.com/adpulse/adpulse/internal/testseed"
)

// sqlImport loads rows into a fresh table of db, imports them with query through source,
// and checks the counts.
func sqlImport(t *testing.T, driver, dsn, source string) {
	c := startServer(t)
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	table := fmt.Sprintf("adpulse_import_%d", time.Now().UnixNano())
	ctx := context.Background()
	ts := "TIMESTAMP"
	if driver == "mysql" {
		ts = "DATETIME(6)"
	}
	if _, err := db.ExecContext(ctx, fmt.Sprintf(`CREATE TABLE %s (seq INT PRIMARY KEY, kind VARCHAR(32), ad VARCHAR(64),
		imp VARCHAR(64), at %s, price BIGINT NULL)`, table, ts)); err != nil {
		t.Fatal(err)
	}
	defer db.ExecContext(ctx, "DROP TABLE "+table)
	ph := func(i int) string {
		if driver == "pgx" {
			return fmt.Sprintf("$%d", i)
		}
		return "?"
	}
	ins := fmt.Sprintf("INSERT INTO %s VALUES (%s,%s,%s,%s,%s,%s)", table, ph(1), ph(2), ph(3), ph(4), ph(5), ph(6))
	base := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	for i := range 200 {
		var price any
		kind := "impression"
		if i%4 == 3 {
			kind, price = "click", int64(700)
		}
		if _, err := db.ExecContext(ctx, ins, i, kind, "ad-1", fmt.Sprintf("imp-%d", i/4*4), base.Add(time.Duration(i)*time.Second), price); err != nil {
			t.Fatal(err)
		}
	}
	query := fmt.Sprintf(`SELECT kind AS type, ad AS ad_id, imp AS impression_id, at AS event_time, price AS cpc_micros FROM %s ORDER BY seq`, table)
	src, err := Open(ctx, source, query, "", S3Options{})
	if err != nil {
		t.Fatal(err)
	}
	var errs bytes.Buffer
	sum, err := runImport(t, ctx, c, src, "", &errs)
	if err != nil {
		t.Fatal(err)
	}
	// 200 rows: 50 impression ids each with 3 impressions (one counts) and a click.
	if sum.Rows != 200 || sum.Accepted != 100 || sum.Duplicates != 100 || sum.Rejected != 0 {
		t.Fatalf("summary %+v\n%s", sum, errs.String())
	}
	waitCounts(t, c, 50, 50)
}

func TestImportPostgres(t *testing.T) {
	dsn := os.Getenv("ADPULSE_TEST_POSTGRES_DSN")
	if dsn == "" {
		t.Skip("set ADPULSE_TEST_POSTGRES_DSN to test importing from PostgreSQL")
	}
	sqlImport(t, "pgx", dsn, dsn)
}

func TestImportMySQL(t *testing.T) {
	dsn := os.Getenv("ADPULSE_TEST_MYSQL_DSN")
	if dsn == "" {
		t.Skip("set ADPULSE_TEST_MYSQL_DSN to test importing from MySQL/MariaDB")
	}
	if !strings.Contains(dsn, "parseTime") {
		dsn += map[bool]string{true: "&", false: "?"}[strings.Contains(dsn, "?")] + "parseTime=true"
	}
	sqlImport(t, "mysql", dsn, "mysql://"+dsn)
}

// A Parquet and an NDJSON object on an in-process S3 import like local files.
func TestImportS3(t *testing.T) {
	c := startServer(t)
	backend := s3mem.New()
	if err := backend.CreateBucket("feeds"); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gofakes3.New(backend).Server())
	defer srv.Close()
	o := S3Options{Endpoint: strings.TrimPrefix(srv.URL, "http://"), Region: "us-east-1", AccessKey: "k", SecretKey: "s", Insecure: true, PathStyle: true}
	mc, err := NewS3Client(o)
	if err != nil {
		t.Fatal(err)
	}
	rows := testRows(100)
	pq := parquetBytes(t, rows)
	ctx := context.Background()
	if _, err := mc.PutObject(ctx, "feeds", "in/day=1/events.parquet", bytes.NewReader(pq), int64(len(pq)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	src, err := Open(ctx, "s3://feeds/in/day=1/events.parquet", "", "", o)
	if err != nil {
		t.Fatal(err)
	}
	sum, err := runImport(t, ctx, c, src, "", io.Discard)
	if err != nil || sum.Accepted != 150 || sum.Rejected != 0 {
		t.Fatalf("summary %+v, err %v", sum, err)
	}
	if _, err := Open(ctx, "s3://feeds/missing.csv", "", "", o); err == nil {
		t.Fatal("opening a missing object succeeded")
	}
	waitCounts(t, c, 100, 50)
}

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct{ source, query, format, want string }{
		{"x.txt", "", "", "cannot tell the format"},
		{"x.csv", "", "xml", "--format"},
		{"x.csv", "SELECT 1", "", "--query is for database sources"},
		{"postgres://u@127.0.0.1:1/db", "", "", "--query is required"},
		{"mysql://root@tcp(127.0.0.1:3306)", "SELECT 1", "", "mysql://user:password@tcp"},
		{"ftp://x/y", "SELECT 1", "", "unknown source scheme"},
	} {
		_, err := Open(ctx, tc.source, tc.query, Format(tc.format), S3Options{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%q, %q, %q) = %v, want %q", tc.source, tc.query, tc.format, err, tc.want)
		}
	}
	if got := RedactSecrets("postgres://u:secret@h/db"); strings.Contains(got, "secret") {
		t.Errorf("redactSecrets kept the password: %s", got)
	}
}

func FuzzNDJSONRows(f *testing.F) {
	f.Add([]byte(`{"type":"click","ad_id":"a","impression_id":"i","cpc_micros":5}` + "\n\n{\n"))
	f.Add([]byte(`{"type":"impression","ad_id":"a","event_time":"2026-01-01 00:00:00"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var last int64
		err := NDJSONRows(context.Background(), bytes.NewReader(b), 0, func(num int64, rec Record, bad *RowError) error {
			if num != last+1 || (rec == nil) == (bad == nil) {
				t.Fatalf("row %d after %d, rec %v bad %v", num, last, rec, bad)
			}
			last = num
			if rec != nil {
				ToEvent(rec)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzCSVRows(f *testing.F) {
	f.Add([]byte("type,ad_id,impression_id\nimpression,a,i\n\"x,y\n"))
	f.Add([]byte("type,ad_id\nclick\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var last int64
		_ = CSVRows(context.Background(), bytes.NewReader(b), 0, func(num int64, rec Record, bad *RowError) error {
			if num != last+1 || (rec == nil) == (bad == nil) {
				t.Fatalf("row %d after %d, rec %v bad %v", num, last, rec, bad)
			}
			last = num
			if rec != nil {
				ToEvent(rec)
			}
			return nil
		})
	})
}

// Skipping the first k rows (a resumed import) yields exactly the rows after k, numbered and
// decoded as a full read does, in every format, malformed rows included.
func TestSkipMatchesFullRead(t *testing.T) {
	seed := testseed.Seed(t)
	rng := rand.New(rand.NewPCG(seed, 1))
	dir := t.TempDir()
	rows := testRows(150) // 225 rows
	writeNDJSON(t, filepath.Join(dir, "e.ndjson"), rows)
	// Malformed lines in the middle of the NDJSON and CSV files.
	b, _ := os.ReadFile(filepath.Join(dir, "e.ndjson"))
	b = append([]byte("{broken\n\n"), b...)
	os.WriteFile(filepath.Join(dir, "e.ndjson"), b, 0o644)
	writeCSV(t, filepath.Join(dir, "e.csv"), rows)
	b, _ = os.ReadFile(filepath.Join(dir, "e.csv"))
	b = append(b, []byte("impression,\"unterminated\nclick,ad-1\n")...)
	os.WriteFile(filepath.Join(dir, "e.csv"), b, 0o644)
	os.WriteFile(filepath.Join(dir, "e.parquet"), parquetBytes(t, rows), 0o644)
	type row struct {
		num int64
		rec string
	}
	read := func(name string, skip int64) []row {
		src, err := Open(context.Background(), filepath.Join(dir, name), "", "", S3Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		var out []row
		err = src.Rows(context.Background(), skip, func(num int64, rec Record, bad *RowError) error {
			out = append(out, row{num, fmt.Sprint(rec, bad)})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, name := range []string{"e.ndjson", "e.csv", "e.parquet"} {
		full := read(name, 0)
		for range 5 {
			k := rng.Int64N(int64(len(full)) + 2)
			got := read(name, k)
			want := full[min(k, int64(len(full))):]
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("%s skip %d (seed %d): %d rows, want %d; first %v want %v", name, k, seed, len(got), len(want), got[:min(1, len(got))], want[:min(1, len(want))])
			}
		}
	}
}

// A checkpoint that cannot be written stops the import at once: it does not run on with
// nothing recorded.
func TestCheckpointWriteFailureStops(t *testing.T) {
	c := startServer(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "e.ndjson")
	writeNDJSON(t, path, testRows(2000)) // 3000 rows, 30 batches of 100
	src, _ := Open(context.Background(), path, "", "", S3Options{})
	sum, err := runImport(t, context.Background(), c, src, filepath.Join(dir, "missing-dir", "cp"), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "write checkpoint") {
		t.Fatalf("err %v", err)
	}
	if sum.Rows > 100 {
		t.Fatalf("committed %d rows past a failed checkpoint", sum.Rows)
	}
}
