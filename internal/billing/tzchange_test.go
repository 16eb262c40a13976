package billing

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/cockroachdb/pebble"
)

// changeZone records a change of advertiser id's time zone to tz made at at, as the catalog
// does on a PUT.
func (f *fakeCatalog) changeZone(t testing.TB, id, tz string, at time.Time) {
	loc, err := time.LoadLocation(tz)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.advs[id]
	a.TimezoneChanges = append(a.TimezoneChanges[:len(a.TimezoneChanges):len(a.TimezoneChanges)], catalog.TimezoneChange{At: at, From: a.Location, To: loc})
	a.Timezone, a.Location = tz, loc
	f.advs[id] = a
}

// TestZoneChangeKeepsDayInProgress: an advertiser in UTC spends its daily budget, then moves
// to Pacific/Kiritimati (UTC+14), where it is already the next day. The UTC day in progress
// continues until UTC midnight: clicks charge 0 and the campaign stays budget_exhausted; the
// first Kiritimati day runs from UTC midnight to Kiritimati midnight (10:00Z). A round decided
// before the change but lost in a crash is decided the same way when replayed after it.
func TestZoneChangeKeepsDayInProgress(t *testing.T) {
	h := tzSetup(t, "UTC", utc("2026-11-21T10:00:00Z"))
	appendEvents(t, h.log, h.click("a1", "a", utc("2026-11-21T10:00:00Z"), 0), h.click("a2", "a", utc("2026-11-21T10:01:00Z"), 0))
	h.sync()
	h.expectCharge("a2", 400_000, "2026-11-21")

	// Clicks of the afternoon, decided while the advertiser is still in UTC; the commit is lost.
	appendEvents(t, h.log, h.click("b1", "a", utc("2026-11-21T11:30:00Z"), 0), h.click("b2", "a", utc("2026-11-21T12:00:00Z"), 0))
	h.c.opts.hooks = &testHooks{beforeCommit: func() error { return errInjected }}
	if _, err := h.c.w.round(t.Context()); !errors.Is(err, errInjected) {
		t.Fatalf("round: %v", err)
	}
	h.cat.changeZone(t, "adv", "Pacific/Kiritimati", utc("2026-11-21T11:45:00Z"))
	h.crash()
	h.sync() // replayed after the change: the same decisions
	h.expectCharge("b1", 0, "2026-11-21")
	h.expectCharge("b2", 0, "2026-11-21")

	appendEvents(t, h.log,
		h.click("b3", "a", utc("2026-11-21T23:59:59Z"), 0), // Kiritimati 13:59 on the 22nd: still the UTC 21st
		h.click("c1", "a", utc("2026-11-22T00:00:00Z"), 0), // the first Kiritimati day, the 22nd
		h.click("c2", "a", utc("2026-11-22T09:59:59Z"), 0),
		h.click("c3", "a", utc("2026-11-22T09:59:59Z"), 0),
		h.click("d1", "a", utc("2026-11-22T10:00:00Z"), 0), // Kiritimati midnight: the 23rd
	)
	h.sync()
	h.expectCharge("b3", 0, "2026-11-21")
	h.expectCharge("c1", 600_000, "2026-11-22")
	h.expectCharge("c2", 400_000, "2026-11-22")
	h.expectCharge("c3", 0, "2026-11-22")
	h.expectCharge("d1", 600_000, "2026-11-23")
	if e := h.entry("b3"); zeroReason(e.Reason) != reasonDailyBudget {
		t.Errorf("b3: reason %s", zeroReason(e.Reason))
	}
	h.expectStatus(utc("2026-11-21T12:00:00Z"), catalog.ServingBudgetExhausted, "2026-11-21", 1_000_000)
	if feedHas(t, h, "c") {
		t.Error("exhausted campaign in the feed after the zone change")
	}
	h.expectStatus(utc("2026-11-21T23:59:59Z"), catalog.ServingBudgetExhausted, "2026-11-21", 1_000_000)
	h.expectStatus(utc("2026-11-22T00:00:00Z"), catalog.ServingBudgetExhausted, "2026-11-22", 1_000_000)
	h.expectStatus(utc("2026-11-22T10:00:00Z"), catalog.ServingActive, "2026-11-23", 600_000)
	if !feedHas(t, h, "c") {
		t.Error("campaign with budget left not in the feed")
	}
	h.checkMoney()

	// The budget days, and the pacing curve of each, are the real intervals.
	for _, tc := range []struct{ at, start, end string }{
		{"2026-11-21T12:00:00Z", "2026-11-21T00:00:00Z", "2026-11-22T00:00:00Z"},
		{"2026-11-22T05:00:00Z", "2026-11-22T00:00:00Z", "2026-11-22T10:00:00Z"},
		{"2026-11-22T10:00:00Z", "2026-11-22T10:00:00Z", "2026-11-23T10:00:00Z"},
	} {
		d := h.c.budgetDayOf("adv", utc(tc.at))
		dc := h.c.pacer.dayCurveLocked(d)
		if !d.Start.Equal(utc(tc.start)) || !d.End.Equal(utc(tc.end)) || !dc.m0.Equal(d.Start) || !dc.m1.Equal(d.End) || dc.share(d.End) != 1 {
			t.Errorf("budget day at %s: [%s, %s), curve [%s, %s); want [%s, %s)", tc.at, d.Start.UTC(), d.End.UTC(), dc.m0.UTC(), dc.m1.UTC(), tc.start, tc.end)
		}
	}
}

