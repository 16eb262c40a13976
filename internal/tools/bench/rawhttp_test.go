package bench

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"testing"
	"time"
)

// serveConns answers each accepted connection with script: it reads one request per entry
// and writes the entry (an empty one closes the connection without answering).
func serveConns(t *testing.T, scripts ...[]string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for _, script := range scripts {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for _, answer := range script {
					if _, err := http.ReadRequest(br); err != nil {
						return
					}
					if answer == "" {
						return
					}
					if _, err := c.Write([]byte(answer)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

const found = "HTTP/1.1 302 Found\r\nLocation: https://shop.example/\r\nContent-Length: 0\r\n\r\n"

// TestRawConnRetriesLikeABrowser: a request on a kept-alive connection that the server closes
// without answering is sent once more on a new connection (as browsers do); one whose answer
// is cut is not, and neither is a request on a connection just dialled.
func TestRawConnRetriesLikeABrowser(t *testing.T) {
	ctx := context.Background()
	t.Run("closed unanswered", func(t *testing.T) {
		rc := newRawConn(serveConns(t, []string{found, ""}, []string{found}))
		defer rc.close()
		for i := range 2 {
			if status, _, err := rc.get(ctx, "/c/x", 5*time.Second); err != nil || status != 302 {
				t.Fatalf("request %d: %d, %v", i, status, err)
			}
		}
		if rc.retried != 1 {
			t.Errorf("retried %d, want 1", rc.retried)
		}
	})
	t.Run("cut answer", func(t *testing.T) {
		rc := newRawConn(serveConns(t, []string{found, "HTTP/1.1 302 Fo"}, []string{found}))
		defer rc.close()
		if _, _, err := rc.get(ctx, "/c/x", 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if _, _, err := rc.get(ctx, "/c/x", 5*time.Second); err == nil || rc.retried != 0 {
			t.Errorf("a cut answer: err %v, retried %d; want an error and no retry", err, rc.retried)
		}
	})
	t.Run("new connection", func(t *testing.T) {
		rc := newRawConn(serveConns(t, []string{""}, []string{found}))
		defer rc.close()
		if _, _, err := rc.get(ctx, "/c/x", 5*time.Second); err == nil || rc.retried != 0 {
			t.Errorf("closed on a new connection: err %v, retried %d; want an error and no retry", err, rc.retried)
		}
	})
}
