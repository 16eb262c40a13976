package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReconcileCommand: bad ranges are usage errors (exit 2); on a data dir whose hours are
// not final yet the command refuses with exit 1 and says why. The full check and repair are
// tested in internal/reconcile.
func TestReconcileCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"reconcile", "--data-dir", dir, "--to", "2026-11-21T11:00:00Z"}, "--from"},
		{[]string{"reconcile", "--data-dir", dir, "--from", "yesterday", "--to", "2026-11-21T11:00:00Z"}, "RFC 3339"},
		{[]string{"reconcile", "--data-dir", dir, "--from", "2026-11-21T11:00:00Z", "--to", "2026-11-21T10:00:00Z"}, "--from must be before --to"},
		{[]string{"reconcile", "--data-dir", dir, "--from", "2026-11-21T10:00:00Z", "--to", "2026-11-21T11:00:00Z", "--archive-interval", "7m"}, "must divide an hour"},
		{[]string{"serve", "--data-dir", dir, "--reconcile", "sometimes"}, "--reconcile must be repair, check or off"},
		{[]string{"serve", "--data-dir", dir, "--archive-url", "off"}, "--reconcile repair needs the archive"},
	} {
		var out, errOut bytes.Buffer
		if code := run(tc.args, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, errOut.String(), tc.want)
		}
	}
	// The last whole hour: within every bucket's retention whatever the day the test runs.
	to := time.Now().UTC().Truncate(time.Hour)
	from := to.Add(-time.Hour)
	var out, errOut bytes.Buffer
	code := run([]string{"reconcile", "--data-dir", dir, "--from", from.Format(time.RFC3339), "--to", to.Format(time.RFC3339)}, &out, &errOut)
	if code != 1 || !strings.Contains(errOut.String(), "not ready") {
		t.Errorf("reconcile of an empty data dir: exit %d, stderr %q; want 1 and not ready", code, errOut.String())
	}
}
