// Package pebblestore is the embedded metric store: metricstore.Store on a Pebble database in
// the data directory.
//
// Every minute delta is written three times, to its 1m, 1h and 1d bucket, as Pebble merge
// operands that the merger sums, so a write never reads and a query touches few keys: a
// range is covered by whole days, then whole hours, then minutes at the edges (plan in
// query.go). Buckets live in rows, one key per id and short time partition (keys.go,
// value.go). Minute buckets expire after MinuteRetention and hour buckets after
// HourRetention (whole partitions at a time, by Run); day buckets are kept forever. A delta
// for a bucket already past its retention is written only to the coarser buckets still
// kept, so an old correction never recreates an expired row.
//
// Invariants:
//   - One Apply is one Pebble batch holding all merge operands and the consumer's checkpoint,
//     committed with Sync: after a crash either all of it is there or none of it is.
//   - Applies are serialised by Store.mu, which also guards the cached checkpoints, so the
//     ErrConflict fence compares against exactly what was last committed.
//   - The 1h and 1d buckets always equal the sum of the 1m buckets they cover (all three are
//     in the same batch), for as long as the minute buckets are retained.
//   - Query reads from one iterator, so all series of a result are one consistent snapshot,
//     and the consumer offsets it reports (Query.OffsetsOf) are exactly that snapshot's.
//   - Lock order: Store.life before Store.mu.
//
// Restart cost: opening the store replays the write-ahead log written since the last memtable
// flush. The memtables are large (128 MiB, for write throughput), so left to itself Pebble
// would replay a memtable or more (128 MiB each) after a kill -9, growing with how busy the
// store was. Run therefore checks every FlushInterval and flushes once MaxUnflushedWAL bytes
// are waiting: the replay is bounded by about MaxUnflushedWAL plus one interval of writes,
// whatever the memtable size.
package pebblestore

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/pebbleutil"
	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/vfs"
)

// Options configure a Store. The zero value is usable.
type Options struct {
	// MinuteRetention is how long 1m buckets are kept (default 14 days; negative: forever).
	MinuteRetention time.Duration
	// HourRetention is how long 1h buckets are kept (default 400 days; negative: forever).
	HourRetention time.Duration
	// ExpireInterval is how often Run drops expired buckets (default 10 minutes).
	ExpireInterval time.Duration
	// FlushInterval is how often Run checks the write-ahead log a restart would replay
	// (default 5 s); MaxUnflushedWAL is the size from which it then flushes the memtables
	// (default 8 MiB). Together they bound the replay: see the package comment.
	FlushInterval   time.Duration
	MaxUnflushedWAL uint64
	// CacheBytes is the size of the block cache (default 128 MiB): what it holds of data and
	// index blocks with two full-size memtables, the usual state while flushes keep up.
	CacheBytes int64
	// MemTableBytes is the size of a memtable (default 128 MiB). Large memtables absorb the
	// three operands per delta of a busy second before a flush, and let a big commit stay an
	// ordinary batch.
	MemTableBytes int64
	// FS is the file system; nil means the operating system's. Crash tests use
	// vfs.NewStrictMem, which drops whatever was not synced.
	FS vfs.FS
	// Now is the clock for retention (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
}

