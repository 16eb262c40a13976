// Package progress reports the advance of a long job (an import, an export) to a person: on a
// terminal a bar redrawn in place with rows, rows per second and the time left; anywhere else
// (a log file, a cron job's output) a plain line at a fixed interval, so logs stay readable.
//
// Work is counted in rows; the fraction done may be measured in other units (bytes of a file
// read so far) when the number of rows is not known in advance. Without a total there is no
// bar and no ETA, only the count and the rate.
package progress

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
)

// Reporter draws the progress of one job. Its methods are safe for concurrent use.
type Reporter struct {
	w        io.Writer
	tty      bool
	label    string
	interval time.Duration
	now      func() time.Time

	mu          sync.Mutex
	start       time.Time
	rows        int64
	done, total int64 // units of the fraction done; total <= 0: unknown
	stop        chan struct{}
	stopped     chan struct{}
}

// Options configure New.
type Options struct {
	// Label starts every line ("import", "export").
	Label string
	// Interval between plain lines (default 10 s); a terminal is redrawn every 200 ms.
	Interval time.Duration
	// Terminal forces the bar (true) or plain lines (false); nil detects it from w.
	Terminal *bool
	Now      func() time.Time
}

// IsTerminal reports whether w is a terminal.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// New starts a reporter writing to w; Close stops it and prints the final line.
func New(w io.Writer, o Options) *Reporter {
	r := &Reporter{w: w, label: o.Label, interval: o.Interval, now: o.Now, stop: make(chan struct{}), stopped: make(chan struct{})}
	if r.now == nil {
		r.now = time.Now
	}
	if o.Terminal != nil {
		r.tty = *o.Terminal
	} else {
		r.tty = IsTerminal(w)
	}
	if r.interval <= 0 {
		r.interval = 10 * time.Second
	}
	if r.tty {
		r.interval = 200 * time.Millisecond
	}
	r.start = r.now()
	go r.loop()
	return r
}

// SetTotal sets the units of the whole job (rows, or bytes when rows are not known).
func (r *Reporter) SetTotal(total int64) {
	r.mu.Lock()
	r.total = total
	r.mu.Unlock()
}

// Add records rows more rows, and sets the units done so far (ignored when negative).
func (r *Reporter) Add(rows, doneUnits int64) {
	r.mu.Lock()
	r.rows += rows
	if doneUnits >= 0 {
		r.done = doneUnits
	}
	r.mu.Unlock()
}

// Rows is the number of rows recorded so far.
func (r *Reporter) Rows() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rows
}

func (r *Reporter) loop() {
	defer close(r.stopped)
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			r.draw(false)
		}
	}
}

// Close stops the reporter and prints the final state on its own line.
func (r *Reporter) Close() {
	select {
	case <-r.stop:
		return
	default:
	}
	close(r.stop)
	<-r.stopped
	r.draw(true)
}

func (r *Reporter) draw(final bool) {
	r.mu.Lock()
	line := r.line(r.now())
	r.mu.Unlock()
	switch {
	case r.tty && final:
		fmt.Fprintf(r.w, "\r%s\x1b[K\n", line)
	case r.tty:
		fmt.Fprintf(r.w, "\r%s\x1b[K", line)
	default:
		fmt.Fprintln(r.w, line)
	}
}

// line renders the state: "import [=====>    ] 42% 1200000 rows 85000 rows/s ETA 12s".
func (r *Reporter) line(now time.Time) string {
	elapsed := now.Sub(r.start)
	rate := 0.0
	if s := elapsed.Seconds(); s > 0 {
		rate = float64(r.rows) / s
	}
	var b strings.Builder
	b.WriteString(r.label)
	if r.total > 0 {
		frac := min(float64(r.done)/float64(r.total), 1)
		if r.tty {
			const width = 30
			n := int(frac * width)
			b.WriteString(" [" + strings.Repeat("=", n) + strings.Repeat(" ", width-n) + "]")
		}
		fmt.Fprintf(&b, " %3.0f%%", frac*100)
		fmt.Fprintf(&b, " %d rows %.0f rows/s", r.rows, rate)
		if frac > 0 && frac < 1 {
			left := time.Duration(float64(elapsed) * (1 - frac) / frac)
			fmt.Fprintf(&b, " ETA %s", left.Round(time.Second))
		}
	} else {
		fmt.Fprintf(&b, " %d rows %.0f rows/s", r.rows, rate)
	}
	fmt.Fprintf(&b, " elapsed %s", elapsed.Round(time.Second))
	return b.String()
}
