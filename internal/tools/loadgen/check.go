package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// CheckMode says whether a run compares /metrics with its ledger.
type CheckMode uint8

// Check modes.
const (
	CheckAuto CheckMode = iota // check, unless the server does not serve /metrics (404)
	CheckOn                    // check; a server without /metrics is an error
	CheckOff                   // do not check
)

var checkModeNames = [...]string{"auto", "on", "off"}

func (m CheckMode) String() string { return checkModeNames[m] }

// ParseCheckMode parses "auto", "on" or "off".
func ParseCheckMode(s string) (CheckMode, error) {
	for i, n := range checkModeNames {
		if s == n {
			return CheckMode(i), nil
		}
	}
	return 0, fmt.Errorf("check mode %q: want auto, on or off", s)
}

// Check statuses.
const (
	CheckOK      = "ok"
	CheckFailed  = "failed"  // a count differs from what was acknowledged
	CheckSkipped = "skipped" // not run (see Reason)
	CheckError   = "error"   // the metrics endpoints failed or answered outside the contract
)

// CheckResult compares GET /metrics (ad, campaign and advertiser series, per minute) and
// GET /metrics/top with the ledger, over the minutes of the run's event times.
type CheckResult struct {
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
	// Lost and DoubleCounted are the worst level's totals: events acknowledged but not
	// counted, and counted beyond what was acknowledged. Both must be 0.
	Lost           int64         `json:"lost"`
	DoubleCounted  int64         `json:"double_counted"`
	WindowStart    time.Time     `json:"window_start,omitzero"`
	WindowEnd      time.Time     `json:"window_end,omitzero"`
	CaughtUp       bool          `json:"caught_up"` // the advertiser totals matched before the full comparison
	CatchUpSeconds float64       `json:"catch_up_s"`
	Baseline       bool          `json:"baseline"` // counts from before the run were in the window and were added
	Levels         []LevelResult `json:"levels,omitempty"`
	Top            []TopResult   `json:"top,omitempty"`
	Problems       []string      `json:"problems,omitempty"` // the first mismatches
	ProblemCount   int           `json:"problem_count"`
}

func (c *CheckResult) writeText(w io.Writer) {
	switch c.Status {
	case CheckSkipped:
		fmt.Fprintf(w, "check: SKIPPED (%s)\n", c.Reason)
		return
	case CheckError:
		fmt.Fprintf(w, "check: ERROR %s\n", c.Reason)
		return
	case CheckOK:
		fmt.Fprintf(w, "check: OK: lost 0, double-counted 0; /metrics per minute at ad, campaign and advertiser level and /metrics/top match the acknowledgements (window %s-%s UTC, caught up after %.1fs)\n",
			c.WindowStart.Format("15:04"), c.WindowEnd.Format("15:04"), c.CatchUpSeconds)
		return
	}
	fmt.Fprintf(w, "check: FAILED: lost %d, double-counted %d (%s)\n", c.Lost, c.DoubleCounted, c.Reason)
	fmt.Fprintf(w, "  %-10s %7s %7s %7s %12s %13s\n", "level", "ids", "lost", "double", "bucket-lost", "bucket-double")
	for _, l := range c.Levels {
		fmt.Fprintf(w, "  %-10s %7d %7d %7d %12d %13d\n", l.Level, l.IDs, l.Lost, l.DoubleCounted, l.BucketLost, l.BucketDouble)
	}
	for _, t := range c.Top {
		if !t.ok() {
			fmt.Fprintf(w, "  top %s by %s: %d items, lost %d, double %d, misordered %d\n", t.Metric, t.By, t.Items, t.Lost, t.DoubleCounted, t.Misordered)
		}
	}
	for _, p := range c.Problems {
		fmt.Fprintf(w, "  - %s\n", p)
	}
	if more := c.ProblemCount - len(c.Problems); more > 0 {
		fmt.Fprintf(w, "  ... and %d more\n", more)
	}
}

// baselineMaxAds bounds the baseline fetch: with more ads than this and earlier counts in
// the window, the check is skipped rather than reading every ad's series first.
const baselineMaxAds = 200_000

func allIDs(lay Layout, lv Level) []string {
	var n int
	var id func(int) string
	switch lv {
	case LevelAd:
		n, id = lay.Ads, lay.AdID
	case LevelCampaign:
		n, id = lay.Campaigns, lay.CampaignID
	default:
		n, id = lay.Advertisers, lay.AdvertiserID
	}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = id(i)
	}
	return ids
}