func (o *Options) setDefaults() {
	if o.MinuteRetention == 0 {
		o.MinuteRetention = 14 * 24 * time.Hour
	}
	if o.HourRetention == 0 {
		o.HourRetention = 400 * 24 * time.Hour
	}
	if o.ExpireInterval <= 0 {
		o.ExpireInterval = 10 * time.Minute
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = 5 * time.Second
	}
	if o.MaxUnflushedWAL == 0 {
		o.MaxUnflushedWAL = 8 << 20
	}
	if o.CacheBytes <= 0 {
		o.CacheBytes = 128 << 20
	}
	if o.MemTableBytes <= 0 {
		o.MemTableBytes = 128 << 20
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// memTablesReserved is how many memtables' reservations the block cache is sized for: the
// one being written and the one Pebble keeps to reuse (or the one being flushed), the steady
// state while flushes keep up. Memtables queued behind a slow flush reserve more, and squeeze
// the cache until they are written.
const memTablesReserved = 2

// Stats are the store's counters since Open.
type Stats struct {
	Applies          int64
	Conflicts        int64 // Applies refused with ErrConflict
	DeltasApplied    int64
	ApplyNanos       int64 // total time spent in Apply, including the sync
	LastApplyNanos   int64
	Queries          int64
	ExpiredRanges    int64 // partition ranges dropped by retention
	DiskBytes        uint64
	MemtableBytes    uint64
	UnflushedWAL     uint64 // write-ahead log bytes an open after a crash would replay
	Flushes          int64  // memtable flushes started by Run to bound UnflushedWAL
	BlockCacheHits   int64
	BlockCacheMisses int64
	Compactions      int64
	CompactionTime   time.Duration
	FlushedBytes     uint64 // memtables written to sstables
	CompactedBytes   uint64 // sstables rewritten by compactions: write amplification is this over FlushedBytes
	ReadAmp          int    // sstables a point read may consult
	// Where Apply's time goes: building the batch, Pebble's commit (write stalls
	// included, when flushes or compactions fall behind), and the WAL sync.
	BuildNanos, CommitNanos, StallNanos, SyncNanos int64
}

// Store is the Pebble metric store.
type Store struct {
	db        *pebble.DB
	opts      Options
	retention [len(resolutions)]int64 // minutes; 0 = forever

	// Lock order: life before mu.
	life        sync.RWMutex // held shared by queries, exclusively by Close: db stays open under it
	mu          sync.Mutex   // serialises Apply; guards checkpoints, expiredPart, closed
	checkpoints map[string]*checkpoint
	reconciled  map[int64]bool          // UTC hours marked by a reconciliation (metricstore/reconciled.go)
	expiredPart [len(resolutions)]int64 // partitions below this were dropped by this process
	closed      bool

	applies, conflicts, deltas, applyNanos, lastApply, queries, expired atomic.Int64
	buildNanos, commitNanos, stallNanos, syncNanos                      atomic.Int64
	flushes                                                             atomic.Int64
}

type checkpoint struct {
	offsets     map[int32]int64
	finalBefore int64 // Unix micros; 0 = not declared
}

var _ metricstore.Store = (*Store)(nil)

// Open opens or creates the store in dir.
func Open(dir string, opts Options) (*Store, error) {
	opts.setDefaults()
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	if err := pebbleutil.CreateDir(opts.FS, dir, "metric store"); err != nil {
		return nil, err
	}
	// Pebble reserves each memtable's size in the block cache, the memtable it keeps for
	// reuse after a flush included: a cache of CacheBytes alone holds no block at all once
	// the memtables reach full size, and every query then reads and decompresses its index
	// and data blocks from the files. The cache gets room for the two memtables of a store
	// whose flushes keep up on top; while the memtables are smaller, blocks may use that room
	// too.
	cache := pebble.NewCache(opts.CacheBytes + memTablesReserved*opts.MemTableBytes)
	defer cache.Unref()
	po := &pebble.Options{
		Cache:                       cache,
		FS:                          opts.FS,
		Merger:                      merger,
		FormatMajorVersion:          pebble.FormatNewest,
		MemTableSize:                uint64(opts.MemTableBytes),
		MemTableStopWritesThreshold: 4,
		L0CompactionThreshold:       4,
		L0StopWritesThreshold:       24,
		LBaseMaxBytes:               256 << 20,
		MaxConcurrentCompactions:    func() int { return 2 },
		Logger:                      pebbleutil.Logger(opts.Logger, "metricstore-pebble"),
	}
	for i := range po.Levels {
		// A query reads one id's keys of one partition (at most 60) per seek: small blocks
		// mean less to decompress on a cache miss.
		po.Levels[i].TargetFileSize = 8 << 20 << min(i, 3)
	}
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, fmt.Errorf("open pebble metric store in %q: %w", dir, err)
	}
	s := &Store{db: db, opts: opts, checkpoints: make(map[string]*checkpoint), reconciled: make(map[int64]bool)}
	for i, d := range [...]time.Duration{opts.MinuteRetention, opts.HourRetention, -1} {
		if d > 0 {
			s.retention[i] = int64(d / time.Minute)
		}
	}
	if err := s.loadCheckpoints(); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.loadReconciled(); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) loadReconciled() error {
	lower := []byte{prefixMeta, prefixReconciled}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: []byte{prefixMeta, prefixReconciled + 1}})
	if err != nil {
		return fmt.Errorf("read reconciled marks: %w", err)
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		if len(k) != len(lower)+8 {
			return fmt.Errorf("read reconciled marks: malformed key %x", k)
		}
		s.reconciled[int64(binary.BigEndian.Uint64(k[len(lower):]))] = true
	}
	return it.Error()
}

