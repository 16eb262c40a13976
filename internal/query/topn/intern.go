package topn

import (
	"encoding/binary"
	"hash/maphash"
)

// internTable maps ids to dense uint32 numbers, so blocks store 4-byte numbers instead of
// strings. It holds no Go pointer per id (one byte arena, one offset per id, one slot word per
// slot), so ten million ids cost about 25 bytes each plus the id bytes, and the garbage
// collector never scans them. Numbers are never reused: an id keeps its number for the life of
// the index (see the package comment).
//
// An arena record is: length (1 byte), the id, its number (4 bytes, little endian). A slot
// points at the record, so a lookup touches the slot and one record: two cache misses in a
// table of ten million, not three.
type internTable struct {
	seed maphash.Seed
	// slots hold hash32<<32 | (record offset+1); 0 is empty. The stored hash half lets a
	// probe skip most mismatches without touching the arena and lets growth rehash without
	// rehashing the strings. An id's home slot comes from the same half by multiply-shift.
	slots []uint64
	recs  []uint32 // per number: its record's offset
	arena []byte
}

func newInternTable() *internTable {
	return &internTable{seed: maphash.MakeSeed(), slots: make([]uint64, 64)}
}

func (t *internTable) len() int { return len(t.recs) }

func (t *internTable) hash(id string) uint32 {
	return uint32(maphash.String(t.seed, id) >> 32)
}

func home(h uint32, n int) int { return int(uint64(h) * uint64(n) >> 32) }

// rec returns the id and number of the record at off.
func (t *internTable) rec(off uint32) ([]byte, uint32) {
	n := uint32(t.arena[off])
	id := t.arena[off+1 : off+1+n]
	num := binary.LittleEndian.Uint32(t.arena[off+1+n:])
	return id, num
}

// bytes returns the id of number i; the slice aliases the arena and is valid until the next
// intern.
func (t *internTable) bytes(i uint32) []byte {
	id, _ := t.rec(t.recs[i])
	return id
}

func (t *internTable) str(i uint32) string { return string(t.bytes(i)) }

// find returns the slot of id: the one holding it (found) or the empty one ending its probe.
func (t *internTable) find(id string, h uint32) (slot int, num uint32, found bool) {
	n := len(t.slots)
	for s := home(h, n); ; s = (s + 1) & (n - 1) {
		w := t.slots[s]
		if w == 0 {
			return s, 0, false
		}
		if uint32(w>>32) == h {
			if b, num := t.rec(uint32(w) - 1); string(b) == id {
				return s, num, true
			}
		}
	}
}

// lookup returns the number of id.
func (t *internTable) lookup(id string) (uint32, bool) {
	_, num, ok := t.find(id, t.hash(id))
	return num, ok
}

// intern returns the number of id, adding it if it is new. Ids are 1-255 bytes (the metric
// store's limit), and the arena stays below 4 GiB (about 300 million ids).
func (t *internTable) intern(id string) (num uint32, added bool) {
	h := t.hash(id)
	s, num, ok := t.find(id, h)
	if ok {
		return num, false
	}
	num = uint32(len(t.recs))
	off := uint32(len(t.arena))
	t.recs = append(t.recs, off)
	t.arena = append(t.arena, byte(len(id)))
	t.arena = append(t.arena, id...)
	t.arena = binary.LittleEndian.AppendUint32(t.arena, num)
	t.slots[s] = uint64(h)<<32 | uint64(off+1)
	if len(t.recs)*4 > len(t.slots)*3 {
		t.grow()
	}
	return num, true
}

func (t *internTable) grow() {
	old := t.slots
	n := len(old) * 2
	t.slots = make([]uint64, n)
	for _, w := range old {
		if w == 0 {
			continue
		}
		s := home(uint32(w>>32), n)
		for t.slots[s] != 0 {
			s = (s + 1) & (n - 1)
		}
		t.slots[s] = w
	}
}

// memBytes is the memory the table holds.
func (t *internTable) memBytes() int64 {
	return int64(cap(t.slots))*8 + int64(cap(t.recs))*4 + int64(cap(t.arena))
}
