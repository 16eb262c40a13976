package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"time"
)

// rawConn is one keep-alive HTTP/1.1 connection that sends GET requests written by hand and
// reads the answers with net/http's parser. It costs the client a fraction of what
// http.Client does per request, which matters when client and server share two cores: the
// figures should be the server's, not the load generator's.
type rawConn struct {
	addr string // host:port
	host string // Host header
	c    net.Conn
	br   *bufio.Reader
	buf  []byte
	// retried counts requests sent again because a kept-alive connection closed before any
	// byte of the answer (see get).
	retried int64
}

func newRawConn(addr string) *rawConn {
	return &rawConn{addr: addr, host: addr, buf: make([]byte, 0, 512)}
}

const clickUA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"

// get sends GET path and returns the status code and the Location header. A connection that
// fails is closed and redialled on the next call.
//
// When a kept-alive connection turns out closed before any byte of the answer (the server
// closed it as idle while the request was on its way: a restart's drain, an idle timeout),
// get sends the request once more on a new connection, as browsers and Go's http.Transport
// do with an idempotent request (RFC 9112, section 9.3.1). A click is GET /c: a user never
// sees that failure, so the load should not count it as one.
func (rc *rawConn) get(ctx context.Context, path string, timeout time.Duration) (int, string, error) {
	reused := rc.c != nil
	status, loc, err := rc.try(ctx, path, timeout)
	if err != nil && reused && ctx.Err() == nil && closedBeforeAnswer(err) {
		rc.retried++
		status, loc, err = rc.try(ctx, path, timeout)
	}
	return status, loc, err
}

// closedBeforeAnswer reports whether err means the peer closed the connection before
// sending anything back: EOF at the first byte (try peeks it), a reset, or a broken pipe on
// the write. A cut answer is io.ErrUnexpectedEOF, which is not retried.
func closedBeforeAnswer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func (rc *rawConn) try(ctx context.Context, path string, timeout time.Duration) (int, string, error) {
	if rc.c == nil {
		d := net.Dialer{Timeout: 5 * time.Second}
		c, err := d.DialContext(ctx, "tcp", rc.addr)
		if err != nil {
			return 0, "", err
		}
		rc.c, rc.br = c, bufio.NewReaderSize(c, 4096)
	}
	_ = rc.c.SetDeadline(time.Now().Add(timeout))
	b := rc.buf[:0]
	b = append(b, "GET "...)
	b = append(b, path...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, rc.host...)
	b = append(b, "\r\nUser-Agent: "+clickUA+"\r\n\r\n"...)
	rc.buf = b
	if _, err := rc.c.Write(b); err != nil {
		rc.close()
		return 0, "", err
	}
	// The first byte apart, so that a connection closed before any answer shows as such
	// (ReadResponse turns that EOF into io.ErrUnexpectedEOF, as it does a cut answer).
	if _, err := rc.br.Peek(1); err != nil {
		rc.close()
		return 0, "", err
	}
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		rc.close()
		return 0, "", err
	}
	// Bodies of 302s are empty and error bodies are small: read them to reuse the connection.
	if _, err := io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)); err != nil {
		resp.Body.Close()
		rc.close()
		return 0, "", err
	}
	resp.Body.Close()
	if resp.Close {
		rc.close()
	}
	return resp.StatusCode, resp.Header.Get("Location"), nil
}

func (rc *rawConn) close() {
	if rc.c != nil {
		rc.c.Close()
		rc.c, rc.br = nil, nil
	}
}

// errStatus is a non-2xx answer of a helper request.
type errStatus struct {
	status int
	body   string
}

func (e *errStatus) Error() string { return "status " + strconv.Itoa(e.status) + ": " + e.body }

func snippet(b []byte) string {
	if len(b) > 300 {
		b = b[:300]
	}
	return fmt.Sprintf("%q", b)
}
