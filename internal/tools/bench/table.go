package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"
)

// Result is a whole bench run: what was measured on each target, and the table rows.
type Result struct {
	Started        time.Time       `json:"started"`
	ElapsedSeconds float64         `json:"elapsed_s"`
	Size           string          `json:"size"`
	Command        string          `json:"command"`
	Seed           uint64          `json:"seed"`
	Machine        Machine         `json:"machine"`
	Scenarios      []string        `json:"scenarios"`
	Targets        []*TargetResult `json:"targets"`
	Rows           []Row           `json:"rows"`
}

// TargetResult is everything measured on one target (adpulse or a baseline). A nil field is a
// scenario that did not run or failed (see Errors).
type TargetResult struct {
	Name        string          `json:"name"`
	Soak        *SoakResult     `json:"soak,omitempty"`
	ClicksFixed *RunStats       `json:"clicks_fixed,omitempty"`
	ClicksSat   *RunStats       `json:"clicks_saturation,omitempty"`
	ClickCheck  *CheckResult    `json:"click_check,omitempty"`
	Hot         *HotStats       `json:"hot,omitempty"`
	Events      *EventsStats    `json:"events,omitempty"`
	EventsCheck *CheckResult    `json:"events_check,omitempty"`
	Freshness   *FreshnessStats `json:"freshness,omitempty"`
	History     *HistoryStats   `json:"history,omitempty"`
	Queries     *QueryStats     `json:"queries,omitempty"`
	Recovery    *RecoveryStats  `json:"recovery,omitempty"`
	Restart     *RestartStats   `json:"restart,omitempty"`

	// From /proc of the serving process (adpulse) or the backing server (baselines; see
	// ResourceNote). Zero when unknown.
	RSSNow         int64   `json:"rss_bytes"`
	RSSPeak        int64   `json:"rss_peak_bytes"`
	RSSWithHistory int64   `json:"rss_with_history_bytes"`
	CPUClicksFixed float64 `json:"cpu_s_per_million_clicks_fixed"`
	CPUClicks      float64 `json:"cpu_s_per_million_clicks"`
	CPUEvents      float64 `json:"cpu_s_per_million_events"`
	ResourceNote   string  `json:"resource_note,omitempty"`

	ProfileClicks string   `json:"profile_clicks,omitempty"`
	ProfileEvents string   `json:"profile_events,omitempty"`
	ProfileTop    string   `json:"profile_top,omitempty"`
	ProfileHeap   string   `json:"profile_heap,omitempty"` // live heap once the history settled
	Errors        []string `json:"errors,omitempty"`
}

// QueryStats is /metrics and /metrics/top latency on the store holding the history.
type QueryStats struct {
	MetricsQuery  string  `json:"metrics_query"`
	Metrics       Latency `json:"metrics_latency_us"`
	MetricsFailed int64   `json:"metrics_failed"`
	MetricsError  string  `json:"metrics_error,omitempty"`
	TopQuery      string  `json:"top_query"`
	Top           Latency `json:"top_latency_us"`
	TopFailed     int64   `json:"top_failed"`
	TopError      string  `json:"top_error,omitempty"`
	Load1         float64 `json:"load_avg_1m"`
}

// Row is one line of the table: a figure on every target, the goal, and how adpulse compares.
type Row struct {
	ID     string `json:"id"`
	Figure string `json:"figure"`
	Unit   string `json:"unit"`   // "/s", "us", "s", "bytes", "cpu-s", "count"
	Better string `json:"better"` // "higher" or "lower"
	Goal   string `json:"goal,omitempty"`
	// Met: "yes" or "no" when the row has a goal and adpulse was measured, else "".
	Met   string `json:"met,omitempty"`
	Cells []Cell `json:"cells"`
}

// Cell is one target's figure in a row.
type Cell struct {
	Target string   `json:"target"`
	Value  *float64 `json:"value,omitempty"` // nil: not measured
	Text   string   `json:"text"`
	// Ratio is adpulse / this target (baselines only, when both were measured and it is
	// defined); Ahead says whether adpulse is better on this row.
	Ratio *float64 `json:"ratio_adpulse_over_this,omitempty"`
	Ahead string   `json:"adpulse_ahead,omitempty"` // "yes", "no", "equal"
	Load1 float64  `json:"load_avg_1m,omitempty"`
}

