package catalog

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cockroachdb/pebble/vfs"

	"github.com/adpulse/adpulse/internal/httpapi"
	"github.com/adpulse/adpulse/internal/snapfile"
)

// A snapshot of the in-memory index lets a start skip reading every ad from SQL: at ten
// million ads the full load takes seconds, reading the snapshot a fraction of that.
//
// The snapshot holds what load builds (advertisers and campaigns in their index order, so the
// campaign indexes inside the ads' records stay valid; the ads as the index's shards hold
// them, slot words, packed records and hash seed, so loading them is a copy (indexsnap.go);
// the API keys as their hashes) and the change feed position it reflects. Every object
// in it is at least as new as that position: the position is read under indexMu together with
// the advertisers, campaigns and keys, and anything the index gets later belongs to a change
// after it (see feed.go). Open loads it only if the database is the one it was taken of (an
// identity token stored in the database) and the feed still holds every change after its
// position; it then applies those changes synchronously before returning, so a ready
// process resolves every ad committed before a crash, as after a full load. Re-applying a
// change the snapshot already reflects is harmless. Anything else (no snapshot, a corrupt or
// torn one, another version, another database, a trimmed feed) falls back to the full load:
// the snapshot costs time when it cannot be used, never correctness.
//
// Writing copies under indexMu only the advertisers' and campaigns' record pointers and the
// keys; the ads are copied one shard at a time under the shard's lock (its slot words; the
// records themselves are never modified once published, so they are read after), and the
// file is written outside every lock.

const (
	snapKind = "catalog-index"
	// snapVersion 2: the ads as the index's shards hold them, with the hash seed (indexsnap.go).
	// A file of another version is refused, so the start loads from the database.
	snapVersion = 2

	// DefaultSnapshotInterval is how often Run writes a snapshot when Options.SnapshotPath is
	// set and Options.SnapshotInterval is zero.
	DefaultSnapshotInterval = 5 * time.Minute

	maxSnapString = 1 << 16 // longer than any stored string; bounds a corrupt length

	snapshotCheck      = 10 * time.Second // how often Run considers writing one
	snapshotMinChanges = 10_000
)

// snapState is the snapshot configuration and the writers' serialization.
type snapState struct {
	path     string        // "": no snapshots
	interval time.Duration // of Run's writes; < 0: only at Close
	fs       vfs.FS
	identity string // of the database (catalog_identity)
	loaded   bool   // Open completed: the index is whole and may be written
	used     bool   // Open loaded the index from the snapshot

	mu      sync.Mutex // one writer at a time
	lastSeq int64      // position of the last snapshot written or loaded (guarded by mu)

	// writes and failures count WriteSnapshot's outcomes (Stats), so a writer that keeps
	// failing shows in the metrics and not only in the log.
	writes, failures atomic.Int64
}

// ensureIdentity reads the database's identity token, creating it on first use. Two processes
// starting at once may both try to create it; the loser's INSERT fails on the primary key.
func (c *Catalog) ensureIdentity(ctx context.Context) (string, error) {
	read := func() (string, error) {
		var tok string
		err := c.db.QueryRowContext(ctx, `SELECT token FROM catalog_identity WHERE id = 1`).Scan(&tok)
		return tok, err
	}
	if tok, err := read(); err == nil {
		return tok, nil
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("catalog identity: %w", err)
	}
	_, ierr := c.db.ExecContext(ctx, c.d.q(`INSERT INTO catalog_identity (id, token) VALUES (1, ?)`), hex.EncodeToString(b[:]))
	tok, err := read()
	if err != nil {
		return "", fmt.Errorf("catalog identity: %w (insert: %v)", err, ierr)
	}
	return tok, nil
}

