package topn

import (
	"encoding/binary"
	"math/bits"
)

// vals are the three ranked counters of one id in one block, indexed by Metric.
type vals [numMetrics]int64

func (v *vals) add(d *vals) {
	for m := range v {
		v[m] += d[m]
	}
}

func (v *vals) isZero() bool { return *v == vals{} }

// frozen is an immutable block of (id number, vals) entries sorted by number, compressed so
// that a minute of ten million Zipf-distributed ads costs about three bytes per entry:
//
//	chunk  := entry{chunkLen}        (the last chunk may be shorter)
//	entry  := uvarint(gap<<numMetrics | mask) then zigzag varint of each metric whose mask bit is set
//
// gap is the number minus the previous entry's number (0 for a chunk's first entry, whose
// number is in first). Only non-zero counters are written, and all-zero entries not at all.
// A point lookup binary-searches first and decodes at most one chunk.
type frozen struct {
	n     int
	first []uint32 // number of each chunk's first entry
	off   []uint32 // start of each chunk in data
	data  []byte
	neg   vals // minus the smallest value of each metric, or 0 when none is negative
}

const chunkLen = 32

func (f *frozen) entries() int {
	if f == nil {
		return 0
	}
	return f.n
}

func (f *frozen) memBytes() int64 {
	if f == nil {
		return 0
	}
	return int64(cap(f.first))*4 + int64(cap(f.off))*4 + int64(cap(f.data)) + 96
}

// get returns the vals of number id and whether it has an entry.
func (f *frozen) get(id uint32) (vals, bool) {
	if f == nil || f.n == 0 {
		return vals{}, false
	}
	// The last chunk whose first number is <= id.
	lo, hi := 0, len(f.first)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if f.first[mid] <= id {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	c := lo - 1
	if c < 0 {
		return vals{}, false
	}
	p := int(f.off[c])
	end := len(f.data)
	if c+1 < len(f.off) {
		end = int(f.off[c+1])
	}
	cur := f.first[c]
	for p < end {
		h, k := binary.Uvarint(f.data[p:])
		p += k
		cur += uint32(h >> numMetrics)
		if cur > id {
			return vals{}, false
		}
		var v vals
		for m := 0; m < numMetrics; m++ {
			if h&(1<<m) != 0 {
				x, k := binary.Varint(f.data[p:])
				p += k
				v[m] = x
			}
		}
		if cur == id {
			return v, true
		}
	}
	return vals{}, false
}

// frozenIter walks a frozen block in number order.
type frozenIter struct {
	f     *frozen
	chunk int
	p     int
	cur   uint32
	id    uint32
	v     vals
}

func (f *frozen) iter() frozenIter { return frozenIter{f: f, chunk: -1} }

// next advances to the next entry (it.id, it.v) and reports whether there is one.
func (it *frozenIter) next() bool {
	f := it.f
	if f == nil || len(f.data) == 0 || it.p >= len(f.data) {
		return false
	}
	if it.chunk+1 < len(f.off) && it.p == int(f.off[it.chunk+1]) {
		it.chunk++
		it.cur = f.first[it.chunk]
	}
	h, k := binary.Uvarint(f.data[it.p:])
	it.p += k
	it.cur += uint32(h >> numMetrics)
	it.id = it.cur
	for m := 0; m < numMetrics; m++ {
		it.v[m] = 0
		if h&(1<<m) != 0 {
			x, k := binary.Varint(f.data[it.p:])
			it.p += k
			it.v[m] = x
		}
	}
	return true
}

// appendMetric appends the number and metric m of every entry whose metric m is not zero, in
// number order. It is brute force's gather, the loop a top query over many tied ids spends
// its time in, so it decodes in place: one varint for the header, the other metrics skipped
// by their continuation bits, no call per entry.
func (f *frozen) appendMetric(out []topItem, m int) []topItem {
	if f == nil {
		return out
	}
	data := f.data
	bit := uint64(1) << m
	below := bit - 1 // the metrics written before m
	for c, start := range f.off {
		p, end := int(start), len(data)
		if c+1 < len(f.off) {
			end = int(f.off[c+1])
		}
		cur := f.first[c]
		for p < end {
			h, k := binary.Uvarint(data[p:])
			p += k
			cur += uint32(h >> numMetrics)
			if h&bit == 0 {
				for n := bits.OnesCount64(h & (1<<numMetrics - 1)); n > 0; n-- {
					p = skipVarint(data, p)
				}
				continue
			}
			for n := bits.OnesCount64(h & below); n > 0; n-- {
				p = skipVarint(data, p)
			}
			x, k := binary.Varint(data[p:])
			p += k
			out = append(out, topItem{id: cur, v: x})
			for n := bits.OnesCount64(h &^ (below | bit) & (1<<numMetrics - 1)); n > 0; n-- {
				p = skipVarint(data, p)
			}
		}
	}
	return out
}

// skipVarint returns the offset after the varint at p.
func skipVarint(data []byte, p int) int {
	for data[p] >= 0x80 {
		p++
	}
	return p + 1
}

// frozenBuilder builds a frozen block from entries added in increasing number order.
type frozenBuilder struct {
	f    frozen
	prev uint32
}

func newFrozenBuilder(sizeHint int) *frozenBuilder {
	b := &frozenBuilder{}
	if sizeHint > 0 {
		b.f.data = make([]byte, 0, sizeHint*3)
		b.f.first = make([]uint32, 0, sizeHint/chunkLen+1)
		b.f.off = make([]uint32, 0, sizeHint/chunkLen+1)
	}
	return b
}

// add appends an entry; numbers must increase. All-zero entries are dropped.
func (b *frozenBuilder) add(id uint32, v *vals) {
	if v.isZero() {
		return
	}
	var gap uint32
	if b.f.n%chunkLen == 0 {
		b.f.first = append(b.f.first, id)
		b.f.off = append(b.f.off, uint32(len(b.f.data)))
	} else {
		gap = id - b.prev
	}
	b.prev = id
	var mask uint64
	for m := 0; m < numMetrics; m++ {
		if v[m] != 0 {
			mask |= 1 << m
		}
		if v[m] < 0 && -v[m] > b.f.neg[m] {
			b.f.neg[m] = -v[m]
		}
	}
	b.f.data = binary.AppendUvarint(b.f.data, uint64(gap)<<numMetrics|mask)
	for m := 0; m < numMetrics; m++ {
		if v[m] != 0 {
			b.f.data = binary.AppendVarint(b.f.data, v[m])
		}
	}
	b.f.n++
}

// finish returns the block, trimmed to size; nil when it is empty.
func (b *frozenBuilder) finish() *frozen {
	if b.f.n == 0 {
		return nil
	}
	f := b.f
	if cap(f.data)-len(f.data) > len(f.data)/8 {
		f.data = append([]byte(nil), f.data...)
	}
	if cap(f.first) > len(f.first)+len(f.first)/8 {
		f.first = append([]uint32(nil), f.first...)
		f.off = append([]uint32(nil), f.off...)
	}
	return &f
}
