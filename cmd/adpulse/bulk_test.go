package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/cron"
)

// TestMain lets the test binary stand in for adpulse when a test runs it as a child process
// (the cron role runs its jobs as `adpulse COMMAND ARGS`).
func TestMain(m *testing.M) {
	if os.Getenv("ADPULSE_TEST_AS_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func TestImportDryRunCommand(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "e.csv")
	os.WriteFile(src, []byte("type,ad_id,impression_id\nimpression,a1,i1\nimpression,a1,\n"), 0o644)
	var out, errs bytes.Buffer
	code := run([]string{"import", "--dry-run", "--progress", "off", "--source", src}, &out, &errs)
	if code != 1 || !strings.Contains(out.String(), "2 rows read, 1 valid, 1 rejected") || !strings.Contains(errs.String(), "row 2: impression_id") {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", code, out.String(), errs.String())
	}
	if code := run([]string{"export", "--ids", "a", "--from", "2026-01-01", "--to", "2026-01-02", "--interval", "5m"}, &out, &errs); code == 0 {
		t.Fatal("export with a bad --interval succeeded")
	}
}

// The cron scheduler runs a job through the real command-line entry, as the role does.
func TestCronRunsTheCommand(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "e.ndjson")
	os.WriteFile(src, []byte(`{"type":"impression","ad_id":"a1","impression_id":"i1"}`+"\n"), 0o644)
	cfg, err := cron.ParseConfig([]byte(`
jobs:
  - name: check-feed
    schedule: "@every 1s"
    command: import
    args: [--dry-run, --progress, lines, --source, "` + src + `"]
    timeout: 20s
`))
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("ADPULSE_TEST_AS_MAIN", "1")
	exe, _ := os.Executable()
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&syncWriter{w: &logs}, nil))
	s, err := cron.New(cron.Options{Config: cfg, Lock: cron.FileLock{Path: filepath.Join(dir, "cron.lock")}, Run: cron.ExecRunner(exe, logger), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
	defer cancel()
	s.Run(ctx)
	st := s.Stats("check-feed")
	if st.Runs == 0 || st.Failures != 0 {
		t.Fatalf("stats %+v\n%s", st, logs.String())
	}
	if !strings.Contains(logs.String(), "1 valid, 0 rejected") {
		t.Fatalf("the job's output is not in the log:\n%s", logs.String())
	}
}

type syncWriter struct {
	w *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) { return s.w.Write(p) }
