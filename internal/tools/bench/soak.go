package bench

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/adpulse/adpulse/internal/clicktoken"
)

// ScenarioSoak is the long run: clicks at a steady rate in an open model with one spike, the
// errors, latency and adpulse's RSS reported per interval, so a leak or a slow drift shows as
// a trend. It is not in AllScenarios (a default run stays short): name it in --scenarios.
const ScenarioSoak = "soak"

// SoakOptions shape the soak.
type SoakOptions struct {
	Duration time.Duration // whole run (default 10m)
	Rate     float64       // clicks/s outside the spike (default 10,000: the peak rate of the sizing)
	Spike    float64       // rate multiplier during the spike (default 3)
	SpikeAt  time.Duration // when the spike starts (default: half way)
	SpikeFor time.Duration // how long it lasts (default 30s)
	Interval time.Duration // reporting interval (default 10s)
	Conns    int           // most clicks in flight (default 512)
	Users    int           // distinct user ids the clicks spread over (default 1,000,000)
}

func (s *SoakOptions) setDefaults() {
	if s.Duration <= 0 {
		s.Duration = 10 * time.Minute
	}
	if s.Rate <= 0 {
		s.Rate = 10_000
	}
	if s.Spike < 1 {
		s.Spike = 3
	}
	if s.SpikeFor <= 0 {
		s.SpikeFor = 30 * time.Second
	}
	if s.SpikeAt <= 0 {
		s.SpikeAt = s.Duration / 2
	}
	if s.Interval <= 0 {
		s.Interval = 10 * time.Second
	}
	if s.Conns <= 0 {
		s.Conns = 512
	}
	if s.Users <= 0 {
		s.Users = 1_000_000
	}
}

// SoakInterval is one reporting interval of the soak.
type SoakInterval struct {
	At         float64          `json:"at_s"` // end of the interval, from the start
	TargetRate float64          `json:"target_per_s"`
	Sent       int64            `json:"sent"`
	OK         int64            `json:"ok"`
	Errors     map[string]int64 `json:"errors,omitempty"`
	Late       int64            `json:"late"` // sent more than 5ms after their intended time
	Latency    Latency          `json:"latency_us"`
	RSS        int64            `json:"rss_bytes"`
	CPU        float64          `json:"cpu_s"` // adpulse's CPU seconds in the interval
}

// SoakResult is the soak's report.
type SoakResult struct {
	Options   SoakOptions    `json:"options"`
	Intervals []SoakInterval `json:"intervals"`
	Total     Latency        `json:"latency_us"`
	Sent, OK  int64
	// Unsent is how many clicks were scheduled but never sent because the server fell behind
	// (the client keeps at most Conns in flight); 0 when it kept up.
	Unsent int64            `json:"unsent"`
	Errors map[string]int64 `json:"errors"`
	// RSSFirst and RSSLast are the medians of the first and last three intervals' RSS: flat
	// memory means RSSLast is close to RSSFirst.
	RSSFirst, RSSLast, RSSMax int64
	// RSSPerClick is the slope of RSS against clicks acknowledged, fitted over the intervals
	// after the first minute (bytes per click): what the server keeps per click for its
	// windows (dedup keys, stream filters, invalid-traffic rules). RSS is flat once the run is
	// longer than the longest window; before that it grows by this much per click.
	RSSPerClick float64 `json:"rss_bytes_per_click"`
	// RSSPerClickLate is the same slope over the second half of the run only: once the run
	// outlasts the server's windows (such as a short --dedup-window) it is about 0, and a
	// leak shows as a slope that stays.
	RSSPerClickLate float64 `json:"rss_bytes_per_click_late"`
	// CPUPerMillion is adpulse's CPU seconds per million clicks acknowledged over the run.
	CPUPerMillion float64 `json:"cpu_s_per_million_clicks"`
}

type soakJob struct {
	path     string
	intended time.Time
	slot     int // interval index
}

type soakSlot struct {
	mu     sync.Mutex
	hist   *hdrhistogram.Histogram
	sent   int64
	ok     int64
	late   int64
	errors map[string]int64
}

