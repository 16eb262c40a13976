package servingredis

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/adpulse/adpulse/internal/billing"
)

// ViewSource is where a resync reads billing's committed views: *billing.Charger.
type ViewSource interface {
	ScanViews(ctx context.Context, day time.Time, fn func(billing.ViewCount) error) error
}

var _ ViewSource = (*billing.Charger)(nil)

// viewsChunk is the number of totals per pipeline.
const viewsChunk = 4096

// defaultSyncedCheck is how often RunViews checks that Redis still has views:synced.
const defaultSyncedCheck = 5 * time.Second

// Retry delays of RunViews after a failure. The first is not below Timeout: see the package
// comment on writes that time out.
const maxRetryDelay = 5 * time.Second

// ViewsCommitted takes the committed totals of a billing round: it is
// billing.Options.OnViews. It only queues them (RunViews writes them), so it never blocks
// the billing writer. Totals handed over while a resync is due are left to the resync.
func (p *Publisher) ViewsCommitted(views []billing.ViewCount) {
	p.viewsMu.Lock()
	if p.resync {
		p.viewsMu.Unlock()
		p.stats.viewsDeferred.Add(int64(len(views)))
		return
	}
	for _, v := range views {
		p.pending[viewKey{unixDay(v.Day), v.UserID, v.CatalogID}] = v.Count
	}
	if len(p.pending) > p.o.MaxPendingViews {
		p.o.Logger.Warn("servingredis: too many user views waiting for Redis; dropping them for a resync", "pending", len(p.pending))
		p.stats.viewsDeferred.Add(int64(len(p.pending)))
		p.pending = make(map[viewKey]int64)
		p.resync = true
	}
	p.viewsMu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// PublishViews writes the view totals of the UTC date of day: counts[user][catalog] is the
// user's committed count of valid impressions of the catalog id that day, as billing has it
// (an absolute value, so writing it again changes nothing). A day whose hashes have expired
// is skipped. Each round trip is bounded by Timeout; the first error is returned, and what was
// written before it stays.
func (p *Publisher) PublishViews(ctx context.Context, day time.Time, counts map[string]map[string]int64) error {
	var vs []billing.ViewCount
	d := time.Unix(unixDay(day), 0).UTC()
	for user, cats := range counts {
		for cat, n := range cats {
			vs = append(vs, billing.ViewCount{Day: d, UserID: user, CatalogID: cat, Count: n})
		}
	}
	if err := p.writeViews(ctx, vs); err != nil {
		return fmt.Errorf("servingredis: publish views of %s: %w", d.Format(time.DateOnly), err)
	}
	return nil
}

// RunViews writes the totals ViewsCommitted queues, after a resync from src (the billing
// Charger), until ctx is done; it resyncs again when Redis lost views:synced or the queue
// overflowed. Failures are logged, counted and retried; it returns nil when ctx is done.
func (p *Publisher) RunViews(ctx context.Context, src ViewSource) error {
	check := time.NewTicker(p.syncedCheck)
	defer check.Stop()
	retry := p.o.Timeout
	for ctx.Err() == nil {
		p.viewsMu.Lock()
		due := p.resync
		p.viewsMu.Unlock()
		var err error
		if due {
			err = p.Resync(ctx, src)
		} else {
			err = p.drain(ctx)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			p.o.Logger.Warn("servingredis: writing user views failed; retrying", "err", err, "in", retry)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(retry):
			}
			retry = min(2*retry, max(maxRetryDelay, p.o.Timeout))
			continue
		}
		retry = p.o.Timeout
		p.viewsMu.Lock()
		idle := len(p.pending) == 0 && !p.resync
		p.viewsMu.Unlock()
		if !idle {
			continue
		}
		select {
		case <-ctx.Done():
		case <-p.kick:
		case <-check.C:
			if err := p.checkSynced(ctx); err != nil && ctx.Err() == nil {
				p.o.Logger.Warn("servingredis: checking views:synced failed", "err", err)
			}
		}
	}
	return nil
}

