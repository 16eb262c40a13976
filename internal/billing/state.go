package billing

import (
	"context"
	"errors"
	"math"
	"slices"
	"time"

	"github.com/adpulse/adpulse/internal/billing/ledger"

	"github.com/adpulse/adpulse/internal/catalog"
)

// CampaignStatus is a campaign's serving status and budget as of now.
type CampaignStatus struct {
	ServingStatus string // catalog.ServingActive, ServingPaused, ...
	Budget        catalog.Budget
}

// servingStatus is the rule of API.md: paused, ended and not_started come from the campaign
// and its schedule; an otherwise active campaign whose daily or total budget is spent is
// budget_exhausted.
func servingStatus(cp catalog.Campaign, now time.Time, today, total int64) string {
	if s := catalog.ScheduleStatus(cp, now); s != catalog.ServingActive {
		return s
	}
	if cp.DailyBudgetMicros > 0 && today >= cp.DailyBudgetMicros || cp.TotalBudgetMicros > 0 && total >= cp.TotalBudgetMicros {
		return catalog.ServingBudgetExhausted
	}
	return catalog.ServingActive
}

// status computes cp's status as of now, on day, the budget day that contains now, from its
// committed spend.
func status(cp catalog.Campaign, day budgetDay, now time.Time, today, total int64) CampaignStatus {
	return CampaignStatus{
		ServingStatus: servingStatus(cp, now, today, total),
		Budget:        newBudget(cp, day, now, today, total),
	}
}

// newBudget is catalog.NewBudget with the budget day's label, which after a time zone change
// is not always today's date in the advertiser's current zone.
func newBudget(cp catalog.Campaign, day budgetDay, now time.Time, today, total int64) catalog.Budget {
	b := catalog.NewBudget(cp, day.Loc, now, today, total)
	b.Day = dayString(day.Label)
	return b
}

// Status returns the serving status and budget of cp as of now, from its current values and
// the committed spend.
func (c *Charger) Status(cp catalog.Campaign) (CampaignStatus, error) {
	now := c.opts.Now()
	day := c.budgetDayOf(cp.AdvertiserID, now)
	if c.closed.Load() {
		return CampaignStatus{}, ErrClosed
	}
	ctx, cancel := c.readCtx()
	defer cancel()
	k := spendKey{Campaign: cp.ID, DayStart: day.Start.Unix()}
	days, totals, err := c.store.Spend(ctx, []spendKey{k})
	if err != nil {
		return CampaignStatus{}, c.readErr(err)
	}
	return status(cp, day, now, days[k], totals[cp.ID]), nil
}

// CampaignState is catalog.HandlerOptions.CampaignState: the "serving_status" and "budget" of
// GET /api/v1/campaigns/{id}. If spend cannot be read (only while shutting down), it falls
// back to the schedule status and zero spend, and logs why.
func (c *Charger) CampaignState(_ context.Context, cp catalog.Campaign) (string, any) {
	st, err := c.Status(cp)
	if err != nil {
		c.opts.Logger.Error("billing: campaign spend unavailable", "campaign_id", cp.ID, "err", err)
		now := c.opts.Now()
		return catalog.ScheduleStatus(cp, now), newBudget(cp, c.budgetDayOf(cp.AdvertiserID, now), now, 0, 0)
	}
	return st.ServingStatus, st.Budget
}

func campaignOf(info catalog.CampaignInfo) catalog.Campaign {
	return catalog.Campaign{
		ID: info.CampaignID, AdvertiserID: info.AdvertiserID, Status: info.Status,
		CPCBidMicros: info.CPCBidMicros, DailyBudgetMicros: info.DailyBudgetMicros, TotalBudgetMicros: info.TotalBudgetMicros,
		StartTime: info.StartTime, EndTime: info.EndTime,
	}
}

// The serving feed.

// Feed is what ad servers need to decide what to serve: the active campaigns, their bids and
// pacing. It is the body of GET /api/v1/serving/campaigns.
type Feed struct {
	Campaigns []FeedCampaign `json:"campaigns"`
}

// FeedCampaign is one active campaign of the feed.
type FeedCampaign struct {
	CampaignID   string `json:"campaign_id"`
	CPCBidMicros int64  `json:"cpc_bid_micros"`
	// Pacing in (0, 1] is the share of eligible requests to bid on so that the daily budget
	// lasts the day (1 for campaigns without a daily budget).
	Pacing float64 `json:"pacing"`
}

// Publisher is where Run sends the feed every FeedInterval: the seam for Redis, where ad
// servers read it. Publish replaces the previous feed as a whole.
type Publisher interface {
	Publish(ctx context.Context, feed *Feed) error
}

