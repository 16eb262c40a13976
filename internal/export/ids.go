package export

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	_ "github.com/go-sql-driver/mysql" // a catalog on MySQL/MariaDB
	_ "github.com/jackc/pgx/v5/stdlib" // a catalog on PostgreSQL
	_ "modernc.org/sqlite"             // the embedded catalog

	"github.com/adpulse/adpulse/internal/catalog"
)

// maxListedIDs bounds --ids all: an export of more ids is cut by the caller into several.
const maxListedIDs = 10_000_000

// ListIDs returns every id of a level from the catalog database (the data dir's catalog.db,
// or the shared PostgreSQL/MySQL of a scale-out deployment), sorted. It only reads: the
// API has no listing, and the catalog tables are the one place that knows every id.
func ListIDs(ctx context.Context, dsn, level string) ([]string, error) {
	table := map[string]string{"ad": "ads", "campaign": "campaigns", "advertiser": "advertisers"}[level]
	if table == "" {
		return nil, errors.New("--by: want ad, campaign or advertiser")
	}
	d, driver, name, err := catalog.ParseDSN(dsn)
	if err != nil {
		return nil, err
	}
	if d == catalog.DialectSQLite && !strings.HasPrefix(name, "file:") {
		// Read-only, and wait for the serving process's writes rather than fail.
		name = "file:" + name + "?mode=ro&_pragma=busy_timeout(10000)"
	}
	db, err := sql.Open(driver, name)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, "SELECT id FROM "+table+" ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("list %s ids from the catalog: %w", level, err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		if len(ids) >= maxListedIDs {
			return nil, fmt.Errorf("the catalog has more than %d %s ids: export them in parts with --ids", maxListedIDs, level)
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}
