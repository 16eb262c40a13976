package attribution

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/httpapi"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/metricstore/pebblestore"
)

var t0 = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

func click(imp, ad, user string, at time.Time) event.Event {
	return event.Event{Type: event.TypeClick, ImpressionID: imp, AdID: ad, CampaignID: "c-" + ad, AdvertiserID: "adv", UserID: user, CatalogID: "cat", Time: at.UnixMicro(), RecvTime: at.UnixMicro()}
}

func view(imp, ad, user string, at time.Time) event.Event {
	e := click(imp, ad, user, at)
	e.Type = event.TypeImpression
	return e
}

func order(id, user string, value int64, at time.Time) event.Event {
	return event.Event{Type: event.TypeConversion, Name: "order", EventID: id, UserID: user, CatalogID: "cat", ValueMicros: value, Time: at.UnixMicro(), RecvTime: at.UnixMicro()}
}

func (h *harness) conversion(id string) Conversion {
	h.t.Helper()
	c, err := h.s.Conversion(id)
	if err != nil {
		h.t.Fatalf("conversion %s: %v", id, err)
	}
	return c
}

// TestLateTouchMovesTheCredit: an order credited to a view moves to a click that arrives
// later (sent late, with an earlier event time), and the metric store shows the move.
func TestLateTouchMovesTheCredit(t *testing.T) {
	h := newHarness(t, 2, t0.Add(time.Hour), Options{MaxLateness: 24 * time.Hour})
	h.append(view("imp-1", "ad1", "u1", t0), order("o1", "u1", 10_000_000, t0.Add(time.Minute)))
	h.sync()
	if c := h.conversion("o1"); !c.Credited || c.Touch.AdID != "ad1" || c.Touch.Kind != KindView {
		t.Fatalf("first decision: %+v", c)
	}
	h.append(click("imp-2", "ad2", "u1", t0.Add(30*time.Second)))
	h.sync()
	c := h.conversion("o1")
	if !c.Credited || c.Touch.AdID != "ad2" || c.Revisions != 1 {
		t.Fatalf("after the late click: %+v", c)
	}
	got := h.totals(metricstore.LevelAd, t0, t0.Add(time.Hour), "ad1", "ad2")
	want := metricstore.Counts{Conversions: 1, ConversionValueMicros: 10_000_000}
	if ad1, ad2 := got["ad1"], got["ad2"]; !ad1.IsZero() || !ad2.Equal(&want) {
		t.Fatalf("counts: %v", got)
	}
	// The same order again (a retry that reached the log twice) changes nothing.
	h.append(order("o1", "u1", 10_000_000, t0.Add(time.Minute)))
	h.sync()
	if got := h.totals(metricstore.LevelAd, t0, t0.Add(time.Hour), "ad2")["ad2"]; got.Conversions != 1 {
		t.Fatalf("after a duplicate: %v", got)
	}
	if st := h.s.Stats(); st.DuplicateConversions != 1 || st.Reattributed != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestTouchesPerUserAreCapped: a user with more touches than MaxTouches keeps the latest.
func TestTouchesPerUserAreCapped(t *testing.T) {
	h := newHarness(t, 2, t0.Add(time.Hour), Options{MaxTouches: 4})
	var evs []event.Event
	for i := range 10 {
		evs = append(evs, click(fmt.Sprintf("imp-%d", i), "ad1", "bot", t0.Add(time.Duration(i)*time.Second)))
	}
	evs = append(evs, click("imp-old", "ad1", "bot", t0.Add(-time.Hour))) // older than all: dropped at once
	h.append(evs...)
	h.sync()
	r := &round{b: h.s.db.NewIndexedBatch()}
	defer r.b.Close()
	ts, _, err := h.s.touches(r, "bot", "cat")
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 4 || ts[0].Key != "c:imp-6" || ts[3].Key != "c:imp-9" {
		t.Fatalf("kept %+v", ts)
	}
	if st := h.s.Stats(); st.TouchesEvicted != 7 {
		t.Fatalf("evicted %d, want 7", st.TouchesEvicted)
	}
}

// TestTouchesAndDecisionsExpire: past the horizon plus lateness a touch is forgotten (an
// order then finds nothing), and past the retention a decision is too.
func TestTouchesAndDecisionsExpire(t *testing.T) {
	h := newHarness(t, 2, t0.Add(time.Minute), Options{MaxLateness: time.Hour, Slack: time.Second, ConversionRetention: time.Nanosecond,
		Policy: LastTouch{MaxWindow: 24 * time.Hour}})
	h.append(click("imp-1", "ad1", "u1", t0), order("o1", "u1", 5, t0.Add(time.Second)))
	h.sync()
	if c := h.conversion("o1"); !c.Credited {
		t.Fatalf("o1: %+v", c)
	}
	// The log's clock moves past the click window (1d), the lateness (1h) and the slack.
	h.clock.Advance(26 * time.Hour)
	h.append(view("imp-2", "ad1", "u2", t0.Add(26*time.Hour)))
	h.sync()
	st := h.s.Stats()
	if st.TouchesExpired != 1 || st.ConversionsExpired != 1 {
		t.Fatalf("expired %d touches, %d conversions; want 1 and 1", st.TouchesExpired, st.ConversionsExpired)
	}
	if _, err := h.s.Conversion("o1"); err != ErrNotFound {
		t.Fatalf("o1 after retention: %v", err)
	}
	// The metric store keeps what was counted.
	if got := h.totals(metricstore.LevelAd, t0, t0.Add(time.Hour), "ad1")["ad1"]; got.Conversions != 1 {
		t.Fatalf("counts: %v", got)
	}
}

func TestHTTPExplainsAttribution(t *testing.T) {
	h := newHarness(t, 2, t0.Add(time.Hour), Options{})
	h.append(click("imp-1", "ad1", "u1", t0), order("o1", "u1", 25_000_000, t0.Add(90*time.Second)), order("o2", "u2", 1, t0))
	h.sync()
	mux := http.NewServeMux()
	NewHandler(h.s, nil).Register(mux)
	get := func(path string, p httpapi.Principal) (int, map[string]any) {
		req := httptest.NewRequest("GET", path, nil)
		req = req.WithContext(httpapi.WithPrincipal(req.Context(), p))
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		var body map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("%s: %v: %s", path, err, rec.Body)
		}
		return rec.Code, body
	}
	admin := httpapi.Principal{Role: httpapi.RoleAdmin}
	code, body := get("/api/v1/conversions/o1", admin)
	touch, _ := body["touch"].(map[string]any)
	if code != 200 || body["credited"] != true || touch["id"] != "imp-1" || touch["type"] != "click" || touch["age_seconds"] != float64(90) {
		t.Fatalf("o1: %d %v", code, body)
	}
	if code, body := get("/api/v1/conversions/o2", admin); code != 200 || body["reason"] != ReasonNoTouch {
		t.Fatalf("o2: %d %v", code, body)
	}
	if code, _ := get("/api/v1/conversions/o1", httpapi.Principal{Role: httpapi.RoleAdvertiser, AdvertiserID: "adv"}); code != 200 {
		t.Fatalf("own advertiser: %d", code)
	}
	for _, p := range []httpapi.Principal{{Role: httpapi.RoleAdvertiser, AdvertiserID: "other"}} {
		if code, _ := get("/api/v1/conversions/o1", p); code != 404 {
			t.Fatalf("other advertiser: %d", code)
		}
	}
	if code, _ := get("/api/v1/conversions/o2", httpapi.Principal{Role: httpapi.RoleAdvertiser, AdvertiserID: "adv"}); code != 404 {
		t.Fatalf("uncredited, advertiser key: %d", code)
	}
	if code, body := get("/api/v1/conversions/bad*id", admin); code != 400 {
		t.Fatalf("bad id: %d %v", code, body)
	}
	if code, _ := get("/api/v1/conversions/nope", admin); code != 404 {
		t.Fatalf("unknown: %d", code)
	}
}