// TestZoneChangeWestward: Asia/Tokyo to America/Los_Angeles. The Tokyo day (the 21st, from
// 20th 15:00Z) keeps its end at 21st 15:00Z although Los Angeles is still on the 21st then;
// the next budget day is Los Angeles' 21st from 15:00Z to its midnight (22nd 08:00Z). A second
// change before the first takes effect replaces it.
func TestZoneChangeWestward(t *testing.T) {
	h := tzSetup(t, "Asia/Tokyo", utc("2026-11-21T01:00:00Z"))
	appendEvents(t, h.log, h.click("a1", "a", utc("2026-11-21T01:00:00Z"), 0), h.click("a2", "a", utc("2026-11-21T01:01:00Z"), 0))
	h.sync()
	h.cat.changeZone(t, "adv", "Asia/Kolkata", utc("2026-11-21T02:00:00Z"))
	h.cat.changeZone(t, "adv", "America/Los_Angeles", utc("2026-11-21T03:00:00Z"))
	appendEvents(t, h.log,
		h.click("b1", "a", utc("2026-11-21T10:00:00Z"), 0), // 02:00 in Los Angeles on the 21st: the Tokyo 21st goes on
		h.click("b2", "a", utc("2026-11-21T14:59:59Z"), 0),
		h.click("c1", "a", utc("2026-11-21T15:00:00Z"), 0), // Los Angeles' 21st, a budget day of its own
		h.click("d1", "a", utc("2026-11-22T08:00:00Z"), 0), // Los Angeles' 22nd
	)
	h.sync()
	h.expectCharge("b1", 0, "2026-11-21")
	h.expectCharge("b2", 0, "2026-11-21")
	h.expectCharge("c1", 600_000, "2026-11-21")
	h.expectCharge("d1", 600_000, "2026-11-22")
	h.expectStatus(utc("2026-11-21T14:59:59Z"), catalog.ServingBudgetExhausted, "2026-11-21", 1_000_000)
	h.expectStatus(utc("2026-11-21T15:00:00Z"), catalog.ServingActive, "2026-11-21", 600_000)
	h.expectStatus(utc("2026-11-22T08:00:00Z"), catalog.ServingActive, "2026-11-22", 600_000)
	h.checkMoney()
}

