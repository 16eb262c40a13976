package server

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/adpulse/adpulse/internal/ratelimit"
)

// newLimiter builds the rate limits of the API listener. They run after the catalog's
// authentication (a valid key is limited by key) and before every handler, so a refused
// request has reserved and appended nothing.
func (a *App) newLimiter() *ratelimit.Limiter {
	// Said once at start: behind a load balancer without --trusted-proxies, every client
	// shares the balancer's address and so one limit.
	a.logger.Info("rate limits (0: off)", "per_ip", a.cfg.RateLimitIP, "ip_burst", a.cfg.RateLimitIPBurst,
		"per_key", a.cfg.RateLimitKey, "key_burst", a.cfg.RateLimitKeyBurst, "trusted_proxies", fmt.Sprint(a.cfg.TrustedProxies))
	return ratelimit.New(ratelimit.Options{
		IP:             ratelimit.Limit{Rate: a.cfg.RateLimitIP, Burst: a.cfg.RateLimitIPBurst},
		Key:            ratelimit.Limit{Rate: a.cfg.RateLimitKey, Burst: a.cfg.RateLimitKeyBurst},
		MaxEntries:     a.cfg.RateLimitEntries,
		TrustedProxies: a.cfg.TrustedProxies,
		Public:         publicEndpoint,
		Now:            a.now,
	})
}

// publicEndpoint reports whether r is for an endpoint anyone on the internet may call
// (GET /c/{token}, GET /i/{token}, POST /click): those are limited per source address even
// when they carry a key.
func publicEndpoint(r *http.Request) bool {
	p := r.URL.Path
	return strings.HasPrefix(p, "/c/") || strings.HasPrefix(p, "/i/") || p == "/click"
}

// collectRateLimits exports the limiter's counters.
func (c *statsCollector) collectRateLimits(emit func(name string, v float64, labels ...string)) {
	s := c.a.limits.Stats()
	for _, k := range []struct {
		kind string
		st   ratelimit.TableStats
	}{{"ip", s.IP}, {"key", s.Key}} {
		emit("adpulse_ratelimit_limited_requests_total", float64(k.st.Limited), k.kind)
		emit("adpulse_ratelimit_overflow_requests_total", float64(k.st.Overflowed), k.kind)
		emit("adpulse_ratelimit_entries", float64(k.st.Entries), k.kind)
	}
}