// TestJournalGapStops: a metric store from an earlier moment than the database (restored
// apart) wants journal entries the database already dropped; the stage stops rather than
// skip them.
func TestJournalGapStops(t *testing.T) {
	h := newHarness(t, 2, t0.Add(time.Hour), Options{})
	h.append(click("imp-1", "ad1", "u1", t0), order("o1", "u1", 5, t0.Add(time.Second)))
	h.sync()
	store, err := pebblestore.Open("metrics-restored", pebblestore.Options{FS: h.fs, MinuteRetention: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	h.s.Close()
	o := h.opts
	o.Metrics = store
	s, err := Open(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Run(context.Background()); !errors.Is(err, ErrJournalGap) {
		t.Fatalf("Run = %v, want ErrJournalGap", err)
	}
}

// TestLateTouchKeepsForgottenCredit: a touch that arrives after the touch credited with a
// conversion was forgotten (in shared processing, a touch the republisher copied late) moves
// the credit only if it beats the credited touch: a late view does not take an order from
// the click it was credited to.
func TestLateTouchKeepsForgottenCredit(t *testing.T) {
	h := newHarness(t, 2, t0, Options{})
	h.append(click("imp-1", "ad1", "u1", t0))
	h.clock.Advance(6 * 24 * time.Hour)
	h.append(order("o1", "u1", 10_000_000, t0.Add(6*24*time.Hour)))
	h.sync()
	if c := h.conversion("o1"); !c.Credited || c.Touch.AdID != "ad1" || c.Touch.Kind != KindClick {
		t.Fatalf("first decision: %+v", c)
	}
	// The log moves on past the click's horizon: the click is forgotten.
	h.clock.Advance(26 * time.Hour)
	h.append(view("imp-9", "ad9", "u2", h.clock.Now()))
	h.sync()
	if st := h.s.Stats(); st.TouchesExpired == 0 {
		t.Fatalf("the click was not forgotten: %+v", st)
	}
	h.append(view("imp-2", "ad2", "u1", t0.Add(6*24*time.Hour-time.Hour)))
	h.sync()
	if c := h.conversion("o1"); !c.Credited || c.Touch.AdID != "ad1" || c.Touch.Kind != KindClick {
		t.Fatalf("after the late view: %+v", c)
	}
	got := h.totals(metricstore.LevelAd, t0, t0.Add(8*24*time.Hour), "ad1", "ad2")
	want := metricstore.Counts{Conversions: 1, ConversionValueMicros: 10_000_000}
	if ad1, ad2 := got["ad1"], got["ad2"]; !ad2.IsZero() || !ad1.Equal(&want) {
		t.Fatalf("counts: %v", got)
	}
	// A late click that beats the forgotten one still takes the credit.
	h.append(click("imp-3", "ad3", "u1", t0.Add(6*24*time.Hour-time.Minute)))
	h.sync()
	if c := h.conversion("o1"); !c.Credited || c.Touch.AdID != "ad3" {
		t.Fatalf("after the late click: %+v", c)
	}
}
