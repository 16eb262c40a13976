// Package e2e holds black-box tests of the built adpulse binary: they start `adpulse serve` on
// a temporary data dir, drive it over HTTP like clients on the internet and ad servers would,
// kill it with SIGKILL or stop it with SIGTERM, restart it on the same data dir, and finally
// open the event log directly to compare it with a client-side record of what was
// acknowledged.
//
// This file is the harness: building the binary, starting and stopping processes, keeping
// the data dir and the server logs of a failed test, seeds, HTTP helpers and reading the log.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/testseed"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog/locallog"
)

// Environment variables of these tests.
const (
	envBinary = "ADPULSE_E2E_BINARY" // a prebuilt adpulse binary to test instead of building one
)

// browserUA is sent on every public request: bot and tool user agents (curl, Go-http-client)
// are recorded as invalid traffic, under other idempotency keys.
const browserUA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"

var (
	binPath  string // the adpulse binary under test
	buildErr error  // why it could not be built
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if testing.Short() {
		return m.Run() // every test skips; do not pay for a build
	}
	if p := os.Getenv(envBinary); p != "" {
		binPath = p
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "adpulse-e2e-bin-")
	if err != nil {
		buildErr = err
		return m.Run()
	}
	defer os.RemoveAll(dir)
	binPath = filepath.Join(dir, "adpulse")
	cmd := exec.Command("go", "build", "-o", binPath, "github.com/adpulse/adpulse/cmd/adpulse")
	if out, err := cmd.CombinedOutput(); err != nil {
		buildErr = fmt.Errorf("go build ./cmd/adpulse: %v\n%s", err, out)
	}
	return m.Run()
}

// needBinary skips under -short and fails when the binary could not be built.
func needBinary(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e: starts the real binary and kills it; skipped with -short")
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
}

// seed returns the seed of this test: every random choice derives from it, and
// ADPULSE_TEST_SEED replays it (the repository's convention, internal/testseed).
func seed(t *testing.T) uint64 { return testseed.Seed(t) }

func newRand(seed uint64, stream uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed, stream))
}

// env is one test's working directory: the data dir shared by every start of the server, and
// the logs of each start. It is removed when the test passes and kept (and its path and the
// tail of each server log printed) when it fails.
type env struct {
	t       *testing.T
	dir     string
	dataDir string

	mu      sync.Mutex
	servers []*server
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir, err := os.MkdirTemp("", "adpulse-e2e-"+strings.ReplaceAll(t.Name(), "/", "_")+"-")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: dir, dataDir: filepath.Join(dir, "data")}
	t.Cleanup(func() {
		e.mu.Lock()
		servers := e.servers
		e.mu.Unlock()
		for _, s := range servers {
			s.forceKill()
		}
		if !t.Failed() {
			_ = os.RemoveAll(dir)
			return
		}
		for _, s := range servers {
			t.Logf("--- stderr of server start %d (%s), last lines:\n%s", s.n, s.logPath, s.tail(60))
		}
		t.Logf("kept data dir %s and server logs in %s", e.dataDir, dir)
	})
	return e
}

