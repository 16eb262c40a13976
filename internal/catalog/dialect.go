package catalog

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	// The embedded default: a pure-Go SQLite registered as driver "sqlite". The MySQL and
	// PostgreSQL drivers are registered by the binary (internal/server), not by this package.
	"github.com/go-sql-driver/mysql"
	_ "modernc.org/sqlite"
)

// Dialect names the SQL database behind a Catalog. Every statement of this package is written
// once, in the subset of SQL that SQLite, MySQL and PostgreSQL share; this file is the one place
// where they differ.
type Dialect string

// Dialects. MySQL (and MariaDB) and PostgreSQL need their driver registered by the binary;
// ParseDSN maps an address to a dialect and driver. The store tests run against all three
// (see backends_test.go).
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
	// tableOptions ends every CREATE TABLE.
	tableOptions string
}

func dialectFor(d Dialect) (dialect, error) {
	switch d {
	case "", DialectSQLite:
		// WAL is persistent in the file, so it is set here as well as in the DSN: an
		// Options.DB opened by the caller gets it too.
		return dialect{name: DialectSQLite, driver: "sqlite", setup: []string{"PRAGMA journal_mode=WAL"}}, nil
	case DialectMySQL:
		// A binary collation: ids are case-sensitive, as everywhere else (MySQL's default
		// collations would make "a1" and "A1" one primary key), and names keep every UTF-8
		// character whatever the server's default character set. InnoDB for transactions
		// and enforced foreign keys.
		return dialect{name: DialectMySQL, driver: "mysql",
			tableOptions: " ENGINE=InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"}, nil
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
// in all three databases, and an integer round-trips exactly with no session time zone in the
// way); optional values are NULL; foreign keys are table constraints because MySQL ignores
// REFERENCES written on a column.
func (d dialect) schema() []string {
	s := []string{
		`CREATE TABLE IF NOT EXISTS advertisers (
	id VARCHAR(64) NOT NULL,
	name VARCHAR(256) NOT NULL,
	timezone VARCHAR(64) NOT NULL,
	created_at BIGINT NOT NULL,
	updated_at BIGINT NOT NULL,
	PRIMARY KEY (id)
)`,
		// Every change of an advertiser's time zone, kept so that budget days can be computed
		// for any past time (see Catalog.recordTimezoneChange).
		`CREATE TABLE IF NOT EXISTS advertiser_timezones (
	advertiser_id VARCHAR(64) NOT NULL,
	changed_at BIGINT NOT NULL,
	from_timezone VARCHAR(64) NOT NULL,
	to_timezone VARCHAR(64) NOT NULL,
	PRIMARY KEY (advertiser_id, changed_at),
	FOREIGN KEY (advertiser_id) REFERENCES advertisers (id)
)`,
		// Every change of an advertiser's attribution windows (NULL: the deployment's
		// default), kept so that a conversion is decided with the windows in force at its
		// time whenever it is decided (windows.go).
		`CREATE TABLE IF NOT EXISTS advertiser_attribution_windows (
	advertiser_id VARCHAR(64) NOT NULL,
	changed_at BIGINT NOT NULL,
	click_window_us BIGINT NULL,
	view_window_us BIGINT NULL,
	PRIMARY KEY (advertiser_id, changed_at),
	FOREIGN KEY (advertiser_id) REFERENCES advertisers (id)
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
	auto_cpc INT NOT NULL DEFAULT 0,
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
		// The change feed (see feed.go): one row holding the last sequence number given out,
		// whose lock serialises writers, and one row per changed object.
		`CREATE TABLE IF NOT EXISTS catalog_feed_head (
	id INT NOT NULL,
	seq BIGINT NOT NULL,
	PRIMARY KEY (id)
)`,
		// A random token naming this database, so that a snapshot of the index
		// (snapshot.go) is never loaded against another one.
		`CREATE TABLE IF NOT EXISTS catalog_identity (
	id INT NOT NULL,
	token VARCHAR(64) NOT NULL,
	PRIMARY KEY (id)
)`,
		// Ownership epochs of log partitions per consumer group (epochs.go).
		`CREATE TABLE IF NOT EXISTS partition_epochs (
	group_name VARCHAR(128) NOT NULL,
	log_partition INT NOT NULL,
	epoch BIGINT NOT NULL,
	claimed_at BIGINT NOT NULL,
	PRIMARY KEY (group_name, log_partition)
)`,
		`CREATE TABLE IF NOT EXISTS catalog_changes (
	seq BIGINT NOT NULL,
	kind VARCHAR(16) NOT NULL,
	object_id VARCHAR(64) NOT NULL,
	changed_at BIGINT NOT NULL,
	PRIMARY KEY (seq)
)`,
	}
	for i := range s {
		s[i] += d.tableOptions
	}
	return s
}

// ParseDSN turns one catalog address, such as a --catalog-dsn flag, into the dialect, the
// database/sql driver name and the DSN that driver takes:
//
//	postgres://user@host:5432/db?sslmode=disable  PostgreSQL, driver "pgx", the URL as is
//	postgresql://...                              the same
//	mysql://user:pass@tcp(host:3306)/db           MySQL/MariaDB, driver "mysql", what follows "mysql://"
//	sqlite:///var/lib/adpulse/catalog.db          SQLite, driver "sqlite", the file name
//	sqlite:catalog.db, file:catalog.db?..., path  SQLite ("file:" URIs are passed as they are)
//	:memory:                                      an in-memory SQLite database
//
// It does not check that the driver is registered: the caller imports the drivers it wants
// (pgx: github.com/jackc/pgx/v5/stdlib; mysql: github.com/go-sql-driver/mysql).
func ParseDSN(s string) (d Dialect, driver, dsn string, err error) {
	if s == "" {
		return "", "", "", errors.New("empty catalog DSN")
	}
	scheme, rest, hasScheme := strings.Cut(s, "://")
	if !hasScheme || strings.ContainsAny(scheme, "/\\") {
		// No "scheme://": "sqlite:name", a "file:" URI, or a path that is plainly a SQLite
		// file. Anything else is refused rather than created as a stray SQLite file: a
		// mistyped server address ("postgres:/db", a MySQL DSN without mysql://) must fail.
		name, explicit := strings.CutPrefix(s, "sqlite:")
		if !explicit && !strings.HasPrefix(s, "file:") && !looksLikeSQLitePath(s) {
			hint := ""
			if strings.Contains(s, "@tcp(") {
				hint = " (a MySQL DSN needs mysql:// in front: mysql://user:password@tcp(host:3306)/dbname)"
			}
			return "", "", "", fmt.Errorf("catalog DSN %q: want postgres://user@host:5432/db, mysql://user:password@tcp(host:3306)/db, or sqlite:PATH%s", s, hint)
		}
		if explicit {
			s = name
		}
		if s == "" {
			return "", "", "", errors.New("catalog DSN names no SQLite file")
		}
		return DialectSQLite, "sqlite", s, nil
	}
	switch strings.ToLower(scheme) {
	case "postgres", "postgresql":
		if rest == "" {
			return "", "", "", fmt.Errorf("catalog DSN %q names no PostgreSQL server", s)
		}
		return DialectPostgres, "pgx", s, nil
	case "mysql":
		// The driver's own format, [user[:password]@][net[(addr)]]/dbname[?params], always
		// has the "/" before the database name.
		if !strings.Contains(rest, "/") {
			return "", "", "", errors.New("MySQL catalog DSN must look like mysql://user:password@tcp(host:3306)/dbname")
		}
		if _, err := mysql.ParseDSN(rest); err != nil {
			return "", "", "", fmt.Errorf("MySQL catalog DSN: %v; it must look like mysql://user:password@tcp(host:3306)/dbname", err)
		}
		return DialectMySQL, "mysql", rest, nil
	case "file":
		return DialectSQLite, "sqlite", s, nil // a SQLite URI
	case "sqlite":
		if rest == "" {
			return "", "", "", errors.New("catalog DSN names no SQLite file")
		}
		return DialectSQLite, "sqlite", rest, nil
	}
	return "", "", "", fmt.Errorf("catalog DSN: unknown scheme %q (want postgres://, mysql:// or sqlite:)", scheme)
}

// looksLikeSQLitePath reports whether s, given without a scheme, is plainly a SQLite file: an
// absolute or relative path, a name with a SQLite extension, or :memory:.
func looksLikeSQLitePath(s string) bool {
	if s == ":memory:" || strings.HasPrefix(s, "/") || strings.HasPrefix(s, "./") || strings.HasPrefix(s, "../") {
		return true
	}
	for _, ext := range []string{".db", ".sqlite", ".sqlite3"} {
		if strings.HasSuffix(s, ext) && !strings.ContainsAny(s, ":@?") {
			return true
		}
	}
	return false
}

// columnsAdded are the columns added to tables after they were first created, oldest first:
// CREATE TABLE IF NOT EXISTS leaves a table made by an older version as it was, so Open adds
// each one that is missing.
var columnsAdded = []struct{ table, column, def string }{
	{"campaigns", "auto_cpc", "INT NOT NULL DEFAULT 0"},
}

// migrate adds the columns a database created by an older version lacks. Two processes
// starting at once may both try; the loser's ALTER fails, and the column is then there.
func (c *Catalog) migrate(ctx context.Context) error {
	has := func(table, column string) bool {
		rows, err := c.db.QueryContext(ctx, `SELECT `+column+` FROM `+table+` WHERE 1 = 0`)
		if err != nil {
			return false
		}
		rows.Close()
		return true
	}
	for _, a := range columnsAdded {
		if has(a.table, a.column) {
			continue
		}
		if _, err := c.db.ExecContext(ctx, `ALTER TABLE `+a.table+` ADD COLUMN `+a.column+` `+a.def); err != nil && !has(a.table, a.column) {
			return fmt.Errorf("add column %s.%s: %w", a.table, a.column, err)
		}
	}
	return nil
}
