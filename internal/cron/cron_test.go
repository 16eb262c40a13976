package cron

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig([]byte(`
jobs:
  - name: hourly-export
    schedule: "5 * * * *"
    command: export
    args: [--from, "${PREV_HOUR_START}", --to, "${HOUR_START}", --out, "/exports/${RUN_DATE}.csv"]
    timeout: 10m
  - name: feed
    schedule: "@every 15m"
    command: import
`))
	if err != nil {
		t.Fatal(err)
	}
	j := &c.Jobs[0]
	run := time.Date(2026, 12, 3, 14, 5, 0, 0, time.UTC)
	if got := strings.Join(j.Expand(run), " "); got != "--from 2026-12-03T13:00:00Z --to 2026-12-03T14:00:00Z --out /exports/2026-12-03.csv" {
		t.Fatalf("expand: %s", got)
	}
	if n := j.Next(run); !n.Equal(run.Add(time.Hour)) {
		t.Fatalf("next %v", n)
	}
	if c.Jobs[1].Timeout != time.Hour {
		t.Fatalf("default timeout %v", c.Jobs[1].Timeout)
	}
	for _, tc := range []struct{ yaml, want string }{
		{`jobs: []`, "no job"},
		{`jobs: [{name: "a b", schedule: "@hourly", command: export}]`, "jobs[0].name"},
		{`jobs: [{name: a, schedule: "61 * * * *", command: export}]`, "job a: schedule"},
		{`jobs: [{name: a, schedule: "@hourly", command: rm}]`, "job a: command"},
		{`jobs: [{name: a, schedule: "@hourly", command: export, args: ["${HOME}"]}]`, "unknown placeholder"},
		{`jobs: [{name: a, schedule: "@hourly", command: export, timeout: 0.5s}]`, "timeout"},
		{`jobs: [{name: a, schedule: "@hourly", command: export}, {name: a, schedule: "@daily", command: export}]`, "given twice"},
		{`jobs: [{name: a, schedule: "@hourly", command: export, shedule: x}]`, "shedule"},
	} {
		if _, err := ParseConfig([]byte(tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.yaml, err, tc.want)
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("jobs:\n - {name: a, schedule: '@every 1m', command: import, args: ['${RUN_TIME}']}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err == nil {
			for i := range c.Jobs {
				c.Jobs[i].Expand(time.Now())
				c.Jobs[i].Next(time.Now())
			}
		}
	})
}

func everySecond(names ...string) *Config {
	c := &Config{}
	for _, n := range names {
		c.Jobs = append(c.Jobs, Job{Name: n, Schedule: "@every 1s", Command: "export", Timeout: time.Minute})
	}
	b := "jobs:\n"
	for _, j := range c.Jobs {
		b += fmt.Sprintf("  - {name: %s, schedule: '%s', command: %s}\n", j.Name, j.Schedule, j.Command)
	}
	out, err := ParseConfig([]byte(b))
	if err != nil {
		panic(err)
	}
	return out
}

// Two cron processes (schedulers) sharing one lock never run jobs at the same time, and the
// one that finds the lock taken counts a skip.
func TestOneAtATime(t *testing.T) {
	lock := FileLock{Path: filepath.Join(t.TempDir(), "cron.lock")}
	var running, overlaps, runs atomic.Int32
	run := func(ctx context.Context, _ *Job, _ []string) error {
		if running.Add(1) > 1 {
			overlaps.Add(1)
		}
		defer running.Add(-1)
		runs.Add(1)
		time.Sleep(300 * time.Millisecond)
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3500*time.Millisecond)
	defer cancel()
	var scheds []*Scheduler
	var wg sync.WaitGroup
	for range 2 {
		s, err := New(Options{Config: everySecond("a"), Lock: lock, Run: run})
		if err != nil {
			t.Fatal(err)
		}
		scheds = append(scheds, s)
		wg.Add(1)
		go func() { defer wg.Done(); s.Run(ctx) }()
	}
	wg.Wait()
	skipped := scheds[0].Stats("a").Skipped + scheds[1].Stats("a").Skipped
	if overlaps.Load() != 0 || runs.Load() < 2 || skipped < 1 {
		t.Fatalf("overlaps %d, runs %d, skipped %d", overlaps.Load(), runs.Load(), skipped)
	}
}

