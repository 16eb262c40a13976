package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/clicktoken"
	"github.com/adpulse/adpulse/internal/dedup"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/httpapi"
	"github.com/adpulse/adpulse/internal/ivt"
)

// memLog is an in-memory eventlog.Log whose appends can be made to fail.
type memLog struct {
	mu    sync.Mutex
	parts [][]eventlog.Message
	fail  atomic.Bool
}

func newMemLog(partitions int) *memLog { return &memLog{parts: make([][]eventlog.Message, partitions)} }

func (l *memLog) Partitions() int { return len(l.parts) }
func (l *memLog) Append(_ context.Context, msgs []eventlog.Message) error {
	if l.fail.Load() {
		return eventlog.NotAppended(errors.New("disk on fire"))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range msgs {
		p := msgs[i].Partition
		msgs[i].Offset = int64(len(l.parts[p]))
		msgs[i].Time = time.Now()
		m := msgs[i]
		m.Value = append([]byte(nil), m.Value...)
		l.parts[p] = append(l.parts[p], m)
	}
	return nil
}
func (l *memLog) Read(_ context.Context, p int, off int64, _ int) ([]eventlog.Message, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if off >= int64(len(l.parts[p])) {
		return nil, nil
	}
	return append([]eventlog.Message(nil), l.parts[p][off:]...), nil
}
func (l *memLog) Offsets(_ context.Context, p int) (int64, int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return 0, int64(len(l.parts[p])), nil
}
func (l *memLog) OffsetForTime(context.Context, int, time.Time) (int64, error) { return 0, nil }
func (l *memLog) Close() error                                                 { return nil }

// events decodes everything in the log.
func (l *memLog) events(t *testing.T) []event.Event {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []event.Event
	for _, p := range l.parts {
		for _, m := range p {
			var e event.Event
			if err := e.Decode(m.Value); err != nil {
				t.Fatal(err)
			}
			out = append(out, e)
		}
	}
	return out
}

type fakeAds map[string]Ad

func (f fakeAds) LookupAd(id string) (Ad, bool) { a, ok := f[id]; return a, ok }

const browserUA = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"

// homeAddr is the peer of test requests that do not choose one: an address of a residential
// broadband network (Comcast). httptest's own default, 192.0.2.1, is a documentation address,
// which the IVT rules rightly take for traffic no person sent.
const homeAddr = "73.162.14.9:51234"

type fixture struct {
	log    *memLog
	keys   *clicktoken.Keyring
	h      *Handlers
	mux    http.Handler
	now    time.Time
	intake *Intake
}

func newFixture(t testing.TB) *fixture {
	kr, err := clicktoken.ParseKeyring("k1:0123456789abcdef0123456789abcdef")
	if err != nil {
		t.Fatal(err)
	}
	bots, err := ivt.NewFilter(ivt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{log: newMemLog(4), keys: kr, now: time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)}
	f.intake = NewIntake(IntakeOptions{Log: f.log, Dedup: dedup.NewMemory(24 * time.Hour), InFlightWait: 200 * time.Millisecond, Now: func() time.Time { return f.now }})
	f.h = NewHandlers(Options{
		Intake: f.intake, Tokens: kr, Bots: bots, PublicURL: "https://t.example",
		Ads: fakeAds{
			"ad1": {CampaignID: "c1", AdvertiserID: "a1", LandingURL: "https://shop.example/p/1", CatalogID: "cat1"},
			"ad2": {CampaignID: "c2", AdvertiserID: "a2", LandingURL: "https://shop.example/p/2"},
		},
		ClickTTL: time.Hour,
		Limits:   BatchLimits{MaxEvents: 100, MaxLateness: 24 * time.Hour, MaxClockSkew: 5 * time.Minute},
		MaxBody:  1 << 16,
		Now:      func() time.Time { return f.now },
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	mux := http.NewServeMux()
	f.h.Register(mux)
	// Tests pick their principal with a header; the real server authenticates keys.
	f.mux = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.RemoteAddr == "192.0.2.1:1234" { // httptest.NewRequest's
			r.RemoteAddr = homeAddr
		}
		p := httpapi.Principal{}
		switch r.Header.Get("Authorization") {
		case "Bearer admin":
			p.Role = httpapi.RoleAdmin
		case "Bearer ingest":
			p.Role = httpapi.RoleIngest
		case "Bearer adv":
			p = httpapi.Principal{Role: httpapi.RoleAdvertiser, AdvertiserID: "a1"}
		}
		mux.ServeHTTP(w, r.WithContext(httpapi.WithPrincipal(r.Context(), p)))
	})
	return f
}

func (f *fixture) token(t testing.TB, c clicktoken.Claims) string {
	if c.IssuedAt.IsZero() {
		c.IssuedAt = f.now
	}
	s, err := f.keys.Sign(c)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (f *fixture) do(method, path, body string, hdr ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	r.Header.Set("User-Agent", browserUA)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	f.mux.ServeHTTP(w, r)
	return w
}

func wantError(t *testing.T, w *httptest.ResponseRecorder, status int, code, field string) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status %d, want %d; body %s", w.Code, status, w.Body)
	}
	var body struct {
		Error struct{ Code, Message string }
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatalf("error body %q: %v", w.Body, err)
	}
	if body.Error.Code != code || !strings.Contains(body.Error.Message, field) {
		t.Fatalf("error %+v, want code %s naming %q", body.Error, code, field)
	}
	if loc := w.Header().Get("Location"); loc != "" {
		t.Fatalf("error response carries Location %q", loc)
	}
}