// WriteSnapshot writes a snapshot of the index to Options.SnapshotPath. It does nothing when
// snapshots are off or the index did not load.
func (c *Catalog) WriteSnapshot() (err error) {
	s := &c.snap
	if s.path == "" || !s.loaded || c.feed.disabled {
		return nil
	}
	defer func() {
		if err != nil {
			s.failures.Add(1)
		} else {
			s.writes.Add(1)
		}
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	start := time.Now()

	c.indexMu.Lock()
	seq := c.feed.applied
	advs := make([]*AdvertiserInfo, c.advertisers.len())
	for i := range advs {
		advs[i] = c.advertisers.at(uint32(i))
	}
	camps := make([]*campaignRec, c.campaigns.len())
	for i := range camps {
		camps[i] = c.campaigns.at(uint32(i))
	}
	type key struct {
		h [sha256.Size]byte
		p httpapi.Principal
	}
	var keys []key
	c.keys.Range(func(k, v any) bool {
		keys = append(keys, key{k.([sha256.Size]byte), v.(httpapi.Principal)})
		return true
	})
	c.indexMu.Unlock()

	var nads int
	err = snapfile.Write(s.fs, s.path, snapKind, snapVersion, func(w io.Writer) error {
		e := &snapEncoder{w: w}
		e.str(string(c.d.name))
		e.str(s.identity)
		e.i64(seq)
		e.uvar(uint64(len(advs)))
		for _, a := range advs {
			if a == nil {
				return errors.New("advertiser record missing")
			}
			e.str(a.AdvertiserID)
			e.str(a.Name)
			e.str(a.Timezone)
			e.uvar(uint64(len(a.TimezoneChanges)))
			for _, tz := range a.TimezoneChanges {
				e.time(tz.At)
				e.str(tz.From.String())
				e.str(tz.To.String())
			}
			e.uvar(uint64(len(a.WindowChanges)))
			for _, wc := range a.WindowChanges {
				e.time(wc.At)
				e.dur(wc.Click)
				e.dur(wc.View)
			}
		}
		e.uvar(uint64(len(camps)))
		for _, cp := range camps {
			if cp == nil {
				return errors.New("campaign record missing")
			}
			in := &cp.info
			e.str(in.CampaignID)
			e.str(in.AdvertiserID)
			e.str(string(in.Status))
			e.i64(in.CPCBidMicros)
			e.i64(in.DailyBudgetMicros)
			e.i64(in.TotalBudgetMicros)
			e.time(in.StartTime)
			e.time(in.EndTime)
			e.bool(in.AutoCPC)
		}
		e.uvar(uint64(len(keys)))
		for _, k := range keys {
			e.raw(k.h[:])
			e.uvar(uint64(k.p.Role))
			e.str(k.p.AdvertiserID)
		}
		var err error
		nads, err = c.ads.writeSnapshot(e, uint32(len(camps)))
		if err != nil {
			return err
		}
		return e.err
	})
	if err != nil {
		return fmt.Errorf("write catalog snapshot: %w", err)
	}
	s.lastSeq = seq
	c.log.Info("catalog snapshot written", "path", s.path, "seq", seq, "advertisers", len(advs), "campaigns", len(camps),
		"ads", nads, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// loadSnapshot loads the index from the snapshot if it can be used with a database whose
// feed head is head, and returns the feed position it reflects. On any error the index is
// left empty.
func (c *Catalog) loadSnapshot(ctx context.Context, head int64) (int64, error) {
	s := &c.snap
	var seq int64
	err := snapfile.Read(s.fs, s.path, snapKind, snapVersion, func(r io.Reader) error {
		d := newSnapDecoder(r)
		if dn := d.str(); d.err == nil && dn != string(c.d.name) {
			return fmt.Errorf("taken of a %s database, not %s", dn, c.d.name)
		}
		if id := d.str(); d.err == nil && id != s.identity {
			return errors.New("taken of another database")
		}
		seq = d.i64()
		if d.err != nil {
			return d.err
		}
		if err := c.feedCovers(ctx, seq, head); err != nil {
			return err
		}
		return c.decodeIndex(d)
	})
	if err != nil {
		c.resetIndex()
		return 0, err
	}
	return seq, nil
}

// feedCovers checks that the changes after seq up to head are all in the feed.
func (c *Catalog) feedCovers(ctx context.Context, seq, head int64) error {
	if head < seq {
		return fmt.Errorf("feed head %d is behind the snapshot's position %d (database restored or recreated)", head, seq)
	}
	if head == seq {
		return nil
	}
	// Trimming deletes from the oldest: if seq+1 is there, so is everything up to head. A
	// trim racing with this check shows as a gap in the first poll, which reloads.
	var n int
	if err := c.db.QueryRowContext(ctx, c.d.q(`SELECT COUNT(*) FROM catalog_changes WHERE seq = ?`), seq+1).Scan(&n); err != nil {
		return fmt.Errorf("check change feed: %w", err)
	}
	if n == 0 {
		return fmt.Errorf("change feed trimmed past the snapshot's position %d", seq)
	}
	return nil
}

func (c *Catalog) decodeIndex(d *snapDecoder) error {
	nadv := d.count()
	for i := 0; i < nadv && d.err == nil; i++ {
		a := Advertiser{ID: d.str(), Name: d.str(), Timezone: d.str()}
		var tzs []TimezoneChange
		for n := d.count(); n > 0 && d.err == nil; n-- {
			at := d.time()
			from, to := d.str(), d.str()
			if d.err == nil {
				tzs = append(tzs, TimezoneChange{At: at, From: c.location(a.ID, from), To: c.location(a.ID, to)})
			}
		}
		var wcs []WindowChange
		for n := d.count(); n > 0 && d.err == nil; n-- {
			wcs = append(wcs, WindowChange{At: d.time(), Click: d.dur(), View: d.dur()})
		}
		if d.err != nil {
			break
		}
		c.indexAdvertiser(a, tzs, wcs)
		if _, idx, _ := c.advertisers.get(a.ID); int(idx) != i {
			return fmt.Errorf("advertiser %q repeated", a.ID)
		}
	}
	ncamp := d.count()
	for i := 0; i < ncamp && d.err == nil; i++ {
		cp := Campaign{ID: d.str(), AdvertiserID: d.str(), Status: Status(d.str()), CPCBidMicros: d.i64(),
			DailyBudgetMicros: d.i64(), TotalBudgetMicros: d.i64(), StartTime: d.time(), EndTime: d.time(), AutoCPC: d.bool()}
		if d.err != nil {
			break
		}
		if err := c.indexCampaign(cp); err != nil {
			return err
		}
		if _, idx, _ := c.campaigns.get(cp.ID); int(idx) != i {
			return fmt.Errorf("campaign %q repeated", cp.ID)
		}
	}
	nkeys := d.count()
	for i := 0; i < nkeys && d.err == nil; i++ {
		var h [sha256.Size]byte
		d.full(h[:])
		p := httpapi.Principal{Role: httpapi.Role(d.uvar()), AdvertiserID: d.str()}
		if d.err == nil {
			c.setKey(h, p)
		}
	}
	if d.err != nil {
		return d.err
	}
	return c.ads.readSnapshot(d, uint32(ncamp))
}

// decodeRecView is decodeRec without the copy: tail points into r.
func decodeRecView(r []byte) adRec {
	ul := binary.LittleEndian.Uint16(r[6:8])
	rec := adRec{campaign: binary.LittleEndian.Uint32(r[0:4]), catLen: int(r[5])}
	p := recHeader
	if ul&recHasBid != 0 {
		rec.hasBid = true
		rec.bid = int64(binary.LittleEndian.Uint64(r[8:16]))
		p += 8
	}
	p += int(r[4])
	rec.tail = view(r[p : p+rec.catLen+int(ul&^recHasBid)])
	return rec
}

// view is a string sharing b's bytes, for calls that neither keep it nor outlive b's contents.
func view(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// resetIndex empties the in-memory index, after a snapshot that could not be used. Only Open
// calls it, before the catalog is shared.
func (c *Catalog) resetIndex() {
	c.ads = newAdIndex()
	c.campaigns = recTable[campaignRec]{}
	c.advertisers = recTable[AdvertiserInfo]{}
	c.keys = sync.Map{}
	c.advertiserKeys.Store(0)
	c.ingestKeys.Store(0)
}

// runSnapshots keeps the snapshot close to the index until ctx ends. It writes one soon after
// a start that could not use the snapshot (the next crash then can), after many changes (a
// quarter of the ads, at least snapshotMinChanges: a bulk load is not re-read from the feed
// after a crash, and the cost of rewriting stays proportional to what was added), once at
// least snapshotMinChanges have stopped coming for a check period (the end of a bulk load),
// and every interval while anything changed.
func (c *Catalog) runSnapshots(ctx context.Context) {
	s := &c.snap
	t := time.NewTicker(min(s.interval, snapshotCheck))
	defer t.Stop()
	last := time.Now()
	first := !s.used
	prev := c.feed.appliedSeq.Load()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		applied := c.feed.appliedSeq.Load()
		changed := applied - s.lastSeq
		s.mu.Unlock()
		many := changed >= max(snapshotMinChanges, int64(c.ads.len())/4)
		settled := applied == prev && changed >= snapshotMinChanges
		prev = applied
		if changed == 0 || !first && !many && !settled && time.Since(last) < s.interval {
			continue
		}
		first, last = false, time.Now()
		if err := c.WriteSnapshot(); err != nil {
			c.log.Warn("catalog snapshot failed; the next start may load the catalog from the database", "err", err)
		}
	}
}

type snapEncoder struct {
	w   io.Writer
	b   []byte
	err error
}

func (e *snapEncoder) raw(p []byte) {
	if e.err == nil {
		_, e.err = e.w.Write(p)
	}
}

func (e *snapEncoder) uvar(v uint64) {
	e.b = binary.AppendUvarint(e.b[:0], v)
	e.raw(e.b)
}

func (e *snapEncoder) i64(v int64) {
	e.b = binary.LittleEndian.AppendUint64(e.b[:0], uint64(v))
	e.raw(e.b)
}

func (e *snapEncoder) str(s string) {
	e.uvar(uint64(len(s)))
	e.b = append(e.b[:0], s...)
	e.raw(e.b)
}

func (e *snapEncoder) bool(v bool) {
	if v {
		e.raw([]byte{1})
	} else {
		e.raw([]byte{0})
	}
}

// time writes t as seconds and nanoseconds, with a flag for the zero time ("not set").
func (e *snapEncoder) time(t time.Time) {
	e.bool(!t.IsZero())
	if !t.IsZero() {
		e.i64(t.Unix())
		e.i64(int64(t.Nanosecond()))
	}
}

func (e *snapEncoder) dur(d *time.Duration) {
	e.bool(d != nil)
	if d != nil {
		e.i64(int64(*d))
	}
}

// snapDecoder reads what snapEncoder wrote; the first error sticks and zero values follow.
type snapDecoder struct {
	r   snapReader
	err error
}

type snapReader interface {
	io.Reader
	io.ByteReader
}

// newSnapDecoder decodes r, buffering it unless it is buffered already (snapfile's body is:
// a second buffer would copy every byte of the ads once more).
func newSnapDecoder(r io.Reader) *snapDecoder {
	br, ok := r.(snapReader)
	if !ok {
		br = bufio.NewReaderSize(r, 1<<16)
	}
	return &snapDecoder{r: br}
}

func (d *snapDecoder) full(p []byte) {
	if d.err == nil {
		_, d.err = io.ReadFull(d.r, p)
	}
}

func (d *snapDecoder) uvar() uint64 {
	if d.err != nil {
		return 0
	}
	v, err := binary.ReadUvarint(d.r)
	d.err = err
	return v
}

// count reads a number of items; each takes at least a byte, so a corrupt count fails on
// reading rather than allocating.
func (d *snapDecoder) count() int {
	v := d.uvar()
	if v > math.MaxInt32 {
		d.fail("count %d", v)
		return 0
	}
	return int(v)
}

func (d *snapDecoder) i64() int64 {
	var b [8]byte
	d.full(b[:])
	return int64(binary.LittleEndian.Uint64(b[:]))
}

func (d *snapDecoder) str() string {
	n := d.uvar()
	if n > maxSnapString {
		d.fail("string of %d bytes", n)
	}
	if d.err != nil {
		return ""
	}
	b := make([]byte, n)
	d.full(b)
	return string(b)
}

func (d *snapDecoder) bool() bool {
	var b [1]byte
	d.full(b[:])
	if b[0] > 1 {
		d.fail("bool %d", b[0])
	}
	return b[0] == 1
}

func (d *snapDecoder) time() time.Time {
	if !d.bool() {
		return time.Time{}
	}
	sec, nsec := d.i64(), d.i64()
	return time.Unix(sec, nsec).UTC()
}

func (d *snapDecoder) dur() *time.Duration {
	if !d.bool() {
		return nil
	}
	v := time.Duration(d.i64())
	return &v
}

func (d *snapDecoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("catalog snapshot: "+format, args...)
	}
}
