package server

import "github.com/adpulse/adpulse/internal/dashboard"

// ingestHealth is what GET /api/v1/health/ingest reports: the same counters as the
// Prometheus metrics, for the dashboard's ingest page.
func (a *App) ingestHealth() dashboard.Health {
	var h dashboard.Health
	if a.ingest != nil {
		is := a.ingest.intake.Stats()
		h.Ingest = &dashboard.IngestHealth{
			EventsAccepted:   is.Accepted,
			EventsDuplicate:  is.Duplicates,
			RecordFailures:   is.Failures,
			TooSlow:          is.TooSlow,
			UnresolvedAppend: is.MaybeKeys,
			InvalidByReason:  make(map[string]int64, len(is.InvalidClicks)),
		}
		for reason, n := range is.InvalidClicks {
			h.Ingest.InvalidByReason[reason.String()] = n
		}
	}
	if p := a.process; p != nil {
		as, bs := p.aggregator.Stats(), p.billing.Stats()
		ph := &dashboard.PipelineHealth{WatermarkDelaySeconds: as.WatermarkDelay.Seconds(), LogRollbacks: a.b.logStats().Rollbacks}
		for _, ps := range as.Partitions {
			ph.AggregateLagMessages += ps.Lag
		}
		for _, ps := range bs.Partitions {
			ph.BillingLagMessages += ps.Lag
		}
		if !as.FinalBefore.IsZero() {
			fb := as.FinalBefore.UTC()
			ph.FinalBefore = &fb
		}
		h.Pipeline = ph
	}
	return h
}
