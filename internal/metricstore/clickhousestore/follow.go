package clickhousestore

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/adpulse/adpulse/internal/metricstore"
)

// Following the commits: how query nodes keep their top-N index current
//
// A query node answers /metrics from the counts table, but /metrics/top from an in-memory
// index that must see every committed minute delta exactly once. Scanning counts for new rows
// would read whole day partitions (they are ordered by id), so every commit also writes its
// minute rows, reduced to the three counters the index ranks by, to the changes table,
// ordered by (consumer, seq). A follower keeps a Cursor (each consumer's last seen head seq)
// and reads, per consumer whose head moved, the changes rows with seq in (cursor, head] that
// are not of an aborted attempt: exactly the rows a query counts, commit by commit.
// ScanMinutesAt starts a follower: it reads the minute totals and the heads they were read
// at from one snapshot, so Follow from the returned cursor continues without gap or overlap.
// Changes rows are kept for ChangesRetention days (a follower further behind must rebuild).

// ChangesRetention is how many UTC days of changes rows are kept for followers.
const ChangesRetention = 2

// Cursor is a follower's position: each consumer's last head seq it has seen.
type Cursor map[string]uint64

func (s *Store) createChangesTable(ctx context.Context) error {
	return s.exec(ctx, `CREATE TABLE IF NOT EXISTS `+s.db+`.changes (
			consumer String, seq UInt64, token UInt64,
			level UInt8, id String, minute UInt32,
			impressions Int64, clicks Int64, spend_micros Int64,
			day UInt32 DEFAULT toUInt32(intDiv(toUInt32(now()), 86400))
		) ENGINE = MergeTree() PARTITION BY day ORDER BY (consumer, seq)`)
}

// insertChanges writes the minute rows of a commit attempt that the top-N index ranks by.
func (s *Store) insertChanges(ctx context.Context, consumer string, seq, token uint64, rows *countRows) error {
	var idx []int
	for i := range rows.level {
		if rows.res[i] == resMinute && (rows.impressions[i] != 0 || rows.clicks[i] != 0 || rows.spend[i] != 0) {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return nil
	}
	n := len(idx)
	consumers, seqs, tokens := make([]string, n), make([]uint64, n), make([]uint64, n)
	levels, ids, minutes := make([]uint8, n), make([]string, n), make([]uint32, n)
	impr, clicks, spend := make([]int64, n), make([]int64, n), make([]int64, n)
	for j, i := range idx {
		consumers[j], seqs[j], tokens[j] = consumer, seq, token
		levels[j], ids[j], minutes[j] = rows.level[i], rows.id[i], rows.bucket[i]
		impr[j], clicks[j], spend[j] = rows.impressions[i], rows.clicks[i], rows.spend[i]
	}
	ctx, done := s.batchCall(ctx)
	defer done()
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.db+".changes (consumer, seq, token, level, id, minute, impressions, clicks, spend_micros)")
	if err != nil {
		return err
	}
	for i, col := range []any{consumers, seqs, tokens, levels, ids, minutes, impr, clicks, spend} {
		if err := b.Column(i).Append(col); err != nil {
			_ = b.Abort()
			return fmt.Errorf("changes column %d: %w", i, err)
		}
	}
	return b.Send()
}

// headFilter is the SQL condition "a row of a commit at or below the heads and above from".
func headFilter(from, heads Cursor) (string, bool) {
	consumers := make([]string, 0, len(heads))
	for c, h := range heads {
		if h > from[c] {
			consumers = append(consumers, c)
		}
	}
	if len(consumers) == 0 {
		return "", false
	}
	slices.Sort(consumers)
	var sb strings.Builder
	sb.WriteByte('(')
	for i, c := range consumers {
		if i > 0 {
			sb.WriteString(" OR ")
		}
		sb.WriteString("(consumer = " + quote(c) + " AND seq > " + strconv.FormatUint(from[c], 10) + " AND seq <= " + strconv.FormatUint(heads[c], 10) + ")")
	}
	sb.WriteString(")")
	return sb.String(), true
}

// ScanMinutes calls fn with the totals of every minute bucket in [from, to) (minutes since the
// epoch), for the top-N index's rebuild (topn.MinuteScanner).
func (s *Store) ScanMinutes(ctx context.Context, from, to int64, fn func(d *metricstore.Delta) error) error {
	_, err := s.ScanMinutesAt(ctx, from, to, fn)
	return err
}

