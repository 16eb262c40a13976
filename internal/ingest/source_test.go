package ingest

import (
	"fmt"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/adpulse/adpulse/internal/clicktoken"
	"github.com/cespare/xxhash/v2"
)

// TestSourceRecorded: every click and impression carries its source address and device, for
// the behavioural rules: the device an app names, else a fingerprint for a public address and
// none for a shared one; POST /events takes both from the ad server, the address canonical.
func TestSourceRecorded(t *testing.T) {
	f := newFixture(t)
	if w := f.do("GET", "/c/"+f.token(t, clicktoken.Claims{AdID: "ad1", ImpressionID: "imp1"}), ""); w.Code != 302 {
		t.Fatalf("click: %d", w.Code)
	}
	if w := f.do("POST", "/click", `{"ad_id":"ad2","impression_id":"imp2","device_id":"phone-7"}`); w.Code != 302 {
		t.Fatalf("app click: %d", w.Code)
	}
	// A private address: no fingerprint (it would lump every client of a proxy together).
	r := httptest.NewRequest("GET", "/c/"+f.token(t, clicktoken.Claims{AdID: "ad1", ImpressionID: "imp3"}), nil)
	r.Header.Set("User-Agent", browserUA)
	r.RemoteAddr = "10.1.2.3:5555"
	w := httptest.NewRecorder()
	f.mux.ServeHTTP(w, r)
	if w.Code != 302 {
		t.Fatalf("private click: %d", w.Code)
	}
	body := `{"type":"click","impression_id":"imp4","ad_id":"ad1","ip":"::ffff:81.2.3.4","device_id":"dev-4"}` + "\n"
	if w := f.do("POST", "/events", body, "Authorization", "Bearer ingest"); w.Code != 200 || !strings.Contains(w.Body.String(), `"accepted":1`) {
		t.Fatalf("events: %d %s", w.Code, w.Body)
	}
	if w := f.do("POST", "/events", `{"type":"click","impression_id":"imp5","ad_id":"ad1","ip":"nope"}`+"\n", "Authorization", "Bearer ingest"); !strings.Contains(w.Body.String(), `"rejected":1`) || !strings.Contains(w.Body.String(), `ip: must be an IPv4 or IPv6 address`) {
		t.Fatalf("bad ip: %s", w.Body)
	}
	body = `{"type":"click","impression_id":"imp6","ad_id":"ad1","ip":"3.80.1.10"}` + "\n" // an AWS address
	if w := f.do("POST", "/events", body, "Authorization", "Bearer ingest"); !strings.Contains(w.Body.String(), `"accepted":1`) {
		t.Fatalf("events: %s", w.Body)
	}
	got := map[string][2]string{}
	invalid := map[string]string{}
	for _, e := range f.log.events(t) {
		got[e.ImpressionID] = [2]string{e.SourceIP, e.DeviceID}
		invalid[e.ImpressionID] = e.Invalid.String()
	}
	if invalid["imp6"] != "datacenter" || invalid["imp4"] != "" {
		t.Errorf("reported addresses judged %q", invalid)
	}
	home := strings.Split(homeAddr, ":")[0]
	if g := got["imp1"]; g[0] != home || !strings.HasPrefix(g[1], "fp-") || len(g[1]) != 19 {
		t.Errorf("browser click: %q", g)
	}
	if g := got["imp2"]; g != [2]string{home, "phone-7"} {
		t.Errorf("app click: %q", g)
	}
	if g := got["imp3"]; g != [2]string{"10.1.2.3", ""} {
		t.Errorf("private click: %q", g)
	}
	if g := got["imp4"]; g != [2]string{"81.2.3.4", "dev-4"} {
		t.Errorf("reported click: %q", g)
	}
	if _, ok := got["imp5"]; ok {
		t.Error("a bad ip was accepted")
	}
	if Fingerprint("a", "b", "c") == Fingerprint("a", "b", "d") {
		t.Error("the fingerprint ignores the address")
	}
}

// TestFingerprintSpelling pins the device id to the spelling stored in existing logs: "fp-"
// and the xxhash of the three fields as 16 zero-padded lower-case hex digits.
func TestFingerprintSpelling(t *testing.T) {
	for _, in := range [][3]string{{"a", "b", "c"}, {browserUA, "en-GB", "73.162.14.9"}, {"", "", ""}, {"x", "", "2001:db8::1"}} {
		d := xxhash.New()
		_, _ = d.WriteString(in[0] + "\x00" + in[1] + "\x00" + in[2])
		want := fmt.Sprintf("fp-%016x", d.Sum64())
		if got := Fingerprint(in[0], in[1], in[2]); got != want {
			t.Errorf("Fingerprint(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestIPString: the source address is spelled as netip spells it, whether or not the peer's
// "host:port" already spells it that way.
func TestIPString(t *testing.T) {
	for _, c := range []struct{ addr, remote, want string }{
		{"73.162.14.9", "73.162.14.9:5555", "73.162.14.9"},
		{"2001:db8::1", "[2001:db8::1]:443", "2001:db8::1"},
		{"2001:db8::1", "[2001:0db8:0::1]:443", "2001:db8::1"},
		{"81.2.3.4", "[::ffff:81.2.3.4]:80", "81.2.3.4"},
		{"81.2.3.4", "10.0.0.1:80", "81.2.3.4"}, // a proxy's peer: the address came from a header
		{"81.2.3.4", "", "81.2.3.4"},
	} {
		if got := ipString(netip.MustParseAddr(c.addr), c.remote); got != c.want {
			t.Errorf("ipString(%s, %q) = %q", c.addr, c.remote, got)
		}
	}
}
