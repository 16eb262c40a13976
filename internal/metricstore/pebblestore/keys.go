package pebblestore

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/adpulse/adpulse/internal/metricstore"
)

// Key layout of a counter row:
//
//	res prefix (1) | partition (4, big endian) | level (1) | id | 0x00
//
// A partition is a short time range (an hour of minutes, a day of hours, 32 days of days);
// the row's value holds the non-zero buckets of that range (value.go). One row per id and
// partition means a day of 1m points is 24 keys to read instead of 1440, and the LSM holds
// (and flushes, and compacts) a tenth of the entries: per-entry costs, not bytes, dominate
// Pebble's CPU here. Partitions are time-ordered, which keeps writes cheap too: a commit
// only touches the current partitions, so compactions rewrite the current hour's rows, not a
// day's or a month's. Retention is one DeleteRange over whole partitions, which Pebble
// reclaims by dropping files rather than rewriting them.
//
// The NUL terminator (ids may not contain one) keeps the encoding prefix-free and makes key
// order follow (level, id) order within a partition, so a commit sorted that way inserts in
// key order.
//
// Meta keys start with prefixMeta and sort before every counter.
const (
	prefixMeta       = 0x00
	prefixCheckpoint = 'c' // after prefixMeta: consumer name -> encoded checkpoint
	prefixReconciled = 'r' // after prefixMeta: UTC hour (8 bytes, big endian) -> empty: a reconciled mark
)

func reconciledKey(hour int64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixMeta, prefixReconciled}, uint64(hour))
}

// resolution is one bucket size the store keeps.
type resolution struct {
	prefix  byte
	minutes int64 // bucket width
	perPart int64 // buckets per row; at most maxBuckets
	name    string
}

// The resolutions, finest first. Queries cover a range with the coarsest that tiles it.
var resolutions = [...]resolution{
	{0x10, 1, 60, "1m"},    // a partition is a UTC hour
	{0x11, 60, 24, "1h"},   // a UTC day
	{0x12, 1440, 32, "1d"}, // 32 days
}

const (
	resMinute = 0
	resHour   = 1
	resDay    = 2
)

// maxIDLen bounds ids; the API allows 64 bytes.
const maxIDLen = 255

// validID reports whether id can be stored: 1-255 bytes, no NUL.
func validID(id string) bool {
	return id != "" && len(id) <= maxIDLen && strings.IndexByte(id, 0) < 0
}

// maxKeyLen bounds a counter key.
const maxKeyLen = 1 + 4 + 1 + maxIDLen + 1

// appendRowKey appends the key of the row of (res, part, level, id).
func appendRowKey(b []byte, r *resolution, part int64, level metricstore.Level, id string) []byte {
	b = append(b, r.prefix)
	b = binary.BigEndian.AppendUint32(b, uint32(part))
	b = append(b, byte(level))
	b = append(b, id...)
	return append(b, 0)
}

func checkpointKey(consumer string) []byte {
	return append([]byte{prefixMeta, prefixCheckpoint}, consumer...)
}

// appendCheckpoint encodes a checkpoint: uvarint count, (varint partition, varint offset)
// pairs, varint FinalBefore in Unix microseconds (0 when unset).
func appendCheckpoint(b []byte, offsets map[int32]int64, finalBeforeMicros int64) []byte {
	b = binary.AppendUvarint(b, uint64(len(offsets)))
	for p, o := range offsets {
		b = binary.AppendVarint(b, int64(p))
		b = binary.AppendVarint(b, o)
	}
	return binary.AppendVarint(b, finalBeforeMicros)
}

func decodeCheckpoint(v []byte) (map[int32]int64, int64, error) {
	bad := fmt.Errorf("pebblestore: corrupt checkpoint %x", v)
	n, k := binary.Uvarint(v)
	if k <= 0 || n > uint64(len(v)) {
		return nil, 0, bad
	}
	v = v[k:]
	offsets := make(map[int32]int64, n)
	for range n {
		p, k := binary.Varint(v)
		if k <= 0 {
			return nil, 0, bad
		}
		v = v[k:]
		o, k := binary.Varint(v)
		if k <= 0 {
			return nil, 0, bad
		}
		v = v[k:]
		offsets[int32(p)] = o
	}
	fb, k := binary.Varint(v)
	if k <= 0 || k != len(v) {
		return nil, 0, bad
	}
	return offsets, fb, nil
}
