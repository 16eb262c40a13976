package ingest

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/adpulse/adpulse/internal/clicktoken"
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
