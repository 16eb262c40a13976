package ingest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/httpapi"
	"github.com/valyala/fastjson"
)

// allocated is how many bytes f allocates.
func allocated(f func()) uint64 {
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	f()
	runtime.ReadMemStats(&m1)
	return m1.TotalAlloc - m0.TotalAlloc
}

// TestEventsBodyNotSizedByContentLength: a body announcing 10 MiB and carrying one line
// costs what arrived, not what was announced.
func TestEventsBodyNotSizedByContentLength(t *testing.T) {
	f := newFixture(t)
	o := f.h.o
	o.MaxBody = 16 << 20
	mux := http.NewServeMux()
	NewHandlers(o).Register(mux)
	line := `{"type":"impression","impression_id":"imp-cl","ad_id":"ad1"}` + "\n"
	var w *httptest.ResponseRecorder
	n := allocated(func() {
		r := httptest.NewRequest("POST", "/events", strings.NewReader(line))
		r.ContentLength = 10 << 20
		r = r.WithContext(httpapi.WithPrincipal(r.Context(), httpapi.Principal{Role: httpapi.RoleIngest}))
		w = httptest.NewRecorder()
		mux.ServeHTTP(w, r)
	})
	if w.Code != 200 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	if n > 1<<20 {
		t.Errorf("a %d-byte body announced as 10 MiB allocated %d bytes", len(line), n)
	}
}

