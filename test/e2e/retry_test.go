package e2e

// Retries after the client gave up: thousands of requests of the three ingest kinds (POST
// /events, GET /c, POST /click) are abandoned by the client at random points (the TCP
// connection is closed a random time after the request was written, or in the middle of the
// body), then sent again, unchanged, until they get an answer: some at once, some only after
// more than 100,000 other events went into the same log partition, some batches a third time.
// The contract (Conventions) says each event then counts once in /metrics, /metrics/top, spend
// and user views, whatever happened to the first attempt and however long after it the retry
// comes. The test keeps the distinct events it sent and compares every count with them.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog/locallog"
)

const (
	// retryPartitions puts every event in one log partition, so that the other traffic a far
	// retry waits for is cheap to send.
	retryPartitions = 1
	// farTraffic is how many distinct events go into the log between the last abandoned
	// attempt of a far request and its retry: more than the last 100,000 events per partition
	// that the aggregator's own duplicate filter remembers.
	farTraffic = 120_000
	// maxBatchLines is the largest POST /events batch of the test.
	maxBatchLines = 20_000
	// The requests of the first phase. Each is sent one to three times with a client that
	// gives up after a random delay, then (unless one of those was answered in time) retried.
	tokenClicks = 1500 // GET /c/{token}
	appClicks   = 1500 // POST /click
	batches     = 120  // POST /events, of 1 to maxBatchLines lines (two of the most)
	// sentinelAd and sentinelUser carry the last events sent: with one partition, once they
	// show in /metrics and in the user's views, everything before them was consumed.
	sentinelAd   = "r-sentinel-ad"
	sentinelUser = "r-sentinel-user"
)

// errGaveUp is an attempt the client abandoned before it had the whole answer.
var errGaveUp = errors.New("client gave up")

// rreq is one request of the retry test: the same bytes are sent until an attempt is
// answered.
type rreq struct {
	idx     int
	kind    callKind // kindClick, kindAppClick or kindBatch
	raw     []byte   // the whole HTTP/1.1 request, with Connection: close
	hdrLen  int      // bytes of raw before the body
	events  int
	landing string // clicks: the Location of the 302

	giveUps []time.Duration // how long the client waits for the answer on each abandoned attempt
	cut     float64         // > 0: the first abandoned attempt stops this far into the body
	rst     bool            // abandon with a TCP reset (SO_LINGER 0) rather than a FIN
	far     bool            // retried only after farTraffic other events (if none was answered in time)
	third   bool            // a batch sent once more (abandoned first, then retried) after its answer

	// Written by the one goroutine handling the request at a time.
	aborted int  // attempts abandoned by the client
	late    bool // retried after farTraffic other events
	answers int  // 2xx/302 answers
}

// done drops the bytes of a request that is not sent again.
func (r *rreq) done() {
	if !r.third {
		r.raw = nil
	}
}

// viewKey is one counter of GET /api/v1/users/{user}/views.
type viewKey struct{ user, day, catalog string }

// rtruth is what the test sent, each event once. Impression ids are "ri" and a sequence
// number; the sets of ids sent are indexed by it.
type rtruth struct {
	imp, click []bool            // by sequence number: an impression / a click of that id was sent
	ad         []int16           // by sequence number: the ad (index in rgen.all) of its events
	src        []int32           // by sequence number: the request that carries its events
	views      map[viewKey]int64 // distinct impressions per user, UTC day of event_time, catalog
}

func (tr *rtruth) count() (imps, clicks int) {
	for i := range tr.imp {
		if tr.imp[i] {
			imps++
		}
		if tr.click[i] {
			clicks++
		}
	}
	return imps, clicks
}

// rgen makes the requests of the test. Every random choice comes from rng, in the order the
// test makes them, so a seed replays the same requests, sizes, delays and retry plans.
type rgen struct {
	rng   *rand.Rand
	host  string
	ads   []adInfo // the ads events go to
	all   []adInfo // ads, then the sentinel ad
	users []string
	tr    *rtruth
	reqs  []*rreq
}

// newImp returns a new impression id for events of ad carried by r.
func (g *rgen) newImp(r *rreq, ad adInfo) string {
	seq := len(g.tr.imp)
	g.tr.imp = append(g.tr.imp, false)
	g.tr.click = append(g.tr.click, false)
	g.tr.ad = append(g.tr.ad, int16(slices.IndexFunc(g.all, func(a adInfo) bool { return a.id == ad.id })))
	g.tr.src = append(g.tr.src, int32(r.idx))
	return fmt.Sprintf("ri%07d", seq)
}

// seqOf is the sequence number of an impression id of the test, or -1.
func seqOf(imp string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(imp, "ri"))
	if err != nil || !strings.HasPrefix(imp, "ri") {
		return -1
	}
	return n
}

// pickAd is skewed towards the first ads, so that the top-N has a clear order.
func (g *rgen) pickAd() adInfo {
	n := len(g.ads)
	return g.ads[min(g.rng.IntN(n), g.rng.IntN(n), g.rng.IntN(n+2))%n]
}

