// Package redisdedup is the scale-out dedup.Store: idempotency keys in Redis, shared by every
// ingest process, so a retry reaching another process is still recognised. Each Reserve,
// Commit or Release is one round trip: on a single server one Lua script call per 1000 keys;
// with a cluster or ring client, a pipeline of one script call per key (the client splits it
// by shard).
//
// A key (Prefix + idempotency key) holds one of two values:
//
//	r<token>    reserved: an append is in flight. The token names the reservation (a random
//	            id of this Store plus a counter). Redis expires it after ReserveTTL.
//	d<end ms>   recorded: the event is durable in the log; a duplicate until end, the
//	            receive time given to Commit plus Window, in Unix milliseconds.
//
// The protocol, per key (Guarantee 2: reserve with a short TTL, append, then confirm):
//
//	Reserve  free, or recorded with end <= now:  SET r<token> PX ReserveTTL -> Reserved
//	         recorded with end > now                                       -> Duplicate
//	         reserved (by anyone; this Store's own in-flight keys are
//	         answered from memory without asking Redis)                    -> InFlight
//	Commit   still our token, or free:           SET d<end> PX ttl        (recorded)
//	         recorded already:                    keep the later end
//	         another reservation's token:         leave it                 (fenced)
//	Release  still our token:                     DEL                       otherwise nothing
//
// Window arithmetic uses the callers' clock (the now given to Reserve and Commit), not
// Redis's, so tests with an injected clock behave as in production: the end of the window is
// stored in the value and compared by Reserve. The Redis TTL of a recorded key only collects
// garbage: max(Window, end - wall clock), so the key outlives its window on both clocks. (PXAT
// with the caller's end would delete a key at once when an injected clock lies in the past.)
//
// Fencing. A reservation can outlive its TTL: the append took longer than ReserveTTL, or the
// process stalled. Then another process may reserve the key and append too (the duplicate the
// aggregator's dedup catches). The old owner's Commit and Release carry its token, so they
// never clobber the new owner's reservation: Release deletes only its own token, and Commit
// does not overwrite a foreign token (the new owner will commit or release it itself). Commit
// does write "recorded" on a key that is free (our reservation expired and nobody took it):
// the event is durable, so recording it is the truth and saves a duplicate. If the new owner
// then fails and releases, the key is free although the old owner's event is in the log; a
// later retry appends it again, which the aggregator's dedup catches. ReserveTTL must exceed
// the longest Append (kafkalog's DeliveryTimeout) for this to stay rare.
//
// Crashes (this is where the short TTL earns its keep):
//   - Between Reserve and the append: the key stays reserved until ReserveTTL expires.
//     Retries meanwhile see InFlight (ingest waits InFlightWait and answers 503); after the
//     TTL a retry reserves the key and appends. Nothing is lost and nothing is doubled.
//   - Between the append and Commit (or when Commit fails): the event is durable but its key
//     only has the reservation's short TTL. A retry within the TTL sees InFlight; one after it
//     reserves the key and appends a second copy. The aggregator's second line of defence
//     (dedup by key over the last DedupWindow events of the partition) drops that copy if it
//     lands within its window; billing charges a click once whatever the log holds.
//   - Redis losing writes (failover before replication, restart without persistence) frees
//     keys early in the same way, with the same second line.
//
// Within one Store a key has at most one reservation in flight: Reserve answers InFlight for a
// key this Store holds without asking Redis, even if its TTL has expired there, so the token
// Commit or Release use for a key is always that of the one caller that reserved it. Callers
// must Commit or Release every key they reserved (the dedup.Store contract).
package redisdedup

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/adpulse/adpulse/internal/dedup"
)

var _ dedup.Store = (*Store)(nil)

// Defaults of Options.
const (
	DefaultPrefix     = "adpulse:dedup:"
	DefaultReserveTTL = 30 * time.Second
)

// ErrClosed is returned by a Store's methods after Close.
var ErrClosed = errors.New("redisdedup: closed")