// serve runs the fixture's handlers behind a real HTTP server, so that connection deadlines
// apply; configure may set the server's timeouts.
func (f *fixture) serve(t *testing.T, o Options, configure func(*http.Server)) string {
	mux := http.NewServeMux()
	NewHandlers(o).Register(mux)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mux.ServeHTTP(w, r.WithContext(httpapi.WithPrincipal(r.Context(), httpapi.Principal{Role: httpapi.RoleIngest})))
	}))
	if configure != nil {
		configure(srv.Config)
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// post sends a POST /events announcing announce bytes, then pieces one every gap, and reads
// the answer (or why there is none) within 5 s.
func post(t *testing.T, addr string, announce int, pieces []string, gap time.Duration) (status int, body string, err error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: %d\r\n\r\n", announce)
	for _, p := range pieces {
		time.Sleep(gap)
		if _, err := io.WriteString(conn, p); err != nil {
			break
		}
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestEventsStalledBody: a client that announces a body and stops sending is answered 400
// after BodyIdle, with nothing accepted, instead of holding the handler.
func TestEventsStalledBody(t *testing.T) {
	f := newFixture(t)
	o := f.h.o
	o.BodyIdle = 200 * time.Millisecond
	addr := f.serve(t, o, nil)
	start := time.Now()
	line := `{"type":"impression","impression_id":"imp-stall","ad_id":"ad1"}` + "\n"
	status, body, err := post(t, addr, 60000, []string{line}, 0)
	if err != nil || status != 400 || !strings.Contains(body, "timed out") {
		t.Fatalf("stalled body: %d %q %v after %v; want 400 naming the timeout", status, body, err, time.Since(start))
	}
	if n := len(f.log.events(t)); n != 0 {
		t.Errorf("%d events accepted from a body that never arrived", n)
	}
}

// TestEventsSlowUploadOutlivesWriteTimeout: the server's WriteTimeout runs from the end of the
// headers, so it also covers the upload; a body that takes longer than it but arrives within
// the read deadlines still gets its answer.
func TestEventsSlowUploadOutlivesWriteTimeout(t *testing.T) {
	f := newFixture(t)
	o := f.h.o
	o.BodyIdle = 500 * time.Millisecond
	addr := f.serve(t, o, func(s *http.Server) { s.WriteTimeout = 300 * time.Millisecond })
	var lines []string
	for i := range 6 {
		lines = append(lines, fmt.Sprintf(`{"type":"impression","impression_id":"imp-slow-%d","ad_id":"ad1"}`+"\n", i))
	}
	status, body, err := post(t, addr, len(strings.Join(lines, "")), lines, 150*time.Millisecond) // 900 ms
	var resp batchResponse
	if err != nil || status != 200 || json.Unmarshal([]byte(body), &resp) != nil || resp.Accepted != len(lines) {
		t.Fatalf("slow upload: %d %q %v; want 200 accepting %d", status, body, err, len(lines))
	}
}

// TestParseBoundedByLine: what parsing allocates follows the size of one event, not of the
// body: a line of a million tiny values, or an array of a million, is rejected without the
// gigabytes a whole-body parse took.
func TestParseBoundedByLine(t *testing.T) {
	lim := BatchLimits{MaxEvents: 1000, MaxLateness: 24 * time.Hour, MaxClockSkew: 5 * time.Minute}
	now := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	zeros := bytes.Repeat([]byte("0,"), 1<<20)
	good := `{"type":"impression","impression_id":"imp-1","ad_id":"ad1"}`
	bodies := map[string][]byte{
		"ndjson line of 1M values":   []byte(good + "\n" + `{"type":"impression","x":[` + string(zeros) + "0]}\n" + good + "\n"),
		"array element of 1M values": []byte("[" + good + `,{"type":"impression","x":[` + string(zeros) + "0]}," + good + "]"),
		"array of 1M values":         []byte("[" + string(zeros) + "0]"),
	}
	for name, body := range bodies {
		var bp batchParser
		var lines []ParsedLine
		var err error
		n := allocated(func() { lines, err = bp.parse(body, now, lim, nil) })
		if n > 8<<20 {
			t.Errorf("%s (%d bytes): parsing allocated %d bytes", name, len(body), n)
		}
		if name == "array of 1M values" {
			if err != errTooManyEvents {
				t.Errorf("%s: %v, want too many events", name, err)
			}
			continue
		}
		if err != nil || len(lines) != 3 || lines[0].Err != nil || lines[2].Err != nil || lines[1].Err == nil || !strings.Contains(lines[1].Err.Message, "longer than") {
			t.Errorf("%s: %d lines, %v; want the long one rejected and the others kept", name, len(lines), err)
		}
	}
}

// TestSplitArray: elements are found whatever their strings hold, and only a malformed array
// is a whole-body error.
func TestSplitArray(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string // nil: a whole-body error
	}{
		{`[]`, []string{}},
		{` [ ] `, []string{}},
		{`[1]`, []string{"1"}},
		{`[ {"a":"],[{\"}"} , [1,[2]] ,"x,y"]`, []string{`{"a":"],[{\"}"}`, `[1,[2]]`, `"x,y"`}},
		{`[1,,2]`, []string{"1", "", "2"}},
		{`[{"a":"\\"},2]`, []string{`{"a":"\\"}`, "2"}},
		{`[`, nil},
		{`[1,`, nil},
		{`[{]`, nil},
		{`[}]`, nil},
		{`["abc]`, nil},
		{`[1] x`, nil},
		{`[1]]`, nil},
		{strings.Repeat("[", 1<<20), nil},
	} {
		var got []string
		n, err := splitArray(bytes.TrimSpace([]byte(c.in)), func(i int, e []byte) {
			if i != len(got)+1 {
				t.Errorf("%.40q: element numbered %d after %d", c.in, i, len(got))
			}
			got = append(got, string(e))
		})
		if c.want == nil {
			if err == nil {
				t.Errorf("%.40q: split into %q, want an error", c.in, got)
			}
			continue
		}
		if err != nil || n != len(c.want) || strings.Join(got, "|") != strings.Join(c.want, "|") {
			t.Errorf("%.40q: %q (%d) %v, want %q", c.in, got, n, err, c.want)
		}
	}
}

// FuzzSplitArray: on every array the JSON parser accepts, splitArray finds the same elements.
func FuzzSplitArray(f *testing.F) {
	for _, s := range []string{`[]`, `[1,"a",{"b":[1,2]},null]`, `["\"]",{"x":"[,"}]`, `[[],[[]],{}]`, `[1,]`, `["\\"]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		b = bytes.TrimSpace(b)
		if len(b) == 0 || b[0] != '[' || len(b) > 1<<16 {
			return
		}
		var got []string
		n, err := splitArray(b, func(_ int, e []byte) { got = append(got, string(e)) })
		if err == nil && n != len(got) {
			t.Fatalf("%q: count %d, %d elements", b, n, len(got))
		}
		v, perr := fastjson.ParseBytes(b)
		if perr != nil {
			return
		}
		items, aerr := v.Array()
		if aerr != nil {
			return
		}
		if err != nil {
			t.Fatalf("%q: a valid array refused: %v", b, err)
		}
		if len(items) != len(got) {
			t.Fatalf("%q: %d elements, the parser finds %d", b, len(got), len(items))
		}
		for i, it := range items {
			ev, err := fastjson.Parse(got[i])
			if err != nil || ev.String() != it.String() {
				t.Fatalf("%q: element %d is %q, the parser's %s", b, i, got[i], it)
			}
		}
	})
}