type goal struct {
	op string // ">=" or "<="
	v  float64
}

type rowSpec struct {
	id, figure, unit, better string
	goal                     *goal
	get                      func(tr *TargetResult) (v float64, load float64, ok bool)
}

func specs(res *Result) []rowSpec {
	var o struct {
		rate       float64
		histAds    int
		topN, topM int
	}
	o.rate, o.histAds, o.topN, o.topM = 20000, 0, 100, 60
	for _, t := range res.Targets {
		if t.ClicksFixed != nil && o.rate == 20000 && t.ClicksFixed.Elapsed > 0 {
			o.rate = float64(t.ClicksFixed.Requests) / max(t.ClicksFixed.Elapsed, 1e-9)
		}
		if t.History != nil && o.histAds == 0 {
			o.histAds = t.History.Ads
		}
	}
	fixed := func(f func(*RunStats) float64) func(*TargetResult) (float64, float64, bool) {
		return func(tr *TargetResult) (float64, float64, bool) {
			if tr.ClicksFixed == nil {
				return 0, 0, false
			}
			return f(tr.ClicksFixed), tr.ClicksFixed.Load1, true
		}
	}
	sat := func(f func(*RunStats) float64) func(*TargetResult) (float64, float64, bool) {
		return func(tr *TargetResult) (float64, float64, bool) {
			if tr.ClicksSat == nil {
				return 0, 0, false
			}
			return f(tr.ClicksSat), tr.ClicksSat.Load1, true
		}
	}
	hot := func(f func(*HotStats) float64) func(*TargetResult) (float64, float64, bool) {
		return func(tr *TargetResult) (float64, float64, bool) {
			if tr.Hot == nil {
				return 0, 0, false
			}
			return f(tr.Hot), tr.Hot.Hot.Load1, true
		}
	}
	exact := func(c *CheckResult) (float64, float64, bool) {
		if c == nil || c.Status == "error" {
			return 0, 0, false
		}
		return float64(c.Lost + c.Double + c.TopLost + c.TopDouble + int64(c.TopMisordered)), 0, true
	}
	histNote := ""
	if o.histAds > 0 {
		histNote = fmt.Sprintf(" (%s ads, a day of data)", groupDigits(int64(o.histAds)))
	}
	return []rowSpec{
		{"clicks_fixed_rate", "GET /c acknowledged clicks/s, open model at the target rate", "/s", "higher", nil, fixed(func(r *RunStats) float64 { return r.Throughput })},
		{"clicks_fixed_p50", "GET /c p50 latency at the fixed rate", "us", "lower", nil, fixed(func(r *RunStats) float64 { return float64(r.Latency.P50) })},
		{"clicks_fixed_p99", "GET /c p99 latency at the fixed rate", "us", "lower", &goal{"<=", 10_000}, fixed(func(r *RunStats) float64 { return float64(r.Latency.P99) })},
		{"clicks_fixed_p999", "GET /c p99.9 latency at the fixed rate", "us", "lower", nil, fixed(func(r *RunStats) float64 { return float64(r.Latency.P999) })},
		{"clicks_sat_rate", "GET /c acknowledged clicks/s at saturation (closed model)", "/s", "higher", &goal{">=", 30_000}, sat(func(r *RunStats) float64 { return r.Throughput })},
		{"clicks_sat_p50", "GET /c p50 latency at saturation", "us", "lower", nil, sat(func(r *RunStats) float64 { return float64(r.Latency.P50) })},
		{"clicks_sat_p99", "GET /c p99 latency at saturation", "us", "lower", nil, sat(func(r *RunStats) float64 { return float64(r.Latency.P99) })},
		{"clicks_sat_p999", "GET /c p99.9 latency at saturation", "us", "lower", nil, sat(func(r *RunStats) float64 { return float64(r.Latency.P999) })},
		{"clicks_exact", "clicks lost + double-counted in /metrics and top-N (ground truth)", "count", "lower", &goal{"<=", 0}, func(tr *TargetResult) (float64, float64, bool) { return exact(tr.ClickCheck) }},
		{"hot_rate_ratio", "GET /c clicks/s at saturation with one ad taking half, / the same run without", "x", "higher", nil, hot(func(h *HotStats) float64 { return h.Hot.Throughput / max(h.Normal.Throughput, 1e-9) })},
		{"hot_lag_max", "most messages not yet aggregated, hot run (whole log)", "count", "lower", nil, hot(func(h *HotStats) float64 { return float64(h.HotLagMax) })},
		{"hot_lag_ratio", "most messages not yet aggregated, hot run / run without", "x", "lower", nil, hot(func(h *HotStats) float64 { return float64(h.HotLagMax) / max(float64(h.NormalLagMax), 1) })},
		{"hot_exact", "hot scenario clicks lost + double-counted in /metrics and top-N", "count", "lower", &goal{"<=", 0}, func(tr *TargetResult) (float64, float64, bool) {
			if tr.Hot == nil {
				return 0, 0, false
			}
			return exact(&tr.Hot.Check)
		}},
		{"events_rate", "POST /events accepted events/s", "/s", "higher", &goal{">=", 1_000_000}, func(tr *TargetResult) (float64, float64, bool) {
			if tr.Events == nil {
				return 0, 0, false
			}
			return tr.Events.PerSecond, tr.Events.Load1, true
		}},
		{"events_batch_p99", "POST /events p99 latency of one batch", "us", "lower", nil, func(tr *TargetResult) (float64, float64, bool) {
			if tr.Events == nil {
				return 0, 0, false
			}
			return float64(tr.Events.BatchLatency.P99), tr.Events.Load1, true
		}},
		{"events_exact", "events lost + double-counted in /metrics and top-N", "count", "lower", &goal{"<=", 0}, func(tr *TargetResult) (float64, float64, bool) { return exact(tr.EventsCheck) }},
		{"fresh_p50", "click-to-visible in /metrics, p50", "us", "lower", nil, func(tr *TargetResult) (float64, float64, bool) {
			if tr.Freshness == nil || tr.Freshness.Samples == 0 {
				return 0, 0, false
			}
			return float64(tr.Freshness.Latency.P50), tr.Freshness.Load1, true
		}},
		{"fresh_p99", "click-to-visible in /metrics, p99", "us", "lower", &goal{"<=", 1_000_000}, func(tr *TargetResult) (float64, float64, bool) {
			if tr.Freshness == nil || tr.Freshness.Samples == 0 {
				return 0, 0, false
			}
			return float64(tr.Freshness.Latency.P99), tr.Freshness.Load1, true
		}},
		{"fresh_ack_p50", "acknowledged-to-visible in /metrics, p50", "us", "lower", nil, func(tr *TargetResult) (float64, float64, bool) {
			if tr.Freshness == nil || tr.Freshness.Samples == 0 {
				return 0, 0, false
			}
			return float64(tr.Freshness.AckToVisible.P50), tr.Freshness.Load1, true
		}},
		{"fresh_ack_p99", "acknowledged-to-visible in /metrics, p99", "us", "lower", &goal{"<=", 5_000}, func(tr *TargetResult) (float64, float64, bool) {
			if tr.Freshness == nil || tr.Freshness.Samples == 0 {
				return 0, 0, false
			}
			return float64(tr.Freshness.AckToVisible.P99), tr.Freshness.Load1, true
		}},
		{"history_load", "time to load the history" + histNote, "s", "lower", nil, func(tr *TargetResult) (float64, float64, bool) {
			if tr.History == nil {
				return 0, 0, false
			}
			return tr.History.CatalogSeconds + tr.History.EventsSeconds, 0, true
		}},
		{"metrics_p50", "GET /metrics p50" + histNote, "us", "lower", nil, func(tr *TargetResult) (float64, float64, bool) {
			if tr.Queries == nil {
				return 0, 0, false
			}
			return float64(tr.Queries.Metrics.P50), tr.Queries.Load1, true
		}},
		{"metrics_p99", "GET /metrics p99" + histNote, "us", "lower", &goal{"<=", 10_000}, func(tr *TargetResult) (float64, float64, bool) {
			if tr.Queries == nil {
				return 0, 0, false
			}
			return float64(tr.Queries.Metrics.P99), tr.Queries.Load1, true
		}},
		{"top_p50", fmt.Sprintf("GET /metrics/top n=%d over %d min, p50", o.topN, o.topM) + histNote, "us", "lower", nil, func(tr *TargetResult) (float64, float64, bool) {
			if tr.Queries == nil {
				return 0, 0, false
			}
			return float64(tr.Queries.Top.P50), tr.Queries.Load1, true
		}},
		{"top_p99", fmt.Sprintf("GET /metrics/top n=%d over %d min, p99", o.topN, o.topM) + histNote, "us", "lower", &goal{"<=", 20_000}, func(tr *TargetResult) (float64, float64, bool) {
			if tr.Queries == nil {
				return 0, 0, false
			}
			return float64(tr.Queries.Top.P99), tr.Queries.Load1, true
		}},
		{"rss_history", "RSS with the history loaded" + histNote, "bytes", "lower", &goal{"<=", 2 << 30}, func(tr *TargetResult) (float64, float64, bool) {
			return float64(tr.RSSWithHistory), 0, tr.RSSWithHistory > 0
		}},
		{"rss_peak", "peak RSS of the run", "bytes", "lower", nil, func(tr *TargetResult) (float64, float64, bool) {
			return float64(tr.RSSPeak), 0, tr.RSSPeak > 0
		}},
		{"cpu_clicks", "CPU seconds per million clicks (saturation)", "cpu-s", "lower", nil, func(tr *TargetResult) (float64, float64, bool) {
			return tr.CPUClicks, 0, tr.CPUClicks > 0
		}},
		{"cpu_events", "CPU seconds per million events (POST /events)", "cpu-s", "lower", nil, func(tr *TargetResult) (float64, float64, bool) {
			return tr.CPUEvents, 0, tr.CPUEvents > 0
		}},
		{"recovery", "kill -9, restart: exec to /readyz 200", "s", "lower", nil, func(tr *TargetResult) (float64, float64, bool) {
			if tr.Recovery == nil || tr.Recovery.RestartToReady == 0 {
				return 0, 0, false
			}
			return tr.Recovery.RestartToReady, tr.Recovery.Load1, true
		}},
		{"recovery_exact", "acknowledged clicks lost or doubled across kill -9", "count", "lower", &goal{"<=", 0}, func(tr *TargetResult) (float64, float64, bool) {
			if tr.Recovery == nil {
				return 0, 0, false
			}
			return exact(&tr.Recovery.Check)
		}},
		{"restart_failed", "clicks failed during a rolling restart", "count", "lower", &goal{"<=", 0}, func(tr *TargetResult) (float64, float64, bool) {
			if tr.Restart == nil {
				return 0, 0, false
			}
			return float64(tr.Restart.Failed), tr.Restart.Load1, true
		}},
		{"restart_exact", "acknowledged clicks lost or doubled across a rolling restart", "count", "lower", &goal{"<=", 0}, func(tr *TargetResult) (float64, float64, bool) {
			if tr.Restart == nil {
				return 0, 0, false
			}
			return exact(&tr.Restart.Check)
		}},
	}
}

