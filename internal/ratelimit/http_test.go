package ratelimit

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/httpapi"
)

func isPublic(r *http.Request) bool { return r.URL.Path == "/click" || r.URL.Path[:3] == "/c/" }

// authAs stands in for the catalog's authentication: "Bearer good-*" keys are valid.
func authAs(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var p httpapi.Principal
		if k, ok := bearer(r.Header.Get("Authorization")); ok && len(k) > 5 && k[:5] == "good-" {
			p.Role = httpapi.RoleAdmin
		}
		next.ServeHTTP(w, r.WithContext(httpapi.WithPrincipal(r.Context(), p)))
	})
}

type testServer struct {
	h      http.Handler
	l      *Limiter
	served atomic.Int64
}

func newTestServer(c *clock, o Options) *testServer {
	s := &testServer{}
	o.Now, o.Public = c.now, isPublic
	s.l = New(o)
	s.h = authAs(s.l.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.served.Add(1)
		w.WriteHeader(http.StatusFound)
	})))
	return s
}

func (s *testServer) do(method, path, remote, xff, key string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, nil)
	r.RemoteAddr = remote
	if xff != "" {
		r.Header.Set("X-Forwarded-For", xff)
	}
	if key != "" {
		r.Header.Set("Authorization", "Bearer "+key)
	}
	w := httptest.NewRecorder()
	s.h.ServeHTTP(w, r)
	return w
}

// checkLimited requires the contract's 429: rate_limited in the JSON error body, and a
// Retry-After of want seconds.
func checkLimited(t *testing.T, w *httptest.ResponseRecorder, want int) {
	t.Helper()
	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("status %d, want 429", w.Code)
	}
	if got := w.Header().Get("Retry-After"); got != strconv.Itoa(want) {
		t.Fatalf("Retry-After %q, want %d", got, want)
	}
	var body struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Error.Code != "rate_limited" || body.Error.Message == "" {
		t.Fatalf("body %q (%v), want a rate_limited error", w.Body.String(), err)
	}
}

// TestMiddlewarePerSource: public endpoints are limited per source address, read from
// X-Forwarded-For of a trusted proxy; one source's flood leaves another's alone; a refused
// request never reaches the handler.
func TestMiddlewarePerSource(t *testing.T) {
	c := newClock()
	s := newTestServer(c, Options{
		IP:             Limit{Rate: 0.5, Burst: 3},
		Key:            Limit{Rate: 100, Burst: 100},
		MaxEntries:     100,
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
	})
	for i := range 3 {
		if w := s.do("GET", "/c/tok", "127.0.0.1:5000", "198.51.100.1", ""); w.Code != http.StatusFound {
			t.Fatalf("request %d of the burst: %d", i, w.Code)
		}
	}
	c.advance(500 * time.Millisecond) // next token in 1.5s: Retry-After 2
	checkLimited(t, s.do("GET", "/c/tok", "127.0.0.1:5000", "198.51.100.1", ""), 2)
	// A valid key does not move a public endpoint off the per-address limit.
	checkLimited(t, s.do("POST", "/click", "127.0.0.1:5000", "198.51.100.1", "good-1"), 2)
	if n := s.served.Load(); n != 3 {
		t.Fatalf("handler served %d requests, want the 3 allowed ones", n)
	}
	// Another source, through the same proxy, is not affected.
	if w := s.do("GET", "/c/tok", "127.0.0.1:5000", "198.51.100.2", ""); w.Code != http.StatusFound {
		t.Fatalf("second source: %d", w.Code)
	}
	// A peer that is not a trusted proxy is its own source, whatever it claims.
	for i := range 3 {
		if w := s.do("GET", "/c/tok", "203.0.113.7:1", fmt.Sprintf("192.0.2.%d", i), ""); w.Code != http.StatusFound {
			t.Fatalf("untrusted peer, request %d: %d", i, w.Code)
		}
	}
	checkLimited(t, s.do("GET", "/c/tok", "203.0.113.7:1", "192.0.2.99", ""), 2)
	if st := s.l.Stats(); st.IP.Limited != 3 || st.Key.Limited != 0 || st.IP.Entries != 3 {
		t.Fatalf("stats %+v", st)
	}
}

