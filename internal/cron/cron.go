// Package cron is the cron role (`adpulse serve --roles cron`): it runs the imports, exports
// and reconciles of a config file on their schedules.
//
// Guarantees:
//   - One job at a time across the deployment: a run first takes a Lock (an advisory lock in
//     the shared catalog database when there is one, a file lock in the data dir otherwise);
//     when another process holds it the run is skipped and counted, not queued.
//   - Every run is bounded by its job's timeout, and stopped when the lock is lost.
//   - A job runs the same code as the command line, `adpulse import|export|reconcile ARGS`,
//     as a child process of the running binary: a job that crashes or leaks cannot take
//     the role down, and the scheduler needs nothing of those commands but their exit status.
//   - Runs missed while another ran (or the process was down) are not made up: the next run
//     is the next scheduled time after now. Jobs are idempotent by design (import resumes
//     from its checkpoint, export rewrites its file, reconcile repairs idempotently).
package cron

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Runner runs one job with its expanded arguments; it returns when the job is done.
type Runner func(ctx context.Context, job *Job, args []string) error

// Options configure New.
type Options struct {
	Config *Config
	Lock   Lock
	// Run runs a job; default ExecRunner of this binary.
	Run    Runner
	Now    func() time.Time
	Logger *slog.Logger
	// Registerer receives the metrics (nil: not registered).
	Registerer prometheus.Registerer
}

// Scheduler runs the jobs of a config.
type Scheduler struct {
	o Options

	lastRun, lastSuccess, lastDuration *prometheus.GaugeVec
	runs                               *prometheus.CounterVec

	mu    sync.Mutex
	stats map[string]*JobStats
}

// JobStats is what a job has done since the process started.
type JobStats struct {
	Runs, Failures, Skipped int64
	LastRun                 time.Time
	LastDuration            time.Duration
	LastError               string
}

// New returns a scheduler; Run starts it.
func New(o Options) (*Scheduler, error) {
	if o.Config == nil || o.Lock == nil {
		return nil, errors.New("cron: Config and Lock are required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Run == nil {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		o.Run = ExecRunner(exe, o.Logger)
	}
	s := &Scheduler{o: o, stats: map[string]*JobStats{}}
	s.lastRun = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "adpulse_cron_last_run_timestamp_seconds", Help: "When each cron job last started (Unix seconds)."}, []string{"job"})
	s.lastSuccess = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "adpulse_cron_last_success_timestamp_seconds", Help: "When each cron job last finished without error (Unix seconds)."}, []string{"job"})
	s.lastDuration = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "adpulse_cron_last_duration_seconds", Help: "How long each cron job's last run took."}, []string{"job"})
	s.runs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "adpulse_cron_runs_total", Help: "Cron job runs by result: ok, failed, or skipped (another process held the lock)."}, []string{"job", "result"})
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{s.lastRun, s.lastSuccess, s.lastDuration, s.runs} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, err
			}
		}
	}
	for i := range o.Config.Jobs {
		s.stats[o.Config.Jobs[i].Name] = &JobStats{}
		for _, r := range []string{"ok", "failed", "skipped"} {
			s.runs.WithLabelValues(o.Config.Jobs[i].Name, r)
		}
	}
	return s, nil
}

// Stats returns a copy of a job's stats.
func (s *Scheduler) Stats(job string) JobStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.stats[job]; st != nil {
		return *st
	}
	return JobStats{}
}

// Run runs the schedule until ctx is done.
func (s *Scheduler) Run(ctx context.Context) error {
	jobs := s.o.Config.Jobs
	next := make([]time.Time, len(jobs))
	now := s.o.Now()
	for i := range jobs {
		next[i] = jobs[i].Next(now)
		s.o.Logger.Info("cron job scheduled", "job", jobs[i].Name, "command", jobs[i].Command, "next", next[i])
	}
	for {
		first := 0
		for i := range next {
			if next[i].Before(next[first]) {
				first = i
			}
		}
		wait := next[first].Sub(s.o.Now())
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
		now := s.o.Now()
		for i := range jobs {
			if next[i].After(now) {
				continue
			}
			s.runOnce(ctx, &jobs[i], next[i])
			if ctx.Err() != nil {
				return nil
			}
			next[i] = jobs[i].Next(s.o.Now())
		}
	}
}

