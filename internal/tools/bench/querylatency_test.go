package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestQueryLatencyCountsFailures runs the query loop against answers that are fine, not JSON,
// and errors: every request is timed, and the ones whose answer cannot be used count as failed
// with the first error reported, whether the status or the decoding (done after the timing)
// refused it.
func TestQueryLatencyCountsFailures(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer k" {
			http.Error(w, "no key", http.StatusUnauthorized)
			return
		}
		switch r.URL.Path {
		case "/ok":
			fmt.Fprint(w, `{"series":[]}`)
		case "/notjson":
			fmt.Fprint(w, `{"series":`)
		default:
			http.Error(w, `{"error":"boom"}`, http.StatusInternalServerError)
		}
	}))
	defer srv.Close()
	tg := &target{name: "test", base: srv.URL, adminKey: "k", client: newAPIClient(2)}
	for _, c := range []struct {
		path, wantErr string
		wantFailed    int64
	}{
		{"/ok", "", 0},
		{"/notjson", "decode", 20},
		{"/fail", "500", 20},
	} {
		lat, failed, firstErr := queryLatency(context.Background(), tg, 20, 2, time.Minute, func(*rand.Rand) string { return c.path }, 1)
		if lat.N != 20 || failed != c.wantFailed || !strings.Contains(firstErr, c.wantErr) {
			t.Errorf("%s: %d timed, %d failed, first error %q; want 20 timed, %d failed, an error naming %q", c.path, lat.N, failed, firstErr, c.wantFailed, c.wantErr)
		}
	}
}
