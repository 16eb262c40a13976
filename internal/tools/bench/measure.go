package bench

// What the bench reads of the processes it measures and of the machine: CPU time, RSS,
// profiles from the ops listener.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// cpuSeconds is the CPU time the target's processes have used: from /proc when the bench
// knows their pids, else from the ops listener's process_cpu_seconds_total (a --target
// server), so that settling waits for a server the bench did not start too. ok is false
// when neither can be read.
func (b *runner) cpuSeconds(ctx context.Context, t *target) (float64, bool) {
	if st := b.proc(ctx, t); st != nil {
		return st.CPU, true
	}
	if t.ops == "" {
		return 0, false
	}
	v, found, err := opsSum(ctx, t, "process_cpu_seconds_total")
	return v, err == nil && found
}

func (b *runner) proc(ctx context.Context, t *target) *procStat {
	var sum procStat
	n := 0
	for _, pid := range t.pidList(ctx) {
		if pid == 0 {
			continue
		}
		st, err := readProc(pid)
		if err != nil {
			continue
		}
		sum.RSS += st.RSS
		sum.HWM += st.HWM
		sum.CPU += st.CPU
		n++
	}
	if n == 0 {
		return nil
	}
	return &sum
}

// watchRSS samples the adpulse child's RSS every 500ms and kills it (calling over) when it
// passes limit: a shared machine must not be pushed into swapping or the OOM killer.
func (b *runner) watchRSS(t *target, limit int64, over func(int64)) func() {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			if pid := t.proc.pid(); pid != 0 && t.proc.running() {
				if st, err := readProc(pid); err == nil && st.RSS > limit {
					t.proc.kill()
					over(st.RSS)
					return
				}
			}
		}
	}()
	return func() { close(done); <-stopped }
}

func (b *runner) sampleRSS(ctx context.Context, t *target, tr *TargetResult) {
	if p := b.proc(ctx, t); p != nil {
		tr.RSSNow = p.RSS
		tr.RSSPeak = max(tr.RSSPeak, p.HWM, p.RSS)
	}
}

// selfCPU is the CPU seconds this process has used.
func selfCPU() float64 {
	st, err := readProc(os.Getpid())
	if err != nil {
		return 0
	}
	return st.CPU
}

func cpuPerMillion(before, after *procStat, n int64) float64 {
	if before == nil || after == nil || n <= 0 {
		return 0
	}
	return (after.CPU - before.CPU) / (float64(n) / 1e6)
}

// profile fetches a CPU profile of adpulse over the next d (at most ProfileSeconds) into
// ProfileDir; the returned func waits for it and returns the file path ("" if none).
func (b *runner) profile(ctx context.Context, t *target, name string, d time.Duration) func() string {
	secs := min(b.o.ProfileSeconds, int(d.Seconds())-1)
	if secs < 1 {
		return func() string { return "" }
	}
	return b.fetchProfile(ctx, t, name, "profile?seconds="+strconv.Itoa(secs), time.Duration(secs)*time.Second)
}

// heapProfile writes adpulse's live heap (after a GC) into ProfileDir and returns the file
// path ("" if none): where the resident memory of a settled server goes.
func (b *runner) heapProfile(ctx context.Context, t *target) string {
	return b.fetchProfile(ctx, t, "heap", "heap?gc=1", 0)()
}

// fetchProfile fetches /debug/pprof/<query> from adpulse's ops listener into
// ProfileDir/adpulse-<name>.pprof in the background; the returned func waits for it and
// returns the path ("" if ProfileDir is unset or the fetch failed, which is logged).
func (b *runner) fetchProfile(ctx context.Context, t *target, name, query string, d time.Duration) func() string {
	if b.o.ProfileDir == "" || t.ops == "" || t.name != "adpulse" {
		return func() string { return "" }
	}
	done := make(chan string, 1)
	go func() {
		path := filepath.Join(b.o.ProfileDir, "adpulse-"+name+".pprof")
		c := &http.Client{Timeout: d + 30*time.Second}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, t.ops+"/debug/pprof/"+query, nil)
		resp, err := c.Do(req)
		if err != nil {
			b.logf("profile %s: %v", name, err)
			done <- ""
			return
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode == http.StatusOK {
			err = os.MkdirAll(b.o.ProfileDir, 0o755)
			if err == nil {
				err = os.WriteFile(path, data, 0o644)
			}
		} else if err == nil {
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if err != nil {
			b.logf("profile %s: %v", name, err)
			done <- ""
			return
		}
		done <- path
	}()
	return func() string { return <-done }
}

// Machine describes where the figures were measured.
type Machine struct {
	CPU       string `json:"cpu"`
	Cores     int    `json:"cores"`
	MemBytes  int64  `json:"mem_bytes"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
}

func readMachine() Machine {
	m := Machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				f := strings.Fields(v)
				if len(f) > 0 {
					n, _ := strconv.ParseInt(f[0], 10, 64)
					m.MemBytes = n << 10
				}
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}
