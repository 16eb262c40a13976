package ledgertest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/billing/ledger"

	_ "github.com/go-sql-driver/mysql" // driver "mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // driver "pgx"
)

// The environment variables that point the SQL tests at a server; a test skips when its
// variable is unset.
const (
	EnvPostgres = "ADPULSE_TEST_POSTGRES_DSN"
	EnvMySQL    = "ADPULSE_TEST_MYSQL_DSN"
)

// SQLBackend is a database to run SQL ledgers on.
type SQLBackend struct {
	Name    string
	Env     string
	Driver  string
	Dialect ledger.Dialect
}

// SQLBackends are PostgreSQL and MySQL/MariaDB.
var SQLBackends = []SQLBackend{
	{"postgres", EnvPostgres, "pgx", ledger.DialectPostgres},
	{"mysql", EnvMySQL, "mysql", ledger.DialectMySQL},
}

// OpenDB connects to b's server, or skips t when its variable is unset. It returns the pool
// and a table prefix no other test uses; the tables with that prefix are dropped at cleanup.
func (b SQLBackend) OpenDB(t testing.TB) (*sql.DB, string) {
	t.Helper()
	dsn := os.Getenv(b.Env)
	if dsn == "" {
		t.Skipf("%s is not set", b.Env)
	}
	db, err := sql.Open(b.Driver, dsn)
	if err != nil {
		t.Fatalf("open %s: %v", b.Name, err)
	}
	db.SetMaxOpenConns(16)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		t.Fatalf("connect to %s: %v", b.Name, err)
	}
	var r [6]byte
	_, _ = rand.Read(r[:])
	prefix := "lt" + hex.EncodeToString(r[:]) + "_"
	t.Cleanup(func() {
		for _, tbl := range []string{"partitions", "ledger", "spend_day", "spend_total", "journal", "counters", "views", "known", "meta"} {
			if _, err := db.Exec("DROP TABLE IF EXISTS " + prefix + tbl); err != nil {
				t.Errorf("drop %s%s: %v", prefix, tbl, err)
			}
		}
		db.Close()
	})
	return db, prefix
}

// Factory returns a conformance Factory for b.
func (b SQLBackend) Factory() Factory {
	return func(t *testing.T) Opener {
		db, prefix := b.OpenDB(t)
		return func() (ledger.Store, error) {
			return ledger.OpenSQL(context.Background(), db, b.Dialect, ledger.SQLOptions{Prefix: prefix})
		}
	}
}
