package billing

import (
	"context"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
)

// TestOnViewsAndScanViews: OnViews hands over the committed totals of the counts each round
// changed, and ScanViews lists a day's committed counts; both agree with UserViews.
func TestOnViewsAndScanViews(t *testing.T) {
	h := basicSetup(t)
	var mu sync.Mutex
	var calls [][]ViewCount
	h.opts.OnViews = func(v []ViewCount) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, v)
	}
	h.restart()
	imp := func(id, user, cat string, at time.Time) event.Event {
		return event.Event{Type: event.TypeImpression, Time: at.UnixMicro(), AdID: "a1", CampaignID: "c1", AdvertiserID: "adv1", ImpressionID: id, UserID: user, CatalogID: cat}
	}
	day := t0.Truncate(24 * time.Hour)
	appendEvents(t, h.log, imp("1", "u1", "cat7", t0), imp("2", "u1", "cat7", t0), imp("3", "u2", "cat8", t0))
	h.sync()
	appendEvents(t, h.log, imp("4", "u1", "cat7", t0), imp("4", "u1", "cat7", t0), // a repeat: not counted
		imp("5", "u1", "cat9", t0.Add(-24*time.Hour)), h.click("6", "a1", t0, 0))
	h.sync()
	appendEvents(t, h.log, h.click("7", "a1", t0, 0)) // no views: no call
	h.sync()

	byDay := func(v []ViewCount) map[string]int64 {
		m := map[string]int64{}
		for _, c := range v {
			m[c.Day.Format(time.DateOnly)+"/"+c.UserID+"/"+c.CatalogID] = c.Count
		}
		return m
	}
	mu.Lock()
	got := make([]map[string]int64, len(calls))
	for i, c := range calls {
		got[i] = byDay(c)
	}
	mu.Unlock()
	want := []map[string]int64{
		{"2026-11-21/u1/cat7": 2, "2026-11-21/u2/cat8": 1},
		{"2026-11-21/u1/cat7": 3, "2026-11-20/u1/cat9": 1}, // totals, not the round's increments
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("OnViews calls: %v, want %v", got, want)
	}

	var scanned []ViewCount
	if err := h.c.ScanViews(context.Background(), t0, func(v ViewCount) error {
		scanned = append(scanned, v)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	wantScan := []ViewCount{
		{Day: day, UserID: "u1", CatalogID: "cat7", Count: 3},
		{Day: day, UserID: "u2", CatalogID: "cat8", Count: 1},
	}
	if !reflect.DeepEqual(scanned, wantScan) {
		t.Errorf("ScanViews: %v, want %v", scanned, wantScan)
	}
	for _, v := range wantScan {
		m, err := h.c.UserViews(context.Background(), v.UserID, t0)
		if err != nil || m[v.CatalogID] != v.Count {
			t.Errorf("UserViews(%s) = %v, %v; want %s: %d", v.UserID, m, err, v.CatalogID, v.Count)
		}
	}
}