// snapshotLog copies the event log of the data dir, as a stopped or killed server left it,
// into the work dir and returns the copy's path. Reading the copy leaves the data dir exactly
// as the next start will find it (opening a log may truncate a torn tail).
func (e *env) snapshotLog(t *testing.T, name string) string {
	t.Helper()
	src, dst := filepath.Join(e.dataDir, "log"), filepath.Join(e.dir, name)
	err := filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(to, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(to)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
	if err != nil {
		t.Fatalf("copy the event log: %v", err)
	}
	return dst
}

// server is one started `adpulse serve` process.
type server struct {
	n       int
	cmd     *exec.Cmd
	logPath string
	api     string // host:port of the API listener
	ops     string // host:port of the ops listener
	base    string // http://api

	mu    sync.Mutex
	lines []string // stderr, line by line

	readyLine chan [2]string
	done      chan struct{} // closed once the process exited and its stderr was read
	waitErr   error         // set before done is closed
}

var readyRE = regexp.MustCompile(`msg="adpulse ready" listen=(\S+) ops=(\S+)`)

// start starts the server on the env's data dir with free loopback ports and waits until it
// is ready: the ready line was logged (the API listener opens only after recovery) and the
// ops listener's /readyz answers 200.
func (e *env) start(args ...string) *server {
	t := e.t
	t.Helper()
	e.mu.Lock()
	s := &server{n: len(e.servers), readyLine: make(chan [2]string, 1), done: make(chan struct{})}
	e.servers = append(e.servers, s)
	e.mu.Unlock()
	s.logPath = filepath.Join(e.dir, fmt.Sprintf("server-%d.log", s.n))
	logFile, err := os.Create(s.logPath)
	if err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	// The tests send far more from one loopback address than any client may: the rate limits
	// are off unless a test's args turn them on (a later flag wins).
	argv := append([]string{"serve", "--data-dir", e.dataDir, "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--log-format", "text",
		"--rate-limit-ip", "0", "--rate-limit-key", "0"}, args...)
	s.cmd = exec.Command(binPath, argv...)
	s.cmd.Env = cleanEnviron()
	s.cmd.Stdout = pw
	s.cmd.Stderr = pw
	if err := s.cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		logFile.Close()
		t.Fatalf("start %s: %v", binPath, err)
	}
	pw.Close() // the child holds the only write end now: EOF on pr means it exited
	read := make(chan struct{})
	go func() {
		defer close(read)
		defer pr.Close()
		defer logFile.Close()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logFile, line)
			s.mu.Lock()
			s.lines = append(s.lines, line)
			s.mu.Unlock()
			if m := readyRE.FindStringSubmatch(line); m != nil {
				select {
				case s.readyLine <- [2]string{m[1], m[2]}:
				default:
				}
			}
		}
	}()
	go func() {
		err := s.cmd.Wait()
		<-read
		s.waitErr = err
		close(s.done)
	}()

	select {
	case addrs := <-s.readyLine:
		s.api, s.ops = addrs[0], addrs[1]
		s.base = "http://" + s.api
	case <-s.done:
		t.Fatalf("server start %d exited before it was ready: %v\n%s", s.n, s.waitErr, s.tail(40))
	case <-time.After(60 * time.Second):
		t.Fatalf("server start %d not ready after 60s\n%s", s.n, s.tail(40))
	}
	c := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := c.Get("http://" + s.ops + "/readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("server start %d: /readyz not 200 after its ready line (last: %v)", s.n, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s
}

// cleanEnviron is the test's environment without ADPULSE_* variables, so that nothing from the
// caller's shell configures the server under test.
func cleanEnviron() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ADPULSE_") {
			out = append(out, kv)
		}
	}
	return out
}

// running reports whether the process has not exited yet.
func (s *server) running() bool {
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (s *server) kill(t *testing.T) {
	t.Helper()
	if !s.running() {
		t.Fatalf("server start %d exited on its own before the kill: %v\n%s", s.n, s.waitErr, s.tail(40))
	}
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL: %v", err)
	}
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("server start %d still running 30s after SIGKILL", s.n)
	}
}

// stop sends SIGTERM and requires a clean exit (status 0) within the shutdown timeout.
func (s *server) stop(t *testing.T) {
	t.Helper()
	s.signal(t, syscall.SIGTERM)
	s.waitExit(t, 40*time.Second)
}

func (s *server) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if !s.running() {
		t.Fatalf("server start %d exited on its own: %v\n%s", s.n, s.waitErr, s.tail(40))
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

// waitExit waits for the process to exit and requires status 0.
func (s *server) waitExit(t *testing.T, timeout time.Duration) {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(timeout):
		t.Fatalf("server start %d did not exit within %v of SIGTERM\n%s", s.n, timeout, s.tail(40))
	}
	if s.waitErr != nil {
		t.Fatalf("server start %d: exit after SIGTERM: %v (want status 0)\n%s", s.n, s.waitErr, s.tail(40))
	}
}

// forceKill is the cleanup of a server a failed test left running.
func (s *server) forceKill() {
	if s.cmd == nil || s.cmd.Process == nil || !s.running() {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
	}
}

// log returns a copy of the stderr lines so far.
func (s *server) log() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lines...)
}

func (s *server) tail(n int) string {
	l := s.log()
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// recovery is the recovery time the ready line reports.
func (s *server) recovery() string {
	for _, l := range s.log() {
		if readyRE.MatchString(l) {
			if i := strings.Index(l, "recovery="); i >= 0 {
				return strings.Fields(l[i+len("recovery="):])[0]
			}
		}
	}
	return "?"
}

// newClient returns an HTTP client for up to n concurrent requests that never follows
// redirects (a 302 is an answer to check, not a place to go).
func newClient(n int) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConns:          2 * n,
			MaxIdleConnsPerHost:   2 * n,
			IdleConnTimeout:       30 * time.Second,
			ResponseHeaderTimeout: 30 * time.Second,
			DisableCompression:    true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       60 * time.Second,
	}
}

// response is a fully read HTTP response.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r *response) String() string {
	b := r.body
	if len(b) > 300 {
		b = b[:300]
	}
	return fmt.Sprintf("%d %q", r.status, b)
}