func (g *rgen) addImp(r *rreq, imp, user string, ad adInfo, at int64) {
	seq := seqOf(imp)
	if g.tr.imp[seq] || g.tr.src[seq] != int32(r.idx) || g.all[g.tr.ad[seq]].id != ad.id {
		panic("test bug: impression id reused: " + imp)
	}
	g.tr.imp[seq] = true
	day := time.Unix(at, 0).UTC().Format(time.DateOnly)
	g.tr.views[viewKey{user, day, ad.catalogID}]++
}

func (g *rgen) addClick(r *rreq, imp string, ad adInfo) {
	seq := seqOf(imp)
	if g.tr.click[seq] || g.tr.src[seq] != int32(r.idx) || g.all[g.tr.ad[seq]].id != ad.id {
		panic("test bug: click impression id reused: " + imp)
	}
	g.tr.click[seq] = true
}

// newReq registers a request and draws how the client abandons it.
func (g *rgen) newReq(kind callKind) *rreq {
	r := &rreq{idx: len(g.reqs), kind: kind}
	g.reqs = append(g.reqs, r)
	n := 1
	if g.rng.IntN(4) == 0 {
		n++
		if g.rng.IntN(3) == 0 {
			n++
		}
	}
	for range n {
		var d time.Duration
		switch x := g.rng.IntN(100); {
		case kind == kindBatch && x < 15, kind != kindBatch && x < 60:
			d = time.Duration(g.rng.IntN(2500)) * time.Microsecond // very short
		default:
			d = time.Duration(g.rng.IntN(50_000)) * time.Microsecond
		}
		r.giveUps = append(r.giveUps, d)
	}
	if kind == kindBatch && g.rng.IntN(20) == 0 {
		r.cut = g.rng.Float64()
	}
	r.rst = g.rng.IntN(3) == 0
	return r
}

func (g *rgen) setRaw(r *rreq, method, target, key, ctype string, body []byte) {
	var b bytes.Buffer
	b.Grow(len(body) + 512)
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\n", method, target, g.host, browserUA)
	if key != "" {
		fmt.Fprintf(&b, "Authorization: Bearer %s\r\n", key)
	}
	if body != nil {
		fmt.Fprintf(&b, "Content-Type: %s\r\nContent-Length: %d\r\n", ctype, len(body))
	}
	b.WriteString("Connection: close\r\n\r\n")
	r.hdrLen = b.Len()
	b.Write(body)
	r.raw = b.Bytes()
}

// batchSize draws a batch size from 1 to maxBatchLines, most of them small.
func (g *rgen) batchSize() int {
	switch x := g.rng.IntN(100); {
	case x < 35:
		return 1 + g.rng.IntN(50)
	case x < 65:
		return 50 + g.rng.IntN(950)
	case x < 88:
		return 1000 + g.rng.IntN(4000)
	}
	return 5000 + g.rng.IntN(maxBatchLines-5000+1)
}

// batch makes a POST /events request of n lines: impressions with a user and catalog id,
// clicks on them, and clicks alone. Event times are up to two minutes before t0.
func (g *rgen) batch(n int, t0 time.Time) *rreq {
	r := g.newReq(kindBatch)
	body := make([]byte, 0, 160*n)
	lines := 0
	line := func(typ, imp string, ad adInfo, user, catalog string, at int64) {
		body = fmt.Appendf(body, `{"type":%q,"impression_id":%q,"ad_id":%q`, typ, imp, ad.id)
		if user != "" {
			body = fmt.Appendf(body, `,"user_id":%q,"catalog_id":%q`, user, catalog)
		}
		body = fmt.Appendf(body, `,"event_time":%d}`+"\n", at)
		lines++
	}
	for lines < n {
		ad := g.pickAd()
		imp := g.newImp(r, ad)
		at := t0.Unix() - int64(g.rng.IntN(120))
		x := g.rng.IntN(100)
		if x < 90 {
			user := g.users[g.rng.IntN(len(g.users))]
			line("impression", imp, ad, user, ad.catalogID, at)
			g.addImp(r, imp, user, ad, at)
		}
		if x >= 70 && lines < n {
			line("click", imp, ad, "", "", at+int64(g.rng.IntN(30)))
			g.addClick(r, imp, ad)
		}
	}
	r.events = lines
	r.third = g.rng.IntN(4) == 0
	g.setRaw(r, "POST", "/events", testAdminKey, "application/x-ndjson", body)
	return r
}

// appClick makes a POST /click request.
func (g *rgen) appClick() *rreq {
	r := g.newReq(kindAppClick)
	ad := g.pickAd()
	imp := g.newImp(r, ad)
	body, _ := json.Marshal(map[string]string{"ad_id": ad.id, "impression_id": imp, "user_id": g.users[g.rng.IntN(len(g.users))]})
	g.addClick(r, imp, ad)
	r.events, r.landing = 1, ad.landing
	g.setRaw(r, "POST", "/click", "", "application/json", body)
	return r
}

// tokenClick makes a GET /c request; its token is signed later (setRaw once it is known).
type pendingToken struct {
	r         *rreq
	ad        adInfo
	imp, user string
}

func (g *rgen) tokenClick() pendingToken {
	r := g.newReq(kindClick)
	ad := g.pickAd()
	imp := g.newImp(r, ad)
	g.addClick(r, imp, ad)
	r.events, r.landing = 1, ad.landing
	return pendingToken{r: r, ad: ad, imp: imp, user: g.users[g.rng.IntN(len(g.users))]}
}

