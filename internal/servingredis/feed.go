package servingredis

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/adpulse/adpulse/internal/billing"
)

// FeedEntry is the value of a campaign's field in the feed hash.
type FeedEntry struct {
	CPCBidMicros int64   `json:"cpc_bid_micros"`
	Pacing       float64 `json:"pacing"`
	Status       string  `json:"status"` // "active": only serving campaigns are in the feed
}

// FeedMeta is the value of the feed hash's MetaField.
type FeedMeta struct {
	Version     int64  `json:"version"`      // serving:version when this feed was written
	ChangedAt   string `json:"changed_at"`   // when this content was first written (RFC 3339, UTC)
	PublishedAt string `json:"published_at"` // when a publisher last confirmed it current
	Campaigns   int    `json:"campaigns"`    // fields other than MetaField
}

// The scripts run on keys of one feed, so the feed changes in one step.
var (
	// swapScript makes the next feed live. KEYS: next, live, version. ARGV: "#meta" with %d
	// for the version, TTL in ms (0: none). It returns {version, meta}.
	swapScript = redis.NewScript(`
local v = redis.call('INCR', KEYS[3])
local meta = string.format(ARGV[1], v)
redis.call('HSET', KEYS[1], '` + MetaField + `', meta)
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('PERSIST', KEYS[1])
end
redis.call('RENAME', KEYS[1], KEYS[2])
return {v, meta}
`)
	// touchScript refreshes "#meta" of the live feed if it is still the one expected.
	// KEYS: live. ARGV: expected meta, new meta, TTL in ms (0: none). It returns 1 if it did.
	touchScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], '` + MetaField + `') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], '` + MetaField + `', ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
`)
)

// nextTTL bounds the life of a next feed whose publisher died before the swap.
const nextTTL = time.Minute

// feedChunk is the number of campaigns per HSET.
const feedChunk = 512

// Publish makes feed the serving feed in Redis (billing.Publisher). It is one round trip,
// bounded by Timeout. An error means the feed in Redis is the previous one or this one.
func (p *Publisher) Publish(ctx context.Context, feed *billing.Feed) error {
	p.feedMu.Lock()
	defer p.feedMu.Unlock()
	err := p.publish(ctx, feed)
	if err != nil {
		p.stats.feedErrors.Add(1)
		p.lastMeta = "" // the outcome is unknown: write the next feed whole
		return fmt.Errorf("servingredis: publish serving feed: %w", err)
	}
	return nil
}

func (p *Publisher) publish(ctx context.Context, feed *billing.Feed) error {
	now := p.o.Now().UTC().Format(time.RFC3339Nano)
	ttl := strconv.FormatInt(p.o.FeedTTL.Milliseconds(), 10)
	if p.lastMeta != "" && slices.Equal(feed.Campaigns, p.lastFeed) {
		meta, err := json.Marshal(FeedMeta{Version: p.version, ChangedAt: p.changedAt, PublishedAt: now, Campaigns: len(p.lastFeed)})
		if err != nil {
			return err
		}
		rctx, cancel, err := p.roundTrip(ctx)
		if err != nil {
			return err
		}
		ok, err := touchScript.Run(rctx, p.rdb, []string{p.feedKey}, p.lastMeta, meta, ttl).Int()
		cancel()
		if err != nil {
			return err
		}
		if ok == 1 {
			p.lastMeta = string(meta)
			p.stats.feedRefreshes.Add(1)
			p.published(p.version, len(p.lastFeed))
			return nil
		}
		p.o.Logger.Info("servingredis: the serving feed in Redis is not the one last written here (replaced, or lost); writing it whole")
	}

	// The version is only known in Redis: the meta goes there as a format with %d for it.
	metaFmt, err := json.Marshal(FeedMeta{Version: -1, ChangedAt: now, PublishedAt: now, Campaigns: len(feed.Campaigns)})
	if err != nil {
		return err
	}
	rctx, cancel, err := p.roundTrip(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	pipe := p.rdb.Pipeline()
	pipe.Del(rctx, p.nextKey)
	args := make([]any, 0, 2*feedChunk)
	for i, c := range feed.Campaigns {
		v, err := json.Marshal(FeedEntry{CPCBidMicros: c.CPCBidMicros, Pacing: c.Pacing, Status: "active"})
		if err != nil {
			return err
		}
		args = append(args, c.CampaignID, v)
		if len(args) == cap(args) || i == len(feed.Campaigns)-1 {
			pipe.HSet(rctx, p.nextKey, args...)
			args = make([]any, 0, 2*feedChunk)
		}
	}
	pipe.PExpire(rctx, p.nextKey, nextTTL)
	swap := swapScript.Eval(rctx, pipe, []string{p.nextKey, p.feedKey, p.versionKey},
		strings.Replace(string(metaFmt), `"version":-1`, `"version":%d`, 1), ttl)
	if _, err := pipe.Exec(rctx); err != nil {
		return err
	}
	res, err := swap.Slice()
	if err != nil || len(res) != 2 {
		return fmt.Errorf("swap: %v %w", res, err)
	}
	version, _ := res[0].(int64)
	meta, _ := res[1].(string)
	p.lastFeed = slices.Clone(feed.Campaigns)
	p.lastMeta, p.version, p.changedAt = meta, version, now
	p.stats.feedWrites.Add(1)
	p.published(version, len(feed.Campaigns))
	return nil
}

func (p *Publisher) published(version int64, campaigns int) {
	p.stats.mu.Lock()
	defer p.stats.mu.Unlock()
	p.stats.feedVersion, p.stats.feedCampaigns, p.stats.feedPublishedAt = version, campaigns, p.o.Now()
}
