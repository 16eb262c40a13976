package server

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestInstrumentCounts: every request is counted under the route pattern the mux chose and
// the status written ("unmatched" when none matched), panics as 500s, and repeated requests
// add to the same series.
func TestInstrumentCounts(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newHTTPMetrics(reg)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /c/{token}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("token") == "bad" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.Header()["Location"] = []string{"https://shop.example/"}
		w.WriteHeader(http.StatusFound)
	})
	mux.HandleFunc("GET /ok", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	mux.HandleFunc("GET /boom", func(http.ResponseWriter, *http.Request) { panic("boom") })
	h := instrument(mux, m, slog.New(slog.NewTextHandler(io.Discard, nil)))
	for _, c := range []struct {
		path string
		code int
	}{{"/c/a", 302}, {"/c/b", 302}, {"/c/bad", 400}, {"/ok", 200}, {"/boom", 500}, {"/nowhere", 404}} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", c.path, nil))
		if w.Code != c.code {
			t.Errorf("%s: %d, want %d", c.path, w.Code, c.code)
		}
	}
	for _, c := range []struct {
		route, code string
		want        float64
	}{{"GET /c/{token}", "302", 2}, {"GET /c/{token}", "400", 1}, {"GET /ok", "200", 1}, {"GET /boom", "500", 1}, {"unmatched", "404", 1}} {
		if got := testutil.ToFloat64(m.requests.WithLabelValues(c.route, c.code)); got != c.want {
			t.Errorf("requests{%s,%s} = %v, want %v", c.route, c.code, got, c.want)
		}
	}
	if n := testutil.CollectAndCount(m.latency); n != 4 {
		t.Errorf("%d latency series, want 4 (one per route)", n)
	}
	if n := testutil.CollectAndCount(m.requests); n != 5 {
		t.Errorf("%d request series, want 5", n)
	}
}
