package catalog

// Statements over many ids or rows, in chunks: reads by "IN (...)" lists and multi-row
// inserts, portable to every dialect.

import (
	"context"
	"database/sql"
	"strings"
)

// sqlConn is what chunked statements run on: the database or a transaction.
type sqlConn interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
	PrepareContext(context.Context, string) (*sql.Stmt, error)
}

// chunkStmt runs the statements of a chunked read or insert of total items, size per
// statement. When more than one full chunk will run, the full chunk's statement is prepared
// once and reused: parsing a statement of hundreds of placeholders costs more than running
// it. Every other statement runs directly.
type chunkStmt struct {
	conn        sqlConn
	size, total int
	full        *sql.Stmt
}

// prepared returns the statement to run q, a statement for n items, with; nil to run q
// directly.
func (c *chunkStmt) prepared(ctx context.Context, q string, n int) (*sql.Stmt, error) {
	if n < c.size || c.total < 2*c.size {
		return nil, nil
	}
	if c.full == nil {
		var err error
		if c.full, err = c.conn.PrepareContext(ctx, q); err != nil {
			return nil, err
		}
	}
	return c.full, nil
}

func (c *chunkStmt) close() {
	if c.full != nil {
		c.full.Close()
	}
}

func (c *chunkStmt) exec(ctx context.Context, q string, n int, args []any) error {
	st, err := c.prepared(ctx, q, n)
	switch {
	case err != nil:
	case st != nil:
		_, err = st.ExecContext(ctx, args...)
	default:
		_, err = c.conn.ExecContext(ctx, q, args...)
	}
	return err
}

func (c *chunkStmt) query(ctx context.Context, q string, n int, args []any) (*sql.Rows, error) {
	st, err := c.prepared(ctx, q, n)
	if err != nil {
		return nil, err
	}
	if st != nil {
		return st.QueryContext(ctx, args...)
	}
	return c.conn.QueryContext(ctx, q, args...)
}

// queryIn runs query, which ends in "IN (", on conn once per chunk of ids (chunkStmt),
// closing the list itself, and calls each for every row.
func queryIn(ctx context.Context, conn sqlConn, d dialect, query, tail string, ids []string, each func(*sql.Rows) error) error {
	stmts := chunkStmt{conn: conn, size: inChunk, total: len(ids)}
	defer stmts.close()
	for start := 0; start < len(ids); start += inChunk {
		chunk := ids[start:min(start+inChunk, len(ids))]
		args := make([]any, len(chunk))
		for i, id := range chunk {
			args[i] = id
		}
		q := d.q(query + strings.Repeat("?, ", len(chunk)-1) + "?)" + tail)
		if err := func() error {
			rows, err := stmts.query(ctx, q, len(chunk), args)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				if err := each(rows); err != nil {
					return err
				}
			}
			return rows.Err()
		}(); err != nil {
			return err
		}
	}
	return nil
}

// insertRows inserts n rows of cols columns, insertChunk rows per statement (chunkStmt):
// head ("INSERT INTO t (...) VALUES ") and a list of rows, whose arguments row appends.
func insertRows(ctx context.Context, tx *sql.Tx, d dialect, head string, cols, n int, row func(args []any, i int) []any) error {
	stmts := chunkStmt{conn: tx, size: insertChunk, total: n}
	defer stmts.close()
	one := "(" + strings.Repeat("?, ", cols-1) + "?)"
	for start := 0; start < n; start += insertChunk {
		end := min(start+insertChunk, n)
		args := make([]any, 0, cols*(end-start))
		for i := start; i < end; i++ {
			args = row(args, i)
		}
		if err := stmts.exec(ctx, d.q(head+strings.Repeat(one+", ", end-start-1)+one), end-start, args); err != nil {
			return err
		}
	}
	return nil
}