func TestClickRedirect(t *testing.T) {
	f := newFixture(t)
	tok := f.token(t, clicktoken.Claims{AdID: "ad1", ImpressionID: "imp1", UserID: "u1", PriceMicros: 400000})
	for i := 0; i < 3; i++ { // repeats redirect again but are not recorded again
		w := f.do("GET", "/c/"+tok, "")
		if w.Code != http.StatusFound || w.Header().Get("Location") != "https://shop.example/p/1" {
			t.Fatalf("got %d %q", w.Code, w.Header().Get("Location"))
		}
		if cc := w.Header().Get("Cache-Control"); cc != "no-store" {
			t.Fatalf("Cache-Control %q", cc)
		}
	}
	for _, path := range []string{"/c/", "/i/"} {
		if w := f.do("HEAD", path+f.token(t, clicktoken.Claims{AdID: "ad1", ImpressionID: "head"}), ""); w.Code >= 400 {
			t.Fatalf("HEAD %s: %d", path, w.Code)
		}
	}
	evs := f.log.events(t)
	if len(evs) != 1 {
		t.Fatalf("%d events in the log, want 1 (HEAD records nothing)", len(evs))
	}
	want := event.Event{Type: event.TypeClick, AdID: "ad1", CampaignID: "c1", AdvertiserID: "a1", CatalogID: "cat1",
		ImpressionID: "imp1", UserID: "u1", PriceMicros: 400000, Time: f.now.UnixMicro(), RecvTime: f.now.UnixMicro(),
		SourceIP: "73.162.14.9", DeviceID: Fingerprint(browserUA, "", "73.162.14.9")}
	if evs[0] != want {
		t.Fatalf("logged %+v\nwant %+v", evs[0], want)
	}
}

func TestClickInvalidTraffic(t *testing.T) {
	f := newFixture(t)
	expired := f.token(t, clicktoken.Claims{AdID: "ad1", ImpressionID: "old", IssuedAt: f.now.Add(-61 * time.Minute)})
	if w := f.do("GET", "/c/"+expired, ""); w.Code != http.StatusFound {
		t.Fatalf("expired click: %d, want 302", w.Code)
	}
	fresh := f.token(t, clicktoken.Claims{AdID: "ad1", ImpressionID: "imp2"})
	// A chat app unfurling the link first must not use up the person's click.
	if w := f.do("GET", "/c/"+fresh, "", "User-Agent", "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"); w.Code != http.StatusFound {
		t.Fatalf("preview click: %d", w.Code)
	}
	if w := f.do("GET", "/c/"+fresh, "", "User-Agent", "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"); w.Code != http.StatusFound {
		t.Fatalf("bot click: %d", w.Code)
	}
	if w := f.do("GET", "/c/"+fresh, ""); w.Code != http.StatusFound {
		t.Fatalf("person click: %d", w.Code)
	}
	got := map[event.Reason]int{}
	for _, e := range f.log.events(t) {
		got[e.Invalid]++
	}
	if got[event.ReasonExpired] != 1 || got[event.ReasonPreview] != 1 || got[event.ReasonBot] != 1 || got[event.ReasonNone] != 1 {
		t.Fatalf("reasons %v", got)
	}
}

