package ledger

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"

	"github.com/adpulse/adpulse/internal/pebbleutil"
	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/bloom"
	"github.com/cockroachdb/pebble/vfs"
)

// PebbleOptions configure OpenPebble.
type PebbleOptions struct {
	// FS is the file system; nil means the operating system's. Crash tests use
	// vfs.NewStrictMem, which drops whatever was not synced.
	FS     vfs.FS
	Logger *slog.Logger
}

// Pebble is the embedded Store: one process, one Pebble database. Updates are serialised by
// a mutex held from the first read of the transaction to its synced commit, which is what
// "locked until commit" means in one process.
type Pebble struct {
	db     *pebble.DB
	logger *slog.Logger

	mu     sync.Mutex // serialises Update and Claim
	life   sync.RWMutex
	closed bool // guarded by life
}

// OpenPebble opens or creates the billing database in dir. The key layout is the one billing
// has always used (pebblekeys.go), so existing databases open as they are.
func OpenPebble(dir string, o PebbleOptions) (*Pebble, error) {
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if err := pebbleutil.CreateDir(o.FS, dir, "billing"); err != nil {
		return nil, err
	}
	po := &pebble.Options{
		FS:                 o.FS,
		FormatMajorVersion: pebble.FormatNewest,
		Logger:             pebbleutil.Logger(o.Logger, "billing-pebble"),
	}
	// Almost every click's ledger key is new, and a point lookup of a missing key without a
	// filter reads and decompresses a block of every table it might be in (most of billing's
	// CPU per click). A Bloom filter of 10 bits per key answers "not here" for 99% of tables.
	// It only saves work while it stays cached, so tables stay small (Pebble's default
	// doubles them per level, to 128 MiB in L6, whose filter block would be about 2 MiB) and
	// the cache is larger than Pebble's 8 MiB default, split in 4 shards per core (1 MiB each
	// on two cores). Tables written without a filter still read correctly and gain one when
	// compacted.
	cache := pebble.NewCache(32 << 20)
	defer cache.Unref()
	po.Cache = cache
	po.Levels = make([]pebble.LevelOptions, 7)
	for i := range po.Levels {
		po.Levels[i] = pebble.LevelOptions{
			FilterPolicy:   bloom.FilterPolicy(10),
			FilterType:     pebble.TableFilter,
			TargetFileSize: 2 << 20 << min(i, 1),
		}
	}
	po.Comparer = ledgerComparer()
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, fmt.Errorf("open billing database in %q: %w", dir, err)
	}
	return &Pebble{db: db, logger: o.Logger}, nil
}

// use runs f with the database open.
func (s *Pebble) use(f func(db *pebble.DB) error) error {
	s.life.RLock()
	defer s.life.RUnlock()
	if s.closed {
		return ErrClosed
	}
	return f(s.db)
}

// read runs f on a consistent snapshot.
func (s *Pebble) read(f func(r pebble.Reader) error) error {
	return s.use(func(db *pebble.DB) error {
		snap := db.NewSnapshot()
		defer snap.Close()
		return f(snap)
	})
}

// Close closes the database.
func (s *Pebble) Close() error {
	s.life.Lock()
	defer s.life.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close billing database: %w", err)
	}
	return nil
}

func getUvarint(r pebble.Reader, key []byte) (int64, bool, error) {
	v, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	defer closer.Close()
	n, k := binary.Uvarint(v)
	if k <= 0 || k != len(v) || n > math.MaxInt64 {
		return 0, false, fmt.Errorf("%w: key %q value %x", ErrCorrupt, key, v)
	}
	return int64(n), true, nil
}

func getInt(r pebble.Reader, key []byte) (int64, error) {
	v, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer closer.Close()
	return decodeInt(v)
}

// Claim bumps the partitions' epochs in one synced batch.
func (s *Pebble) Claim(ctx context.Context, partitions []int32) ([]Claim, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Claim
	err := s.use(func(db *pebble.DB) error {
		b := db.NewBatch()
		defer b.Close()
		for _, p := range partitions {
			if p < 0 {
				return fmt.Errorf("%w: partition %d", ErrInvalid, p)
			}
			epoch, _, err := getUvarint(db, epochKey(p))
			if err != nil {
				return fmt.Errorf("read epoch of partition %d: %w", p, err)
			}
			next, ok, err := getUvarint(db, offsetKey(p))
			if err != nil {
				return fmt.Errorf("read offset of partition %d: %w", p, err)
			}
			if err := b.Set(epochKey(p), binary.AppendUvarint(nil, uint64(epoch+1)), nil); err != nil {
				return err
			}
			out = append(out, Claim{Partition: p, Epoch: epoch + 1, Next: next, Committed: ok})
		}
		return b.Commit(pebble.Sync)
	})
	if err != nil {
		return nil, fmt.Errorf("claim partitions: %w", err)
	}
	return out, nil
}