// rrun sends the requests and keeps the counts of what happened.
type rrun struct {
	addr  string
	probs problems

	attempts, abandoned, cuts, answeredInTime, retries, unavailable, transportErrs atomic.Int64
	abandonedByKind                                                                [numKinds]atomic.Int64
	retriedFar, thirdSends, eventsSent                                             atomic.Int64
}

// attempt sends r on a new connection. giveUp >= 0 is how long the client waits for the
// whole answer before it closes the connection (errGaveUp); cut writes only part of the
// body and closes. A negative giveUp waits for the answer (up to a minute).
func (x *rrun) attempt(r *rreq, giveUp time.Duration, cut int, rst bool) (*response, error) {
	x.attempts.Add(1)
	conn, err := net.DialTimeout("tcp", x.addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	abandon := func() {
		if tc, ok := conn.(*net.TCPConn); ok && rst {
			_ = tc.SetLinger(0)
		}
		conn.Close()
	}
	data := r.raw
	if cut > 0 {
		data = data[:cut]
	}
	_ = conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := conn.Write(data); err != nil {
		conn.Close()
		return nil, err
	}
	if cut > 0 {
		abandon()
		return nil, errGaveUp
	}
	x.eventsSent.Add(int64(r.events))
	deadline := time.Now().Add(time.Minute)
	if giveUp >= 0 {
		deadline = time.Now().Add(giveUp)
	}
	_ = conn.SetReadDeadline(deadline)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	var body []byte
	if err == nil {
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err != nil {
		if giveUp >= 0 {
			abandon()
			return nil, errGaveUp
		}
		conn.Close()
		return nil, err
	}
	conn.Close()
	return &response{status: resp.StatusCode, header: resp.Header, body: body}, nil
}

// abandon sends r's abandoned attempts. It reports false when one of them was answered
// anyway (the client did not give up in time): r needs no retry then.
func (x *rrun) abandon(r *rreq) (pending bool) {
	for i, d := range r.giveUps {
		cut := 0
		if i == 0 && r.cut > 0 && len(r.raw)-r.hdrLen > 1 {
			cut = r.hdrLen + 1 + int(float64(len(r.raw)-r.hdrLen-2)*r.cut)
		}
		resp, err := x.attempt(r, d, cut, r.rst)
		switch {
		case err == nil && resp.status == http.StatusServiceUnavailable:
			x.unavailable.Add(1) // nothing accepted: still to be sent
			continue
		case err == nil:
			x.answeredInTime.Add(1)
			x.answer(r, resp)
			return false
		case !errors.Is(err, errGaveUp):
			x.transportErrs.Add(1) // failed before the client gave up: just as unknown an outcome
		}
		r.aborted++
		x.abandoned.Add(1)
		x.abandonedByKind[r.kind].Add(1)
		if cut > 0 {
			x.cuts.Add(1)
		}
	}
	return true
}

// settle sends r until it is answered: a 503 (or a refused connection) is retried a little
// later.
func (x *rrun) settle(r *rreq) {
	for try := 1; ; try++ {
		x.retries.Add(1)
		resp, err := x.attempt(r, -1, 0, false)
		switch {
		case err != nil:
			x.transportErrs.Add(1)
			if try >= 50 {
				x.probs.add("%s (request %d): no answer after %d tries: %v", kindNames[r.kind], r.idx, try, err)
				return
			}
			time.Sleep(50 * time.Millisecond)
		case resp.status == http.StatusServiceUnavailable:
			x.unavailable.Add(1)
			if try >= 400 {
				x.probs.add("%s (request %d): still 503 after %d tries: %v", kindNames[r.kind], r.idx, try, resp)
				return
			}
			time.Sleep(25 * time.Millisecond)
		default:
			x.answer(r, resp)
			return
		}
	}
}

// answer checks a definite answer.
func (x *rrun) answer(r *rreq, resp *response) {
	r.answers++
	switch r.kind {
	case kindClick, kindAppClick:
		if resp.status != http.StatusFound || resp.header.Get("Location") != r.landing {
			x.probs.add("%s (request %d): got %v Location %q, want 302 to %q", kindNames[r.kind], r.idx, resp, resp.header.Get("Location"), r.landing)
		}
	case kindBatch:
		var br batchResp
		if resp.status != http.StatusOK || json.Unmarshal(resp.body, &br) != nil {
			x.probs.add("POST /events (request %d, %d lines): got %v, want 200 with counts", r.idx, r.events, resp)
			return
		}
		if d := br.mismatch(r.events, nil); d != "" {
			x.probs.add("POST /events (request %d, %d lines): %s", r.idx, r.events, d)
		}
		if r.answers > 1 && br.Accepted != 0 {
			x.probs.add("POST /events (request %d, %d lines) sent again after it was acknowledged: accepted %d, want 0 (all duplicates)", r.idx, r.events, br.Accepted)
		}
	}
}

// run calls fn for each request on workers goroutines.
func run(reqs []*rreq, workers int, fn func(*rreq)) {
	ch := make(chan *rreq)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for r := range ch {
				fn(r)
			}
		})
	}
	for _, r := range reqs {
		ch <- r
	}
	close(ch)
	wg.Wait()
}

