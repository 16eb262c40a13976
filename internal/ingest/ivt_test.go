package ingest

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/adpulse/adpulse/internal/clicktoken"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/ivt"
)

// Real user agents of the requests below.
const (
	chromeWinUA  = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
	safariIOSUA  = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
	firefoxMacUA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.5; rv:127.0) Gecko/20100101 Firefox/127.0"
	googlebotUA  = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
	twitterUA    = "Twitterbot/1.0"
	facebookUA   = "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)"
)

// doFrom is f.do from the TCP peer peer ("ip:port").
func (f *fixture) doFrom(peer, method, path, body string, hdr ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	r.RemoteAddr = peer
	r.Header.Set("User-Agent", browserUA)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	f.mux.ServeHTTP(w, r)
	return w
}

// reasons returns the reason each impression id's events were logged with.
func (f *fixture) reasons(t *testing.T) map[string][]event.Reason {
	out := map[string][]event.Reason{}
	for _, e := range f.log.events(t) {
		out[e.ImpressionID] = append(out[e.ImpressionID], e.Invalid)
	}
	return out
}

// TestClickGIVT: every rule of general invalid traffic on GET /c: the person is still sent to
// the landing page, and the click is recorded with its reason (so never counted, never
// charged).
func TestClickGIVT(t *testing.T) {
	f := newFixture(t)
	cases := []struct {
		name string
		peer string
		hdr  []string
		want event.Reason
	}{
		{"chrome at home", homeAddr, []string{"User-Agent", chromeWinUA}, event.ReasonNone},
		{"safari on a phone network", "[2600:387:15:1c13::9]:443", []string{"User-Agent", safariIOSUA}, event.ReasonNone},
		{"forwarded-for from an untrusted peer is not believed", homeAddr, []string{"User-Agent", chromeWinUA, "X-Forwarded-For", "3.85.12.7"}, event.ReasonNone},
		{"chrome on aws ec2 us-east-1", "3.85.12.7:40112", []string{"User-Agent", chromeWinUA}, event.ReasonDatacenter},
		{"headless chrome on google cloud", "34.123.45.67:5032", []string{"User-Agent", chromeWinUA}, event.ReasonDatacenter},
		{"firefox on digitalocean", "159.203.45.6:33012", []string{"User-Agent", firefoxMacUA}, event.ReasonDatacenter},
		{"chrome on hetzner ipv6", "[2a01:4f8:c17:1a2b::1]:40000", []string{"User-Agent", chromeWinUA}, event.ReasonDatacenter},
		{"ipv4-mapped azure address", "[::ffff:20.42.10.5]:443", []string{"User-Agent", chromeWinUA}, event.ReasonDatacenter},
		{"documentation address", "203.0.113.50:80", []string{"User-Agent", chromeWinUA}, event.ReasonDatacenter},
		{"chrome speculation rules prefetch", homeAddr, []string{"User-Agent", chromeWinUA, "Sec-Purpose", "prefetch", "Purpose", "prefetch"}, event.ReasonPrefetch},
		{"chrome prerender", homeAddr, []string{"User-Agent", chromeWinUA, "Sec-Purpose", "prefetch;prerender"}, event.ReasonPrefetch},
		{"chrome private prefetch proxy", "34.123.45.67:5032", []string{"User-Agent", chromeWinUA, "Sec-Purpose", "prefetch;anonymous-client-ip"}, event.ReasonPrefetch},
		{"firefox link prefetch", homeAddr, []string{"User-Agent", firefoxMacUA, "Sec-Purpose", "prefetch"}, event.ReasonPrefetch},
		{"old firefox link prefetch", homeAddr, []string{"User-Agent", firefoxMacUA, "X-Moz", "prefetch"}, event.ReasonPrefetch},
		{"safari top sites preview", homeAddr, []string{"User-Agent", safariIOSUA, "X-Purpose", "preview"}, event.ReasonPrefetch},
		{"no user agent", homeAddr, []string{"User-Agent", ""}, event.ReasonBadUserAgent},
		{"placeholder user agent", homeAddr, []string{"User-Agent", "Mozilla/5.0"}, event.ReasonBadUserAgent},
		{"absurdly short user agent", homeAddr, []string{"User-Agent", "x"}, event.ReasonBadUserAgent},
		{"control characters", homeAddr, []string{"User-Agent", "Mozilla/5.0 (X11)\x01\x02"}, event.ReasonBadUserAgent},
		{"overlong user agent", homeAddr, []string{"User-Agent", chromeWinUA + strings.Repeat(" x", 600)}, event.ReasonBadUserAgent},
		{"twitter card fetcher", "199.16.157.181:443", []string{"User-Agent", twitterUA}, event.ReasonPreview},
		{"facebook link preview", "31.13.115.2:443", []string{"User-Agent", facebookUA}, event.ReasonPreview},
		{"googlebot from its own range: bot, not datacenter", "66.249.66.1:443", []string{"User-Agent", googlebotUA}, event.ReasonBot},
		{"curl", homeAddr, []string{"User-Agent", "curl/8.5.0"}, event.ReasonBot},
	}
	for i, tc := range cases {
		imp := fmt.Sprint("imp-givt-", i)
		w := f.doFrom(tc.peer, "GET", "/c/"+f.token(t, clicktoken.Claims{AdID: "ad1", ImpressionID: imp}), "", tc.hdr...)
		if w.Code != http.StatusFound || w.Header().Get("Location") != "https://shop.example/p/1" {
			t.Errorf("%s: %d %q, want a 302 to the landing page", tc.name, w.Code, w.Header().Get("Location"))
		}
		if got := f.reasons(t)[imp]; len(got) != 1 || got[0] != tc.want {
			t.Errorf("%s: logged with reasons %v, want [%v]", tc.name, got, tc.want)
		}
	}
}