// pebbleTx reads the database directly: the mutex keeps every other writer out. It remembers
// the ledger keys its Entries found missing, so Update need not look them up again before
// inserting them: nothing else writes while the mutex is held.
type pebbleTx struct {
	db     *pebble.DB
	absent map[string]struct{}
}

func (t *pebbleTx) Entries(ctx context.Context, keys []string, _ bool) (map[string]Entry, error) {
	return entries(t.db, keys, t.absent)
}

// entries reads the ledger entries among keys; the keys it does not find are added to absent
// unless it is nil. One iterator serves every key: a prefix seek with L6 filters consults each
// table's Bloom filter first, so a missing key (almost every click's) costs a few filter
// probes instead of a data block read per table (pebble.DB.Get skips the filters of L6, where
// most of the ledger lives).
func entries(r pebble.Reader, keys []string, absent map[string]struct{}) (map[string]Entry, error) {
	out := make(map[string]Entry)
	if len(keys) == 0 {
		return out, nil
	}
	l, err := newLookup(r)
	if err != nil {
		return nil, err
	}
	defer l.close()
	var kb []byte
	for _, k := range keys {
		kb = appendLedgerKey(kb[:0], k)
		v, ok, err := l.get(kb)
		if err != nil {
			return nil, fmt.Errorf("read ledger: %w", err)
		}
		if !ok {
			if absent != nil {
				absent[k] = struct{}{}
			}
			continue
		}
		e, err := decodeLedger(v)
		if err != nil {
			return nil, err
		}
		e.Key = k
		out[k] = e
	}
	return out, nil
}

// lookup answers point lookups of whole keys through one iterator (see entries).
type lookup struct{ it *pebble.Iterator }

func newLookup(r pebble.Reader) (lookup, error) {
	it, err := r.NewIter(&pebble.IterOptions{UseL6Filters: true})
	if err != nil {
		return lookup{}, fmt.Errorf("read ledger: %w", err)
	}
	return lookup{it}, nil
}

// get returns key's value, valid until the next get or close.
func (l lookup) get(key []byte) ([]byte, bool, error) {
	// The comparer's prefix of a key is the whole key (ledgerComparer), so a prefix seek
	// finds key itself or nothing.
	if !l.it.SeekPrefixGE(key) || !bytes.Equal(l.it.Key(), key) {
		return nil, false, l.it.Error()
	}
	v, err := l.it.ValueAndErr()
	return v, err == nil, err
}

func (l lookup) close() { l.it.Close() }

// ledgerComparer is Pebble's default comparer (same order, same name, so existing databases
// open as they are) with a Split that makes the whole key the prefix: point lookups by prefix
// seek then consult the tables' Bloom filters, which hold whole keys.
func ledgerComparer() *pebble.Comparer {
	c := *pebble.DefaultComparer
	c.Split = func(key []byte) int { return len(key) }
	return &c
}

func (t *pebbleTx) LockSpend(ctx context.Context, days []SpendKey) (map[SpendKey]int64, map[string]int64, error) {
	return spend(t.db, days)
}

func spend(r pebble.Reader, days []SpendKey) (map[SpendKey]int64, map[string]int64, error) {
	day, total := make(map[SpendKey]int64, len(days)), make(map[string]int64)
	for _, k := range days {
		if _, ok := day[k]; ok {
			continue
		}
		v, err := getInt(r, dayKey(k.Campaign, k.DayStart))
		if err != nil {
			return nil, nil, fmt.Errorf("read spend of %s: %w", k.Campaign, err)
		}
		day[k] = v
		if _, ok := total[k.Campaign]; !ok {
			if total[k.Campaign], err = getInt(r, totalKey(k.Campaign)); err != nil {
				return nil, nil, fmt.Errorf("read total spend of %s: %w", k.Campaign, err)
			}
		}
	}
	return day, total, nil
}