// Options configure a Store.
type Options struct {
	// Client is the Redis client (a *redis.Client, *redis.ClusterClient, ...). It is not
	// closed by Close. If nil, Open connects to Addr with Username, Password and DB, and
	// Close closes that connection.
	Client   redis.UniversalClient
	Addr     string
	Username string
	Password string
	DB       int
	// Prefix namespaces the keys. Default "adpulse:dedup:".
	Prefix string
	// Window is how long a recorded key is a duplicate, from its receive time. Required.
	Window time.Duration
	// ReserveTTL is how long a reservation lasts if its owner neither commits nor releases
	// it (the owner died). It must exceed the longest append. Default 30 s.
	ReserveTTL time.Duration
	// Logger receives reports of fenced keys and failed clean-ups. Default: discard.
	Logger *slog.Logger
}

// Stats are the store's counters, for the server to export as metrics.
type Stats struct {
	Reserved       int64 // keys reserved
	Duplicates     int64 // keys found recorded
	InFlight       int64 // keys found reserved by another request
	Committed      int64 // keys recorded by Commit
	CommittedLate  int64 // of those, keys whose reservation had expired (nobody had taken them)
	Released       int64 // reservations deleted by Release
	Fenced         int64 // Commit or Release found another owner's reservation and left it
	Errors         int64 // Reserve, Commit or Release calls that failed
	HeldNow        int64 // reservations of this Store not yet committed or released
	ScriptsLoaded  int64 // script (re)loads, after Redis forgot them
	PipelinedCalls int64 // pipelines sent to Redis
}

// Store is a dedup.Store on Redis. It is safe for concurrent use.
type Store struct {
	rdb        redis.UniversalClient
	ownClient  bool
	prefix     string
	window     time.Duration
	reserveTTL int64 // ms
	logger     *slog.Logger
	tokenBase  string // "r" + random id + ":"
	tokens     atomic.Uint64
	closed     atomic.Bool

	// The operations; fields so a test can give a Store a script Redis does not know yet.
	reserve, commit, release op
	perKey                   bool // one script call per key: the client shards keys

	mu   sync.Mutex        // guards held
	held map[string]string // key -> value of our reservation, until Commit or Release

	stats struct {
		reserved, duplicates, inFlight, committed, committedLate, released, fenced, errors atomic.Int64
		scriptLoads, pipelines                                                             atomic.Int64
	}
}

// The per-key logic of the three operations, as Lua functions f(key, mine, a, b): mine is the
// value of the caller's reservation ("" if it holds none), a and b are shared by the batch.
const (
	// reserve(key, mine, now ms, ttl ms): 0 reserved (or already ours), 1 duplicate,
	// 2 in flight.
	reserveFn = `
local function f(k, mine, now, ttl)
  local v = redis.call('GET', k)
  if v then
    if v == mine then return 0 end
    if string.sub(v, 1, 1) ~= 'd' then return 2 end
    if tonumber(string.sub(v, 2)) > tonumber(now) then return 1 end
  end
  redis.call('SET', k, mine, 'PX', ttl)
  return 0
end
`
	// commit(key, mine, end ms, ttl ms): 1 recorded over our reservation, 2 recorded on a
	// free key (ours had expired, nobody took it), 3 recorded already (the later end is kept),
	// 0 fenced (another reservation holds the key).
	commitFn = `
local function f(k, mine, e, ttl)
  local v = redis.call('GET', k)
  if v == mine or not v then
    redis.call('SET', k, 'd' .. e, 'PX', ttl)
    if v then return 1 end
    return 2
  end
  if string.sub(v, 1, 1) == 'd' then
    if tonumber(string.sub(v, 2)) < tonumber(e) then
      redis.call('SET', k, 'd' .. e, 'PX', ttl)
    end
    return 3
  end
  return 0
end
`
	// release(key, mine): 1 deleted, 2 fenced (another reservation holds it), 0 otherwise
	// (free, or recorded).
	releaseFn = `
local function f(k, mine)
  local v = redis.call('GET', k)
  if v == mine then
    redis.call('DEL', k)
    return 1
  end
  if v and string.sub(v, 1, 1) == 'r' then return 2 end
  return 0
end
`
)

