package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/adpulse/adpulse/internal/aggregate"
	"github.com/adpulse/adpulse/internal/archive"
	"github.com/adpulse/adpulse/internal/attribution"
	"github.com/adpulse/adpulse/internal/billing"
	"github.com/adpulse/adpulse/internal/billing/ledger"
	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/config"
	"github.com/adpulse/adpulse/internal/dashboard"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/eventlog/kafkalog"
	"github.com/adpulse/adpulse/internal/ingest"
	"github.com/adpulse/adpulse/internal/ivt"
	"github.com/adpulse/adpulse/internal/ivt/sivt"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/metricstore/clickhousestore"
	"github.com/adpulse/adpulse/internal/query"
	"github.com/adpulse/adpulse/internal/query/topn"
	"github.com/adpulse/adpulse/internal/reconcile"
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
		Hot: ingest.HotOptions{
			Salts:     a.cfg.HotAdSalts,
			Share:     a.cfg.HotAdShare,
			MinEvents: a.cfg.HotAdMinEvents,
			Cooldown:  a.cfg.HotAdCooldown,
			PinTTL:    a.cfg.DedupWindow,
		},
		Now:    a.now,
		Logger: a.logger.With("component", "ingest"),
	})}
	a.components.Go("ingest resolver", a.ingest.intake.Run)
}

