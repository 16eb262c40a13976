package catalog

import (
	"fmt"
	"strconv"
	"strings"

	// The embedded default: a pure-Go SQLite registered as driver "sqlite". MySQL and
	// PostgreSQL drivers are left to main, which knows whether they are wanted.
	_ "modernc.org/sqlite"
)

// Dialect names the SQL database behind a Catalog. Every statement of this package is written
// once, in the subset of SQL that SQLite, MySQL and PostgreSQL share; this file is the one place
// where they differ.
type Dialect string

// Dialects. Only SQLite is wired into the binary today; the others need their driver registered
// by main and are accepted here so that the statements stay portable.
const (
	DialectSQLite   Dialect = "sqlite"
	DialectMySQL    Dialect = "mysql"
	DialectPostgres Dialect = "postgres"
)

// dialect is what differs between databases.
type dialect struct {
	name Dialect
	// dollar: PostgreSQL numbers its placeholders ($1, $2, ...) instead of using "?".
	dollar bool
	// driver is the database/sql driver name used when Options.Driver is empty.
	driver string
	// setup runs before the schema on every Open.
	setup []string
}

func dialectFor(d Dialect) (dialect, error) {
	switch d {
	case "", DialectSQLite:
		// WAL is persistent in the file, so it is set here as well as in the DSN: an
		// Options.DB opened by the caller gets it too.
		return dialect{name: DialectSQLite, driver: "sqlite", setup: []string{"PRAGMA journal_mode=WAL"}}, nil
	case DialectMySQL:
		return dialect{name: DialectMySQL, driver: "mysql"}, nil
	case DialectPostgres:
		return dialect{name: DialectPostgres, driver: "pgx", dollar: true}, nil
	}
	return dialect{}, fmt.Errorf("unknown SQL dialect %q", d)
}

// q rewrites the "?" placeholders of a statement for the dialect. The statements of this
// package contain no "?" inside string literals, which is what makes the plain scan safe.
func (d dialect) q(s string) string {
	if !d.dollar {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 16)
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

// sqliteDSN adds what the catalog relies on to a SQLite file name: WAL so readers never block
// the writer, a busy timeout instead of immediate SQLITE_BUSY errors, synchronous=FULL so that
// a committed write survives power loss (the API acknowledges only durable writes), enforced
// foreign keys as a backstop for the referential checks, and BEGIN IMMEDIATE so a write
// transaction takes the write lock up front instead of failing when it upgrades.
func sqliteDSN(name string) string {
	sep := "?"
	if strings.Contains(name, "?") {
		sep = "&"
	}
	return name + sep + "_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)" +
		"&_pragma=foreign_keys(1)&_txlock=immediate"
}

// sqliteInMemory reports whether a SQLite name is an in-memory database, which exists once per
// connection and therefore needs a pool of exactly one connection.
func sqliteInMemory(name string) bool {
	return name == ":memory:" || strings.HasPrefix(name, "file::memory:") || strings.Contains(name, "mode=memory")
}

// schema is portable DDL. Times are BIGINT Unix microseconds (no TIMESTAMP type behaves the same
// in all three databases); optional values are NULL; foreign keys are table constraints because
// MySQL ignores REFERENCES written on a column.
func schema() []string {
	return []string{
		`CREATE TABLE IF NOT EXISTS advertisers (
	id VARCHAR(64) NOT NULL,
	name VARCHAR(256) NOT NULL,
	timezone VARCHAR(64) NOT NULL,
	created_at BIGINT NOT NULL,
	updated_at BIGINT NOT NULL,
	PRIMARY KEY (id)
)`,
		`CREATE TABLE IF NOT EXISTS campaigns (
	id VARCHAR(64) NOT NULL,
	advertiser_id VARCHAR(64) NOT NULL,
	name VARCHAR(256) NOT NULL,
	status VARCHAR(16) NOT NULL,
	cpc_bid_micros BIGINT NOT NULL,
	daily_budget_micros BIGINT NOT NULL,
	total_budget_micros BIGINT NOT NULL,
	start_time BIGINT NULL,
	end_time BIGINT NULL,
	created_at BIGINT NOT NULL,
	updated_at BIGINT NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY (advertiser_id) REFERENCES advertisers (id)
)`,
		`CREATE TABLE IF NOT EXISTS ads (
	id VARCHAR(64) NOT NULL,
	campaign_id VARCHAR(64) NOT NULL,
	landing_url VARCHAR(2048) NOT NULL,
	catalog_id VARCHAR(64) NULL,
	cpc_bid_micros BIGINT NULL,
	created_at BIGINT NOT NULL,
	updated_at BIGINT NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY (campaign_id) REFERENCES campaigns (id)
)`,
		`CREATE TABLE IF NOT EXISTS api_keys (
	key_hash CHAR(64) NOT NULL,
	role VARCHAR(16) NOT NULL,
	advertiser_id VARCHAR(64) NULL,
	created_at BIGINT NOT NULL,
	PRIMARY KEY (key_hash),
	FOREIGN KEY (advertiser_id) REFERENCES advertisers (id)
)`,
	}
}
