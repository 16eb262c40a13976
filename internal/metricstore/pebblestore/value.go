package pebblestore

import (
	"encoding/binary"
	"errors"
	"io"
	"math/bits"
	"sync"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/cockroachdb/pebble"
)

// A row value is a sequence of entries in ascending bucket order, each a bucket byte (below
// maxBuckets) and the counts of that bucket. Counts layout: a flags byte saying which
// counters follow, then each present counter as a zigzag varint in flag order; reasons as a
// uvarint count of (reason byte, varint) pairs; interactions as a uvarint count of (uvarint
// length, name, varint) triples. Absent counters are zero, so the common impression-only
// bucket is 3 bytes with its bucket byte.
const (
	flagImpressions = 1 << iota
	flagClicks
	flagInvalid
	flagSpend
	flagReasons
	flagInteractions
	flagConversions // conversions, their value, view conversions, their value: four varints
	flagAll         = 1<<iota - 1
)

var errCorruptValue = errors.New("pebblestore: corrupt value")

// maxBuckets bounds the buckets of a row (resolution.perPart), so a merger can sum a row in a
// fixed array.
const maxBuckets = 64

// appendCounts appends the encoding of c to b.
func appendCounts(b []byte, c *metricstore.Counts) []byte {
	var flags byte
	if c.Impressions != 0 {
		flags |= flagImpressions
	}
	if c.Clicks != 0 {
		flags |= flagClicks
	}
	if c.InvalidClicks != 0 {
		flags |= flagInvalid
	}
	if c.SpendMicros != 0 {
		flags |= flagSpend
	}
	if len(c.InvalidByReason) != 0 {
		flags |= flagReasons
	}
	if len(c.Interactions) != 0 {
		flags |= flagInteractions
	}
	if c.Conversions != 0 || c.ConversionValueMicros != 0 || c.ViewConversions != 0 || c.ViewConversionValueMicros != 0 {
		flags |= flagConversions
	}
	b = append(b, flags)
	if flags&flagImpressions != 0 {
		b = binary.AppendVarint(b, c.Impressions)
	}
	if flags&flagClicks != 0 {
		b = binary.AppendVarint(b, c.Clicks)
	}
	if flags&flagInvalid != 0 {
		b = binary.AppendVarint(b, c.InvalidClicks)
	}
	if flags&flagSpend != 0 {
		b = binary.AppendVarint(b, c.SpendMicros)
	}
	if flags&flagReasons != 0 {
		b = binary.AppendUvarint(b, uint64(len(c.InvalidByReason)))
		for r, n := range c.InvalidByReason {
			b = append(b, byte(r))
			b = binary.AppendVarint(b, n)
		}
	}
	if flags&flagInteractions != 0 {
		b = binary.AppendUvarint(b, uint64(len(c.Interactions)))
		for name, n := range c.Interactions {
			b = binary.AppendUvarint(b, uint64(len(name)))
			b = append(b, name...)
			b = binary.AppendVarint(b, n)
		}
	}
	if flags&flagConversions != 0 {
		for _, n := range [...]int64{c.Conversions, c.ConversionValueMicros, c.ViewConversions, c.ViewConversionValueMicros} {
			b = binary.AppendVarint(b, n)
		}
	}
	return b
}

// addCounts decodes the counts at the start of v and adds them to c, or only skips them when
// c is nil. It returns the bytes read, and allocates only for map entries c did not have.
func addCounts(c *metricstore.Counts, v []byte) (int, error) {
	if len(v) == 0 || v[0]&^flagAll != 0 {
		return 0, errCorruptValue
	}
	all := len(v)
	flags := v[0]
	v = v[1:]
	next := func() (int64, bool) {
		x, n := binary.Varint(v)
		if n <= 0 {
			return 0, false
		}
		v = v[n:]
		return x, true
	}
	var skip metricstore.Counts
	if c == nil {
		c = &skip // scalars only: maps below are not touched when skipping
	}
	for _, f := range [...]struct {
		bit byte
		p   *int64
	}{{flagImpressions, &c.Impressions}, {flagClicks, &c.Clicks}, {flagInvalid, &c.InvalidClicks}, {flagSpend, &c.SpendMicros}} {
		if flags&f.bit == 0 {
			continue
		}
		x, ok := next()
		if !ok {
			return 0, errCorruptValue
		}
		*f.p += x
	}
	if flags&flagReasons != 0 {
		cnt, n := binary.Uvarint(v)
		if n <= 0 || cnt > uint64(len(v)) {
			return 0, errCorruptValue
		}
		v = v[n:]
		if c != &skip && c.InvalidByReason == nil {
			c.InvalidByReason = make(map[event.Reason]int64, cnt)
		}
		for range cnt {
			if len(v) == 0 {
				return 0, errCorruptValue
			}
			r := event.Reason(v[0])
			v = v[1:]
			x, ok := next()
			if !ok {
				return 0, errCorruptValue
			}
			if c != &skip {
				c.InvalidByReason[r] += x
			}
		}
	}
	if flags&flagInteractions != 0 {
		cnt, n := binary.Uvarint(v)
		if n <= 0 || cnt > uint64(len(v)) {
			return 0, errCorruptValue
		}
		v = v[n:]
		if c != &skip && c.Interactions == nil {
			c.Interactions = make(map[string]int64, cnt)
		}
		for range cnt {
			l, n := binary.Uvarint(v)
			if n <= 0 || l > uint64(len(v)-n) {
				return 0, errCorruptValue
			}
			name := v[n : n+int(l)]
			v = v[n+int(l):]
			x, ok := next()
			if !ok {
				return 0, errCorruptValue
			}
			if c == &skip {
				continue
			}
			// The map index with a converted []byte does not allocate when the entry exists.
			if old, ok := c.Interactions[string(name)]; ok {
				c.Interactions[string(name)] = old + x
			} else {
				c.Interactions[string(name)] = x
			}
		}
	}
	if flags&flagConversions != 0 {
		for _, p := range [...]*int64{&c.Conversions, &c.ConversionValueMicros, &c.ViewConversions, &c.ViewConversionValueMicros} {
			x, ok := next()
			if !ok {
				return 0, errCorruptValue
			}
			*p += x
		}
	}
	return all - len(v), nil
}