// Update runs fn and commits its Writes as one synced batch, holding the mutex throughout.
func (s *Pebble) Update(ctx context.Context, fn func(context.Context, Tx) (*Writes, error)) (Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	res := Result{Attempts: 1}
	err := s.use(func(db *pebble.DB) error {
		tx := &pebbleTx{db: db, absent: make(map[string]struct{})}
		w, err := fn(ctx, tx)
		if err != nil || w == nil || w.empty() {
			return err
		}
		if err := checkWrites(w); err != nil {
			return err
		}
		b := db.NewBatch()
		defer b.Close()
		if err := s.fence(db, w.Offsets); err != nil {
			return err
		}
		for _, o := range w.Offsets {
			if err := b.Set(offsetKey(o.Partition), binary.AppendUvarint(nil, uint64(o.Next)), nil); err != nil {
				return err
			}
		}
		// A key this transaction's Entries found missing is still missing (the mutex keeps
		// other writers out); any other key is looked up.
		var l lookup
		for i, list := range [][]Entry{w.Entries, w.Replace} {
			for j := range list {
				e := &list[j]
				exists := false
				if _, known := tx.absent[e.Key]; !known {
					if l.it == nil {
						if l, err = newLookup(db); err != nil {
							return err
						}
						defer l.close()
					}
					if _, exists, err = l.get(ledgerKey(e.Key)); err != nil {
						return fmt.Errorf("read ledger: %w", err)
					}
				}
				if exists != (i == 1) {
					return fmt.Errorf("%w: ledger entry %q exists: %v", ErrInvalid, e.Key, exists)
				}
				if err := b.Set(ledgerKey(e.Key), encodeLedger(nil, e), nil); err != nil {
					return err
				}
			}
		}
		if err := s.addSpend(db, b, w.Spend); err != nil {
			return err
		}
		if res.Views, err = s.addViews(db, b, w.Views); err != nil {
			return err
		}
		if w.ExpireViewsBefore > 0 {
			if err := b.DeleteRange(viewsDayBound(0), viewsDayBound(w.ExpireViewsBefore), nil); err != nil {
				return err
			}
		}
		for _, id := range w.Known {
			if err := b.Set(knownKey(id), nil, nil); err != nil {
				return err
			}
		}
		for name, v := range w.Meta {
			if err := b.Set(metaKey(name), v, nil); err != nil {
				return err
			}
		}
		if w.Journal != nil {
			next, _, err := getUvarint(db, keyJournalNext)
			if err != nil {
				return fmt.Errorf("read journal seq: %w", err)
			}
			res.JournalSeq = uint64(next)
			if err := b.Set(journalKey(uint64(next)), w.Journal, nil); err != nil {
				return err
			}
			if err := b.Set(keyJournalNext, binary.AppendUvarint(nil, uint64(next)+1), nil); err != nil {
				return err
			}
		}
		if err := b.Commit(pebble.Sync); err != nil {
			return fmt.Errorf("commit billing batch: %w", err)
		}
		return nil
	})
	return res, err
}

// fence fails with a FencedError if any offset's epoch is not its partition's current one.
func (s *Pebble) fence(r pebble.Reader, offsets []Offset) error {
	var stale []int32
	for _, o := range offsets {
		epoch, _, err := getUvarint(r, epochKey(o.Partition))
		if err != nil {
			return fmt.Errorf("read epoch of partition %d: %w", o.Partition, err)
		}
		if epoch != o.Epoch {
			stale = append(stale, o.Partition)
		}
	}
	if stale != nil {
		slices.Sort(stale)
		return &FencedError{Partitions: stale}
	}
	return nil
}

func (s *Pebble) addSpend(r pebble.Reader, b *pebble.Batch, deltas []SpendDelta) error {
	days, totals := make(map[SpendKey]int64), make(map[string]int64)
	for _, d := range deltas {
		days[d.SpendKey] += d.Micros
		totals[d.Campaign] += d.Micros
	}
	for k, d := range days {
		cur, err := getInt(r, dayKey(k.Campaign, k.DayStart))
		if err != nil {
			return err
		}
		if cur+d < 0 {
			return fmt.Errorf("%w: spend of %s on the day from %d would become %d", ErrInvalid, k.Campaign, k.DayStart, cur+d)
		}
		if err := b.Set(dayKey(k.Campaign, k.DayStart), appendInt(nil, cur+d), nil); err != nil {
			return err
		}
	}
	for id, d := range totals {
		cur, err := getInt(r, totalKey(id))
		if err != nil {
			return err
		}
		if cur+d < 0 {
			return fmt.Errorf("%w: total spend of %s would become %d", ErrInvalid, id, cur+d)
		}
		if err := b.Set(totalKey(id), appendInt(nil, cur+d), nil); err != nil {
			return err
		}
	}
	return nil
}

