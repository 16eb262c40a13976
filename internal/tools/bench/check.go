package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/adpulse/adpulse/client"
)

// bound is the range a count must lie in: Lo was certainly acknowledged, Hi adds what may have
// been recorded without an answer.
type bound struct{ Lo, Hi int64 }

// expectation is the ground truth of one workload: per ad of one layout, over a window.
type expectation struct {
	metric   string // "clicks" or "impressions"
	prefix   string // ids of the layout start with prefix + "-"
	from, to time.Time
	ads      map[string]bound
}

func newExpectation(metric, prefix string) *expectation {
	return &expectation{metric: metric, prefix: prefix, ads: map[string]bound{}}
}

// CheckResult compares /metrics (per-ad totals over the window) and /metrics/top with the
// ground truth. Lost and Double must both be 0.
type CheckResult struct {
	Status         string   `json:"status"` // ok, failed, error
	Reason         string   `json:"reason,omitempty"`
	Acknowledged   int64    `json:"acknowledged"`
	Uncertain      int64    `json:"uncertain"`
	Ads            int      `json:"ads"`
	Lost           int64    `json:"lost"`
	Double         int64    `json:"double_counted"`
	TopLost        int64    `json:"top_lost"`
	TopDouble      int64    `json:"top_double_counted"`
	TopMisordered  int      `json:"top_misordered"`
	CatchUpSeconds float64  `json:"catch_up_s"`
	Problems       []string `json:"problems,omitempty"`
}

func (r *CheckResult) ok() bool { return r.Status == "ok" }

func (r *CheckResult) problem(format string, args ...any) {
	if len(r.Problems) < 10 {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
}

// check waits (up to catchUp) until /metrics counts what e expects, then compares every ad's
// total and the top list (n=1000, by ad) with e.
func check(ctx context.Context, t *target, e *expectation, catchUp time.Duration) CheckResult {
	var r CheckResult
	ads := make([]string, 0, len(e.ads))
	for ad, b := range e.ads {
		ads = append(ads, ad)
		r.Acknowledged += b.Lo
		r.Uncertain += b.Hi - b.Lo
	}
	slices.Sort(ads)
	r.Ads = len(ads)
	if len(ads) == 0 {
		r.Status, r.Reason = "error", "nothing was sent"
		return r
	}
	compare := func(got map[string]int64) (lost, double int64) {
		for _, ad := range ads {
			b, n := e.ads[ad], got[ad]
			switch {
			case n < b.Lo:
				lost += b.Lo - n
			case n > b.Hi:
				double += n - b.Hi
			}
		}
		return lost, double
	}
	t0 := time.Now()
	deadline := t0.Add(catchUp)
	var got map[string]int64
	for {
		var err error
		got, err = t.totals(ctx, ads, e.metric, e.from, e.to)
		if err != nil {
			r.Status, r.Reason = "error", err.Error()
			return r
		}
		lost, double := compare(got)
		if lost == 0 && double == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		if sleepCtx(ctx, 250*time.Millisecond) != nil {
			break
		}
	}
	r.CatchUpSeconds = time.Since(t0).Seconds()
	r.Lost, r.Double = compare(got)
	for _, ad := range ads {
		if b, n := e.ads[ad], got[ad]; n < b.Lo || n > b.Hi {
			r.problem("%s %s: counted %d, acknowledged %d..%d", ad, e.metric, n, b.Lo, b.Hi)
		}
	}

	const n = 1000
	items, err := t.top(ctx, e.metric, n, e.from, e.to)
	// A restarted server answers 503 while its top-N index is rebuilt (the contract says
	// retry): ask again until the same deadline.
	for ae := (*client.APIError)(nil); errors.As(err, &ae) && ae.Temporary() && time.Now().Before(deadline); {
		if sleepCtx(ctx, 500*time.Millisecond) != nil {
			break
		}
		items, err = t.top(ctx, e.metric, n, e.from, e.to)
	}
	if err != nil {
		r.Status, r.Reason = "error", "top: "+err.Error()
		return r
	}
	listed := map[string]bool{}
	for i, it := range items {
		listed[it.id] = true
		if i > 0 {
			p := items[i-1]
			if p.value < it.value || p.value == it.value && p.id >= it.id {
				r.TopMisordered++
				r.problem("top: %s (%d) listed after %s (%d)", it.id, it.value, p.id, p.value)
			}
		}
		b, ours := e.ads[it.id]
		switch {
		case !ours && strings.HasPrefix(it.id, e.prefix+"-"):
			r.TopDouble += it.value
			r.problem("top: %s listed with %d, nothing acknowledged", it.id, it.value)
		case !ours:
		case it.value < b.Lo:
			r.TopLost += b.Lo - it.value
			r.problem("top: %s listed with %d, acknowledged %d..%d", it.id, it.value, b.Lo, b.Hi)
		case it.value > b.Hi:
			r.TopDouble += it.value - b.Hi
			r.problem("top: %s listed with %d, acknowledged %d..%d", it.id, it.value, b.Lo, b.Hi)
		}
	}
	var floor int64
	if len(items) >= n {
		floor = items[len(items)-1].value
	}
	for _, ad := range ads {
		if b := e.ads[ad]; b.Lo > floor && !listed[ad] {
			r.TopLost += b.Lo - floor
			r.problem("top: %s missing, acknowledged %d..%d (list floor %d)", ad, b.Lo, b.Hi, floor)
		}
	}
	r.Status = "ok"
	if r.Lost+r.Double+r.TopLost+r.TopDouble > 0 || r.TopMisordered > 0 {
		r.Status = "failed"
		r.Reason = fmt.Sprintf("lost %d, double-counted %d in /metrics; top: lost %d, double %d, misordered %d",
			r.Lost, r.Double, r.TopLost, r.TopDouble, r.TopMisordered)
	}
	return r
}