// runSoak sends signed clicks (each its own impression, a random user) at o.Rate with one
// spike, latency measured from each click's intended send time (no coordinated omission).
func (b *runner) runSoak(ctx context.Context, t *target, lay layout, keys *clicktoken.Keyring, seed uint64, so SoakOptions) *SoakResult {
	so.setDefaults()
	n := int(so.Duration/so.Interval) + 1
	slots := make([]soakSlot, n+1)
	for i := range slots {
		slots[i] = soakSlot{hist: newHist(), errors: map[string]int64{}}
	}
	jobs := make(chan soakJob, so.Conns)
	var wg sync.WaitGroup
	for range so.Conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc := newRawConn(t.addr())
			defer rc.close()
			for j := range jobs {
				status, _, err := rc.get(ctx, j.path, requestTimeout)
				d := time.Since(j.intended)
				s := &slots[j.slot]
				s.mu.Lock()
				_ = s.hist.RecordValue(min(max(d.Microseconds(), 1), maxLatencyMicros))
				switch {
				case err != nil:
					s.errors["error"]++
				case status == 302:
					s.ok++
				default:
					s.errors[strconv.Itoa(status)]++
				}
				s.mu.Unlock()
			}
		}()
	}
	res := &SoakResult{Options: so, Errors: map[string]int64{}}
	// RSS and progress, once per interval.
	rssDone := make(chan struct{})
	rss := make([]int64, n+1)
	cpu := make([]float64, n+1)
	start := time.Now().Add(10 * time.Millisecond)
	go func() {
		defer close(rssDone)
		var lastCPU float64
		if p := b.proc(ctx, t); p != nil {
			lastCPU = p.CPU
		}
		for i := 0; i <= n; i++ {
			if sleepCtx(ctx, time.Until(start.Add(time.Duration(i+1)*so.Interval))) != nil {
				return
			}
			if p := b.proc(ctx, t); p != nil {
				rss[i], cpu[i], lastCPU = p.RSS, p.CPU-lastCPU, p.CPU
			}
			s := &slots[i]
			s.mu.Lock()
			b.logf("%s: soak %v: %d sent, %d ok, errors %v, p99 %s, RSS %s", t.name, time.Duration(i+1)*so.Interval, s.sent, s.ok, s.errors,
				fmtUS(s.hist.ValueAtQuantile(99)), fmtBytes(rss[i]))
			s.mu.Unlock()
		}
	}()
	rng := rand.New(rand.NewPCG(seed, 0x50a4))
	z := newZipfAds(lay.ads)
	issued := time.Now()
	end := start.Add(so.Duration)
	at := start
	for k := 0; at.Before(end); k++ {
		rate := soakRate(so, at.Sub(start))
		if wait := time.Until(at); wait > 200*time.Microsecond {
			if sleepCtx(ctx, wait) != nil {
				break
			}
		}
		now := time.Now()
		if !now.Before(end) {
			// The server fell behind the schedule: the run still ends on time, and what was
			// scheduled but never sent is reported, not sent late.
			for ; at.Before(end); at = at.Add(time.Duration(float64(time.Second) / soakRate(so, at.Sub(start)))) {
				res.Unsent++
			}
			break
		}
		// Intervals are wall-clock time (as RSS and CPU are); latency is from the intended time.
		slot := min(int(now.Sub(start)/so.Interval), n)
		s := &slots[slot]
		late := now.Sub(at) > 5*time.Millisecond
		tok, err := keys.Sign(clicktoken.Claims{AdID: lay.adID(z.pick(rng.Float64())), ImpressionID: lay.prefix + "-" + b.runID + "-s" + strconv.Itoa(k),
			UserID: "su" + strconv.Itoa(rng.IntN(so.Users)), IssuedAt: issued})
		if err != nil {
			b.logf("%s: soak: sign: %v", t.name, err)
			break
		}
		if now.Sub(issued) > 10*time.Minute { // tokens stay well inside the click validity
			issued = now
		}
		s.mu.Lock()
		s.sent++
		if late {
			s.late++
		}
		s.mu.Unlock()
		select {
		case jobs <- soakJob{path: "/c/" + tok, intended: at, slot: slot}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		at = at.Add(time.Duration(float64(time.Second) / rate))
	}
	close(jobs)
	wg.Wait()
	<-rssDone
	total := newHist()
	for i := 0; i < n; i++ {
		s := &slots[i]
		if s.sent == 0 && i > 0 {
			continue
		}
		from := time.Duration(i) * so.Interval
		target := so.Rate
		if from >= so.SpikeAt && from < so.SpikeAt+so.SpikeFor {
			target *= so.Spike
		}
		iv := SoakInterval{At: (from + so.Interval).Seconds(), TargetRate: target, Sent: s.sent, OK: s.ok, Late: s.late,
			Latency: latencyOf(s.hist), RSS: rss[i], CPU: cpu[i]}
		if len(s.errors) > 0 {
			iv.Errors = s.errors
		}
		for k, v := range s.errors {
			res.Errors[k] += v
		}
		total.Merge(s.hist)
		res.Sent += s.sent
		res.OK += s.ok
		res.RSSMax = max(res.RSSMax, rss[i])
		res.Intervals = append(res.Intervals, iv)
	}
	res.Total = latencyOf(total)
	if k := len(res.Intervals); k >= 3 {
		res.RSSFirst = median3(res.Intervals[0].RSS, res.Intervals[1].RSS, res.Intervals[2].RSS)
		res.RSSLast = median3(res.Intervals[k-3].RSS, res.Intervals[k-2].RSS, res.Intervals[k-1].RSS)
	}
	res.RSSPerClick = rssSlope(res.Intervals, time.Minute)
	res.RSSPerClickLate = rssSlope(res.Intervals[len(res.Intervals)/2:], 0)
	var cpuTotal float64
	for _, iv := range res.Intervals {
		cpuTotal += iv.CPU
	}
	if res.OK > 0 {
		res.CPUPerMillion = cpuTotal / float64(res.OK) * 1e6
	}
	return res
}

