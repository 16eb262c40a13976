package metricstore

import (
	"errors"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
)

func TestBuckets(t *testing.T) {
	utc := func(s string) time.Time {
		tm, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	zone := func(name string) *time.Location {
		l, err := time.LoadLocation(name)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	cases := []struct {
		name       string
		start, end string
		interval   time.Duration
		loc        *time.Location
		want       []string // boundaries
	}{
		{"1m exact", "2026-11-21T10:00:00Z", "2026-11-21T10:03:00Z", time.Minute, nil,
			[]string{"2026-11-21T10:00:00Z", "2026-11-21T10:01:00Z", "2026-11-21T10:02:00Z", "2026-11-21T10:03:00Z"}},
		{"5m floors start, ceils end", "2026-11-21T10:07:30Z", "2026-11-21T10:10:01Z", 5 * time.Minute, nil,
			[]string{"2026-11-21T10:05:00Z", "2026-11-21T10:10:00Z", "2026-11-21T10:15:00Z"}},
		{"7m aligned since epoch", "1970-01-01T00:15:00Z", "1970-01-01T00:20:00Z", 7 * time.Minute, nil,
			[]string{"1970-01-01T00:14:00Z", "1970-01-01T00:21:00Z"}},
		{"1d UTC", "2026-11-21T10:00:00Z", "2026-11-22T00:00:00Z", 24 * time.Hour, nil,
			[]string{"2026-11-21T00:00:00Z", "2026-11-22T00:00:00Z"}},
		{"1d UTC as a location", "2026-11-21T10:00:00Z", "2026-11-22T00:00:00Z", 24 * time.Hour, time.UTC,
			[]string{"2026-11-21T00:00:00Z", "2026-11-22T00:00:00Z"}},
		{"1d Kolkata", "2026-11-21T10:00:00Z", "2026-11-21T19:00:00Z", 24 * time.Hour, zone("Asia/Kolkata"),
			[]string{"2026-11-20T18:30:00Z", "2026-11-21T18:30:00Z", "2026-11-22T18:30:00Z"}},
		{"1d Kolkata at local midnight", "2026-11-20T18:30:00Z", "2026-11-21T18:30:00Z", 24 * time.Hour, zone("Asia/Kolkata"),
			[]string{"2026-11-20T18:30:00Z", "2026-11-21T18:30:00Z"}},
		{"1d New York across spring forward (23h)", "2026-03-08T12:00:00Z", "2026-03-09T12:00:00Z", 24 * time.Hour, zone("America/New_York"),
			[]string{"2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z", "2026-03-10T04:00:00Z"}},
		{"1d New York across fall back (25h)", "2026-11-01T12:00:00Z", "2026-11-01T13:00:00Z", 24 * time.Hour, zone("America/New_York"),
			[]string{"2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z"}},
		{"2d Kolkata aligned to local day numbers", "2026-11-21T10:00:00Z", "2026-11-21T11:00:00Z", 48 * time.Hour, zone("Asia/Kolkata"),
			[]string{"2026-11-20T18:30:00Z", "2026-11-22T18:30:00Z"}},
		{"1h ignores the zone", "2026-11-21T10:10:00Z", "2026-11-21T10:20:00Z", time.Hour, zone("Asia/Kolkata"),
			[]string{"2026-11-21T10:00:00Z", "2026-11-21T11:00:00Z"}},
	}
	for _, c := range cases {
		q := Query{Level: LevelAd, Start: utc(c.start), End: utc(c.end), Interval: c.interval, Location: c.loc}
		b, err := q.Buckets()
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		var got []string
		for _, m := range b {
			got = append(got, time.Unix(m*60, 0).UTC().Format(time.RFC3339))
		}
		if len(got) != len(c.want) {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
			continue
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Errorf("%s: got %v, want %v", c.name, got, c.want)
				break
			}
		}
	}
	bad := []Query{
		{Level: LevelAd, Start: utc("2026-11-21T10:00:00Z"), End: utc("2026-11-21T10:00:00Z"), Interval: time.Minute},
		{Level: LevelAd, Start: utc("2026-11-21T10:00:00Z"), End: utc("2026-11-21T11:00:00Z"), Interval: 90 * time.Second},
		{Level: 7, Start: utc("2026-11-21T10:00:00Z"), End: utc("2026-11-21T11:00:00Z"), Interval: time.Minute},
		{Level: LevelAd, Start: utc("1990-11-21T10:00:00Z"), End: utc("2026-11-21T11:00:00Z"), Interval: time.Minute},
	}
	for _, q := range bad {
		if _, err := q.Buckets(); !errors.Is(err, ErrInvalidQuery) {
			t.Errorf("Buckets(%+v) = %v, want ErrInvalidQuery", q, err)
		}
	}
}

func TestCountsAdd(t *testing.T) {
	var a, b Counts
	a.AddInvalid(1, 2)
	a.AddInteraction("x", 1)
	b.AddInvalid(1, 1)
	b.AddInvalid(2, 1)
	b.Clicks = 3
	a.Add(&b)
	want := Counts{Clicks: 3, InvalidClicks: 4, InvalidByReason: map[event.Reason]int64{1: 3, 2: 1}, Interactions: map[string]int64{"x": 1}}
	if !a.Equal(&want) {
		t.Fatalf("got %v, want %v", a, want)
	}
}
