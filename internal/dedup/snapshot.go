package dedup

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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
func (m *Memory) ReadKeys(r io.Reader, now time.Time) (n int64, err error) {
	nowMin := uint32(now.Unix() / 60)
	buf := make([]byte, 4096*snapEntry)
	for i := range m.shards {
		s := &m.shards[i]
		var cnt [4]byte
		if _, err := io.ReadFull(r, cnt[:]); err != nil {
			return n, fmt.Errorf("shard %d: %w", i, noEOF(err))
		}
		left := int(binary.LittleEndian.Uint32(cnt[:]))
		if len(s.slots) == 0 && left > 0 {
			// A hint only, bounded: a corrupt count is found by the checksum, not by memory.
			s.slots = make([]memSlot, min(left, 1<<18)*5/4+16)
		}
		for left > 0 {
			k := min(left, len(buf)/snapEntry)
			b := buf[:k*snapEntry]
			if _, err := io.ReadFull(r, b); err != nil {
				return n, fmt.Errorf("shard %d: %w", i, noEOF(err))
			}
			for j := 0; j < len(b); j += snapEntry {
				fp := fingerprint{binary.LittleEndian.Uint64(b[j:]), binary.LittleEndian.Uint64(b[j+8:])}
				exp := binary.LittleEndian.Uint32(b[j+16:])
				if fp[0]%memShards != uint64(i) {
					return n, fmt.Errorf("shard %d: key of shard %d", i, fp[0]%memShards)
				}
				if exp <= nowMin {
					continue
				}
				if s.put(fp.key(), exp) {
					n++
				}
			}
			left -= k
		}
	}
	m.keys.Add(n)
	return n, nil
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