// checkSynced schedules a resync if Redis no longer has the key the last one wrote.
func (p *Publisher) checkSynced(ctx context.Context) error {
	rctx, cancel, err := p.roundTrip(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	n, err := p.rdb.Exists(rctx, p.syncedKey).Result()
	if err != nil {
		return err
	}
	if n == 0 {
		p.o.Logger.Warn("servingredis: Redis lost " + p.syncedKey + "; rewriting the user views")
		p.viewsMu.Lock()
		p.resync = true
		p.viewsMu.Unlock()
	}
	return nil
}

// drain writes what is queued. On failure it puts back the totals no newer one replaced.
func (p *Publisher) drain(ctx context.Context) error {
	p.viewsMu.Lock()
	if len(p.pending) == 0 {
		p.viewsMu.Unlock()
		return nil
	}
	batch := p.pending
	p.pending = make(map[viewKey]int64)
	p.viewsMu.Unlock()

	vs := make([]billing.ViewCount, 0, len(batch))
	for k, n := range batch {
		vs = append(vs, billing.ViewCount{Day: time.Unix(k.day, 0).UTC(), UserID: k.user, CatalogID: k.catalog, Count: n})
	}
	err := p.writeViews(ctx, vs)
	if err == nil {
		return nil
	}
	p.viewsMu.Lock()
	defer p.viewsMu.Unlock()
	if !p.resync { // a resync drops the queue anyway
		for k, n := range batch {
			if _, newer := p.pending[k]; !newer {
				p.pending[k] = n
			}
		}
	}
	return err
}

// Resync rewrites the views of every day whose hashes have not expired from src's committed
// state, then marks Redis with views:synced. Totals queued before it started are dropped (the
// snapshot holds them or newer ones); those queued while it runs are written after it.
// RunViews calls it; it is exported for tools that repair Redis by hand, and must not run
// while RunViews does (the order of writes is RunViews's).
func (p *Publisher) Resync(ctx context.Context, src ViewSource) error {
	p.viewsMu.Lock()
	p.resync = false
	p.pending = make(map[viewKey]int64)
	p.viewsMu.Unlock()
	err := p.resyncFrom(ctx, src)
	if err != nil {
		p.stats.resyncErrs.Add(1)
		p.viewsMu.Lock()
		p.resync = true
		p.viewsMu.Unlock()
		return fmt.Errorf("servingredis: resync user views: %w", err)
	}
	p.stats.resyncs.Add(1)
	return nil
}

func (p *Publisher) resyncFrom(ctx context.Context, src ViewSource) error {
	now := p.o.Now()
	batch := make([]billing.ViewCount, 0, viewsChunk)
	for _, day := range p.liveDays(now) {
		err := src.ScanViews(ctx, day, func(v billing.ViewCount) error {
			batch = append(batch, v)
			if len(batch) < viewsChunk {
				return nil
			}
			err := p.writeViews(ctx, batch)
			batch = batch[:0]
			return err
		})
		if err != nil {
			return fmt.Errorf("day %s: %w", day.Format(time.DateOnly), err)
		}
	}
	if err := p.writeViews(ctx, batch); err != nil {
		return err
	}
	rctx, cancel, err := p.roundTrip(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	return p.rdb.Set(rctx, p.syncedKey, now.UTC().Format(time.RFC3339Nano), 0).Err()
}

// liveDays are the UTC days, tomorrow first, whose views hashes have not expired as of now.
func (p *Publisher) liveDays(now time.Time) []time.Time {
	var days []time.Time
	for d := unixDay(now) + 86400; p.expireAt(d).After(now); d -= 86400 {
		days = append(days, time.Unix(d, 0).UTC())
	}
	return days
}

// expireAt is when the views hashes of the day that starts at day (Unix seconds) expire.
func (p *Publisher) expireAt(day int64) time.Time {
	return time.Unix(day+86400, 0).Add(p.o.ViewsTTL)
}

// writeViews writes totals as HSET of the absolute values, one hash per (day, user), each
// with its expiry, in pipelines of up to viewsChunk totals. It sorts vs.
func (p *Publisher) writeViews(ctx context.Context, vs []billing.ViewCount) error {
	if len(vs) == 0 {
		return nil
	}
	slices.SortFunc(vs, func(a, b billing.ViewCount) int {
		return cmp.Or(a.Day.Compare(b.Day), cmp.Compare(a.UserID, b.UserID), cmp.Compare(a.CatalogID, b.CatalogID))
	})
	now := p.o.Now()
	type hset struct {
		key  string
		args []any
		exp  time.Time
	}
	var chunk []hset
	for len(vs) > 0 {
		chunk = chunk[:0]
		fields, expired := 0, 0
		for fields < viewsChunk && len(vs) > 0 {
			day, user := unixDay(vs[0].Day), vs[0].UserID
			n := 1
			for n < len(vs) && vs[n].UserID == user && unixDay(vs[n].Day) == day {
				n++
			}
			if exp := p.expireAt(day); !exp.After(now) {
				expired += n
			} else {
				h := hset{key: p.viewsPrefix + time.Unix(day, 0).UTC().Format(time.DateOnly) + ":" + user, args: make([]any, 0, 2*n), exp: exp}
				for _, v := range vs[:n] {
					h.args = append(h.args, v.CatalogID, strconv.FormatInt(v.Count, 10))
				}
				chunk = append(chunk, h)
				fields += n
			}
			vs = vs[n:]
		}
		p.stats.viewsExpired.Add(int64(expired))
		if fields == 0 {
			continue
		}
		rctx, cancel, err := p.roundTrip(ctx)
		if err != nil {
			return err
		}
		pipe := p.rdb.Pipeline()
		for _, h := range chunk {
			pipe.HSet(rctx, h.key, h.args...)
			// Relative, so that the expiry follows the publisher's clock (the one that
			// decides the day), not Redis's.
			pipe.PExpire(rctx, h.key, h.exp.Sub(now))
		}
		_, err = pipe.Exec(rctx)
		cancel()
		if err != nil {
			p.stats.viewsErrors.Add(1)
			return err
		}
		p.stats.viewsWritten.Add(int64(fields))
	}
	return nil
}

// unixDay is the start of t's UTC day, in Unix seconds.
func unixDay(t time.Time) int64 {
	s := t.Unix()
	return s - ((s%86400)+86400)%86400
}
