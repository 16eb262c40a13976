package ivt

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/adpulse/adpulse/internal/event"
)

// People's user agents: desktop and mobile browsers, in-app browsers (whose apps also run
// link-preview fetchers under other names) and apps' HTTP clients.
var people = append(append([]string(nil), browsers...),
	"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 Edg/126.0.2592.68",
	"Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/470.0.0.39.109;FBBV/612345678;FBDV/iPhone15,2;FBMD/iPhone;FBSN/iOS;FBSV/17.5;FBSS/3;FBCR/;FBID/phone;FBLC/en_US;FBOP/80]",
	"Mozilla/5.0 (Linux; Android 14; SM-S918B Build/UP1A.231005.007; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/125.0.6422.165 Mobile Safari/537.36 Instagram 335.0.0.39.93 Android (34/14; 480dpi; 1080x2340; samsung; SM-S918B; dm3q; qcom; en_US; 605596474)",
	"Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Twitter for iPhone/10.48",
	"Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.0.0 Mobile Safari/537.36 LinkedInApp/9.30.3960",
	"Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP2A.240605.024; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/125.0.6422.165 Mobile Safari/537.36 Telegram-Android/10.14.0 (Google Pixel 8; Android 14; SDK 34; HIGH)",
	"Dalvik/2.1.0 (Linux; U; Android 14; Pixel 8 Build/UD1A.230803.041)",
	"ShopApp/4.2.1 (iPhone; iOS 17.4; Scale/3.00)",
	"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 OPR/111.0.0.0 (Ünïcödé-Edition)",
)

func TestBadUserAgent(t *testing.T) {
	for _, ua := range people {
		if BadUserAgent(ua) {
			t.Errorf("person's user agent taken for a bad one: %s", ua)
		}
	}
	for _, ua := range []string{
		"", " ", "\t \t", "-", "x", "null", "None", "Java", "abc/1.0",
		"undefined", "UNDEFINED", " Mozilla/5.0 ", "mozilla/4.0", "(unknown)", "User-Agent",
		"Mozilla/5.0 (Windows NT 10.0)\x00", "Mozilla/5.0\r\nX-Injected: 1", "Mozilla/5.0 (X11; Linux x86_64)\x7f",
		"Mozilla/5.0 (X11; \xff\xfe Linux)",
		browsers[0] + strings.Repeat(" padding", 128),
	} {
		if !BadUserAgent(ua) {
			t.Errorf("bad user agent not detected: %q", ua)
		}
	}
	// The bounds themselves.
	if BadUserAgent(strings.Repeat("a", MinUserAgentLen)) || !BadUserAgent(strings.Repeat("a", MinUserAgentLen-1)) {
		t.Error("MinUserAgentLen is not the shortest accepted length")
	}
	if BadUserAgent(strings.Repeat("a", MaxUserAgentLen)) || !BadUserAgent(strings.Repeat("a", MaxUserAgentLen+1)) {
		t.Error("MaxUserAgentLen is not the longest accepted length")
	}
}

func TestPreviewAgent(t *testing.T) {
	for _, ua := range people {
		if PreviewAgent(ua) {
			t.Errorf("person's user agent taken for a link preview: %s", ua)
		}
	}
	for _, ua := range []string{
		"facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
		"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_1) AppleWebKit/601.2.4 (KHTML, like Gecko) Version/9.0.1 Safari/601.2.4 facebookexternalhit/1.1 Facebot Twitterbot/1.0", // iMessage
		"Twitterbot/1.0",
		"Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
		"Slack-ImgProxy (+https://api.slack.com/robots)",
		"Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
		"TelegramBot (like TwitterBot)",
		"WhatsApp/2.23.20.0 A",
		"LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
		"Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5 skype-url-preview@microsoft.com",
		"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/58.0.3029.110 Safari/537.36 MicrosoftPreview/2.0 +https://aka.ms/MicrosoftPreview",
		"Mozilla/5.0 (compatible; redditbot/1.0; +http://www.reddit.com/feedback)",
		"Mozilla/5.0 (compatible; Embedly/0.2; +http://support.embed.ly/)",
		"Iframely/1.3.1 (+https://iframely.com/docs/about)",
		"Mozilla/5.0 (compatible; vkShare; +http://vk.com/dev/Share)",
		"http.rb/5.1.1 (Mastodon/4.2.10; +https://mastodon.social/)",
		"Mozilla/5.0 (compatible; Bluesky Cardyb/1.1; +mailto:support@bsky.app)",
		"facebookexternalhit/1.1; kakaotalk-scrap/1.0; +https://devtalk.kakao.com/public/faq",
		"Mozilla/5.0 (compatible; Snap URL Preview Service; bot; snapchat; https://developers.snap.com/robots)",
	} {
		if !PreviewAgent(ua) {
			t.Errorf("link preview not detected: %s", ua)
		}
	}
}

