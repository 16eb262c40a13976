package server

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/adpulse/adpulse/internal/httpapi"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// httpMetrics instruments the API listener per route pattern.
type httpMetrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec

	// The children of both vectors per route and status, looked up in the vectors once:
	// WithLabelValues hashes its labels and allocates on every call, which on the click path
	// is per request.
	mu      sync.RWMutex
	byRoute map[routeCode]routeMetrics
}

type routeCode struct {
	route string
	code  int
}

type routeMetrics struct {
	requests prometheus.Counter
	latency  prometheus.Observer
}

// observe counts one request of route answered with code after d.
func (m *httpMetrics) observe(route string, code int, d time.Duration) {
	k := routeCode{route, code}
	m.mu.RLock()
	c, ok := m.byRoute[k]
	m.mu.RUnlock()
	if !ok {
		c = routeMetrics{m.requests.WithLabelValues(route, strconv.Itoa(code)), m.latency.WithLabelValues(route)}
		m.mu.Lock()
		m.byRoute[k] = c
		m.mu.Unlock()
	}
	c.requests.Inc()
	c.latency.Observe(d.Seconds())
}

// registerBuildInfo exports adpulse_build_info: 1, labelled with the version and VCS
// revision of the binary and the Go version that built it, so dashboards can mark upgrades.
func registerBuildInfo(reg prometheus.Registerer, version string) {
	revision, goVersion := "unknown", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				revision = s.Value
			}
		}
	}
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "adpulse_build_info",
		Help: "Always 1; the labels say which adpulse binary runs.",
	}, []string{"version", "revision", "goversion"})
	g.WithLabelValues(version, revision, goVersion).Set(1)
	reg.MustRegister(g)
}

func newHTTPMetrics(reg prometheus.Registerer) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "adpulse_http_requests_total",
			Help: "API requests by route pattern and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "adpulse_http_request_duration_seconds",
			Help:    "API request latency by route pattern, including the wait for durability.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"route"}),
		byRoute: make(map[routeCode]routeMetrics),
	}
	reg.MustRegister(m.requests, m.latency)
	return m
}

// statusRecorder remembers the status code a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// recorders reuses statusRecorders: a handler may not use its ResponseWriter once it has
// returned, so the recorder is free again when instrument's handler returns.
var recorders = sync.Pool{New: func() any { return new(statusRecorder) }}

// instrument records latency and status per route, and turns a handler panic into a 500 JSON
// error instead of a dropped connection (the panic is logged with its stack).
func instrument(next *http.ServeMux, m *httpMetrics, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := recorders.Get().(*statusRecorder)
		*rec = statusRecorder{ResponseWriter: w, code: http.StatusOK}
		defer func() {
			// The mux set r.Pattern to the route it chose (empty when none matched) before
			// calling the handler, so it is known here even after a panic.
			route := r.Pattern
			if route == "" {
				route = "unmatched"
			}
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				logger.Error("handler panic", "route", route, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
				httpapi.WriteError(rec, fmt.Errorf("panic"))
				rec.code = http.StatusInternalServerError
			}
			m.observe(route, rec.code, time.Since(start))
			*rec = statusRecorder{}
			recorders.Put(rec)
		}()
		next.ServeHTTP(rec, r)
	})
}

// notFound answers unknown paths and methods with the contract's JSON error rather than the
// default plain-text page.
func notFound(w http.ResponseWriter, r *http.Request) {
	httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeNotFound, "path: no such endpoint "+r.Method+" "+r.URL.Path))
}

// opsHandler serves the ops listener: Prometheus metrics, health, readiness and pprof.
func opsHandler(gatherer prometheus.Gatherer, readiness func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		httpapi.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := readiness(); err != nil {
			httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeUnavailable, "not ready: "+err.Error()))
			return
		}
		httpapi.WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