// marksIn copies the reconciled marks of hours [lo, hi]. Callers hold mu.
func (s *Store) marksIn(lo, hi int64) map[int64]bool {
	out := make(map[int64]bool)
	if int64(len(s.reconciled)) > hi-lo+1 {
		for h := lo; h <= hi; h++ {
			if s.reconciled[h] {
				out[h] = true
			}
		}
		return out
	}
	for h := range s.reconciled {
		if h >= lo && h <= hi {
			out[h] = true
		}
	}
	return out
}

func (s *Store) loadCheckpoints() error {
	prefix := []byte{prefixMeta, prefixCheckpoint}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: []byte{prefixMeta, prefixCheckpoint + 1}})
	if err != nil {
		return fmt.Errorf("read checkpoints: %w", err)
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return fmt.Errorf("read checkpoint %q: %w", it.Key()[2:], err)
		}
		offsets, fb, err := decodeCheckpoint(v)
		if err != nil {
			return fmt.Errorf("read checkpoint %q: %w", it.Key()[2:], err)
		}
		s.checkpoints[string(it.Key()[len(prefix):])] = &checkpoint{offsets: offsets, finalBefore: fb}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("read checkpoints: %w", err)
	}
	return nil
}

// Apply implements metricstore.Store.
func (s *Store) Apply(ctx context.Context, c *metricstore.Commit) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if c.Consumer == "" || len(c.Consumer) > 255 {
		return fmt.Errorf("%w: consumer name %q", metricstore.ErrInvalidDelta, c.Consumer)
	}
	start := time.Now()
	// Build the batch before taking the lock: it is most of the work and needs no state.
	batch, err := s.buildBatch(c.Deltas)
	if err != nil {
		return err
	}
	defer batch.Close()
	s.buildNanos.Add(time.Since(start).Nanoseconds())

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return metricstore.ErrClosed
	}
	old := s.checkpoints[c.Consumer]
	next := &checkpoint{offsets: make(map[int32]int64)}
	if old != nil {
		for p, o := range old.offsets {
			next.offsets[p] = o
		}
		next.finalBefore = old.finalBefore
	}
	for _, r := range c.Ranges {
		if r.To < r.From {
			return fmt.Errorf("%w: partition %d range [%d, %d)", metricstore.ErrInvalidDelta, r.Partition, r.From, r.To)
		}
		if o, ok := next.offsets[r.Partition]; ok && o != r.From {
			s.conflicts.Add(1)
			return fmt.Errorf("%w: %s partition %d at offset %d, commit starts at %d", metricstore.ErrConflict, c.Consumer, r.Partition, o, r.From)
		}
		next.offsets[r.Partition] = r.To
	}
	if fb := c.FinalBefore.UnixMicro(); !c.FinalBefore.IsZero() && fb > next.finalBefore {
		next.finalBefore = fb
	}
	if err := batch.Set(checkpointKey(c.Consumer), appendCheckpoint(nil, next.offsets, next.finalBefore), nil); err != nil {
		return fmt.Errorf("batch set checkpoint: %w", err)
	}
	var unmark []int64
	if len(s.reconciled) > 0 { // most stores, most of the time: nothing to look up per delta
		for _, h := range metricstore.UnmarkedHours(c) {
			if s.reconciled[h] {
				unmark = append(unmark, h)
				if err := batch.Delete(reconciledKey(h), nil); err != nil {
					return fmt.Errorf("batch delete reconciled mark: %w", err)
				}
			}
		}
	}
	finalEnd := metricstore.HourOf(s.finalBeforeLocked() / 60e6) // hours below it are final
	for _, h := range c.ReconciledHours {
		if h < 0 {
			return fmt.Errorf("%w: reconciled hour %d", metricstore.ErrInvalidDelta, h)
		}
		if h >= finalEnd {
			return fmt.Errorf("%w: reconciled hour %v is not final", metricstore.ErrInvalidDelta, time.Unix(h*3600, 0).UTC())
		}
		if err := batch.Set(reconciledKey(h), nil, nil); err != nil {
			return fmt.Errorf("batch set reconciled mark: %w", err)
		}
	}
	if err := batch.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("commit %d deltas of %s: %w", len(c.Deltas), c.Consumer, err)
	}
	cs := batch.CommitStats()
	s.commitNanos.Add(cs.TotalDuration.Nanoseconds())
	s.stallNanos.Add((cs.MemTableWriteStallDuration + cs.L0ReadAmpWriteStallDuration).Nanoseconds())
	s.syncNanos.Add(cs.CommitWaitDuration.Nanoseconds())
	s.checkpoints[c.Consumer] = next
	for _, h := range unmark {
		delete(s.reconciled, h)
	}
	for _, h := range c.ReconciledHours {
		s.reconciled[h] = true
	}
	took := time.Since(start).Nanoseconds()
	s.applies.Add(1)
	s.deltas.Add(int64(len(c.Deltas)))
	s.applyNanos.Add(took)
	s.lastApply.Store(took)
	return nil
}