// TestRetriesAfterClientAbortCountOnce: requests abandoned by the client at random points and
// then retried until answered (at once, or after more than 100,000 other events in the
// partition, batches sometimes a third time) count each event once in /metrics,
// /metrics/top, campaign spend and user views.
func TestRetriesAfterClientAbortCountOnce(t *testing.T) { retriesCountOnce(t) }

// TestRetriesAcrossHotAdSaltingCountOnce is the same with hot-ad salting on and a threshold
// every ad crosses now and then, so ads turn hot and cold while requests are abandoned and
// retried: copies of one event sent before and after a transition still count once.
func TestRetriesAcrossHotAdSaltingCountOnce(t *testing.T) {
	retriesCountOnce(t, "--partitions", "4", "--hot-ad-salts", "4", "--hot-ad-share", "0.1", "--hot-ad-min-events", "50", "--hot-ad-cooldown", "2s")
}

func retriesCountOnce(t *testing.T, extra ...string) {
	needBinary(t)
	sd := seed(t)
	rng := newRand(sd, 0)
	started := time.Now()
	e := newEnv(t)
	srv := e.start(append([]string{"--admin-key", testAdminKey, "--click-secret", testClickSecret, "--partitions", fmt.Sprint(retryPartitions)}, extra...)...)
	client := newClient(16)

	// Catalog: 2 advertisers x 2 campaigns x 3 ads (3 catalog ids), each campaign with its own
	// CPC and a budget far above what the test can spend, plus the sentinel ad.
	cat := setupCatalog(t, client, srv.base, testAdminKey, "r", 2, 2, 3)
	cpc := map[string]int64{}
	var camps []string
	for _, ad := range cat.ads {
		if _, ok := cpc[ad.campaign]; ok {
			continue
		}
		camps = append(camps, ad.campaign)
		cpc[ad.campaign] = int64(100_000 + rng.IntN(20)*25_000)
		mustJSON(t, client, "PUT", srv.base+"/api/v1/campaigns/"+ad.campaign, testAdminKey, map[string]any{
			"advertiser_id": ad.advertiser, "name": "Campaign " + ad.campaign, "status": "active",
			"cpc_bid_micros": cpc[ad.campaign], "daily_budget_micros": int64(5e13), "total_budget_micros": int64(9e13),
		}, 200, nil)
	}
	sentinel := adInfo{id: sentinelAd, campaign: cat.ads[0].campaign, advertiser: cat.ads[0].advertiser, catalogID: "cat-sentinel",
		landing: "https://shop.example/p/" + sentinelAd}
	mustJSON(t, client, "PUT", srv.base+"/api/v1/ads/"+sentinel.id, testAdminKey, map[string]any{
		"campaign_id": sentinel.campaign, "landing_url": sentinel.landing, "catalog_id": sentinel.catalogID,
	}, 200, nil)
	ads := slices.Clone(cat.ads)
	allAds := append(slices.Clone(ads), sentinel)

	tr := &rtruth{views: map[viewKey]int64{}}
	g := &rgen{rng: rng, host: srv.api, ads: ads, all: allAds, tr: tr}
	for i := range 40 {
		g.users = append(g.users, fmt.Sprintf("ru-%02d", i))
	}
	x := &rrun{addr: srv.api}
	const workers = 8

	// Phase 1: GET /c, POST /click and batches of 1 to 20,000 lines, interleaved. Each is
	// abandoned one to three times; half are retried at once, half only after phase 2.
	t0 := time.Now()
	var tokens []pendingToken
	var phase1 []*rreq
	for range batches - 2 {
		phase1 = append(phase1, g.batch(g.batchSize(), t0))
	}
	phase1 = append(phase1, g.batch(maxBatchLines, t0), g.batch(maxBatchLines, t0))
	for range tokenClicks {
		pt := g.tokenClick()
		tokens = append(tokens, pt)
		phase1 = append(phase1, pt.r)
	}
	for range appClicks {
		phase1 = append(phase1, g.appClick())
	}
	for _, r := range phase1 {
		r.far = rng.IntN(2) == 0
	}
	rng.Shuffle(len(phase1), func(i, j int) { phase1[i], phase1[j] = phase1[j], phase1[i] })
	var mintErr atomic.Value
	mintCh := make(chan pendingToken)
	var mintWG sync.WaitGroup
	for range workers {
		mintWG.Go(func() {
			for pt := range mintCh {
				tok, err := clickToken(context.Background(), client, srv.base, testAdminKey, pt.ad.id, pt.imp, pt.user)
				if err != nil {
					mintErr.Store(err)
					continue
				}
				g.setRaw(pt.r, "GET", "/c/"+tok, "", "", nil)
			}
		})
	}
	for _, pt := range tokens {
		mintCh <- pt
	}
	close(mintCh)
	mintWG.Wait()
	if err, _ := mintErr.Load().(error); err != nil {
		t.Fatalf("sign click URLs: %v", err)
	}

	var farMu sync.Mutex
	var far []*rreq
	p1 := time.Now()
	run(phase1, workers, func(r *rreq) {
		if x.abandon(r) {
			if r.far {
				farMu.Lock()
				far = append(far, r)
				farMu.Unlock()
				return
			}
			x.settle(r)
		}
		r.done()
	})
	x.probs.check(t, "phase 1")
	t.Logf("phase 1: %d requests, %d attempts abandoned, %d answered before the client gave up, %d left to retry after other traffic, in %v",
		len(phase1), x.abandoned.Load(), x.answeredInTime.Load(), len(far), time.Since(p1).Round(time.Millisecond))

	// Phase 2: more than farTraffic distinct events of other traffic, in batches of up to
	// 20,000 lines, themselves abandoned and retried at once.
	p2 := time.Now()
	var phase2 []*rreq
	for n := 0; n < farTraffic; n += maxBatchLines {
		phase2 = append(phase2, g.batch(maxBatchLines, time.Now()))
	}
	run(phase2, 3, func(r *rreq) {
		if x.abandon(r) {
			x.settle(r)
		}
		r.done()
	})
	x.probs.check(t, "phase 2")
	t.Logf("phase 2: %d batches, %d distinct events of other traffic, in %v", len(phase2), len(phase2)*maxBatchLines, time.Since(p2).Round(time.Millisecond))

	// Phase 3: the far retries, then a third sending of some batches (abandoned, then
	// retried until answered: every answer must be all duplicates).
	p3 := time.Now()
	x.retriedFar.Store(int64(len(far)))
	run(far, workers, func(r *rreq) {
		r.late = true
		x.settle(r)
		r.done()
	})
	var thirds []*rreq
	for _, r := range slices.Concat(phase1, phase2) {
		if r.kind == kindBatch && r.third {
			thirds = append(thirds, r)
		}
	}
	x.thirdSends.Store(int64(len(thirds)))
	run(thirds, workers, func(r *rreq) {
		if x.abandon(r) {
			x.settle(r)
		}
	})
	// The sentinel: the last events, one impression and one click of an ad of its own.
	sent := g.newReq(kindBatch)
	sentImp := g.newImp(sent, sentinel)
	at := time.Now().Unix()
	g.addImp(sent, sentImp, sentinelUser, sentinel, at)
	g.addClick(sent, sentImp, sentinel)
	sent.events = 2
	g.setRaw(sent, "POST", "/events", testAdminKey, "application/x-ndjson", fmt.Appendf(nil,
		`{"type":"impression","impression_id":%q,"ad_id":%q,"user_id":%q,"catalog_id":%q,"event_time":%d}`+"\n"+
			`{"type":"click","impression_id":%q,"ad_id":%q,"event_time":%d}`+"\n",
		sentImp, sentinel.id, sentinelUser, sentinel.catalogID, at, sentImp, sentinel.id, at))
	x.settle(sent)
	x.probs.check(t, "phase 3")
	t.Logf("phase 3: %d far retries and %d third sendings of batches in %v", len(far), len(thirds), time.Since(p3).Round(time.Millisecond))

	nImps, nClicks := tr.count()
	var nBatches, abortedReqs int
	for _, r := range g.reqs {
		if r.kind == kindBatch {
			nBatches++
		}
		if r.aborted > 0 {
			abortedReqs++
		}
	}
	t.Logf("load: %d requests (%d GET /c, %d POST /click, %d POST /events) sent in %d attempts: %d requests abandoned by the client at least once, %d attempts abandoned (GET /c %d, POST /click %d, POST /events %d, %d of them in the middle of the body), "+
		"%d answered before the client gave up, %d retries (%d after more than %d other events, %d 503s, %d connection errors); %d events sent with repeats, %d distinct impressions, %d distinct clicks",
		len(g.reqs), tokenClicks, appClicks, nBatches, x.attempts.Load(), abortedReqs, x.abandoned.Load(),
		x.abandonedByKind[kindClick].Load(), x.abandonedByKind[kindAppClick].Load(), x.abandonedByKind[kindBatch].Load(), x.cuts.Load(),
		x.answeredInTime.Load(), x.retries.Load(), x.retriedFar.Load(), farTraffic, x.unavailable.Load(), x.transportErrs.Load(),
		x.eventsSent.Load(), nImps, nClicks)

	w := newRetryWant(tr, allAds, cpc)
	rc := &retryCheck{srv: srv, c: client, want: w, ads: allAds, camps: camps,
		start: t0.Add(-10 * time.Minute).Truncate(time.Minute), end: time.Now().Add(3 * time.Minute).Truncate(time.Minute)}
	rc.wait(t)
	// Read before logDuplicates, which stops the server.
	if slices.Contains(extra, "--hot-ad-salts") {
		m := opsMetricValues(t, srv)
		t.Logf("hot ads: %v events salted, %v transitions", m["adpulse_ingest_salted_events_total"], m["adpulse_ingest_hot_transitions_total"])
		if m["adpulse_ingest_salted_events_total"] == 0 || m["adpulse_ingest_hot_transitions_total"] < 2 {
			t.Errorf("salting was not exercised: %v events salted, %v transitions", m["adpulse_ingest_salted_events_total"], m["adpulse_ingest_hot_transitions_total"])
		}
	}
	// Counting once is not enough: duplicates are dropped before the stream, so the log
	// itself must hold each event once (the stages' duplicate filter is only the second
	// line of defence).
	if dup := logDuplicates(t, e, srv, tr, g.reqs); dup > 0 {
		t.Errorf("%d events reached the event log more than once: the idempotency keys let a retry through", dup)
	}
	t.Logf("retry test took %v", time.Since(started).Round(time.Millisecond))
}

