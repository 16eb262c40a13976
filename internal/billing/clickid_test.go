package billing

import (
	"testing"
)

// TestHTTPClickByEventID: a click sent with only an event_id is charged under "e:" + event_id;
// GET /api/v1/clicks/{event_id} finds it and a refund credits it exactly once. Impression
// ids keep working, and when an id is both one click's impression id and another's event_id
// it names the impression's click, as before.
func TestHTTPClickByEventID(t *testing.T) {
	h, srv := httpSetup(t)
	byEvent := h.click("", "a1", t0, 0)
	byEvent.EventID = "e1"
	both := h.click("i1", "a1", t0, 0) // keyed by its impression id
	both.EventID = "x1"
	shadow := h.click("", "a2", t0, 0) // event_id "i1": the impression id "i1" wins the lookup
	shadow.EventID = "i1"
	appendEvents(t, h.log, byEvent, both, shadow)
	run := h.start() // the harness's cleanup stops it if the test ends early
	if err, ended := h.waitCaughtUp(run); ended {
		t.Fatalf("Run ended: %v", err)
	}
	// 500000 + 500000 + 200000 (the daily budget of 1200000 leaves 200000 for the third).
	if s := h.status("c1"); s.Budget.SpentTodayMicros != 1_200_000 {
		t.Fatalf("spend %d, want 1200000", s.Budget.SpentTodayMicros)
	}

	code, body := serve(srv, "GET", "/api/v1/clicks/e1", "adv1")
	if code != 200 || body["id"] != "e1" || body["event_id"] != "e1" || body["impression_id"] != nil ||
		body["status"] != "charged" || body["charged_micros"] != 500_000.0 || body["campaign_id"] != "c1" {
		t.Fatalf("click by event_id: %d %v", code, body)
	}
	code, body = serve(srv, "GET", "/api/v1/clicks/i1", "admin")
	if code != 200 || body["id"] != "i1" || body["impression_id"] != "i1" || body["ad_id"] != "a1" {
		t.Errorf("click by impression id: %d %v", code, body)
	}

	code, body = serve(srv, "POST", "/api/v1/clicks/e1/refund", "admin")
	if code != 200 || body["refunded_micros"] != 500_000.0 || body["already_refunded"] != false || body["status"] != "refunded" || body["id"] != "e1" {
		t.Fatalf("refund by event_id: %d %v", code, body)
	}
	if s := h.status("c1"); s.Budget.SpentTodayMicros != 700_000 {
		t.Errorf("spend after the refund %d, want 700000", s.Budget.SpentTodayMicros)
	}
	code, body = serve(srv, "POST", "/api/v1/clicks/e1/refund", "admin")
	if code != 200 || body["refunded_micros"] != 0.0 || body["already_refunded"] != true {
		t.Errorf("repeated refund: %d %v", code, body)
	}
	if s := h.status("c1"); s.Budget.SpentTodayMicros != 700_000 {
		t.Errorf("spend after the repeated refund %d, want 700000", s.Budget.SpentTodayMicros)
	}
	code, body = serve(srv, "GET", "/api/v1/clicks/e1", "admin")
	if code != 200 || body["status"] != "refunded" || body["refunded_at"] == nil {
		t.Errorf("refunded click: %d %v", code, body)
	}
	if code, body = serve(srv, "GET", "/api/v1/clicks/e2", "admin"); code != 404 {
		t.Errorf("unknown id: %d %v", code, body)
	}
	run.cancel()
	if err := <-run.done; err != nil {
		t.Errorf("Run: %v", err)
	}
	h.checkMoney()
}
