package ratelimit

import (
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/adpulse/adpulse/internal/httpapi"
	"github.com/cespare/xxhash/v2"
)

// Options configure the limits of the API listener.
type Options struct {
	IP  Limit // per source address: public endpoints, and requests without a valid key
	Key Limit // per API key: requests with a valid key to the authenticated API
	// MaxEntries bounds each table (source addresses, keys).
	MaxEntries int
	// TrustedProxies are the peers whose X-Forwarded-For is believed (see Proxies).
	TrustedProxies []netip.Prefix
	// Public reports whether r is for a public endpoint (GET /c, GET /i, POST /click): those
	// are limited by source address whatever key they carry.
	Public func(*http.Request) bool
	Now    func() time.Time
}

// Limiter is the rate limiting middleware of the API listener.
type Limiter struct {
	ips     *Table[netip.Addr] // nil when the per-address limit is off
	keys    *Table[uint64]     // nil when the per-key limit is off
	proxies *Proxies
	public  func(*http.Request) bool
}

// New returns a Limiter. A Limit with Rate 0 is off.
func New(o Options) *Limiter {
	l := &Limiter{proxies: NewProxies(o.TrustedProxies), public: o.Public}
	if l.public == nil {
		l.public = func(*http.Request) bool { return false }
	}
	if o.IP.Enabled() {
		l.ips = NewTable(TableOptions[netip.Addr]{Limit: o.IP, MaxEntries: o.MaxEntries, Hash: hashAddr, Now: o.Now})
	}
	if o.Key.Enabled() {
		l.keys = NewTable(TableOptions[uint64]{Limit: o.Key, MaxEntries: o.MaxEntries, Hash: mix, Now: o.Now})
	}
	return l
}

// Middleware refuses requests over their limit with 429 rate_limited and a Retry-After, before
// next sees them. It must run after the middleware that authenticates the caller
// (httpapi.PrincipalFrom): a request with a valid key to the authenticated API is limited by
// that key, every other request by its source address, so guessing keys is limited too.
func (l *Limiter) Middleware(next http.Handler) http.Handler {
	if l.ips == nil && l.keys == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ok, what, wait := l.allow(r); !ok {
			secs := RetryAfterSeconds(wait)
			w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
			httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeRateLimited,
				"too many requests "+what+"; retry after "+strconv.FormatInt(secs, 10)+"s"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// allow charges r to its bucket. what names the bucket for the error message.
func (l *Limiter) allow(r *http.Request) (ok bool, what string, wait time.Duration) {
	if !l.public(r) && httpapi.PrincipalFrom(r.Context()).Role != httpapi.RoleNone {
		if l.keys == nil {
			return true, "", 0
		}
		key, _ := bearer(r.Header.Get("Authorization"))
		ok, wait = l.keys.Allow(xxhash.Sum64String(key))
		return ok, "with this API key", wait
	}
	if l.ips == nil {
		return true, "", 0
	}
	src := l.proxies.Source(r.RemoteAddr, r.Header["X-Forwarded-For"])
	ok, wait = l.ips.Allow(SourceKey(src))
	return ok, "from this address", wait
}

// bearer extracts the key of an "Authorization: Bearer KEY" header as the catalog's
// authentication reads it (scheme case-insensitive, RFC 9110).
func bearer(h string) (string, bool) {
	const scheme = "bearer "
	if len(h) <= len(scheme) || !strings.EqualFold(h[:len(scheme)], scheme) {
		return "", false
	}
	key := strings.TrimSpace(h[len(scheme):])
	return key, key != ""
}

// Stats are the counters of both tables.
type Stats struct {
	IP, Key TableStats
}

// Stats returns the counters; a limit that is off has zero stats.
func (l *Limiter) Stats() Stats {
	var s Stats
	if l.ips != nil {
		s.IP = l.ips.Stats()
	}
	if l.keys != nil {
		s.Key = l.keys.Stats()
	}
	return s
}