// A failing job and a job past its timeout are counted as failures with their reason; the
// metrics say when each ran.
func TestFailuresTimeoutsAndMetrics(t *testing.T) {
	cfg := everySecond("bad", "slow")
	cfg.Jobs[1].Timeout = 200 * time.Millisecond
	reg := prometheus.NewRegistry()
	s, err := New(Options{Config: cfg, Lock: FileLock{Path: filepath.Join(t.TempDir(), "l")}, Registerer: reg,
		Run: func(ctx context.Context, j *Job, _ []string) error {
			if j.Name == "bad" {
				return errors.New("exit status 1: boom")
			}
			<-ctx.Done() // a hung job
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
	defer cancel()
	s.Run(ctx)
	bad, slow := s.Stats("bad"), s.Stats("slow")
	if bad.Failures == 0 || !strings.Contains(bad.LastError, "boom") {
		t.Errorf("bad: %+v", bad)
	}
	if slow.Failures == 0 || !strings.Contains(slow.LastError, "deadline") || slow.LastDuration > time.Second {
		t.Errorf("slow: %+v", slow)
	}
	if n := testutil.ToFloat64(s.runs.WithLabelValues("bad", "failed")); n < 1 {
		t.Errorf("adpulse_cron_runs_total{job=bad,result=failed} = %v", n)
	}
	if v := testutil.ToFloat64(s.lastRun.WithLabelValues("slow")); v < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last run %v", v)
	}
}

func TestExecRunner(t *testing.T) {
	r := ExecRunner("/bin/sh", nil)
	j := &Job{Name: "x", Command: "-c"}
	if err := r(context.Background(), j, []string{"echo progress; echo oops >&2; exit 3"}); err == nil || !strings.Contains(err.Error(), "oops") {
		t.Fatalf("err %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	if err := r(ctx, j, []string{"sleep 30"}); err == nil || time.Since(t0) > 5*time.Second {
		t.Fatalf("a job past its deadline: err %v after %v", err, time.Since(t0))
	}
	if got := strings.Join(redactArgs([]string{"--key", "s3cr3t", "--s3-secret-key=x", "--ids", "all"}), " "); strings.Contains(got, "s3cr3t") || strings.Contains(got, "=x") {
		t.Fatalf("redact: %s", got)
	}
}

// The SQL lock is exclusive across connections, freed by release, and reported lost when its
// session is killed.
func testSQLLock(t *testing.T, driver, dsn string, postgres bool, kill string) {
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	name := fmt.Sprintf("adpulse-cron-test-%d", time.Now().UnixNano())
	a := SQLLock{DB: db, Postgres: postgres, Name: name, PingEvery: 50 * time.Millisecond}
	b := SQLLock{DB: db, Postgres: postgres, Name: name}
	ctx := context.Background()
	relA, lostA, ok, err := a.TryLock(ctx)
	if err != nil || !ok {
		t.Fatalf("first lock: %v %v", ok, err)
	}
	if _, _, ok, err := b.TryLock(ctx); err != nil || ok {
		t.Fatalf("second lock while held: ok %v err %v", ok, err)
	}
	relA()
	relB, lostB, ok, err := b.TryLock(ctx)
	if err != nil || !ok {
		t.Fatalf("lock after release: %v %v", ok, err)
	}
	select {
	case <-lostA:
		t.Fatal("a released lock reported lost")
	default:
	}
	_ = lostB
	relB()
	// Kill the holder's session: the lock is lost, and free for others.
	c := SQLLock{DB: db, Postgres: postgres, Name: name, PingEvery: 50 * time.Millisecond}
	relC, lostC, ok, err := c.TryLock(ctx)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	defer relC()
	var arg any = name
	if postgres {
		arg = advisoryKey(name)
	}
	if _, err := db.ExecContext(ctx, kill, arg); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lostC:
	case <-time.After(5 * time.Second):
		t.Fatal("a killed session's lock was not reported lost")
	}
	relD, _, ok, err := b.TryLock(ctx)
	if err != nil || !ok {
		t.Fatalf("lock after the holder died: %v %v", ok, err)
	}
	relD()
}

func TestSQLLockPostgres(t *testing.T) {
	dsn := os.Getenv("ADPULSE_TEST_POSTGRES_DSN")
	if dsn == "" {
		t.Skip("set ADPULSE_TEST_POSTGRES_DSN to test the PostgreSQL advisory lock")
	}
	// Only the session holding this test's key is terminated: the database is shared.
	testSQLLock(t, "pgx", dsn, true, `SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND ((classid::bigint << 32) | objid::bigint) = $1`)
}

func TestSQLLockMySQL(t *testing.T) {
	dsn := os.Getenv("ADPULSE_TEST_MYSQL_DSN")
	if dsn == "" {
		t.Skip("set ADPULSE_TEST_MYSQL_DSN to test the MySQL named lock")
	}
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	testSQLLock(t, "mysql", dsn, false, `KILL (SELECT IS_USED_LOCK(?))`)
}
