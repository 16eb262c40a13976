package catalog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"unsafe"
)

// The ads' part of a snapshot holds the index as its shards hold it, so that loading it is
// reading bytes into fresh slots and chunks, with no per-ad hashing or inserting: at ten
// million ads re-inserting every ad took seconds, the copy a fraction of that.
//
// Layout: the hash seed (8 bytes), then for each shard in order:
//
//	chunks   each as its length (uvarint, 1..chunkSize) and its bytes; then a 0
//	nslots   uvarint; 0 for a shard without ads
//	n        uvarint, the ads in the shard
//	slots    nslots slot words, 8 bytes little-endian each, pointing into the chunks above
//
// The writer packs the live records afresh in slot order, so the file holds no garbage (the
// replaced records an update leaves) and a loaded shard starts compacted. Slot positions
// depend only on the seed and the table size, both kept, so the slot words stay valid once
// their offsets are rewritten.
//
// The checksum is verified only after the whole body is read, and a file can also be whole
// and wrong (written by a buggy version, or by hand), so the reader checks everything a
// lookup or a later write relies on: every slot word points at a record lying wholly in the
// chunk bytes read, records do not overlap, their lengths and campaign indexes are in range,
// the table has empty slots (a probe stops) and the counts agree. It allocates in proportion
// to the bytes it has read (every chunk but a shard's last is nearly full, and there are at
// most about four slots per ad), so a corrupt count fails on reading instead of allocating.

// maxRecLen bounds a record's length (recLen).
const maxRecLen = recHeader + 8 + 2*math.MaxUint8 + maxRecURL

// snapSlotsOK reports whether a shard of n ads with a table of nslots slots may be written to
// and read from a snapshot: the load factor put keeps (at most 0.75) and at most about four
// slots per ad, so that a corrupt slot count cannot allocate much more than the records read.
func snapSlotsOK(nslots, n int) bool {
	return nslots >= minSlots && n*4 <= nslots*3 && nslots <= max(minSlots, 4*n+4)
}

// littleEndian is whether slot words are laid out in memory as the file stores them.
var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// writeSnapshot writes the ads in the layout above and returns how many it wrote. Records
// naming a campaign at or past ncamp are left out: they were written after the campaigns
// were copied, so for a change after the snapshot's position, which the feed brings back.
//
// Each shard's slot words are copied under its lock; the records they point to are read
// outside it, as they are never written again (see the publication protocol), and neither
// are their chunks' directory entries.
func (x *adIndex) writeSnapshot(e *snapEncoder, ncamp uint32) (int, error) {
	e.i64(int64(x.seed))
	var slots []uint64
	chunk := new(adChunk)
	total := 0
	for i := range x.shards {
		sh := &x.shards[i]
		sh.mu.Lock()
		t := sh.tab.Load()
		slots = slots[:0]
		if t != nil {
			for j := range t.slots {
				slots = append(slots, t.slots[j].Load())
			}
		}
		sh.mu.Unlock()
		var n int
		slots, n = x.snapSlots(t, slots, ncamp)

		// Pack the records in slot order, writing each chunk once it is full.
		nchunks, pos := 0, 0
		for j, v := range slots {
			if v == 0 {
				continue
			}
			r := t.rec(v)
			l := recLen(r)
			if nchunks == 0 || pos+l > chunkSize {
				if nchunks == maxChunks {
					return total, errors.New("ad index: shard full")
				}
				if nchunks > 0 {
					e.uvar(uint64(pos))
					e.raw(chunk[:pos])
				}
				nchunks, pos = nchunks+1, 0
			}
			copy(chunk[pos:], r[:l])
			slots[j] = v>>32<<32 | uint64(nchunks-1)<<chunkBits | uint64(pos) + 1
			pos += l
		}
		if nchunks > 0 {
			e.uvar(uint64(pos))
			e.raw(chunk[:pos])
		}
		e.uvar(0)

		e.uvar(uint64(len(slots)))
		if len(slots) > 0 {
			e.uvar(uint64(n))
			// Through chunk, a buffer at hand, a chunk's worth of slot words at a time.
			for rest := slots; len(rest) > 0; {
				k := min(len(rest), chunkSize/8)
				for j, v := range rest[:k] {
					binary.LittleEndian.PutUint64(chunk[8*j:], v)
				}
				e.raw(chunk[:8*k])
				rest = rest[k:]
			}
		}
		total += n
		if e.err != nil {
			return total, e.err
		}
	}
	return total, nil
}

// snapSlots returns the slot words to write for table t, whose words are slots: without the
// records naming a campaign at or past ncamp, and the number of ads left. Removing a word
// from a linear-probing table would cut the probe chains through it, so when any is dropped
// (rarely: only while campaigns are created during a snapshot) the rest go into a fresh table,
// also when the table is larger than snapSlotsOK allows. A shard without ads gets no slots.
func (x *adIndex) snapSlots(t *adTable, slots []uint64, ncamp uint32) ([]uint64, int) {
	n := 0
	for _, v := range slots {
		if v != 0 && binary.LittleEndian.Uint32(t.rec(v)) < ncamp {
			n++
		}
	}
	if n == 0 {
		return nil, 0
	}
	occupied := 0
	for _, v := range slots {
		if v != 0 {
			occupied++
		}
	}
	if occupied == n && snapSlotsOK(len(slots), n) {
		return slots, n
	}
	size := len(slots)
	if !snapSlotsOK(size, n) {
		size = max(minSlots, 2*(n+1)) // as put grows a table
	}
	out := make([]uint64, size)
	for _, v := range slots {
		if v == 0 || binary.LittleEndian.Uint32(t.rec(v)) >= ncamp {
			continue
		}
		j := home(x.hash(view(recID(t.rec(v)))), size)
		for out[j] != 0 {
			if j++; j == size {
				j = 0
			}
		}
		out[j] = v
	}
	return out, n
}