func (o *observed) isZero() bool {
	for _, mins := range *o {
		for _, c := range mins {
			if !c.zero() {
				return false
			}
		}
	}
	return true
}

// measureBaseline reads what /metrics already counts for the layout around the run's
// window (an earlier run on the same ads), so the check can add it to the expectation.
func (r *runner) measureBaseline(ctx context.Context) error {
	now := floorDiv(time.Now().Unix(), 60)
	start := now - int64(r.o.Model.Lateness/time.Minute) - 5
	end := now + int64((r.o.Duration+r.o.Timeout)/time.Minute) + 10
	lay := r.o.Layout
	advs := allIDs(lay, LevelAdvertiser)
	obs, err := r.api.fetchMetrics(ctx, LevelAdvertiser, advs, start, end)
	if err != nil {
		return err
	}
	if obs.isZero() {
		return nil
	}
	if lay.Ads > baselineMaxAds {
		r.skipCheck = fmt.Sprintf("earlier traffic on these %d ads is in the window; use a fresh --id-prefix to check", lay.Ads)
		return nil
	}
	// Let the aggregate settle, so the baseline does not move under the run.
	deadline := time.Now().Add(r.o.CatchUpTimeout)
	for time.Now().Before(deadline) {
		if err := sleepCtx(ctx, time.Second); err != nil {
			return err
		}
		again, err := r.api.fetchMetrics(ctx, LevelAdvertiser, advs, start, end)
		if err != nil {
			return err
		}
		if sameCounts(obs, again) {
			break
		}
		obs = again
	}
	for lv := range numLevels {
		o, err := r.api.fetchMetrics(ctx, lv, allIDs(lay, lv), start, end)
		if err != nil {
			return err
		}
		for id, mins := range o {
			for t, c := range mins {
				if c.zero() {
					delete(mins, t)
				}
			}
			if len(mins) == 0 {
				delete(o, id)
			}
		}
		r.baseline[lv] = o
	}
	r.logf("baseline: earlier counts in the window on %d ads, %d campaigns, %d advertisers", len(r.baseline[LevelAd]), len(r.baseline[LevelCampaign]), len(r.baseline[LevelAdvertiser]))
	return nil
}

