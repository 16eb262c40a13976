package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// EventsStats is the POST /events scenario: big NDJSON batches of impressions from several
// connections, each acknowledged only when stored.
type EventsStats struct {
	Batches      int64   `json:"batches"`
	FailedBodies int64   `json:"failed_batches"`
	Lines        int64   `json:"lines"`
	Accepted     int64   `json:"accepted"`
	Elapsed      float64 `json:"elapsed_s"`
	PerSecond    float64 `json:"accepted_per_s"`
	BatchLatency Latency `json:"batch_latency_us"`
	Load1        float64 `json:"load_avg_1m"`
	FirstError   string  `json:"first_error,omitempty"`
	ClientCPU    float64 `json:"client_cpu_s"` // of the bench process meanwhile
}

// batchBody is a reusable NDJSON body: each send writes a new fixed-width batch number into
// every line's impression id, so every line is new and the client formats nothing.
type batchBody struct {
	body  []byte
	slots []int
	adOf  []int32 // ad index of each line
}

const seqWidth = 12

func newBatchBody(lay layout, runID string, worker, lines int, rng *rand.Rand) *batchBody {
	var b bytes.Buffer
	bb := &batchBody{}
	for i := range lines {
		ad := rng.IntN(lay.ads)
		b.WriteString(`{"type":"impression","impression_id":"`)
		b.WriteString(lay.prefix + "-" + runID + "-w" + strconv.Itoa(worker) + "-")
		bb.slots = append(bb.slots, b.Len())
		fmt.Fprintf(&b, `%0*d-%d","ad_id":"%s","user_id":"u%d"}`+"\n", seqWidth, 0, i, lay.adID(ad), i%5000)
		bb.adOf = append(bb.adOf, int32(ad))
	}
	bb.body = b.Bytes()
	return bb
}

func (bb *batchBody) stamp(seq int64) {
	var n [seqWidth]byte
	s := strconv.AppendInt(n[:0], seq, 10)
	pad := seqWidth - len(s)
	var buf [seqWidth]byte
	for i := range pad {
		buf[i] = '0'
	}
	copy(buf[pad:], s)
	for _, at := range bb.slots {
		copy(bb.body[at:], buf[:])
	}
}