// retryWant is what every count must be: each distinct event once.
type retryWant struct {
	adImp, adClk, campImp, campClk, campSpend map[string]int64
	views                                     map[string]map[string]map[string]int64 // user -> day -> catalog -> n
	days                                      []string
}

func newRetryWant(tr *rtruth, ads []adInfo, cpc map[string]int64) *retryWant {
	w := &retryWant{adImp: map[string]int64{}, adClk: map[string]int64{}, campImp: map[string]int64{}, campClk: map[string]int64{},
		campSpend: map[string]int64{}, views: map[string]map[string]map[string]int64{}}
	for seq, ad := range tr.ad {
		ad := ads[ad]
		if tr.imp[seq] {
			w.adImp[ad.id]++
			w.campImp[ad.campaign]++
		}
		if tr.click[seq] {
			w.adClk[ad.id]++
			w.campClk[ad.campaign]++
			w.campSpend[ad.campaign] += cpc[ad.campaign]
		}
	}
	for k, n := range tr.views {
		if w.views[k.user] == nil {
			w.views[k.user] = map[string]map[string]int64{}
		}
		if w.views[k.user][k.day] == nil {
			w.views[k.user][k.day] = map[string]int64{}
			if !slices.Contains(w.days, k.day) {
				w.days = append(w.days, k.day)
			}
		}
		w.views[k.user][k.day][k.catalog] += n
	}
	sort.Strings(w.days)
	return w
}

