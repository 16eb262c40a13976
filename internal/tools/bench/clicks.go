package bench

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/adpulse/adpulse/internal/clicktoken"
)

// clickSet is a pre-signed click workload and its ground truth: token i names ad tokAd[i] and
// an impression id of its own; order is the send order, in which a share of the tokens comes
// twice (a double click a few requests later), which must count once. state[i] records what
// the sends of token i got: acknowledged (302) and/or uncertain (an error or no answer: it
// may or may not have been recorded).
type clickSet struct {
	lay   layout
	paths []string // "/c/" + token
	tokAd []int32
	order []int32
	state []atomic.Uint32
}

const (
	stAcked     = 1
	stUncertain = 2
)

// zipfAds picks ad indexes with Zipf popularity (s = 1.1), so some ads are hot.
type zipfAds struct{ cdf []float64 }

func newZipfAds(n int) *zipfAds {
	cdf := make([]float64, n)
	var sum float64
	for r := range cdf {
		sum += math.Pow(float64(r+1), -1.1)
		cdf[r] = sum
	}
	for r := range cdf {
		cdf[r] /= sum
	}
	cdf[n-1] = 1
	return &zipfAds{cdf}
}

func (z *zipfAds) pick(u float64) int {
	r := sort.SearchFloat64s(z.cdf, u)
	return min(r, len(z.cdf)-1)
}

// newClickSet signs n tokens (in parallel) for ads of lay, issued now, with dupShare of the
// sends repeated; hotShare of the tokens (0: none) name ad 0, the rest follow Zipf.
func newClickSet(keys *clicktoken.Keyring, lay layout, runID string, n int, dupShare float64, seed uint64, hotShare float64) (*clickSet, error) {
	cs := &clickSet{lay: lay, paths: make([]string, n), tokAd: make([]int32, n), state: make([]atomic.Uint32, n)}
	rng := rand.New(rand.NewPCG(seed, 0xc11c))
	z := newZipfAds(lay.ads)
	for i := range cs.tokAd {
		cs.tokAd[i] = int32(z.pick(rng.Float64()))
		if hotShare > 0 && rng.Float64() < hotShare {
			cs.tokAd[i] = 0
		}
	}
	now := time.Now()
	workers := runtime.GOMAXPROCS(0)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				tok, err := keys.Sign(clicktoken.Claims{AdID: lay.adID(int(cs.tokAd[i])), ImpressionID: lay.prefix + "-" + runID + "-" + strconv.Itoa(i), IssuedAt: now})
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				cs.paths[i] = "/c/" + tok
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return nil, fmt.Errorf("sign click tokens: %w", err)
	}
	cs.order = make([]int32, 0, n+int(float64(n)*dupShare)+1)
	for i := range n {
		cs.order = append(cs.order, int32(i))
		if dupShare > 0 && rng.Float64() < dupShare {
			j := max(0, i-rng.IntN(50))
			cs.order = append(cs.order, int32(j))
		}
	}
	return cs, nil
}

// record stores the outcome of one send of token i.
func (cs *clickSet) record(i int32, status int) {
	bit := uint32(stUncertain)
	if status == 302 {
		bit = stAcked
	}
	for {
		old := cs.state[i].Load()
		if old&bit != 0 || cs.state[i].CompareAndSwap(old, old|bit) {
			return
		}
	}
}

// addExpected adds this set's ground truth to e (per ad: acknowledged, and possibly recorded).
func (cs *clickSet) addExpected(e *expectation) {
	for i := range cs.state {
		st := cs.state[i].Load()
		if st == 0 {
			continue
		}
		ad := cs.lay.adID(int(cs.tokAd[i]))
		b := e.ads[ad]
		if st&stAcked != 0 {
			b.Lo++
		}
		b.Hi++
		e.ads[ad] = b
	}
}

// RunStats is what one run of a driver measured.
type RunStats struct {
	Requests   int64            `json:"requests"`
	OK         int64            `json:"ok"`
	Status     map[string]int64 `json:"status"`
	Elapsed    float64          `json:"elapsed_s"`
	Throughput float64          `json:"ok_per_s"`
	Late       int64            `json:"late"` // sent more than 5ms after their intended time
	Unsent     int64            `json:"unsent"`
	// Retried: requests sent again on a new connection because a kept-alive one closed
	// before any answer, as a browser does (rawConn.get); each still counts once.
	Retried int64   `json:"retried"`
	Latency Latency `json:"latency_us"`
	Load1   float64 `json:"load_avg_1m"`
	// ClientCPU is the CPU seconds the bench process (the load generator) used meanwhile:
	// what the server did not get of the shared cores.
	ClientCPU float64 `json:"client_cpu_s"`
}

type Latency struct {
	P50  int64   `json:"p50"`
	P90  int64   `json:"p90"`
	P99  int64   `json:"p99"`
	P999 int64   `json:"p999"`
	Max  int64   `json:"max"`
	Mean float64 `json:"mean"`
	N    int64   `json:"n"`
}

const maxLatencyMicros = 120_000_000

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(1, maxLatencyMicros, 3) }

