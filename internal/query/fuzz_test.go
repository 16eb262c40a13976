package query

import (
	"errors"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/httpapi"
	"github.com/adpulse/adpulse/internal/query/topn"
)

// FuzzParseMetricsQuery: no raw query string makes the parser panic, every rejection is an
// invalid_argument, and whatever is accepted is within the contract's limits.
func FuzzParseMetricsQuery(f *testing.F) {
	for _, s := range []string{
		"ad_ids=1,2&start_time=2026-11-21T10:00:00Z&end_time=2026-11-21T10:03:00Z&interval=1m",
		"campaign_ids=c1&campaign_ids=c2&interval=2h",
		"advertiser_ids=a1&interval=1d&tz=Asia/Kolkata",
		"ad_ids=1&start_time=0&end_time=1099511627776&interval=3660d",
		"ad_ids=1&interval=1d&tz=America/New_York&start_time=2026-03-01T00:00:00-05:00",
		"ad_ids=1&interval=90m&end_time=3600",
		"ad_ids=1,,2", "ad_ids=1&campaign_ids=2", "ad_ids=1,2,1&ad_ids=2,3", "ad_ids=1&interval=0m", "ad_ids=1&tz=Local&interval=1d",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		p, err := parseMetricsParams(v, testNow, time.LoadLocation)
		if err != nil {
			var ae *httpapi.Error
			if !errors.As(err, &ae) || ae.Code != httpapi.CodeInvalidArgument {
				t.Fatalf("%q: error %v is not invalid_argument", raw, err)
			}
			return
		}
		if !p.level.Valid() || len(p.ids) < 1 || len(p.ids) > MaxIDs {
			t.Fatalf("%q: level %v, %d ids", raw, p.level, len(p.ids))
		}
		seen := map[string]bool{}
		for _, id := range p.ids {
			if !event.ValidID(id) {
				t.Fatalf("%q: accepted id %q", raw, id)
			}
			if seen[id] {
				t.Fatalf("%q: id %q kept twice", raw, id)
			}
			seen[id] = true
		}
		if !p.start.Before(p.end) || p.start.Before(time.Unix(0, 0)) {
			t.Fatalf("%q: range %v..%v", raw, p.start, p.end)
		}
		if p.interval <= 0 || p.interval%time.Minute != 0 || p.interval > maxIntervalDays*24*time.Hour {
			t.Fatalf("%q: interval %v", raw, p.interval)
		}
		if d, name, err := parseInterval(p.name); err != nil || d != p.interval || name != p.name {
			t.Fatalf("%q: interval name %q does not parse back to %v", raw, p.name, p.interval)
		}
		if p.loc != nil && p.interval%(24*time.Hour) != 0 {
			t.Fatalf("%q: tz with interval %v", raw, p.interval)
		}
		q := p.query([]string{"x"})
		b, err := q.Buckets()
		if err != nil || len(b)-1 < 1 || len(b)-1 > MaxPoints || len(b)-1 != p.points {
			t.Fatalf("%q: %d buckets (params say %d), %v", raw, len(b)-1, p.points, err)
		}
		if p.points*len(p.ids) > MaxTotalPoints {
			t.Fatalf("%q: %d ids x %d points", raw, len(p.ids), p.points)
		}
	})
}

// FuzzParseTopQuery: the same for GET /metrics/top, and the whole handler (index included)
// answers every query string with 200, 400 or 404.
func FuzzParseTopQuery(f *testing.F) {
	for _, s := range []string{
		"n=10&minutes=5&metric=clicks&by=ad",
		"n=1000&minutes=1440&metric=spend_micros&by=campaign&advertiser_id=a1",
		"start_time=2026-11-21T10:00:00Z&end_time=2026-11-21T11:00:00Z&by=advertiser&campaign_id=c3",
		"start_time=1795258920", "end_time=2026-11-21T09:55:00.5Z", "minutes=0", "n=1001", "by=ads",
	} {
		f.Add(s)
	}
	e := topEnv(f)
	f.Fuzz(func(t *testing.T, raw string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		cur := testNow.Unix() / 60
		p, err := parseTopParams(v, testNow)
		if err != nil {
			var ae *httpapi.Error
			if !errors.As(err, &ae) || ae.Code != httpapi.CodeInvalidArgument {
				t.Fatalf("%q: error %v is not invalid_argument", raw, err)
			}
		} else {
			if p.n < 1 || p.n > topn.MaxN || p.metric > topn.SpendMicros || !p.level.Valid() {
				t.Fatalf("%q: %+v", raw, p)
			}
			if p.from >= p.to || p.to-p.from > MaxTopMinutes || p.from < cur-MaxTopMinutes+1 || p.from > cur {
				t.Fatalf("%q: window [%d, %d) at minute %d", raw, p.from, p.to, cur)
			}
			for _, id := range []string{p.campaign, p.advertiser} {
				if id != "" && !event.ValidID(id) {
					t.Fatalf("%q: accepted id %q", raw, id)
				}
			}
		}
		for _, pr := range []httpapi.Principal{admin, adv1} {
			r := httptest.NewRequest("GET", "/metrics/top", nil)
			r.URL.RawQuery = raw
			r = r.WithContext(httpapi.WithPrincipal(r.Context(), pr))
			w := httptest.NewRecorder()
			e.mux.ServeHTTP(w, r)
			switch w.Code {
			case 200:
				if err != nil {
					t.Fatalf("%q: handler accepted what the parser refused", raw)
				}
			case 400, 404:
			default:
				t.Fatalf("%q as %+v: %d %s", raw, pr, w.Code, w.Body)
			}
		}
	})
}
