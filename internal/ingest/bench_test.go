package ingest

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/clicktoken"
)

func batchBody(n, seq int) []byte {
	var buf bytes.Buffer
	for i := 0; i < n; i++ {
		fmt.Fprintf(&buf, `{"type":"impression","impression_id":"imp-%d-%d","ad_id":"ad%d","user_id":"user-%d","catalog_id":"cat-%d","event_time":"2026-11-21T09:59:03Z"}`+"\n", seq, i, 1+i%2, i%5000, i%50)
	}
	return buf.Bytes()
}

// BenchmarkParseBatch is the parsing share of POST /events.
func BenchmarkParseBatch(b *testing.B) {
	body := batchBody(1000, 0)
	now := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	lim := BatchLimits{MaxEvents: 100000, MaxLateness: 24 * time.Hour, MaxClockSkew: 5 * time.Minute}
	var bp batchParser
	var lines []ParsedLine
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		var err error
		if lines, err = bp.parse(body, now, lim, lines); err != nil || len(lines) != 1000 {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkEventsHandler is POST /events without the network: parse, resolve, dedup and
// append to an in-memory log.
func BenchmarkEventsHandler(b *testing.B) {
	big := func() *fixture {
		f := newFixture(b)
		f.h.o.Limits.MaxEvents, f.h.o.MaxBody = 100_000, 10<<20
		return f
	}
	f := big()
	bodies := make([][]byte, 64)
	for i := range bodies {
		bodies[i] = batchBody(1000, i)
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if i%len(bodies) == 0 && i > 0 {
			f = big() // keep the batches new, not duplicates
		}
		r := httptest.NewRequest("POST", "/events", bytes.NewReader(bodies[i%len(bodies)]))
		r.Header.Set("Authorization", "Bearer ingest")
		w := httptest.NewRecorder()
		f.mux.ServeHTTP(w, r)
		if w.Code != http.StatusOK || !bytes.Contains(w.Body.Bytes(), []byte(`"accepted":1000`)) {
			b.Fatalf("%d %s", w.Code, w.Body)
		}
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkClickHandler is GET /c/{token} without the network: verify the token, the
// invalid-traffic verdict, dedup and append to an in-memory log. "person" is a browser at
// home (every rule tried, none applies); "datacenter" the same browser on a cloud server.
func BenchmarkClickHandler(b *testing.B) {
	for _, bc := range []struct{ name, peer string }{
		{"person", "73.162.14.9:51234"},
		{"datacenter", "3.85.12.7:40112"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			f := newFixture(b)
			paths := make([]string, b.N)
			for i := range paths {
				paths[i] = "/c/" + f.token(b, clicktoken.Claims{AdID: "ad1", ImpressionID: fmt.Sprint("imp-", i)})
			}
			const ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r := httptest.NewRequest("GET", paths[i], nil)
				r.RemoteAddr = bc.peer
				r.Header.Set("User-Agent", ua)
				w := httptest.NewRecorder()
				f.mux.ServeHTTP(w, r)
				if w.Code != http.StatusFound {
					b.Fatalf("%d %s", w.Code, w.Body)
				}
			}
		})
	}
}

// clickWriter is a ResponseWriter that keeps nothing but the status and reuses its header
// map, so BenchmarkClickPath counts the allocations of the click path and not of a recorder.
type clickWriter struct {
	h    http.Header
	code int
}

func (w *clickWriter) Header() http.Header         { return w.h }
func (w *clickWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *clickWriter) WriteHeader(code int)        { w.code = code }

// BenchmarkClickPath is one GET /c/{token} through the route mux and the handler with one
// request and one writer reused, so allocs/op is what the click path itself allocates:
// token verify, invalid-traffic verdict, dedup reserve, event encoding and log append.
func BenchmarkClickPath(b *testing.B) {
	f := newFixture(b)
	mux := http.NewServeMux()
	f.h.Register(mux)
	urls := make([]*url.URL, b.N)
	for i := range urls {
		urls[i] = &url.URL{Path: "/c/" + f.token(b, clicktoken.Claims{AdID: "ad1", ImpressionID: fmt.Sprint("imp-", i)})}
	}
	r := httptest.NewRequest("GET", "/c/x", nil)
	r.RemoteAddr = "73.162.14.9:51234"
	r.Header.Set("User-Agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36")
	w := &clickWriter{h: http.Header{}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r.URL = urls[i]
		clear(w.h)
		mux.ServeHTTP(w, r)
		if w.code != http.StatusFound {
			b.Fatalf("status %d", w.code)
		}
	}
}
