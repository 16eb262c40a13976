package attribution

import (
	"testing"
	"time"
)

func TestLastTouchChoose(t *testing.T) {
	h := time.Hour.Microseconds()
	d := 24 * h
	conv := 100 * d
	click := func(key string, age int64) Touch {
		return Touch{Kind: KindClick, Key: key, Time: conv - age, AdvertiserID: "a"}
	}
	view := func(key string, age int64) Touch {
		return Touch{Kind: KindView, Key: key, Time: conv - age, AdvertiserID: "a"}
	}
	for _, tc := range []struct {
		name    string
		touches []Touch
		want    string // key, or the reason
	}{
		{"nothing", nil, ReasonNoTouch},
		{"latest click", []Touch{click("c1", 3*d), click("c2", 2*d), click("c3", 5*d)}, "c2"},
		{"a click beats a later view", []Touch{click("c1", 6*d), view("v1", h)}, "c1"},
		{"a view when no click is in its window", []Touch{click("c1", 8*d), view("v1", 2*h)}, "v1"},
		{"click window end is exclusive", []Touch{click("c1", 7*d)}, ReasonOutsideWindow},
		{"click just inside", []Touch{click("c1", 7*d-1)}, "c1"},
		{"view window end is exclusive", []Touch{view("v1", d)}, ReasonOutsideWindow},
		{"touch at the conversion's microsecond counts", []Touch{view("v1", 0)}, "v1"},
		{"touch after the conversion does not", []Touch{click("c1", -1)}, ReasonOutsideWindow},
		{"equal times: larger key", []Touch{click("c:b", h), click("c:a", h)}, "c:b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			i, reason := LastTouch{}.Choose(conv, tc.touches)
			got := reason
			if i >= 0 {
				got = tc.touches[i].Key
			}
			if got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestLastTouchPerAdvertiserWindows(t *testing.T) {
	p := NewLastTouch(DefaultWindows, map[string]Windows{"short": {Click: time.Hour, View: 0}, "long": {Click: 30 * 24 * time.Hour, View: time.Hour}})
	if p.Horizon() != 30*24*time.Hour {
		t.Fatalf("horizon %v", p.Horizon())
	}
	conv := int64(1000 * 24 * time.Hour / time.Microsecond)
	age := func(d time.Duration) int64 { return conv - d.Microseconds() }
	ts := []Touch{
		{Kind: KindClick, Key: "short-click", Time: age(2 * time.Hour), AdvertiserID: "short"}, // past its 1h window
		{Kind: KindView, Key: "short-view", Time: age(time.Minute), AdvertiserID: "short"},     // views never count
		{Kind: KindClick, Key: "long-click", Time: age(20 * 24 * time.Hour), AdvertiserID: "long"},
	}
	if i, _ := p.Choose(conv, ts); i != 2 {
		t.Fatalf("chose %d, want the long advertiser's 20-day-old click", i)
	}
	if i, r := p.Choose(conv, ts[:2]); i != -1 || r != ReasonOutsideWindow {
		t.Fatalf("chose %d (%s), want none", i, r)
	}
}

func TestParseWindows(t *testing.T) {
	got, err := ParseWindows("adv1=14d/1d, adv2=36h/0", 90*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if got["adv1"] != (Windows{14 * 24 * time.Hour, 24 * time.Hour}) || got["adv2"] != (Windows{36 * time.Hour, 0}) {
		t.Fatalf("got %v", got)
	}
	for _, bad := range []string{"adv1", "adv1=1d", "adv1=1d/x", "bad id=1d/1d", "a=91d/1d", "a=-1h/1h", "a=1d/1d,a=2d/2d", "a=99999999999d/1d"} {
		if _, err := ParseWindows(bad, 90*24*time.Hour); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func FuzzParseWindows(f *testing.F) {
	for _, s := range []string{"", "adv1=14d/1d", "a=36h/0,b=1d/1h", "=/", "a=1d/1d/1d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		ws, err := ParseWindows(spec, 90*24*time.Hour)
		if err != nil {
			return
		}
		for id, w := range ws {
			if w.Click < 0 || w.View < 0 || w.Click > 90*24*time.Hour || w.View > 90*24*time.Hour || id == "" {
				t.Fatalf("%q: accepted %q=%v", spec, id, w)
			}
		}
	})
}

// TestWithHistory: the windows that decide a conversion are those in force at the
// conversion's time minus WindowChangeDelay (an unset one falls back to the deployment's),
// whenever the decision is made; and the horizon covers the largest window allowed.
func TestWithHistory(t *testing.T) {
	changed := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	twoDays, hour := 48*time.Hour, time.Hour
	lookup := func(adv string, at time.Time) (click, view *time.Duration, ok bool) {
		if adv != "a" || at.Before(changed) {
			return nil, nil, adv == "a"
		}
		return &twoDays, &hour, true // click 2 days (was 7), view 1 hour (was 1 day)
	}
	p := WithHistory(NewLastTouch(DefaultWindows, map[string]Windows{"b": {Click: time.Hour, View: 0}}), lookup, 90*24*time.Hour)
	if p.Horizon() != 90*24*time.Hour {
		t.Fatalf("horizon %v", p.Horizon())
	}
	at := func(tm time.Time) int64 { return tm.UnixMicro() }
	for _, tc := range []struct {
		name string
		conv time.Time
		t    Touch
		want bool
	}{
		{"old click window before the change takes effect", changed.Add(WindowChangeDelay - time.Microsecond), Touch{Kind: KindClick, AdvertiserID: "a", Time: at(changed.Add(-5 * 24 * time.Hour))}, true},
		{"new click window once it does", changed.Add(WindowChangeDelay), Touch{Kind: KindClick, AdvertiserID: "a", Time: at(changed.Add(-5 * 24 * time.Hour))}, false},
		{"new view window", changed.Add(WindowChangeDelay), Touch{Kind: KindView, AdvertiserID: "a", Time: at(changed.Add(WindowChangeDelay - 2*time.Hour))}, false},
		{"old view window", changed, Touch{Kind: KindView, AdvertiserID: "a", Time: at(changed.Add(-2 * time.Hour))}, true},
		{"--attribution-windows still applies to others", changed.Add(WindowChangeDelay), Touch{Kind: KindClick, AdvertiserID: "b", Time: at(changed.Add(WindowChangeDelay - 2*time.Hour))}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			i, _ := p.Choose(at(tc.conv), []Touch{tc.t})
			if got := i == 0; got != tc.want {
				t.Errorf("credited %v, want %v", got, tc.want)
			}
		})
	}
}
