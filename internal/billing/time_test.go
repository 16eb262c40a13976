package billing

import (
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/catalog"
)

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

// tzSetup: one campaign (bid 0.60, daily 1.00) of an advertiser in tz.
func tzSetup(t *testing.T, tz string, now time.Time) *harness {
	cat := newFakeCatalog()
	cat.advertiser(t, "adv", tz)
	cat.campaign(catalog.CampaignInfo{CampaignID: "c", AdvertiserID: "adv", CPCBidMicros: 600_000, DailyBudgetMicros: 1_000_000})
	cat.ad("a", "c", 0)
	clock := newClock(now)
	return newHarness(t, newMemLog(2, clock.Now), cat, clock)
}

func (h *harness) expectStatus(at time.Time, status, day string, spentToday int64) {
	h.t.Helper()
	h.clock.Set(at)
	s := h.status("c")
	if s.ServingStatus != status || s.Budget.Day != day || s.Budget.SpentTodayMicros != spentToday {
		h.t.Errorf("at %s: %s day %s spent %d; want %s day %s spent %d", at.Format(time.RFC3339), s.ServingStatus, s.Budget.Day, s.Budget.SpentTodayMicros, status, day, spentToday)
	}
}

func (h *harness) expectCharge(imp string, charged int64, day string) {
	h.t.Helper()
	e := h.entry(imp)
	if e.ChargedMicros != charged || dayString(e.Day) != day {
		h.t.Errorf("%s: charged %d on %s; want %d on %s", imp, e.ChargedMicros, dayString(e.Day), charged, day)
	}
}

// TestKolkataMidnight: the budget day turns at 18:30 UTC for Asia/Kolkata (UTC+5:30).
func TestKolkataMidnight(t *testing.T) {
	h := tzSetup(t, "Asia/Kolkata", utc("2026-11-21T18:29:00Z"))
	appendEvents(t, h.log,
		h.click("a1", "a", utc("2026-11-21T18:29:00Z"), 0), // 23:59 IST on the 21st
		h.click("a2", "a", utc("2026-11-21T18:29:30Z"), 0), // the 21st's last 400000
		h.click("a3", "a", utc("2026-11-21T18:29:59Z"), 0), // nothing left on the 21st
		h.click("b1", "a", utc("2026-11-21T18:30:00Z"), 0), // 00:00 IST on the 22nd: a new budget
	)
	h.sync()
	h.expectCharge("a1", 600_000, "2026-11-21")
	h.expectCharge("a2", 400_000, "2026-11-21")
	h.expectCharge("a3", 0, "2026-11-21")
	h.expectCharge("b1", 600_000, "2026-11-22")
	h.expectStatus(utc("2026-11-21T18:29:59Z"), catalog.ServingBudgetExhausted, "2026-11-21", 1_000_000)
	h.expectStatus(utc("2026-11-21T18:30:00Z"), catalog.ServingActive, "2026-11-22", 600_000)
	// A late click of the 21st still counts against the 21st, which is spent.
	appendEvents(t, h.log, h.click("late", "a", utc("2026-11-21T12:00:00Z"), 0))
	h.sync()
	h.expectCharge("late", 0, "2026-11-21")
	h.checkMoney()
}

