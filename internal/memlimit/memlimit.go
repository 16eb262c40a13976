// Package memlimit keeps the whole process within a memory budget by steering the Go
// runtime's soft memory limit.
//
// With the Go default (GOGC=100 and no limit) the heap may grow to twice the live data
// before a collection, so a process holding 3 GB of state sits at 6 GB and more. A budget
// makes the collector run as often as it must instead. The runtime's limit covers only the
// memory the runtime manages, and part of adpulse's memory is not the runtime's: Pebble's
// block caches and memtables are allocated with C malloc when built with cgo. The governor
// therefore measures, every few seconds, the anonymous memory resident outside the runtime
// (resident anonymous memory less what the runtime holds from the system) and sets the
// runtime's limit to the budget less that, so the process as a whole, not only its Go heap,
// stays near the budget.
//
// Invariants:
//   - the runtime's limit is never set below a quarter of the budget (outside memory is an
//     estimate, and a limit near zero would make the collector run without pause);
//   - with no budget (Spec.Off, or "auto" without a container limit), the runtime's own
//     setting (GOMEMLIMIT, or none) is left untouched;
//   - a limit is a target, not a cap: when the live data alone exceeds it, the runtime
//     bounds the collector's CPU (to about half) and lets the heap grow past it, and the
//     governor says so in the log and in adpulse_memory_live_heap_bytes.
package memlimit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Spec is a parsed --memory-limit: a size, a share of the memory available, or "auto".
type Spec struct {
	Bytes   int64   // > 0: this many bytes
	Percent float64 // > 0: this share (1-100) of the container's limit, or of the machine's memory
	Auto    bool    // 90 % of the container's limit when it has one, else no budget
}

// Off reports whether the spec sets no budget ("0" or "off").
func (s Spec) Off() bool { return s.Bytes == 0 && s.Percent == 0 && !s.Auto }

// autoPercent is the share of a container's limit "auto" budgets: the rest is headroom for
// the kernel's page tables, thread stacks and the estimate's error, before the OOM killer.
const autoPercent = 90

var units = []struct {
	suffix string
	mult   int64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"t", 1 << 40},
	{"b", 1},
}

// Parse reads "4GiB", "512MiB", "2000000000", "60%", "auto", "off" or "0".
func Parse(s string) (Spec, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	switch t {
	case "auto":
		return Spec{Auto: true}, nil
	case "off", "0", "":
		return Spec{}, nil
	}
	if p, ok := strings.CutSuffix(t, "%"); ok {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || !(v > 0 && v <= 100) {
			return Spec{}, fmt.Errorf("%q: a share of memory is more than 0%% and at most 100%%", s)
		}
		return Spec{Percent: v}, nil
	}
	mult := int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || !(v >= 0 && v*float64(mult) < math.MaxInt64) { // NaN fails both
		return Spec{}, fmt.Errorf("%q: want a size such as 4GiB or 512MiB, a share such as 60%%, auto or off", s)
	}
	b := int64(v * float64(mult))
	if b > 0 && b < minBudget {
		return Spec{}, fmt.Errorf("%q: below the smallest budget, %d MiB", s, minBudget>>20)
	}
	return Spec{Bytes: b}, nil
}

// minBudget is the smallest budget taken: below it the runtime's own needs dominate.
const minBudget = 64 << 20

// Machine is what a budget is resolved against; tests replace it.
type Machine struct {
	// ContainerLimit is the cgroup memory limit (0: none).
	ContainerLimit int64
	// Total is the machine's memory.
	Total int64
}

// ReadMachine reads the cgroup limit (v2, then v1) and /proc/meminfo's MemTotal. On a
// system without them both are 0.
func ReadMachine() Machine {
	var m Machine
	m.Total = meminfoTotal()
	for _, path := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil { // "max": no limit
			break
		}
		// cgroup v1 reports "no limit" as a huge page-aligned number.
		if v > 0 && (m.Total == 0 || v < m.Total) {
			m.ContainerLimit = v
		}
		break
	}
	return m
}

func meminfoTotal() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := kibField(sc.Bytes(), "MemTotal:"); ok {
			return v
		}
	}
	return 0
}

