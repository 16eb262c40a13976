package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/client"
)

// flakyServer answers POST /events with the failures in script, one per attempt, then 200.
// It keeps every body it was sent.
type flakyServer struct {
	t      *testing.T
	script []string // "503", "429", "drop", "500-html", "400"
	mu     sync.Mutex
	bodies []string
}

// sent returns the bodies received so far.
func (f *flakyServer) sent() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.bodies...)
}

func (f *flakyServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	n := len(f.bodies)
	f.bodies = append(f.bodies, string(b))
	f.mu.Unlock()
	if got := r.Header.Get("Authorization"); got != "Bearer ingest-key" {
		f.t.Errorf("Authorization %q", got)
	}
	if n < len(f.script) {
		switch f.script[n] {
		case "503":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(503)
			fmt.Fprint(w, `{"error":{"code":"unavailable","message":"event log unavailable, nothing was accepted; retry the batch"}}`)
		case "429":
			w.Header().Set("Retry-After", "3")
			w.WriteHeader(429)
			fmt.Fprint(w, `{"error":{"code":"rate_limited","message":"too many requests"}}`)
		case "drop":
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
		case "502-html":
			w.WriteHeader(502)
			fmt.Fprint(w, "<html>bad gateway</html>")
		case "400":
			w.WriteHeader(400)
			fmt.Fprint(w, `{"error":{"code":"invalid_argument","message":"body: too many events in one batch"}}`)
		}
		return
	}
	// Line 2 names an unknown ad; the others are accepted.
	lines := strings.Count(string(b), "\n")
	fmt.Fprintf(w, `{"accepted":%d,"duplicates":0,"rejected":1,"errors":[{"line":2,"code":"not_found","message":"ad_id: no such ad"}]}`, lines-1)
}

// recordSleeps makes c record its waits instead of taking them.
func recordSleeps(c *client.Client) *[]time.Duration {
	var mu sync.Mutex
	var waits []time.Duration
	client.SetSleep(c, func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		waits = append(waits, d)
		mu.Unlock()
		return ctx.Err()
	})
	return &waits
}

var retryEvents = []client.Event{
	{Type: "impression", AdID: "a1", ImpressionID: "i1"},
	{Type: "impression", AdID: "a1", ImpressionID: ""}, // refused by the client: not sent
	{Type: "click", AdID: "a1", ImpressionID: "i1", CPCMicros: 1000},
	{Type: "add_to_cart", AdID: "a1", EventID: "e1"},
}

// TestRetries fails the first attempts with 503, 429 (Retry-After: 3) and a dropped
// connection, and checks the same body is resent, the server's wait is honoured and the
// final result maps the server's line 2 back to the caller's index 2.
func TestRetries(t *testing.T) {
	fs := &flakyServer{t: t, script: []string{"503", "429", "drop", "502-html"}}
	ts := httptest.NewServer(fs)
	defer ts.Close()
	c := newClient(t, client.Config{BaseURL: ts.URL, Key: "ingest-key", InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second})
	waits := recordSleeps(c)
	res, err := c.SendEvents(context.Background(), retryEvents)
	if err != nil {
		t.Fatal(err)
	}
	if len(fs.sent()) != 5 {
		t.Fatalf("%d attempts, want 5", len(fs.sent()))
	}
	bodies := fs.sent()
	for i, b := range bodies {
		if b != bodies[0] {
			t.Fatalf("attempt %d sent %q, the first %q", i+1, b, bodies[0])
		}
	}
	if strings.Count(bodies[0], "\n") != 3 || !strings.Contains(bodies[0], `"cpc_micros":1000`) {
		t.Fatalf("body %q: want the 3 valid events", bodies[0])
	}
	w := *waits
	if len(w) != 4 {
		t.Fatalf("waits %v, want 4", w)
	}
	// Backoff n is in [d/2, d] for d = 100ms * 2^n, capped at 1s; after the 429, at least 3s.
	for i, lim := range []time.Duration{100 * time.Millisecond, 0, 400 * time.Millisecond, 800 * time.Millisecond} {
		if lim == 0 {
			if w[i] != 3*time.Second {
				t.Errorf("wait after 429 with Retry-After 3: %v", w[i])
			}
			continue
		}
		if w[i] < lim/2 || w[i] > lim {
			t.Errorf("wait %d: %v, want within [%v, %v]", i, w[i], lim/2, lim)
		}
	}
	if res.Accepted != 2 || res.Rejected != 2 || len(res.Errors) != 2 ||
		res.Errors[0].Index != 1 || res.Errors[0].Code != client.CodeInvalidArgument ||
		res.Errors[1].Index != 2 || res.Errors[1].Code != client.CodeNotFound {
		t.Fatalf("result %+v", res)
	}
}