func TestClickBadTokens(t *testing.T) {
	f := newFixture(t)
	tok := f.token(t, clicktoken.Claims{AdID: "ad1", ImpressionID: "imp1"})
	for _, bad := range []string{"x", tok[:len(tok)-1], tok + "A", strings.ToUpper(tok), "%2F%2Fevil.com"} {
		wantError(t, f.do("GET", "/c/"+bad, ""), 400, httpapi.CodeInvalidArgument, "token")
		wantError(t, f.do("GET", "/i/"+bad, ""), 400, httpapi.CodeInvalidArgument, "token")
	}
	other, _ := clicktoken.ParseKeyring("k1:another-secret-another-secret!!")
	forged, _ := other.Sign(clicktoken.Claims{AdID: "ad1", ImpressionID: "imp1", IssuedAt: f.now})
	wantError(t, f.do("GET", "/c/"+forged, ""), 400, httpapi.CodeInvalidArgument, "token")
	unknown := f.token(t, clicktoken.Claims{AdID: "nope", ImpressionID: "imp1"})
	wantError(t, f.do("GET", "/c/"+unknown, ""), 404, httpapi.CodeNotFound, "ad_id")
	if n := len(f.log.events(t)); n != 0 {
		t.Fatalf("%d events logged from bad tokens", n)
	}
}

func TestImpressionPixel(t *testing.T) {
	f := newFixture(t)
	tok := f.token(t, clicktoken.Claims{AdID: "ad1", ImpressionID: "imp1"})
	for i := 0; i < 2; i++ {
		w := f.do("GET", "/i/"+tok, "")
		if w.Code != 200 || w.Header().Get("Content-Type") != "image/gif" || w.Header().Get("Cache-Control") != "no-store" || !strings.HasPrefix(w.Body.String(), "GIF89a") {
			t.Fatalf("pixel: %d %v", w.Code, w.Header())
		}
	}
	evs := f.log.events(t)
	if len(evs) != 1 || evs[0].Type != event.TypeImpression {
		t.Fatalf("logged %+v", evs)
	}
}

func TestAppClick(t *testing.T) {
	f := newFixture(t)
	w := f.do("POST", "/click", `{"ad_id":"ad2","impression_id":"imp-9","user_id":"u1"}`)
	if w.Code != 302 || w.Header().Get("Location") != "https://shop.example/p/2" {
		t.Fatalf("got %d %v", w.Code, w.Header())
	}
	w = f.do("POST", "/click", `{"ad_id":"ad2"}`, "Idempotency-Key", "imp-9")
	if w.Code != 302 {
		t.Fatalf("retry by header: %d", w.Code)
	}
	if n := len(f.log.events(t)); n != 1 {
		t.Fatalf("%d events, want 1", n)
	}
	wantError(t, f.do("POST", "/click", `{"ad_id":"ad2"}`), 400, httpapi.CodeInvalidArgument, "impression_id")
	wantError(t, f.do("POST", "/click", `{"ad_id":"zz","impression_id":"i"}`), 404, httpapi.CodeNotFound, "ad_id")
	wantError(t, f.do("POST", "/click", `{"ad_id":"ad2",`), 400, httpapi.CodeInvalidArgument, "body")
	wantError(t, f.do("POST", "/click", `{"ad_id":"a d","impression_id":"i"}`), 400, httpapi.CodeInvalidArgument, "ad_id")
	wantError(t, f.do("POST", "/click", `{"ad_id":"ad2","impression_id":"i","x":1}`), 400, httpapi.CodeInvalidArgument, "x")
	wantError(t, f.do("POST", "/click", `{"ad_id":1,"impression_id":"i"}`), 400, httpapi.CodeInvalidArgument, "ad_id")
}