// buildBatch writes the deltas as merge operands of their 1m, 1h and 1d keys, in key order
// and with operands of the same key summed. Key order matters for speed: Pebble inserts a
// batch into its memtable skiplist remembering the last position, so sorted inserts are
// several times cheaper than random ones.
func (s *Store) buildBatch(deltas []metricstore.Delta) (*pebble.Batch, error) {
	// Sort by (level, id, minute), which is key order within a key partition (see keys.go),
	// comparing a packed integer first: level and the id's first seven bytes decide almost
	// every comparison without touching the strings.
	type sortKey struct {
		packed uint64
		i      int32
	}
	order := make([]sortKey, 0, len(deltas))
	for i := range deltas {
		d := &deltas[i]
		if !d.Level.Valid() || !validID(d.ID) || d.Minute < 0 {
			return nil, fmt.Errorf("%w: delta %d: level %d, id %q, minute %d", metricstore.ErrInvalidDelta, i, d.Level, d.ID, d.Minute)
		}
		if d.IsZero() {
			continue
		}
		packed := uint64(d.Level) << 56
		for j := 0; j < 7 && j < len(d.ID); j++ {
			packed |= uint64(d.ID[j]) << (48 - 8*j)
		}
		order = append(order, sortKey{packed, int32(i)})
	}
	slices.SortFunc(order, func(a, b sortKey) int {
		if a.packed != b.packed {
			return cmp.Compare(a.packed, b.packed)
		}
		x, y := &deltas[a.i], &deltas[b.i]
		if c := strings.Compare(x.ID, y.ID); c != 0 {
			return c
		}
		return cmp.Compare(x.Minute, y.Minute)
	})
	batch := s.db.NewBatchWithSize(len(order)*3*24 + 256)
	w := rowWriter{deltas: deltas, batch: batch}
	nowMin := s.opts.Now().Unix() / 60
	for r := range resolutions {
		rs := &resolutions[r]
		// A bucket that starts before its resolution's retention can no longer be queried
		// (and its partition may already be dropped): a late delta (a refund of an old click)
		// goes to the coarser buckets that are still kept, not into a dead row.
		cutoff := int64(-1)
		if ret := s.retention[r]; ret != 0 {
			cutoff = nowMin - ret
		}
		for _, o := range order {
			d := &deltas[o.i]
			unit := d.Minute / rs.minutes
			if unit*rs.minutes < cutoff {
				continue
			}
			w.key = appendRowKey(w.key[:0], rs, unit/rs.perPart, d.Level, d.ID)
			if err := w.add(int(unit%rs.perPart), int(o.i)); err != nil {
				batch.Close()
				return nil, err
			}
		}
		if err := w.flushRow(); err != nil {
			batch.Close()
			return nil, err
		}
	}
	return batch, nil
}

