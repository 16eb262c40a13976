// Package clickhousestore is the scale-out metric store: metricstore.Store on a ClickHouse
// server shared by every process of a deployment, over the native protocol (clickhouse-go/v2).
// It is written for the oldest server it runs on, Debian's clickhouse-server 18.16 (see
// "Server compatibility" below).
//
// # Tables
//
// All in one database (Options.Database, default "adpulse"), created on first start:
//
//   - counts: one row per (level, id, resolution, bucket) and commit attempt, tagged with
//     (consumer, seq, token). Every minute delta is written three times by the store, to its
//     1m, 1h and 1d bucket, in the same INSERT. Ordered by (level, id, res, bucket) so a query
//     reads a few short key ranges; partitioned by day for 1m rows (retention drops whole
//     partitions) and by year for 1h and 1d rows together. Plain MergeTree: rows are never replaced,
//     only counted or ignored (below).
//   - heads: ReplacingMergeTree(seq) ordered by consumer: each consumer's latest commit (seq,
//     offsets after it, FinalBefore). Read with max/argMax over seq, never FINAL.
//   - changes: the minute rows of each commit again, reduced to impressions, clicks and
//     spend and ordered by (consumer, seq), for followers (query nodes' top-N index; see
//     follow.go). Partitioned by the server's UTC day, kept ChangesRetention days.
//   - intents, aborted: (consumer, seq, token) markers of commit attempts, ordered by
//     (consumer, seq). An aborted row exists only for an attempt that failed, so queries
//     read that table whole. Intents grow by one row per commit and are not pruned yet
//     (tens of bytes each once compressed); only the intents at a consumer's next seq are
//     ever read.
//
// # Commits: atomic, idempotent, fenced, without transactions
//
// ClickHouse has no transaction spanning two INSERTs, and a failed INSERT may have been
// written or not. So nothing a commit writes counts until its head row exists, and that row
// is written last. Apply, for consumer C:
//
//  1. reads C's head from the server (seq S, offsets): the fence compares the commit's
//     ranges with these offsets (ErrConflict), so a replayed commit, or a zombie process
//     replaying a range another process already committed, is refused and writes nothing;
//  2. draws a random token T and inserts the intent (C, S+1, T);
//  3. reads the other intents at (C, S+1) that are not aborted: one younger than the lease
//     belongs to a live competing writer, so this attempt aborts itself, waits and starts
//     again from 1; older ones are attempts that died (their writer never writes a head after
//     half the lease, see 5), and are marked aborted;
//  4. inserts the counts rows tagged (C, S+1, T);
//  5. gives up (marking itself aborted) if steps 2-4 took more than half the lease;
//  6. inserts the head row (C, S+1, T, new offsets, FinalBefore): the commit point. If that
//     INSERT meets a connection closed under it, the same row is sent once more on another
//     connection, still within half the lease: two equal head rows are one commit.
//
// A reader counts a row only if its seq is at most its consumer's head seq and its (consumer,
// seq, token) is not aborted. Hence:
//   - Atomic: before step 6 a reader sees none of the commit (seq above the head); after it,
//     all of it (every counts row was acknowledged before the head was written). A crash
//     anywhere leaves either a head row or only rows that are never counted: the next
//     attempt at the same seq finds the dead intent in step 3 and aborts it, so leftovers of
//     a crashed attempt never add to a retry, even when the retry's batch differs (the
//     aggregator's batch boundaries depend on timing, so "same start offset, same rows" is not
//     something the store may assume).
//   - Idempotent: a commit attempt is never re-sent with the same token; a retry is a new
//     attempt at the same position, and only the one whose head is written counts.
//   - One snapshot per query: the heads are read first and bound every row by seq, so rows
//     of a commit that lands while the query runs are ignored as a whole.
//
// Fencing across processes: ClickHouse offers reads and appends only (no compare-and-set),
// and with those two writers cannot agree on who goes first without a timing assumption.
// Steps 2-3 are a write-then-read mutual exclusion: of two attempts at the same seq at least
// one sees the other's intent, and a writer that sees a live one backs off, so two writers
// never both write a head at one seq. Telling a dead attempt from a slow one takes the lease
// (Options.Lease, default 30s, measured on the server's clock for intents and on the
// writer's for step 5): the protocol is exact as long as no writer stalls for more than half
// the lease between step 5 and its head row reaching the server. Within one process Applies
// are also serialised by a mutex, and the contract's fence holds exactly. The cost of the
// lease: after a crash mid-commit, the restarted writer's first Apply waits until the dead
// intent is a lease old.
//
// # Server compatibility (ClickHouse 18.16, protocol revision 54412)
//
// clickhouse-go/v2's native protocol works with 18.16 for DDL, SELECT and batch INSERT
// (PrepareBatch with an explicit column list). An INSERT with inline VALUES sent through Exec
// hangs (the driver waits for a reply the server does not send before it gets data blocks),
// so every INSERT here is a batch. The store avoids what 18.16 lacks or has only as
// experimental: LowCardinality, DateTime64 (buckets are UInt32 minutes, FinalBefore Int64
// microseconds), Map (reasons and interactions are parallel arrays, summed in Go after
// groupArrayArray, since 18.16's sumMap refuses String keys), TTL (retention drops
// partitions), query parameters (values are quoted by the store), and time zone functions
// (local-day buckets are computed in Go with metricstore.Buckets and tiled with 1d, 1h and 1m
// rows, as pebblestore does).
//
// Lock order: Store.life before a consumer's lock (Store.locks).
package clickhousestore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/adpulse/adpulse/internal/metricstore"
)