// registerIngest serves the event endpoints on an ingest process, and on every process the
// click URL signing of the /api/v1 routes.
func (a *App) registerIngest(mux *http.ServeMux, publicURL string) error {
	if a.ingest == nil {
		ingest.NewHandlers(ingest.Options{
			Ads:       catalogAds{c: a.b.catalog},
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
		Ads:       catalogAds{a.b.catalog, a.feeds.bids},
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
// charger into the ledger. Embedded (--metric-store pebble) one process does all of it, and
// its top-N index is fed by every commit as it is applied; with a shared metric store, process
// nodes share the log's partitions through the Kafka consumer group (membership), and query
// nodes follow the store's commits into their own index.
type processRole struct {
	metrics    *metricsSeam
	top        *topn.Index // embedded only: the index the query role serves
	topLoad    *topLoad    // embedded only: rebuilds top after the process is ready
	aggregator aggregatorStage
	billing    *billing.Charger
	serving    *servingredis.Publisher // nil unless --serving-redis-addr
	membership *kafkalog.Membership    // nil unless shared
	archiver   *archive.Archiver       // nil with --archive-url off
	reconcile  *reconcile.Hourly       // nil with --reconcile off
	// attribution credits conversions to touches (see openAttribution): one Stage embedded
	// (attributionEmbedded, which also answers GET /api/v1/conversions), or a Shared stage
	// over the partitions this node owns and the touches topic (touches).
	attribution         attributionStage
	attributionEmbedded *attribution.Stage
	attributionShared   *attribution.Shared
	touches             *kafkalog.Log
	ivt                 *sivt.Stage // nil unless --ivt-rules
}

// aggregatorStage is the aggregation stage: one Aggregator over every partition, or a Shared
// one per partition this node owns.
type aggregatorStage interface {
	Run(ctx context.Context) error
	Stats() aggregate.Stats
	Close() error
}

// attributionStage is the attribution stage: one over every partition, or a Shared one.
type attributionStage interface {
	Run(ctx context.Context) error
	Stats() attribution.Stats
	Close() error
}

func (a *App) openProcess(ctx context.Context) error {
	p := &processRole{}
	a.process = p
	var err error
	if p.metrics, err = a.metricStore(ctx); err != nil {
		return err
	}
	store := p.metrics.store
	if !a.cfg.SharedProcessing() {
		// The index is rebuilt after the process is ready (see topLoad). Every stage writes
		// the metric store through the gated store, so the rebuild scans a store that does
		// not move; the index then sees the other stages' committed deltas, once each, in
		// commit order, and the aggregator's as it counts them (below).
		p.top = topn.New(topn.Options{Owners: catalogOwners{a.b.catalog}, Now: a.now, Logger: a.logger.With("component", "topn")})
		p.topLoad = newTopLoad(p.top)
		store = &gatedStore{Store: p.metrics.store, top: p.topLoad}
	}
	slack := a.cfg.StreamSlack()
	aggOpts := aggregate.Options{
		Log:         a.b.log,
		Store:       store,
		MaxLateness: a.cfg.MaxLateness,
		DedupSpan:   a.cfg.StreamDedupSpan(),
		Slack:       slack,
		Now:         a.now,
		Logger:      a.logger.With("component", "aggregate"),
	}
	if p.top != nil {
		// The aggregator feeds the index as it counts, not as it commits, so /metrics/top is
		// as fresh as /metrics (which adds the aggregator's pending counts itself); its
		// commits then only wait for the rebuild, or the index would count them twice.
		// Exact because what it counts before the rebuild is done is kept until then
		// (topLoad.count), and a failed aggregator stops this process.
		aggOpts.Store = &gatedStore{Store: p.metrics.store, top: p.topLoad, counted: true}
		aggOpts.OnCount = p.topLoad.count
	}
	var assignees []eventlog.Assignee
	if a.cfg.SharedProcessing() {
		shared, err := aggregate.NewShared(aggOpts, func(ctx context.Context, parts []int32) (map[int32]uint64, error) {
			return a.b.catalog.ClaimPartitions(ctx, a.cfg.KafkaGroup+"/aggregate", parts)
		})
		if err != nil {
			return fmt.Errorf("start aggregator: %w", err)
		}
		p.aggregator = shared
		assignees = append(assignees, shared)
	} else if p.aggregator, err = aggregate.New(aggOpts); err != nil {
		return fmt.Errorf("start aggregator: %w", err)
	}
	bo := billing.Options{
		Log:       a.b.log,
		Catalog:   a.b.catalog,
		Metrics:   store,
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
	if p.billing, err = a.openBilling(ctx, bo); err != nil {
		return err
	}
	if a.cfg.SharedProcessing() {
		assignees = append(assignees, p.billing)
	}
	g := a.components
	if p.serving != nil {
		g.Go("serving Redis views", func(ctx context.Context) error { return p.serving.RunViews(ctx, p.billing) })
	}
	if p.topLoad != nil {
		scanner := p.metrics.scanner
		g.Go("top-N index", func(ctx context.Context) error { return p.topLoad.run(ctx, scanner, a.logger) })
	}
	g.Go("aggregator", p.aggregator.Run)
	g.Go("billing", p.billing.Run)
	if err := a.openArchive(p, store); err != nil {
		return err
	}
	if p.archiver != nil && a.cfg.SharedProcessing() {
		assignees = append(assignees, p.archiver)
	}
	if err := a.openAttribution(ctx, store); err != nil {
		return err
	}
	if p.attributionShared != nil {
		assignees = append(assignees, p.attributionShared)
	}
	if len(assignees) > 0 {
		kl, ok := a.b.log.(*kafkalog.Log)
		if !ok {
			return errors.New("shared processing needs the Kafka event log")
		}
		p.membership, err = kl.Join(ctx, kafkalog.GroupOptions{
			Group:    a.cfg.KafkaGroup,
			Assignee: assigneeList(assignees),
			Logger:   a.logger.With("component", "membership"),
		})
		if err != nil {
			return fmt.Errorf("join the process group: %w", err)
		}
	}
	if a.cfg.IVTRules {
		if a.cfg.SharedProcessing() {
			return errors.New("--ivt-rules needs a single process node: the invalid-traffic stage reads every partition and refunds through this node's billing")
		}
		if err := a.openIVT(ctx, store, slack); err != nil {
			return err
		}
	}
	return nil
}

// openIVT opens the behavioural invalid-traffic stage: it reads the log beside billing,
// refunds through it and moves flagged clicks in the metric store under its own consumer.
func (a *App) openIVT(ctx context.Context, metrics metricstore.Store, slack time.Duration) error {
	p := a.process
	c := a.cfg
	var err error
	p.ivt, err = sivt.Open(ctx, sivt.Options{
		Dir:      a.dir.ivt(),
		Log:      a.b.log,
		Metrics:  metrics,
		Refunder: sivt.BillingRefunder(p.billing),
		Rules: sivt.Rules{FloodWindow: c.IVTFloodWindow, MaxClicksPerUser: c.IVTMaxClicksPerUser, MaxClicksPerIP: c.IVTMaxClicksPerIP,
			MaxClicksPerDevice: c.IVTMaxClicksPerDevice, ImpressionWindow: c.IVTImpressionWindow, NoImpression: c.IVTNoImpression,
			MinClickDelay: c.IVTMinClickDelay, ManyAdsWindow: c.IVTManyAdsWindow, MaxAdsPerSource: c.IVTMaxAdsPerSource},
		DedupSpan:      c.StreamDedupSpan(),
		Slack:          slack,
		BackendTimeout: c.BackendTimeout,
		Now:            a.now,
		Logger:         a.logger.With("component", "ivt"),
	})
	if err != nil {
		return fmt.Errorf("open ivt stage: %w", err)
	}
	a.components.Go("ivt", p.ivt.Run)
	return nil
}

// openBilling opens the charger: on the embedded Pebble ledger in the data dir, or, when the
// metric store is shared, on the shared SQL ledger with its partitions given by the process
// group (a query node's charger is given none: it serves reads and refunds).
func (a *App) openBilling(ctx context.Context, bo billing.Options) (*billing.Charger, error) {
	if !a.cfg.SharedProcessing() {
		bo.Dir = a.dir.billing()
	} else {
		db, d := a.b.catalog.DB()
		l, err := ledger.OpenSQL(ctx, db, ledger.Dialect(d), ledger.SQLOptions{Prefix: a.cfg.LedgerPrefix, Logger: a.logger.With("component", "ledger")})
		if err != nil {
			return nil, fmt.Errorf("open the ledger: %w", err)
		}
		a.ledger = l
		bo.Ledger, bo.Group = l, true
		bo.Node = nodeName(a.cfg)
	}
	start := time.Now()
	c, err := billing.Open(ctx, bo)
	if err != nil {
		return nil, fmt.Errorf("open billing: %w", err)
	}
	bo.Logger.Info("billing opened", "took", time.Since(start).Round(time.Millisecond))
	return c, nil
}

// nodeName names this process in the shared ledger: host and listen address.
func nodeName(cfg config.Config) string {
	host, _ := os.Hostname()
	return host + "/" + cfg.Listen
}

// metricStore opens the metric store once per process: the process and query roles of one
// process share it.
func (a *App) metricStore(ctx context.Context) (*metricsSeam, error) {
	if a.metrics != nil {
		return a.metrics, nil
	}
	m, err := a.openMetricStore(ctx)
	if err != nil {
		return nil, err
	}
	a.metrics = m
	a.components.Go("metric store retention", m.run)
	return m, nil
}

// openTopN builds a top-N index from the store's minutes.
func (a *App) openTopN(ctx context.Context, m *metricsSeam) (*topn.Index, error) {
	top := topn.New(topn.Options{Owners: catalogOwners{a.b.catalog}, Now: a.now, Logger: a.logger.With("component", "topn")})
	t0 := time.Now()
	if err := top.Rebuild(ctx, m.scanner); err != nil {
		return nil, fmt.Errorf("rebuild top-N index: %w", err)
	}
	a.logger.Info("top-N index rebuilt from the metric store", "took", time.Since(t0).Round(time.Millisecond))
	return top, nil
}

// assigneeList hands partition changes to every stage in order (and revocations in reverse,
// so a stage is never left consuming a partition whose later stages stopped).
type assigneeList []eventlog.Assignee

func (l assigneeList) Assign(ctx context.Context, parts []int32) error {
	for i, s := range l {
		if err := s.Assign(ctx, parts); err != nil {
			for _, done := range l[:i] {
				done.Revoke(parts)
			}
			return err
		}
	}
	return nil
}

func (l assigneeList) Revoke(parts []int32) {
	for i := len(l) - 1; i >= 0; i-- {
		l[i].Revoke(parts)
	}
}

// openAttribution starts the attribution stage. Embedded, one stage reads every partition,
// with its touch store in the data dir. Shared, a Shared stage runs each owned partition:
// it republishes the partition's touches to the touches topic (the log's topic + "-touches",
// keyed by user) and attributes the partition's conversions against the touches topic's
// partition of the same number, fenced by the partition's epoch. Both commit to the metric
// store through the same store as the other stages (so the top-N index ranks by them too).
func (a *App) openAttribution(ctx context.Context, store metricstore.Store) error {
	perAdv, err := attribution.ParseWindows(a.cfg.AttributionWindows, config.MaxAttributionWindow)
	if err != nil {
		return fmt.Errorf("--attribution-windows: %w", err)
	}
	p := a.process
	o := attribution.Options{
		Dir:         a.dir.attribution(),
		Log:         a.b.log,
		Metrics:     store,
		Policy:      a.attributionPolicy(perAdv),
		MaxLateness: a.cfg.MaxLateness,
		Slack:       a.cfg.StreamSlack(),
		MaxTouches:  a.cfg.AttributionMaxTouches,
		Logger:      a.logger.With("component", "attribution"),
	}
	if !a.cfg.SharedProcessing() {
		st, err := attribution.Open(ctx, o)
		if err != nil {
			return fmt.Errorf("open attribution: %w", err)
		}
		p.attribution, p.attributionEmbedded = st, st
		a.components.Go("attribution", st.Run)
		return nil
	}
	// The touches topic keeps touches as long as a rebuilt partition stage needs them.
	retention := max(a.cfg.LogRetention, attribution.TouchRetention(o.Policy, o.MaxLateness, o.Slack)+attribution.ReplayMargin)
	p.touches, err = kafkalog.Open(ctx, kafkalog.Options{
		Brokers:           a.cfg.KafkaBrokers,
		Topic:             a.cfg.KafkaTopic + attribution.TouchesTopicSuffix,
		Partitions:        a.cfg.Partitions,
		ReplicationFactor: a.cfg.KafkaReplicationFactor,
		DeliveryTimeout:   a.cfg.KafkaDeliveryTimeout,
		TopicConfigs:      map[string]string{"retention.ms": fmt.Sprint(retention.Milliseconds())},
		Logger:            a.logger.With("component", "attribution-touches"),
	})
	if err != nil {
		return fmt.Errorf("open the touches topic: %w", err)
	}
	st, err := attribution.NewShared(attribution.SharedOptions{Options: o, Touches: p.touches,
		Claim: func(ctx context.Context, parts []int32) (map[int32]uint64, error) {
			return a.b.catalog.ClaimPartitions(ctx, a.cfg.KafkaGroup+"/attribution", parts)
		}})
	if err != nil {
		return fmt.Errorf("start attribution: %w", err)
	}
	p.attribution, p.attributionShared = st, st
	a.components.Go("attribution", st.Run)
	return nil
}

// attributionPolicy is the deployment's LastTouch policy: the flags' windows for every
// advertiser, overridden by --attribution-windows, overridden by the windows the advertiser
// set through the API (in force at the conversion's time). Any advertiser may set up to
// MaxAttributionWindow, so touches are remembered that long.
func (a *App) attributionPolicy(perAdv map[string]attribution.Windows) attribution.Policy {
	p := attribution.NewLastTouch(attribution.Windows{Click: a.cfg.AttributionClickWindow, View: a.cfg.AttributionViewWindow}, perAdv)
	return attribution.WithHistory(p, a.b.catalog.WindowsAt, config.MaxAttributionWindow)
}

// campaignPerformance is catalog.HandlerOptions.CampaignPerformance: conversions, value,
// spend and ROAS of a campaign's lifetime, from the metric store (nil when it cannot be read,
// so a campaign read never fails for it).
func (a *App) campaignPerformance(ctx context.Context, cp catalog.Campaign) any {
	perf, err := attribution.CampaignPerformance(ctx, a.metrics.store, cp.ID, cp.CreatedAt, a.now())
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
	if p.ivt != nil { // it refunds through billing and writes the metric store: first
		errs = append(errs, p.ivt.Close())
	}
	if p.membership != nil {
		errs = append(errs, p.membership.Close())
	}
	if p.billing != nil {
		errs = append(errs, p.billing.Close())
	}
	if p.attribution != nil {
		errs = append(errs, p.attribution.Close())
	}
	if p.touches != nil {
		errs = append(errs, p.touches.Close())
	}
	if p.aggregator != nil {
		errs = append(errs, p.aggregator.Close())
	}
	if p.archiver != nil {
		errs = append(errs, p.archiver.Close())
	}
	if p.top != nil {
		errs = append(errs, p.top.Close())
	}
	if p.serving != nil {
		errs = append(errs, p.serving.Close())
	}
	return errs
}

// queryRole answers the reads of what process nodes compute: /metrics from the metric store,
// /metrics/top from a top-N index (the process role's, embedded; with a shared store, its own,
// rebuilt from the store and then fed by following the store's commits).
type queryRole struct {
	metrics *metricsSeam
	top     *topn.Index
	billing *billing.Charger // the process role's, or one of its own on the shared ledger
	// followErr is the last error following the shared store (nil when it is current).
	followErr atomic.Pointer[error]
}

func (a *App) openQuery(ctx context.Context) error {
	q := &queryRole{}
	a.query = q
	var err error
	if q.metrics, err = a.metricStore(ctx); err != nil {
		return err
	}
	if a.process != nil {
		q.billing = a.process.billing
	}
	if a.process != nil && a.process.top != nil {
		q.top = a.process.top
		return nil
	}
	if q.metrics.follower == nil {
		return errors.New("a query node without the process role needs a shared metric store (--metric-store clickhouse)")
	}
	// Budgets, clicks and refunds read and write the shared ledger.
	if q.billing, err = a.openBilling(ctx, billing.Options{
		Log: a.b.log, Catalog: a.b.catalog, Metrics: q.metrics.store,
		Now: a.now, Logger: a.logger.With("component", "billing"),
	}); err != nil {
		return err
	}
	a.components.Go("billing", q.billing.Run)
	var cur clickhousestore.Cursor
	q.top, err = a.openTopN(ctx, &metricsSeam{scanner: cursorScanner{q.metrics.follower, &cur}})
	if err != nil {
		return err
	}
	a.components.Go("top-N maintenance", q.top.Run)
	a.components.Go("top-N follower", func(ctx context.Context) error {
		return followCommits(ctx, q.metrics.follower, cur, q.top, func(err error) {
			if err != nil {
				a.logger.Warn("following the metric store's commits failed; /metrics/top lags", "err", err)
				q.followErr.Store(&err)
			} else {
				q.followErr.Store(nil)
			}
		})
	})
	return nil
}

// cursorScanner rebuilds from a snapshot of the shared store and keeps its cursor, so the
// follower continues exactly where the rebuild's snapshot ends.
type cursorScanner struct {
	s   *clickhousestore.Store
	cur *clickhousestore.Cursor
}

func (c cursorScanner) ScanMinutes(ctx context.Context, from, to int64, fn func(d *metricstore.Delta) error) error {
	cur, err := c.s.ScanMinutesAt(ctx, from, to, fn)
	*c.cur = cur
	return err
}

// registerQuery serves /metrics and /metrics/top, and, where the ledger is, the serving
// feed, user views, clicks and refunds.
func (a *App) registerQuery(mux *http.ServeMux) error {
	var index query.TopIndex = a.query.top
	if a.process != nil && a.process.topLoad != nil {
		index = a.process.topLoad
	}
	qo := query.Options{Store: a.query.metrics.store, Index: index, Owners: catalogOwners{a.b.catalog}, Now: a.now, Logger: a.logger.With("component", "query")}
	if a.process != nil {
		// Embedded: /metrics adds what the aggregator counted but has not committed. Query
		// nodes of a shared deployment read the committed state only.
		if agg, ok := a.process.aggregator.(*aggregate.Aggregator); ok {
			qo.Pending = agg
		}
	}
	q, err := query.New(qo)
	if err != nil {
		return err
	}
	q.Register(mux)
	bh := billing.HandlerOptions{}
	if a.process != nil && a.process.ivt != nil {
		st := a.process.ivt
		sivt.NewHandler(st).Register(mux)
		bh.Explain = func(c billing.Click) (any, error) {
			key := (&event.Event{Type: event.TypeClick, ImpressionID: c.ImpressionID, EventID: c.EventID}).Key()
			x, err := st.Explain(key)
			if x == nil || err != nil {
				return nil, err // no verdict: nothing added (a nil *Explanation is not a nil any)
			}
			return x, nil
		}
	}
	billing.NewHandler(a.query.billing, bh).Register(mux)
	dashboard.New(dashboard.Options{Catalog: a.b.catalog, Health: a.ingestHealth, Now: a.now}).Register(mux)
	if a.process != nil && a.process.attributionEmbedded != nil {
		attribution.NewHandler(a.process.attributionEmbedded, a.logger.With("component", "attribution")).Register(mux)
	}
	return nil
}

// roleReadiness is nil when the backends of the roles answer: the shared metric store, the
// process group's assignment, the query node's view of the store's commits.
func (a *App) roleReadiness(timeout time.Duration) error {
	if a.metrics != nil && a.metrics.follower != nil {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if err := a.metrics.follower.Ping(ctx); err != nil {
			return fmt.Errorf("metric store: %w", err)
		}
	}
	if a.process != nil && a.process.membership != nil {
		if err := a.process.membership.Err(); err != nil {
			return fmt.Errorf("process group: %w", err)
		}
	}
	// Lag makes a process node unready, never one that takes clicks (a load balancer would
	// stop sending it traffic while it catches up).
	if a.process != nil && a.cfg.SharedProcessing() && !a.cfg.Has(config.RoleIngest) && a.cfg.ReadyMaxLag > 0 {
		for _, ps := range a.process.aggregator.Stats().Partitions {
			if ps.Lag > a.cfg.ReadyMaxLag {
				return fmt.Errorf("catching up: partition %d is %d messages behind (--ready-max-lag %d)", ps.Partition, ps.Lag, a.cfg.ReadyMaxLag)
			}
		}
	}
	if a.query != nil {
		if err := a.query.followErr.Load(); err != nil {
			return fmt.Errorf("following the metric store: %w", *err)
		}
	}
	return nil
}
