package e2e

// Rate limits: one source floods GET /c/{token} and is answered 429 rate_limited with a
// Retry-After, while another source's clicks keep getting 302 at their usual latency; a
// limited request records nothing, so /metrics and the ingest counter count exactly the
// clicks that got a 302. All test traffic comes from 127.0.0.1, so the server trusts it as a
// proxy and the sources are told apart by X-Forwarded-For.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/clicktoken"
)

func TestRateLimitFairness(t *testing.T) {
	needBinary(t)
	e := newEnv(t)
	const rateIP, burstIP = 20, 20
	srv := e.start("--admin-key", testAdminKey, "--click-secret", testClickSecret,
		"--trusted-proxies", "127.0.0.1/32", "--rate-limit-ip", strconv.Itoa(rateIP), "--rate-limit-ip-burst", strconv.Itoa(burstIP))
	c := newClient(16)
	cat := setupCatalog(t, c, srv.base, testAdminKey, "rl", 1, 1, 2)
	floodAd, politeAd := cat.ads[0], cat.ads[1]
	started := time.Now()

	// Every request carries a token of its own, so each 302 is one counted click and a
	// limited request that recorded anything would show up as one click too many.
	kr, err := clicktoken.ParseKeyring(testClickSecret)
	if err != nil {
		t.Fatal(err)
	}
	var seq atomic.Int64
	token := func(ad adInfo) string {
		tok, err := kr.Sign(clicktoken.Claims{AdID: ad.id, ImpressionID: fmt.Sprintf("rl-imp-%d", seq.Add(1)), IssuedAt: time.Now()})
		if err != nil {
			t.Error(err)
		}
		return tok
	}
	click := func(ad adInfo, source string) (*response, time.Duration, error) {
		t0 := time.Now()
		resp, err := do(context.Background(), c, "GET", srv.base+"/c/"+token(ad), "", map[string]string{"X-Forwarded-For": source}, nil)
		return resp, time.Since(t0), err
	}
	// Residential-looking addresses: documentation ranges are flagged as non-human traffic.
	const flooder, polite = "73.162.10.66", "98.207.33.7"

	// The polite source clicks at half the limit before, during and after the flood.
	var (
		mu        sync.Mutex
		politeOK  int
		baseline  []time.Duration // latencies before the flood
		underLoad []time.Duration // latencies while it runs
		flooding  atomic.Bool
		stopPace  = make(chan struct{})
		paceDone  = make(chan struct{})
		problems  []string
	)
	go func() {
		defer close(paceDone)
		tick := time.NewTicker(time.Second / (rateIP / 2))
		defer tick.Stop()
		for {
			select {
			case <-stopPace:
				return
			case <-tick.C:
			}
			during := flooding.Load()
			resp, d, err := click(politeAd, polite)
			mu.Lock()
			switch {
			case err != nil:
				problems = append(problems, fmt.Sprintf("polite click: %v", err))
			case resp.status != http.StatusFound:
				problems = append(problems, fmt.Sprintf("polite click (flood running: %v): %v, want 302", during, resp))
			default:
				politeOK++
				if during {
					underLoad = append(underLoad, d)
				} else if len(underLoad) == 0 {
					baseline = append(baseline, d)
				}
			}
			mu.Unlock()
		}
	}()
	time.Sleep(time.Second)

	// The flood: 8 connections as fast as they go, for 3 seconds.
	const floodFor, floodConns = 3 * time.Second, 8
	var floodSent, floodOK, floodLimited atomic.Int64
	var retryAfter sync.Map // Retry-After values seen
	flooding.Store(true)
	floodStart := time.Now()
	var wg sync.WaitGroup
	for range floodConns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(floodStart) < floodFor {
				floodSent.Add(1)
				resp, _, err := click(floodAd, flooder)
				if err != nil {
					t.Errorf("flood click: %v", err)
					return
				}
				switch resp.status {
				case http.StatusFound:
					floodOK.Add(1)
				case http.StatusTooManyRequests:
					floodLimited.Add(1)
					if msg := errorShape(resp); msg != "" {
						t.Errorf("429: %s", msg)
					}
					if resp.header.Get("Location") != "" {
						t.Errorf("429 with a Location %q", resp.header.Get("Location"))
					}
					retryAfter.Store(resp.header.Get("Retry-After"), true)
				default:
					t.Errorf("flood click: %v, want 302 or 429", resp)
				}
			}
		}()
	}
	wg.Wait()
	floodTime := time.Since(floodStart)
	flooding.Store(false)
	time.Sleep(time.Second)
	close(stopPace)
	<-paceDone

	// Retry-After: whole seconds; at 20 tokens a second the wait is under one, so "1".
	retryAfter.Range(func(k, _ any) bool {
		if k.(string) != "1" {
			t.Errorf("Retry-After %q, want 1 (a wait under a second, rounded up)", k)
		}
		return true
	})
	// Honouring it is enough: after Retry-After seconds the flooder is served again.
	time.Sleep(time.Second)
	if resp, _, err := click(floodAd, flooder); err != nil || resp.status != http.StatusFound {
		t.Fatalf("flooder after waiting Retry-After: %v %v, want 302", resp, err)
	}
	floodOK.Add(1)

	mu.Lock()
	for _, p := range problems {
		t.Error(p)
	}
	nPolite := politeOK
	mu.Unlock()
	nSent, nFlood, nLimited := floodSent.Load(), floodOK.Load(), floodLimited.Load()
	maxOK := int64(burstIP + rateIP*floodTime.Seconds() + rateIP + 1) // burst + refill during the flood and the pause after it
	t.Logf("flood: %d requests in %v: %d got 302, %d got 429; polite source: %d clicks, all 302", nSent, floodTime.Round(time.Millisecond), nFlood, nLimited, nPolite)
	t.Logf("polite latency before the flood: %s; during it: %s", latencySummary(baseline), latencySummary(underLoad))
	if nLimited == 0 || nFlood+nLimited != nSent+1 || nFlood > maxOK {
		t.Fatalf("flood: %d served and %d limited of %d (and one after the wait); want at most %d served and the rest limited", nFlood, nLimited, nSent, maxOK)
	}
	if len(underLoad) == 0 {
		t.Fatal("no polite click ran during the flood")
	}
	// Fairness: the polite source is not slowed down by the flood beyond the noise of a
	// shared machine (its clicks are fsynced like the flooder's accepted ones).
	if worst := slices.Max(underLoad); worst > time.Second {
		t.Errorf("a polite click took %v during the flood", worst)
	}

	// Exactly the 302s were recorded: per ad in /metrics, and in the ingest counter.
	path := fmt.Sprintf("/metrics?ad_ids=%s,%s&start_time=%d&end_time=%d&interval=1h", url.QueryEscape(floodAd.id), url.QueryEscape(politeAd.id),
		started.Add(-time.Hour).Unix(), time.Now().Add(time.Hour).Unix())
	want := map[string]int64{floodAd.id: nFlood, politeAd.id: int64(nPolite)}
	poll(t, "clicks in /metrics", 20*time.Second, func() []string {
		var m metricsResp
		if err := getJSON(context.Background(), c, srv.base, path, testAdminKey, &m); err != nil {
			return []string{err.Error()}
		}
		var diffs []string
		for _, s := range m.Series {
			var clicks, invalid int64
			for _, p := range s.Points {
				clicks += p.Clicks
				invalid += p.InvalidClicks
			}
			if clicks != want[s.AdID] || invalid != 0 {
				diffs = append(diffs, fmt.Sprintf("ad %s: %d clicks, %d invalid; want %d clicks (the 302s), 0 invalid", s.AdID, clicks, invalid, want[s.AdID]))
			}
		}
		if len(m.Series) != 2 {
			diffs = append(diffs, fmt.Sprintf("%d series, want 2", len(m.Series)))
		}
		return diffs
	})
	prom := opsMetricValues(t, srv)
	if got := prom[`adpulse_ratelimit_limited_requests_total{kind="ip"}`]; got != float64(nLimited) {
		t.Errorf("adpulse_ratelimit_limited_requests_total{kind=\"ip\"} = %v, want the %d requests answered 429", got, nLimited)
	}
	if got := prom["adpulse_ingest_events_accepted_total"]; got != float64(nFlood)+float64(nPolite) {
		t.Errorf("adpulse_ingest_events_accepted_total = %v, want the %d clicks answered 302", got, nFlood+int64(nPolite))
	}
}

// latencySummary summarises durations: count, median and maximum.
func latencySummary(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return fmt.Sprintf("%d clicks, median %v, max %v", len(s), s[len(s)/2].Round(10*time.Microsecond), s[len(s)-1].Round(10*time.Microsecond))
}

var promSampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$`)

// opsMetricValues reads the ops listener's Prometheus metrics: value by series ("name{labels}").
func opsMetricValues(t *testing.T, srv *server) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + srv.ops + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, l := range strings.Split(string(b), "\n") {
		if m := promSampleLine.FindStringSubmatch(l); m != nil {
			if v, err := strconv.ParseFloat(m[2], 64); err == nil {
				out[m[1]] = v
			}
		}
	}
	return out
}
