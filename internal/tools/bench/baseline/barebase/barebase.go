// Package barebase is the `bare` baseline of `adpulse bench`: the physical reference for the
// click rows. It is the least a durable click service can do: verify the token (the shared
// baseline handler), append the click to a log file with group-commit fsync, answer 302.
// Nothing else: no catalog, no invalid-traffic rules, no aggregation stage, no ledger.
//
// To be checked by the same ground truth as adpulse and the other baselines it also keeps
// an in-memory set of keys (each event once) and per-minute counts, updated after the
// append; both are plain maps under one lock, which costs a small fraction of a request next
// to the fsync the request waits for. The log is adpulse's own embedded log (locallog), so
// "bare" measures HTTP plus durable append, with the same fsync policy as adpulse.
package barebase

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/eventlog/locallog"
	"github.com/adpulse/adpulse/internal/tools/bench/baseline"
	"github.com/cespare/xxhash/v2"
)

// Options configure a Store.
type Options struct {
	Dir        string // the log's directory
	Partitions int    // default 8
}

// Store appends events to a local log and counts them in memory.
type Store struct {
	log *locallog.Log
	mu  sync.Mutex
	// seen holds every key recorded; counts the per-minute counts by ad.
	seen   map[key]struct{}
	counts map[string]map[int64]*baseline.Counts
}

type key struct {
	kind baseline.Kind
	imp  string
}

var _ baseline.Store = (*Store)(nil)

// Open opens (or creates) the log in o.Dir.
func Open(o Options) (*Store, error) {
	if o.Partitions <= 0 {
		o.Partitions = 8
	}
	l, err := locallog.Open(locallog.Options{Dir: o.Dir, Partitions: o.Partitions})
	if err != nil {
		return nil, fmt.Errorf("barebase: %w", err)
	}
	return &Store{log: l, seen: make(map[key]struct{}), counts: make(map[string]map[int64]*baseline.Counts)}, nil
}

// Record implements baseline.Store: new events are appended (one group-committed fsync for
// the batch) and then counted; repeats are neither.
func (s *Store) Record(ctx context.Context, evs []baseline.Event) (int, error) {
	fresh := make([]baseline.Event, 0, len(evs))
	s.mu.Lock()
	for _, e := range evs {
		k := key{e.Kind, e.ImpressionID}
		if _, dup := s.seen[k]; dup {
			continue
		}
		s.seen[k] = struct{}{}
		fresh = append(fresh, e)
	}
	s.mu.Unlock()
	if len(fresh) == 0 {
		return 0, nil
	}
	msgs := make([]eventlog.Message, len(fresh))
	for i, e := range fresh {
		v := binary.AppendUvarint(nil, uint64(e.Kind))
		v = binary.AppendVarint(v, e.Time.Unix())
		v = binary.AppendUvarint(v, uint64(len(e.AdID)))
		v = append(v, e.AdID...)
		v = append(v, e.ImpressionID...)
		msgs[i] = eventlog.Message{Partition: int32(xxhash.Sum64String(e.AdID) % uint64(s.log.Partitions())), Value: v}
	}
	err := s.log.Append(ctx, msgs)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		for _, e := range fresh {
			delete(s.seen, key{e.Kind, e.ImpressionID})
		}
		return 0, fmt.Errorf("barebase: append: %w", err)
	}
	for _, e := range fresh {
		byMinute := s.counts[e.AdID]
		if byMinute == nil {
			byMinute = make(map[int64]*baseline.Counts)
			s.counts[e.AdID] = byMinute
		}
		m := e.Time.Unix() / 60
		c := byMinute[m]
		if c == nil {
			c = &baseline.Counts{}
			byMinute[m] = c
		}
		c[e.Kind]++
	}
	return len(fresh), nil
}

// Series implements baseline.Store.
func (s *Store) Series(_ context.Context, ads []string, from, to time.Time, step time.Duration) (map[string]map[int64]baseline.Counts, error) {
	st := int64(step / time.Second)
	if st <= 0 || st%60 != 0 {
		return nil, fmt.Errorf("barebase: step %v is not a whole number of minutes", step)
	}
	lo, hi := from.Unix(), to.Unix()
	out := make(map[string]map[int64]baseline.Counts, len(ads))
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ad := range ads {
		series := make(map[int64]baseline.Counts)
		for m, c := range s.counts[ad] {
			if t := m * 60; t >= lo && t < hi {
				b := t - ((t%st)+st)%st
				acc := series[b]
				for k := range acc {
					acc[k] += c[k]
				}
				series[b] = acc
			}
		}
		out[ad] = series
	}
	return out, nil
}

// Top implements baseline.Store.
func (s *Store) Top(_ context.Context, kind baseline.Kind, n int, from, to time.Time) ([]baseline.TopItem, error) {
	lo, hi := from.Unix(), to.Unix()
	s.mu.Lock()
	items := make([]baseline.TopItem, 0, len(s.counts))
	for ad, byMinute := range s.counts {
		var v int64
		for m, c := range byMinute {
			if t := m * 60; t >= lo && t < hi {
				v += c[kind]
			}
		}
		if v > 0 {
			items = append(items, baseline.TopItem{AdID: ad, Value: v})
		}
	}
	s.mu.Unlock()
	slices.SortFunc(items, func(a, b baseline.TopItem) int {
		if a.Value != b.Value {
			if a.Value > b.Value {
				return -1
			}
			return 1
		}
		if a.AdID < b.AdID {
			return -1
		}
		if a.AdID > b.AdID {
			return 1
		}
		return 0
	})
	return items[:min(n, len(items))], nil
}

// Close closes the log.
func (s *Store) Close() error { return s.log.Close() }
