package httpapi

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestReadBodyGrowsWithArrivals: the buffer follows the bytes that arrived, whatever
// Content-Length announced; the limit holds; a reused buffer is reused.
func TestReadBodyGrowsWithArrivals(t *testing.T) {
	r := httptest.NewRequest("POST", "/events", strings.NewReader("hello"))
	r.ContentLength = 10 << 20 // announced, never sent
	b, err := ReadBody(httptest.NewRecorder(), r, 10<<20, nil, time.Second, time.Second)
	if err != nil || string(b) != "hello" {
		t.Fatalf("%q %v", b, err)
	}
	if cap(b) > minBodyGrowth {
		t.Errorf("5 bytes read into a buffer of %d", cap(b))
	}

	for _, n := range []int{0, 1, 1000, minBodyGrowth, minBodyGrowth + 1, 1 << 20, 3<<20 + 7} {
		body := bytes.Repeat([]byte("x"), n)
		for _, limit := range []int64{int64(n) - 1, int64(n), int64(n) + 1} {
			if limit < 0 {
				continue
			}
			r := httptest.NewRequest("POST", "/events", bytes.NewReader(body))
			buf := make([]byte, 3, 64)
			got, err := ReadBody(httptest.NewRecorder(), r, limit, buf, time.Second, time.Second)
			var tooLarge *http.MaxBytesError
			switch {
			case int64(n) > limit:
				if !errors.As(err, &tooLarge) {
					t.Errorf("%d bytes, limit %d: %v, want a MaxBytesError", n, limit, err)
				}
			case err != nil || !bytes.Equal(got, body):
				t.Errorf("%d bytes, limit %d: %d bytes, %v", n, limit, len(got), err)
			case int64(cap(got)) > 2*max(int64(n), minBodyGrowth)+1:
				t.Errorf("%d bytes, limit %d: buffer of %d", n, limit, cap(got))
			}
		}
	}
	buf := make([]byte, 0, 100)
	r = httptest.NewRequest("POST", "/events", strings.NewReader("abc"))
	if got, _ := ReadBody(httptest.NewRecorder(), r, 10, buf, time.Second, time.Second); &got[0] != &buf[:1][0] {
		t.Error("a buffer with room was not reused")
	}
}

// TestReadBodyDeadlines: a client that stops sending is answered after the idle timeout, one
// that sends steadily but slowly more than the idle timeout in total is read to the end, and
// one that trickles past the total timeout is cut at it.
func TestReadBodyDeadlines(t *testing.T) {
	const idle, total = 300 * time.Millisecond, 1500 * time.Millisecond
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := ReadBody(w, r, 1<<20, nil, idle, total)
		var te *BodyTimeoutError
		switch {
		case errors.As(err, &te):
			w.WriteHeader(http.StatusRequestTimeout)
		case err != nil:
			w.WriteHeader(http.StatusBadRequest)
		default:
			fmt.Fprintf(w, "%d", len(b))
		}
	}))
	defer srv.Close()
	send := func(announce int, pieces []string, gap time.Duration) (string, time.Duration) {
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		start := time.Now()
		fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", announce)
		for _, p := range pieces {
			time.Sleep(gap)
			if _, err := io.WriteString(conn, p); err != nil {
				break
			}
		}
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return err.Error(), time.Since(start)
		}
		b, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("%d %s", resp.StatusCode, b), time.Since(start)
	}
	if got, took := send(1<<20, []string{"abc"}, 0); got != "408 " || took > idle+time.Second {
		t.Errorf("stalled after 3 bytes of 1 MiB: %q after %v", got, took)
	}
	steady := strings.Split(strings.Repeat("x", 8), "") // 8 pieces, 150ms apart: 1.2s > idle
	if got, _ := send(8, steady, idle/2); got != "200 8" {
		t.Errorf("steady slow body: %q", got)
	}
	trickle := strings.Split(strings.Repeat("x", 20), "") // 20 pieces, 150ms apart: 3s > total
	if got, took := send(20, trickle, idle/2); got != "408 " || took > total+time.Second {
		t.Errorf("body trickling past the total timeout: %q after %v", got, took)
	}
}

// TestStreamPieces: output is written in pieces of StreamPiece, the rest on the final flush,
// and a write error stops everything after it.
func TestStreamPieces(t *testing.T) {
	w := &countingWriter{ResponseRecorder: httptest.NewRecorder()}
	st := NewStream(w, nil, time.Second, time.Minute)
	for range 100_000 {
		st.B = append(st.B, "0123456789"...)
		if err := st.Flush(false); err != nil {
			t.Fatal(err)
		}
		if len(st.B) >= StreamPiece {
			t.Fatalf("%d bytes pending after a flush", len(st.B))
		}
	}
	if err := st.Flush(true); err != nil {
		t.Fatal(err)
	}
	if w.Body.Len() != 1_000_000 || w.writes != 1_000_000/StreamPiece+1 {
		t.Errorf("%d bytes in %d writes", w.Body.Len(), w.writes)
	}
	w.fail = true
	st.B = append(st.B, bytes.Repeat([]byte("x"), StreamPiece)...)
	if st.Flush(false) == nil || st.Err() == nil || st.Flush(true) == nil || w.writes != 1_000_000/StreamPiece+2 {
		t.Errorf("after a failed write: err %v, %d writes", st.Err(), w.writes)
	}
}

type countingWriter struct {
	*httptest.ResponseRecorder
	writes int
	fail   bool
}

func (w *countingWriter) Write(b []byte) (int, error) {
	w.writes++
	if w.fail {
		return 0, errors.New("broken pipe")
	}
	return w.ResponseRecorder.Write(b)
}