// TestRetryLimits: attempts end at MaxAttempts, at a 4xx, and before a Retry-After that
// would pass the context's deadline.
func TestRetryLimits(t *testing.T) {
	ctx := context.Background()
	t.Run("max attempts", func(t *testing.T) {
		fs := &flakyServer{t: t, script: []string{"503", "503", "503", "503"}}
		ts := httptest.NewServer(fs)
		defer ts.Close()
		c := newClient(t, client.Config{BaseURL: ts.URL, Key: "ingest-key", MaxAttempts: 3})
		recordSleeps(c)
		_, err := c.SendEvents(ctx, retryEvents)
		var ae *client.APIError
		if !errors.As(err, &ae) || ae.Status != 503 || ae.Code != client.CodeUnavailable || !strings.Contains(ae.Message, "retry the batch") {
			t.Fatalf("err %v, want the 503", err)
		}
		if len(fs.sent()) != 3 {
			t.Fatalf("%d attempts, want 3", len(fs.sent()))
		}
	})
	t.Run("4xx", func(t *testing.T) {
		fs := &flakyServer{t: t, script: []string{"400"}}
		ts := httptest.NewServer(fs)
		defer ts.Close()
		c := newClient(t, client.Config{BaseURL: ts.URL, Key: "ingest-key"})
		recordSleeps(c)
		_, err := c.SendEvents(ctx, retryEvents)
		var ae *client.APIError
		if !errors.As(err, &ae) || ae.Status != 400 || ae.Code != client.CodeInvalidArgument || len(fs.sent()) != 1 {
			t.Fatalf("err %v after %d attempts, want the 400 after 1", err, len(fs.sent()))
		}
	})
	t.Run("deadline", func(t *testing.T) {
		fs := &flakyServer{t: t, script: []string{"429", "429"}}
		ts := httptest.NewServer(fs)
		defer ts.Close()
		c := newClient(t, client.Config{BaseURL: ts.URL, Key: "ingest-key"})
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		start := time.Now()
		_, err := c.SendEvents(ctx, retryEvents)
		var ae *client.APIError
		if !errors.As(err, &ae) || ae.Status != 429 || ae.Code != client.CodeRateLimited || ae.RetryAfter != 3*time.Second {
			t.Fatalf("err %v, want the 429 with its Retry-After", err)
		}
		if time.Since(start) > time.Second || len(fs.sent()) != 1 {
			t.Fatalf("took %v and %d attempts: want an early return", time.Since(start), len(fs.sent()))
		}
	})
	t.Run("non-idempotent not retried", func(t *testing.T) {
		fs := &flakyServer{t: t, script: []string{"drop"}}
		ts := httptest.NewServer(fs)
		defer ts.Close()
		c := newClient(t, client.Config{BaseURL: ts.URL, Key: "ingest-key"})
		recordSleeps(c)
		if _, err := c.CreateIngestKey(ctx); err == nil || len(fs.sent()) != 1 {
			t.Fatalf("err %v after %d attempts: a key request that may have made a key is not resent", err, len(fs.sent()))
		}
	})
	t.Run("html error body", func(t *testing.T) {
		fs := &flakyServer{t: t, script: []string{"502-html"}}
		ts := httptest.NewServer(fs)
		defer ts.Close()
		c := newClient(t, client.Config{BaseURL: ts.URL, Key: "ingest-key", MaxAttempts: 1})
		_, err := c.SendEvents(ctx, retryEvents)
		var ae *client.APIError
		if !errors.As(err, &ae) || ae.Status != 502 || ae.Code != client.CodeUnavailable || ae.Message != "<html>bad gateway</html>" {
			t.Fatalf("err %#v", err)
		}
	})
}
