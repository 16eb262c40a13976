package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// RestartStats is a rolling restart during a fixed-rate click load: SIGUSR2 makes adpulse
// restart in place (it hands its listening sockets to a new process and drains,
// internal/server/handoff.go); every click that did not get its 302 counts as failed, and
// the clicks acknowledged all along are then checked.
type RestartStats struct {
	SignalledAfter float64     `json:"signalled_after_s"`
	Load           RunStats    `json:"load"`
	Failed         int64       `json:"failed"`            // requests not answered 302
	SignalToReady  float64     `json:"signal_to_ready_s"` // SIGUSR2 to the new process's /readyz 200
	Check          CheckResult `json:"check"`
	Load1          float64     `json:"load_avg_1m"`
}

// runRestart sends cs at rate for 2*after plus the restart, signals SIGUSR2 after `after`,
// waits for the new process and checks cs's acknowledged clicks.
func runRestart(ctx context.Context, t *target, cs *clickSet, rate float64, conns int, after, catchUp time.Duration) (*RestartStats, error) {
	if t.proc == nil {
		return nil, errors.New("needs an adpulse the bench started")
	}
	rs := &RestartStats{Load1: loadAvg()}
	from := time.Now().Add(-time.Minute).Truncate(time.Minute)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	done := make(chan RunStats, 1)
	go func() {
		st, _ := cs.openLoop(loadCtx, t.ingestAddrs(), 0, rate, time.Hour, conns)
		done <- st
	}()
	t0 := time.Now()
	if err := sleepCtx(ctx, after); err != nil {
		stopLoad()
		<-done
		return nil, err
	}
	oldPID := t.proc.pid()
	if err := syscall.Kill(oldPID, syscall.SIGUSR2); err != nil {
		stopLoad()
		<-done
		return nil, fmt.Errorf("SIGUSR2: %w", err)
	}
	signalled := time.Now()
	rs.SignalledAfter = signalled.Sub(t0).Seconds()
	newPID, err := awaitSuccessor(ctx, t, oldPID, time.Minute)
	if err != nil {
		stopLoad()
		<-done
		return rs, err
	}
	rs.SignalToReady = time.Since(signalled).Seconds()
	t.proc.adopt(newPID)
	_ = sleepCtx(ctx, after) // the new process under the same load for a while
	stopLoad()
	rs.Load = <-done
	rs.Failed = rs.Load.Requests - rs.Load.OK
	e := newExpectation("clicks", cs.lay.prefix)
	e.from, e.to = from, time.Now().Add(2*time.Minute).Truncate(time.Minute)
	cs.addExpected(e)
	rs.Check = check(ctx, t, e, catchUp)
	return rs, nil
}

// awaitSuccessor waits until the data dir's PID file names a process other than old and the
// ops listener (inherited by the new process) answers /readyz 200.
func awaitSuccessor(ctx context.Context, t *target, old int, limit time.Duration) (int, error) {
	pidFile := filepath.Join(t.proc.dataDir, "PID")
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(pidFile)
		if p, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && p != old && p > 0 {
			if resp, err := hc.Get(t.ops + "/readyz"); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return p, nil
				}
			}
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return 0, err
		}
	}
	return 0, fmt.Errorf("no new process ready %v after SIGUSR2", limit)
}