// retryCheck reads every count the test asserts.
type retryCheck struct {
	srv        *server
	c          *http.Client
	want       *retryWant
	ads        []adInfo
	camps      []string
	start, end time.Time
}

// retryGot is one reading of the counts.
type retryGot struct {
	adImp, adClk, adSpend, campImp, campClk, campSpend, campSpent map[string]int64
	topClicks, topImps                                            []topItem
	views                                                         map[string]map[string]map[string]int64
}

func (rc *retryCheck) sums(ctx context.Context, l level, ids []string) (imp, clk, spend map[string]int64, err error) {
	v := url.Values{}
	v.Set(l.idsParam(), strings.Join(ids, ","))
	v.Set("start_time", rc.start.UTC().Format(time.RFC3339))
	v.Set("end_time", rc.end.UTC().Format(time.RFC3339))
	v.Set("interval", "1d")
	var r metricsResp
	if err := getJSON(ctx, rc.c, rc.srv.base, "/metrics?"+v.Encode(), testAdminKey, &r); err != nil {
		return nil, nil, nil, err
	}
	imp, clk, spend = map[string]int64{}, map[string]int64{}, map[string]int64{}
	for _, s := range r.Series {
		id := s.id(l)
		for _, p := range s.Points {
			imp[id] += p.Impressions
			clk[id] += p.Clicks
			spend[id] += p.SpendMicros
		}
	}
	return imp, clk, spend, nil
}

func (rc *retryCheck) read(ctx context.Context) (*retryGot, error) {
	g := &retryGot{campSpent: map[string]int64{}, views: map[string]map[string]map[string]int64{}}
	var adIDs []string
	for _, ad := range rc.ads {
		adIDs = append(adIDs, ad.id)
	}
	var err error
	if g.adImp, g.adClk, g.adSpend, err = rc.sums(ctx, lvAd, adIDs); err != nil {
		return nil, err
	}
	if g.campImp, g.campClk, g.campSpend, err = rc.sums(ctx, lvCampaign, rc.camps); err != nil {
		return nil, err
	}
	for _, metric := range []string{"clicks", "impressions"} {
		v := url.Values{}
		v.Set("n", "1000")
		v.Set("metric", metric)
		v.Set("by", "ad")
		v.Set("start_time", rc.start.UTC().Format(time.RFC3339))
		v.Set("end_time", rc.end.UTC().Format(time.RFC3339))
		top, err := getTop(ctx, rc.c, rc.srv.base, "/metrics/top?"+v.Encode(), testAdminKey, "ad_id", metric)
		if err != nil {
			return nil, err
		}
		if metric == "clicks" {
			g.topClicks = top.Items
		} else {
			g.topImps = top.Items
		}
	}
	for _, cmp := range rc.camps {
		var cj campaignJSON
		if err := getJSON(ctx, rc.c, rc.srv.base, "/api/v1/campaigns/"+cmp, testAdminKey, &cj); err != nil {
			return nil, err
		}
		g.campSpent[cmp] = cj.Budget.SpentTotalMicros
	}
	for user := range rc.want.views {
		for _, day := range rc.want.days {
			var vj struct {
				Catalogs map[string]int64 `json:"catalogs"`
			}
			if err := getJSON(ctx, rc.c, rc.srv.base, "/api/v1/users/"+user+"/views?date="+day, testAdminKey, &vj); err != nil {
				return nil, err
			}
			if g.views[user] == nil {
				g.views[user] = map[string]map[string]int64{}
			}
			g.views[user][day] = nonZero(vj.Catalogs)
		}
	}
	return g, nil
}

// topOf is the exact top-N of counts: highest first, ties by id, zeros left out.
func topOf(m map[string]int64) []topItem {
	var items []topItem
	for id, n := range m {
		if n != 0 {
			items = append(items, topItem{id, n})
		}
	}
	sort.Slice(items, func(i, j int) bool {
		if items[i].value != items[j].value {
			return items[i].value > items[j].value
		}
		return items[i].id < items[j].id
	})
	return items
}