// TestNewYorkDST: the budget day is the local date across both DST changes of 2026: 8 March
// is 23 hours long (05:00Z to 04:00Z), 1 November is 25 hours (04:00Z to 05:00Z).
func TestNewYorkDST(t *testing.T) {
	h := tzSetup(t, "America/New_York", utc("2026-03-08T05:00:00Z"))
	appendEvents(t, h.log,
		// Spring forward.
		h.click("s0", "a", utc("2026-03-08T04:59:59Z"), 0), // 23:59:59 EST on 7 March
		h.click("s1", "a", utc("2026-03-08T05:00:00Z"), 0), // 00:00 EST on 8 March
		h.click("s2", "a", utc("2026-03-09T03:59:59Z"), 0), // 23:59:59 EDT on 8 March, 23 hours later
		h.click("s3", "a", utc("2026-03-09T04:00:00Z"), 0), // 00:00 EDT on 9 March
		// Fall back.
		h.click("f1", "a", utc("2026-11-01T04:00:00Z"), 0), // 00:00 EDT on 1 November
		h.click("f2", "a", utc("2026-11-02T04:30:00Z"), 0), // 23:30 EST on 1 November, 24.5 hours later
		h.click("f3", "a", utc("2026-11-02T05:00:00Z"), 0), // 00:00 EST on 2 November
	)
	h.sync()
	h.expectCharge("s0", 600_000, "2026-03-07")
	h.expectCharge("s1", 600_000, "2026-03-08")
	h.expectCharge("s2", 400_000, "2026-03-08")
	h.expectCharge("s3", 600_000, "2026-03-09")
	h.expectCharge("f1", 600_000, "2026-11-01")
	h.expectCharge("f2", 400_000, "2026-11-01")
	h.expectCharge("f3", 600_000, "2026-11-02")
	h.expectStatus(utc("2026-03-09T03:59:59Z"), catalog.ServingBudgetExhausted, "2026-03-08", 1_000_000)
	h.expectStatus(utc("2026-03-09T04:00:00Z"), catalog.ServingActive, "2026-03-09", 600_000)
	h.expectStatus(utc("2026-11-02T04:59:59Z"), catalog.ServingBudgetExhausted, "2026-11-01", 1_000_000)
	h.expectStatus(utc("2026-11-02T05:00:00Z"), catalog.ServingActive, "2026-11-02", 600_000)
	h.checkMoney()

	// The pacing curve of those days covers their real length and ends at exactly 1.
	ny, _ := time.LoadLocation("America/New_York")
	c := defaultCurve()
	for _, tc := range []struct {
		at       string
		quarters int
		m0, m1   string
	}{
		{"2026-03-08T12:00:00Z", 92, "2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z"},
		{"2026-11-01T12:00:00Z", 100, "2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z"},
		{"2026-11-21T12:00:00Z", 96, "2026-11-21T05:00:00Z", "2026-11-22T05:00:00Z"},
	} {
		m0, m1 := localDay(utc(tc.at), ny)
		dc := newDayCurve(&c, m0, m1, ny)
		if len(dc.cum)-1 != tc.quarters || !dc.m0.Equal(utc(tc.m0)) || !dc.m1.Equal(utc(tc.m1)) {
			t.Errorf("%s: %d quarters from %s to %s; want %d from %s to %s", tc.at, len(dc.cum)-1, dc.m0.UTC(), dc.m1.UTC(), tc.quarters, tc.m0, tc.m1)
		}
		prev := -1.0
		for at := dc.m0; !at.After(dc.m1); at = at.Add(7 * time.Minute) {
			s := dc.share(at)
			if s < prev || s < 0 || s > 1 {
				t.Fatalf("%s: share %v at %s after %v", tc.at, s, at, prev)
			}
			prev = s
		}
		if dc.share(dc.m1.Add(-time.Second)) >= 1 || dc.share(dc.m1) != 1 || dc.share(dc.m0) != 0 {
			t.Errorf("%s: share does not run from 0 at midnight to 1 at the next", tc.at)
		}
	}
}

// TestStartOfDaySkippedMidnight: where DST skips midnight (America/Santiago, September), the
// day starts at 01:00 local.
func TestStartOfDaySkippedMidnight(t *testing.T) {
	scl, err := time.LoadLocation("America/Santiago")
	if err != nil {
		t.Skip(err)
	}
	// 2026-09-06: clocks go from 00:00 -04 to 01:00 -03.
	got := startOfDay(utc("2026-09-06T12:00:00Z"), scl)
	if !got.Equal(utc("2026-09-06T04:00:00Z")) {
		t.Errorf("start of 2026-09-06 in Santiago: %s, want 01:00 -03 (04:00Z)", got.In(scl))
	}
}

// TestSchedule: clicks before start_time or at/after end_time charge 0; status follows the
// clock.
func TestSchedule(t *testing.T) {
	h := tzSetup(t, "UTC", utc("2026-11-21T11:00:00Z"))
	h.cat.update("c", func(c *catalog.CampaignInfo) {
		c.DailyBudgetMicros = 0
		c.StartTime, c.EndTime = utc("2026-11-21T12:00:00Z"), utc("2026-11-21T14:00:00Z")
	})
	appendEvents(t, h.log,
		h.click("early", "a", utc("2026-11-21T11:59:59Z"), 0),
		h.click("first", "a", utc("2026-11-21T12:00:00Z"), 0),
		h.click("last", "a", utc("2026-11-21T13:59:59Z"), 0),
		h.click("late", "a", utc("2026-11-21T14:00:00Z"), 0),
	)
	h.sync()
	for imp, want := range map[string]struct {
		charged int64
		reason  zeroReason
	}{"early": {0, reasonNotStarted}, "first": {600_000, reasonNone}, "last": {600_000, reasonNone}, "late": {0, reasonEnded}} {
		if e := h.entry(imp); e.ChargedMicros != want.charged || zeroReason(e.Reason) != want.reason {
			t.Errorf("%s: %d (%s), want %d (%s)", imp, e.ChargedMicros, zeroReason(e.Reason), want.charged, want.reason)
		}
	}
	h.expectStatus(utc("2026-11-21T11:59:59Z"), catalog.ServingNotStarted, "2026-11-21", 1_200_000)
	h.expectStatus(utc("2026-11-21T12:00:00Z"), catalog.ServingActive, "2026-11-21", 1_200_000)
	if !feedHas(t, h, "c") {
		t.Error("running campaign not in the feed")
	}
	h.expectStatus(utc("2026-11-21T14:00:00Z"), catalog.ServingEnded, "2026-11-21", 1_200_000)
	if feedHas(t, h, "c") {
		t.Error("ended campaign in the feed")
	}
	h.checkMoney()
}
