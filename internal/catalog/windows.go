package catalog

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/adpulse/adpulse/internal/httpapi"
)

// Attribution windows of advertisers.
//
// An advertiser may set how long after a click or a view a conversion is credited to it;
// unset (nil) means the deployment's default (--attribution-click-window,
// --attribution-view-window). Attribution must decide a conversion the same way whenever it
// is decided or replayed, so every change is kept with the time it was made, like time zone
// changes, and the windows that apply to a conversion are those in force at the
// conversion's time (attribution.CatalogWindows).

// MaxAttributionWindow bounds every attribution window: touches are remembered that long.
const MaxAttributionWindow = 90 * 24 * time.Hour

// WindowChange is one change of an advertiser's attribution windows as recorded when it was
// made: the windows from At on (nil: the deployment's default).
type WindowChange struct {
	At          time.Time
	Click, View *time.Duration
}

// ParseWindow parses an attribution window: a Go duration ("36h", "90m") or whole days
// ("14d"), from 0 (never credited) to MaxAttributionWindow.
func ParseWindow(s string) (time.Duration, error) {
	d, err := ParseWindowAtMost(s, MaxAttributionWindow)
	if err == nil && d%time.Second != 0 {
		return 0, fmt.Errorf("%q: must be a whole number of seconds", s)
	}
	return d, err
}

// ParseWindowAtMost is ParseWindow with its own bound (the flags' windows are bounded by
// the policy's horizon).
func ParseWindowAtMost(s string, limit time.Duration) (time.Duration, error) {
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
	if d < 0 || d > limit {
		if limit%(24*time.Hour) == 0 {
			return 0, fmt.Errorf("%q: must be from 0 to %dd", s, limit/(24*time.Hour))
		}
		return 0, fmt.Errorf("%q: must be from 0 to %v", s, limit)
	}
	return d, nil
}

// FormatWindow is the API's form of a window, in its largest whole unit: "7d", "36h",
// "90m", "5400s" (ParseWindow reads every one of them back).
func FormatWindow(d time.Duration) string {
	for _, u := range []struct {
		d    time.Duration
		name string
	}{{24 * time.Hour, "d"}, {time.Hour, "h"}, {time.Minute, "m"}} {
		if d%u.d == 0 {
			return strconv.FormatInt(int64(d/u.d), 10) + u.name
		}
	}
	return strconv.FormatInt(int64(d/time.Second), 10) + "s"
}

// parseOptWindow parses an optional window of a request body (null or absent: nil).
func parseOptWindow(field string, s *string) (*time.Duration, error) {
	if s == nil {
		return nil, nil
	}
	d, err := ParseWindow(*s)
	if err != nil {
		return nil, httpapi.BadField(field, err.Error())
	}
	return &d, nil
}

func formatOptWindow(d *time.Duration) *string {
	if d == nil {
		return nil
	}
	s := FormatWindow(*d)
	return &s
}

func sameWindow(a, b *time.Duration) bool {
	return (a == nil) == (b == nil) && (a == nil || *a == *b)
}

func nullDuration(n sql.NullInt64) *time.Duration {
	if !n.Valid {
		return nil
	}
	d := time.Duration(n.Int64) * time.Microsecond
	return &d
}

func durationArg(d *time.Duration) any {
	if d == nil {
		return nil
	}
	return d.Microseconds()
}

// currentWindows reads an advertiser's windows in force (nil, nil when never set) and the
// time of the last change (0 when none).
func (c *Catalog) currentWindows(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, id string) (click, view *time.Duration, last int64, err error) {
	var cl, vw sql.NullInt64
	err = q.QueryRowContext(ctx, c.d.q(`SELECT changed_at, click_window_us, view_window_us FROM advertiser_attribution_windows WHERE advertiser_id = ? ORDER BY changed_at DESC LIMIT 1`), id).
		Scan(&last, &cl, &vw)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil, 0, nil
	}
	if err != nil {
		return nil, nil, 0, err
	}
	return nullDuration(cl), nullDuration(vw), last, nil
}

// recordWindowChange stores the advertiser's windows from now on, if they differ from the
// ones in force. Times are unique per advertiser: a second change within the same
// microsecond is recorded one microsecond later.
func (c *Catalog) recordWindowChange(ctx context.Context, tx *sql.Tx, a *Advertiser, now int64) (*WindowChange, error) {
	click, view, last, err := c.currentWindows(ctx, tx, a.ID)
	if err != nil {
		return nil, err
	}
	if sameWindow(click, a.ClickWindow) && sameWindow(view, a.ViewWindow) {
		return nil, nil
	}
	at := max(now, last+1)
	if _, err := tx.ExecContext(ctx, c.d.q(`INSERT INTO advertiser_attribution_windows (advertiser_id, changed_at, click_window_us, view_window_us) VALUES (?, ?, ?, ?)`),
		a.ID, at, durationArg(a.ClickWindow), durationArg(a.ViewWindow)); err != nil {
		return nil, err
	}
	return &WindowChange{At: fromMicros(at), Click: a.ClickWindow, View: a.ViewWindow}, nil
}

// scanWindowChanges reads rows of (advertiser_id, changed_at, click_window_us,
// view_window_us) into per-advertiser histories.
func scanWindowChanges(out map[string][]WindowChange) func(*sql.Rows) error {
	return func(r *sql.Rows) error {
		var id string
		var at int64
		var cl, vw sql.NullInt64
		if err := r.Scan(&id, &at, &cl, &vw); err != nil {
			return err
		}
		out[id] = append(out[id], WindowChange{At: fromMicros(at), Click: nullDuration(cl), View: nullDuration(vw)})
		return nil
	}
}

func (c *Catalog) loadWindowChanges(ctx context.Context) (map[string][]WindowChange, error) {
	rows, err := c.db.QueryContext(ctx, c.d.q(`SELECT advertiser_id, changed_at, click_window_us, view_window_us FROM advertiser_attribution_windows ORDER BY advertiser_id, changed_at`))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make(map[string][]WindowChange)
	scan := scanWindowChanges(out)
	for rows.Next() {
		if err := scan(rows); err != nil {
			return nil, err
		}
	}
	return out, rows.Err()
}

// WindowsAt returns the advertiser's attribution windows in force at t (nil: the default),
// from memory, and whether the advertiser is known.
func (c *Catalog) WindowsAt(advertiserID string, t time.Time) (click, view *time.Duration, ok bool) {
	r, _, ok := c.advertisers.get(advertiserID)
	if !ok || r == nil {
		return nil, nil, false
	}
	for i := len(r.WindowChanges) - 1; i >= 0; i-- {
		if ch := &r.WindowChanges[i]; !ch.At.After(t) {
			return ch.Click, ch.View, true
		}
	}
	return nil, nil, true
}
