// Package redisbase is the Redis baseline of `adpulse bench`: the common design of a click
// counter on Redis (go-redis/v9).
//
//	dedup     SET {p}d:{kind}:{imp} 1 NX EX ttl       one key per impression id and kind
//	counts    INCR {p}m:{kind}:{ad}:{unix minute}      one counter per ad and minute
//	top-N     ZINCRBY {p}z:{kind}:{unix minute} 1 ad   one sorted set per minute
//
// A click is one round trip for the SET NX and, if it was new, one pipelined round trip for
// INCR, ZINCRBY and the EXPIREs of both keys; the 302 goes out after both replies. A batch of
// /events is two pipelined round trips whatever its size. /metrics reads the minute counters
// with MGET; /metrics/top merges the window's sorted sets with ZUNIONSTORE.
//
// What the design gives up, on purpose (it is the common one): the SET NX and the INCR are
// not atomic, so a crash between them loses the click, and a retry after that is taken for a
// duplicate; with Redis persistence off (as benchmarked) a restart loses everything; a
// duplicate more than DedupTTL after the first counts twice.
package redisbase

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/adpulse/adpulse/internal/tools/bench/baseline"
	"github.com/redis/go-redis/v9"
)

// Options of a Store.
type Options struct {
	Addr      string        // e.g. 127.0.0.1:6379
	Prefix    string        // of every key; default "adpb:"
	DedupTTL  time.Duration // default 1h
	Retention time.Duration // of minute keys; default 48h
	PoolSize  int           // default 256
}

// Store keeps counters in Redis.
type Store struct {
	o Options
	c *redis.Client
}

var _ baseline.Store = (*Store)(nil)

// Open connects and pings.
func Open(ctx context.Context, o Options) (*Store, error) {
	if o.Prefix == "" {
		o.Prefix = "adpb:"
	}
	if o.DedupTTL <= 0 {
		o.DedupTTL = time.Hour
	}
	if o.Retention <= 0 {
		o.Retention = 48 * time.Hour
	}
	if o.PoolSize <= 0 {
		o.PoolSize = 256
	}
	c := redis.NewClient(&redis.Options{Addr: o.Addr, PoolSize: o.PoolSize, MinIdleConns: 16, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second})
	if err := c.Ping(ctx).Err(); err != nil {
		c.Close()
		return nil, fmt.Errorf("redis %s: ping: %w", o.Addr, err)
	}
	return &Store{o: o, c: c}, nil
}

var kindTag = [baseline.NumKinds]string{"i", "c"}

func (s *Store) dedupKey(e *baseline.Event) string {
	return s.o.Prefix + "d:" + kindTag[e.Kind] + ":" + e.ImpressionID
}

func (s *Store) countKey(k baseline.Kind, ad string, minute int64) string {
	return s.o.Prefix + "m:" + kindTag[k] + ":" + ad + ":" + strconv.FormatInt(minute, 10)
}

func (s *Store) topKey(k baseline.Kind, minute int64) string {
	return s.o.Prefix + "z:" + kindTag[k] + ":" + strconv.FormatInt(minute, 10)
}

func floorMinute(t time.Time) int64 {
	u := t.Unix()
	if u < 0 {
		return (u - 59) / 60
	}
	return u / 60
}

// Record reserves each event's key with SET NX and counts the new ones.
func (s *Store) Record(ctx context.Context, evs []baseline.Event) (int, error) {
	if len(evs) == 0 {
		return 0, nil
	}
	if len(evs) == 1 {
		ok, err := s.c.SetNX(ctx, s.dedupKey(&evs[0]), 1, s.o.DedupTTL).Result()
		if err != nil {
			return 0, fmt.Errorf("SET NX: %w", err)
		}
		if !ok {
			return 0, nil
		}
		return 1, s.count(ctx, evs)
	}
	p := s.c.Pipeline()
	cmds := make([]*redis.BoolCmd, len(evs))
	for i := range evs {
		cmds[i] = p.SetNX(ctx, s.dedupKey(&evs[i]), 1, s.o.DedupTTL)
	}
	if _, err := p.Exec(ctx); err != nil {
		return 0, fmt.Errorf("SET NX pipeline: %w", err)
	}
	fresh := make([]baseline.Event, 0, len(evs))
	for i, c := range cmds {
		if c.Val() {
			fresh = append(fresh, evs[i])
		}
	}
	return len(fresh), s.count(ctx, fresh)
}

// count adds evs to the minute counters and sorted sets in one pipeline.
func (s *Store) count(ctx context.Context, evs []baseline.Event) error {
	if len(evs) == 0 {
		return nil
	}
	p := s.c.Pipeline()
	expire := map[string]bool{}
	for i := range evs {
		e := &evs[i]
		m := floorMinute(e.Time)
		ck, zk := s.countKey(e.Kind, e.AdID, m), s.topKey(e.Kind, m)
		p.Incr(ctx, ck)
		p.ZIncrBy(ctx, zk, 1, e.AdID)
		for _, k := range [2]string{ck, zk} {
			if !expire[k] {
				expire[k] = true
				p.Expire(ctx, k, s.o.Retention)
			}
		}
	}
	if _, err := p.Exec(ctx); err != nil {
		return fmt.Errorf("count pipeline: %w", err)
	}
	return nil
}

