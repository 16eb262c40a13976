package ingest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/adpulse/adpulse/internal/dedup"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/snapfile"
	"github.com/cespare/xxhash/v2"
	"github.com/cockroachdb/pebble/vfs"
)

// Key snapshots: the embedded dedup store written to a file together with the log offsets it
// reflects, so a start loads it and reads only the log after those offsets instead of the
// whole dedup window of the log.
//
// Which offsets a snapshot reflects. A key is committed after its event is durable, so the
// store alone never says up to where in the log it is complete: an event may be durable
// while its key is still in flight. A snapshot therefore first takes every partition's end
// offset, then the keys in flight at that moment, waits until each of those has been
// committed or released, and only then copies the committed keys. Every event below the end
// offsets had its key reserved before they were taken, so by the copy its key is committed
// (and copied), or released (its event is not durable), or its window has ended. Keys copied
// for events past the offsets are read again from the tail, which changes nothing.
//
// What makes a snapshot unusable (the start then rebuilds from the log, as without one):
// none, torn or corrupt (snapfile's checksum), another window or partition count, written
// later than now by the clock, offsets past the end of the log, or an anchor mismatch: the
// hash of the message just before each partition's offset, which tells a log that was
// replaced or truncated under the snapshot from the one it was taken of.

const (
	keySnapshotKind    = "dedup-keys"
	keySnapshotVersion = 2 // 2: fingerprints of 96 bits (the low 32 bits of the second word zero)
	// maxSnapshotPartitions bounds the partition count read from a snapshot.
	maxSnapshotPartitions = 1 << 16
)

// KeySnapshot is where a key snapshot lives and what it is taken of.
type KeySnapshot struct {
	FS     vfs.FS // vfs.Default in production; a strict in-memory one in crash tests
	Path   string
	Log    eventlog.Log
	Logger *slog.Logger
	// SettleTimeout bounds the wait for the keys in flight (default 5 s): a write that
	// times out is skipped, and the previous snapshot stays.
	SettleTimeout time.Duration
}

// snapHeader is what a key snapshot says about the log.
type snapHeader struct {
	written time.Time
	window  time.Duration
	offsets []int64
	anchors []uint64
}

// KeySnapshotStats describes the last snapshot written or loaded.
type KeySnapshotStats struct {
	Keys    int64
	Offsets []int64 // per partition: the log offsets the snapshot reflects
	Took    time.Duration
}

// Write takes a snapshot of mem at now and replaces the file with it.
func (s KeySnapshot) Write(ctx context.Context, mem *dedup.Memory, now time.Time) (KeySnapshotStats, error) {
	t0 := time.Now()
	h := snapHeader{written: now, window: mem.Window()}
	for p := 0; p < s.Log.Partitions(); p++ {
		_, end, err := s.Log.Offsets(ctx, p)
		if err != nil {
			return KeySnapshotStats{}, fmt.Errorf("key snapshot: offsets of partition %d: %w", p, err)
		}
		anchor, err := anchorAt(ctx, s.Log, p, end)
		if err != nil {
			return KeySnapshotStats{}, fmt.Errorf("key snapshot: %w", err)
		}
		h.offsets = append(h.offsets, end)
		h.anchors = append(h.anchors, anchor)
	}
	if err := s.settle(ctx, mem); err != nil {
		return KeySnapshotStats{}, err
	}
	var n int64
	err := snapfile.Write(s.FS, s.Path, keySnapshotKind, keySnapshotVersion, func(w io.Writer) error {
		if err := h.write(w); err != nil {
			return err
		}
		var err error
		n, err = mem.WriteKeys(w, now)
		return err
	})
	if err != nil {
		return KeySnapshotStats{}, fmt.Errorf("key snapshot: %w", err)
	}
	return KeySnapshotStats{Keys: n, Offsets: h.offsets, Took: time.Since(t0)}, nil
}

// settle waits until the keys in flight now are committed or released.
func (s KeySnapshot) settle(ctx context.Context, mem *dedup.Memory) error {
	f := mem.InFlightKeys()
	if f.Len() == 0 {
		return nil
	}
	timeout := s.SettleTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !mem.Settled(f) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("key snapshot: %d keys still in flight after %v", f.Len(), timeout)
		case <-tick.C:
		}
	}
	return nil
}

// Loaded is the outcome of Load.
type Loaded struct {
	Keys *dedup.Memory
	// Offsets are those of the snapshot used, nil when the keys were rebuilt from the log.
	Offsets []int64
	Events  int64 // log events read (the tail after the snapshot, or the whole window)
	// Why is why no snapshot was used ("" when one was).
	Why string
}