// TestPrefetchThenClick: a browser prefetching a click URL is sent on to the landing page
// (a prefetch is how a browser gets ready for the person's click) but not counted; the click
// that follows is the person's, and counts. Were the prefetch to take the impression's click
// key, the real click would be dropped as a duplicate.
func TestPrefetchThenClick(t *testing.T) {
	f := newFixture(t)
	tok := f.token(t, clicktoken.Claims{AdID: "ad1", ImpressionID: "imp-pf", PriceMicros: 300000})
	w := f.do("GET", "/c/"+tok, "", "User-Agent", chromeWinUA, "Sec-Purpose", "prefetch", "Purpose", "prefetch")
	if w.Code != http.StatusFound || w.Header().Get("Location") != "https://shop.example/p/1" || w.Header().Get("Cache-Control") != "no-store" {
		t.Fatalf("prefetch: %d %v", w.Code, w.Header())
	}
	if w := f.do("GET", "/c/"+tok, "", "User-Agent", chromeWinUA); w.Code != http.StatusFound {
		t.Fatalf("click: %d", w.Code)
	}
	evs := f.log.events(t)
	if len(evs) != 2 || evs[0].Invalid != event.ReasonPrefetch || evs[1].Invalid != event.ReasonNone {
		t.Fatalf("logged %+v, want the prefetch invalid and then the click valid", evs)
	}
	if evs[0].Key() == evs[1].Key() {
		t.Fatalf("prefetch and click share key %q", evs[0].Key())
	}
}