// Series reads every minute counter of the window with MGET and sums them into buckets.
func (s *Store) Series(ctx context.Context, ads []string, from, to time.Time, step time.Duration) (map[string]map[int64]baseline.Counts, error) {
	m0, m1 := floorMinute(from), floorMinute(to)
	per := int(m1 - m0)
	if per <= 0 {
		return map[string]map[int64]baseline.Counts{}, nil
	}
	stepMin := int64(step / time.Minute)
	out := make(map[string]map[int64]baseline.Counts, len(ads))
	// One MGET per ad and kind: a 24h window at 1m is 1440 keys.
	p := s.c.Pipeline()
	type req struct {
		ad   string
		kind baseline.Kind
		cmd  *redis.SliceCmd
	}
	reqs := make([]req, 0, len(ads)*int(baseline.NumKinds))
	keys := make([]string, per)
	for _, ad := range ads {
		for k := range baseline.NumKinds {
			for i := range per {
				keys[i] = s.countKey(k, ad, m0+int64(i))
			}
			reqs = append(reqs, req{ad, k, p.MGet(ctx, keys...)})
		}
	}
	if _, err := p.Exec(ctx); err != nil && err != redis.Nil {
		return nil, fmt.Errorf("MGET: %w", err)
	}
	for _, r := range reqs {
		vals, err := r.cmd.Result()
		if err != nil {
			return nil, fmt.Errorf("MGET: %w", err)
		}
		for i, v := range vals {
			str, ok := v.(string)
			if !ok {
				continue
			}
			n, err := strconv.ParseInt(str, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("counter %s: %q", keys[i], str)
			}
			m := m0 + int64(i)
			b := (m - ((m%stepMin)+stepMin)%stepMin) * 60
			buckets := out[r.ad]
			if buckets == nil {
				buckets = make(map[int64]baseline.Counts)
				out[r.ad] = buckets
			}
			c := buckets[b]
			c[r.kind] += n
			buckets[b] = c
		}
	}
	return out, nil
}

// Top merges the window's per-minute sorted sets with ZUNIONSTORE into a temporary key and
// reads the first n, with exact tie order (ties by ad id ascending).
func (s *Store) Top(ctx context.Context, kind baseline.Kind, n int, from, to time.Time) ([]baseline.TopItem, error) {
	m0, m1 := floorMinute(from), floorMinute(to)
	if m1 <= m0 {
		return nil, nil
	}
	keys := make([]string, 0, m1-m0)
	for m := m0; m < m1; m++ {
		keys = append(keys, s.topKey(kind, m))
	}
	tmp := s.o.Prefix + "tmp:" + strconv.FormatInt(time.Now().UnixNano(), 36)
	p := s.c.TxPipeline()
	p.ZUnionStore(ctx, tmp, &redis.ZStore{Keys: keys})
	top := p.ZRevRangeWithScores(ctx, tmp, 0, int64(n-1))
	if _, err := p.Exec(ctx); err != nil && err != redis.Nil {
		s.c.Del(ctx, tmp)
		return nil, fmt.Errorf("ZUNIONSTORE: %w", err)
	}
	defer s.c.Del(ctx, tmp)
	zs, err := top.Result()
	if err != nil {
		return nil, err
	}
	items := make([]baseline.TopItem, 0, len(zs))
	for _, z := range zs {
		items = append(items, baseline.TopItem{AdID: z.Member.(string), Value: int64(z.Score)})
	}
	if len(items) == n {
		// Redis orders equal scores by member descending; the contract wants ascending. Take
		// every member with the last score so the cut at n falls on the right ids.
		last := strconv.FormatInt(items[n-1].Value, 10)
		tied, err := s.c.ZRangeArgs(ctx, redis.ZRangeArgs{Key: tmp, Start: last, Stop: last, ByScore: true}).Result()
		if err != nil {
			return nil, fmt.Errorf("ZRANGEBYSCORE: %w", err)
		}
		kept := items[:0]
		for _, it := range items {
			if it.Value != items[n-1].Value {
				kept = append(kept, it)
			}
		}
		for _, id := range tied {
			kept = append(kept, baseline.TopItem{AdID: id, Value: items[n-1].Value})
		}
		items = kept
	}
	return baseline.SortTop(items, n), nil
}

// Memory returns the server's used_memory_rss and process_id from INFO.
func (s *Store) Memory(ctx context.Context) (rss int64, pid int, err error) {
	info, err := s.c.Info(ctx, "memory", "server").Result()
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.SplitSeq(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch k {
		case "used_memory_rss":
			rss, _ = strconv.ParseInt(v, 10, 64)
		case "process_id":
			pid, _ = strconv.Atoi(v)
		}
	}
	return rss, pid, nil
}

// Clear deletes every key of the prefix (SCAN + UNLINK, bounded by the key count).
func (s *Store) Clear(ctx context.Context) error {
	var cursor uint64
	for range 1_000_000 {
		keys, next, err := s.c.Scan(ctx, cursor, s.o.Prefix+"*", 10_000).Result()
		if err != nil {
			return err
		}
		if len(keys) > 0 {
			if err := s.c.Unlink(ctx, keys...).Err(); err != nil {
				return err
			}
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
	return nil
}

// Close closes the client.
func (s *Store) Close() error { return s.c.Close() }