// runOnce runs job for its run scheduled at at, under the lock.
func (s *Scheduler) runOnce(ctx context.Context, job *Job, at time.Time) {
	log := s.o.Logger.With("job", job.Name, "command", job.Command, "scheduled", at)
	release, lost, ok, err := s.o.Lock.TryLock(ctx)
	if err != nil || !ok {
		if err != nil {
			log.Error("cron job skipped: the lock failed", "err", err)
		} else {
			log.Info("cron job skipped: another process is running a job")
		}
		s.runs.WithLabelValues(job.Name, "skipped").Inc()
		s.mu.Lock()
		s.stats[job.Name].Skipped++
		s.mu.Unlock()
		return
	}
	defer release()
	rctx, cancel := context.WithTimeout(ctx, job.Timeout)
	defer cancel()
	go func() {
		select {
		case <-lost:
			log.Error("cron lock lost: stopping the job")
			cancel()
		case <-rctx.Done():
		}
	}()
	args := job.Expand(at)
	start := s.o.Now()
	s.lastRun.WithLabelValues(job.Name).Set(float64(start.UnixNano()) / 1e9)
	log.Info("cron job started", "args", redactArgs(args))
	err = s.o.Run(rctx, job, args)
	if err == nil && rctx.Err() != nil && ctx.Err() == nil {
		err = fmt.Errorf("stopped: %w", context.Cause(rctx))
	}
	took := s.o.Now().Sub(start)
	if ctx.Err() != nil {
		// The process is shutting down: the run was stopped, not failed.
		log.Warn("cron job stopped by shutdown", "took", took.Round(time.Millisecond), "err", err)
		return
	}
	s.lastDuration.WithLabelValues(job.Name).Set(took.Seconds())
	s.mu.Lock()
	st := s.stats[job.Name]
	st.Runs++
	st.LastRun, st.LastDuration = start, took
	st.LastError = ""
	if err != nil {
		st.Failures++
		st.LastError = err.Error()
	}
	s.mu.Unlock()
	if err != nil {
		s.runs.WithLabelValues(job.Name, "failed").Inc()
		log.Error("cron job failed", "took", took.Round(time.Millisecond), "err", err)
		return
	}
	s.runs.WithLabelValues(job.Name, "ok").Inc()
	s.lastSuccess.WithLabelValues(job.Name).Set(float64(s.o.Now().UnixNano()) / 1e9)
	log.Info("cron job done", "took", took.Round(time.Millisecond))
}

// redactArgs hides values of flags that carry secrets in the log.
func redactArgs(args []string) []string {
	out := make([]string, len(args))
	hide := false
	for i, a := range args {
		switch {
		case hide:
			out[i], hide = "REDACTED", false
		case isSecretFlag(a):
			if k, _, ok := strings.Cut(a, "="); ok {
				out[i] = k + "=REDACTED"
			} else {
				out[i], hide = a, true
			}
		default:
			out[i] = a
		}
	}
	return out
}

func isSecretFlag(a string) bool {
	a = strings.TrimLeft(a, "-")
	a, _, _ = strings.Cut(a, "=")
	return a == "key" || a == "s3-secret-key" || a == "source" || a == "catalog-dsn"
}

// ExecRunner runs jobs as `exe COMMAND ARGS...`, logging their output line by line; the
// job's context kills it (and its error names the last lines of its stderr).
func ExecRunner(exe string, logger *slog.Logger) Runner {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return func(ctx context.Context, job *Job, args []string) error {
		cmd := exec.CommandContext(ctx, exe, append([]string{job.Command}, args...)...)
		// Its own process group, so that stopping it stops whatever it started: SIGTERM
		// first (import saves its checkpoint and stops), SIGKILL 10 s later.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
		cmd.WaitDelay = 10 * time.Second
		defer func() {
			if cmd.Process != nil {
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // leftovers of the group
			}
		}()
		tail := &tailBuffer{max: 4 << 10}
		cmd.Stdout = &logWriter{log: logger.With("job", job.Name, "stream", "stdout")}
		cmd.Stderr = &teeWriter{a: tail, b: &logWriter{log: logger.With("job", job.Name, "stream", "stderr")}}
		if err := cmd.Run(); err != nil {
			if t := strings.TrimSpace(tail.String()); t != "" {
				return fmt.Errorf("%w: %s", err, t)
			}
			return err
		}
		return nil
	}
}

// logWriter logs each complete line written to it (progress bars are plain lines off a
// terminal).
type logWriter struct {
	log *slog.Logger
	buf []byte
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.log.Info("cron job output", "line", string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > 64<<10 {
		w.log.Info("cron job output", "line", string(w.buf))
		w.buf = w.buf[:0]
	}
	return len(p), nil
}

type teeWriter struct {
	a, b interface{ Write([]byte) (int, error) }
}

func (t *teeWriter) Write(p []byte) (int, error) {
	t.a.Write(p)
	return t.b.Write(p)
}

// tailBuffer keeps the last max bytes written.
type tailBuffer struct {
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.b) }
