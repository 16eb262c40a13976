package bulkimport

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	_ "github.com/go-sql-driver/mysql" // mysql:// sources
	_ "github.com/jackc/pgx/v5/stdlib" // postgres:// sources
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	_ "github.com/trinodb/trino-go-client/trino" // trino:// sources
)

// S3Options say how to reach the S3 (or S3-compatible) API of s3:// sources.
type S3Options struct {
	Endpoint string // host[:port]; default s3.amazonaws.com
	Region   string
	// AccessKey and SecretKey; when empty, credentials come from the environment
	// (AWS_ACCESS_KEY_ID, ...), ~/.aws/credentials or the instance's IAM role.
	AccessKey, SecretKey string
	Insecure             bool // http rather than https (local MinIO, tests)
	PathStyle            bool // endpoint/bucket rather than bucket.endpoint
}

// NewS3Client returns a minio client for o.
func NewS3Client(o S3Options) (*minio.Client, error) {
	if o.Endpoint == "" {
		o.Endpoint = "s3.amazonaws.com"
	}
	creds := credentials.NewStaticV4(o.AccessKey, o.SecretKey, "")
	if o.AccessKey == "" {
		creds = credentials.NewChainCredentials([]credentials.Provider{
			&credentials.EnvAWS{}, &credentials.EnvMinio{}, &credentials.FileAWSCredentials{}, &credentials.IAM{},
		})
	}
	lookup := minio.BucketLookupAuto
	if o.PathStyle {
		lookup = minio.BucketLookupPath
	}
	return minio.New(o.Endpoint, &minio.Options{Creds: creds, Secure: !o.Insecure, Region: o.Region, BucketLookup: lookup})
}

// openS3 opens s3://bucket/key.
func openS3(ctx context.Context, u *url.URL, format Format, o S3Options) (Source, error) {
	bucket, key := u.Host, strings.TrimPrefix(u.Path, "/")
	if bucket == "" || key == "" {
		return nil, fmt.Errorf("--source %q: want s3://bucket/key", u.Redacted())
	}
	if format == "" {
		var err error
		if format, err = formatOf(key); err != nil {
			return nil, err
		}
	}
	c, err := NewS3Client(o)
	if err != nil {
		return nil, err
	}
	obj, err := c.GetObject(ctx, bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, err
	}
	st, err := obj.Stat()
	if err != nil {
		obj.Close()
		return nil, fmt.Errorf("s3://%s/%s: %w", bucket, key, err)
	}
	if format == FormatParquet {
		s, err := newParquetSource(obj, st.Size, obj.Close)
		if err != nil {
			obj.Close()
			return nil, fmt.Errorf("s3://%s/%s: %w", bucket, key, err)
		}
		return s, nil
	}
	return &streamSource{format: format, in: &countingReader{r: obj}, size: st.Size, close: obj.Close}, nil
}

// sqlSource runs one query through database/sql; each result row is a record, its columns
// named by the query (SELECT ... AS impression_id).
type sqlSource struct {
	db    *sql.DB
	query string
	read  atomic.Int64
}

// sqlDriver maps a source URL to a database/sql driver and its DSN.
func sqlDriver(u *url.URL, raw string) (driver, dsn string, err error) {
	switch u.Scheme {
	case "postgres", "postgresql":
		return "pgx", raw, nil
	case "mysql":
		// The driver's own format follows the scheme: user:pass@tcp(host:3306)/db?params.
		rest := strings.TrimPrefix(raw, u.Scheme+"://")
		if !strings.Contains(rest, "/") {
			return "", "", errors.New("a MySQL source looks like mysql://user:password@tcp(host:3306)/dbname")
		}
		return "mysql", rest, nil
	case "trino", "trinos":
		// trino-go-client's DSN is http(s)://user@host:port?catalog=...&schema=...
		v := *u
		v.Scheme = "http"
		if u.Scheme == "trinos" {
			v.Scheme = "https"
		}
		return "trino", v.String(), nil
	}
	return "", "", fmt.Errorf("unknown source scheme %q", u.Scheme)
}

func openSQL(ctx context.Context, u *url.URL, raw, query string) (Source, error) {
	if strings.TrimSpace(query) == "" {
		return nil, errors.New("--query is required for a database source")
	}
	driver, dsn, err := sqlDriver(u, raw)
	if err != nil {
		return nil, err
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := db.PingContext(pctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("connect to the %s database: %w", u.Scheme, err)
	}
	return &sqlSource{db: db, query: query}, nil
}

func (s *sqlSource) Progress() (int64, int64) { return s.read.Load(), 0 }
func (s *sqlSource) Close() error             { return s.db.Close() }

func (s *sqlSource) Rows(ctx context.Context, skip int64, fn func(int64, Record, *RowError) error) error {
	rows, err := s.db.QueryContext(ctx, s.query)
	if err != nil {
		return fmt.Errorf("query: %w", err)
	}
	defer rows.Close()
	names, err := rows.Columns()
	if err != nil {
		return err
	}
	for i := range names {
		names[i] = strings.ToLower(names[i])
	}
	vals := make([]any, len(names))
	ptrs := make([]any, len(names))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	var num int64
	for rows.Next() {
		num++
		if num <= skip {
			continue
		}
		if err := rows.Scan(ptrs...); err != nil {
			return fmt.Errorf("row %d: %w", num, err)
		}
		rec := make(Record, len(names))
		var bad *RowError
		for i, v := range vals {
			text, err := renderSQL(v)
			if err != nil && eventTable.isColumn(names[i]) {
				bad = &RowError{Row: num, Field: names[i], Message: err.Error()}
			}
			if text != "" {
				rec[names[i]] = text
			}
		}
		if bad != nil {
			rec = nil
		}
		s.read.Store(num)
		if err := fn(num, rec, bad); err != nil {
			return err
		}
	}
	return rows.Err()
}

func renderSQL(v any) (string, error) {
	switch v := v.(type) {
	case nil:
		return "", nil
	case string:
		return v, nil
	case []byte:
		return string(v), nil
	case int64:
		return strconv.FormatInt(v, 10), nil
	case int32:
		return strconv.FormatInt(int64(v), 10), nil
	case float64:
		if v != float64(int64(v)) {
			return "", fmt.Errorf("%v is not an integer", v)
		}
		return strconv.FormatInt(int64(v), 10), nil
	case time.Time:
		return v.UTC().Format(time.RFC3339Nano), nil
	}
	return "", fmt.Errorf("SQL type %T is not a string, an integer or a timestamp", v)
}

// parseURL parses a source URL. A MySQL DSN (user:pass@tcp(host:3306)/db) is not a URL, so
// only its scheme is kept.
func parseURL(spec string) (*url.URL, error) {
	scheme, rest, _ := strings.Cut(spec, "://")
	if strings.EqualFold(scheme, "mysql") {
		return &url.URL{Scheme: "mysql", Opaque: rest}, nil
	}
	u, err := url.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("--source: %w", err)
	}
	u.Scheme = strings.ToLower(u.Scheme)
	return u, nil
}
