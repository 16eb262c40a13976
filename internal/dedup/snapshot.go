package dedup

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
)

// The Memory store's part of a key snapshot (see ingest.WriteKeySnapshot, which decides which
// log offsets a snapshot reflects): the committed fingerprints with the minute their window
// ends, shard by shard. Keys in flight are left out: whether their events are durable is not
// known yet, and the log after the snapshot's offsets says it on the next start.

// snapEntry is one key on disk: fingerprint (16 bytes, of which the store keeps 96 bits: the
// low 32 bits of the second word are written as zero and ignored on reading) and expiry
// minute (4 bytes).
const snapEntry = 20

// Window is the dedup window the store was made with.
func (m *Memory) Window() time.Duration { return m.window }

// Entries calls fn for every committed key whose window has not ended at now, one shard at a
// time; fn runs with the shard locked, so it must not call into m.
func (m *Memory) Entries(now time.Time, fn func(fp [2]uint64, expiryMinute uint32)) {
	nowMin := uint32(now.Unix() / 60)
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		for _, e := range s.slots {
			if _, inFlight := s.pending[e.key()]; inFlight || e.key() == (memKey{}) || e.exp <= nowMin {
				continue
			}
			fn(e.key().fingerprint(), e.exp)
		}
		s.mu.Unlock()
	}
}

// InFlightSet is the set of keys that were reserved and neither committed nor released at one
// moment.
type InFlightSet struct{ fps []memKey }

// InFlightKeys returns the keys in flight now.
func (m *Memory) InFlightKeys() *InFlightSet {
	var f InFlightSet
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		for k := range s.pending {
			f.fps = append(f.fps, k)
		}
		s.mu.Unlock()
	}
	return &f
}

// Len is the number of keys in the set.
func (f *InFlightSet) Len() int { return len(f.fps) }

// Settled reports whether none of f's keys is in flight any more (each was committed or
// released since; a key reserved again meanwhile counts as still in flight, which only makes
// the caller wait longer).
func (m *Memory) Settled(f *InFlightSet) bool {
	for _, k := range f.fps {
		s := &m.shards[k.lo%memShards]
		s.mu.Lock()
		_, inFlight := s.pending[k]
		s.mu.Unlock()
		if inFlight {
			return false
		}
	}
	return true
}

// WriteKeys writes the committed keys whose window has not ended at now: per shard, a count
// (uint32) and the entries. A shard's entries are copied under its lock and written after, so
// reservations wait for one copy at most.
func (m *Memory) WriteKeys(w io.Writer, now time.Time) (n int64, err error) {
	nowMin := uint32(now.Unix() / 60)
	var buf []byte
	for i := range m.shards {
		s := &m.shards[i]
		buf = append(buf[:0], 0, 0, 0, 0)
		s.mu.Lock()
		for _, e := range s.slots {
			if _, inFlight := s.pending[e.key()]; inFlight || e.key() == (memKey{}) || e.exp <= nowMin {
				continue
			}
			fp := e.key().fingerprint()
			buf = binary.LittleEndian.AppendUint64(buf, fp[0])
			buf = binary.LittleEndian.AppendUint64(buf, fp[1])
			buf = binary.LittleEndian.AppendUint32(buf, e.exp)
		}
		s.mu.Unlock()
		count := (len(buf) - 4) / snapEntry
		binary.LittleEndian.PutUint32(buf[:4], uint32(count))
		if _, err := w.Write(buf); err != nil {
			return n, err
		}
		n += int64(count)
	}
	return n, nil
}

// ReadKeys adds the keys WriteKeys wrote to m, skipping those whose window ended before now.
// m should be a new store: on an error it holds part of the snapshot and must be dropped.
//
// A shard's entries are written in the order of its table's slots, which is nearly the order
// of their fingerprints' first word (a key's home slot rises with it). Read back in that
// order into a new table sized for them, each entry's place is known without probing: its
// home, or the slot after the previous entry if that is further (readSorted, placeSorted).
// A shard too large to read at once takes the general path.
func (m *Memory) ReadKeys(r io.Reader, now time.Time) (n int64, err error) {
	nowMin := uint32(now.Unix() / 60)
	var buf []byte
	var scratch []memSlot
	for i := range m.shards {
		s := &m.shards[i]
		var cnt [4]byte
		if _, err := io.ReadFull(r, cnt[:]); err != nil {
			return n, fmt.Errorf("shard %d: %w", i, noEOF(err))
		}
		left := int(binary.LittleEndian.Uint32(cnt[:]))
		if left <= maxSortedRead && s.used == 0 {
			// Bounded: a corrupt count is found by the checksum, not by memory.
			buf = slices.Grow(buf[:0], left*snapEntry)[:left*snapEntry]
			if _, err := io.ReadFull(r, buf); err != nil {
				return n, fmt.Errorf("shard %d: %w", i, noEOF(err))
			}
			added, err := s.readSorted(buf, uint64(i), nowMin, &scratch)
			n += added
			if err != nil {
				return n, fmt.Errorf("shard %d: %w", i, err)
			}
			continue
		}
		if len(s.slots) == 0 && left > 0 {
			s.slots = make([]memSlot, min(left, maxSortedRead)*5/4+16) // a hint, bounded
		}
		buf = slices.Grow(buf[:0], 4096*snapEntry)[:4096*snapEntry]
		for left > 0 {
			k := min(left, len(buf)/snapEntry)
			b := buf[:k*snapEntry]
			if _, err := io.ReadFull(r, b); err != nil {
				return n, fmt.Errorf("shard %d: %w", i, noEOF(err))
			}
			added, err := s.putEntries(b, uint64(i), nowMin)
			n += added
			if err != nil {
				return n, fmt.Errorf("shard %d: %w", i, err)
			}
			left -= k
		}
	}
	m.keys.Add(n)
	return n, nil
}

