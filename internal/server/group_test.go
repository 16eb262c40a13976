package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/config"
)

// TestComponentFailureStopsProcess: a stage that dies must not leave the API answering while
// nothing is counted. The process reports not ready at once, drains, and Run returns the
// stage's error (so the binary exits non-zero and its supervisor restarts it).
func TestComponentFailureStopsProcess(t *testing.T) {
	cfg := config.Default()
	cfg.DataDir, cfg.Listen, cfg.OpsListen = t.TempDir(), "127.0.0.1:0", "127.0.0.1:0"
	cfg.ShutdownTimeout = 2 * time.Second
	app, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- app.Run(context.Background()) }()
	select {
	case <-app.Ready():
	case err := <-done:
		t.Fatal(err)
	}
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + app.OpsAddr() + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := readyz(); code != 200 {
		t.Fatalf("readyz before the failure: %d %s", code, body)
	}
	// A stalled client keeps the drain going for the grace, so readiness can be seen.
	c, err := net.Dial("tcp", app.APIAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte("POST /click HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"))
	time.Sleep(100 * time.Millisecond)

	app.components.Go("aggregator", func(context.Context) error { return errors.New("metric store write failed") })
	deadline := time.Now().Add(time.Second)
	for {
		code, body := readyz()
		if code == http.StatusServiceUnavailable && strings.Contains(body, "metric store write failed") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("readyz after a component failed: %d %s, want 503 naming the failure", code, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "aggregator: metric store write failed") {
			t.Fatalf("Run returned %v, want the aggregator's failure", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after a component failed")
	}
}

// A component that returns nil while the group still runs has stopped doing its job: that
// is a failure too.
func TestGroupTreatsEarlyReturnAsFailure(t *testing.T) {
	g := newGroup()
	g.Go("sweeper", func(context.Context) error { return nil })
	select {
	case err := <-g.Failed():
		if !errors.Is(err, errStopped) {
			t.Fatalf("got %v", err)
		}
	case <-time.After(time.Second):
		t.Fatal("no failure reported")
	}
	g.Stop()
}

// Two processes on one data dir would share embedded state that belongs to one process: the
// second refuses to start, saying why.
func TestDataDirBelongsToOneProcess(t *testing.T) {
	cfg := config.Default()
	cfg.DataDir, cfg.Listen, cfg.OpsListen = t.TempDir(), "127.0.0.1:0", "127.0.0.1:0"
	first, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(cfg, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "in use by another adpulse process") {
		t.Fatalf("second process on the same data dir: %v", err)
	}
	first.dir.close()
	second, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("after the first released the dir: %v", err)
	}
	second.dir.close()
}

func TestLocalURLOnPublicListener(t *testing.T) {
	all, _ := net.ResolveTCPAddr("tcp", "0.0.0.0:8080")
	lo, _ := net.ResolveTCPAddr("tcp", "127.0.0.1:8080")
	for _, tc := range []struct {
		url  string
		ln   net.Addr
		want bool
	}{
		{"http://localhost:8080", all, true},
		{"http://127.0.0.1:8080", all, true},
		{"http://[::1]:8080", all, true},
		{"https://t.ads.example", all, false},
		{"http://localhost:8080", lo, false}, // only local clients can connect anyway
	} {
		if got := localURLOnPublicListener(tc.url, tc.ln); got != tc.want {
			t.Errorf("%s on %v: %v, want %v", tc.url, tc.ln, got, tc.want)
		}
	}
}