// rowWriter turns deltas, fed in row key and bucket order, into one merge operand per row,
// summing deltas of the same bucket.
type rowWriter struct {
	deltas   []metricstore.Delta
	batch    *pebble.Batch
	key, row []byte // the row being built, and its key
	rowKey   []byte
	bucket   int // the entry being built: its bucket and the deltas in it
	first    int
	n        int
	sum      metricstore.Counts
}

func (w *rowWriter) add(bucket, i int) error {
	if !bytes.Equal(w.key, w.rowKey) {
		if err := w.flushRow(); err != nil {
			return err
		}
		w.rowKey = append(w.rowKey[:0], w.key...)
	} else if bucket != w.bucket {
		w.flushEntry()
	}
	switch w.n {
	case 0:
		w.bucket, w.first = bucket, i
	case 1:
		w.sum = metricstore.Counts{}
		w.sum.Add(&w.deltas[w.first].Counts)
		fallthrough
	default:
		w.sum.Add(&w.deltas[i].Counts)
	}
	w.n++
	return nil
}

func (w *rowWriter) flushEntry() {
	switch w.n {
	case 0:
		return
	case 1:
		w.row = appendEntry(w.row, w.bucket, &w.deltas[w.first].Counts)
	default:
		w.row = appendEntry(w.row, w.bucket, &w.sum)
	}
	w.n = 0
}

func (w *rowWriter) flushRow() error {
	w.flushEntry()
	if len(w.row) == 0 {
		return nil
	}
	err := w.batch.Merge(w.rowKey, w.row, nil)
	w.row = w.row[:0]
	if err != nil {
		return fmt.Errorf("batch merge: %w", err)
	}
	return nil
}

// Checkpoint implements metricstore.Store.
func (s *Store) Checkpoint(ctx context.Context, consumer string) (metricstore.Checkpoint, error) {
	if err := ctx.Err(); err != nil {
		return metricstore.Checkpoint{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return metricstore.Checkpoint{}, metricstore.ErrClosed
	}
	cp := metricstore.Checkpoint{Offsets: make(map[int32]int64)}
	if c := s.checkpoints[consumer]; c != nil {
		for p, o := range c.offsets {
			cp.Offsets[p] = o
		}
		if c.finalBefore != 0 {
			cp.FinalBefore = time.UnixMicro(c.finalBefore).UTC()
		}
	}
	return cp, nil
}

// finalBefore is the minimum FinalBefore over the consumers that declared one.
func (s *Store) finalBefore() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	fb := s.finalBeforeLocked()
	if fb == 0 {
		return time.Time{}
	}
	return time.UnixMicro(fb).UTC()
}

// finalBeforeLocked is finalBefore in Unix micros (0: none declared). Callers hold mu.
func (s *Store) finalBeforeLocked() int64 {
	var fb int64
	for _, c := range s.checkpoints {
		if c.finalBefore != 0 && (fb == 0 || c.finalBefore < fb) {
			fb = c.finalBefore
		}
	}
	return fb
}