// rssSlope fits RSS against the clicks acknowledged so far by least squares over the
// intervals after warmup (the first ones hold the start-up allocations) and returns bytes
// per click, 0 when there is too little to fit.
func rssSlope(ivs []SoakInterval, warmup time.Duration) float64 {
	var n, sx, sy, sxx, sxy, ok float64
	for _, iv := range ivs {
		ok += float64(iv.OK)
		if iv.At <= warmup.Seconds() || iv.RSS == 0 {
			continue
		}
		x, y := ok, float64(iv.RSS)
		n++
		sx += x
		sy += y
		sxx += x * x
		sxy += x * y
	}
	den := n*sxx - sx*sx
	if n < 3 || den == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / den
}

// soakRate is the scheduled rate el into the run.
func soakRate(so SoakOptions, el time.Duration) float64 {
	if el >= so.SpikeAt && el < so.SpikeAt+so.SpikeFor {
		return so.Rate * so.Spike
	}
	return so.Rate
}

func median3(a, b, c int64) int64 { return max(min(a, b), min(max(a, b), c)) }

// WriteSoak prints the soak's intervals as a table.
func (r *SoakResult) WriteSoak(w io.Writer) {
	fmt.Fprintf(w, "\nsoak: %v at %g clicks/s, %gx for %v from %v (open model, %d in flight at most)\n",
		r.Options.Duration, r.Options.Rate, r.Options.Spike, r.Options.SpikeFor, r.Options.SpikeAt, r.Options.Conns)
	fmt.Fprintf(w, "%8s %9s %9s %9s %7s %9s %9s %9s %9s %6s  %s\n", "at", "target/s", "sent/s", "ok/s", "late", "p50", "p99", "max", "RSS", "cpu", "errors")
	for _, iv := range r.Intervals {
		secs := r.Options.Interval.Seconds()
		fmt.Fprintf(w, "%7.0fs %9.0f %9.0f %9.0f %7d %9s %9s %9s %9s %6.2f  %v\n", iv.At, iv.TargetRate, float64(iv.Sent)/secs, float64(iv.OK)/secs, iv.Late,
			fmtUS(iv.Latency.P50), fmtUS(iv.Latency.P99), fmtUS(iv.Latency.Max), fmtBytes(iv.RSS), iv.CPU/secs, iv.Errors)
	}
	if r.Unsent > 0 {
		fmt.Fprintf(w, "not kept up: %d scheduled clicks not sent (at most %d in flight)\n", r.Unsent, r.Options.Conns)
	}
	fmt.Fprintf(w, "total: %d sent, %d ok, errors %v; latency p50 %s p99 %s p99.9 %s max %s; RSS first %s, last %s, max %s, %.0f bytes per click (%.0f over the second half); CPU %.1f s per million clicks\n",
		r.Sent, r.OK, r.Errors, fmtUS(r.Total.P50), fmtUS(r.Total.P99), fmtUS(r.Total.P999), fmtUS(r.Total.Max),
		fmtBytes(r.RSSFirst), fmtBytes(r.RSSLast), fmtBytes(r.RSSMax), r.RSSPerClick, r.RSSPerClickLate, r.CPUPerMillion)
}