// excess sums, by kind of count, how far the counts are from the distinct events sent, and
// lists the differences.
type excess struct {
	over  map[string]int64 // kind of count -> sum of what was counted more than once
	under map[string]int64 // kind of count -> sum of what is missing
	diffs map[string][]string
	n     int
}

func (ex *excess) add(kind, diff string) {
	ex.diffs[kind] = append(ex.diffs[kind], diff)
	ex.n++
}

func (ex *excess) cmp(kind, what string, got, want int64) {
	switch {
	case got > want:
		ex.over[kind] += got - want
		ex.add(kind, fmt.Sprintf("%s: %d, want %d distinct (%d counted twice)", what, got, want, got-want))
	case got < want:
		ex.under[kind] += want - got
		ex.add(kind, fmt.Sprintf("%s: %d, want %d distinct (%d missing)", what, got, want, want-got))
	}
}

func (rc *retryCheck) compare(g *retryGot) *excess {
	w := rc.want
	ex := &excess{over: map[string]int64{}, under: map[string]int64{}, diffs: map[string][]string{}}
	for _, ad := range rc.ads {
		ex.cmp("/metrics clicks per ad", "/metrics ad "+ad.id+" clicks", g.adClk[ad.id], w.adClk[ad.id])
		ex.cmp("/metrics impressions per ad", "/metrics ad "+ad.id+" impressions", g.adImp[ad.id], w.adImp[ad.id])
	}
	for _, c := range rc.camps {
		ex.cmp("/metrics clicks per campaign", "/metrics campaign "+c+" clicks", g.campClk[c], w.campClk[c])
		ex.cmp("/metrics impressions per campaign", "/metrics campaign "+c+" impressions", g.campImp[c], w.campImp[c])
		ex.cmp("/metrics spend_micros per campaign", "/metrics campaign "+c+" spend_micros (distinct clicks x cpc)", g.campSpend[c], w.campSpend[c])
		ex.cmp("campaign budget.spent_total_micros", "GET /api/v1/campaigns/"+c+" budget.spent_total_micros (distinct clicks x cpc)", g.campSpent[c], w.campSpend[c])
	}
	for _, pair := range []struct {
		metric string
		got    []topItem
		want   map[string]int64
	}{{"clicks", g.topClicks, w.adClk}, {"impressions", g.topImps, w.adImp}} {
		kind := "/metrics/top by ad, " + pair.metric
		if want := topOf(pair.want); !slices.Equal(pair.got, want) {
			before := ex.n
			for _, it := range pair.got {
				ex.cmp(kind, "/metrics/top?by=ad&metric="+pair.metric+" "+it.id, it.value, pair.want[it.id])
			}
			if ex.n == before {
				ex.under[kind]++ // the same counts, in another order or with ids missing
			}
			ex.add(kind, fmt.Sprintf("/metrics/top?by=ad&metric=%s: got %v, want %v", pair.metric, pair.got, want))
		}
	}
	for user, days := range w.views {
		for _, day := range w.days {
			wantCat, gotCat := days[day], g.views[user][day]
			cats := slices.Sorted(func(yield func(string) bool) {
				seen := map[string]bool{}
				for _, m := range []map[string]int64{wantCat, gotCat} {
					for c := range m {
						if !seen[c] && !yield(c) {
							return
						}
						seen[c] = true
					}
				}
			})
			for _, c := range cats {
				ex.cmp("user views (GET /api/v1/users/{u}/views)", fmt.Sprintf("GET /api/v1/users/%s/views?date=%s catalog %s", user, day, c), gotCat[c], wantCat[c])
			}
		}
	}
	return ex
}

// caughtUp reports whether the sentinel's events, sent last, are counted everywhere: with one
// partition, everything sent before them was consumed then.
func (g *retryGot) caughtUp() bool {
	var sentinelViews int64
	for _, day := range g.views[sentinelUser] {
		for _, n := range day {
			sentinelViews += n
		}
	}
	return g.adClk[sentinelAd] > 0 && g.adImp[sentinelAd] > 0 && sentinelViews > 0
}

