package attribution

import (
	"fmt"
	"strconv"
	"strings"
	"time"

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
		if w.Click, err = parseWindow(cs, maxWindow); err != nil {
			return nil, fmt.Errorf("attribution windows: %s: click window: %w", id, err)
		}
		if w.View, err = parseWindow(vs, maxWindow); err != nil {
			return nil, fmt.Errorf("attribution windows: %s: view window: %w", id, err)
		}
		if _, dup := out[id]; dup {
			return nil, fmt.Errorf("attribution windows: %s named twice", id)
		}
		out[id] = w
	}
	return out, nil
}

func parseWindow(s string, maxWindow time.Duration) (time.Duration, error) {
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseUint(days, 10, 16)
		if err != nil {
			return 0, fmt.Errorf("%q: want a duration such as 36h or whole days such as 14d", s)
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("%q: want a duration such as 36h or whole days such as 14d", s)
		}
	}
	if d < 0 || d > maxWindow {
		return 0, fmt.Errorf("%q: must be from 0 to %v", s, maxWindow)
	}
	return d, nil
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
