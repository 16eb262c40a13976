package ledger

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"
)

// Dialect names the SQL database behind a SQL ledger. Every statement is written once; this
// file is where PostgreSQL and MySQL/MariaDB differ (placeholders, upserts, column types, the
// errors worth retrying).
type Dialect string

// Dialects. The drivers are registered by the binary (pgx's stdlib as "pgx", go-sql-driver as
// "mysql"); OpenSQL takes an open *sql.DB.
const (
	DialectPostgres Dialect = "postgres"
	DialectMySQL    Dialect = "mysql"
)

type dialect struct {
	name   Dialect
	dollar bool   // PostgreSQL numbers its placeholders
	blob   string // the binary column type
	table  string // ends every CREATE TABLE
}

func dialectFor(d Dialect) (dialect, error) {
	switch d {
	case DialectPostgres:
		return dialect{name: d, dollar: true, blob: "BYTEA"}, nil
	case DialectMySQL:
		// A binary collation: ids are case-sensitive, as everywhere else in adpulse.
		return dialect{name: d, blob: "LONGBLOB", table: " ENGINE=InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"}, nil
	}
	return dialect{}, fmt.Errorf("ledger: unknown SQL dialect %q", d)
}

// q rewrites "?" placeholders for the dialect. No statement has a "?" inside a literal.
func (d dialect) q(s string) string {
	if !d.dollar {
		return s
	}
	var b strings.Builder
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// insertIgnore is an INSERT that leaves an existing row as it is (and still locks it).
func (d dialect) insertIgnore(table, cols, values, key, anyCol string) string {
	if d.name == DialectPostgres {
		return "INSERT INTO " + table + " (" + cols + ") VALUES " + values + " ON CONFLICT (" + key + ") DO NOTHING"
	}
	return "INSERT INTO " + table + " (" + cols + ") VALUES " + values + " ON DUPLICATE KEY UPDATE " + anyCol + " = " + anyCol
}

// upsertAdd inserts rows or adds the new value of col to the existing one.
func (d dialect) upsertAdd(table, cols, values, key, col string) string {
	if d.name == DialectPostgres {
		return "INSERT INTO " + table + " AS t (" + cols + ") VALUES " + values + " ON CONFLICT (" + key + ") DO UPDATE SET " + col + " = t." + col + " + EXCLUDED." + col
	}
	return "INSERT INTO " + table + " (" + cols + ") VALUES " + values + " ON DUPLICATE KEY UPDATE " + col + " = " + col + " + VALUES(" + col + ")"
}

// upsertSet inserts rows or replaces col.
func (d dialect) upsertSet(table, cols, values, key, col string) string {
	if d.name == DialectPostgres {
		return "INSERT INTO " + table + " (" + cols + ") VALUES " + values + " ON CONFLICT (" + key + ") DO UPDATE SET " + col + " = EXCLUDED." + col
	}
	return "INSERT INTO " + table + " (" + cols + ") VALUES " + values + " ON DUPLICATE KEY UPDATE " + col + " = VALUES(" + col + ")"
}

// retryable reports whether a transaction failed only because it raced another one: a
// deadlock, a serialization failure, a lock wait timeout, or a unique key another
// transaction inserted first (two nodes charging the same click key). Running it again sees
// the winner's commit.
func retryable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "40001", "40P01", "23505", "55P03":
			return true
		}
		return false
	}
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch me.Number {
		case 1213, 1205, 1062:
			return true
		}
	}
	return false
}

// placeholders returns rows groups of n "?" each: "(?, ?), (?, ?)".
func placeholders(rows, n int) string {
	one := "(" + strings.TrimSuffix(strings.Repeat("?, ", n), ", ") + ")"
	return strings.TrimSuffix(strings.Repeat(one+", ", rows), ", ")
}

// isDuplicate reports a unique key violation.
func isDuplicate(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "23505"
	}
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.Number == 1062
}
