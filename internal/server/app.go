// Package server assembles an adpulse process from its Config: it opens the embedded engines
// in order (event log, catalog, dedup keys rebuilt from the log), serves the API and ops
// listeners, and shuts down in reverse order.
//
// Invariant: the API listener opens only after recovery is complete, so no request is
// answered from a dedup store that has not yet seen every key in the log; /readyz answers 503
// until then.
package server

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/adpulse/adpulse/internal/aggregate"
	"github.com/adpulse/adpulse/internal/billing"
	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/clicktoken"
	"github.com/adpulse/adpulse/internal/config"
	"github.com/adpulse/adpulse/internal/dedup"
	"github.com/adpulse/adpulse/internal/dedup/redisdedup"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/eventlog/kafkalog"
	"github.com/adpulse/adpulse/internal/eventlog/locallog"
	"github.com/adpulse/adpulse/internal/ingest"
	"github.com/adpulse/adpulse/internal/ivt"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/metricstore/pebblestore"
	"github.com/adpulse/adpulse/internal/query"
	"github.com/adpulse/adpulse/internal/query/topn"
	_ "github.com/go-sql-driver/mysql" // catalog on MySQL/MariaDB (--catalog-dsn mysql://...)
	_ "github.com/jackc/pgx/v5/stdlib" // catalog on PostgreSQL (--catalog-dsn postgres://...)
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	_ "modernc.org/sqlite" // the embedded catalog database
)

// App is one running adpulse process.
type App struct {
	cfg    config.Config
	logger *slog.Logger
	now    func() time.Time
	reg    *prometheus.Registry
	ready  atomic.Bool
	readyC chan struct{} // closed once the API listener serves

	log        eventlog.Log
	localLog   *locallog.Log // set when the log is local (retention, stats)
	kafkaLog   *kafkalog.Log // set when the log is on Kafka
	keys       dedup.Store
	memKeys    *dedup.Memory     // set when dedup is in process
	redisKeys  *redisdedup.Store // set when dedup is on Redis
	catalog    *catalog.Catalog
	intake     *ingest.Intake
	tokens     *clicktoken.Keyring
	metrics    *pebblestore.Store
	top        *topn.Index
	aggregator *aggregate.Aggregator
	billing    *billing.Charger

	api, ops     *http.Server
	apiLn, opsLn net.Listener
	// components run every long-lived part; the first to fail stops the process.
	components *group
	// unhealthy is why /readyz answers 503 although recovery is done ("" when healthy).
	unhealthy atomic.Pointer[string]
}

// New validates cfg and prepares the data dir and secrets. Nothing is opened until Run.
func New(cfg config.Config, logger *slog.Logger) (*App, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	a := &App{cfg: cfg, logger: logger, now: time.Now, reg: prometheus.NewRegistry(), readyC: make(chan struct{})}
	if err := a.loadSecrets(); err != nil {
		return nil, err
	}
	return a, nil
}

// loadSecrets fills in an admin key and a click secret that were not configured: generated on
// first start, stored 0600 in the data dir, and reused on every later start.
func (a *App) loadSecrets() error {
	dir := filepath.Join(a.cfg.DataDir, "secrets")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create secrets dir: %w", err)
	}
	var err error
	if a.cfg.AdminKey == "" {
		var created bool
		a.cfg.AdminKey, created, err = loadOrCreate(filepath.Join(dir, "admin-key"), newAdminKey)
		if err != nil {
			return err
		}
		if created {
			// Printed once, on the start that created it; later starts only say where it is.
			a.logger.Info("generated admin key (shown only now; stored in the data dir)", "admin_key", a.cfg.AdminKey, "file", filepath.Join(dir, "admin-key"))
		}
	}
	if a.cfg.ClickSecret == "" {
		a.cfg.ClickSecret, _, err = loadOrCreate(filepath.Join(dir, "click-secret"), clicktoken.GenerateSecret)
		if err != nil {
			return err
		}
	}
	a.tokens, err = clicktoken.ParseKeyring(a.cfg.ClickSecret)
	if err != nil {
		return fmt.Errorf("--click-secret: %w", err)
	}
	return nil
}

