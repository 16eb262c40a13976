package bench

import (
	"context"
	"errors"
	"time"
)

// RecoveryStats is kill -9 during a click load, restart on the same data dir, and the time
// until /readyz answers 200; then the clicks acknowledged before the kill are checked.
type RecoveryStats struct {
	KilledAfter    float64     `json:"killed_after_s"`
	LoadBeforeKill RunStats    `json:"load_before_kill"`
	RestartToReady float64     `json:"restart_to_ready_s"` // exec of the new process to /readyz 200
	KillToReady    float64     `json:"kill_to_ready_s"`
	DataDirBytes   int64       `json:"data_dir_bytes"`
	Check          CheckResult `json:"check"`
	Load1          float64     `json:"load_avg_1m"`
}

// runRecovery sends cs at rate, kills the server with SIGKILL after killAfter, restarts it
// and checks cs's acknowledged clicks.
func runRecovery(ctx context.Context, t *target, cs *clickSet, rate float64, conns int, killAfter, catchUp time.Duration) (*RecoveryStats, error) {
	if t.proc == nil {
		return nil, errors.New("needs an adpulse the bench started")
	}
	rs := &RecoveryStats{Load1: loadAvg()}
	from := time.Now().Add(-time.Minute).Truncate(time.Minute)
	loadCtx, stopLoad := context.WithCancel(ctx)
	done := make(chan RunStats, 1)
	go func() {
		st, _ := cs.openLoop(loadCtx, t.ingestAddrs(), 0, rate, time.Hour, conns)
		done <- st
	}()
	t0 := time.Now()
	if err := sleepCtx(ctx, killAfter); err != nil {
		stopLoad()
		<-done
		return nil, err
	}
	t.proc.kill()
	killed := time.Now()
	rs.KilledAfter = killed.Sub(t0).Seconds()
	stopLoad()
	rs.LoadBeforeKill = <-done
	rs.DataDirBytes = dirSize(t.proc.dataDir)
	d, err := t.proc.start(ctx)
	if err != nil {
		return rs, err
	}
	rs.RestartToReady = d.Seconds()
	rs.KillToReady = time.Since(killed).Seconds()
	t.moveTo(t.proc.api, t.proc.ops)
	e := newExpectation("clicks", cs.lay.prefix)
	e.from, e.to = from, time.Now().Add(2*time.Minute).Truncate(time.Minute)
	cs.addExpected(e)
	rs.Check = check(ctx, t, e, catchUp)
	return rs, nil
}