// ScanMinutesAt is ScanMinutes that also returns the cursor of the snapshot it read, to Follow
// from.
func (s *Store) ScanMinutesAt(ctx context.Context, from, to int64, fn func(d *metricstore.Delta) error) (Cursor, error) {
	s.life.RLock()
	defer s.life.RUnlock()
	if s.closed {
		return nil, metricstore.ErrClosed
	}
	heads, _, err := s.readHeads(ctx)
	if err != nil {
		return nil, err
	}
	cur := Cursor(heads)
	cond, ok := headFilter(nil, cur)
	if !ok {
		return cur, nil
	}
	from, to = max(from, 0), min(to, maxMinute+1)
	q := "SELECT level, id, bucket, sum(impressions), sum(clicks), sum(spend_micros) FROM " + s.db + ".counts WHERE res = 0 AND bucket >= " +
		strconv.FormatInt(from, 10) + " AND bucket < " + strconv.FormatInt(to, 10) + " AND " + cond +
		" AND (consumer, seq, token) NOT IN (SELECT consumer, seq, token FROM " + s.db + ".aborted) GROUP BY level, id, bucket"
	// A scan reads a day or more of minute rows: it gets a longer deadline than one call.
	sctx, cancel := context.WithTimeout(ctx, 10*s.opts.Timeout)
	defer cancel()
	s.calls.Add(1)
	if err := s.scanDeltas(sctx, q, fn); err != nil {
		return nil, fmt.Errorf("scan minutes: %w", err)
	}
	return cur, nil
}

// Follow calls fn with every minute delta committed after cur, commit by commit in each
// consumer's seq order, and returns the new cursor. The deltas are those of the top-N index:
// impressions, clicks and spend.
func (s *Store) Follow(ctx context.Context, cur Cursor, fn func(d *metricstore.Delta) error) (Cursor, error) {
	s.life.RLock()
	defer s.life.RUnlock()
	if s.closed {
		return cur, metricstore.ErrClosed
	}
	heads, _, err := s.readHeads(ctx)
	if err != nil {
		return cur, err
	}
	cond, ok := headFilter(cur, heads)
	if !ok {
		return cur, nil
	}
	q := "SELECT level, id, minute, impressions, clicks, spend_micros FROM " + s.db + ".changes WHERE " + cond +
		" AND (consumer, seq, token) NOT IN (SELECT consumer, seq, token FROM " + s.db + ".aborted) ORDER BY consumer, seq"
	cctx, cancel := s.call(ctx)
	defer cancel()
	if err := s.scanDeltas(cctx, q, fn); err != nil {
		return cur, fmt.Errorf("follow commits: %w", err)
	}
	next := make(Cursor, len(heads))
	for c, h := range heads {
		next[c] = max(h, cur[c])
	}
	return next, nil
}

// scanDeltas runs q, whose rows are (level, id, minute, impressions, clicks, spend), and
// calls fn with each as a delta.
func (s *Store) scanDeltas(ctx context.Context, q string, fn func(d *metricstore.Delta) error) error {
	rows, err := s.query(ctx, q)
	if err != nil {
		return err
	}
	defer rows.Close()
	var (
		d      metricstore.Delta
		level  uint8
		minute uint32
		n      int64
	)
	for rows.Next() {
		if err := rows.Scan(&level, &d.ID, &minute, &d.Impressions, &d.Clicks, &d.SpendMicros); err != nil {
			return err
		}
		n++
		d.Level, d.Minute = metricstore.Level(level), int64(minute)
		if err := fn(&d); err != nil {
			return err
		}
	}
	s.rowsRead.Add(n)
	return rows.Err()
}

// expireChanges drops changes partitions older than ChangesRetention days.
func (s *Store) expireChanges(ctx context.Context) error {
	cutoff := s.opts.Now().Unix()/86400 - ChangesRetention
	cctx, cancel := s.call(ctx)
	defer cancel()
	rows, err := s.query(cctx, "SELECT DISTINCT partition FROM system.parts WHERE database = "+quote(s.db)+" AND table = 'changes' AND active")
	if err != nil {
		return fmt.Errorf("expire changes: %w", err)
	}
	var drop []string
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			rows.Close()
			return fmt.Errorf("expire changes: %w", err)
		}
		if d, err := strconv.ParseInt(strings.Trim(p, "'"), 10, 64); err == nil && d < cutoff {
			drop = append(drop, strconv.FormatInt(d, 10))
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("expire changes: %w", err)
	}
	for _, p := range drop {
		if err := s.exec(ctx, "ALTER TABLE "+s.db+".changes DROP PARTITION "+p); err != nil {
			return fmt.Errorf("expire changes: drop partition %s: %w", p, err)
		}
	}
	return nil
}

// Ping checks that the server answers, for readiness probes.
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := s.call(ctx)
	defer cancel()
	return s.conn.Ping(ctx)
}
