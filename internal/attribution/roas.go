package attribution

import (
	"context"
	"fmt"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
)

// Performance is what a campaign's ads earned over its lifetime, for campaign reads: the
// conversions credited to them, their value, the spend of their clicks, and ROAS (return on
// ad spend, value / spend; nil while nothing was spent). Both sides come from the metric
// store's day buckets, so they cover the same days.
type Performance struct {
	Conversions           int64    `json:"conversions"`
	ConversionValueMicros int64    `json:"conversion_value_micros"`
	SpendMicros           int64    `json:"spend_micros"`
	ROAS                  *float64 `json:"roas"`
}

// CampaignPerformance sums a campaign's day buckets from the day of since to now.
func CampaignPerformance(ctx context.Context, store metricstore.Store, campaignID string, since, now time.Time) (Performance, error) {
	day := 24 * time.Hour
	start := since.UTC().Truncate(day)
	end := now.UTC().Truncate(day).Add(day)
	if !start.Before(end) {
		start = end.Add(-day)
	}
	res, err := store.Query(ctx, metricstore.Query{
		Level: metricstore.LevelCampaign, IDs: []string{campaignID},
		Start: start, End: end, Interval: end.Sub(start),
	})
	if err != nil {
		return Performance{}, fmt.Errorf("attribution: campaign performance: %w", err)
	}
	var p Performance
	for _, s := range res.Series {
		for _, pt := range s.Points {
			p.Conversions += pt.Conversions
			p.ConversionValueMicros += pt.ConversionValueMicros
			p.SpendMicros += pt.SpendMicros
		}
	}
	if p.SpendMicros > 0 {
		roas := float64(p.ConversionValueMicros) / float64(p.SpendMicros)
		p.ROAS = &roas
	}
	return p, nil
}
