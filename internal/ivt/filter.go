package ivt

import (
	"net/http"
	"net/netip"
	"strings"
	"sync"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/ratelimit"
)

// Filter gives the general-invalid-traffic verdict of a click or impression request. Its
// rules, in the order they are tried (the first that applies names the reason):
//
//  1. event.ReasonPrefetch: a purpose header says prefetch, prerender or preview (Prefetch);
//  2. event.ReasonBadUserAgent: the user agent is missing or malformed (BadUserAgent);
//  3. event.ReasonPreview: a link-preview fetcher (PreviewAgent);
//  4. event.ReasonBot: a known bot or crawler (Detector.IsBot);
//  5. event.ReasonDatacenter: the source address is in a data-centre range (Ranges).
//
// The most specific rule wins: a crawler is "bot" whether or not it runs in a cloud, and a
// browser that prefetches is "prefetch" whatever else it looks like. Filter is safe for
// concurrent use.
type Filter struct {
	bots    *Detector
	ranges  *Ranges
	proxies *ratelimit.Proxies

	mu    sync.RWMutex
	cache map[string]event.Reason // user agent -> rules 2-4
}

// Options configure a Filter.
type Options struct {
	// TrustedProxies are the peers whose X-Forwarded-For names the source address, the same
	// as the rate limits' (ratelimit.Proxies).
	TrustedProxies []netip.Prefix
	// Ranges are the data-centre ranges; nil means the embedded list.
	Ranges *Ranges
	// Bots is the crawler detector; nil means the embedded list.
	Bots *Detector
}

// NewFilter returns a Filter.
func NewFilter(o Options) (*Filter, error) {
	f := &Filter{bots: o.Bots, ranges: o.Ranges, proxies: ratelimit.NewProxies(o.TrustedProxies), cache: map[string]event.Reason{}}
	var err error
	if f.bots == nil {
		if f.bots, err = New(); err != nil {
			return nil, err
		}
	}
	if f.ranges == nil {
		if f.ranges, err = DatacenterRanges(); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// Request returns why r is general invalid traffic, or event.ReasonNone for a person.
func (f *Filter) Request(r *http.Request) event.Reason {
	if Prefetch(r.Header) {
		return event.ReasonPrefetch
	}
	if v := f.UserAgent(r.UserAgent()); v != event.ReasonNone {
		return v
	}
	if _, ok := f.ranges.Lookup(f.Source(r)); ok {
		return event.ReasonDatacenter
	}
	return event.ReasonNone
}

// Source is the address r came from: its TCP peer, or what trusted proxies say in
// X-Forwarded-For.
func (f *Filter) Source(r *http.Request) netip.Addr {
	return f.proxies.Source(r.RemoteAddr, r.Header["X-Forwarded-For"])
}

// UserAgent returns why a request with user agent ua is invalid traffic by its user agent
// alone (bad_user_agent, preview or bot), or event.ReasonNone. An empty user agent is bad:
// every browser sends one. POST /events passes the user agent an ad server reports.
func (f *Filter) UserAgent(ua string) event.Reason {
	if len(ua) > maxUALen {
		// Rare and unbounded: not worth a cache entry.
		return f.userAgent(ua)
	}
	f.mu.RLock()
	v, ok := f.cache[ua]
	f.mu.RUnlock()
	if ok {
		return v
	}
	v = f.userAgent(ua)
	f.mu.Lock()
	if len(f.cache) >= maxCache {
		clear(f.cache)
	}
	f.cache[strings.Clone(ua)] = v
	f.mu.Unlock()
	return v
}

func (f *Filter) userAgent(ua string) event.Reason {
	switch {
	case BadUserAgent(ua):
		return event.ReasonBadUserAgent
	case PreviewAgent(ua):
		return event.ReasonPreview
	case f.bots.matchUA(ua):
		return event.ReasonBot
	}
	return event.ReasonNone
}

// Address returns event.ReasonDatacenter when ip (an address an ad server reports with POST
// /events) is in a data-centre range, else event.ReasonNone (an unparsable ip included).
func (f *Filter) Address(ip string) event.Reason {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return event.ReasonNone
	}
	if _, ok := f.ranges.Lookup(a.Unmap()); ok {
		return event.ReasonDatacenter
	}
	return event.ReasonNone
}

// FilterStats describe a Filter's lists.
type FilterStats struct {
	Bots   Stats
	Ranges RangeStats
}

// Stats returns the sizes of the filter's lists.
func (f *Filter) Stats() FilterStats {
	return FilterStats{Bots: f.bots.Stats(), Ranges: f.ranges.Stats()}
}