// Load returns the dedup store as of now: the snapshot and the log after it, or, when the
// snapshot is missing or cannot be used, the store rebuilt from the log (RestoreKeys).
func (s KeySnapshot) Load(ctx context.Context, window time.Duration, now time.Time) (Loaded, error) {
	mem, offsets, err := s.read(ctx, window, now)
	if err != nil {
		why := "no snapshot"
		if !errors.Is(err, snapfile.ErrNotExist) {
			why = err.Error()
			s.Logger.Warn("dedup key snapshot not used; rebuilding the keys from the log", "file", s.Path, "reason", err)
		}
		mem = dedup.NewMemory(window)
		n, err := RestoreKeys(ctx, s.Log, mem, window, now, s.Logger)
		return Loaded{Keys: mem, Events: n, Why: why}, err
	}
	from := now.Add(-window)
	tail := slices.Clone(offsets)
	for p, off := range tail {
		// Events appended before the window began have windows that ended; skip them.
		if first, err := s.Log.OffsetForTime(ctx, p, from); err != nil {
			return Loaded{}, fmt.Errorf("restore keys: partition %d: %w", p, err)
		} else if first > off {
			tail[p] = first
		}
	}
	n, err := restoreFrom(ctx, s.Log, mem, tail, s.Logger)
	if err != nil {
		return Loaded{}, err
	}
	return Loaded{Keys: mem, Offsets: offsets, Events: n}, nil
}

// read loads the snapshot into a new store and returns the offsets its tail starts at.
func (s KeySnapshot) read(ctx context.Context, window time.Duration, now time.Time) (*dedup.Memory, []int64, error) {
	mem := dedup.NewMemory(window)
	var h snapHeader
	err := snapfile.Read(s.FS, s.Path, keySnapshotKind, keySnapshotVersion, func(r io.Reader) error {
		if err := h.read(r); err != nil {
			return err
		}
		_, err := mem.ReadKeys(r, now)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	switch {
	case h.window != window:
		return nil, nil, fmt.Errorf("taken with a dedup window of %v, now %v", h.window, window)
	case len(h.offsets) != s.Log.Partitions():
		return nil, nil, fmt.Errorf("taken of %d partitions, the log has %d", len(h.offsets), s.Log.Partitions())
	case h.written.After(now):
		return nil, nil, fmt.Errorf("written at %v, after now (%v) by the clock", h.written, now)
	}
	for p, off := range h.offsets {
		_, end, err := s.Log.Offsets(ctx, p)
		if err != nil {
			return nil, nil, fmt.Errorf("offsets of partition %d: %w", p, err)
		}
		if off > end {
			return nil, nil, fmt.Errorf("partition %d: taken at offset %d, past the log's end %d", p, off, end)
		}
		anchor, err := anchorAt(ctx, s.Log, p, off)
		if err != nil {
			return nil, nil, err
		}
		if anchor != h.anchors[p] {
			return nil, nil, fmt.Errorf("partition %d: the message before offset %d is not the one the snapshot was taken after", p, off)
		}
	}
	return mem, h.offsets, nil
}

// anchorAt is the hash of the value of the message at offset-1 of partition p (0 for offset
// 0): what tells the log a snapshot was taken of from another one with the same offsets.
func anchorAt(ctx context.Context, log eventlog.Log, p int, offset int64) (uint64, error) {
	if offset == 0 {
		return 0, nil
	}
	msgs, err := log.Read(ctx, p, offset-1, 1)
	if err != nil {
		return 0, fmt.Errorf("read partition %d at %d: %w", p, offset-1, err)
	}
	if len(msgs) == 0 || msgs[0].Offset != offset-1 {
		return 0, fmt.Errorf("partition %d: no message at %d", p, offset-1)
	}
	return xxhash.Sum64(msgs[0].Value) | 1, nil // never 0, the anchor of an empty partition
}

func (h *snapHeader) write(w io.Writer) error {
	b := binary.LittleEndian.AppendUint64(nil, uint64(h.written.UnixNano()))
	b = binary.LittleEndian.AppendUint64(b, uint64(h.window))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(h.offsets)))
	for p := range h.offsets {
		b = binary.LittleEndian.AppendUint64(b, uint64(h.offsets[p]))
		b = binary.LittleEndian.AppendUint64(b, h.anchors[p])
	}
	_, err := w.Write(b)
	return err
}

func (h *snapHeader) read(r io.Reader) error {
	var b [20]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return fmt.Errorf("header: %w", err)
	}
	h.written = time.Unix(0, int64(binary.LittleEndian.Uint64(b[:8])))
	h.window = time.Duration(binary.LittleEndian.Uint64(b[8:16]))
	n := binary.LittleEndian.Uint32(b[16:20])
	if n > maxSnapshotPartitions {
		return fmt.Errorf("header: %d partitions", n)
	}
	h.offsets, h.anchors = make([]int64, n), make([]uint64, n)
	for p := range h.offsets {
		var e [16]byte
		if _, err := io.ReadFull(r, e[:]); err != nil {
			return fmt.Errorf("header: %w", err)
		}
		h.offsets[p] = int64(binary.LittleEndian.Uint64(e[:8]))
		h.anchors[p] = binary.LittleEndian.Uint64(e[8:])
		if h.offsets[p] < 0 {
			return fmt.Errorf("header: partition %d at offset %d", p, h.offsets[p])
		}
	}
	return nil
}

