// Package chbase is the ClickHouse baseline of `adpulse bench`: the common "raw rows in
// ClickHouse" design. Every click or event becomes one row, inserted in batches over the
// native protocol (clickhouse-go/v2); /metrics and /metrics/top are SQL over the raw rows.
//
// It is written for the oldest server it is benchmarked on, Debian's clickhouse-server 18.16:
// a plain MergeTree (the 18.x "ENGINE = MergeTree() PARTITION BY ... ORDER BY" syntax), an
// explicit column list on INSERT (that server's insert header is otherwise empty to the
// client), and only functions it has (min, count, intDiv, toUInt32, toDateTime).
//
// Duplicates are removed in the query, not at insert: each (kind, impression id) counts once,
// in the bucket of its first row (GROUP BY ad_id, kind, imp with min(t), then count per bucket).
// Why not uniqExact per bucket: a retry that lands in the next minute would count in both.
// Why not ReplacingMergeTree + FINAL: it collapses rows only within a part until a merge, so
// exactness needs FINAL, which on 18.16 reads the whole table single-threaded and cannot use a
// time-ordered primary key (the key has to be the dedup key). The cost of our choice: the
// inner GROUP BY looks back DedupWindow before the window start, so a query scans
// window + DedupWindow of rows; and a duplicate that arrives more than DedupWindow after its
// first counts twice (the same bound Redis's SET NX TTL has).
//
// Acknowledgement: Record returns when the batch holding its rows has been inserted
// (ClickHouse has the rows in a part; it does not fsync parts by default, so this is not
// durable against a power loss, unlike adpulse's fsync). Rows wait up to FlushInterval for
// their batch: that wait is the baseline's click latency floor.
package chbase

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/tools/bench/baseline"
)

// Options of a Store.
type Options struct {
	Addr          string        // native protocol, e.g. 127.0.0.1:19000
	Table         string        // default "adpulse_bench_events"; created if missing
	Recreate      bool          // drop the table first
	FlushInterval time.Duration // longest a row waits for its batch; default 100ms
	MaxBatch      int           // rows per insert; default 100,000
	DedupWindow   time.Duration // how far back a duplicate is recognised; default 1h
}

// Store keeps raw rows in ClickHouse.
type Store struct {
	o    Options
	conn driver.Conn
	in   chan *pending
	done chan struct{}

	closeOnce sync.Once
	ctx       context.Context
	cancel    context.CancelFunc
}

var _ baseline.Store = (*Store)(nil)

// pending is one Record call waiting for its batch.
type pending struct {
	evs []baseline.Event
	err chan error
}

// Open connects, creates the table and starts the batcher.
func Open(ctx context.Context, o Options) (*Store, error) {
	if o.Table == "" {
		o.Table = "adpulse_bench_events"
	}
	if !event.ValidID(o.Table) || strings.ContainsAny(o.Table, ".:-") {
		return nil, fmt.Errorf("table name %q: letters, digits and _ only", o.Table)
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = 100 * time.Millisecond
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 100_000
	}
	if o.DedupWindow <= 0 {
		o.DedupWindow = time.Hour
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:         []string{o.Addr},
		DialTimeout:  5 * time.Second,
		MaxOpenConns: 16,
		MaxIdleConns: 16,
		ReadTimeout:  60 * time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("clickhouse %s: %w", o.Addr, err)
	}
	if err := conn.Ping(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("clickhouse %s: ping: %w", o.Addr, err)
	}
	if o.Recreate {
		if err := conn.Exec(ctx, "DROP TABLE IF EXISTS "+o.Table); err != nil {
			conn.Close()
			return nil, fmt.Errorf("drop table: %w", err)
		}
	}
	// kind: 0 impression, 1 click. ORDER BY (ad_id, t): /metrics reads a few ads' ranges;
	// partitions by day let a top-N over the last hour skip older days.
	ddl := "CREATE TABLE IF NOT EXISTS " + o.Table + ` (
		ad_id String, imp String, kind UInt8, t DateTime
	) ENGINE = MergeTree() PARTITION BY toYYYYMMDD(t) ORDER BY (ad_id, t)`
	if err := conn.Exec(ctx, ddl); err != nil {
		conn.Close()
		return nil, fmt.Errorf("create table: %w", err)
	}
	s := &Store{o: o, conn: conn, in: make(chan *pending, 4096), done: make(chan struct{})}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	go s.batcher()
	return s, nil
}

