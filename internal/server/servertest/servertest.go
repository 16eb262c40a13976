// Package servertest runs a whole embedded adpulse (server.App, as `adpulse serve` builds it)
// inside a test, on loopback ports with a fresh data dir, for the packages that drive adpulse
// from outside through its HTTP API (bulk import, export, the dashboard, feeds).
package servertest

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/config"
	"github.com/adpulse/adpulse/internal/server"
)

// AdminKey and ClickSecret are the keys every started server has.
const (
	AdminKey    = "adp_admin_servertest-0123456789abcdef"
	ClickSecret = "k1:0123456789abcdef0123456789abcdef"
)

// Server is a running adpulse.
type Server struct {
	App     *server.App
	URL     string // http://host:port of the API listener
	DataDir string
}

// Start runs adpulse with config.Default() changed by mutate (may be nil) and returns once it
// is ready; the test's cleanup stops it and fails the test if it stopped with an error. Rate
// limits are off: tests send far more from one loopback address than any client may.
func Start(tb testing.TB, mutate func(*config.Config)) *Server {
	tb.Helper()
	cfg := config.Default()
	cfg.DataDir = tb.TempDir()
	cfg.Listen, cfg.OpsListen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.AdminKey = AdminKey
	cfg.ClickSecret = ClickSecret
	cfg.RateLimitIP, cfg.RateLimitKey = 0, 0
	if mutate != nil {
		mutate(&cfg)
	}
	app, err := server.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("server: %v", err)
		}
	})
	select {
	case <-app.Ready():
	case err := <-done:
		tb.Fatalf("server stopped: %v", err)
	case <-time.After(30 * time.Second):
		tb.Fatal("server not ready after 30s")
	}
	return &Server{App: app, URL: "http://" + app.APIAddr(), DataDir: cfg.DataDir}
}
