package bench

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The hot scenario: the click saturation run twice in a row on fresh ads, first with the usual
// Zipf spread, then with one ad taking half of all clicks, while the consumers' lag is sampled
// from the ops listener. It shows what a hot ad costs (throughput and lag, as ratios within
// the run) with the server salting hot ads (--hot-ad-salts=4 --hot-ad-min-events=100, which
// the bench sets when it starts the server), and checks that both runs are counted exactly.

// hotAdShare is the share of the hot run's clicks that go to its one hot ad.
const hotAdShare = 0.5

// HotStats is what the hot scenario measured.
type HotStats struct {
	Normal RunStats `json:"normal"`
	Hot    RunStats `json:"hot"`
	// Lag is the most messages not yet aggregated, in all partitions together and in the
	// most lagging one, sampled every 200 ms during each run and until it drained.
	NormalLagMax          int64 `json:"normal_lag_max"`
	HotLagMax             int64 `json:"hot_lag_max"`
	NormalPartitionLagMax int64 `json:"normal_partition_lag_max"`
	HotPartLagMax         int64 `json:"hot_partition_lag_max"`
	// DrainSeconds is how long after the run the lag took to reach zero.
	NormalDrainSeconds float64 `json:"normal_drain_s"`
	HotDrainSeconds    float64 `json:"hot_drain_s"`
	// SaltedEvents is adpulse_ingest_salted_events_total after both runs.
	SaltedEvents int64       `json:"salted_events"`
	Check        CheckResult `json:"check"`
}

// runHot runs the hot scenario against t (an adpulse with an ops listener).
func (b *runner) runHot(ctx context.Context, t *target, rng *rand.Rand) (*HotStats, error) {
	o := b.o
	var hs HotStats
	lay := newLayout("b"+b.runID+"x", o.ClickAds)
	if err := t.setupAds(ctx, lay); err != nil {
		return nil, err
	}
	e := newExpectation("clicks", lay.prefix)
	e.from = time.Now().Add(-time.Minute).Truncate(time.Minute)
	n := int(o.SatMaxRate * o.SatDuration.Seconds())
	for _, run := range []struct {
		name     string
		share    float64
		stats    *RunStats
		lag, plg *int64
		drain    *float64
	}{
		{"normal", 0, &hs.Normal, &hs.NormalLagMax, &hs.NormalPartitionLagMax, &hs.NormalDrainSeconds},
		{"hot", hotAdShare, &hs.Hot, &hs.HotLagMax, &hs.HotPartLagMax, &hs.HotDrainSeconds},
	} {
		cs, err := newClickSet(t.keys, lay, b.runID+"h"+run.name[:1], n, o.DupShare, rng.Uint64(), run.share)
		if err != nil {
			return nil, err
		}
		b.logf("%s: hot scenario, %s run: clicks at saturation for %v (one ad takes %.0f%%)", t.name, run.name, o.SatDuration, 100*run.share)
		sctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			sampleLag(sctx, t, run.lag, run.plg)
		}()
		load := loadAvg()
		rs, _ := cs.closedLoop(ctx, t.ingestAddrs(), 0, o.SatDuration, o.SatConns)
		rs.Load1 = load
		// Keep sampling until the consumers caught up, so the lag level includes the backlog.
		t0 := time.Now()
		for time.Since(t0) < o.CatchUp && ctx.Err() == nil {
			total, _, err := lagOf(ctx, t)
			if err != nil || total == 0 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		*run.drain = time.Since(t0).Seconds()
		stop()
		wg.Wait()
		*run.stats = rs
		cs.addExpected(e)
		b.logf("%s: hot scenario, %s run: %.0f clicks/s, p99 %s, lag max %d (one partition %d), drained in %.1fs", t.name, run.name, rs.Throughput, fmtUS(rs.Latency.P99), *run.lag, *run.plg, *run.drain)
	}
	e.to = time.Now().Add(2 * time.Minute).Truncate(time.Minute)
	hs.Check = check(ctx, t, e, o.CatchUp)
	if v, err := opsMetric(ctx, t, "adpulse_ingest_salted_events_total"); err == nil {
		hs.SaltedEvents = v
	}
	b.logf("%s: hot scenario check %s: %d acknowledged, lost %d, double-counted %d, %d events salted %s", t.name, hs.Check.Status, hs.Check.Acknowledged, hs.Check.Lost+hs.Check.TopLost, hs.Check.Double+hs.Check.TopDouble, hs.SaltedEvents, hs.Check.Reason)
	return &hs, nil
}

// sampleLag records the largest aggregation lag seen until ctx ends.
func sampleLag(ctx context.Context, t *target, total, part *int64) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if sum, most, err := lagOf(ctx, t); err == nil {
			*total, *part = max(*total, sum), max(*part, most)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// lagOf reads adpulse_aggregate_lag_messages from the ops listener: the sum over partitions
// and the largest.
func lagOf(ctx context.Context, t *target) (sum, most int64, err error) {
	err = scrape(ctx, t, func(name string, v float64) {
		if name == "adpulse_aggregate_lag_messages" {
			sum += int64(v)
			most = max(most, int64(v))
		}
	})
	return sum, most, err
}

// opsMetric reads one unlabelled metric from the ops listener.
func opsMetric(ctx context.Context, t *target, metric string) (int64, error) {
	v, _, err := opsSum(ctx, t, metric)
	return int64(v), err
}

// opsSum sums the samples of metric on the ops listener and says whether it had any.
func opsSum(ctx context.Context, t *target, metric string) (sum float64, found bool, err error) {
	err = scrape(ctx, t, func(name string, v float64) {
		if name == metric {
			sum += v
			found = true
		}
	})
	return sum, found, err
}

// scrape calls fn with every sample of the ops listener's Prometheus text.
func scrape(ctx context.Context, t *target, fn func(name string, v float64)) error {
	if t.ops == "" {
		return fmt.Errorf("no ops listener")
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, t.ops+"/metrics", nil)
	if err != nil {
		return err
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("ops /metrics: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		name := line[:sp]
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i]
		}
		f, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			continue
		}
		fn(name, f)
	}
	return sc.Err()
}
