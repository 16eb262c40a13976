package billing

import (
	"time"

	"github.com/adpulse/adpulse/internal/catalog"
)

// Budget days.
//
// A budget day is a real interval of time [Start, End), not a bare date: each instant belongs
// to exactly one budget day of an advertiser, and days never overlap. Without a time zone
// change the days are the advertiser's local calendar days (23 or 25 hours across DST).
//
// A change of the advertiser's time zone takes effect at the next local midnight of the zone
// in force when it was made (API.md: the budget day in progress continues, so a change never
// grants a second daily budget for the same hours). From that instant the new zone's
// calendar days apply; the first of them starts at the change, not at its own local midnight,
// and may be short (UTC to Asia/Tokyo: the first Tokyo day runs from 09:00 to midnight). A
// second change made before the first took effect replaces it (same instant, the newer zone).
//
// The changes come from the catalog with the time each was made (catalog.TimezoneChange), so
// the zone in force at any past instant never changes afterwards: a charging decision replayed
// from the log after a crash uses the day the click's time had when it was first decided, and
// a spend row, keyed by its day's Start, always means the same hours.

// budgetDay is one budget day of an advertiser.
type budgetDay struct {
	Start, End time.Time
	Label      uint32 // the local date at Start, in Loc (days since 1970-01-01): API.md's "day"
	Loc        *time.Location
}

// zoneSpan is a time zone in force from an instant (the zero time: since ever) until the next
// span's.
type zoneSpan struct {
	from time.Time
	loc  *time.Location
}

// zoneSpans turns an advertiser's time zone changes into the spans in which each zone is in
// force. An unknown advertiser is in UTC.
func zoneSpans(adv catalog.AdvertiserInfo, known bool) []zoneSpan {
	if !known || adv.Location == nil {
		return []zoneSpan{{loc: time.UTC}}
	}
	if len(adv.TimezoneChanges) == 0 {
		return []zoneSpan{{loc: adv.Location}}
	}
	spans := []zoneSpan{{loc: orUTC(adv.TimezoneChanges[0].From)}}
	for _, ch := range adv.TimezoneChanges {
		for len(spans) > 1 && spans[len(spans)-1].from.After(ch.At) {
			spans = spans[:len(spans)-1] // a change that had not taken effect yet is replaced
		}
		cur, to := spans[len(spans)-1].loc, orUTC(ch.To)
		if to.String() == cur.String() {
			continue
		}
		_, end := localDay(ch.At, cur)
		spans = append(spans, zoneSpan{from: end, loc: to})
	}
	return spans
}

func orUTC(loc *time.Location) *time.Location {
	if loc == nil {
		return time.UTC
	}
	return loc
}

// dayIn returns the budget day that contains t.
func dayIn(spans []zoneSpan, t time.Time) budgetDay {
	i := len(spans) - 1
	for i > 0 && spans[i].from.After(t) {
		i--
	}
	loc := spans[i].loc
	start, end := localDay(t, loc)
	if start.Before(spans[i].from) {
		start = spans[i].from
	}
	if i+1 < len(spans) && end.After(spans[i+1].from) {
		end = spans[i+1].from
	}
	return budgetDay{Start: start, End: end, Label: dayOf(t, loc), Loc: loc}
}

// localDay returns the first instant of t's local date in loc and of the next one.
func localDay(t time.Time, loc *time.Location) (start, end time.Time) {
	start = startOfDay(t, loc)
	y, m, d := start.In(loc).Date()
	return start, startOfDay(time.Date(y, m, d+1, 12, 0, 0, 0, loc), loc)
}

// budgetDayOf returns the budget day of advertiserID that contains t, as the catalog has
// the advertiser now.
func (c *Charger) budgetDayOf(advertiserID string, t time.Time) budgetDay {
	adv, ok := c.cat.Advertiser(advertiserID)
	if !ok || len(adv.TimezoneChanges) == 0 { // the common case, without allocating
		loc := time.UTC
		if ok && adv.Location != nil {
			loc = adv.Location
		}
		start, end := localDay(t, loc)
		return budgetDay{Start: start, End: end, Label: dayOf(t, loc), Loc: loc}
	}
	return dayIn(zoneSpans(adv, ok), t)
}

// zoneAt returns the time zone of advertiserID's budget day at t.
func (c *Charger) zoneAt(advertiserID string, t time.Time) *time.Location {
	adv, ok := c.cat.Advertiser(advertiserID)
	switch {
	case !ok || adv.Location == nil:
		return time.UTC
	case len(adv.TimezoneChanges) == 0:
		return adv.Location
	}
	spans := zoneSpans(adv, ok)
	i := len(spans) - 1
	for i > 0 && spans[i].from.After(t) {
		i--
	}
	return spans[i].loc
}

func dayStartString(start int64) string { return time.Unix(start, 0).UTC().Format(time.RFC3339) }

// legacyDayStart is the budget day start of spend kept under a bare local date, as databases
// written before budget days were intervals have it (prefixDate keys, version 1 ledger
// entries): the start of that date in the zone the advertiser had before its first recorded
// time zone change, the zone that date was computed in.
func (c *Charger) legacyDayStart(campaignID string, date uint32) int64 {
	loc := time.UTC
	if cp, ok := c.cat.Campaign(campaignID); ok {
		if adv, ok := c.cat.Advertiser(cp.AdvertiserID); ok {
			loc = zoneSpans(adv, true)[0].loc
		}
	}
	y, m, d := time.Unix(int64(date)*86400, 0).UTC().Date()
	return startOfDay(time.Date(y, m, d, 12, 0, 0, 0, loc), loc).Unix()
}
