package server

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/adpulse/adpulse/internal/aggregate"
	"github.com/adpulse/adpulse/internal/attribution"
	"github.com/adpulse/adpulse/internal/billing"
	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/config"
	"github.com/adpulse/adpulse/internal/ingest"
	"github.com/adpulse/adpulse/internal/ivt"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/metricstore/pebblestore"
	"github.com/adpulse/adpulse/internal/query"
	"github.com/adpulse/adpulse/internal/query/topn"
	"github.com/adpulse/adpulse/internal/servingredis"
)

// The roles of a process (--roles), each wired in one place: what it opens, which components
// it runs in the group, and which routes it serves. The catalog and key API answers on every
// process.

// ingestRole takes events in: GET /c, GET /i, POST /click, POST /events.
type ingestRole struct {
	intake *ingest.Intake
}

func (a *App) openIngest() {
	resolveAfter := time.Second
	if a.cfg.EventLog == "kafka" {
		// A produce that timed out may still be acknowledged until its delivery timeout.
		resolveAfter = a.cfg.KafkaDeliveryTimeout + 5*time.Second
	}
	a.ingest = &ingestRole{intake: ingest.NewIntake(ingest.IntakeOptions{
		Log:            a.b.log,
		Dedup:          a.b.keys,
		InFlightWait:   a.cfg.InFlightWait,
		MaxHold:        a.cfg.MaxHold(),
		BackendTimeout: a.cfg.BackendTimeout,
		ResolveAfter:   resolveAfter,
		Now:            a.now,
		Logger:         a.logger.With("component", "ingest"),
	})}
	a.components.Go("ingest resolver", a.ingest.intake.Run)
}

// registerIngest serves the event endpoints on an ingest process, and on every process the
// click URL signing of the /api/v1 routes.
func (a *App) registerIngest(mux *http.ServeMux, publicURL string) error {
	if a.ingest == nil {
		ingest.NewHandlers(ingest.Options{
			Ads:       catalogAds{a.b.catalog},
			Tokens:    a.tokens,
			PublicURL: publicURL,
			ClickTTL:  a.cfg.ClickTTL,
			Now:       a.now,
			Logger:    a.logger.With("component", "ingest"),
		}).RegisterClickURLs(mux)
		return nil
	}
	bots, err := ivt.NewFilter(ivt.Options{TrustedProxies: a.cfg.TrustedProxies})
	if err != nil {
		return err
	}
	ingest.NewHandlers(ingest.Options{
		Intake:    a.ingest.intake,
		Ads:       catalogAds{a.b.catalog},
		Tokens:    a.tokens,
		Bots:      bots,
		PublicURL: publicURL,
		ClickTTL:  a.cfg.ClickTTL,
		Limits:    ingest.BatchLimits{MaxEvents: a.cfg.MaxBatch, MaxLateness: a.cfg.MaxLateness, MaxClockSkew: a.cfg.MaxClockSkew, ConversionTypes: a.cfg.ConversionTypes},
		MaxBody:   a.cfg.MaxBody,
		Now:       a.now,
		Logger:    a.logger.With("component", "ingest"),
	}).Register(mux)
	return nil
}

// processRole turns the log into counts and money: the aggregator into the metric store, the
// charger into the ledger, and the top-N index fed by every commit.
type processRole struct {
	metrics    *pebblestore.Store
	top        *topn.Index
	aggregator *aggregate.Aggregator
	billing    *billing.Charger
	serving    *servingredis.Publisher // nil unless --serving-redis-addr
	// attribution credits conversions to touches (see openAttribution).
	attribution *attribution.Stage
}