func (s *Pebble) addViews(r pebble.Reader, b *pebble.Batch, views []ViewCount) ([]ViewCount, error) {
	sums := make(map[ViewKey]int64, len(views))
	for _, v := range views {
		sums[v.ViewKey] += v.Count
	}
	out := make([]ViewCount, 0, len(sums))
	for k, n := range sums {
		key := viewsKey(k.Day, k.UserID, k.CatalogID)
		cur, err := getInt(r, key)
		if err != nil {
			return nil, fmt.Errorf("read views: %w", err)
		}
		if err := b.Set(key, appendInt(nil, cur+n), nil); err != nil {
			return nil, err
		}
		out = append(out, ViewCount{k, cur + n})
	}
	slices.SortFunc(out, compareViews)
	return out, nil
}

func compareViews(a, b ViewCount) int {
	switch {
	case a.Day != b.Day:
		return int(int64(a.Day) - int64(b.Day))
	case a.UserID != b.UserID:
		if a.UserID < b.UserID {
			return -1
		}
		return 1
	case a.CatalogID < b.CatalogID:
		return -1
	case a.CatalogID > b.CatalogID:
		return 1
	}
	return 0
}

// Entries reads committed ledger entries.
func (s *Pebble) Entries(ctx context.Context, keys []string) (map[string]Entry, error) {
	var out map[string]Entry
	err := s.read(func(r pebble.Reader) (err error) {
		out, err = entries(r, keys, nil)
		return err
	})
	return out, err
}

// Spend reads committed spend from one snapshot.
func (s *Pebble) Spend(ctx context.Context, days []SpendKey) (map[SpendKey]int64, map[string]int64, error) {
	var d map[SpendKey]int64
	var t map[string]int64
	err := s.read(func(r pebble.Reader) (err error) {
		d, t, err = spend(r, days)
		return err
	})
	return d, t, err
}

// Views reads one user's counts of a day.
func (s *Pebble) Views(ctx context.Context, day uint32, userID string) (map[string]int64, error) {
	prefix := viewsPrefix(day, userID)
	upper := append(append([]byte(nil), prefix...), 0xff) // catalog ids are [A-Za-z0-9._:-]: below 0xff
	out := make(map[string]int64)
	err := s.scan(ctx, prefix, upper, func(k, v []byte) error {
		n, err := decodeInt(v)
		if err != nil {
			return err
		}
		out[string(k[len(prefix):])] = n
		return nil
	})
	return out, err
}

// ScanViews reads every count of a day from one snapshot.
func (s *Pebble) ScanViews(ctx context.Context, day uint32, fn func(ViewCount) error) error {
	return s.scan(ctx, viewsDayBound(day), viewsDayBound(day+1), func(k, v []byte) error {
		d, user, cat, ok := parseViewsKey(k)
		if !ok {
			return fmt.Errorf("%w: views key %x", ErrCorrupt, k)
		}
		n, err := decodeInt(v)
		if err != nil {
			return err
		}
		return fn(ViewCount{ViewKey{d, user, cat}, n})
	})
}

// scan calls fn with every key in [lower, upper) of one snapshot.
func (s *Pebble) scan(ctx context.Context, lower, upper []byte, fn func(k, v []byte) error) error {
	return s.read(func(r pebble.Reader) error {
		it, err := r.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
		if err != nil {
			return err
		}
		defer it.Close()
		for ok := it.First(); ok; ok = it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := fn(it.Key(), it.Value()); err != nil {
				return err
			}
		}
		return it.Error()
	})
}

// JournalNext reads the journal counter.
func (s *Pebble) JournalNext(ctx context.Context) (uint64, error) {
	var n int64
	err := s.use(func(db *pebble.DB) (err error) {
		n, _, err = getUvarint(db, keyJournalNext)
		return err
	})
	return uint64(n), err
}

// FirstJournal returns the oldest retained entry's seq, or JournalNext.
func (s *Pebble) FirstJournal(ctx context.Context) (uint64, error) {
	var first uint64
	err := s.read(func(r pebble.Reader) error {
		// The counter from the same snapshot as the (empty) journal: see SQL.FirstJournal.
		next, _, err := getUvarint(r, keyJournalNext)
		if err != nil {
			return err
		}
		first = uint64(next)
		it, err := r.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixJournal}, UpperBound: []byte{prefixJournal + 1}})
		if err != nil {
			return err
		}
		defer it.Close()
		if it.First() {
			k := it.Key()
			if len(k) != 9 {
				return fmt.Errorf("%w: journal key %x", ErrCorrupt, k)
			}
			first = binary.BigEndian.Uint64(k[1:])
		}
		return it.Error()
	})
	return first, err
}

