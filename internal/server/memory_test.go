package server_test

import (
	"io"
	"math"
	"net/http"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/adpulse/adpulse/internal/config"
	"github.com/adpulse/adpulse/internal/server/servertest"
)

// TestMemoryLimitSetsTheRuntimeLimit: --memory-limit reaches the Go runtime (the budget less
// what lives outside the runtime, never under a quarter of it) and the ops endpoint.
func TestMemoryLimitSetsTheRuntimeLimit(t *testing.T) {
	// The limit is the process's: restore it once the server (registered later, so cleaned up
	// first) has stopped and can no longer set it.
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
	s := servertest.Start(t, func(c *config.Config) { c.MemoryLimit = "1GiB" })
	if got := debug.SetMemoryLimit(-1); got > 1<<30 || got < 1<<28 {
		t.Fatalf("runtime limit %d with --memory-limit 1GiB", got)
	}
	resp, err := http.Get("http://" + s.App.OpsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"adpulse_memory_budget_bytes 1.073741824e+09", "adpulse_memory_go_limit_bytes", "adpulse_memory_outside_go_bytes", "adpulse_memory_live_heap_bytes"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("ops /metrics lacks %q", want)
		}
	}
}

// TestMemoryLimitOffLeavesTheRuntimeAlone: off (and auto without a container limit, the
// default) does not touch the runtime's own setting.
func TestMemoryLimitOffLeavesTheRuntimeAlone(t *testing.T) {
	prev := debug.SetMemoryLimit(math.MaxInt64 - 1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
	s := servertest.Start(t, func(c *config.Config) { c.MemoryLimit = "off" })
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64-1 {
		t.Fatalf("runtime limit %d with --memory-limit off", got)
	}
	resp, err := http.Get("http://" + s.App.OpsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(body), "adpulse_memory_budget_bytes") {
		t.Error("a budget is exported with --memory-limit off")
	}
}