// TestMiddlewarePerKey: the authenticated API is limited per valid key; requests without a
// valid key are limited per source address, so guessing keys is limited too.
func TestMiddlewarePerKey(t *testing.T) {
	c := newClock()
	s := newTestServer(c, Options{IP: Limit{Rate: 1, Burst: 2}, Key: Limit{Rate: 1, Burst: 5}, MaxEntries: 100})
	for i := range 5 {
		// Different addresses, one key: one bucket.
		if w := s.do("POST", "/events", fmt.Sprintf("192.0.2.%d:1", i), "", "good-a"); w.Code != http.StatusFound {
			t.Fatalf("key a, request %d: %d", i, w.Code)
		}
	}
	checkLimited(t, s.do("GET", "/metrics", "192.0.2.77:1", "", "good-a"), 1)
	if w := s.do("GET", "/metrics", "192.0.2.0:1", "", "good-b"); w.Code != http.StatusFound {
		t.Fatalf("key b: %d", w.Code)
	}
	for i := range 2 {
		if w := s.do("GET", "/api/v1/ads/1", "192.0.2.50:1", "", fmt.Sprintf("bad-%d", i)); w.Code != http.StatusFound {
			t.Fatalf("unknown key %d: %d (the handler answers 401 itself)", i, w.Code)
		}
	}
	checkLimited(t, s.do("GET", "/api/v1/ads/1", "192.0.2.50:1", "", "bad-3"), 1)
	if st := s.l.Stats(); st.Key.Limited != 1 || st.IP.Limited != 1 || st.Key.Entries != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// TestMiddlewareOff: a limit with rate 0 is off; with both off the middleware is next itself.
func TestMiddlewareOff(t *testing.T) {
	c := newClock()
	s := newTestServer(c, Options{IP: Limit{Rate: 0}, Key: Limit{Rate: 1, Burst: 1}, MaxEntries: 10})
	for range 100 {
		if w := s.do("GET", "/c/tok", "192.0.2.1:1", "", ""); w.Code != http.StatusFound {
			t.Fatalf("per-address limit off, got %d", w.Code)
		}
	}
	s.do("GET", "/metrics", "192.0.2.1:1", "", "good-k")
	checkLimited(t, s.do("GET", "/metrics", "192.0.2.1:1", "", "good-k"), 1)
	next := http.NotFoundHandler()
	if h := New(Options{}).Middleware(next); fmt.Sprint(h) != fmt.Sprint(next) {
		t.Fatal("middleware with both limits off wraps the handler")
	}
}

// discardWriter is a ResponseWriter that costs nothing, so a benchmark measures the handler.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d *discardWriter) WriteHeader(int)             {}

// BenchmarkMiddleware measures what the limits add to a request of the click hot path: the
// same trivial handler called directly ("unlimited") and through the middleware, each
// goroutine cycling through 256 sources of its own, and limits high enough that nothing is
// refused (the cost of an accepted request, which is what legitimate traffic pays).
func BenchmarkMiddleware(b *testing.B) {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusFound) })
	high := Limit{Rate: 1e9, Burst: 1e9}
	proxy := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	for _, bc := range []struct {
		name string
		h    http.Handler
		xff  bool
	}{
		{"unlimited", handler, false},
		{"per-ip", New(Options{IP: high, Key: high, MaxEntries: 100_000, Public: isPublic, Now: time.Now}).Middleware(handler), false},
		{"per-ip-xff", New(Options{IP: high, Key: high, MaxEntries: 100_000, TrustedProxies: proxy, Public: isPublic, Now: time.Now}).Middleware(handler), true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var worker atomic.Int64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				id := int(worker.Add(1))
				reqs := make([]*http.Request, 256)
				for i := range reqs {
					r := httptest.NewRequest("GET", "/c/token", nil)
					src := fmt.Sprintf("10.%d.%d.%d", id/256%256, id%256, i)
					r.RemoteAddr = src + ":40000"
					if bc.xff {
						r.RemoteAddr = "127.0.0.1:40000"
						r.Header.Set("X-Forwarded-For", "192.0.2.1, "+src)
					}
					reqs[i] = r
				}
				w := &discardWriter{h: http.Header{}}
				i := 0
				for pb.Next() {
					bc.h.ServeHTTP(w, reqs[i&255])
					i++
				}
			})
		})
	}
}
