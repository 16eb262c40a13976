package ivt

import (
	"net/http"
	"strings"
	"unicode/utf8"
)

// User agents that no browser sends, and requests that no person made yet.

// Bounds of a plausible user agent. Browsers send 60-200 bytes (in-app browsers up to about
// 500); the shortest real product token with a version ("name/1.0") is 8.
const (
	MinUserAgentLen = 8
	MaxUserAgentLen = 1024
)

// placeholderUAs are values that stand in for a missing user agent (compared ignoring case).
// Shorter ones are caught by MinUserAgentLen.
var placeholderUAs = []string{"undefined", "(unknown)", "user-agent", "useragent", "mozilla/4.0", "mozilla/5.0"}

// BadUserAgent reports whether ua is missing or malformed: empty or blank, shorter than
// MinUserAgentLen or longer than MaxUserAgentLen bytes, a placeholder, or holding control
// characters or invalid UTF-8. Every browser sends a well-formed one, so this is a script or
// a tool that did not bother.
func BadUserAgent(ua string) bool {
	if len(ua) > MaxUserAgentLen {
		return true
	}
	t := strings.TrimSpace(ua)
	if len(t) < MinUserAgentLen {
		return true
	}
	for i := 0; i < len(ua); i++ {
		if c := ua[i]; c < 0x20 || c == 0x7f {
			return true
		}
	}
	if !utf8.ValidString(ua) {
		return true
	}
	if len(t) <= 11 { // the longest placeholder
		for _, p := range placeholderUAs {
			if strings.EqualFold(t, p) {
				return true
			}
		}
	}
	return false
}

// previewAgents are the user-agent tokens of link-preview fetchers: a chat or social app
// fetching a pasted link to show its title and image. They are not people clicking, whoever
// pasted the link. The tokens are specific to the fetcher: the same apps' in-app browsers
// send other ones (FBAN/FBIOS, "Twitter for iPhone", LinkedInApp, Telegram-Android), which
// are people.
var previewAgents = []string{
	"facebookexternalhit", // Facebook, Messenger, Instagram; Apple's iMessage previews send it too
	"Twitterbot",
	"Slackbot-LinkExpanding",
	"Slack-ImgProxy",
	"Discordbot",
	"TelegramBot",
	"WhatsApp/", // WhatsApp, and Signal, which borrows its user agent for previews
	"LinkedInBot",
	"SkypeUriPreview",
	"MicrosoftPreview",
	"redditbot",
	"Embedly",
	"Iframely",
	"vkShare",
	"Mastodon/", // "http.rb/5.1.1 (Mastodon/4.2.1; +https://instance/)"
	"Cardyb",    // Bluesky
	"kakaotalk-scrap",
	"Snap URL Preview Service",
}

// PreviewAgent reports whether ua is a link-preview fetcher.
func PreviewAgent(ua string) bool {
	for _, p := range previewAgents {
		if strings.Contains(ua, p) {
			return true
		}
	}
	return false
}

// Speculative requests. Browsers say when they fetch a link nobody has followed yet: Chrome
// and Firefox send "Sec-Purpose: prefetch" (and "prefetch;prerender" for a prerender; Chrome
// adds ";anonymous-client-ip" through its private prefetch proxy), Chrome and WebKit also the
// older "Purpose: prefetch", old Firefox "X-Moz: prefetch", Safari "X-Purpose: preview" for
// its Top Sites thumbnails.
var purposeHeaders = []string{"Sec-Purpose", "Purpose", "X-Purpose", "X-Moz"}

// Prefetch reports whether h marks a speculative request: one of the purpose headers holds a
// prefetch, prerender or preview token. The keys of h must be canonical, as net/http makes
// them.
func Prefetch(h http.Header) bool {
	for _, k := range purposeHeaders {
		for _, v := range h[k] {
			if speculative(v) {
				return true
			}
		}
	}
	return false
}

// speculative reports whether a purpose header value holds a prefetch, prerender or preview
// token, ignoring case, in a list (",") or as a parameter (";").
func speculative(v string) bool {
	for v != "" {
		var tok string
		if i := strings.IndexAny(v, ",;"); i >= 0 {
			tok, v = v[:i], v[i+1:]
		} else {
			tok, v = v, ""
		}
		tok = strings.TrimSpace(tok)
		if i := strings.IndexByte(tok, '='); i >= 0 { // a structured-field parameter: name=value
			tok = strings.TrimSpace(tok[:i])
		}
		if strings.EqualFold(tok, "prefetch") || strings.EqualFold(tok, "prerender") || strings.EqualFold(tok, "preview") {
			return true
		}
	}
	return false
}