func latencyOf(h *hdrhistogram.Histogram) Latency {
	return Latency{P50: h.ValueAtQuantile(50), P90: h.ValueAtQuantile(90), P99: h.ValueAtQuantile(99), P999: h.ValueAtQuantile(99.9),
		Max: h.Max(), Mean: h.Mean(), N: h.TotalCount()}
}

// workerStats is one worker's share, merged at the end (no locks on the hot path).
type workerStats struct {
	hist     *hdrhistogram.Histogram
	requests int64
	ok       int64
	retried  int64 // rawConn.retried of the worker's connection
	status   map[int]int64
}

func newWorkerStats() *workerStats {
	return &workerStats{hist: newHist(), status: map[int]int64{}}
}

func (w *workerStats) add(status int, d time.Duration) {
	w.requests++
	if status == 302 {
		w.ok++
	}
	w.status[status]++
	_ = w.hist.RecordValue(min(max(d.Microseconds(), 1), maxLatencyMicros))
}

func merge(ws []*workerStats, elapsed time.Duration) RunStats {
	h := newHist()
	rs := RunStats{Status: map[string]int64{}, Elapsed: elapsed.Seconds()}
	for _, w := range ws {
		h.Merge(w.hist)
		rs.Requests += w.requests
		rs.OK += w.ok
		rs.Retried += w.retried
		for s, n := range w.status {
			k := strconv.Itoa(s)
			if s == 0 {
				k = "error"
			}
			rs.Status[k] += n
		}
	}
	rs.Latency = latencyOf(h)
	if rs.Elapsed > 0 {
		rs.Throughput = float64(rs.OK) / rs.Elapsed
	}
	return rs
}

const requestTimeout = 10 * time.Second

// openLoop sends cs.order[from:] at rate per second for d, from at most conns connections:
// send i is due at start + i/rate and its latency counts from then, so a stalled server
// shows in the percentiles instead of slowing the load (no coordinated omission). It returns
// the index in cs.order where it stopped.
func (cs *clickSet) openLoop(ctx context.Context, addrs []string, from int, rate float64, d time.Duration, conns int) (RunStats, int) {
	type job struct {
		i        int32
		intended time.Time
	}
	total := min(int(d.Seconds()*rate), len(cs.order)-from)
	jobs := make(chan job, conns)
	ws := make([]*workerStats, conns)
	var wg sync.WaitGroup
	for w := range conns {
		ws[w] = newWorkerStats()
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc := newRawConn(addrs[w%len(addrs)]) // a split deployment's ingest nodes share the load
			defer func() { ws[w].retried = rc.retried; rc.close() }()
			for j := range jobs {
				status, _, err := rc.get(ctx, cs.paths[j.i], requestTimeout)
				if err != nil {
					status = 0
				}
				cs.record(j.i, status)
				ws[w].add(status, time.Since(j.intended))
			}
		}()
	}
	start := time.Now().Add(5 * time.Millisecond)
	end := start.Add(d + requestTimeout)
	nsPer := float64(time.Second) / rate
	var late, unsent int64
	sent := 0
loop:
	for ; sent < total; sent++ {
		t := start.Add(time.Duration(float64(sent) * nsPer))
		if wait := time.Until(t); wait > 200*time.Microsecond {
			if sleepCtx(ctx, wait) != nil {
				break loop
			}
		}
		now := time.Now()
		if now.After(end) {
			break
		}
		if now.Sub(t) > 5*time.Millisecond {
			late++
		}
		intended := t
		if now.Before(t) {
			intended = now
		}
		select {
		case jobs <- job{cs.order[from+sent], intended}:
		case <-ctx.Done():
			break loop
		}
	}
	unsent = int64(total - sent)
	close(jobs)
	wg.Wait()
	rs := merge(ws, time.Since(start))
	rs.Late, rs.Unsent = late, unsent
	return rs, from + sent
}

// closedLoop runs conns workers that each send the next click as soon as the previous one was
// answered, for d or until cs.order[from:] is used up (the figure is then over the shorter
// time). It returns the index where it stopped.
func (cs *clickSet) closedLoop(ctx context.Context, addrs []string, from int, d time.Duration, conns int) (RunStats, int) {
	var next atomic.Int64
	next.Store(int64(from))
	ws := make([]*workerStats, conns)
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(d)
	for w := range conns {
		ws[w] = newWorkerStats()
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc := newRawConn(addrs[w%len(addrs)]) // a split deployment's ingest nodes share the load
			defer func() { ws[w].retried = rc.retried; rc.close() }()
			for ctx.Err() == nil && time.Now().Before(end) {
				k := next.Add(1) - 1
				if k >= int64(len(cs.order)) {
					return
				}
				i := cs.order[k]
				t0 := time.Now()
				status, _, err := rc.get(ctx, cs.paths[i], requestTimeout)
				if err != nil {
					status = 0
				}
				cs.record(i, status)
				ws[w].add(status, time.Since(t0))
			}
		}()
	}
	wg.Wait()
	return merge(ws, time.Since(start)), int(min(next.Load(), int64(len(cs.order))))
}
