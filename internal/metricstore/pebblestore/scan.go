package pebblestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"

	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/cockroachdb/pebble"
)

// ScanMinutes calls fn for every stored minute bucket (any level and id) whose minute is in
// [from, to), with that bucket's totals, from one consistent snapshot. It is how in-memory
// indexes over recent minutes (top-N) are rebuilt after a restart: minute rows are keyed by
// hour first, so the scan reads only the hours of the range. fn must not retain d or d.ID.
func (s *Store) ScanMinutes(ctx context.Context, from, to int64, fn func(d *metricstore.Delta) error) error {
	if from < 0 {
		from = 0
	}
	if to <= from {
		return nil
	}
	s.life.RLock()
	defer s.life.RUnlock()
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return metricstore.ErrClosed
	}
	rs := &resolutions[resMinute]
	firstPart, lastPart := from/rs.perPart, (to-1)/rs.perPart
	lower := binary.BigEndian.AppendUint32([]byte{rs.prefix}, uint32(firstPart))
	upper := binary.BigEndian.AppendUint32([]byte{rs.prefix}, uint32(lastPart+1))
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return fmt.Errorf("scan minutes: %w", err)
	}
	defer it.Close()
	var d metricstore.Delta
	var counts [maxBuckets]metricstore.Counts
	for ok := it.First(); ok; ok = it.Next() {
		if err := ctx.Err(); err != nil {
			return err
		}
		k := it.Key()
		if len(k) < 1+4+1+2 || k[len(k)-1] != 0 {
			return fmt.Errorf("scan minutes: malformed key %x", k)
		}
		part := int64(binary.BigEndian.Uint32(k[1:5]))
		level := metricstore.Level(k[5])
		id := k[6 : len(k)-1]
		v, err := it.ValueAndErr()
		if err != nil {
			return fmt.Errorf("scan minutes: %w", err)
		}
		var present uint64
		if err := addRow(v, func(bucket int) *metricstore.Counts {
			present |= 1 << uint(bucket)
			return &counts[bucket]
		}); err != nil {
			return fmt.Errorf("scan minutes: row %x: %w", k, err)
		}
		for b := 0; b < maxBuckets; b++ {
			if present&(1<<uint(b)) == 0 {
				continue
			}
			minute := part*rs.perPart + int64(b)
			c := counts[b]
			counts[b] = metricstore.Counts{}
			if minute < from || minute >= to || c.IsZero() {
				continue
			}
			d.Level, d.ID, d.Minute, d.Counts = level, string(bytes.Clone(id)), minute, c
			if err := fn(&d); err != nil {
				return fmt.Errorf("scan minutes: %w", err)
			}
		}
	}
	return it.Error()
}
