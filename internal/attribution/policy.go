package attribution

import (
	"time"
)

// TouchKind says how a user met an ad.
type TouchKind uint8

// Touch kinds. The numbers are stored on disk.
const (
	KindView  TouchKind = 1 // a valid impression
	KindClick TouchKind = 2 // a valid click
)

func (k TouchKind) String() string {
	switch k {
	case KindView:
		return "view"
	case KindClick:
		return "click"
	}
	return "unknown"
}

// Touch is one valid impression or click of a user on an ad of a catalog.
type Touch struct {
	Kind         TouchKind
	Time         int64  // event time, Unix microseconds
	Key          string // the event's idempotency key ("c:imp-1", "i:imp-1")
	AdID         string
	CampaignID   string
	AdvertiserID string
}

// Windows are how long after a touch a conversion may be credited to it.
type Windows struct {
	Click, View time.Duration
}

// DefaultWindows are the windows of an advertiser that configured none: 7 days after a
// click, 1 day after a view.
var DefaultWindows = Windows{Click: 7 * 24 * time.Hour, View: 24 * time.Hour}

// Reasons a conversion is credited to no touch.
const (
	ReasonNoTouch       = "no_touch"       // the user touched no ad of the catalog (that is still remembered)
	ReasonOutsideWindow = "outside_window" // every touch came after the conversion or before its window
)

// Policy decides which touch, if any, a conversion is credited to. It must be a pure
// function of its arguments, so that a decision replayed from the log is the same decision
// whatever order the partitions were read in.
type Policy interface {
	// Choose returns the index in touches (every remembered touch of the converting user on
	// an ad of the conversion's catalog, in any order) of the touch credited with a
	// conversion at convTime, or -1 and why none is.
	Choose(convTime int64, touches []Touch) (int, string)
	// Horizon is the longest time after a touch that any conversion may be credited to it:
	// touches older than that (plus the lateness the pipeline accepts) are forgotten.
	Horizon() time.Duration
	// Name names the model in explanations ("last_touch").
	Name() string
}

// LastTouch is last-touch attribution: a conversion is credited to the latest touch within
// its window before the conversion (a touch at the conversion's very microsecond counts),
// where a click wins over a view: the latest eligible click if there is one, else the latest
// eligible view. A touch is eligible when 0 <= convTime - touch time < the window of the
// touch's advertiser for its kind. Equal times are broken by the larger key, so the choice
// never depends on order.
type LastTouch struct {
	// WindowsOf returns an advertiser's windows; nil means DefaultWindows for all.
	WindowsOf func(advertiserID string) Windows
	// WindowsAt, if set, is used instead of WindowsOf: an advertiser's windows in force for
	// a conversion at convTime (Unix microseconds). It must answer the same for the same
	// arguments whenever it is asked (a history of changes, not the windows of the moment),
	// so that a decision replayed from the log is the same decision.
	WindowsAt func(advertiserID string, convTime int64) Windows
	// MaxWindow bounds every window WindowsOf returns (it is the Horizon).
	MaxWindow time.Duration
}

var _ Policy = LastTouch{}

// Name implements Policy.
func (LastTouch) Name() string { return "last_touch" }

// Horizon implements Policy.
func (p LastTouch) Horizon() time.Duration {
	if p.MaxWindow > 0 {
		return p.MaxWindow
	}
	return max(DefaultWindows.Click, DefaultWindows.View)
}

func (p LastTouch) window(t *Touch, convTime int64) time.Duration {
	w := DefaultWindows
	switch {
	case p.WindowsAt != nil:
		w = p.WindowsAt(t.AdvertiserID, convTime)
	case p.WindowsOf != nil:
		w = p.WindowsOf(t.AdvertiserID)
	}
	d := w.View
	if t.Kind == KindClick {
		d = w.Click
	}
	return min(d, p.Horizon())
}

// Choose implements Policy.
func (p LastTouch) Choose(convTime int64, touches []Touch) (int, string) {
	best := -1
	for i := range touches {
		t := &touches[i]
		age := convTime - t.Time
		if age < 0 || age >= p.window(t, convTime).Microseconds() {
			continue
		}
		if best < 0 || better(t, &touches[best]) {
			best = i
		}
	}
	switch {
	case best >= 0:
		return best, ""
	case len(touches) == 0:
		return -1, ReasonNoTouch
	}
	return -1, ReasonOutsideWindow
}

// better reports whether a beats b: a click beats a view, then the later time, then the
// larger key.
func better(a, b *Touch) bool {
	if a.Kind != b.Kind {
		return a.Kind == KindClick
	}
	if a.Time != b.Time {
		return a.Time > b.Time
	}
	return a.Key > b.Key
}