// TestZoneSpans: changes take effect at the next midnight of the zone in force; a later
// change made before that replaces the pending one; changing back before it cancels it.
func TestZoneSpans(t *testing.T) {
	tokyo, _ := time.LoadLocation("Asia/Tokyo")
	la, _ := time.LoadLocation("America/Los_Angeles")
	adv := catalog.AdvertiserInfo{AdvertiserID: "a", Location: time.UTC, TimezoneChanges: []catalog.TimezoneChange{
		{At: utc("2026-11-21T10:00:00Z"), From: time.UTC, To: tokyo},
		{At: utc("2026-11-21T11:00:00Z"), From: tokyo, To: time.UTC}, // back before it took effect
		{At: utc("2026-11-23T10:00:00Z"), From: time.UTC, To: tokyo}, // from the 24th 00:00Z
		{At: utc("2026-11-24T05:00:00Z"), From: tokyo, To: la},       // from the 24th 15:00Z (Tokyo midnight)
	}}
	spans := zoneSpans(adv, true)
	want := []struct{ from, zone string }{{"", "UTC"}, {"2026-11-24T00:00:00Z", "Asia/Tokyo"}, {"2026-11-24T15:00:00Z", "America/Los_Angeles"}}
	if len(spans) != len(want) {
		t.Fatalf("%d spans, want %d: %v", len(spans), len(want), spans)
	}
	for i, w := range want {
		if (w.from == "" && !spans[i].from.IsZero()) || (w.from != "" && !spans[i].from.Equal(utc(w.from))) || spans[i].loc.String() != w.zone {
			t.Errorf("span %d: from %s in %s, want %s in %s", i, spans[i].from, spans[i].loc, w.from, w.zone)
		}
	}
	// Every instant is in exactly one day: consecutive days meet, none overlaps.
	prev := dayIn(spans, utc("2026-11-20T00:00:00Z"))
	for at := utc("2026-11-20T00:00:00Z"); at.Before(utc("2026-11-27T00:00:00Z")); at = at.Add(17 * time.Minute) {
		d := dayIn(spans, at)
		if at.Before(d.Start) || !at.Before(d.End) {
			t.Fatalf("%s not in its day [%s, %s)", at, d.Start, d.End)
		}
		if !d.Start.Equal(prev.Start) && !d.Start.Equal(prev.End) {
			t.Fatalf("day [%s, %s) does not start where [%s, %s) ended", d.Start, d.End, prev.Start, prev.End)
		}
		prev = d
	}
}

// TestLegacyDateSpend: a billing database written when spend was keyed by a bare local date
// keeps the day's spend after the upgrade, and its version 1 ledger entries refund into it.
func TestLegacyDateSpend(t *testing.T) {
	h := basicSetup(t)
	// The records as the old layout had them, written into the closed database.
	day := dayOf(t0, time.UTC)
	v1 := []byte{1, stateCharged, 0}
	for _, n := range []int64{700_000, 700_000, t0.UnixMicro()} {
		v1 = binary.AppendVarint(v1, n)
	}
	v1 = binary.AppendUvarint(v1, uint64(day))
	for _, n := range []int64{0, 0, 0} { // refunded at, partition, offset
		v1 = binary.AppendVarint(v1, n)
	}
	for _, id := range []string{"c1", "a1", "adv1"} {
		v1 = append(binary.AppendUvarint(v1, uint64(len(id))), id...)
	}
	legacy := binary.BigEndian.AppendUint32(append([]byte{'d', 2}, "c1"...), day)
	h.c.Close()
	h.ledger.Close()
	db, err := pebble.Open("billing", &pebble.Options{FS: h.fs, FormatMajorVersion: pebble.FormatNewest})
	if err != nil {
		t.Fatal(err)
	}
	b := db.NewBatch()
	_ = b.Set([]byte("lc:old"), v1, nil)
	_ = b.Set(legacy, binary.AppendVarint(nil, 700_000), nil)
	_ = b.Set([]byte("t\x02c1"), binary.AppendVarint(nil, 700_000), nil)
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	h.store.Close()
	h.open()
	if s := h.status("c1"); s.Budget.SpentTodayMicros != 700_000 {
		t.Fatalf("spend today after the upgrade: %d, want 700000", s.Budget.SpentTodayMicros)
	}
	if r, err := h.refund("old"); err != nil || r.RefundedMicros != 700_000 {
		t.Fatalf("refund of a version 1 entry: %+v, %v", r, err)
	}
	if s := h.status("c1"); s.Budget.SpentTodayMicros != 0 || s.Budget.SpentTotalMicros != 0 {
		t.Fatalf("spend after the refund: %+v", s.Budget)
	}
}
