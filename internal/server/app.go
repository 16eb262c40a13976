// Package server assembles an adpulse process from its Config: it opens the shared backends
// (event log, dedup keys, catalog), then the roles the process runs (--roles: ingest,
// process, query), runs every long-lived component in one group, serves the API and ops
// listeners, and shuts down in reverse order.
//
// Invariants:
//   - The API listener opens only after recovery is complete, so no request is answered from
//     a dedup store that has not yet seen every key in the log; /readyz answers 503 until
//     then.
//   - A component that fails stops the process with a non-zero exit (so its supervisor
//     restarts it), and /readyz answers 503 from that moment, naming the failure; it also
//     answers 503 while a backend the process needs is down.
//   - SIGTERM drains in-flight requests for at most --shutdown-timeout, cuts what is left, and
//     returns nil (exit 0).
//
// Layout: app.go is the lifecycle; datadir.go owns the data dir; backends.go the shared seams;
// roles.go what each role opens, runs and serves; adapters.go the glue between packages.
package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/adpulse/adpulse/api"
	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/clicktoken"
	"github.com/adpulse/adpulse/internal/config"
	"github.com/adpulse/adpulse/internal/ratelimit"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
)

// App is one running adpulse process.
type App struct {
	cfg    config.Config
	logger *slog.Logger
	now    func() time.Time
	reg    *prometheus.Registry
	dir    *dataDir
	tokens *clicktoken.Keyring
	// limits are per source address and per API key, in front of every handler.
	limits *ratelimit.Limiter

	b       backends
	ingest  *ingestRole  // nil unless the process runs the ingest role
	process *processRole // nil unless the process runs the process role
	query   *queryRole   // nil unless the process runs the query role
	metrics *metricsSeam // the metric store of the process and query roles (nil without them)
	ledger  io.Closer    // the shared SQL ledger, when the metric store is shared
	feeds   *feedsRole   // the data-science feeds (every process)

	ready  atomic.Bool
	readyC chan struct{} // closed once the API listener serves
	// unhealthy is why /readyz answers 503 once the process is stopping: a component's failure,
	// or a shutdown (nil before either).
	unhealthy atomic.Pointer[string]
	// components run every long-lived part; the first to fail stops the process.
	components *group

	api, ops     *http.Server
	apiLn, opsLn net.Listener
}

// New validates cfg, takes the data dir and prepares the secrets. Nothing else is opened
// until Run; nothing is written to the data dir unless cfg is valid.
func New(cfg config.Config, logger *slog.Logger) (*App, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.CatalogDSN != "" {
		// Checked before anything is written: a mistyped DSN must not leave a data dir behind.
		if _, _, _, err := catalog.ParseDSN(cfg.CatalogDSN); err != nil {
			return nil, fmt.Errorf("--catalog-dsn: %w", err)
		}
	}
	var wait time.Duration
	if handedOver() {
		wait = handoffLockWait // the previous process is still draining
	}
	dir, err := openDataDir(cfg.DataDir, wait)
	if err != nil {
		return nil, err
	}
	a := &App{cfg: cfg, logger: logger, now: time.Now, reg: prometheus.NewRegistry(), dir: dir, readyC: make(chan struct{})}
	a.limits = a.newLimiter()
	if err := a.loadSecrets(); err != nil {
		dir.close()
		return nil, err
	}
	return a, nil
}