// op is one operation as two scripts: for one key (ARGV mine, a, b), used with clients that
// shard keys (cluster, ring), and for a batch of keys in one call (ARGV a, b, mine of each
// key), used with a single server: one script call per batch instead of one per key costs
// Redis a third of the time.
type op struct{ one, many *redis.Script }

func newOp(fn string) op {
	return op{
		one: redis.NewScript(fn + "return f(KEYS[1], ARGV[1], ARGV[2], ARGV[3])\n"),
		many: redis.NewScript(fn + `local out = {}
for i = 1, #KEYS do out[i] = f(KEYS[i], ARGV[i + 2], ARGV[1], ARGV[2]) end
return out
`),
	}
}

var (
	reserveOp = newOp(reserveFn)
	commitOp  = newOp(commitFn)
	releaseOp = newOp(releaseFn)
)

// maxScriptKeys bounds the keys of one batch script call, so one call blocks Redis for a
// millisecond or two at most; bigger batches are several calls in one pipeline.
const maxScriptKeys = 1000

// Open returns a Store, checking that Redis answers and loading the scripts.
func Open(ctx context.Context, o Options) (*Store, error) {
	if o.Window <= 0 {
		return nil, errors.New("redisdedup: Window must be positive")
	}
	if o.ReserveTTL <= 0 {
		o.ReserveTTL = DefaultReserveTTL
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Store{
		rdb:        o.Client,
		prefix:     o.Prefix,
		window:     o.Window,
		reserveTTL: max(o.ReserveTTL.Milliseconds(), 1),
		logger:     o.Logger,
		held:       make(map[string]string),
		reserve:    reserveOp,
		commit:     commitOp,
		release:    releaseOp,
	}
	if s.rdb == nil {
		if o.Addr == "" {
			return nil, errors.New("redisdedup: Client or Addr is required")
		}
		// ContextTimeoutEnabled: a caller's deadline bounds the socket reads and writes too,
		// so a stalled Redis costs a request its --backend-timeout, not the client's own
		// multi-second read timeout.
		s.rdb = redis.NewClient(&redis.Options{Addr: o.Addr, Username: o.Username, Password: o.Password, DB: o.DB, ContextTimeoutEnabled: true})
		s.ownClient = true
	}
	// Only a single server (possibly behind Sentinel) takes a batch's keys in one script
	// call; a cluster or ring client would send keys of other shards to one node.
	_, single := s.rdb.(*redis.Client)
	s.perKey = !single
	var id [8]byte
	_, _ = rand.Read(id[:]) // never fails (Go 1.24+)
	s.tokenBase = "r" + hex.EncodeToString(id[:]) + ":"
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		s.closeClient()
		return nil, fmt.Errorf("redisdedup: ping: %w", err)
	}
	if err := s.loadScripts(ctx); err != nil {
		s.closeClient()
		return nil, err
	}
	return s, nil
}

func (s *Store) loadScripts(ctx context.Context) error {
	s.stats.scriptLoads.Add(1)
	for _, sc := range []*redis.Script{s.reserve.one, s.reserve.many, s.commit.one, s.commit.many, s.release.one, s.release.many} {
		if err := sc.Load(ctx, s.rdb).Err(); err != nil {
			return fmt.Errorf("redisdedup: load script: %w", err)
		}
	}
	return nil
}