func loadOrCreate(path string, generate func() string) (value string, created bool, err error) {
	b, err := os.ReadFile(path)
	if err == nil {
		return string(trimNewline(b)), false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", false, fmt.Errorf("read %s: %w", path, err)
	}
	value = generate()
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return "", false, fmt.Errorf("create %s: %w", tmp, err)
	}
	_, err = f.WriteString(value + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return "", false, fmt.Errorf("write %s: %w", path, err)
	}
	return value, true, syncDir(filepath.Dir(path))
}

// newAdminKey returns a random admin key (256 bits) with a recognisable prefix.
func newAdminKey() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (Go 1.24+)
	return "adp_admin_" + base64.RawURLEncoding.EncodeToString(b[:])
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// AdminKey is the admin key in force (configured or generated).
func (a *App) AdminKey() string { return a.cfg.AdminKey }

// Run opens everything, serves until ctx ends or a component fails, then shuts down in
// reverse order. It returns nil after a shutdown asked for through ctx (however long the
// slowest client took: the grace is bounded by ShutdownTimeout, after which the remaining
// connections are cut), and the component's error after a failure, so the process exits
// non-zero and its supervisor restarts it.
func (a *App) Run(ctx context.Context) (err error) {
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.components = newGroup()
	if err := a.startOps(); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, a.closeAll()) }()

	start := time.Now()
	if err := a.open(ctx); err != nil {
		return err
	}
	if err := a.startAPI(); err != nil {
		return err
	}
	a.ready.Store(true)
	close(a.readyC)
	a.logger.Info("adpulse ready", "listen", a.apiLn.Addr().String(), "ops", a.opsLn.Addr().String(), "recovery", time.Since(start).Round(time.Millisecond))

	var failure error
	select {
	case <-ctx.Done():
		a.logger.Info("shutting down")
	case failure = <-a.components.Failed():
		msg := failure.Error()
		a.unhealthy.Store(&msg)
		a.logger.Error("component failed; stopping so that the process is restarted", "err", failure)
	}
	a.ready.Store(false)
	a.drainAPI()
	return failure
}

// drainAPI stops accepting and lets in-flight requests finish (each may still be waiting for
// its events to become durable, which needs the log open) for at most ShutdownTimeout, then
// cuts the connections that are left: a client that stalls must not hold the process.
func (a *App) drainAPI() {
	sctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
	defer cancel()
	if err := a.api.Shutdown(sctx); err != nil {
		a.logger.Warn("connections still open after the shutdown grace; closing them", "grace", a.cfg.ShutdownTimeout, "err", err)
		_ = a.api.Close()
	}
}

// openLog opens the event log: local segment files, or a Kafka topic.
func (a *App) openLog(ctx context.Context) error {
	logger := a.logger.With("component", "eventlog")
	switch a.cfg.EventLog {
	case "kafka":
		l, err := kafkalog.Open(ctx, kafkalog.Options{
			Brokers:           a.cfg.KafkaBrokers,
			Topic:             a.cfg.KafkaTopic,
			Partitions:        a.cfg.Partitions,
			ReplicationFactor: a.cfg.KafkaReplicationFactor,
			DeliveryTimeout:   a.cfg.KafkaDeliveryTimeout,
			TopicConfigs:      map[string]string{"retention.ms": fmt.Sprint(a.cfg.LogRetention.Milliseconds())},
			Logger:            logger,
		})
		if err != nil {
			return fmt.Errorf("open Kafka event log: %w", err)
		}
		a.log, a.kafkaLog = l, l
	default:
		l, err := locallog.Open(locallog.Options{
			Dir:          filepath.Join(a.cfg.DataDir, "log"),
			Partitions:   a.cfg.Partitions,
			SegmentBytes: a.cfg.SegmentBytes,
			Retention:    a.cfg.LogRetention,
			Logger:       logger,
		})
		if err != nil {
			return fmt.Errorf("open event log: %w", err)
		}
		a.log, a.localLog = l, l
	}
	return nil
}