// campaignIDs lists the campaigns the feed considers, sorted.
func (c *Charger) campaignIDs() []string {
	c.mu.Lock()
	ids := make([]string, 0, len(c.known))
	for id := range c.known {
		ids = append(ids, id)
	}
	c.mu.Unlock()
	if c.lister != nil {
		ids = append(ids, c.lister.CampaignIDs()...)
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// Feed computes the serving feed as of now: the campaigns whose serving status is active, by
// id, each with its pacing (stepping the pacing controller when a step is due).
func (c *Charger) Feed(ctx context.Context) (*Feed, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	now := c.opts.Now()
	ids := c.campaignIDs()
	feed := &Feed{Campaigns: []FeedCampaign{}}
	type item struct {
		cp  catalog.Campaign
		day budgetDay
	}
	items := make([]item, 0, len(ids))
	keys := make([]spendKey, 0, len(ids))
	for _, id := range ids {
		info, ok := c.cat.Campaign(id)
		if !ok {
			continue
		}
		cp := campaignOf(info)
		day := c.budgetDayOf(cp.AdvertiserID, now)
		items = append(items, item{cp, day})
		keys = append(keys, spendKey{Campaign: id, DayStart: day.Start.Unix()})
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.RoundTimeout)
	defer cancel()
	days, totals, err := c.store.Spend(ctx, keys)
	if err != nil {
		return nil, c.readErr(err)
	}
	for i, it := range items {
		cp, day := it.cp, it.day
		st := status(cp, day, now, days[keys[i]], totals[cp.ID])
		if st.ServingStatus != catalog.ServingActive {
			continue
		}
		var budget int64 // what may be spent today: the daily budget, less if the total runs out first
		if cp.DailyBudgetMicros > 0 {
			budget = cp.DailyBudgetMicros
			if cp.TotalBudgetMicros > 0 && st.Budget.RemainingTodayMicros != nil {
				budget = min(budget, st.Budget.SpentTodayMicros+*st.Budget.RemainingTodayMicros)
			}
		}
		p := c.pacer.pacing(cp.ID, now, day, budget, st.Budget.SpentTodayMicros)
		feed.Campaigns = append(feed.Campaigns, FeedCampaign{CampaignID: cp.ID, CPCBidMicros: cp.CPCBidMicros, Pacing: roundPacing(p, c.opts.MinPacing)})
	}
	return feed, nil
}

// roundPacing keeps four decimals and never rounds a positive pacing to zero.
func roundPacing(p, minP float64) float64 {
	r := math.Round(p*1e4) / 1e4
	if r <= 0 {
		r = math.Ceil(minP*1e4) / 1e4
	}
	return min(r, 1)
}

// runFeed computes the feed every FeedInterval (which also steps the pacing controllers when
// nobody asks for the feed) and hands it to the Publisher. Failures are logged and retried at
// the next tick: a stale feed is safe, because budgets are enforced by the charger.
func (c *Charger) runFeed(ctx context.Context) error {
	t := time.NewTicker(c.opts.FeedInterval)
	defer t.Stop()
	for {
		feed, err := c.Feed(ctx)
		switch {
		case err != nil && ctx.Err() == nil && !errors.Is(err, ErrClosed):
			c.opts.Logger.Warn("billing: computing the serving feed failed", "err", err)
		case err == nil:
			if c.opts.Publisher != nil {
				if err := c.opts.Publisher.Publish(ctx, feed); err != nil && ctx.Err() == nil {
					c.opts.Logger.Warn("billing: publishing the serving feed failed", "err", err)
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// User views.

// UserViews returns how many valid impressions of each catalog id userID had on the UTC date
// of day. Days past the retention are gone (and return nothing).
func (c *Charger) UserViews(ctx context.Context, userID string, day time.Time) (map[string]int64, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.RoundTimeout)
	defer cancel()
	out, err := c.store.Views(ctx, dayOf(day, time.UTC), userID)
	if err != nil {
		return nil, c.readErr(err)
	}
	return out, nil
}

// ViewsRetained reports whether the views of day (UTC) are still kept as of now.
func (c *Charger) ViewsRetained(day time.Time) bool {
	return dayOf(day, time.UTC) >= viewsCutoff(dayOf(c.opts.Now(), time.UTC), c.opts.ViewRetentionDays)
}

// ViewCount is one user's committed count of valid impressions of one catalog id on one UTC
// day: an absolute value, so writing it again anywhere changes nothing.
type ViewCount struct {
	Day       time.Time // midnight UTC
	UserID    string
	CatalogID string
	Count     int64
}

// ScanViews calls fn with every committed count of the UTC date of day, from one consistent
// snapshot, by user then catalog id, and stops at fn's first error. It lets a copy of the
// views kept through Options.OnViews catch up on the calls it missed (a restart between a
// commit and its publication): the snapshot holds every commit whose OnViews call came before
// the scan started.
func (c *Charger) ScanViews(ctx context.Context, day time.Time, fn func(ViewCount) error) error {
	if c.closed.Load() {
		return ErrClosed
	}
	err := c.store.ScanViews(ctx, dayOf(day, time.UTC), func(v ledger.ViewCount) error {
		return fn(ViewCount{Day: dayTime(v.Day), UserID: v.UserID, CatalogID: v.CatalogID, Count: v.Count})
	})
	return c.readErr(err)
}