// readSnapshot loads the ads written by writeSnapshot into x, which must be empty, checking
// them as the comment at the top of this file says. Records must name a campaign below ncamp.
func (x *adIndex) readSnapshot(d *snapDecoder, ncamp uint32) error {
	if x.len() != 0 {
		return errors.New("ad index: snapshot loaded into a used index")
	}
	x.seed = uint64(d.i64())
	var used []int // bytes read into each chunk
	for i := range x.shards {
		var chunks []*adChunk
		used = used[:0]
		nbytes := 0
		for {
			l := d.uvar()
			if d.err != nil {
				return d.err
			}
			if l == 0 {
				break
			}
			// The writer moves on to a new chunk only when the next record does not fit, so
			// every chunk but the last is nearly full: a corrupt file cannot make many 64 KiB
			// chunks out of a few bytes.
			if l > chunkSize || len(chunks) == maxChunks || len(used) > 0 && used[len(used)-1] <= chunkSize-maxRecLen {
				return fmt.Errorf("ad index snapshot: shard %d: chunk %d of %d bytes", i, len(chunks), l)
			}
			ch := new(adChunk)
			d.full(ch[:l])
			chunks = append(chunks, ch)
			used = append(used, int(l))
			nbytes += int(l)
		}
		nslots := d.count()
		if d.err != nil {
			return d.err
		}
		if nslots == 0 {
			if len(chunks) > 0 {
				return fmt.Errorf("ad index snapshot: shard %d: %d chunks and no slots", i, len(chunks))
			}
			continue
		}
		n := d.count()
		if d.err != nil {
			return d.err
		}
		// Each record has a header and an id: n is bounded by the bytes read, nslots by n.
		if n == 0 || n > nbytes/(recHeader+1) || !snapSlotsOK(nslots, n) {
			return fmt.Errorf("ad index snapshot: shard %d: %d ads in %d slots and %d bytes", i, n, nslots, nbytes)
		}
		t := &adTable{slots: make([]atomic.Uint64, nslots), chunks: make([]*adChunk, max(4, 2*len(chunks)))}
		copy(t.chunks, chunks)
		// Plain writes to the words are safe: t is published only after them (publish).
		words := unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(t.slots))), nslots)
		d.full(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(words))), 8*nslots))
		if d.err != nil {
			return d.err
		}
		if !littleEndian {
			for j, v := range words {
				words[j] = binary.LittleEndian.Uint64(unsafe.Slice((*byte)(unsafe.Pointer(&v)), 8))
			}
		}
		written, err := checkSnapSlots(words, chunks, used, n, ncamp)
		if err != nil {
			return fmt.Errorf("ad index snapshot: shard %d: %w", i, err)
		}

		sh := &x.shards[i]
		sh.mu.Lock()
		sh.nchunks, sh.pos, sh.written, sh.garbage, sh.n = len(chunks), used[len(used)-1], written, 0, n
		x.bytes.Add(int64(len(chunks)) * chunkSize)
		x.publish(sh, nil, t)
		sh.mu.Unlock()
		x.live.Add(int64(n))
	}
	return d.err
}

// checkSnapSlots checks a shard's slot words against its chunks (used[c] bytes of chunks[c]
// were read): each occupied word points at a well-formed record lying wholly in read bytes,
// after the previous word's record (the writer packs them in slot order, so they never
// overlap), naming a campaign below ncamp; there are n of them. It returns the records' bytes.
func checkSnapSlots(words []uint64, chunks []*adChunk, used []int, n int, ncamp uint32) (int, error) {
	count, written, next := 0, 0, 0 // next: the lowest offset the next record may have
	for _, v := range words {
		if v == 0 {
			continue
		}
		off := int(uint32(v)) - 1
		c, p := off>>chunkBits, off&(chunkSize-1)
		if off < next || c >= len(chunks) || p+recHeader > used[c] {
			return 0, fmt.Errorf("slot word %#x out of place", v)
		}
		r := chunks[c][p:used[c]]
		if r[4] == 0 || int(binary.LittleEndian.Uint16(r[6:8])&^recHasBid) > maxRecURL {
			return 0, fmt.Errorf("record at %#x malformed", off)
		}
		l := recLen(r)
		if l > len(r) {
			return 0, fmt.Errorf("record at %#x of %d bytes past the chunk's %d", off, l, used[c])
		}
		if camp := binary.LittleEndian.Uint32(r); camp >= ncamp {
			return 0, fmt.Errorf("record at %#x names campaign %d of %d", off, camp, ncamp)
		}
		count++
		written += l
		next = off + l
	}
	if count != n {
		return 0, fmt.Errorf("%d ads in the slots, %d in the header", count, n)
	}
	return written, nil
}
