package progress

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// A fixed clock makes the rate and the ETA exact.
func TestLineRateAndETA(t *testing.T) {
	t0 := time.Unix(1000, 0)
	now := t0
	r := &Reporter{label: "import", start: t0, now: func() time.Time { return now }}
	r.total, r.done, r.rows = 1000, 250, 5000
	now = t0.Add(10 * time.Second)
	got := r.line(now)
	want := "import  25% 5000 rows 500 rows/s ETA 30s elapsed 10s"
	if got != want {
		t.Fatalf("line = %q, want %q", got, want)
	}
	r.tty = true
	if got := r.line(now); !strings.Contains(got, "[=======") || !strings.Contains(got, "ETA 30s") {
		t.Fatalf("terminal line = %q", got)
	}
	r.total = 0 // unknown: no bar, no ETA
	if got := r.line(now); got != "import 5000 rows 500 rows/s elapsed 10s" {
		t.Fatalf("line without total = %q", got)
	}
}

func TestPlainLinesOnClose(t *testing.T) {
	var buf bytes.Buffer
	off := false
	r := New(&buf, Options{Label: "export", Terminal: &off, Interval: time.Hour})
	r.Add(7, -1)
	r.Close()
	r.Close() // idempotent
	out := buf.String()
	if strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "export 7 rows") || strings.Contains(out, "\r") {
		t.Fatalf("output = %q", out)
	}
}