// wait polls the counts until they equal the distinct events sent and stay so, or some are
// higher and none changes any more, or a minute passed; then it reports the differences.
func (rc *retryCheck) wait(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	start := time.Now()
	var (
		last      *retryGot
		lastErr   error
		lastFP    string
		stableFor time.Time
		ex        *excess
	)
	for {
		g, err := rc.read(ctx)
		lastErr = err
		if err == nil {
			fp := fmt.Sprint(*g)
			if fp != lastFP {
				lastFP, stableFor = fp, time.Now()
			}
			last = g
			ex = rc.compare(g)
			stable := time.Since(stableFor)
			// Counts only grow: one above the distinct events sent stays so, and once they all
			// stopped moving it is final. One below may still be on its way.
			if g.caughtUp() && ((ex.n == 0 && stable >= time.Second) || (len(ex.over) > 0 && stable >= 3*time.Second)) {
				break
			}
		}
		if time.Since(start) > time.Minute {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	took := time.Since(start).Round(time.Millisecond)
	if last == nil {
		t.Fatalf("counts never readable within %v: %v", took, lastErr)
	}
	w := rc.want
	var wantClk, wantImp, gotClk, gotImp, wantViews, gotViews int64
	for _, ad := range rc.ads {
		wantClk += w.adClk[ad.id]
		wantImp += w.adImp[ad.id]
		gotClk += last.adClk[ad.id]
		gotImp += last.adImp[ad.id]
	}
	for user, days := range w.views {
		for _, day := range w.days {
			for _, n := range days[day] {
				wantViews += n
			}
			for _, n := range last.views[user][day] {
				gotViews += n
			}
		}
	}
	var wantSpend, gotSpend, gotSpent int64
	for _, c := range rc.camps {
		wantSpend += w.campSpend[c]
		gotSpend += last.campSpend[c]
		gotSpent += last.campSpent[c]
	}
	t.Logf("counts after %v (sentinel consumed: %v): /metrics clicks %d (want %d distinct), impressions %d (want %d); user views %d (want %d); /metrics spend_micros %d, budget spent_total_micros %d (want %d)",
		took, last.caughtUp(), gotClk, wantClk, gotImp, wantImp, gotViews, wantViews, gotSpend, gotSpent, wantSpend)
	if ex.n == 0 {
		return
	}
	var summary, details []string
	for _, k := range slices.Sorted(maps.Keys(ex.diffs)) {
		var parts []string
		if n := ex.over[k]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d counted twice", n))
		}
		if n := ex.under[k]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d missing", n))
		}
		summary = append(summary, fmt.Sprintf("%s: %s", k, strings.Join(parts, ", ")))
		const perKind = 6
		d := ex.diffs[k]
		details = append(details, d[:min(len(d), perKind)]...)
		if len(d) > perKind {
			details = append(details, fmt.Sprintf("... and %d more differences of %s", len(d)-perKind, k))
		}
	}
	t.Errorf("retried requests are not counted exactly once (%d differences after %v, sentinel consumed: %v):\n  %s\nfirst differences of each kind:\n  %s",
		ex.n, took, last.caughtUp(), strings.Join(summary, "\n  "), strings.Join(details, "\n  "))
}

// logDuplicates stops the server and reports which events the event log holds more than once,
// by the kind of request that carried them and when it was retried: what was counted twice
// comes from there. It reads the log one message at a time, keeping a count per event sent.
func logDuplicates(t *testing.T, e *env, srv *server, tr *rtruth, reqs []*rreq) (dup int) {
	t.Helper()
	srv.stop(t)
	dir := e.snapshotLog(t, "log-final")
	l, err := locallog.Open(locallog.Options{Dir: dir, Retention: -1})
	if err != nil {
		t.Fatalf("open event log: %v", err)
	}
	defer l.Close()
	ctx := context.Background()
	copies := [2][]uint8{make([]uint8, len(tr.imp)), make([]uint8, len(tr.imp))} // impressions, clicks
	var total, unknown int
	var ev event.Event
	for p := range l.Partitions() {
		off, end, err := l.Offsets(ctx, p)
		if err != nil {
			t.Fatalf("partition %d offsets: %v", p, err)
		}
		for off < end {
			msgs, err := l.Read(ctx, p, off, 1<<20)
			if err != nil || len(msgs) == 0 {
				t.Fatalf("read partition %d at %d (end %d): %d messages, %v", p, off, end, len(msgs), err)
			}
			for _, m := range msgs {
				off = m.Offset + 1
				total++
				if err := ev.Decode(m.Value); err != nil {
					t.Fatalf("partition %d offset %d: decode: %v", p, m.Offset, err)
				}
				seq := seqOf(ev.ImpressionID)
				typ := 0
				if ev.Type == event.TypeClick {
					typ = 1
				}
				if seq < 0 || seq >= len(tr.imp) || (typ == 0 && !tr.imp[seq]) || (typ == 1 && !tr.click[seq]) {
					unknown++
					continue
				}
				copies[typ][seq] = min(copies[typ][seq]+1, 255)
			}
		}
	}
	type bucket struct{ events, extra int }
	by := map[string]*bucket{}
	var extra int
	for typ, cs := range copies {
		for seq, n := range cs {
			if n < 2 {
				continue
			}
			dup++
			extra += int(n) - 1
			r := reqs[tr.src[seq]]
			what := kindNames[r.kind] + [2]string{" impressions", " clicks"}[typ]
			switch {
			case r.late:
				what += ", retried after more than 100,000 other events"
			case r.third:
				what += ", retried at once (the batch was sent a third time later)"
			default:
				what += ", retried at once"
			}
			if by[what] == nil {
				by[what] = &bucket{}
			}
			by[what].events++
			by[what].extra += int(n) - 1
		}
	}
	var lines []string
	for _, k := range slices.Sorted(maps.Keys(by)) {
		lines = append(lines, fmt.Sprintf("%s: %d events written more than once (%d extra copies)", k, by[k].events, by[k].extra))
	}
	imps, clicks := tr.count()
	t.Logf("the event log holds %d events for the %d distinct events sent: %d of them written more than once (%d extra copies), %d events that were never sent:\n  %s",
		total, imps+clicks, dup, extra, unknown, strings.Join(lines, "\n  "))
	return dup
}
