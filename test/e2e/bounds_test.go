package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Resource bounds: clients that ask for big answers and never read them, or announce big
// bodies and never send them, cost the server little memory, do not slow other clients down,
// and are cut off by deadlines instead of being held forever.

const (
	boundsDupConns  = 8  // GET /metrics naming one id 1000 times, 1000 points
	boundsWideConns = 8  // GET /metrics with 100 distinct ids x 1000 points (100,000, the cap)
	boundsBodyConns = 16 // POST /events announcing a 10 MiB body and sending none of it

	// boundsRSSGrowth is the most the server's resident memory may grow while the 32 stalled
	// connections are open. What they may legitimately hold: /metrics reads the store in
	// chunks of at most 10,000 points (about 1 MiB decoded, plus the store's read buffers) and
	// encodes through a 36 KiB buffer, so 16 stalled /metrics requests hold about 16-32 MiB;
	// a stalled body holds a connection's buffers (a few KiB). The rest is room for the garbage
	// collector, which lets the heap grow to twice what is live before collecting. Measured:
	// about +25 MiB; before the bounds, the same load grew RSS by about 980 MiB.
	boundsRSSGrowth = 64 << 20

	// boundsCutWait is how long after opening the stalled connections the test starts reading
	// them: past the server's 10 s progress deadlines with a margin for a loaded machine.
	boundsCutWait = 16 * time.Second
)

// stalled is one connection that sends a request and then does not read.
type stalled struct {
	kind string
	conn net.Conn
}

// dialSmallWindow connects with a 4 KiB receive buffer, set before the handshake so the
// advertised window stays small: the server cannot park a big response in our kernel.
func dialSmallWindow(addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	return d.Dial("tcp", addr)
}