// runEvents sends batches from conns workers for d. Per ad, what an answered batch accepted
// is expected exactly; a batch without an answer widens the upper bound.
func runEvents(ctx context.Context, t *target, lay layout, runID string, d time.Duration, batch, conns int, seed uint64, e *expectation) *EventsStats {
	st := &EventsStats{Load1: loadAvg()}
	var seq atomic.Int64
	var mu sync.Mutex
	hist := newHist()
	start := time.Now()
	end := start.Add(d)
	var wg sync.WaitGroup
	for w := range conns {
		rng := rand.New(rand.NewPCG(seed, uint64(w)))
		bb := newBatchBody(lay, runID, w, batch, rng)
		wg.Add(1)
		go func() {
			defer wg.Done()
			perAd := make(map[int32]int64)
			for _, a := range bb.adOf {
				perAd[a]++
			}
			for ctx.Err() == nil && time.Now().Before(end) {
				bb.stamp(seq.Add(1))
				t0 := time.Now()
				var resp eventsResponse
				err := t.doAt(ctx, t.ingestBase(w), http.MethodPost, "/events", "application/x-ndjson", bb.body, &resp)
				lat := time.Since(t0)
				mu.Lock()
				st.Batches++
				st.Lines += int64(batch)
				_ = hist.RecordValue(min(max(lat.Microseconds(), 1), maxLatencyMicros))
				if err != nil {
					st.FailedBodies++
					if st.FirstError == "" {
						st.FirstError = err.Error()
					}
				} else {
					st.Accepted += int64(resp.Accepted)
				}
				for a, n := range perAd {
					id := lay.adID(int(a))
					b := e.ads[id]
					if err == nil && resp.Accepted == batch {
						b.Lo += n
					}
					b.Hi += n
					e.ads[id] = b
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	st.Elapsed = time.Since(start).Seconds()
	st.PerSecond = float64(st.Accepted) / st.Elapsed
	st.BatchLatency = latencyOf(hist)
	return st
}

// HistoryStats is the synthetic day of data the query scenario runs on.
type HistoryStats struct {
	Ads            int     `json:"ads"`
	Events         int64   `json:"events"`
	Accepted       int64   `json:"accepted"`
	CatalogSeconds float64 `json:"catalog_s"`
	EventsSeconds  float64 `json:"events_s"`
	EventsPerSec   float64 `json:"events_per_s"`
	// Settled: the server had absorbed the history (counts stable, CPU idle) before the
	// queries, after SettleSeconds; false means the queries ran while it was still busy.
	Settled       bool    `json:"settled"`
	SettleSeconds float64 `json:"settle_s"`
}

// loadHistory creates lay's ads and sends perAd events for each (alternately an impression and
// a click, impression ids of their own) with event times spread over the last 24h (less a
// margin, so they stay within the server's --max-lateness of 24h).
func loadHistory(ctx context.Context, t *target, lay layout, runID string, perAd int, seed uint64, progress func(string, ...any)) (*HistoryStats, error) {
	hs := &HistoryStats{Ads: lay.ads}
	t0 := time.Now()
	if err := t.setupAds(ctx, lay); err != nil {
		return nil, err
	}
	hs.CatalogSeconds = time.Since(t0).Seconds()
	if t.catalog {
		progress("%s: catalog of %d ads created in %.1fs", t.name, lay.ads, hs.CatalogSeconds)
	}
	const batch = 10_000
	total := lay.ads * perAd
	chunks := (total + batch - 1) / batch
	now := time.Now()
	span := int64((24*time.Hour - 15*time.Minute) / time.Second)
	var accepted atomic.Int64
	t1 := time.Now()
	lastReport := time.Now()
	var repMu sync.Mutex
	err := parallel(ctx, chunks, 4, func(ctx context.Context, c int) error {
		rng := rand.New(rand.NewPCG(seed, uint64(c)))
		b := make([]byte, 0, batch*140)
		for k := c * batch; k < min((c+1)*batch, total); k++ {
			ad, j := k%lay.ads, k/lay.ads
			typ := "impression"
			if j%2 == 1 {
				typ = "click"
			}
			ts := now.Unix() - 60 - rng.Int64N(span)
			b = fmt.Appendf(b, `{"type":"%s","impression_id":"%s-%s-h%d-%d","ad_id":"%s","event_time":%d}`+"\n", typ, lay.prefix, runID, ad, j/2, lay.adID(ad), ts)
		}
		var resp eventsResponse
		if err := postRetrying(ctx, t, b, &resp); err != nil {
			return err
		}
		if resp.Rejected > 0 && len(resp.Errors) > 0 {
			return fmt.Errorf("history batch %d: %d rejected, first: line %d: %s", c, resp.Rejected, resp.Errors[0].Line, resp.Errors[0].Message)
		}
		n := accepted.Add(int64(resp.Accepted))
		repMu.Lock()
		if time.Since(lastReport) > 10*time.Second {
			lastReport = time.Now()
			progress("%s: history: %d of %d events sent", t.name, n, total)
		}
		repMu.Unlock()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load history: %w", err)
	}
	hs.Events, hs.Accepted = int64(total), accepted.Load()
	hs.EventsSeconds = time.Since(t1).Seconds()
	hs.EventsPerSec = float64(hs.Accepted) / hs.EventsSeconds
	return hs, nil
}

// postRetrying posts an NDJSON batch to /events, sending it again after a 503 or 429 (the
// server shedding load, as a history load on a busy machine can make it), as API clients are
// told to: the batch is idempotent, so a retry counts nothing twice.
func postRetrying(ctx context.Context, t *target, batch []byte, resp *eventsResponse) error {
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := t.doAt(ctx, t.ingestBase(0), http.MethodPost, "/events", "application/x-ndjson", batch, resp)
		var st *errStatus
		if err == nil || !errors.As(err, &st) || (st.status != http.StatusServiceUnavailable && st.status != http.StatusTooManyRequests) || attempt == 10 {
			return err
		}
		if err := sleepCtx(ctx, backoff); err != nil {
			return err
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// queryLatency runs n requests of path() from conns workers, back to back, for at most maxDur,
// and returns their latency (Latency.N says how many ran), each from the request to the last
// byte of its answer; failed requests count with their time and are reported.
func queryLatency(ctx context.Context, t *target, n, conns int, maxDur time.Duration, path func(rng *rand.Rand) string, seed uint64) (Latency, int64, string) {
	hist := newHist()
	var mu sync.Mutex
	var failed int64
	var firstErr string
	var next atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(maxDur)
	for w := range conns {
		rng := rand.New(rand.NewPCG(seed, uint64(w)+100))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) && ctx.Err() == nil && time.Now().Before(deadline) {
				p := path(rng)
				t0 := time.Now()
				b, err := t.fetch(ctx, t.base, http.MethodGet, p, "", nil)
				// The latency is the server's answer, up to its last byte: decoding it is the
				// load generator's work (a 10-ad /metrics answer is about 50 KB), done after.
				lat := time.Since(t0)
				if err == nil {
					var out json.RawMessage
					err = decodeAnswer(http.MethodGet, p, b, &out)
				}
				mu.Lock()
				_ = hist.RecordValue(min(max(lat.Microseconds(), 1), maxLatencyMicros))
				if err != nil {
					failed++
					if firstErr == "" {
						firstErr = err.Error()
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return latencyOf(hist), failed, firstErr
}