// Run drops expired buckets every ExpireInterval and bounds the write-ahead log a restart
// would replay (flushIfLarge, every FlushInterval) until ctx is done. It returns nil when ctx
// ends or the store is closed, and the first error otherwise.
func (s *Store) Run(ctx context.Context) error {
	expire := time.NewTicker(s.opts.ExpireInterval)
	defer expire.Stop()
	flush := time.NewTicker(s.opts.FlushInterval)
	defer flush.Stop()
	err := s.Expire(ctx)
	for err == nil {
		select {
		case <-ctx.Done():
			return nil
		case <-expire.C:
			err = s.Expire(ctx)
		case <-flush.C:
			err = s.flushIfLarge()
		}
	}
	if ctx.Err() != nil || errors.Is(err, metricstore.ErrClosed) {
		return nil
	}
	return err
}

// flushIfLarge starts a flush of the memtables when a restart would otherwise replay
// MaxUnflushedWAL bytes or more of write-ahead log. It does not wait for the flush: Pebble
// writes the memtables out in the background and drops the log files they covered.
func (s *Store) flushIfLarge() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return metricstore.ErrClosed
	}
	if s.db.Metrics().WAL.Size < s.opts.MaxUnflushedWAL {
		return nil
	}
	if _, err := s.db.AsyncFlush(); err != nil {
		return fmt.Errorf("flush metric store memtables: %w", err)
	}
	s.flushes.Add(1)
	return nil
}

// Expire drops the key partitions of every resolution that lie wholly before now minus its
// retention. Queries refuse ranges past retention whether or not Expire has run yet, so
// results do not depend on when it runs.
func (s *Store) Expire(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	nowMin := s.opts.Now().Unix() / 60
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return metricstore.ErrClosed
	}
	for i := range resolutions {
		if s.retention[i] == 0 {
			continue
		}
		r := &resolutions[i]
		cutoff := nowMin - s.retention[i]
		if cutoff <= 0 {
			continue
		}
		part := cutoff / r.minutes / r.perPart // partitions below it end at or before cutoff
		if part <= s.expiredPart[i] {
			continue
		}
		lo := []byte{r.prefix}
		hi := binary.BigEndian.AppendUint32([]byte{r.prefix}, uint32(part))
		// Not synced: an expiry lost in a crash is simply done again.
		if err := s.db.DeleteRange(lo, hi, pebble.NoSync); err != nil {
			return fmt.Errorf("expire %s buckets before partition %d: %w", r.name, part, err)
		}
		s.opts.Logger.Debug("expired metric buckets", "resolution", r.name, "before", time.Unix(part*r.perPart*r.minutes*60, 0).UTC())
		s.expiredPart[i] = part
		s.expired.Add(1)
	}
	return nil
}

// Stats returns the store's counters.
func (s *Store) Stats() Stats {
	st := Stats{
		Applies:        s.applies.Load(),
		Conflicts:      s.conflicts.Load(),
		DeltasApplied:  s.deltas.Load(),
		ApplyNanos:     s.applyNanos.Load(),
		LastApplyNanos: s.lastApply.Load(),
		Queries:        s.queries.Load(),
		ExpiredRanges:  s.expired.Load(),
		BuildNanos:     s.buildNanos.Load(),
		CommitNanos:    s.commitNanos.Load(),
		StallNanos:     s.stallNanos.Load(),
		SyncNanos:      s.syncNanos.Load(),
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		m := s.db.Metrics()
		st.DiskBytes = m.DiskSpaceUsage()
		st.MemtableBytes = m.MemTable.Size
		st.UnflushedWAL = m.WAL.Size
		st.Flushes = s.flushes.Load()
		st.BlockCacheHits, st.BlockCacheMisses = m.BlockCache.Hits, m.BlockCache.Misses
		st.Compactions, st.CompactionTime = m.Compact.Count, m.Compact.Duration
		for _, l := range m.Levels {
			st.FlushedBytes += l.BytesFlushed
			st.CompactedBytes += l.BytesCompacted
		}
		st.ReadAmp = m.ReadAmp()
	}
	return st
}

// Close closes the database. Writes already applied are durable.
func (s *Store) Close() error {
	s.life.Lock()
	defer s.life.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close pebble metric store: %w", err)
	}
	return nil
}