// appendEntry appends one row entry.
func appendEntry(b []byte, bucket int, c *metricstore.Counts) []byte {
	return appendCounts(append(b, byte(bucket)), c)
}

// addRow decodes a row and adds each entry to dst(bucket); a nil dst skips the entry. It
// checks that buckets ascend and stay below maxBuckets.
func addRow(v []byte, dst func(bucket int) *metricstore.Counts) error {
	last := -1
	for len(v) > 0 {
		bucket := int(v[0])
		if bucket <= last || bucket >= maxBuckets {
			return errCorruptValue
		}
		last = bucket
		n, err := addCounts(dst(bucket), v[1:])
		if err != nil {
			return err
		}
		v = v[1+n:]
	}
	return nil
}

// merger sums rows bucket by bucket. Pebble stores its name: renaming it makes old stores
// unopenable, so a new value layout needs a new name and a migration.
var merger = &pebble.Merger{
	Name: "adpulse.metricstore.rows.v1",
	Merge: func(_, value []byte) (pebble.ValueMerger, error) {
		// Merges stay merge operands down to the last level, so every row a query reads goes
		// through here: reuse mergers (returned by Close, which Pebble calls once it is done
		// with the result) instead of allocating per row.
		m := mergerPool.Get().(*rowMerger)
		m.first = append(m.first[:0], value...)
		return m, nil
	},
}

var mergerPool = sync.Pool{New: func() any { return new(rowMerger) }}

// rowMerger sums row operands. Most rows read back have one operand (compacted, or written
// once), so it keeps the first operand's bytes and decodes only when a second one arrives.
type rowMerger struct {
	first   []byte
	out     []byte
	decoded bool
	present uint64 // bit b: sum[b] holds something
	sum     [maxBuckets]metricstore.Counts
}

func (m *rowMerger) slot(b int) *metricstore.Counts {
	m.present |= 1 << b
	return &m.sum[b]
}

func (m *rowMerger) add(v []byte) error {
	if !m.decoded {
		if err := addRow(m.first, m.slot); err != nil {
			return err
		}
		m.decoded = true
	}
	return addRow(v, m.slot)
}

// Sums are commutative, so the order of operands does not matter.
func (m *rowMerger) MergeNewer(v []byte) error { return m.add(v) }
func (m *rowMerger) MergeOlder(v []byte) error { return m.add(v) }

// Finish returns the summed row, valid until Close.
func (m *rowMerger) Finish(bool) ([]byte, io.Closer, error) {
	if !m.decoded {
		return m.first, m, nil
	}
	m.out = m.out[:0]
	for p := m.present; p != 0; p &= p - 1 {
		b := bits.TrailingZeros64(p)
		m.out = appendEntry(m.out, b, &m.sum[b])
	}
	return m.out, m, nil
}

// Close makes the merger reusable.
func (m *rowMerger) Close() error {
	for p := m.present; p != 0; p &= p - 1 {
		m.sum[bits.TrailingZeros64(p)] = metricstore.Counts{}
	}
	m.present, m.decoded = 0, false
	if cap(m.first) > 16<<10 || cap(m.out) > 16<<10 {
		return nil // an unusually large row: let it go rather than pin it in the pool
	}
	mergerPool.Put(m)
	return nil
}
