package httpapi

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Deadlines. The server's ReadTimeout and WriteTimeout are one clock per request, started when
// the headers were read: they must be long enough for the slowest legitimate request, so alone
// they let a client that stops sending or reading hold a handler, and what it has allocated,
// for that long. Handlers that read a body or write more than a few bytes bound each wait by
// progress instead, through http.ResponseController; a deadline set here replaces the
// server's for the rest of the request.

// SetWriteTimeout gives the writing of the rest of the response d from now. It is a no-op on
// writers without deadlines (test recorders).
func SetWriteTimeout(w http.ResponseWriter, d time.Duration) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(d))
}

// BodyTimeoutError is returned by ReadBody when the client stopped sending.
type BodyTimeoutError struct {
	Idle  time.Duration // no byte arrived for this long
	Total time.Duration // or the whole body took longer than this
}

func (e *BodyTimeoutError) Error() string {
	return fmt.Sprintf("body: timed out (no bytes for %v, or not complete within %v)", e.Idle, e.Total)
}

// bodyGrowth bounds how much ReadBody adds to its buffer at once: growth follows the bytes
// that actually arrived, never what Content-Length announced.
const (
	minBodyGrowth = 16 << 10
	maxBodyGrowth = 4 << 20
)

// ReadBody reads the body of r, at most limit bytes (an *http.MaxBytesError beyond), into buf
// (reused from its length 0) and returns it. The buffer grows only as bytes arrive, so a client
// announcing a large Content-Length and sending nothing costs nothing. Every read must make
// progress within idle and the whole body must arrive within total, or a *BodyTimeoutError is
// returned. When the whole body is read, the read deadline is cleared: the server's background
// read of the connection would otherwise hit it and cancel the request's context while the
// handler works on the body. After an error it stays, so nothing waits for the rest.
func ReadBody(w http.ResponseWriter, r *http.Request, limit int64, buf []byte, idle, total time.Duration) ([]byte, error) {
	buf = buf[:0]
	rc := http.NewResponseController(w)
	deadlines := rc.SetReadDeadline(time.Now().Add(idle)) == nil
	end := time.Now().Add(total)
	rd := http.MaxBytesReader(w, r.Body, limit)
	for {
		if len(buf) == cap(buf) {
			grow := min(max(cap(buf), minBodyGrowth), maxBodyGrowth)
			if room := limit + 1 - int64(len(buf)); room < int64(grow) {
				grow = int(max(room, 1)) // +1 so the last read sees EOF, or the excess
			}
			buf = append(buf[:cap(buf)], make([]byte, grow)...)[:len(buf)]
		}
		n, err := rd.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			if deadlines {
				_ = rc.SetReadDeadline(time.Time{})
			}
			return buf, nil
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return buf, &BodyTimeoutError{Idle: idle, Total: total}
			}
			return buf, err
		}
		if deadlines && n > 0 {
			next := time.Now().Add(idle)
			if next.After(end) {
				next = end
			}
			_ = rc.SetReadDeadline(next)
		}
	}
}

// Stream writes a large response in pieces, each with its own write deadline, so that the
// memory a response holds does not grow with its size, and a client that stops reading is cut
// off after Idle instead of holding the handler (and everything it has read) for as long as it
// likes. Callers append to B and call Flush; once a write failed, Err is set and further
// writes are skipped: the handler should stop producing output.
type Stream struct {
	B []byte // output not yet written

	w    http.ResponseWriter
	rc   *http.ResponseController
	idle time.Duration
	end  time.Time
	err  error
}

// StreamPiece is how many bytes Stream collects before it writes.
const StreamPiece = 32 << 10

// NewStream returns a Stream writing to w, appending to buf[:0]. Each piece must be written
// within idle, and the whole response within total from now.
func NewStream(w http.ResponseWriter, buf []byte, idle, total time.Duration) *Stream {
	return &Stream{B: buf[:0], w: w, rc: http.NewResponseController(w), idle: idle, end: time.Now().Add(total)}
}

// Flush writes the pending output once there is at least StreamPiece of it, or all of it when
// final is true. It returns the first write error.
func (s *Stream) Flush(final bool) error {
	if s.err != nil {
		s.B = s.B[:0]
		return s.err
	}
	if len(s.B) == 0 || !final && len(s.B) < StreamPiece {
		return nil
	}
	d := time.Now().Add(s.idle)
	if d.After(s.end) {
		d = s.end
	}
	_ = s.rc.SetWriteDeadline(d)
	_, s.err = s.w.Write(s.B)
	s.B = s.B[:0]
	return s.err
}

// Err is the first write error.
func (s *Stream) Err() error { return s.err }
