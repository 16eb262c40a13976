package catalog

import (
	"fmt"
	"net/url"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/httpapi"
)

// The validators return *httpapi.Error values as error (nil when valid), so the HTTP layer can
// show them as they are and Go callers get the same field-naming messages.

func checkID(field, v string) error {
	if v == "" {
		return httpapi.BadField(field, "is required")
	}
	if !event.ValidID(v) {
		return httpapi.BadField(field, "must be 1-64 characters of [A-Za-z0-9._:-]")
	}
	return nil
}

func checkName(v string) error {
	n := utf8.RuneCountInString(v)
	if n == 0 || n > MaxNameLen || !utf8.ValidString(v) {
		return httpapi.BadField("name", "must be 1-256 characters of UTF-8")
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f {
			return httpapi.BadField("name", "must not contain control characters")
		}
	}
	return nil
}

func checkMicros(field string, v int64) error {
	if v < 0 {
		return httpapi.BadField(field, "must not be negative")
	}
	if v > MaxMicros {
		return httpapi.BadField(field, "must be at most "+strconv.FormatInt(MaxMicros, 10))
	}
	return nil
}

// loadTimezone accepts IANA names only: "Local" would depend on the machine and "" is not a
// zone (an omitted timezone is defaulted to UTC before this).
func loadTimezone(tz string) (*time.Location, error) {
	const msg = "must be an IANA time zone name such as Asia/Kolkata or UTC"
	if tz == "" || tz == "Local" || len(tz) > 64 {
		return nil, httpapi.BadField("timezone", msg)
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		return nil, httpapi.BadField("timezone", msg)
	}
	return loc, nil
}

// checkLandingURL accepts absolute http and https URLs with a host and no user info: the only
// URLs a click may be redirected to. Whitespace, control characters and backslashes are
// refused outright because browsers and Go's parser disagree about them (a browser reads
// "https://a.example\@evil.example" as a URL on evil.example), and the stored URL is what a
// click's Location header will carry.
func checkLandingURL(s string) error {
	const field = "landing_url"
	if s == "" {
		return httpapi.BadField(field, "is required")
	}
	if len(s) > MaxLandingURLLen {
		return httpapi.BadField(field, "must be at most 2048 bytes")
	}
	if !utf8.ValidString(s) {
		return httpapi.BadField(field, "must be valid UTF-8")
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c == 0x7f || c == '\\' {
			return httpapi.BadField(field, "must not contain whitespace, control characters or backslashes")
		}
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "http" && u.Scheme != "https" || u.Opaque != "" {
		return httpapi.BadField(field, "must be an absolute http or https URL")
	}
	if u.User != nil {
		return httpapi.BadField(field, "must not contain user info")
	}
	if u.Hostname() == "" {
		return httpapi.BadField(field, "must have a host")
	}
	return nil
}

func validateAdvertiser(a *Advertiser) error {
	if err := checkID("id", a.ID); err != nil {
		return err
	}
	if err := checkName(a.Name); err != nil {
		return err
	}
	if a.Timezone == "" {
		a.Timezone = "UTC"
	}
	for _, w := range []struct {
		field string
		d     *time.Duration
	}{{"attribution_click_window", a.ClickWindow}, {"attribution_view_window", a.ViewWindow}} {
		if w.d != nil && (*w.d < 0 || *w.d > MaxAttributionWindow || *w.d%time.Second != 0) {
			return httpapi.BadField(w.field, fmt.Sprintf("must be a whole number of seconds from 0 to %dd", MaxAttributionWindow/(24*time.Hour)))
		}
	}
	_, err := loadTimezone(a.Timezone)
	return err
}

func validateCampaign(c *Campaign) error {
	if err := checkID("id", c.ID); err != nil {
		return err
	}
	if err := checkID("advertiser_id", c.AdvertiserID); err != nil {
		return err
	}
	if err := checkName(c.Name); err != nil {
		return err
	}
	switch c.Status {
	case "":
		c.Status = StatusActive
	case StatusActive, StatusPaused:
	default:
		return httpapi.BadField("status", "must be active or paused")
	}
	for _, m := range [...]struct {
		field string
		v     int64
	}{
		{"cpc_bid_micros", c.CPCBidMicros},
		{"daily_budget_micros", c.DailyBudgetMicros},
		{"total_budget_micros", c.TotalBudgetMicros},
	} {
		if err := checkMicros(m.field, m.v); err != nil {
			return err
		}
	}
	// The API speaks whole seconds; storing exactly what GET shows keeps the serving status
	// consistent with the times a client reads back. Times are kept in UTC, as they come back
	// from the database, so a stored campaign equals the one PutCampaign returned.
	c.StartTime = c.StartTime.Truncate(time.Second).UTC()
	c.EndTime = c.EndTime.Truncate(time.Second).UTC()
	if !c.StartTime.IsZero() && !c.EndTime.IsZero() && !c.EndTime.After(c.StartTime) {
		return httpapi.BadField("end_time", "must be after start_time")
	}
	return nil
}

func validateAd(a *Ad) error {
	if err := checkID("id", a.ID); err != nil {
		return err
	}
	if err := checkID("campaign_id", a.CampaignID); err != nil {
		return err
	}
	if err := checkLandingURL(a.LandingURL); err != nil {
		return err
	}
	if a.CatalogID != "" {
		if err := checkID("catalog_id", a.CatalogID); err != nil {
			return err
		}
	}
	if a.CPCBidMicros != nil {
		if err := checkMicros("cpc_bid_micros", *a.CPCBidMicros); err != nil {
			return err
		}
	}
	return nil
}
