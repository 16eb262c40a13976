package bench

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// FreshnessStats is click-to-visible time: from sending a click to the first /metrics answer
// that counts it, polled every pollEvery, while a background click load runs. Latency counts
// from the send, not from the 302, so a design that acknowledges late (after a batch insert)
// cannot hide its wait in the acknowledgement. AckToVisible counts from the 302: how long an
// acknowledged click stays invisible to queries, which is the pipeline's own lag (the
// acknowledgement itself waits for the disk).
type FreshnessStats struct {
	Samples        int      `json:"samples"`
	TimedOut       int      `json:"timed_out"`
	Latency        Latency  `json:"latency_us"`
	AckToVisible   Latency  `json:"ack_to_visible_us"`
	PollEveryMs    float64  `json:"poll_every_ms"`
	BackgroundRate float64  `json:"background_clicks_per_s"`
	Background     RunStats `json:"background"`
	Load1          float64  `json:"load_avg_1m"`
	FirstError     string   `json:"first_error,omitempty"`
}

const (
	// pollEvery is fine enough to judge a visibility goal of a few milliseconds; a /metrics
	// query for one ad costs well under it.
	pollEvery      = time.Millisecond
	visibleTimeout = 10 * time.Second
)

// runFreshness sends samples clicks on one ad of lay (the first), one at a time, and after
// each polls /metrics for that ad until the count includes it. bg (when not nil) is sent at
// bgRate meanwhile, on other ads.
func runFreshness(ctx context.Context, t *target, lay layout, cs *clickSet, bg *clickSet, bgRate float64, bgConns int) *FreshnessStats {
	fs := &FreshnessStats{PollEveryMs: float64(pollEvery) / float64(time.Millisecond), BackgroundRate: bgRate, Load1: loadAvg()}
	hist, ackHist := newHist(), newHist()
	ad := lay.adID(0)
	from := time.Now().Add(-2 * time.Minute).Truncate(time.Minute)
	bgCtx, stopBG := context.WithCancel(ctx)
	bgDone := make(chan RunStats, 1)
	if bg != nil && bgRate > 0 {
		go func() {
			rs, _ := bg.openLoop(bgCtx, t.ingestAddrs(), 0, bgRate, time.Hour, bgConns)
			bgDone <- rs
		}()
		_ = sleepCtx(ctx, 500*time.Millisecond) // let the background load settle
	} else {
		close(bgDone)
	}
	rc := newRawConn(t.ingestAddrs()[0])
	defer rc.close()
	var want int64
	for i := range cs.order {
		if ctx.Err() != nil {
			break
		}
		sent := time.Now()
		status, _, err := rc.get(ctx, cs.paths[cs.order[i]], requestTimeout)
		if err != nil || status != http.StatusFound {
			if fs.FirstError == "" {
				fs.FirstError = fmt.Sprintf("click: status %d, %v", status, err)
			}
			continue
		}
		acked := time.Now()
		want++
		seen := false
		for time.Since(sent) < visibleTimeout && ctx.Err() == nil {
			got, err := t.totals(ctx, []string{ad}, "clicks", from, time.Now().Add(2*time.Minute))
			if err != nil {
				if fs.FirstError == "" {
					fs.FirstError = "poll: " + err.Error()
				}
			} else if got[ad] >= want {
				seen = true
				break
			}
			_ = sleepCtx(ctx, pollEvery)
		}
		fs.Samples++
		if !seen {
			fs.TimedOut++
		}
		visible := time.Now()
		_ = hist.RecordValue(min(max(visible.Sub(sent).Microseconds(), 1), maxLatencyMicros))
		_ = ackHist.RecordValue(min(max(visible.Sub(acked).Microseconds(), 1), maxLatencyMicros))
		_ = sleepCtx(ctx, 20*time.Millisecond) // not in phase with the aggregator's commits
	}
	stopBG()
	if rs, ok := <-bgDone; ok {
		fs.Background = rs
	}
	fs.Latency, fs.AckToVisible = latencyOf(hist), latencyOf(ackHist)
	return fs
}