// rssBytes is the resident set size of process pid, from /proc.
func rssBytes(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatalf("read /proc/%d/status: %v", pid, err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f := strings.Fields(rest)
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil || len(f) != 2 || f[1] != "kB" {
				t.Fatalf("VmRSS line %q", l)
			}
			return n << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func TestStalledClientsAreBounded(t *testing.T) {
	needBinary(t)
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("needs /proc to read the server's RSS")
	}
	e := newEnv(t)
	srv := e.start("--admin-key", testAdminKey, "--click-secret", testClickSecret)
	pid := srv.cmd.Process.Pid
	c := newClient(8)
	cat := setupCatalog(t, c, srv.base, testAdminKey, "bnd", 1, 1, 2)
	ad := cat.ads[0]

	end := time.Now().UTC().Truncate(time.Minute)
	start := end.Add(-1000 * time.Minute)
	rng := fmt.Sprintf("&start_time=%d&end_time=%d&interval=1m", start.Unix(), end.Unix())
	dupIDs := strings.TrimSuffix(strings.Repeat(ad.id+",", 1000), ",")
	wide := make([]string, 100)
	for i := range wide {
		wide[i] = fmt.Sprintf("bnd-wide-%d", i)
	}
	wideIDs := strings.Join(wide, ",")

	// Other clients' requests, sent before and during the stall: they must keep working.
	var seq int
	normal := func(when string) time.Duration {
		t.Helper()
		began := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var mr metricsResp
		if err := getJSON(ctx, c, srv.base, "/metrics?ad_ids="+ad.id+"&interval=5m", testAdminKey, &mr); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		if len(mr.Series) != 1 || len(mr.Series[0].Points) < 12 {
			t.Fatalf("%s: GET /metrics: %d series", when, len(mr.Series))
		}
		seq++
		line, _ := json.Marshal(eventLine{Type: "impression", AdID: ad.id, ImpressionID: fmt.Sprintf("bnd-imp-%d", seq)})
		resp, err := do(ctx, c, "POST", srv.base+"/events", testAdminKey, map[string]string{"Content-Type": "application/x-ndjson"}, append(line, '\n'))
		var br batchResp
		if err != nil || resp.status != 200 || json.Unmarshal(resp.body, &br) != nil || br.Accepted != 1 {
			t.Fatalf("%s: POST /events: %v, %v; want 200 accepting 1", when, resp, err)
		}
		return time.Since(began)
	}
	for i := range 5 {
		normal(fmt.Sprintf("warm-up %d", i))
	}
	time.Sleep(500 * time.Millisecond)
	base := rssBytes(t, pid)

	// Open the stalled connections.
	var conns []stalled
	open := func(kind, req string) {
		conn, err := dialSmallWindow(srv.api)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		t.Cleanup(func() { conn.Close() })
		if _, err := io.WriteString(conn, req); err != nil {
			t.Fatalf("%s: send request: %v", kind, err)
		}
		conns = append(conns, stalled{kind, conn})
	}
	get := func(query string) string {
		return "GET /metrics?" + query + " HTTP/1.1\r\nHost: " + srv.api + "\r\nAuthorization: Bearer " + testAdminKey + "\r\n\r\n"
	}
	opened := time.Now()
	for range boundsDupConns {
		open("dup", get("ad_ids="+dupIDs+rng))
	}
	for range boundsWideConns {
		open("wide", get("ad_ids="+wideIDs+rng))
	}
	for range boundsBodyConns {
		open("body", "POST /events HTTP/1.1\r\nHost: "+srv.api+"\r\nAuthorization: Bearer "+testAdminKey+
			"\r\nContent-Type: application/x-ndjson\r\nContent-Length: "+strconv.Itoa(10<<20)+"\r\n\r\n")
	}

	// A legitimate slow upload runs alongside: 1 MiB in 24 pieces, one every 500 ms, so it
	// takes longer than the progress deadlines that cut the stalled clients. Its events are
	// padded (unknown fields are ignored) so that recording them does not blur the RSS figure.
	slow := make(chan error, 1)
	go func() { slow <- slowUpload(srv.api, ad.id, 24, 500*time.Millisecond) }()

	// While they are open, until the deadlines should have cut them: sample RSS and serve
	// other clients.
	peak := base
	var worst time.Duration
	for time.Since(opened) < boundsCutWait {
		if d := normal("during the stall"); d > worst {
			worst = d
		}
		peak = max(peak, rssBytes(t, pid))
		time.Sleep(200 * time.Millisecond)
	}
	growth := peak - base
	t.Logf("server RSS: %s before, %s peak with %d stalled /metrics and %d stalled /events connections open: +%s (bound +%s)",
		mib(base), mib(peak), boundsDupConns+boundsWideConns, boundsBodyConns, mib(growth), mib(boundsRSSGrowth))
	t.Logf("slowest other client (GET /metrics then POST /events) during the stall: %v", worst)
	if growth > boundsRSSGrowth {
		t.Errorf("RSS grew by %s with stalled clients, more than the bound of %s", mib(growth), mib(boundsRSSGrowth))
	}
	if worst > 2*time.Second {
		t.Errorf("other clients slowed down to %v during the stall", worst)
	}

	// By now the deadlines have cut the stalled connections: reading them finds a response cut
	// short, an error answer, or a closed connection, never one still waiting.
	var mu sync.Mutex
	outcome := map[string]map[string]int{}
	var wg sync.WaitGroup
	for _, s := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := readStalled(s)
			mu.Lock()
			if outcome[s.kind] == nil {
				outcome[s.kind] = map[string]int{}
			}
			outcome[s.kind][res]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	t.Logf("stalled connections read %v after opening: %v", boundsCutWait, outcome)
	for kind, m := range outcome {
		for res, n := range m {
			ok := res == "cut" || kind == "dup" && res == "complete, 1 series" || kind == "body" && res == "400"
			if !ok {
				t.Errorf("%d stalled %s connections: %s", n, kind, res)
			}
		}
	}
	if err := <-slow; err != nil {
		t.Errorf("slow but steady 1 MiB upload: %v", err)
	}
	normal("after the stall")
	t.Logf("server RSS after the stall: %s", mib(rssBytes(t, pid)))
}

// readStalled reads what the server sent on a stalled connection and classifies it: "cut"
// (closed without a complete response), "400" (an error answer that ends the request), or a
// complete response.
func readStalled(s stalled) string {
	_ = s.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(s.conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return classifyReadErr(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return classifyReadErr(err)
	}
	if resp.StatusCode != 200 {
		if resp.StatusCode == 400 && s.kind == "body" {
			return "400"
		}
		return fmt.Sprintf("status %d %.200q", resp.StatusCode, body)
	}
	var mr metricsResp
	if err := json.Unmarshal(body, &mr); err != nil {
		return "cut" // a 200 whose JSON ends early
	}
	return fmt.Sprintf("complete, %d series", len(mr.Series))
}

func classifyReadErr(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "still open: no end of the response 20 s after reading began"
	}
	return "cut"
}

// slowUpload sends a POST /events body of about 1 MiB (events of 8 KiB) in pieces pieces, one
// every gap, and requires a 200 accepting every line.
func slowUpload(addr, adID string, pieces int, gap time.Duration) error {
	var body bytes.Buffer
	lines := 0
	pad := strings.Repeat("p", 8<<10)
	for body.Len() < 1<<20 {
		fmt.Fprintf(&body, `{"type":"add_to_cart","event_id":"bnd-slow-%d","impression_id":"bnd-slow-imp-%d","ad_id":%q,"note":%q}`+"\n", lines, lines, adID, pad)
		lines++
	}
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	hdr := "POST /events HTTP/1.1\r\nHost: " + addr + "\r\nAuthorization: Bearer " + testAdminKey +
		"\r\nContent-Type: application/x-ndjson\r\nContent-Length: " + strconv.Itoa(body.Len()) + "\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(conn, hdr); err != nil {
		return err
	}
	b := body.Bytes()
	per := (len(b) + pieces - 1) / pieces
	for len(b) > 0 {
		n := min(per, len(b))
		if _, err := conn.Write(b[:n]); err != nil {
			return fmt.Errorf("send body: %w", err)
		}
		b = b[n:]
		if len(b) > 0 {
			time.Sleep(gap)
		}
	}
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("read response body: %w", err)
	}
	var br batchResp
	if resp.StatusCode != 200 || json.Unmarshal(rb, &br) != nil || br.Accepted != lines {
		return fmt.Errorf("got %d %.300q; want 200 accepting %d", resp.StatusCode, rb, lines)
	}
	return nil
}