// KeySnapshotter writes key snapshots while the process runs: when the log has grown by
// MinEvents since the last one (no sooner than twenty times the last write took, so a large
// store is not rewritten back to back, and no sooner than MinGap) or Interval has passed with any growth, and once more
// when it stops (after ingest has drained), so a clean restart reads no tail at all.
type KeySnapshotter struct {
	snap KeySnapshot
	mem  *dedup.Memory
	now  func() time.Time
	// Interval is the longest a snapshot lags the log (while it grows); MinEvents the growth
	// that makes one due sooner; Check how often that is looked at.
	// MinGap is the least time between two snapshots due to growth: a snapshot rewrites every
	// key and syncs it, on the disk the log syncs to.
	Interval  time.Duration
	MinEvents int64
	MinGap    time.Duration
	Check     time.Duration

	mu       sync.Mutex
	offsets  []int64 // of the last snapshot (nil: none usable yet)
	lastAt   time.Time
	lastTook time.Duration
	lastKeys int64
	writes   int64
	failures int64
}

// NewKeySnapshotter returns a snapshotter of mem. offsets are those of the snapshot mem was
// loaded from (nil after a rebuild: a snapshot is then written at the first check).
func NewKeySnapshotter(s KeySnapshot, mem *dedup.Memory, offsets []int64, now func() time.Time) *KeySnapshotter {
	return &KeySnapshotter{snap: s, mem: mem, now: now, offsets: offsets, lastAt: now(),
		Interval: time.Minute, MinEvents: 20_000, MinGap: 10 * time.Second, Check: time.Second}
}

// KeySnapshotterStats are the snapshotter's figures.
type KeySnapshotterStats struct {
	Writes, Failures int64
	LastKeys         int64
	LastTook         time.Duration
	LastAt           time.Time // zero before the first write
}

// Stats returns the snapshotter's figures.
func (k *KeySnapshotter) Stats() KeySnapshotterStats {
	k.mu.Lock()
	defer k.mu.Unlock()
	st := KeySnapshotterStats{Writes: k.writes, Failures: k.failures, LastKeys: k.lastKeys, LastTook: k.lastTook}
	if k.writes > 0 {
		st.LastAt = k.lastAt
	}
	return st
}

// Run writes snapshots until ctx ends, then writes the last one. A failed write is logged
// and counted, never fatal: the previous snapshot, or a rebuild from the log, still gives
// the right keys on the next start.
func (k *KeySnapshotter) Run(ctx context.Context) error {
	t := time.NewTicker(k.Check)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if grown, err := k.grown(fctx); err == nil && grown > 0 {
				k.write(fctx)
			}
			return nil
		case <-t.C:
		}
		grown, err := k.grown(ctx)
		if err != nil || grown == 0 {
			continue
		}
		k.mu.Lock()
		since := k.now().Sub(k.lastAt)
		due := k.offsets == nil || since >= k.Interval || (grown >= k.MinEvents && since >= max(k.MinGap, 20*k.lastTook))
		k.mu.Unlock()
		if due {
			k.write(ctx)
		}
	}
}

// grown is how many messages the log has past the last snapshot's offsets.
func (k *KeySnapshotter) grown(ctx context.Context) (int64, error) {
	k.mu.Lock()
	offsets := k.offsets
	k.mu.Unlock()
	var n int64
	for p := 0; p < k.snap.Log.Partitions(); p++ {
		_, end, err := k.snap.Log.Offsets(ctx, p)
		if err != nil {
			return 0, err
		}
		if offsets == nil || p >= len(offsets) {
			n += end + 1 // no snapshot yet: always due
		} else {
			n += end - offsets[p]
		}
	}
	return n, nil
}

func (k *KeySnapshotter) write(ctx context.Context) {
	st, err := k.snap.Write(ctx, k.mem, k.now())
	k.mu.Lock()
	defer k.mu.Unlock()
	if err != nil {
		k.failures++
		if ctx.Err() == nil {
			k.snap.Logger.Warn("dedup key snapshot not written; the previous one stays", "file", k.snap.Path, "err", err)
		}
		return
	}
	k.offsets, k.lastAt, k.lastTook, k.lastKeys = st.Offsets, k.now(), st.Took, st.Keys
	k.writes++
	k.snap.Logger.Debug("dedup key snapshot written", "keys", st.Keys, "took", st.Took)
}