// TestGIVTBehindTrustedProxy: behind a load balancer the source is what it forwards, read
// the same way as the rate limits read it.
func TestGIVTBehindTrustedProxy(t *testing.T) {
	f := newFixture(t)
	filter, err := ivt.NewFilter(ivt.Options{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	if err != nil {
		t.Fatal(err)
	}
	f.h.o.Bots = filter
	for i, tc := range []struct {
		xff  string
		want event.Reason
	}{
		{"73.162.14.9", event.ReasonNone},
		{"3.85.12.7", event.ReasonDatacenter},
		{"3.85.12.7, 73.162.14.9", event.ReasonNone},       // a client may write anything on the left
		{"73.162.14.9, 3.85.12.7", event.ReasonDatacenter}, // the load balancer's word is the rightmost
		{"73.162.14.9, 10.0.0.7", event.ReasonNone},        // an inner trusted hop is skipped
	} {
		imp := fmt.Sprint("imp-xff-", i)
		w := f.doFrom("10.1.2.3:41000", "GET", "/c/"+f.token(t, clicktoken.Claims{AdID: "ad1", ImpressionID: imp}), "", "User-Agent", chromeWinUA, "X-Forwarded-For", tc.xff)
		if w.Code != http.StatusFound {
			t.Fatalf("%s: %d", tc.xff, w.Code)
		}
		if got := f.reasons(t)[imp]; len(got) != 1 || got[0] != tc.want {
			t.Errorf("X-Forwarded-For %q: reasons %v, want [%v]", tc.xff, got, tc.want)
		}
	}
}

// TestPixelAndAppClickGIVT: the impression pixel and app clicks get the same verdicts.
func TestPixelAndAppClickGIVT(t *testing.T) {
	f := newFixture(t)
	if w := f.doFrom("52.20.1.9:443", "GET", "/i/"+f.token(t, clicktoken.Claims{AdID: "ad1", ImpressionID: "imp-px"}), "", "User-Agent", chromeWinUA); w.Code != 200 {
		t.Fatalf("pixel: %d", w.Code)
	}
	if w := f.doFrom("52.20.1.9:443", "POST", "/click", `{"ad_id":"ad2","impression_id":"imp-app"}`, "User-Agent", "ShopApp/4.2.1 (iPhone; iOS 17.4; Scale/3.00)"); w.Code != 302 {
		t.Fatalf("app click: %d", w.Code)
	}
	if w := f.doFrom(homeAddr, "POST", "/click", `{"ad_id":"ad2","impression_id":"imp-app2"}`, "User-Agent", "ShopApp/4.2.1 (iPhone; iOS 17.4; Scale/3.00)"); w.Code != 302 {
		t.Fatalf("app click: %d", w.Code)
	}
	got := f.reasons(t)
	for imp, want := range map[string]event.Reason{"imp-px": event.ReasonDatacenter, "imp-app": event.ReasonDatacenter, "imp-app2": event.ReasonNone} {
		if len(got[imp]) != 1 || got[imp][0] != want {
			t.Errorf("%s: reasons %v, want [%v]", imp, got[imp], want)
		}
	}
}

// TestEventsGIVT: POST /events knows only the user agent an ad server reports; an event
// without one is taken as it comes, and interactions are never marked.
func TestEventsGIVT(t *testing.T) {
	f := newFixture(t)
	body := strings.Join([]string{
		`{"type":"click","impression_id":"e-none","ad_id":"ad1"}`,
		`{"type":"click","impression_id":"e-person","ad_id":"ad1","user_agent":"` + safariIOSUA + `"}`,
		`{"type":"click","impression_id":"e-bad","ad_id":"ad1","user_agent":"-"}`,
		`{"type":"impression","impression_id":"e-preview","ad_id":"ad1","user_agent":"` + twitterUA + `"}`,
		`{"type":"click","impression_id":"e-bot","ad_id":"ad1","user_agent":"` + googlebotUA + `"}`,
		`{"type":"add_to_cart","event_id":"e-cart","impression_id":"e-cart","ad_id":"ad1","user_agent":"-"}`,
	}, "\n")
	if w := f.do("POST", "/events", body, "Authorization", "Bearer ingest"); w.Code != 200 || !strings.Contains(w.Body.String(), `"accepted":6`) {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	got := f.reasons(t)
	for imp, want := range map[string]event.Reason{
		"e-none": event.ReasonNone, "e-person": event.ReasonNone, "e-bad": event.ReasonBadUserAgent,
		"e-preview": event.ReasonPreview, "e-bot": event.ReasonBot, "e-cart": event.ReasonNone,
	} {
		if len(got[imp]) != 1 || got[imp][0] != want {
			t.Errorf("%s: reasons %v, want [%v]", imp, got[imp], want)
		}
	}
}