func TestEvents(t *testing.T) {
	f := newFixture(t)
	body := strings.Join([]string{
		`{"type":"impression","impression_id":"imp-9","ad_id":"ad1","user_id":"u1","catalog_id":"cat7","event_time":"2026-11-21T09:59:03Z"}`,
		`{"type":"click","impression_id":"imp-9","ad_id":"ad1","event_time":1795255140}`,
		``,
		`{"type":"add_to_cart","event_id":"e-77","impression_id":"imp-9","ad_id":"ad1"}`,
		`{"type":"click","impression_id":"imp-9","ad_id":"ad1"}`,
		`{"type":"Click","impression_id":"imp-10","ad_id":"ad1"}`,
		`{"type":"click","impression_id":"imp-10","ad_id":"nope"}`,
		`{"type":"click","impression_id":"imp-11","ad_id":"ad1","event_time":"2026-11-20T09:00:00Z"}`,
		`{"type":"click","impression_id":"imp-12","ad_id":"ad1","event_time":"2026-11-21T10:06:00Z"}`,
		`not json`,
		`{"type":"click","ad_id":"ad1"}`,
		`{"type":"click","impression_id":"imp-13","ad_id":"ad1","user_id":7}`,
		`{"type":"order","impression_id":"imp-9","ad_id":"ad1","cpc_micros":5}`,
		`[1]`,
	}, "\n")
	w := f.do("POST", "/events", body, "Authorization", "Bearer ingest")
	if w.Code != 200 {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	var resp batchResponse
	if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil {
		t.Fatal(err)
	}
	wantLines := map[int]string{6: "type", 7: "ad_id", 8: "event_time", 9: "event_time", 10: "invalid JSON", 11: "impression_id", 12: "user_id", 13: "cpc_micros", 14: "object"}
	if resp.Accepted != 3 || resp.Duplicates != 1 || resp.Rejected != len(wantLines) {
		t.Fatalf("response %+v", resp)
	}
	for _, e := range resp.Errors {
		if !strings.Contains(e.Message, wantLines[e.Line]) || wantLines[e.Line] == "" {
			t.Errorf("line %d: %+v, want it to name %q", e.Line, e, wantLines[e.Line])
		}
	}
	evs := f.log.events(t)
	if len(evs) != 3 {
		t.Fatalf("%d events logged", len(evs))
	}
	// A resend of the same batch is all duplicates.
	w = f.do("POST", "/events", body, "Authorization", "Bearer admin")
	_ = json.Unmarshal(w.Body.Bytes(), &resp)
	if resp.Accepted != 0 || resp.Duplicates != 4 {
		t.Fatalf("resend: %+v", resp)
	}
	// A JSON array works the same way.
	w = f.do("POST", "/events", `[{"type":"impression","impression_id":"a1","ad_id":"ad2"},{"type":"click","ad_id":"ad2"}]`, "Authorization", "Bearer ingest")
	_ = json.Unmarshal(w.Body.Bytes(), &resp)
	if resp.Accepted != 1 || resp.Rejected != 1 || resp.Errors[0].Line != 2 {
		t.Fatalf("array: %s", w.Body)
	}
}

func TestEventsLimitsAndAuth(t *testing.T) {
	f := newFixture(t)
	line := `{"type":"impression","impression_id":"imp-X","ad_id":"ad1"}` + "\n"
	wantError(t, f.do("POST", "/events", line), 401, httpapi.CodeUnauthenticated, "authorization")
	wantError(t, f.do("POST", "/events", line, "Authorization", "Bearer adv"), 403, httpapi.CodePermissionDenied, "authorization")
	big := strings.Repeat(line, 2000)
	wantError(t, f.do("POST", "/events", big, "Authorization", "Bearer ingest"), 413, httpapi.CodePayloadTooLarge, "body")
	var many strings.Builder
	for i := 0; i < 101; i++ {
		fmt.Fprintf(&many, `{"type":"impression","impression_id":"i%d","ad_id":"ad1"}`+"\n", i)
	}
	wantError(t, f.do("POST", "/events", many.String(), "Authorization", "Bearer ingest"), 400, httpapi.CodeInvalidArgument, "body")
	wantError(t, f.do("POST", "/events", "[1,", "Authorization", "Bearer ingest"), 400, httpapi.CodeInvalidArgument, "body")
	if n := len(f.log.events(t)); n != 0 {
		t.Fatalf("%d events logged from rejected requests", n)
	}
}

// TestLogFailureAcknowledgesNothing: when the log cannot make events durable, the request
// fails and its keys are released, so the client's retry is recorded once the log is back.
func TestLogFailureAcknowledgesNothing(t *testing.T) {
	f := newFixture(t)
	tok := f.token(t, clicktoken.Claims{AdID: "ad1", ImpressionID: "imp1"})
	f.log.fail.Store(true)
	wantError(t, f.do("GET", "/c/"+tok, ""), 503, httpapi.CodeUnavailable, "retry")
	w := f.do("POST", "/events", `{"type":"impression","impression_id":"imp1","ad_id":"ad1"}`, "Authorization", "Bearer ingest")
	wantError(t, w, 503, httpapi.CodeUnavailable, "nothing was accepted")
	f.log.fail.Store(false)
	if w := f.do("GET", "/c/"+tok, ""); w.Code != 302 {
		t.Fatalf("retry: %d", w.Code)
	}
	if n := len(f.log.events(t)); n != 1 {
		t.Fatalf("%d events after retry, want 1", n)
	}
}

// TestConcurrentDuplicateClicks: many simultaneous copies of one click, one log record.
func TestConcurrentDuplicateClicks(t *testing.T) {
	f := newFixture(t)
	var wg sync.WaitGroup
	for imp := 0; imp < 20; imp++ {
		tok := f.token(t, clicktoken.Claims{AdID: "ad1", ImpressionID: fmt.Sprint("imp", imp)})
		for i := 0; i < 10; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if w := f.do("GET", "/c/"+tok, ""); w.Code != 302 {
					t.Errorf("status %d", w.Code)
				}
			}()
		}
	}
	wg.Wait()
	if n := len(f.log.events(t)); n != 20 {
		t.Fatalf("%d events, want 20", n)
	}
}