// openDedup opens the idempotency-key store. The in-process one is rebuilt from the log
// (which is what makes a key and its event durable together); Redis keeps its own.
func (a *App) openDedup(ctx context.Context) error {
	if a.cfg.Dedup == "redis" {
		s, err := redisdedup.Open(ctx, redisdedup.Options{
			Addr:       a.cfg.RedisAddr,
			Password:   a.cfg.RedisPassword,
			Window:     a.cfg.DedupWindow,
			ReserveTTL: a.cfg.DedupReserveTTL,
			Logger:     a.logger.With("component", "dedup"),
		})
		if err != nil {
			return fmt.Errorf("open Redis dedup: %w", err)
		}
		a.keys, a.redisKeys = s, s
		return nil
	}
	mem := dedup.NewMemory(a.cfg.DedupWindow)
	t0 := time.Now()
	n, err := ingest.RestoreKeys(ctx, a.log, mem, a.cfg.DedupWindow, a.now(), a.logger)
	if err != nil {
		return err
	}
	a.logger.Info("dedup keys restored from the log", "events", n, "keys", mem.Len(), "took", time.Since(t0).Round(time.Millisecond))
	a.keys, a.memKeys = mem, mem
	return nil
}

// readiness is nil when /readyz may answer 200: recovery is done, no component has failed,
// and the backends the process needs are healthy.
func (a *App) readiness() error {
	if !a.ready.Load() {
		if msg := a.unhealthy.Load(); msg != nil {
			return errors.New(*msg)
		}
		return errors.New("recovery in progress")
	}
	if l, ok := a.log.(interface{ Err() error }); ok {
		if err := l.Err(); err != nil {
			return fmt.Errorf("event log: %w", err)
		}
	}
	// Backends on the network: each must answer within the backend timeout (bounded to
	// a second, so a probe never hangs on a stalled one).
	ctx, cancel := context.WithTimeout(context.Background(), min(a.cfg.BackendTimeout, time.Second))
	defer cancel()
	for name, b := range map[string]any{"event log": a.log, "dedup store": a.keys} {
		if p, ok := b.(interface{ Ping(context.Context) error }); ok {
			if err := p.Ping(ctx); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
	}
	return nil
}

// Ready is closed once recovery is done and the API listener serves.
func (a *App) Ready() <-chan struct{} { return a.readyC }

// open opens the engines in dependency order and rebuilds what lives only in memory.
func (a *App) open(ctx context.Context) error {
	var err error
	if err := a.openLog(ctx); err != nil {
		return err
	}
	catOpts := catalog.Options{
		DSN:      filepath.Join(a.cfg.DataDir, "catalog.db"),
		AdminKey: a.cfg.AdminKey,
		Logger:   a.logger.With("component", "catalog"),
	}
	if a.cfg.CatalogDSN != "" {
		if catOpts.Dialect, catOpts.Driver, catOpts.DSN, err = catalog.ParseDSN(a.cfg.CatalogDSN); err != nil {
			return fmt.Errorf("--catalog-dsn: %w", err)
		}
	}
	a.catalog, err = catalog.Open(ctx, catOpts)
	if err != nil {
		return fmt.Errorf("open catalog: %w", err)
	}
	if err := a.openDedup(ctx); err != nil {
		return err
	}
	resolveAfter := time.Second
	if a.kafkaLog != nil {
		// A produce that timed out may still be acknowledged until its delivery timeout.
		resolveAfter = a.cfg.KafkaDeliveryTimeout + 5*time.Second
	}
	a.intake = ingest.NewIntake(ingest.IntakeOptions{
		Log:            a.log,
		Dedup:          a.keys,
		InFlightWait:   a.cfg.InFlightWait,
		MaxHold:        a.cfg.MaxHold(),
		BackendTimeout: a.cfg.BackendTimeout,
		ResolveAfter:   resolveAfter,
		Now:            a.now,
		Logger:         a.logger.With("component", "ingest"),
	})

	a.metrics, err = pebblestore.Open(filepath.Join(a.cfg.DataDir, "metrics"), pebblestore.Options{
		MinuteRetention: a.cfg.MinuteRetention,
		Now:             a.now,
		Logger:          a.logger.With("component", "metricstore"),
	})
	if err != nil {
		return fmt.Errorf("open metric store: %w", err)
	}
	a.top = topn.New(topn.Options{Owners: catalogOwners{a.catalog}, Now: a.now, Logger: a.logger.With("component", "topn")})
	t0 := time.Now()
	if err := a.top.Rebuild(ctx, a.metrics); err != nil {
		return fmt.Errorf("rebuild top-N index: %w", err)
	}
	a.logger.Info("top-N index rebuilt from the metric store", "took", time.Since(t0).Round(time.Millisecond))
	// Every stage that writes the metric store goes through observed, so the top-N index sees
	// exactly the committed deltas, once each, in commit order.
	observed := &observedStore{Store: a.metrics, onApply: a.top.Add}
	a.aggregator, err = aggregate.New(aggregate.Options{
		Log:         a.log,
		Store:       observed,
		MaxLateness: a.cfg.MaxLateness,
		DedupSpan:   a.cfg.DedupWindow,
		Slack:       a.cfg.StreamSlack(),
		Now:         a.now,
		Logger:      a.logger.With("component", "aggregate"),
	})
	if err != nil {
		return fmt.Errorf("start aggregator: %w", err)
	}
	a.billing, err = billing.Open(ctx, billing.Options{
		Dir:       filepath.Join(a.cfg.DataDir, "billing"),
		Log:       a.log,
		Catalog:   a.catalog,
		Metrics:   observed,
		DedupSpan: a.cfg.DedupWindow,
		Slack:     a.cfg.StreamSlack(),
		Now:       a.now,
		Logger:    a.logger.With("component", "billing"),
	})
	if err != nil {
		return fmt.Errorf("open billing: %w", err)
	}

	g := a.components
	g.Go("ingest resolver", a.intake.Run)
	g.Go("catalog feed", a.catalog.Run)
	if a.localLog != nil {
		g.Go("eventlog retention", a.localLog.Run)
	}
	if a.memKeys != nil {
		g.Go("dedup sweep", func(ctx context.Context) error { return a.memKeys.Run(ctx, time.Minute, a.now) })
	}
	g.Go("metric store retention", a.metrics.Run)
	g.Go("top-N maintenance", a.top.Run)
	g.Go("aggregator", a.aggregator.Run)
	g.Go("billing", a.billing.Run)
	a.reg.MustRegister(newStatsCollector(a))
	return nil
}

func (a *App) startOps() error {
	ln, err := net.Listen("tcp", a.cfg.OpsListen)
	if err != nil {
		return fmt.Errorf("ops listener: %w", err)
	}
	a.opsLn = ln
	a.ops = &http.Server{Handler: opsHandler(a.reg, a.readiness), ReadHeaderTimeout: 10 * time.Second, WriteTimeout: time.Minute}
	go func() {
		if err := a.ops.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.components.fail(fmt.Errorf("ops listener: %w", err))
		}
	}()
	return nil
}