// DefaultDatabase is the database the store uses when Options.Database is empty.
const DefaultDatabase = "adpulse"

// Options configure a Store. Addr is required.
type Options struct {
	Addr     string // native protocol host:port, e.g. 127.0.0.1:9000
	Database string // default DefaultDatabase; created if missing
	Username string // default: the server's default user
	Password string
	// Timeout bounds every call to the server (default 10s).
	Timeout time.Duration
	// MinuteRetention is how long 1m buckets are kept (default 14 days; negative: forever).
	// 1h and 1d buckets are kept forever.
	MinuteRetention time.Duration
	// Lease is how old an unfinished commit attempt must be before another writer may
	// declare it dead (default 30s; at least 2s, since the server clock counts seconds). A
	// writer gives up on its own attempt after half of it.
	Lease time.Duration
	// ExpireInterval is how often Run drops expired minute partitions (default 10 minutes).
	ExpireInterval time.Duration
	// Now is the clock for retention (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
}

func (o *Options) setDefaults() {
	if o.Database == "" {
		o.Database = DefaultDatabase
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.MinuteRetention == 0 {
		o.MinuteRetention = 14 * 24 * time.Hour
	}
	if o.Lease <= 0 {
		o.Lease = 30 * time.Second
	}
	o.Lease = max(o.Lease, 2*time.Second)
	if o.ExpireInterval <= 0 {
		o.ExpireInterval = 10 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Stats are the store's counters since Open.
type Stats struct {
	Applies        int64
	Conflicts      int64 // Applies refused with ErrConflict
	DeltasApplied  int64
	RowsWritten    int64 // counts rows inserted (three resolutions per delta, fewer when summed)
	ApplyNanos     int64 // total time in successful Applies
	LastApplyNanos int64
	// AbortedAttempts counts attempts marked aborted: this store's own failed or
	// backed-off attempts, and dead ones of other writers it cleared.
	AbortedAttempts int64
	LeaseWaits      int64 // times an Apply waited for another writer's attempt
	Queries         int64
	QueryNanos      int64 // total time in successful Queries
	LastQueryNanos  int64
	RowsRead        int64 // grouped rows returned by the server to queries
	ServerCalls     int64 // queries and inserts sent to the server
	ExpiredParts    int64 // minute partitions dropped by retention
}

// Store is the ClickHouse metric store.
type Store struct {
	conn      driver.Conn
	opts      Options
	db        string // database name, safe to splice into SQL
	minuteRet int64  // minutes; 0 = forever

	// Lock order: life before a consumer's lock.
	life   sync.RWMutex // held shared by every call, exclusively by Close
	closed bool         // guarded by life
	locks  sync.Map     // consumer name -> *sync.Mutex: serialises Apply per consumer

	applies, conflicts, deltas, rowsWritten, applyNanos, lastApply atomic.Int64
	aborted, waits, queries, queryNanos, lastQuery, rowsRead       atomic.Int64
	calls, expired                                                 atomic.Int64

	// failAfter, when set by a test, makes Apply stop after the given step (1-5) as if the
	// process had died there.
	failAfter int
	// beforeHead, when set by a test, runs just before the head row is written.
	beforeHead func()
}

var _ metricstore.Store = (*Store)(nil)

// errCrash is what an Apply stopped by failAfter returns.
var errCrash = errors.New("clickhousestore: simulated crash")

// rollupPartitions is added to the year of 1h and 1d rows to make their partition number,
// above every day number of 1m rows (until the year 4700).
const rollupPartitions = 1_000_000

// Open connects to the server, creates the database and tables if missing, and returns the
// store.
func Open(ctx context.Context, opts Options) (*Store, error) {
	opts.setDefaults()
	if opts.Addr == "" {
		return nil, errors.New("clickhouse metric store: no address")
	}
	if !validName(opts.Database) {
		return nil, fmt.Errorf("clickhouse metric store: database name %q: letters, digits and _ only", opts.Database)
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:         []string{opts.Addr},
		Auth:         clickhouse.Auth{Username: opts.Username, Password: opts.Password},
		DialTimeout:  opts.Timeout,
		ReadTimeout:  opts.Timeout,
		MaxOpenConns: 8,
		MaxIdleConns: 8,
	})
	if err != nil {
		return nil, fmt.Errorf("clickhouse metric store %s: %w", opts.Addr, err)
	}
	s := &Store{conn: conn, opts: opts, db: opts.Database}
	if opts.MinuteRetention > 0 {
		s.minuteRet = int64(opts.MinuteRetention / time.Minute)
	}
	if err := s.createTables(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

func validName(s string) bool {
	if s == "" || len(s) > 64 || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

func (s *Store) createTables(ctx context.Context) error {
	ddl := []string{
		"CREATE DATABASE IF NOT EXISTS " + s.db,
		// res: 0 = 1m, 1 = 1h, 2 = 1d; bucket: start in minutes since the Unix epoch.
		// Partitions: a UTC day of 1m rows, so retention drops whole partitions; a year of 1h
		// and 1d rows together, so a commit of recent minutes makes two parts, not three
		// (a part costs a few tens of files, which is most of a small commit's time).
		`CREATE TABLE IF NOT EXISTS ` + s.db + `.counts (
			level UInt8, id String, res UInt8, bucket UInt32,
			consumer String, seq UInt64, token UInt64,
			impressions Int64, clicks Int64, invalid_clicks Int64, spend_micros Int64,
			reasons Array(UInt8), reason_counts Array(Int64),
			interactions Array(String), interaction_counts Array(Int64),
			conversions Int64, conversion_value_micros Int64, view_conversions Int64, view_conversion_value_micros Int64
		) ENGINE = MergeTree()
		PARTITION BY if(res = 0, intDiv(bucket, 1440), ` + strconv.Itoa(rollupPartitions) + ` + intDiv(bucket, 525600))
		ORDER BY (level, id, res, bucket, consumer, seq, token)`,
		// version = seq << 32 | epoch: of two heads at one seq (a fenced writer's and its
		// successor's), the higher epoch wins, in reads and in merges alike.
		`CREATE TABLE IF NOT EXISTS ` + s.db + `.heads (
			consumer String, seq UInt64, token UInt64,
			partitions Array(Int32), offsets Array(Int64), final_before Int64,
			epoch UInt64, version UInt64,
			at DateTime DEFAULT now()
		) ENGINE = ReplacingMergeTree(version) ORDER BY consumer`,
		`CREATE TABLE IF NOT EXISTS ` + s.db + `.intents (
			consumer String, seq UInt64, token UInt64, epoch UInt64, at DateTime DEFAULT now()
		) ENGINE = MergeTree() ORDER BY (consumer, seq)`,
		`CREATE TABLE IF NOT EXISTS ` + s.db + `.aborted (
			consumer String, seq UInt64, token UInt64, at DateTime DEFAULT now()
		) ENGINE = MergeTree() ORDER BY (consumer, seq)`,
		fmt.Sprintf(marksDDL, s.db),
	}
	for _, q := range ddl {
		if err := s.exec(ctx, q); err != nil {
			return fmt.Errorf("clickhouse metric store: create tables: %w", err)
		}
	}
	if err := s.createChangesTable(ctx); err != nil {
		return fmt.Errorf("clickhouse metric store: create tables: %w", err)
	}
	return s.addConversionColumns(ctx)
}

// conversionColumns came after the first counts tables; older tables get them (as 0).
var conversionColumns = []string{"conversions", "conversion_value_micros", "view_conversions", "view_conversion_value_micros"}

// addConversionColumns adds the conversion columns a counts table made before them lacks.
// ClickHouse 18 has no ADD COLUMN IF NOT EXISTS, so it asks system.columns first; a process
// that loses a race to add one finds it there on the second look.
func (s *Store) addConversionColumns(ctx context.Context) error {
	for _, col := range conversionColumns {
		for attempt := 0; ; attempt++ {
			var n uint64
			qctx, cancel := s.call(ctx)
			err := s.conn.QueryRow(qctx, "SELECT count() FROM system.columns WHERE database = "+quote(s.db)+" AND table = 'counts' AND name = "+quote(col)).Scan(&n)
			cancel()
			if err != nil {
				return fmt.Errorf("clickhouse metric store: look for column %s: %w", col, err)
			}
			if n > 0 {
				break
			}
			err = s.exec(ctx, "ALTER TABLE "+s.db+".counts ADD COLUMN "+col+" Int64 DEFAULT 0")
			if err == nil {
				break
			}
			if attempt > 0 {
				return fmt.Errorf("clickhouse metric store: add column %s: %w", col, err)
			}
		}
	}
	return nil
}

// call bounds one server call by the Timeout.
func (s *Store) call(ctx context.Context) (context.Context, context.CancelFunc) {
	s.calls.Add(1)
	return context.WithTimeout(ctx, s.opts.Timeout)
}

// batchCall bounds one batch INSERT by the Timeout, like call, but does not cancel its
// context when the INSERT returns: done stops passing ctx's cancellation on and leaves the
// context to expire at its deadline. The driver's Batch.Send watches its context from a
// goroutine that closes the TCP connection when the context is done, and it may look only
// after Send has put the connection back in the pool. A context cancelled as the call
// returns (defer cancel) then wins that race now and again, and the next call to take the
// connection from the pool meets "use of closed network connection"; a deadline a Timeout
// away leaves that goroutine the whole Timeout to see that Send is over.
func (s *Store) batchCall(ctx context.Context) (context.Context, func()) {
	s.calls.Add(1)
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.Timeout)
	stop := context.AfterFunc(ctx, cancel) // the caller's cancellation still interrupts the INSERT
	return bctx, func() {
		stop()
		time.AfterFunc(s.opts.Timeout, cancel)
	}
}

func (s *Store) exec(ctx context.Context, q string) error {
	ctx, cancel := s.call(ctx)
	defer cancel()
	return s.conn.Exec(ctx, q)
}

// Run drops expired minute partitions every ExpireInterval until ctx is done. It returns nil
// when ctx is done and the error of a failed expiry otherwise.
func (s *Store) Run(ctx context.Context) error {
	t := time.NewTicker(s.opts.ExpireInterval)
	defer t.Stop()
	for {
		if err := s.Expire(ctx); err != nil {
			if ctx.Err() != nil || errors.Is(err, metricstore.ErrClosed) {
				return nil
			}
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Expire drops the 1m partitions (UTC days) that end at or before now minus the minute
// retention. Queries refuse ranges past retention whether or not Expire has run, so results
// do not depend on when it runs.
func (s *Store) Expire(ctx context.Context) error {
	s.life.RLock()
	defer s.life.RUnlock()
	if s.closed {
		return metricstore.ErrClosed
	}
	if err := s.expireChanges(ctx); err != nil {
		return err
	}
	if s.minuteRet == 0 {
		return nil
	}
	cutoffDay := (s.opts.Now().Unix()/60 - s.minuteRet) / 1440 // days below it are wholly expired
	cctx, cancel := s.call(ctx)
	defer cancel()
	rows, err := s.query(cctx, "SELECT DISTINCT partition FROM system.parts WHERE database = "+quote(s.db)+" AND table = 'counts' AND active")
	if err != nil {
		return fmt.Errorf("expire: list partitions: %w", err)
	}
	var drop []string
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			rows.Close()
			return fmt.Errorf("expire: list partitions: %w", err)
		}
		// A 1m partition is its UTC day number; rollup partitions start at rollupPartitions.
		if d, err := strconv.ParseInt(strings.Trim(p, "'"), 10, 64); err == nil && d < rollupPartitions && d < cutoffDay {
			drop = append(drop, strconv.FormatInt(d, 10))
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("expire: list partitions: %w", err)
	}
	for _, p := range drop {
		if err := s.exec(ctx, "ALTER TABLE "+s.db+".counts DROP PARTITION "+p); err != nil {
			return fmt.Errorf("expire: drop minute partition %s: %w", p, err)
		}
		s.expired.Add(1)
		s.opts.Logger.Debug("expired metric minute buckets", "partition", p)
	}
	return nil
}

// Stats returns the store's counters.
func (s *Store) Stats() Stats {
	return Stats{
		Applies:         s.applies.Load(),
		Conflicts:       s.conflicts.Load(),
		DeltasApplied:   s.deltas.Load(),
		RowsWritten:     s.rowsWritten.Load(),
		ApplyNanos:      s.applyNanos.Load(),
		LastApplyNanos:  s.lastApply.Load(),
		AbortedAttempts: s.aborted.Load(),
		LeaseWaits:      s.waits.Load(),
		Queries:         s.queries.Load(),
		QueryNanos:      s.queryNanos.Load(),
		LastQueryNanos:  s.lastQuery.Load(),
		RowsRead:        s.rowsRead.Load(),
		ServerCalls:     s.calls.Load(),
		ExpiredParts:    s.expired.Load(),
	}
}

// Close closes the connections. Commits that returned are on the server.
func (s *Store) Close() error {
	s.life.Lock()
	defer s.life.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if err := s.conn.Close(); err != nil {
		return fmt.Errorf("close clickhouse metric store: %w", err)
	}
	return nil
}

// quote returns s as a ClickHouse string literal. Every byte outside printable ASCII, and the
// quote and backslash, is escaped as \xHH, so any byte string round-trips.
func quote(s string) string {
	const hex = "0123456789abcdef"
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('\'')
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '\'' || c == '\\' {
			b.WriteString(`\x`)
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
			continue
		}
		b.WriteByte(c)
	}
	b.WriteByte('\'')
	return b.String()
}

// query runs a read, once more on another connection if the first failed on a connection
// that was already closed (the driver can hand out a pooled connection that the server or a
// late context watchdog closed, see batchCall; seen as "use of closed network connection").
// A read is safe to repeat.
func (s *Store) query(ctx context.Context, q string, args ...any) (driver.Rows, error) {
	rows, err := s.conn.Query(ctx, q, args...)
	if err != nil && ctx.Err() == nil && brokenConn(err) {
		rows, err = s.conn.Query(ctx, q, args...)
	}
	return rows, err
}

// brokenConn reports whether err is a connection that was closed under the query.
func brokenConn(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || strings.Contains(err.Error(), "use of closed network connection")
}