// run applies o to keys in one pipeline: f(key, mine(i), a, b) for keys[i]. It returns the
// results by key. If Redis forgot the scripts (restart, failover, SCRIPT FLUSH), it loads them
// and sends the pipeline again: each operation is safe to repeat with the same arguments.
func (s *Store) run(ctx context.Context, o op, keys []string, a, b string, mine func(i int) string) ([]int64, error) {
	var cmds []*redis.Cmd
	send := func(p redis.Pipeliner) error {
		cmds = cmds[:0]
		if s.perKey {
			for i, k := range keys {
				cmds = append(cmds, o.one.EvalSha(ctx, p, []string{s.prefix + k}, mine(i), a, b))
			}
			return nil
		}
		for lo := 0; lo < len(keys); lo += maxScriptKeys {
			hi := min(lo+maxScriptKeys, len(keys))
			ks := make([]string, 0, hi-lo)
			args := make([]any, 0, 2+hi-lo)
			args = append(args, a, b)
			for i := lo; i < hi; i++ {
				ks = append(ks, s.prefix+keys[i])
				args = append(args, mine(i))
			}
			cmds = append(cmds, o.many.EvalSha(ctx, p, ks, args...))
		}
		return nil
	}
	for attempt := 0; ; attempt++ {
		s.stats.pipelines.Add(1)
		_, err := s.rdb.Pipelined(ctx, send)
		if err == nil {
			break
		}
		noScript := false
		for _, c := range cmds {
			if redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
				noScript = true
				break
			}
		}
		if !noScript || attempt > 0 {
			return nil, err
		}
		if err := s.loadScripts(ctx); err != nil {
			return nil, err
		}
	}
	res := make([]int64, 0, len(keys))
	for _, c := range cmds {
		if s.perKey {
			n, err := c.Int64()
			if err != nil {
				return nil, err
			}
			res = append(res, n)
			continue
		}
		ns, err := c.Int64Slice()
		if err != nil {
			return nil, err
		}
		res = append(res, ns...)
	}
	if len(res) != len(keys) {
		return nil, fmt.Errorf("%d results for %d keys", len(res), len(keys))
	}
	return res, nil
}

// Reserve implements dedup.Store.
func (s *Store) Reserve(ctx context.Context, keys []string, now time.Time, out []dedup.Status) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if len(out) < len(keys) {
		return fmt.Errorf("redisdedup: reserve: %d keys, room for %d statuses", len(keys), len(out))
	}
	// Keys this Store holds are in flight: only their owner may commit or release them.
	ask := make([]int, 0, len(keys))
	s.mu.Lock()
	for i, k := range keys {
		if _, ok := s.held[k]; ok {
			out[i] = dedup.InFlight
			continue
		}
		ask = append(ask, i)
	}
	s.mu.Unlock()
	s.stats.inFlight.Add(int64(len(keys) - len(ask)))
	if len(ask) == 0 {
		return nil
	}
	askKeys := make([]string, len(ask))
	values := make([]string, len(ask))
	for j, i := range ask {
		askKeys[j] = keys[i]
		values[j] = s.tokenBase + strconv.FormatUint(s.tokens.Add(1), 36)
	}
	nowMs := strconv.FormatInt(now.UnixMilli(), 10)
	ttl := strconv.FormatInt(s.reserveTTL, 10)
	res, err := s.run(ctx, s.reserve, askKeys, nowMs, ttl, func(j int) string { return values[j] })
	if err != nil {
		s.stats.errors.Add(1)
		// Some keys may be reserved in Redis, but the caller is told nothing was: free them
		// now rather than leave them in flight for ReserveTTL.
		go s.releaseValues(context.WithoutCancel(ctx), askKeys, values) // best effort; the caller need not wait
		return fmt.Errorf("redisdedup: reserve %d keys: %w", len(askKeys), err)
	}
	var reserved, dups, inFlight int64
	s.mu.Lock()
	for j, i := range ask {
		switch res[j] {
		case 0:
			if _, ok := s.held[askKeys[j]]; ok {
				// Another request of this Store took the key meanwhile (possible only if its
				// reservation expired in Redis before ours ran): it stays the one owner, ours
				// expires unused.
				out[i] = dedup.InFlight
				inFlight++
				continue
			}
			s.held[askKeys[j]] = values[j]
			out[i] = dedup.Reserved
			reserved++
		case 1:
			out[i] = dedup.Duplicate
			dups++
		default:
			out[i] = dedup.InFlight
			inFlight++
		}
	}
	s.mu.Unlock()
	s.stats.reserved.Add(reserved)
	s.stats.duplicates.Add(dups)
	s.stats.inFlight.Add(inFlight)
	return nil
}

// releaseValues deletes keys[i] where it still holds values[i], best effort, within a second.
func (s *Store) releaseValues(ctx context.Context, keys, values []string) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := s.run(ctx, s.release, keys, "", "", func(i int) string { return values[i] }); err != nil {
		s.logger.Warn("redisdedup: could not free reservations after a failed reserve; they expire by themselves",
			"keys", len(keys), "ttl", time.Duration(s.reserveTTL)*time.Millisecond, "err", err)
	}
}