// Record queues evs for the next batch and waits until that batch is inserted. Every row is
// accepted: duplicates are removed when reading.
func (s *Store) Record(ctx context.Context, evs []baseline.Event) (int, error) {
	if len(evs) == 0 {
		return 0, nil
	}
	p := &pending{evs: evs, err: make(chan error, 1)}
	select {
	case s.in <- p:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-s.done:
		return 0, errors.New("store closed")
	}
	select {
	case err := <-p.err:
		if err != nil {
			return 0, err
		}
		return len(evs), nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// batcher collects pending rows for up to FlushInterval (or MaxBatch rows) and inserts them
// in one INSERT; one insert runs at a time, so batches grow under load.
func (s *Store) batcher() {
	defer close(s.done)
	var batch []*pending
	rows := 0
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	flush := func() {
		err := s.insert(batch)
		for _, p := range batch {
			p.err <- err
		}
		batch, rows = batch[:0], 0
	}
	for {
		select {
		case p := <-s.in:
			if len(batch) == 0 {
				timer.Reset(s.o.FlushInterval)
			}
			batch = append(batch, p)
			rows += len(p.evs)
			if rows >= s.o.MaxBatch {
				timer.Stop()
				flush()
			}
		case <-timer.C:
			flush()
		case <-s.ctx.Done():
			if len(batch) > 0 {
				flush()
			}
			return
		}
	}
}

func (s *Store) insert(batch []*pending) error {
	ctx, cancel := context.WithTimeout(s.ctx, 60*time.Second)
	defer cancel()
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.o.Table+" (ad_id, imp, kind, t) VALUES")
	if err != nil {
		return fmt.Errorf("prepare insert: %w", err)
	}
	for _, p := range batch {
		for _, e := range p.evs {
			if err := b.Append(e.AdID, e.ImpressionID, uint8(e.Kind), e.Time); err != nil {
				_ = b.Abort()
				return fmt.Errorf("append row: %w", err)
			}
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("insert: %w", err)
	}
	return nil
}

func quoteIDs(ids []string) (string, error) {
	var sb strings.Builder
	for i, id := range ids {
		if !event.ValidID(id) { // no quotes or backslashes can reach the SQL
			return "", fmt.Errorf("bad id %q", id)
		}
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteByte('\'')
		sb.WriteString(id)
		sb.WriteByte('\'')
	}
	return sb.String(), nil
}

// firstRows is the dedup subquery: each (ad, kind, imp) with the time of its first row,
// looking back DedupWindow before from.
func (s *Store) firstRows(where string, from, to time.Time) string {
	lo := from.Add(-s.o.DedupWindow).Unix()
	return "SELECT ad_id, kind, imp, min(t) AS ft FROM " + s.o.Table +
		" WHERE " + where + " t >= toDateTime(" + strconv.FormatInt(lo, 10) + ") AND t < toDateTime(" + strconv.FormatInt(to.Unix(), 10) + ")" +
		" GROUP BY ad_id, kind, imp"
}

// Series answers /metrics with one query over the raw rows.
func (s *Store) Series(ctx context.Context, ads []string, from, to time.Time, step time.Duration) (map[string]map[int64]baseline.Counts, error) {
	list, err := quoteIDs(ads)
	if err != nil {
		return nil, err
	}
	st := strconv.FormatInt(int64(step/time.Second), 10)
	q := "SELECT ad_id, kind, toUInt64(intDiv(toUInt32(ft), " + st + ") * " + st + ") AS b, count() FROM (" +
		s.firstRows("ad_id IN ("+list+") AND", from, to) + ") WHERE ft >= toDateTime(" + strconv.FormatInt(from.Unix(), 10) + ")" +
		" GROUP BY ad_id, kind, b"
	rows, err := s.conn.Query(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("series query: %w", err)
	}
	defer rows.Close()
	out := make(map[string]map[int64]baseline.Counts, len(ads))
	for rows.Next() {
		var (
			ad   string
			kind uint8
			b    uint64
			n    uint64
		)
		if err := rows.Scan(&ad, &kind, &b, &n); err != nil {
			return nil, fmt.Errorf("series scan: %w", err)
		}
		m := out[ad]
		if m == nil {
			m = make(map[int64]baseline.Counts)
			out[ad] = m
		}
		c := m[int64(b)]
		if kind < uint8(baseline.NumKinds) {
			c[kind] += int64(n)
		}
		m[int64(b)] = c
	}
	return out, rows.Err()
}

// Top answers /metrics/top with one query over the raw rows.
func (s *Store) Top(ctx context.Context, kind baseline.Kind, n int, from, to time.Time) ([]baseline.TopItem, error) {
	q := "SELECT ad_id, count() AS c FROM (" +
		s.firstRows("kind = "+strconv.Itoa(int(kind))+" AND", from, to) + ") WHERE ft >= toDateTime(" + strconv.FormatInt(from.Unix(), 10) + ")" +
		" GROUP BY ad_id ORDER BY c DESC, ad_id ASC LIMIT " + strconv.Itoa(n)
	rows, err := s.conn.Query(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("top query: %w", err)
	}
	defer rows.Close()
	var items []baseline.TopItem
	for rows.Next() {
		var (
			ad string
			c  uint64
		)
		if err := rows.Scan(&ad, &c); err != nil {
			return nil, fmt.Errorf("top scan: %w", err)
		}
		items = append(items, baseline.TopItem{AdID: ad, Value: int64(c)})
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return baseline.SortTop(items, n), nil
}

// Rows is the number of raw rows in the table.
func (s *Store) Rows(ctx context.Context) (uint64, error) {
	var n uint64
	err := s.conn.QueryRow(ctx, "SELECT count() FROM "+s.o.Table).Scan(&n)
	return n, err
}

// ServerMemoryBytes is what the server's memory tracker holds (system.metrics MemoryTracking).
func (s *Store) ServerMemoryBytes(ctx context.Context) (int64, error) {
	var v int64
	err := s.conn.QueryRow(ctx, "SELECT value FROM system.metrics WHERE metric = 'MemoryTracking'").Scan(&v)
	return v, err
}

// Drop removes the table.
func (s *Store) Drop(ctx context.Context) error {
	return s.conn.Exec(ctx, "DROP TABLE IF EXISTS "+s.o.Table)
}

// Close inserts what is pending and closes the connection.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		<-s.done
	})
	return s.conn.Close()
}