// Budget resolves s on m: the budget in bytes (0: none) and where it came from.
func (s Spec) Budget(m Machine) (int64, string, error) {
	switch {
	case s.Bytes > 0:
		return s.Bytes, "--memory-limit", nil
	case s.Percent > 0:
		base, from := m.ContainerLimit, "the container's limit"
		if base == 0 {
			base, from = m.Total, "the machine's memory"
		}
		if base == 0 {
			return 0, "", errors.New("--memory-limit: a share of memory needs /proc/meminfo or a cgroup limit; give a size instead")
		}
		return max(int64(float64(base)*s.Percent/100), minBudget), fmt.Sprintf("%g%% of %s", s.Percent, from), nil
	case s.Auto && m.ContainerLimit > 0:
		return max(m.ContainerLimit*autoPercent/100, minBudget), fmt.Sprintf("%d%% of the container's limit", autoPercent), nil
	}
	return 0, "", nil
}

// Stats is what the governor last measured and set.
type Stats struct {
	Budget      int64 // bytes (0: no budget)
	GoLimit     int64 // the runtime's soft limit it set
	OutsideGo   int64 // resident anonymous memory the runtime does not manage
	LiveHeap    int64 // heap bytes live after the last collection
	Adjustments int64 // times it changed the runtime's limit
}

// Governor sets the runtime's soft limit from a budget and what lives outside the runtime.
type Governor struct {
	budget   int64
	interval time.Duration
	logger   *slog.Logger
	// outside measures resident anonymous memory outside the runtime; tests replace it.
	outside func() int64
	set     func(int64) int64 // debug.SetMemoryLimit

	stats       atomic.Pointer[Stats]
	warnedLive  bool
	lastLimit   int64
	adjustments int64
}

// New returns a governor for budget bytes (> 0) that measures every interval.
func New(budget int64, interval time.Duration, logger *slog.Logger) *Governor {
	g := &Governor{budget: budget, interval: interval, logger: logger, outside: outsideRuntime, set: debug.SetMemoryLimit}
	g.stats.Store(&Stats{Budget: budget})
	return g
}

// Stats returns the last measurement.
func (g *Governor) Stats() Stats { return *g.stats.Load() }

// Run adjusts the limit at once and then every interval until ctx ends; on return the
// runtime keeps the last limit set (the process is stopping).
func (g *Governor) Run(ctx context.Context) error {
	t := time.NewTicker(g.interval)
	defer t.Stop()
	for {
		g.adjust()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// adjust sets the runtime's limit to the budget less the memory outside it. A change under
// 1 % of the budget is not applied: the estimate wobbles with every Pebble flush.
func (g *Governor) adjust() {
	out := g.outside()
	limit := max(g.budget-out, g.budget/4)
	if g.lastLimit == 0 || abs(limit-g.lastLimit) >= g.budget/100 {
		g.set(limit)
		g.lastLimit = limit
		g.adjustments++
	}
	live := liveHeap()
	if live > g.lastLimit*9/10 && !g.warnedLive {
		g.warnedLive = true // once: the gauge carries it from here
		g.logger.Warn("the live heap is near the memory limit: the garbage collector runs most of the time and the heap may pass the limit; raise --memory-limit",
			"live_heap_bytes", live, "go_limit_bytes", g.lastLimit, "budget_bytes", g.budget)
	}
	g.stats.Store(&Stats{Budget: g.budget, GoLimit: g.lastLimit, OutsideGo: out, LiveHeap: live, Adjustments: g.adjustments})
}

func abs(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}

var runtimeSamples = []metrics.Sample{
	{Name: "/memory/classes/total:bytes"},
	{Name: "/memory/classes/heap/released:bytes"},
	{Name: "/gc/heap/live:bytes"},
}

// runtimeHeld is what the runtime holds from the system (mapped and not returned).
func runtimeHeld() int64 {
	s := make([]metrics.Sample, 2)
	copy(s, runtimeSamples[:2])
	metrics.Read(s)
	return int64(s[0].Value.Uint64()) - int64(s[1].Value.Uint64())
}

func liveHeap() int64 {
	s := []metrics.Sample{runtimeSamples[2]}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return int64(s[0].Value.Uint64())
}

// outsideRuntime is the resident anonymous memory (/proc/self/status RssAnon) less what the
// runtime holds: C allocations (Pebble's caches and memtables with cgo) and the like. File
// pages (the event log's segments in the page cache) are the kernel's to drop and are not
// counted. 0 where /proc is missing.
func outsideRuntime() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range bytes.Lines(b) {
		if v, ok := kibField(line, "RssAnon:"); ok {
			return max(v-runtimeHeld(), 0)
		}
	}
	return 0
}

// kibField parses a "Name:   123 kB" line of /proc into bytes.
func kibField(line []byte, name string) (int64, bool) {
	rest, ok := bytes.CutPrefix(line, []byte(name))
	if !ok {
		return 0, false
	}
	f := strings.Fields(string(rest))
	if len(f) == 0 {
		return 0, false
	}
	v, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return 0, false
	}
	return v << 10, true
}