func TestPrefetch(t *testing.T) {
	for _, tc := range []struct {
		name string
		hdr  []string
		want bool
	}{
		{"a click", []string{"Sec-Fetch-Mode", "navigate", "Sec-Fetch-User", "?1", "Sec-Fetch-Dest", "document"}, false},
		{"chrome speculation rules prefetch", []string{"Sec-Purpose", "prefetch", "Purpose", "prefetch", "Sec-Fetch-Dest", "document"}, true},
		{"chrome prerender", []string{"Sec-Purpose", "prefetch;prerender", "Purpose", "prefetch"}, true},
		{"chrome private prefetch proxy", []string{"Sec-Purpose", "prefetch;anonymous-client-ip"}, true},
		{"chrome link rel=prefetch", []string{"Purpose", "prefetch"}, true},
		{"firefox link rel=prefetch", []string{"Sec-Purpose", "prefetch", "Sec-Fetch-Dest", "empty"}, true},
		{"old firefox", []string{"X-Moz", "prefetch"}, true},
		{"safari top sites", []string{"X-Purpose", "preview"}, true},
		{"webkit link rel=prefetch", []string{"Purpose", "Prefetch"}, true},
		{"spaces and case", []string{"Sec-Purpose", " PREFETCH ; prerender "}, true},
		{"a list", []string{"Sec-Purpose", "unknown, prefetch"}, true},
		{"a parameter with a value", []string{"Sec-Purpose", "foo;prefetch=?1"}, true},
		{"another purpose", []string{"Sec-Purpose", "something-else"}, false},
		{"a token that only contains the word", []string{"Purpose", "noprefetch"}, false},
		{"prefetch in an unrelated header", []string{"X-Requested-With", "prefetch"}, false},
		{"empty purpose", []string{"Sec-Purpose", ""}, false},
	} {
		h := http.Header{}
		for i := 0; i+1 < len(tc.hdr); i += 2 {
			h.Add(tc.hdr[i], tc.hdr[i+1])
		}
		if got := Prefetch(h); got != tc.want {
			t.Errorf("%s: Prefetch = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestFilter(t *testing.T) {
	f, err := NewFilter(Options{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}})
	if err != nil {
		t.Fatal(err)
	}
	chrome := browsers[0]
	for _, tc := range []struct {
		name string
		peer string
		hdr  []string
		want event.Reason
	}{
		{"person", "73.162.14.9:50000", []string{"User-Agent", chrome}, event.ReasonNone},
		{"person behind the load balancer", "10.0.3.4:50000", []string{"User-Agent", chrome, "X-Forwarded-For", "73.162.14.9"}, event.ReasonNone},
		{"aws behind the load balancer", "10.0.3.4:50000", []string{"User-Agent", chrome, "X-Forwarded-For", "3.85.12.7"}, event.ReasonDatacenter},
		{"aws behind an ipv6 load balancer", "[fd00::7]:50000", []string{"User-Agent", chrome, "X-Forwarded-For", "2600:1f18:4a3:6a00::1"}, event.ReasonDatacenter},
		{"aws claiming to be at home", "3.85.12.7:50000", []string{"User-Agent", chrome, "X-Forwarded-For", "73.162.14.9"}, event.ReasonDatacenter},
		{"oracle", "129.213.1.2:50000", []string{"User-Agent", chrome}, event.ReasonDatacenter},
		{"bad peer address", "@", []string{"User-Agent", chrome}, event.ReasonNone},
		{"prefetch from aws with no user agent", "3.85.12.7:50000", []string{"Sec-Purpose", "prefetch"}, event.ReasonPrefetch},
		{"no user agent from aws", "3.85.12.7:50000", nil, event.ReasonBadUserAgent},
		{"preview bot from aws", "3.85.12.7:50000", []string{"User-Agent", "Twitterbot/1.0"}, event.ReasonPreview},
		{"bingbot from its range", "157.55.39.10:50000", []string{"User-Agent", "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"}, event.ReasonBot},
		{"python at home", "73.162.14.9:50000", []string{"User-Agent", "python-requests/2.32.3"}, event.ReasonBot},
	} {
		r := httptest.NewRequest("GET", "/c/x", nil)
		r.RemoteAddr = tc.peer
		for i := 0; i+1 < len(tc.hdr); i += 2 {
			r.Header.Set(tc.hdr[i], tc.hdr[i+1])
		}
		for range 2 { // the second from the cache
			if got := f.Request(r); got != tc.want {
				t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
			}
		}
	}
	for ua, want := range map[string]event.Reason{
		"":                                event.ReasonBadUserAgent,
		"Twitterbot/1.0":                  event.ReasonPreview,
		"Wget/1.21.4":                     event.ReasonBot,
		chrome:                            event.ReasonNone,
		chrome + strings.Repeat("x", 600): event.ReasonNone, // long, under the limit, not cached
		strings.Repeat("y", 2000):         event.ReasonBadUserAgent,
	} {
		if got := f.UserAgent(ua); got != want {
			t.Errorf("UserAgent(%.40q...) = %v, want %v", ua, got, want)
		}
	}
}

// BenchmarkFilterRequest is the whole verdict of a person's click (the common case: every
// rule tried, none applies) with a warm user-agent cache.
func BenchmarkFilterRequest(b *testing.B) {
	f, err := NewFilter(Options{})
	if err != nil {
		b.Fatal(err)
	}
	r := httptest.NewRequest("GET", "/c/x", nil)
	r.RemoteAddr = "73.162.14.9:50000"
	r.Header.Set("User-Agent", browsers[0])
	r.Header.Set("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
	r.Header.Set("Sec-Fetch-Mode", "navigate")
	b.ReportAllocs()
	for b.Loop() {
		if f.Request(r) != event.ReasonNone {
			b.Fatal("a person taken for invalid traffic")
		}
	}
}