// do sends one request and reads the whole response. Public requests carry a browser user
// agent; key, when set, goes in an Authorization header.
func do(ctx context.Context, c *http.Client, method, url, key string, hdr map[string]string, body []byte) (*response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", browserUA)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("read response body: %w", err)
	}
	return &response{status: resp.StatusCode, header: resp.Header, body: b}, nil
}

// mustJSON sends a JSON request that must answer want, and decodes the response into out
// (when not nil).
func mustJSON(t *testing.T, c *http.Client, method, url, key string, in any, want int, out any) *response {
	t.Helper()
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := do(context.Background(), c, method, url, key, map[string]string{"Content-Type": "application/json"}, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	if resp.status != want {
		t.Fatalf("%s %s: got %v, want %d", method, url, resp, want)
	}
	if out != nil {
		if err := json.Unmarshal(resp.body, out); err != nil {
			t.Fatalf("%s %s: decode %q: %v", method, url, resp.body, err)
		}
	}
	return resp
}

// codeStatus is the status each error code of the API contract goes with.
var codeStatus = map[string]int{
	"invalid_argument":  400,
	"unauthenticated":   401,
	"permission_denied": 403,
	"not_found":         404,
	"payload_too_large": 413,
	"rate_limited":      429,
	"unavailable":       503,
	"internal":          500,
}

// errorShape returns why resp is not an error of the contract's shape
// {"error":{"code":"...","message":"..."}} with a code that matches its status, or "".
func errorShape(r *response) string {
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		return fmt.Sprintf("Content-Type %q, want application/json", ct)
	}
	var body struct {
		Error *struct {
			Code    *string `json:"code"`
			Message *string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(r.body, &body); err != nil {
		return fmt.Sprintf("body is not JSON: %v", err)
	}
	if body.Error == nil || body.Error.Code == nil || body.Error.Message == nil {
		return "body lacks error.code or error.message"
	}
	if *body.Error.Message == "" {
		return "empty error.message"
	}
	if st, ok := codeStatus[*body.Error.Code]; !ok || st != r.status {
		return fmt.Sprintf("error.code %q does not go with status %d", *body.Error.Code, r.status)
	}
	return ""
}

// catalog is the advertisers, campaigns and ads a test creates.
type catalog struct {
	ads  []adInfo
	byID map[string]adInfo
}

type adInfo struct {
	id, campaign, advertiser, landing, catalogID string
}

// setupCatalog creates advertisers/campaigns/ads through the API (names derive from prefix).
func setupCatalog(t *testing.T, c *http.Client, base, key, prefix string, advertisers, campaignsPer, adsPer int) *catalog {
	t.Helper()
	cat := &catalog{byID: map[string]adInfo{}}
	for a := range advertisers {
		adv := fmt.Sprintf("%sadv-%d", prefix, a)
		mustJSON(t, c, "PUT", base+"/api/v1/advertisers/"+adv, key, map[string]any{"name": "Advertiser " + adv, "timezone": "UTC"}, 200, nil)
		for k := range campaignsPer {
			cmp := fmt.Sprintf("%s-cmp-%d", adv, k)
			mustJSON(t, c, "PUT", base+"/api/v1/campaigns/"+cmp, key, map[string]any{
				"advertiser_id": adv, "name": "Campaign " + cmp, "status": "active",
				"cpc_bid_micros": 250000, "daily_budget_micros": 0, "total_budget_micros": 0,
			}, 200, nil)
			for j := range adsPer {
				ad := adInfo{
					id:         fmt.Sprintf("%s-ad-%d", cmp, j),
					campaign:   cmp,
					advertiser: adv,
					catalogID:  fmt.Sprintf("cat-%d", j),
				}
				ad.landing = "https://shop.example/p/" + ad.id + "?utm_source=adpulse-e2e"
				mustJSON(t, c, "PUT", base+"/api/v1/ads/"+ad.id, key, map[string]any{
					"campaign_id": cmp, "landing_url": ad.landing, "catalog_id": ad.catalogID,
				}, 200, nil)
				cat.ads = append(cat.ads, ad)
				cat.byID[ad.id] = ad
			}
		}
	}
	return cat
}

// clickToken asks the API for a signed click URL and returns its token (the part after /c/).
func clickToken(ctx context.Context, c *http.Client, base, key, adID, impID, userID string) (string, error) {
	body, _ := json.Marshal(map[string]string{"ad_id": adID, "impression_id": impID, "user_id": userID})
	resp, err := do(ctx, c, "POST", base+"/api/v1/click-urls", key, map[string]string{"Content-Type": "application/json"}, body)
	if err != nil {
		return "", err
	}
	if resp.status != 200 {
		return "", fmt.Errorf("POST /api/v1/click-urls: %v", resp)
	}
	var out struct {
		ClickURL      string `json:"click_url"`
		ImpressionURL string `json:"impression_url"`
	}
	if err := json.Unmarshal(resp.body, &out); err != nil {
		return "", err
	}
	i := strings.LastIndex(out.ClickURL, "/c/")
	j := strings.LastIndex(out.ImpressionURL, "/i/")
	if i < 0 || j < 0 || out.ClickURL[i+3:] != out.ImpressionURL[j+3:] {
		return "", fmt.Errorf("click-urls: unexpected URLs %q and %q", out.ClickURL, out.ImpressionURL)
	}
	return out.ClickURL[i+3:], nil
}

// want is what the log must hold for an idempotency key: the event a client sent.
type want struct {
	typ                    event.Type
	name                   string // interaction name
	ad, imp, eventID, user string
}

func (w want) key() string {
	e := event.Event{Type: w.typ, Name: w.name, ImpressionID: w.imp, EventID: w.eventID}
	return e.Key()
}

// logEntry is one event read back from the log.
type logEntry struct {
	ev        event.Event
	partition int
	offset    int64
}

// readLog opens an event log directory (of a stopped server, or a copy) and returns every
// event in it by key.
func readLog(t *testing.T, dir string) (byKey map[string][]logEntry, total int) {
	t.Helper()
	l, err := locallog.Open(locallog.Options{Dir: dir, Retention: -1})
	if err != nil {
		t.Fatalf("open event log: %v", err)
	}
	defer l.Close()
	ctx := context.Background()
	byKey = map[string][]logEntry{}
	for p := range l.Partitions() {
		start, end, err := l.Offsets(ctx, p)
		if err != nil {
			t.Fatalf("partition %d offsets: %v", p, err)
		}
		off := start
		for off < end {
			msgs, err := l.Read(ctx, p, off, 1<<20)
			if err != nil {
				t.Fatalf("read partition %d at %d: %v", p, off, err)
			}
			if len(msgs) == 0 {
				t.Fatalf("partition %d: read at %d returned nothing before the end offset %d", p, off, end)
			}
			for _, m := range msgs {
				if m.Offset != off {
					t.Fatalf("partition %d: offset %d where %d was expected", p, m.Offset, off)
				}
				var e event.Event
				if err := e.Decode(m.Value); err != nil {
					t.Fatalf("partition %d offset %d: decode: %v", p, m.Offset, err)
				}
				byKey[e.Key()] = append(byKey[e.Key()], logEntry{ev: e, partition: p, offset: m.Offset})
				total++
				off++
			}
		}
	}
	return byKey, total
}

// checkEvent reports how a logged event differs from what was sent under its key.
func checkEvent(e *event.Event, w want, cat *catalog) string {
	ad := cat.byID[w.ad]
	var diffs []string
	cmp := func(field, got, want string) {
		if got != want {
			diffs = append(diffs, fmt.Sprintf("%s %q, want %q", field, got, want))
		}
	}
	if e.Type != w.typ {
		diffs = append(diffs, fmt.Sprintf("type %v, want %v", e.Type, w.typ))
	}
	if e.Invalid != event.ReasonNone {
		diffs = append(diffs, fmt.Sprintf("marked invalid (%v)", e.Invalid))
	}
	cmp("name", e.Name, w.name)
	cmp("ad_id", e.AdID, w.ad)
	cmp("impression_id", e.ImpressionID, w.imp)
	cmp("event_id", e.EventID, w.eventID)
	cmp("user_id", e.UserID, w.user)
	cmp("campaign_id", e.CampaignID, ad.campaign)
	cmp("advertiser_id", e.AdvertiserID, ad.advertiser)
	cmp("catalog_id", e.CatalogID, ad.catalogID)
	return strings.Join(diffs, "; ")
}

// problems collects failures found by worker goroutines (which must not call t.Fatal), and
// keeps the first few for the report.
type problems struct {
	mu    sync.Mutex
	n     int
	first []string
}

func (p *problems) add(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	if len(p.first) < 25 {
		p.first = append(p.first, fmt.Sprintf(format, args...))
	}
}

func (p *problems) check(t *testing.T, what string) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n > 0 {
		t.Fatalf("%s: %d problems, first ones:\n  %s", what, p.n, strings.Join(p.first, "\n  "))
	}
}

// isTransportErr reports whether err is a failed exchange (refused, reset, EOF, timeout or
// cancellation), as opposed to a mistake in building the request.
func isTransportErr(err error) bool {
	var ne net.Error
	return err != nil && (errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "connection"))
}
