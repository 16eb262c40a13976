package server

import (
	"os"
	"time"

	"github.com/adpulse/adpulse/internal/memlimit"
	"github.com/prometheus/client_golang/prometheus"
)

// memoryGovernorInterval is how often the memory outside the Go heap is measured: Pebble's
// memtables grow by 128 MiB at most between two measurements.
const memoryGovernorInterval = 2 * time.Second

// startMemoryGovernor keeps the process within --memory-limit (internal/memlimit) and
// exports what it measured. "auto" without a container limit, or with GOMEMLIMIT set,
// leaves the runtime's own setting alone.
func (a *App) startMemoryGovernor() error {
	spec, err := memlimit.Parse(a.cfg.MemoryLimit)
	if err != nil {
		return err // Validate has checked it
	}
	if spec.Auto && os.Getenv("GOMEMLIMIT") != "" {
		a.logger.Info("memory limit from GOMEMLIMIT", "GOMEMLIMIT", os.Getenv("GOMEMLIMIT"))
		return nil
	}
	budget, from, err := spec.Budget(memlimit.ReadMachine())
	if err != nil || budget == 0 {
		return err
	}
	g := memlimit.New(budget, memoryGovernorInterval, a.logger)
	a.logger.Info("memory budget", "bytes", budget, "from", from)
	gauge := func(name, help string, v func(memlimit.Stats) int64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return float64(v(g.Stats())) })
	}
	a.reg.MustRegister(
		gauge("adpulse_memory_budget_bytes", "The process's memory budget (--memory-limit).", func(s memlimit.Stats) int64 { return s.Budget }),
		gauge("adpulse_memory_go_limit_bytes", "The Go runtime's soft memory limit: the budget less the memory outside the Go heap.", func(s memlimit.Stats) int64 { return s.GoLimit }),
		gauge("adpulse_memory_outside_go_bytes", "Resident anonymous memory the Go runtime does not manage (Pebble's caches and memtables with cgo).", func(s memlimit.Stats) int64 { return s.OutsideGo }),
		gauge("adpulse_memory_live_heap_bytes", "Heap bytes live after the last garbage collection; near the Go limit, collections run back to back.", func(s memlimit.Stats) int64 { return s.LiveHeap }),
	)
	a.components.Go("memory governor", g.Run)
	return nil
}