func sameCounts(a, b observed) bool {
	if len(a) != len(b) {
		return false
	}
	for id, am := range a {
		bm := b[id]
		for t, c := range am {
			bc := bm[t]
			if bc == nil && !c.zero() || bc != nil && *bc != *c {
				return false
			}
		}
		for t, c := range bm {
			if am[t] == nil && !c.zero() {
				return false
			}
		}
	}
	return true
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// check fills r.checkRes (and r.truth).
func (r *runner) check(ctx context.Context) {
	e, truth := buildExpected(r.ledger, r.o.Layout)
	r.truth = truth
	res := &r.checkRes
	switch {
	case r.o.Check == CheckOff:
		res.Status, res.Reason = CheckSkipped, "disabled"
		return
	case r.skipCheck != "":
		res.Status, res.Reason = CheckSkipped, r.skipCheck
		return
	case r.baselineErr != nil:
		res.Status, res.Reason = CheckError, "baseline: "+r.baselineErr.Error()
		return
	case e.start >= e.end:
		res.Status, res.Reason = CheckSkipped, "nothing was acknowledged"
		return
	}
	r.logf("checking /metrics against %d acknowledged events on %d ads", truth.Impressions+truth.Clicks+truth.InvalidClicks+truth.AddToCart+truth.Order, truth.AdsTouched)
	*res = r.compare(ctx, e, time.Now().Add(r.o.CatchUpTimeout))
	if res.Status == CheckSkipped {
		r.logf("check skipped: %s", res.Reason)
	}
}

// compare waits until /metrics has caught up with e (or the deadline), then compares every
// level and the top lists. It widens e's window by a minute on each side (events must not
// land there) and adds the baseline.
func (r *runner) compare(ctx context.Context, e *expected, deadline time.Time) CheckResult {
	e.start--
	e.end++
	var res CheckResult
	for lv, obs := range r.baseline {
		if obs != nil {
			e.addBaseline(Level(lv), obs)
			res.Baseline = true
		}
	}
	res.WindowStart, res.WindowEnd = time.Unix(e.start*60, 0).UTC(), time.Unix(e.end*60, 0).UTC()
	fail := func(err error) CheckResult {
		if errors.Is(err, errNoMetrics) && r.o.Check == CheckAuto {
			res.Status, res.Reason = CheckSkipped, err.Error()
		} else {
			res.Status, res.Reason = CheckError, err.Error()
		}
		return res
	}

	t0 := time.Now()
	caughtUp, err := r.catchUp(ctx, e, deadline)
	if err != nil {
		return fail(err)
	}
	res.CaughtUp, res.CatchUpSeconds = caughtUp, time.Since(t0).Seconds()

	// A level that does not match yet may still be catching up: compare again while time
	// remains, a few times at most.
	var p problems
	for attempt := 0; ; attempt++ {
		p = problems{}
		res.Levels = res.Levels[:0]
		ok := true
		for lv := range numLevels {
			ids := e.ids(lv)
			obs, err := r.api.fetchMetrics(ctx, lv, ids, e.start, e.end)
			if err != nil {
				return fail(err)
			}
			lr := compareLevel(e, lv, ids, obs, &p)
			ok = ok && lr.ok()
			res.Levels = append(res.Levels, lr)
		}
		if ok || attempt >= 2 || time.Now().Add(2*time.Second).After(deadline) {
			break
		}
		if err := sleepCtx(ctx, 2*time.Second); err != nil {
			return fail(err)
		}
	}
	for lv := range numLevels {
		for _, m := range [...]Metric{MetricClicks, MetricImpressions} {
			items, err := r.api.fetchTop(ctx, lv, m, maxTopN, e.start, e.end)
			if err != nil {
				return fail(err)
			}
			res.Top = append(res.Top, compareTop(e, lv, m, maxTopN, items, r.o.Layout.Prefix+"-", &p))
		}
	}
	res.Problems, res.ProblemCount = p.list, p.total
	res.summarize()
	return res
}

// summarize sets Status, Reason, Lost and DoubleCounted from the level and top results.
func (res *CheckResult) summarize() {
	var reasons []string
	for _, l := range res.Levels {
		res.Lost = max(res.Lost, l.Lost)
		res.DoubleCounted = max(res.DoubleCounted, l.DoubleCounted)
		if !l.ok() {
			reasons = append(reasons, l.Level+" series")
		}
	}
	for _, t := range res.Top {
		res.Lost = max(res.Lost, t.Lost)
		res.DoubleCounted = max(res.DoubleCounted, t.DoubleCounted)
		if !t.ok() {
			reasons = append(reasons, "top "+t.Metric+" by "+t.By)
		}
	}
	if len(reasons) == 0 {
		res.Status = CheckOK
		return
	}
	res.Status = CheckFailed
	res.Reason = "mismatch in " + strings.Join(reasons, ", ")
	if !res.CaughtUp {
		res.Reason += "; /metrics never caught up within the catch-up timeout"
	}
}

// catchUpStable is how long unchanged advertiser totals are taken to mean the aggregate
// has stopped moving (and what is missing will not come).
const catchUpStable = 10 * time.Second

// catchUp polls the advertiser totals until they are within the expected bounds, stop
// changing for catchUpStable, or the deadline passes. It reports whether they matched.
func (r *runner) catchUp(ctx context.Context, e *expected, deadline time.Time) (bool, error) {
	ids := e.ids(LevelAdvertiser)
	var prev observed
	var stableSince time.Time
	for {
		obs, err := r.api.fetchMetrics(ctx, LevelAdvertiser, ids, e.start, e.end)
		if err != nil {
			return false, err
		}
		var p problems
		if lr := compareLevel(e, LevelAdvertiser, ids, obs, &p); lr.Lost == 0 && lr.DoubleCounted == 0 {
			return true, nil
		}
		now := time.Now()
		if prev != nil && sameCounts(prev, obs) {
			if stableSince.IsZero() {
				stableSince = now
			} else if now.Sub(stableSince) >= catchUpStable {
				return false, nil
			}
		} else {
			stableSince = time.Time{}
		}
		if now.After(deadline) {
			return false, nil
		}
		prev = obs
		if err := sleepCtx(ctx, 500*time.Millisecond); err != nil {
			return false, err
		}
	}
}
