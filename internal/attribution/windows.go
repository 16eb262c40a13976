package attribution

import (
	"fmt"
	"strings"
	"time"

	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/event"
)

// maxWindowSpecs bounds the advertisers one --attribution-windows spec may name.
const maxWindowSpecs = 100_000

// ParseWindows parses per-advertiser windows, "adv1=14d/1d,adv2=720h/0": each advertiser id,
// '=', the click window, '/', the view window. A window is a Go duration ("36h") or whole
// days ("14d"), from 0 (never credited) to maxWindow. An empty spec names nobody.
func ParseWindows(spec string, maxWindow time.Duration) (map[string]Windows, error) {
	out := make(map[string]Windows)
	if strings.TrimSpace(spec) == "" {
		return out, nil
	}
	for i, item := range strings.Split(spec, ",") {
		if i >= maxWindowSpecs {
			return nil, fmt.Errorf("attribution windows: more than %d advertisers", maxWindowSpecs)
		}
		id, ws, ok := strings.Cut(strings.TrimSpace(item), "=")
		if !ok || !event.ValidID(id) {
			return nil, fmt.Errorf("attribution windows: %q: want advertiser_id=click/view", item)
		}
		cs, vs, ok := strings.Cut(ws, "/")
		if !ok {
			return nil, fmt.Errorf("attribution windows: %q: want advertiser_id=click/view", item)
		}
		var w Windows
		var err error
		if w.Click, err = catalog.ParseWindowAtMost(cs, maxWindow); err != nil {
			return nil, fmt.Errorf("attribution windows: %s: click window: %w", id, err)
		}
		if w.View, err = catalog.ParseWindowAtMost(vs, maxWindow); err != nil {
			return nil, fmt.Errorf("attribution windows: %s: view window: %w", id, err)
		}
		if _, dup := out[id]; dup {
			return nil, fmt.Errorf("attribution windows: %s named twice", id)
		}
		out[id] = w
	}
	return out, nil
}

// NewLastTouch returns the LastTouch policy of a deployment: defaults for every advertiser,
// overridden per advertiser.
func NewLastTouch(defaults Windows, perAdvertiser map[string]Windows) LastTouch {
	horizon := max(defaults.Click, defaults.View)
	for _, w := range perAdvertiser {
		horizon = max(horizon, w.Click, w.View)
	}
	return LastTouch{
		WindowsOf: func(adv string) Windows {
			if w, ok := perAdvertiser[adv]; ok {
				return w
			}
			return defaults
		},
		MaxWindow: max(horizon, time.Microsecond),
	}
}

// WindowChangeDelay is how long after an advertiser changes its windows (the time the
// catalog recorded) the new windows apply: to conversions whose time is at least this much
// later. It exceeds the default --max-clock-skew (5 min) plus the catalog feed's delivery
// (2 s), so every process node knows a change before it can accept a conversion it applies
// to, and a conversion is decided with the same windows whenever it is decided.
const WindowChangeDelay = 10 * time.Minute

// HistoryLookup returns an advertiser's windows that changed over time, and whether any
// were set (nil: the deployment's default); catalog.Catalog.WindowsAt is one.
type HistoryLookup func(advertiserID string, t time.Time) (click, view *time.Duration, ok bool)

// WithHistory returns p deciding with the windows in force for each conversion: those of
// lookup at the conversion's time minus WindowChangeDelay, each unset one falling back to
// p's. maxWindow bounds any window the lookup may return and becomes the horizon, so that
// touches are remembered as long as any advertiser may ask.
func WithHistory(p LastTouch, lookup HistoryLookup, maxWindow time.Duration) LastTouch {
	base := p
	p.WindowsAt = func(adv string, convTime int64) Windows {
		w := DefaultWindows
		if base.WindowsOf != nil {
			w = base.WindowsOf(adv)
		}
		click, view, _ := lookup(adv, time.UnixMicro(convTime).Add(-WindowChangeDelay))
		if click != nil {
			w.Click = *click
		}
		if view != nil {
			w.View = *view
		}
		return w
	}
	p.MaxWindow = max(p.MaxWindow, maxWindow)
	return p
}