// loadSecrets fills in an admin key and a click secret that were not configured: generated on
// first start, stored 0600 in the data dir, and reused on every later start.
func (a *App) loadSecrets() error {
	dir := a.dir.secrets()
	if err := mkdirPrivate(dir); err != nil {
		return fmt.Errorf("create secrets dir: %w", err)
	}
	var err error
	if a.cfg.AdminKey == "" {
		var created bool
		a.cfg.AdminKey, created, err = loadSecret(filepath.Join(dir, "admin-key"), newAdminKey)
		if err != nil {
			return err
		}
		if created {
			// Printed once, on the start that created it; later starts only say where it is.
			a.logger.Info("generated admin key (shown only now; stored in the data dir)", "admin_key", a.cfg.AdminKey, "file", filepath.Join(dir, "admin-key"))
		}
	}
	if a.cfg.ClickSecret == "" {
		a.cfg.ClickSecret, _, err = loadSecret(filepath.Join(dir, "click-secret"), clicktoken.GenerateSecret)
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

// AdminKey is the admin key in force (configured or generated).
func (a *App) AdminKey() string { return a.cfg.AdminKey }

// Run opens everything, serves until ctx ends or a component fails, then shuts down in
// reverse order. It returns nil after a shutdown asked for through ctx (however long the
// slowest client took: the grace is bounded by ShutdownTimeout, after which the remaining
// connections are cut), and the component's error after a failure, so the process exits
// non-zero and its supervisor restarts it.
func (a *App) Run(ctx context.Context) (err error) {
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registerBuildInfo(a.reg, cmp.Or(a.cfg.Version, "dev"))
	a.components = newGroup()
	if err := a.startOps(); err != nil {
		a.dir.close()
		return err
	}
	defer func() { err = errors.Join(err, a.closeAll()) }()
	if err := a.startMemoryGovernor(); err != nil {
		return err
	}

	start := time.Now()
	if err := a.open(ctx); err != nil {
		return err
	}
	if err := a.startAPI(); err != nil {
		return err
	}
	a.ready.Store(true)
	close(a.readyC)
	a.logger.Info("adpulse ready", "listen", a.apiLn.Addr().String(), "ops", a.opsLn.Addr().String(), "roles", a.cfg.Roles, "recovery", time.Since(start).Round(time.Millisecond))

	var failure error
	select {
	case <-ctx.Done():
		msg := "shutting down"
		a.unhealthy.Store(&msg)
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

// open opens the backends and then each role, in dependency order, and rebuilds what lives
// only in memory.
func (a *App) open(ctx context.Context) error {
	if err := a.b.openLog(ctx, &a.cfg, a.dir, a.logger); err != nil {
		return err
	}
	// The catalog and the idempotency keys are independent, and at ten million ads loading
	// each takes most of a second: they load side by side. The roles open after both, so
	// that the work they start (the aggregator's and billing's replay of the log) does not
	// take the cores from the loads the API listener waits for.
	// A failure of either stops the other.
	loads, lctx := errgroup.WithContext(ctx)
	loads.Go(func() error { return a.b.openCatalog(lctx, &a.cfg, a.dir, a.logger) })
	loads.Go(func() error { return a.b.openDedup(lctx, &a.cfg, a.dir, a.now, a.logger) })
	if err := loads.Wait(); err != nil {
		return err
	}
	for _, c := range a.b.components {
		a.components.Go(c.name, c.run)
	}
	if err := a.openFeeds(ctx); err != nil {
		return err
	}
	if a.cfg.Has(config.RoleIngest) {
		a.openIngest()
	}
	if a.cfg.Has(config.RoleProcess) {
		if err := a.openProcess(ctx); err != nil {
			return err
		}
	}
	if a.cfg.Has(config.RoleQuery) {
		if err := a.openQuery(ctx); err != nil {
			return err
		}
	}
	if a.cfg.Has(config.RoleCron) {
		if err := a.openCron(); err != nil {
			return err
		}
	}
	a.reg.MustRegister(newStatsCollector(a))
	return nil
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

// readiness is nil when /readyz may answer 200: recovery is done, no component has failed,
// and the backends the process needs are healthy.
func (a *App) readiness() error {
	if !a.ready.Load() {
		if msg := a.unhealthy.Load(); msg != nil {
			return errors.New(*msg)
		}
		return errors.New("recovery in progress")
	}
	if err := a.archiveReadiness(); err != nil {
		return err
	}
	// A probe never hangs on a stalled backend: each must answer within a second.
	timeout := min(a.cfg.BackendTimeout, time.Second)
	if err := a.b.readiness(timeout); err != nil {
		return err
	}
	return a.roleReadiness(timeout)
}

// Ready is closed once recovery is done and the API listener serves.
func (a *App) Ready() <-chan struct{} { return a.readyC }

func (a *App) startOps() error {
	ln, err := listen("ops", a.cfg.OpsListen)
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
	ln, err := listen("api", a.cfg.Listen)
	if err != nil {
		return fmt.Errorf("API listener: %w", err)
	}
	a.apiLn = ln
	publicURL := a.cfg.PublicURL
	if publicURL == "" {
		publicURL = "http://" + advertisedAddr(ln.Addr())
	}
	if localURLOnPublicListener(publicURL, ln.Addr()) {
		a.logger.Warn("click and impression URLs point at this machine's loopback address while the API listens on every interface: browsers elsewhere cannot follow them; set --public-url", "public_url", publicURL, "listen", ln.Addr().String())
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", notFound)
	if err := a.registerIngest(mux, publicURL); err != nil {
		return err
	}
	catOpts := catalog.HandlerOptions{Logger: a.logger.With("component", "catalog")}
	if a.query != nil {
		catOpts.CampaignState = a.query.billing.CampaignState
	} else if a.process != nil {
		catOpts.CampaignState = a.process.billing.CampaignState
	}
	if a.metrics != nil {
		catOpts.CampaignPerformance = a.campaignPerformance
	}
	catalog.NewHandler(a.b.catalog, catOpts).Register(mux)
	a.registerFeeds(mux)
	if a.cfg.Has(config.RoleQuery) {
		if err := a.registerQuery(mux); err != nil {
			return err
		}
	}
	mux.Handle("GET /openapi.json", api.Handler())

	handler := a.b.catalog.Middleware(a.limits.Middleware(instrument(mux, newHTTPMetrics(a.reg), a.logger)))
	// WriteTimeout runs from the end of the headers, so it covers the body (up to
	// ReadTimeout) as well as the response: 2m leaves a minute for the largest response,
	// about 15 MB of /metrics. It is the backstop; /metrics and /events set tighter deadlines
	// as they make progress (httpapi.Stream, httpapi.ReadBody).
	a.api = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      2 * time.Minute,
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

// localURLOnPublicListener reports whether click URLs would name localhost (or another
// loopback address) although the listener takes connections from anywhere.
func localURLOnPublicListener(publicURL string, ln net.Addr) bool {
	u, err := url.Parse(publicURL)
	if err != nil {
		return false
	}
	lhost, _, err := net.SplitHostPort(ln.String())
	if err != nil {
		return false
	}
	if ip := net.ParseIP(lhost); ip == nil || !ip.IsUnspecified() {
		return false
	}
	h := u.Hostname()
	ip := net.ParseIP(h)
	return h == "localhost" || (ip != nil && ip.IsLoopback())
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

// closeAll stops the components and closes engines in reverse order of opening.
func (a *App) closeAll() error {
	if a.components != nil {
		a.components.Stop()
	}
	var errs []error
	if a.process != nil {
		errs = append(errs, a.process.close()...)
	}
	if a.query != nil && a.query.billing != nil && (a.process == nil || a.query.billing != a.process.billing) {
		errs = append(errs, a.query.billing.Close())
	}
	if a.ledger != nil {
		errs = append(errs, a.ledger.Close())
	}
	if a.metrics != nil {
		errs = append(errs, a.metrics.store.Close())
	}
	errs = append(errs, a.b.close()...)
	if a.ops != nil {
		errs = append(errs, a.ops.Close())
	}
	errs = append(errs, a.dir.close())
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

// OpsAddr is the address the ops listener is bound to.
func (a *App) OpsAddr() string { return a.opsLn.Addr().String() }