// BuildRows turns the measurements into table rows. Only rows with a figure on some target
// are kept.
func BuildRows(res *Result) []Row {
	var rows []Row
	for _, s := range specs(res) {
		row := Row{ID: s.id, Figure: s.figure, Unit: s.unit, Better: s.better}
		if s.goal != nil {
			row.Goal = s.goal.op + " " + formatValue(s.goal.v, s.unit)
		}
		any := false
		var ad *float64
		for i, tr := range res.Targets {
			c := Cell{Target: tr.Name, Text: "-"}
			if v, load, ok := s.get(tr); ok {
				c.Value, c.Text, c.Load1 = &v, formatValue(v, s.unit), load
				any = true
				if i == 0 {
					ad = c.Value
				}
			}
			if i > 0 && ad != nil && c.Value != nil {
				c.Ratio, c.Ahead = compare(*ad, *c.Value, s.better)
				if s.unit == "count" {
					c.Ratio = nil // 0 lost against 3 lost is "ahead", not "0.00x"
				}
			}
			row.Cells = append(row.Cells, c)
		}
		if !any {
			continue
		}
		if s.goal != nil && ad != nil {
			row.Met = "no"
			if s.goal.op == ">=" && *ad >= s.goal.v || s.goal.op == "<=" && *ad <= s.goal.v {
				row.Met = "yes"
			}
		}
		rows = append(rows, row)
	}
	return rows
}