// maxSortedRead is the most entries of one shard ReadKeys reads at once (5 MiB): 67 million
// keys in all, and a corrupt count cannot make it allocate more.
const maxSortedRead = 1 << 18

// snapEntryAt decodes the j-th entry of b.
func snapEntryAt(b []byte, j int) (fingerprint, uint32) {
	b = b[j*snapEntry:]
	return fingerprint{binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint64(b[8:])}, binary.LittleEndian.Uint32(b[16:])
}

// putEntries puts the entries in b into shard i, whatever their order, and returns how many
// keys were new.
func (s *memShard) putEntries(b []byte, shard uint64, nowMin uint32) (n int64, err error) {
	for j := range len(b) / snapEntry {
		fp, exp := snapEntryAt(b, j)
		if fp[0]%memShards != shard {
			return n, fmt.Errorf("key of shard %d", fp[0]%memShards)
		}
		if exp > nowMin && s.putLater(fp.key(), exp) {
			n++
		}
	}
	return n, nil
}

// putLater is put for a snapshot's entry: of a key written twice (which WriteKeys never
// does), the later expiry is kept, whatever the order it is read in.
func (s *memShard) putLater(k memKey, exp uint32) bool {
	if old, ok := s.lookup(k); ok {
		exp = max(exp, old)
	}
	return s.put(k, exp)
}

// readSorted fills the empty shard with the entries in b, all of its snapshot. It decodes the
// live ones into scratch, brings them into the order of their first words (they are in it
// but for the wrapped run, moved to the end, and keys sharing a home slot, whose order a table
// of another size may swap: a few neighbours' moves), and places them with placeSorted. A
// shard they are much further from that order in is put the general way.
func (s *memShard) readSorted(b []byte, shard uint64, nowMin uint32, scratch *[]memSlot) (int64, error) {
	es := (*scratch)[:0]
	for j := range len(b) / snapEntry {
		fp, exp := snapEntryAt(b, j)
		if fp[0]%memShards != shard {
			return 0, fmt.Errorf("key of shard %d", fp[0]%memShards)
		}
		if exp > nowMin {
			k := fp.key()
			es = append(es, memSlot{k.lo, k.hi, exp})
		}
	}
	*scratch = es
	if len(es) == 0 {
		return 0, nil
	}
	s.slots = make([]memSlot, len(es)*5/4+16) // at most 80% full: no growth while reading
	// The wrapped run ends at a fall of more than half the words' range: from homes near the
	// table's end to homes near its start. Keys sharing a home are far closer than that.
	for j := 1; j < len(es); j++ {
		if es[j-1].lo-es[j].lo > 1<<63 && es[j-1].lo > es[j].lo {
			slices.Reverse(es[:j])
			slices.Reverse(es[j:])
			slices.Reverse(es)
			break
		}
	}
	if !sortNearlySorted(es, 4*len(es)+64) {
		var n int64
		for _, e := range es {
			if s.putLater(e.key(), e.exp) {
				n++
			}
		}
		return n, nil
	}
	var n int64
	last := -1 // slot of the entry placed last
	for _, e := range es {
		added, at := s.placeSorted(e.key(), e.exp, last)
		if added {
			n++
		}
		last = at
	}
	return n, nil
}

// sortNearlySorted sorts es by first word with an insertion sort that gives up (false, es
// then in another order of the same entries) after maxMoves moves.
func sortNearlySorted(es []memSlot, maxMoves int) bool {
	moves := 0
	for j := 1; j < len(es); j++ {
		e := es[j]
		i := j
		for ; i > 0 && es[i-1].lo > e.lo; i-- {
			es[i] = es[i-1]
		}
		es[i] = e
		if moves += j - i; moves > maxMoves {
			return false
		}
	}
	return true
}

// placeSorted puts k, whose first word is at least that of every key in the table, into a
// table that has only ever been filled this way, the last of them into slot last (-1 before
// the first), and returns whether k is new and the slot it is in. Each key so placed lies at
// its home or right after the one before, so slots from a key's home up to it are full and
// their keys' homes are not after its own: the table's order. A key that would pass the
// table's end is put the general way, and so is every one after it (last is then past the
// end).
func (s *memShard) placeSorted(k memKey, exp uint32, last int) (added bool, at int) {
	if last >= len(s.slots) {
		return s.putLater(k, exp), len(s.slots)
	}
	// The same key was placed last or just before it (equal first words are adjacent).
	for j := last; j >= 0 && s.slots[j].lo == k.lo; j-- {
		if s.slots[j].key() == k {
			s.slots[j].exp = max(s.slots[j].exp, exp)
			return false, last
		}
	}
	at = max(s.home(k), last+1)
	if at == len(s.slots) {
		return s.putLater(k, exp), len(s.slots)
	}
	s.slots[at] = memSlot{k.lo, k.hi, exp}
	s.used++
	return true, at
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