func (a *App) startAPI() error {
	ln, err := net.Listen("tcp", a.cfg.Listen)
	if err != nil {
		return fmt.Errorf("API listener: %w", err)
	}
	a.apiLn = ln
	publicURL := a.cfg.PublicURL
	if publicURL == "" {
		publicURL = "http://" + advertisedAddr(ln.Addr())
	}
	bots, err := ivt.New()
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", notFound)
	ingest.NewHandlers(ingest.Options{
		Intake:    a.intake,
		Ads:       catalogAds{a.catalog},
		Tokens:    a.tokens,
		Bots:      bots,
		PublicURL: publicURL,
		ClickTTL:  a.cfg.ClickTTL,
		Limits:    ingest.BatchLimits{MaxEvents: a.cfg.MaxBatch, MaxLateness: a.cfg.MaxLateness, MaxClockSkew: a.cfg.MaxClockSkew},
		MaxBody:   a.cfg.MaxBody,
		Now:       a.now,
		Logger:    a.logger.With("component", "ingest"),
	}).Register(mux)
	catalog.NewHandler(a.catalog, catalog.HandlerOptions{
		CampaignState: a.billing.CampaignState,
		Logger:        a.logger.With("component", "catalog"),
	}).Register(mux)
	q, err := query.New(query.Options{Store: a.metrics, Index: a.top, Owners: catalogOwners{a.catalog}, Now: a.now, Logger: a.logger.With("component", "query")})
	if err != nil {
		return err
	}
	q.Register(mux)
	billing.NewHandler(a.billing, billing.HandlerOptions{}).Register(mux)

	handler := a.catalog.Middleware(instrument(mux, newHTTPMetrics(a.reg), a.logger))
	a.api = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(a.logger.Handler(), slog.LevelDebug),
	}
	go func() {
		if err := a.api.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.components.fail(fmt.Errorf("API listener: %w", err))
		}
	}()
	return nil
}