func TestRestoreKeys(t *testing.T) {
	f := newFixture(t)
	tok := f.token(t, clicktoken.Claims{AdID: "ad1", ImpressionID: "imp1"})
	f.do("GET", "/c/"+tok, "")
	// A new process: empty dedup store rebuilt from the same log.
	mem := dedup.NewMemory(24 * time.Hour)
	n, err := RestoreKeys(context.Background(), f.log, mem, 24*time.Hour, f.now, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil || n != 1 {
		t.Fatalf("restored %d, %v", n, err)
	}
	f.intake.keys = mem
	f.do("GET", "/c/"+tok, "")
	if n := len(f.log.events(t)); n != 1 {
		t.Fatalf("%d events after restart and retry, want 1", n)
	}
}

func TestClickURLs(t *testing.T) {
	f := newFixture(t)
	w := f.do("POST", "/api/v1/click-urls", `{"ad_id":"ad1","impression_id":"imp-1","user_id":"u1","cpc_micros":400000}`, "Authorization", "Bearer admin")
	if w.Code != 200 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	var resp struct {
		ClickURL      string `json:"click_url"`
		ImpressionURL string `json:"impression_url"`
		ExpiresAt     string `json:"expires_at"`
	}
	_ = json.Unmarshal(w.Body.Bytes(), &resp)
	tok, ok := strings.CutPrefix(resp.ClickURL, "https://t.example/c/")
	if !ok || resp.ImpressionURL != "https://t.example/i/"+tok || resp.ExpiresAt != "2026-11-21T11:00:00Z" {
		t.Fatalf("response %s", w.Body)
	}
	c, err := f.keys.Verify(tok)
	if err != nil || c.PriceMicros != 400000 || c.UserID != "u1" {
		t.Fatalf("token %+v %v", c, err)
	}
	wantError(t, f.do("POST", "/api/v1/click-urls", `{"ad_id":"ad1","impression_id":"i"}`), 401, httpapi.CodeUnauthenticated, "authorization")
	wantError(t, f.do("POST", "/api/v1/click-urls", `{"ad_id":"ad1","impression_id":"i"}`, "Authorization", "Bearer ingest"), 403, httpapi.CodePermissionDenied, "authorization")
	wantError(t, f.do("POST", "/api/v1/click-urls", `{"ad_id":"nope","impression_id":"i"}`, "Authorization", "Bearer admin"), 404, httpapi.CodeNotFound, "ad_id")
	wantError(t, f.do("POST", "/api/v1/click-urls", `{"ad_id":"ad1"}`, "Authorization", "Bearer admin"), 400, httpapi.CodeInvalidArgument, "impression_id")
	wantError(t, f.do("POST", "/api/v1/click-urls", `{"ad_id":"ad1","impression_id":"i","cpc_micros":-1}`, "Authorization", "Bearer admin"), 400, httpapi.CodeInvalidArgument, "cpc_micros")
}

func FuzzParseBatch(f *testing.F) {
	f.Add([]byte(`{"type":"impression","impression_id":"imp-9","ad_id":"123","event_time":"2026-11-21T10:00:03Z"}` + "\n" + `{"type":"click","impression_id":"imp-9","ad_id":"123","event_time":1763719205}`))
	f.Add([]byte(`[{"type":"add_to_cart","event_id":"e-77","ad_id":"1"}]`))
	f.Add([]byte("\n\n{\"type\":null}\n["))
	now := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	lim := BatchLimits{MaxEvents: 1000, MaxLateness: 24 * time.Hour, MaxClockSkew: 5 * time.Minute}
	f.Fuzz(func(t *testing.T, body []byte) {
		var bp batchParser
		lines, err := bp.parse(body, now, lim, nil)
		if err != nil {
			return
		}
		for _, pl := range lines {
			if pl.Err != nil {
				if pl.Err.Line < 1 || pl.Err.Message == "" {
					t.Fatalf("bad line error %+v", pl.Err)
				}
				continue
			}
			// Whatever is accepted is a valid event inside the time window.
			if err := pl.Event.Validate(); err != nil {
				t.Fatalf("accepted an invalid event %+v: %v", pl.Event, err)
			}
			if pl.Event.Time < now.Add(-lim.MaxLateness).UnixMicro() || pl.Event.Time > now.Add(lim.MaxClockSkew).UnixMicro() {
				t.Fatalf("accepted event time %d outside the window", pl.Event.Time)
			}
		}
	})
}
