package ledger_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/adpulse/adpulse/internal/billing/ledger"
	"github.com/adpulse/adpulse/internal/billing/ledger/ledgertest"
	"github.com/adpulse/adpulse/internal/testseed"
)

func TestSQLConformance(t *testing.T) {
	for _, b := range ledgertest.SQLBackends {
		t.Run(b.Name, func(t *testing.T) {
			ledgertest.Run(t, b.Factory(), testseed.Seed(t))
		})
	}
}

// TestSQLPrefixes: two prefixes in one database are two ledgers; a bad prefix is refused.
func TestSQLPrefixes(t *testing.T) {
	for _, b := range ledgertest.SQLBackends {
		t.Run(b.Name, func(t *testing.T) {
			db, prefix := b.OpenDB(t)
			ctx := context.Background()
			if _, err := ledger.OpenSQL(ctx, db, b.Dialect, ledger.SQLOptions{Prefix: "Bad-Prefix"}); err == nil || !strings.Contains(err.Error(), "prefix") {
				t.Fatalf("bad prefix: %v", err)
			}
			a, err := ledger.OpenSQL(ctx, db, b.Dialect, ledger.SQLOptions{Prefix: prefix})
			if err != nil {
				t.Fatal(err)
			}
			_, other := b.OpenDB(t)
			o, err := ledger.OpenSQL(ctx, db, b.Dialect, ledger.SQLOptions{Prefix: other})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := a.Update(ctx, func(context.Context, ledger.Tx) (*ledger.Writes, error) {
				return &ledger.Writes{Journal: []byte("x"), Known: []string{"c1"}}, nil
			}); err != nil {
				t.Fatal(err)
			}
			if n, err := o.JournalNext(ctx); err != nil || n != 0 {
				t.Fatalf("the other prefix's journal: %d, %v", n, err)
			}
			if k, err := o.Known(ctx); err != nil || len(k) != 0 {
				t.Fatalf("the other prefix's known campaigns: %v, %v", k, err)
			}
			// Opening again on existing tables is fine (every node does it at start).
			if _, err := ledger.OpenSQL(ctx, db, b.Dialect, ledger.SQLOptions{Prefix: prefix}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestOpenDSN: a ledger from an address, as the server's flag would give it.
func TestOpenDSN(t *testing.T) {
	ctx := context.Background()
	for _, bad := range []string{"sqlite:billing.db", "postgres:/nohost", ""} {
		if _, err := ledger.OpenDSN(ctx, bad, ledger.SQLOptions{}); err == nil {
			t.Errorf("OpenDSN(%q) succeeded", bad)
		}
	}
	for _, b := range ledgertest.SQLBackends {
		t.Run(b.Name, func(t *testing.T) {
			_, prefix := b.OpenDB(t) // skips without the server; drops the prefix's tables after
			dsn := os.Getenv(b.Env)
			if b.Dialect == ledger.DialectMySQL {
				dsn = "mysql://" + dsn
			}
			s, err := ledger.OpenDSN(ctx, dsn, ledger.SQLOptions{Prefix: prefix})
			if err != nil {
				t.Fatal(err)
			}
			if n, err := s.JournalNext(ctx); err != nil || n != 0 {
				t.Fatalf("journal next of a new ledger: %d, %v", n, err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