// advertisedAddr turns a listen address such as [::]:8080 into one a person can open.
func advertisedAddr(addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}

// closeAll stops background work and closes engines in reverse order of opening.
func (a *App) closeAll() error {
	var errs []error
	if a.components != nil {
		a.components.Stop()
	}
	// Billing pushes its pending spend into the metric store as it closes, so it goes first;
	// the aggregator's uncommitted counts are simply replayed from the log next start.
	if a.billing != nil {
		errs = append(errs, a.billing.Close())
	}
	if a.aggregator != nil {
		errs = append(errs, a.aggregator.Close())
	}
	if a.top != nil {
		errs = append(errs, a.top.Close())
	}
	if a.metrics != nil {
		errs = append(errs, a.metrics.Close())
	}
	if a.catalog != nil {
		errs = append(errs, a.catalog.Close())
	}
	if a.keys != nil {
		errs = append(errs, a.keys.Close())
	}
	if a.log != nil {
		errs = append(errs, a.log.Close())
	}
	if a.ops != nil {
		errs = append(errs, a.ops.Close())
	}
	err := errors.Join(errs...)
	if err == nil {
		a.logger.Info("adpulse stopped")
	}
	return err
}

// APIAddr is the address the API listener is bound to (useful with --listen :0).
func (a *App) APIAddr() string {
	if a.apiLn == nil {
		return ""
	}
	return a.apiLn.Addr().String()
}

// observedStore passes every successful Apply's deltas to onApply.
type observedStore struct {
	metricstore.Store
	onApply func([]metricstore.Delta)
}

func (o *observedStore) Apply(ctx context.Context, c *metricstore.Commit) error {
	if err := o.Store.Apply(ctx, c); err != nil {
		return err
	}
	o.onApply(c.Deltas)
	return nil
}

// catalogOwners adapts the catalog to the ownership questions of queries.
type catalogOwners struct{ c *catalog.Catalog }

func (o catalogOwners) AdCampaign(adID string) (string, bool) {
	ad, ok := o.c.Ad(adID)
	return ad.CampaignID, ok
}

func (o catalogOwners) AdAdvertiser(adID string) (string, bool) { return o.c.AdOwner(adID) }

func (o catalogOwners) CampaignAdvertiser(campaignID string) (string, bool) {
	return o.c.CampaignOwner(campaignID)
}

// OpsAddr is the address the ops listener is bound to.
func (a *App) OpsAddr() string { return a.opsLn.Addr().String() }

// catalogAds adapts the catalog's index to what ingest reads.
type catalogAds struct{ c *catalog.Catalog }

func (c catalogAds) LookupAd(id string) (ingest.Ad, bool) {
	ad, ok := c.c.Ad(id)
	if !ok {
		return ingest.Ad{}, false
	}
	return ingest.Ad{CampaignID: ad.CampaignID, AdvertiserID: ad.AdvertiserID, LandingURL: ad.LandingURL, CatalogID: ad.CatalogID, BidMicros: ad.CPCBidMicros}, true
}