func (a *App) openProcess(ctx context.Context) error {
	p := &processRole{}
	a.process = p
	var err error
	p.metrics, err = pebblestore.Open(a.dir.metrics(), pebblestore.Options{
		MinuteRetention: a.cfg.MinuteRetention,
		Now:             a.now,
		Logger:          a.logger.With("component", "metricstore"),
	})
	if err != nil {
		return fmt.Errorf("open metric store: %w", err)
	}
	p.top = topn.New(topn.Options{Owners: catalogOwners{a.b.catalog}, Now: a.now, Logger: a.logger.With("component", "topn")})
	t0 := time.Now()
	if err := p.top.Rebuild(ctx, p.metrics); err != nil {
		return fmt.Errorf("rebuild top-N index: %w", err)
	}
	a.logger.Info("top-N index rebuilt from the metric store", "took", time.Since(t0).Round(time.Millisecond))
	// Every stage that writes the metric store goes through observed, so the top-N index sees
	// exactly the committed deltas, once each, in commit order.
	observed := &observedStore{Store: p.metrics, onApply: p.top.Add}
	slack := a.cfg.StreamSlack()
	p.aggregator, err = aggregate.New(aggregate.Options{
		Log:         a.b.log,
		Store:       observed,
		MaxLateness: a.cfg.MaxLateness,
		DedupSpan:   a.cfg.StreamDedupSpan(),
		Slack:       slack,
		Now:         a.now,
		Logger:      a.logger.With("component", "aggregate"),
	})
	if err != nil {
		return fmt.Errorf("start aggregator: %w", err)
	}
	bo := billing.Options{
		Dir:       a.dir.billing(),
		Log:       a.b.log,
		Catalog:   a.b.catalog,
		Metrics:   observed,
		DedupSpan: a.cfg.StreamDedupSpan(),
		Slack:     slack,
		Now:       a.now,
		Logger:    a.logger.With("component", "billing"),
	}
	if a.cfg.ServingRedisAddr != "" {
		// The ad servers' Redis: the feed every FeedInterval (atomic switch), views as
		// their rounds commit (absolute totals, resynced from the ledger on start).
		p.serving, err = servingredis.Open(ctx, servingredis.Options{
			Addr:      a.cfg.ServingRedisAddr,
			Password:  a.cfg.ServingRedisPassword,
			KeyPrefix: a.cfg.ServingRedisPrefix,
			Timeout:   min(a.cfg.BackendTimeout, time.Second),
			Logger:    a.logger.With("component", "servingredis"),
		})
		if err != nil {
			return fmt.Errorf("open serving Redis: %w", err)
		}
		bo.Publisher, bo.OnViews, bo.FeedInterval = p.serving, p.serving.ViewsCommitted, servingredis.FeedInterval
	}
	p.billing, err = billing.Open(ctx, bo)
	if err != nil {
		return fmt.Errorf("open billing: %w", err)
	}
	g := a.components
	if p.serving != nil {
		g.Go("serving Redis views", func(ctx context.Context) error { return p.serving.RunViews(ctx, p.billing) })
	}
	g.Go("metric store retention", p.metrics.Run)
	g.Go("top-N maintenance", p.top.Run)
	g.Go("aggregator", p.aggregator.Run)
	g.Go("billing", p.billing.Run)
	return a.openAttribution(ctx, observed)
}

// openAttribution starts the attribution stage: one stage reading every partition, with its
// touch store in the data dir, committing conversions to the metric store through the same
// observed store as the other stages (so the top-N index ranks by them too).
func (a *App) openAttribution(ctx context.Context, store metricstore.Store) error {
	perAdv, err := attribution.ParseWindows(a.cfg.AttributionWindows, config.MaxAttributionWindow)
	if err != nil {
		return fmt.Errorf("--attribution-windows: %w", err)
	}
	p := a.process
	p.attribution, err = attribution.Open(ctx, attribution.Options{
		Dir:         a.dir.attribution(),
		Log:         a.b.log,
		Metrics:     store,
		Policy:      attribution.NewLastTouch(attribution.Windows{Click: a.cfg.AttributionClickWindow, View: a.cfg.AttributionViewWindow}, perAdv),
		MaxLateness: a.cfg.MaxLateness,
		Slack:       a.cfg.StreamSlack(),
		MaxTouches:  a.cfg.AttributionMaxTouches,
		Logger:      a.logger.With("component", "attribution"),
	})
	if err != nil {
		return fmt.Errorf("open attribution: %w", err)
	}
	a.components.Go("attribution", p.attribution.Run)
	return nil
}

// campaignPerformance is catalog.HandlerOptions.CampaignPerformance: conversions, value,
// spend and ROAS of a campaign's lifetime, from the metric store (nil when it cannot be read,
// so a campaign read never fails for it).
func (a *App) campaignPerformance(ctx context.Context, cp catalog.Campaign) any {
	perf, err := attribution.CampaignPerformance(ctx, a.process.metrics, cp.ID, cp.CreatedAt, a.now())
	if err != nil {
		a.logger.Warn("campaign performance", "campaign_id", cp.ID, "err", err)
		return nil
	}
	return perf
}

// close closes the process role's engines. Billing pushes its pending spend into the metric
// store as it closes, so it goes first; the aggregator's uncommitted counts are simply
// replayed from the log next start.
func (p *processRole) close() []error {
	var errs []error
	if p.billing != nil {
		errs = append(errs, p.billing.Close())
	}
	if p.attribution != nil {
		errs = append(errs, p.attribution.Close())
	}
	if p.aggregator != nil {
		errs = append(errs, p.aggregator.Close())
	}
	if p.top != nil {
		errs = append(errs, p.top.Close())
	}
	if p.metrics != nil {
		errs = append(errs, p.metrics.Close())
	}
	if p.serving != nil {
		errs = append(errs, p.serving.Close())
	}
	return errs
}

// registerQuery serves the reads of what the process role computes: /metrics, /metrics/top,
// the serving feed, user views, clicks and refunds. Config validation keeps query together
// with process until the metric store and ledger are shared.
func (a *App) registerQuery(mux *http.ServeMux) error {
	p := a.process
	q, err := query.New(query.Options{Store: p.metrics, Index: p.top, Owners: catalogOwners{a.b.catalog}, Now: a.now, Logger: a.logger.With("component", "query")})
	if err != nil {
		return err
	}
	q.Register(mux)
	billing.NewHandler(p.billing, billing.HandlerOptions{}).Register(mux)
	attribution.NewHandler(p.attribution, a.logger.With("component", "attribution")).Register(mux)
	return nil
}