// takeHeld removes keys from the held reservations and returns their values ("" for a key
// this Store does not hold).
func (s *Store) takeHeld(keys []string) []string {
	values := make([]string, len(keys))
	s.mu.Lock()
	for i, k := range keys {
		if v, ok := s.held[k]; ok {
			values[i] = v
			delete(s.held, k)
		}
	}
	s.mu.Unlock()
	return values
}

// Commit implements dedup.Store. Whatever happens, the keys are no longer held by this Store:
// if Commit fails, their reservations expire after ReserveTTL (see the package comment).
func (s *Store) Commit(ctx context.Context, keys []string, now time.Time) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if len(keys) == 0 {
		return nil
	}
	values := s.takeHeld(keys)
	end := now.Add(s.window)
	endMs := strconv.FormatInt(end.UnixMilli(), 10)
	// The TTL only collects garbage; it must not end before the window on either clock.
	ttl := strconv.FormatInt(max(s.window, time.Until(end)).Milliseconds()+1, 10)
	// A key we do not hold has mine "", a value no key has: it is recorded if free, else
	// left as it is.
	res, err := s.run(ctx, s.commit, keys, endMs, ttl, func(i int) string { return values[i] })
	if err != nil {
		s.stats.errors.Add(1)
		return fmt.Errorf("redisdedup: commit %d keys: %w", len(keys), err)
	}
	var committed, late, fenced int64
	for i, n := range res {
		switch n {
		case 1:
			committed++
		case 2:
			committed++
			late++
		case 0:
			fenced++
			s.logger.Debug("redisdedup: commit found another reservation; left it", "key", keys[i])
		}
	}
	s.stats.committed.Add(committed)
	s.stats.committedLate.Add(late)
	s.stats.fenced.Add(fenced)
	return nil
}

// Release implements dedup.Store. Keys this Store does not hold (never reserved, committed
// already) are left alone.
func (s *Store) Release(ctx context.Context, keys []string) error {
	if s.closed.Load() {
		return ErrClosed
	}
	values := s.takeHeld(keys)
	ours, ourValues := keys[:0:0], values[:0:0]
	for i, v := range values {
		if v != "" {
			ours = append(ours, keys[i])
			ourValues = append(ourValues, v)
		}
	}
	if len(ours) == 0 {
		return nil
	}
	res, err := s.run(ctx, s.release, ours, "", "", func(i int) string { return ourValues[i] })
	if err != nil {
		s.stats.errors.Add(1)
		return fmt.Errorf("redisdedup: release %d keys: %w", len(ours), err)
	}
	var released, fenced int64
	for _, n := range res {
		switch n {
		case 1:
			released++
		case 2:
			fenced++
		}
	}
	s.stats.released.Add(released)
	s.stats.fenced.Add(fenced)
	return nil
}

// Stats returns the store's counters since Open.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	held := int64(len(s.held))
	s.mu.Unlock()
	st := &s.stats
	return Stats{
		Reserved:       st.reserved.Load(),
		Duplicates:     st.duplicates.Load(),
		InFlight:       st.inFlight.Load(),
		Committed:      st.committed.Load(),
		CommittedLate:  st.committedLate.Load(),
		Released:       st.released.Load(),
		Fenced:         st.fenced.Load(),
		Errors:         st.errors.Load(),
		HeldNow:        held,
		ScriptsLoaded:  st.scriptLoads.Load(),
		PipelinedCalls: st.pipelines.Load(),
	}
}

// Close implements dedup.Store. Reservations still held expire after ReserveTTL.
func (s *Store) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	return s.closeClient()
}

func (s *Store) closeClient() error {
	if !s.ownClient {
		return nil
	}
	if err := s.rdb.Close(); err != nil {
		return fmt.Errorf("redisdedup: close: %w", err)
	}
	return nil
}

// Ping checks that Redis answers, for readiness.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redisdedup: ping: %w", err)
	}
	return nil
}