// Journal reads the entries of [from, to).
func (s *Pebble) Journal(ctx context.Context, from, to uint64, fn func(uint64, []byte) error) error {
	return s.scan(ctx, journalKey(from), journalKey(to), func(k, v []byte) error {
		if len(k) != 9 {
			return fmt.Errorf("%w: journal key %x", ErrCorrupt, k)
		}
		return fn(binary.BigEndian.Uint64(k[1:]), v)
	})
}

// DropJournal deletes the entries below seq. The delete is not synced: if a crash loses it,
// the metric store's checkpoint still says they are in, and they are dropped again.
func (s *Pebble) DropJournal(ctx context.Context, below uint64) error {
	return s.use(func(db *pebble.DB) error {
		return db.DeleteRange(journalKey(0), journalKey(below), pebble.NoSync)
	})
}

// Known lists the campaigns seen in the log.
func (s *Pebble) Known(ctx context.Context) ([]string, error) {
	var out []string
	err := s.scan(ctx, []byte{prefixKnown}, []byte{prefixKnown + 1}, func(k, _ []byte) error {
		out = append(out, string(k[1:]))
		return nil
	})
	return out, err
}

// Meta reads a named value.
func (s *Pebble) Meta(ctx context.Context, name string) ([]byte, bool, error) {
	var out []byte
	var ok bool
	err := s.use(func(db *pebble.DB) error {
		v, closer, err := db.Get(metaKey(name))
		if errors.Is(err, pebble.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		defer closer.Close()
		out, ok = slices.Clone(v), true
		return nil
	})
	return out, ok, err
}

// ScanLedger reads every ledger entry.
func (s *Pebble) ScanLedger(ctx context.Context, fn func(Entry) error) error {
	return s.scan(ctx, []byte{prefixLedger}, []byte{prefixLedger + 1}, func(k, v []byte) error {
		e, err := decodeLedger(v)
		if err != nil {
			return err
		}
		e.Key = string(k[1:])
		return fn(e)
	})
}

// ScanSpend reads every spend row.
func (s *Pebble) ScanSpend(ctx context.Context, day func(SpendKey, int64) error, total func(string, int64) error) error {
	err := s.scan(ctx, []byte{prefixDay}, []byte{prefixDay + 1}, func(k, v []byte) error {
		id, start, ok := parseDayKey(k)
		if !ok {
			return fmt.Errorf("%w: spend key %x", ErrCorrupt, k)
		}
		n, err := decodeInt(v)
		if err != nil {
			return err
		}
		return day(SpendKey{id, start}, n)
	})
	if err != nil {
		return err
	}
	return s.scan(ctx, []byte{prefixTotal}, []byte{prefixTotal + 1}, func(k, v []byte) error {
		if len(k) < 2 || len(k) != 2+int(k[1]) {
			return fmt.Errorf("%w: total key %x", ErrCorrupt, k)
		}
		n, err := decodeInt(v)
		if err != nil {
			return err
		}
		return total(string(k[2:]), n)
	})
}

// MigrateLegacyDates moves spend kept under bare local dates (databases written before
// budget days were intervals) to the budget days that start at dayStart(campaign, date), in
// one synced batch, so that an upgraded database keeps the day in progress spent.
func (s *Pebble) MigrateLegacyDates(dayStart func(campaign string, date uint32) int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	err := s.use(func(db *pebble.DB) error {
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixDate}, UpperBound: []byte{prefixDate + 1}})
		if err != nil {
			return fmt.Errorf("read legacy spend: %w", err)
		}
		defer it.Close()
		b := db.NewBatch()
		defer b.Close()
		moved := make(map[string]int64)
		for ok := it.First(); ok; ok = it.Next() {
			k := it.Key()
			if len(k) < 2 || len(k) != 2+int(k[1])+4 {
				return fmt.Errorf("%w: legacy spend key %x", ErrCorrupt, k)
			}
			v, err := decodeInt(it.Value())
			if err != nil {
				return err
			}
			campaign := string(k[2 : 2+int(k[1])])
			moved[string(dayKey(campaign, dayStart(campaign, binary.BigEndian.Uint32(k[len(k)-4:]))))] += v
			if err := b.Delete(k, nil); err != nil {
				return err
			}
			n++
		}
		if err := it.Error(); err != nil {
			return fmt.Errorf("read legacy spend: %w", err)
		}
		if n == 0 {
			return nil
		}
		for k, v := range moved {
			cur, err := getInt(db, []byte(k))
			if err != nil {
				return fmt.Errorf("read spend: %w", err)
			}
			if err := b.Set([]byte(k), appendInt(nil, cur+v), nil); err != nil {
				return err
			}
		}
		return b.Commit(pebble.Sync)
	})
	return n, err
}