// compare returns adpulse/baseline (when defined) and whether adpulse is ahead.
func compare(a, b float64, better string) (*float64, string) {
	var ratio *float64
	if b != 0 {
		r := a / b
		ratio = &r
	}
	switch {
	case a == b:
		return ratio, "equal"
	case better == "higher" && a > b, better == "lower" && a < b:
		return ratio, "yes"
	}
	return ratio, "no"
}

// formatValue prints v in the row's unit.
func formatValue(v float64, unit string) string {
	switch unit {
	case "/s":
		return groupDigits(int64(math.Round(v))) + "/s"
	case "us":
		return fmtUS(int64(v))
	case "s":
		return strconv.FormatFloat(v, 'f', 2, 64) + " s"
	case "bytes":
		return fmtBytes(int64(v))
	case "cpu-s":
		return strconv.FormatFloat(v, 'f', 2, 64) + " s"
	case "count":
		return strconv.FormatInt(int64(v), 10)
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

func fmtUS(us int64) string {
	switch {
	case us < 1000:
		return fmt.Sprintf("%d µs", us)
	case us < 10_000:
		return fmt.Sprintf("%.2f ms", float64(us)/1000)
	case us < 1_000_000:
		return fmt.Sprintf("%.1f ms", float64(us)/1000)
	}
	return fmt.Sprintf("%.2f s", float64(us)/1e6)
}

func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d KiB", n>>10)
}

func groupDigits(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func fmtRatio(c Cell) string {
	if c.Value == nil {
		return "-"
	}
	mark := map[string]string{"yes": "ahead", "no": "behind", "equal": "equal"}[c.Ahead]
	if c.Ratio == nil {
		if mark == "" {
			return "-"
		}
		return mark
	}
	return fmt.Sprintf("%.2fx %s", *c.Ratio, mark)
}

// WriteTable writes the result as a markdown table with the machine and the notes a reader
// needs to trust it.
func (res *Result) WriteTable(w io.Writer) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) }
	m := res.Machine
	p("adpulse bench (%s), %s, %d cores, %s RAM, Linux %s, %s; started %s, took %.0fs; seed %d",
		res.Size, m.CPU, m.Cores, fmtBytes(m.MemBytes), m.Kernel, m.GoVersion, res.Started.Format(time.RFC3339), res.ElapsedSeconds, res.Seed)
	if res.Command != "" {
		p("command: %s", res.Command)
	}
	p("")
	head := []string{"figure", "goal", "adpulse", "met?"}
	for _, t := range res.Targets[min(1, len(res.Targets)):] {
		head = append(head, t.Name, "adpulse/"+t.Name)
	}
	head = append(head, "load 1m")
	p("| %s |", strings.Join(head, " | "))
	seps := make([]string, len(head))
	for i := range seps {
		seps[i] = "---"
	}
	p("|%s|", strings.Join(seps, "|"))
	for _, r := range res.Rows {
		cells := []string{r.Figure, orDash(r.Goal), r.Cells[0].Text, orDash(r.Met)}
		for _, c := range r.Cells[1:] {
			cells = append(cells, c.Text, fmtRatio(c))
		}
		load := "-"
		if l := r.Cells[0].Load1; l > 0 {
			load = strconv.FormatFloat(l, 'f', 2, 64)
		}
		cells = append(cells, load)
		p("| %s |", strings.Join(cells, " | "))
	}
	p("")
	p("Ratios are adpulse/baseline: above 1 is better for rates, below 1 for times, sizes and counts.")
	p("Client and servers share the machine's cores; load 1m is the load average when adpulse's scenario started.")
	for _, t := range res.Targets {
		var notes []string
		if t.ClicksFixed != nil {
			notes = append(notes, fmt.Sprintf("fixed-rate clicks: %d sent, %d late, %d unsent, errors %v; the load generator used %.1f CPU s in %.1fs", t.ClicksFixed.Requests, t.ClicksFixed.Late, t.ClicksFixed.Unsent, errorsOf(t.ClicksFixed.Status), t.ClicksFixed.ClientCPU, t.ClicksFixed.Elapsed))
		}
		if t.ClicksSat != nil {
			notes = append(notes, fmt.Sprintf("saturation: %d sent in %.1fs, errors %v; the load generator used %.1f CPU s", t.ClicksSat.Requests, t.ClicksSat.Elapsed, errorsOf(t.ClicksSat.Status), t.ClicksSat.ClientCPU))
		}
		for _, c := range []struct {
			name string
			r    *CheckResult
		}{{"click check", t.ClickCheck}, {"events check", t.EventsCheck}} {
			if c.r != nil {
				notes = append(notes, fmt.Sprintf("%s: %s, %d acknowledged (+%d uncertain) on %d ads, caught up in %.1fs %s", c.name, c.r.Status, c.r.Acknowledged, c.r.Uncertain, c.r.Ads, c.r.CatchUpSeconds, c.r.Reason))
				for _, pr := range c.r.Problems {
					notes = append(notes, "  "+pr)
				}
			}
		}
		if t.Events != nil {
			notes = append(notes, fmt.Sprintf("events: %d batches of %d lines in %.1fs; the load generator used %.1f CPU s", t.Events.Batches, t.Events.Lines/max(t.Events.Batches, 1), t.Events.Elapsed, t.Events.ClientCPU))
		}
		if t.Events != nil && t.Events.FirstError != "" {
			notes = append(notes, fmt.Sprintf("events: %d of %d batches failed, first: %s", t.Events.FailedBodies, t.Events.Batches, t.Events.FirstError))
		}
		if f := t.Freshness; f != nil {
			notes = append(notes, fmt.Sprintf("freshness: %d samples, %d not visible within %v, polled every %gms, background %.0f clicks/s", f.Samples, f.TimedOut, visibleTimeout, f.PollEveryMs, f.Background.Throughput))
		}
		if h := t.History; h != nil {
			settled := fmt.Sprintf("the server went idle %.1fs later; queries ran after that", h.SettleSeconds)
			if !h.Settled {
				settled = fmt.Sprintf("the server was still busy %.1fs later: queries ran while it absorbed the history", h.SettleSeconds)
			}
			notes = append(notes, fmt.Sprintf("history: %s ads (catalog %.1fs), %s events in %.1fs (%s/s); %s", groupDigits(int64(h.Ads)), h.CatalogSeconds, groupDigits(h.Accepted), h.EventsSeconds, groupDigits(int64(h.EventsPerSec)), settled))
		}
		if q := t.Queries; q != nil {
			notes = append(notes, fmt.Sprintf("queries: /metrics = %s, %d run (%d failed); top = %s, %d run (%d failed) %s %s", q.MetricsQuery, q.Metrics.N, q.MetricsFailed, q.TopQuery, q.Top.N, q.TopFailed, q.MetricsError, q.TopError))
		}
		if r := t.Recovery; r != nil {
			notes = append(notes, fmt.Sprintf("recovery: killed after %.1fs of load (%d clicks acknowledged), data dir %s, ready %.2fs after the kill; check %s %s", r.KilledAfter, r.LoadBeforeKill.OK, fmtBytes(r.DataDirBytes), r.KillToReady, r.Check.Status, r.Check.Reason))
		}
		if r := t.Restart; r != nil {
			notes = append(notes, fmt.Sprintf("restart: SIGUSR2 after %.1fs of load, %d of %d clicks failed (%v), %d sent again on a new connection after a kept-alive one closed unanswered (as browsers do), new process ready %.2fs after the signal; check %s %s",
				r.SignalledAfter, r.Failed, r.Load.Requests, errorsOf(r.Load.Status), r.Load.Retried, r.SignalToReady, r.Check.Status, r.Check.Reason))
		}
		if t.ResourceNote != "" {
			notes = append(notes, "RSS and CPU: "+t.ResourceNote)
		}
		for _, pth := range []string{t.ProfileClicks, t.ProfileEvents, t.ProfileTop, t.ProfileHeap} {
			if pth != "" {
				notes = append(notes, "profile: go tool pprof -top "+pth)
			}
		}
		for _, e := range t.Errors {
			notes = append(notes, "ERROR "+e)
		}
		if len(notes) > 0 {
			p("")
			p("%s:", t.Name)
			for _, n := range notes {
				if strings.HasPrefix(n, "  ") { // a problem under its check
					p("  - %s", strings.TrimSpace(n))
				} else {
					p("- %s", strings.TrimRight(n, " "))
				}
			}
		}
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// WriteJSON writes the result to path.
func (res *Result) WriteJSON(path string) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
