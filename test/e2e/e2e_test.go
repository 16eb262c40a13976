package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
)

const (
	testAdminKey    = "e2e-admin-key-0123456789abcdef"
	testClickSecret = "e2e-click-secret-0123456789abcdef"
)

// ---------------------------------------------------------------------------------------
// Crash test: kill -9 mid-load, restart, and compare the log with what was acknowledged.

// slot is one served impression: a signed token naming an ad, an impression id and a user.
type slot struct {
	ad    adInfo
	imp   string
	user  string
	token string
}

type callKind int

const (
	kindClick    callKind = iota // GET /c/{token}
	kindPixel                    // GET /i/{token}
	kindAppClick                 // POST /click
	kindBatch                    // POST /events
	numKinds
)

var kindNames = [numKinds]string{"GET /c", "GET /i", "POST /click", "POST /events"}

// call is one request of the load, kept until it is acknowledged: a call that failed because
// the server was killed is retried, unchanged, after the restart.
type call struct {
	kind    callKind
	path    string
	body    []byte
	hdr     map[string]string
	keys    []string // the event keys it carries; for a batch, per non-blank line, "" for a line that must be rejected
	landing string   // where a click must redirect
	resend  bool     // identical to a batch already acknowledged: must accept nothing
	tries   int
	failed  bool // failed at a kill at least once
}

// ledger is the client-side record of the crash test.
type ledger struct {
	mu         sync.Mutex
	sent       map[string]want   // every key any request carried
	acked      map[string]ackRec // first acknowledgement of each key
	acks       int               // events covered by 2xx/302 responses, repeats included
	okByKind   [numKinds]int
	batchDup   int // "duplicates" summed over POST /events responses
	rejected   int // lines rejected as expected
	resends    int // acknowledged batches sent again unchanged
	okCalls    int
	replayable []*call // a sample of acknowledged calls
}

type ackRec struct {
	round   int
	kind    callKind
	retried bool // by a call that had failed at a kill before
}

func newLedger() *ledger {
	return &ledger{sent: map[string]want{}, acked: map[string]ackRec{}}
}

// register records that a request carries w, and returns its key.
func (l *ledger) register(w want) string {
	k := w.key()
	l.mu.Lock()
	defer l.mu.Unlock()
	if old, ok := l.sent[k]; ok && old != w {
		panic(fmt.Sprintf("test bug: key %s sent as %+v and as %+v", k, old, w))
	}
	l.sent[k] = w
	return k
}

func (l *ledger) ack(round int, cl *call, keys []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.okByKind[cl.kind]++
	for _, k := range keys {
		if k == "" {
			continue
		}
		l.acks++
		if _, ok := l.acked[k]; !ok {
			l.acked[k] = ackRec{round: round, kind: cl.kind, retried: cl.failed}
		}
	}
	// Keep a sample of acknowledged calls to replay after the last restart.
	if l.okCalls++; l.okCalls%25 == 0 && len(l.replayable) < 2000 {
		l.replayable = append(l.replayable, cl)
	}
}

// queue holds the calls to retry after a restart.
type queue struct {
	mu    sync.Mutex
	calls []*call
}

func (q *queue) push(c *call) {
	q.mu.Lock()
	q.calls = append(q.calls, c)
	q.mu.Unlock()
}

func (q *queue) pop() *call {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.calls) == 0 {
		return nil
	}
	c := q.calls[0]
	q.calls = q.calls[1:]
	return c
}

func (q *queue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.calls)
}

// lineRec is one NDJSON line already sent, kept to be sent again in other batches.
type lineRec struct {
	json []byte
	key  string
}

// generator makes the load's calls. Slots (signed impressions) are made at the start of each
// round and, a few at a time, during the load; the pool of sent lines is shared so batches of
// different workers overlap.
type generator struct {
	l        *ledger
	cat      *catalog
	eventSeq atomic.Int64
	mintSeq  atomic.Int64

	slotMu  sync.RWMutex
	slots   []*slot
	newFrom int // slots[newFrom:] were made this round: most traffic goes to them

	mu       sync.Mutex
	pool     []lineRec // ring of recently sent lines
	ringNext int
}

const poolSize = 3000

var interactionNames = []string{"add_to_cart", "purchase", "view_item", "signup"}

func (g *generator) pickSlot(r *rand.Rand) *slot {
	g.slotMu.RLock()
	defer g.slotMu.RUnlock()
	n := len(g.slots)
	switch x := r.IntN(100); {
	case x < 35:
		return g.slots[n-1-r.IntN(min(n, 16))] // the newest: their first events are fresh keys
	case x < 70 && g.newFrom < n:
		return g.slots[g.newFrom+r.IntN(n-g.newFrom)]
	}
	return g.slots[r.IntN(n)]
}

// addSlots adds slots made at the start of a round.
func (g *generator) addSlots(s []*slot) {
	g.slotMu.Lock()
	g.newFrom = len(g.slots)
	g.slots = append(g.slots, s...)
	g.slotMu.Unlock()
}

// mint signs a new impression through POST /api/v1/click-urls, as an ad server does while
// serving, so the load keeps producing keys never seen before. It returns nil if that failed.
func (g *generator) mint(ctx context.Context, c *http.Client, base string, r *rand.Rand) (*slot, error) {
	s := &slot{
		ad:   g.cat.ads[r.IntN(len(g.cat.ads))],
		imp:  fmt.Sprintf("imp-m%d", g.mintSeq.Add(1)),
		user: fmt.Sprintf("user-%d", r.IntN(50)),
	}
	var err error
	if s.token, err = clickToken(ctx, c, base, testAdminKey, s.ad.id, s.imp, s.user); err != nil {
		return nil, err
	}
	g.slotMu.Lock()
	g.slots = append(g.slots, s)
	g.slotMu.Unlock()
	return s, nil
}

// fresh is a click, pixel or app click on s (just minted).
func (g *generator) fresh(r *rand.Rand, s *slot) *call {
	switch r.IntN(3) {
	case 0:
		return g.click(s)
	case 1:
		return g.pixel(s)
	}
	return g.appClick(r, s)
}

func (g *generator) click(s *slot) *call {
	k := g.l.register(want{typ: event.TypeClick, ad: s.ad.id, imp: s.imp, user: s.user})
	return &call{kind: kindClick, path: "/c/" + s.token, keys: []string{k}, landing: s.ad.landing}
}

func (g *generator) pixel(s *slot) *call {
	k := g.l.register(want{typ: event.TypeImpression, ad: s.ad.id, imp: s.imp, user: s.user})
	return &call{kind: kindPixel, path: "/i/" + s.token, keys: []string{k}}
}

func (g *generator) appClick(r *rand.Rand, s *slot) *call {
	k := g.l.register(want{typ: event.TypeClick, ad: s.ad.id, imp: s.imp, user: s.user})
	c := &call{kind: kindAppClick, path: "/click", keys: []string{k}, landing: s.ad.landing,
		hdr: map[string]string{"Content-Type": "application/json"}}
	if r.IntN(3) == 0 {
		// The impression id may come as an Idempotency-Key header instead.
		c.hdr["Idempotency-Key"] = s.imp
		c.body, _ = json.Marshal(map[string]string{"ad_id": s.ad.id, "user_id": s.user})
	} else {
		c.body, _ = json.Marshal(map[string]string{"ad_id": s.ad.id, "impression_id": s.imp, "user_id": s.user})
	}
	return c
}

func (g *generator) next(r *rand.Rand) *call {
	switch x := r.IntN(100); {
	case x < 25:
		return g.click(g.pickSlot(r))
	case x < 50:
		return g.pixel(g.pickSlot(r))
	case x < 60:
		return g.appClick(r, g.pickSlot(r))
	}
	return g.batch(r)
}

// batch makes a POST /events body of 1-40 lines: impressions, clicks and interactions, with
// lines repeated inside the batch, lines other batches already carried, and now and then a
// line that must be rejected.
func (g *generator) batch(r *rand.Rand) *call {
	n := 1 + r.IntN(40)
	var body bytes.Buffer
	c := &call{kind: kindBatch, path: "/events", hdr: map[string]string{"Content-Type": "application/x-ndjson"}}
	var own []lineRec
	for i := 0; i < n; i++ {
		var lr lineRec
		x := r.IntN(100)
		switch {
		case len(own) > 0 && x < 12:
			lr = own[r.IntN(len(own))]
		case x < 22:
			g.mu.Lock()
			if len(g.pool) > 0 {
				lr = g.pool[r.IntN(len(g.pool))]
			}
			g.mu.Unlock()
		}
		if lr.json == nil {
			lr = g.newLine(r)
			own = append(own, lr)
		}
		body.Write(lr.json)
		body.WriteByte('\n')
		c.keys = append(c.keys, lr.key)
	}
	if r.IntN(20) == 0 {
		bad := [...]string{
			`{"type":"click","ad_id":"no-such-ad","impression_id":"never-` + strconv.Itoa(r.IntN(1000)) + `"}`,
			`{"type":"click","ad_id":`,
			`{"type":"Not A Type","ad_id":"x","impression_id":"y"}`,
		}[r.IntN(3)]
		// Insert it at a random line.
		lines := bytes.SplitAfter(body.Bytes(), []byte("\n"))
		at := r.IntN(len(c.keys) + 1)
		var nb bytes.Buffer
		for i := 0; i < at; i++ {
			nb.Write(lines[i])
		}
		nb.WriteString(bad + "\n")
		for i := at; i < len(lines); i++ {
			nb.Write(lines[i])
		}
		body = nb
		c.keys = slices.Insert(c.keys, at, "")
	}
	c.body = body.Bytes()
	g.mu.Lock()
	for _, lr := range own {
		if len(g.pool) < poolSize {
			g.pool = append(g.pool, lr)
		} else {
			g.pool[g.ringNext] = lr
			g.ringNext = (g.ringNext + 1) % poolSize
		}
	}
	g.mu.Unlock()
	return c
}

type lineJSON struct {
	Type         string `json:"type"`
	AdID         string `json:"ad_id"`
	ImpressionID string `json:"impression_id,omitempty"`
	EventID      string `json:"event_id,omitempty"`
	UserID       string `json:"user_id,omitempty"`
	EventTime    any    `json:"event_time,omitempty"`
}

func (g *generator) newLine(r *rand.Rand) lineRec {
	s := g.pickSlot(r)
	w := want{ad: s.ad.id, imp: s.imp, user: s.user}
	lj := lineJSON{AdID: s.ad.id, ImpressionID: s.imp, UserID: s.user}
	switch x := r.IntN(100); {
	case x < 35:
		w.typ, lj.Type = event.TypeImpression, "impression"
	case x < 65:
		w.typ, lj.Type = event.TypeClick, "click"
	case x < 92:
		w.typ, w.name = event.TypeInteraction, interactionNames[r.IntN(len(interactionNames))]
		w.eventID = fmt.Sprintf("ev-%d", g.eventSeq.Add(1))
		lj.Type, lj.EventID = w.name, w.eventID
	default:
		// An interaction without event_id is keyed by its type and impression id.
		w.typ, w.name = event.TypeInteraction, "share"
		lj.Type = w.name
	}
	switch r.IntN(4) {
	case 0:
		lj.EventTime = time.Now().Add(-time.Duration(r.IntN(600)) * time.Second).UTC().Format(time.RFC3339)
	case 1:
		lj.EventTime = time.Now().Add(-time.Duration(r.IntN(600)) * time.Second).Unix()
	}
	b, _ := json.Marshal(lj)
	return lineRec{json: b, key: g.l.register(w)}
}

// crashRun is the state of one crash test shared by its workers.
type crashRun struct {
	l       *ledger
	g       *generator
	retries queue
	probs   problems
	killed  atomic.Bool // set just before SIGKILL: failures after it are expected

	requests, failedAtKill, unavailable atomic.Int64
}

// exec sends cl until it is answered, retrying 503s in place. A request that fails because
// the server is gone is queued for after the restart.
func (cr *crashRun) exec(ctx context.Context, c *http.Client, base string, round int, cl *call) (acked bool) {
	for {
		if ctx.Err() != nil {
			cr.retries.push(cl)
			return false
		}
		cl.tries++
		cr.requests.Add(1)
		key := ""
		if cl.kind == kindBatch {
			key = testAdminKey
		}
		method := "GET"
		if cl.body != nil {
			method = "POST"
		}
		resp, err := do(ctx, c, method, base+cl.path, key, cl.hdr, cl.body)
		if err != nil {
			if !isTransportErr(err) || !cr.killed.Load() {
				cr.probs.add("%s %s failed while the server was up: %v", method, cl.path, err)
				return false
			}
			cr.failedAtKill.Add(1)
			cl.failed = true
			cr.retries.push(cl)
			return false
		}
		if resp.status == http.StatusServiceUnavailable && cl.tries < 300 {
			cr.unavailable.Add(1)
			if s := errorShape(resp); s != "" {
				cr.probs.add("%s %s: 503 error body: %s", method, cl.path, s)
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		return cr.check(round, cl, resp)
	}
}

// check verifies an answer and records what it acknowledged.
func (cr *crashRun) check(round int, cl *call, resp *response) bool {
	switch cl.kind {
	case kindClick, kindAppClick:
		if resp.status != http.StatusFound || resp.header.Get("Location") != cl.landing {
			cr.probs.add("%s %s: got %v Location %q, want 302 to %q", kindNames[cl.kind], cl.path, resp, resp.header.Get("Location"), cl.landing)
			return false
		}
		if cc := resp.header.Get("Cache-Control"); cc != "no-store" {
			cr.probs.add("%s: Cache-Control %q, want no-store", kindNames[cl.kind], cc)
		}
		cr.l.ack(round, cl, cl.keys)
	case kindPixel:
		if resp.status != http.StatusOK || resp.header.Get("Content-Type") != "image/gif" || !bytes.HasPrefix(resp.body, []byte("GIF8")) {
			cr.probs.add("GET %s: got %v (Content-Type %q), want a 200 GIF", cl.path, resp, resp.header.Get("Content-Type"))
			return false
		}
		if cc := resp.header.Get("Cache-Control"); cc != "no-store" {
			cr.probs.add("GET /i: Cache-Control %q, want no-store", cc)
		}
		cr.l.ack(round, cl, cl.keys)
	case kindBatch:
		if resp.status != http.StatusOK {
			cr.probs.add("POST /events: got %v, want 200", resp)
			return false
		}
		var br batchResp
		if err := json.Unmarshal(resp.body, &br); err != nil {
			cr.probs.add("POST /events: response %q: %v", resp.body, err)
			return false
		}
		var bad []int
		for i, k := range cl.keys {
			if k == "" {
				bad = append(bad, i+1)
			}
		}
		if d := br.mismatch(len(cl.keys), bad); d != "" {
			cr.probs.add("POST /events: %s (response %s)", d, resp.body)
			return false
		}
		if cl.resend && br.Accepted != 0 {
			cr.probs.add("POST /events: an identical resend of an acknowledged batch accepted %d events (response %s)", br.Accepted, resp.body)
		}
		cr.l.mu.Lock()
		cr.l.batchDup += br.Duplicates
		cr.l.rejected += br.Rejected
		if cl.resend {
			cr.l.resends++
		}
		cr.l.mu.Unlock()
		cr.l.ack(round, cl, cl.keys)
	}
	return true
}

// batchResp is the answer to POST /events.
type batchResp struct {
	Accepted   int `json:"accepted"`
	Duplicates int `json:"duplicates"`
	Rejected   int `json:"rejected"`
	Errors     []struct {
		Line    int    `json:"line"`
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
}

// mismatch reports how the response disagrees with a batch of n lines whose lines bad
// (numbered from 1) must be rejected.
func (br *batchResp) mismatch(n int, bad []int) string {
	if br.Accepted+br.Duplicates+br.Rejected != n {
		return fmt.Sprintf("accepted+duplicates+rejected = %d, want the %d lines sent", br.Accepted+br.Duplicates+br.Rejected, n)
	}
	if br.Rejected != len(bad) || len(br.Errors) != len(bad) {
		return fmt.Sprintf("rejected %d with %d errors listed, want lines %v rejected", br.Rejected, len(br.Errors), bad)
	}
	for i, e := range br.Errors {
		if e.Line != bad[i] {
			return fmt.Sprintf("error %d names line %d, want line %d", i, e.Line, bad[i])
		}
		if _, ok := codeStatus[e.Code]; !ok || e.Message == "" {
			return fmt.Sprintf("error for line %d has code %q message %q", e.Line, e.Code, e.Message)
		}
	}
	return ""
}

func TestCrashRecovery(t *testing.T) {
	needBinary(t)
	sd := seed(t)
	rng := newRand(sd, 0)
	e := newEnv(t)
	// Archive files of one second, so the final check need not wait for 5-minute windows.
	args := []string{"--admin-key", testAdminKey, "--click-secret", testClickSecret, "--archive-interval", "1s"}
	var (
		kills         = 5 + rng.IntN(4)
		workers       = 32
		slotsPerRound = 60
		started       = time.Now()
	)
	cr := &crashRun{l: newLedger()}
	cr.g = &generator{l: cr.l}
	var cat *catalog
	var catWrites []string // advertisers whose PUT was acknowledged during the load
	var catMu sync.Mutex
	var killTimes []time.Time
	var minted atomic.Int64

	for round := 0; ; round++ {
		roundStart := time.Now()
		srv := e.start(args...)
		client := newClient(workers)
		if round == 0 {
			cat = setupCatalog(t, client, srv.base, testAdminKey, "", 3, 2, 3)
		}
		if round == kills {
			cr.finish(t, srv, client, round, rng)
			catMu.Lock()
			for _, id := range catWrites {
				mustJSON(t, client, "GET", srv.base+"/api/v1/advertisers/"+id, testAdminKey, nil, 200, nil)
			}
			catMu.Unlock()
			waitArchived(t, srv, 2*time.Minute)
			srv.stop(t)
			client.CloseIdleConnections()
			break
		}
		cr.g.cat = cat
		cr.g.addSlots(makeSlots(t, client, srv.base, cat, rng, round, slotsPerRound))

		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		before := cr.requests.Load()
		for w := range workers {
			r := newRand(sd, uint64(1000*(round+1)+w))
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil && !cr.killed.Load() {
					cl := cr.retries.pop()
					if cl == nil && r.IntN(100) < 8 {
						s, err := cr.g.mint(ctx, client, srv.base, r)
						if err != nil {
							if !cr.killed.Load() {
								cr.probs.add("POST /api/v1/click-urls while the server was up: %v", err)
							}
							continue
						}
						minted.Add(1)
						cl = cr.g.fresh(r, s)
					}
					if cl == nil {
						cl = cr.g.next(r)
						if cl.kind == kindBatch && r.IntN(6) == 0 {
							// After its 200, send the very same batch again.
							if !cr.exec(ctx, client, srv.base, round, cl) {
								continue
							}
							cl = &call{kind: cl.kind, path: cl.path, body: cl.body, hdr: cl.hdr, keys: cl.keys, resend: true}
						}
					}
					cr.exec(ctx, client, srv.base, round, cl)
				}
			}()
		}
		// A catalog writer: acknowledged catalog writes must survive the kill too.
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				id := fmt.Sprintf("extra-%d-%d", round, i)
				body, _ := json.Marshal(map[string]string{"name": "Extra " + id, "timezone": "Europe/Berlin"})
				resp, err := do(ctx, client, "PUT", srv.base+"/api/v1/advertisers/"+id, testAdminKey, map[string]string{"Content-Type": "application/json"}, body)
				if err != nil {
					if !cr.killed.Load() {
						cr.probs.add("PUT advertiser failed while the server was up: %v", err)
					}
					return
				}
				if resp.status != 200 {
					cr.probs.add("PUT /api/v1/advertisers/%s: %v", id, resp)
					return
				}
				catMu.Lock()
				catWrites = append(catWrites, id)
				catMu.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
		}()

		load := time.Duration(300+rng.IntN(1700)) * time.Millisecond
		time.Sleep(load)
		cr.killed.Store(true)
		killTimes = append(killTimes, time.Now())
		srv.kill(t)
		cancel()
		wg.Wait()
		cr.killed.Store(false)
		client.CloseIdleConnections()
		cr.probs.check(t, fmt.Sprintf("round %d", round))

		// Before the restart (and before later retries can re-record a lost key), a copy of
		// the log as the kill left it must already hold every key acknowledged so far.
		checkStart := time.Now()
		snap := e.snapshotLog(t, fmt.Sprintf("log-after-kill-%d", round))
		snapKeys, n := readLog(t, snap)
		cr.verify(t, fmt.Sprintf("log right after kill %d", round), snapKeys, cat, killTimes, started)
		if t.Failed() {
			t.FailNow()
		}
		_ = os.RemoveAll(snap)
		t.Logf("round %d: recovery %s, load %v, %d requests, SIGKILL; log holds %d events (checked in %v); %d calls to retry after the restart; round took %v",
			round, srv.recovery(), load, cr.requests.Load()-before, n, time.Since(checkStart).Round(time.Millisecond), cr.retries.len(), time.Since(roundStart).Round(time.Millisecond))
	}

	// Compare the log with the ledger: every acknowledged key once, nothing else; and after
	// the final drain, every key sent was acknowledged.
	byKey, total := readLog(t, filepath.Join(e.dataDir, "log"))
	l := cr.l
	lostAcks := cr.verify(t, "final log", byKey, cat, killTimes, started)
	var unacked []string
	for k := range l.sent {
		if _, ok := l.acked[k]; !ok {
			unacked = append(unacked, k)
		}
	}
	report(t, "final log: keys sent but never acknowledged, even after every retry", unacked)

	// The raw archive, written by every incarnation of the process and cut short by each
	// kill, holds the log exactly: every acknowledged event once, nothing else.
	archByKey, archived := readArchive(t, filepath.Join(e.dataDir, "archive"), started.Add(-time.Hour), time.Now().Add(time.Hour))
	cr.verify(t, "archive after the kills", archByKey, cat, killTimes, started)
	report(t, "archive against the log", sameEntries(byKey, archByKey))
	if archived != total {
		t.Errorf("the archive holds %d events, the log %d", archived, total)
	}
	t.Logf("archive after %d kills: %d events, the log's exactly", kills, archived)

	t.Logf("crash test: %d kills; %d requests (%d failed at a kill and were retried, %d answered 503); "+
		"ok by endpoint: %s %d, %s %d, %s %d, %s %d; %d events acknowledged (%d distinct keys), %d duplicates dropped "+
		"(%d reported by POST /events, %d identical batch resends), %d bad lines rejected; log holds %d events; "+
		"%d events were durable but unacknowledged at a kill (their retries were duplicates); "+
		"%d impressions signed during the load; %d catalog writes acknowledged and present; took %v",
		kills, cr.requests.Load(), cr.failedAtKill.Load(), cr.unavailable.Load(),
		kindNames[0], l.okByKind[0], kindNames[1], l.okByKind[1], kindNames[2], l.okByKind[2], kindNames[3], l.okByKind[3],
		l.acks, len(l.acked), l.acks-len(l.acked), l.batchDup, l.resends, l.rejected, total, lostAcks, minted.Load(), len(catWrites), time.Since(started).Round(time.Millisecond))
}

// verify compares a log (by key) with the ledger: every acknowledged key is there, no key is
// there twice, and every event there was sent, as it was sent. It returns how many events were
// durable before a kill without having been acknowledged (answered only by a retry after it).
func (cr *crashRun) verify(t *testing.T, what string, byKey map[string][]logEntry, cat *catalog, killTimes []time.Time, started time.Time) (lostAcks int) {
	t.Helper()
	l := cr.l
	l.mu.Lock()
	defer l.mu.Unlock()
	var missing, dupes, unknown, wrong []string
	for k, a := range l.acked {
		es := byKey[k]
		if len(es) == 0 {
			missing = append(missing, fmt.Sprintf("%s (acknowledged by %s in round %d)", k, kindNames[a.kind], a.round))
			continue
		}
		if a.retried && a.round > 0 && time.UnixMicro(es[0].ev.RecvTime).Before(killTimes[a.round-1]) {
			lostAcks++
		}
	}
	lo, hi := started.Add(-time.Second), time.Now().Add(time.Second)
	for k, es := range byKey {
		if len(es) > 1 {
			dupes = append(dupes, fmt.Sprintf("%s x%d (partition/offset %d/%d and %d/%d)", k, len(es), es[0].partition, es[0].offset, es[1].partition, es[1].offset))
		}
		w, ok := l.sent[k]
		if !ok {
			unknown = append(unknown, fmt.Sprintf("%s: %+v", k, es[0].ev))
			continue
		}
		if d := checkEvent(&es[0].ev, w, cat); d != "" {
			wrong = append(wrong, k+": "+d)
		}
		recv := time.UnixMicro(es[0].ev.RecvTime)
		evt := time.UnixMicro(es[0].ev.Time)
		if recv.Before(lo) || recv.After(hi) || evt.Before(lo.Add(-11*time.Minute)) || evt.After(hi) {
			wrong = append(wrong, fmt.Sprintf("%s: event time %v / receive time %v outside the test's run", k, evt, recv))
		}
	}
	report(t, what+": acknowledged events missing", missing)
	report(t, what+": keys in the log more than once", dupes)
	report(t, what+": events that were never sent", unknown)
	report(t, what+": events that differ from what was sent", wrong)
	return lostAcks
}

func report(t *testing.T, what string, list []string) {
	t.Helper()
	if len(list) > 0 {
		sort.Strings(list)
		t.Errorf("%s: %d, e.g.:\n  %s", what, len(list), strings.Join(list[:min(len(list), 15)], "\n  "))
	}
}

// makeSlots signs n new impressions through POST /api/v1/click-urls.
func makeSlots(t *testing.T, c *http.Client, base string, cat *catalog, rng *rand.Rand, round, n int) []*slot {
	t.Helper()
	slots := make([]*slot, n)
	for i := range slots {
		slots[i] = &slot{
			ad:   cat.ads[rng.IntN(len(cat.ads))],
			imp:  fmt.Sprintf("imp-%d-%d", round, i),
			user: fmt.Sprintf("user-%d", rng.IntN(50)),
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				s := slots[i]
				s.token, errs[i] = clickToken(context.Background(), c, base, testAdminKey, s.ad.id, s.imp, s.user)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return slots
}

// finish runs after the last restart: every call that failed at a kill is retried until it
// is acknowledged, then a sample of acknowledged calls is replayed (their keys must have been
// rebuilt from the log: batches must accept nothing).
func (cr *crashRun) finish(t *testing.T, srv *server, c *http.Client, round int, rng *rand.Rand) {
	t.Helper()
	pending := cr.retries.len()
	ctx := context.Background()
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for cl := cr.retries.pop(); cl != nil; cl = cr.retries.pop() {
				cr.exec(ctx, c, srv.base, round, cl)
			}
		}()
	}
	wg.Wait()
	cr.probs.check(t, "retrying the calls that failed at a kill")
	if n := cr.retries.len(); n > 0 {
		t.Fatalf("%d calls still unacknowledged after the final restart", n)
	}

	cr.l.mu.Lock()
	replay := slices.Clone(cr.l.replayable)
	cr.l.mu.Unlock()
	rng.Shuffle(len(replay), func(i, j int) { replay[i], replay[j] = replay[j], replay[i] })
	replay = replay[:min(len(replay), 400)]
	for i, cl := range replay {
		replay[i] = &call{kind: cl.kind, path: cl.path, body: cl.body, hdr: cl.hdr, keys: cl.keys, landing: cl.landing, resend: cl.kind == kindBatch}
	}
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(replay); i += 8 {
				cr.exec(ctx, c, srv.base, round, replay[i])
			}
		}()
	}
	wg.Wait()
	cr.probs.check(t, "replaying acknowledged calls after the last restart")
	t.Logf("final start: recovery %s; %d calls retried after the last kill, %d acknowledged calls replayed", srv.recovery(), pending, len(replay))
}

// ---------------------------------------------------------------------------------------
// Graceful shutdown.

func TestGracefulShutdown(t *testing.T) {
	needBinary(t)
	sd := seed(t)
	rng := newRand(sd, 0)
	e := newEnv(t)

	// No --admin-key and no --click-secret: both are generated, stored and reused.
	srv := e.start()
	key := generatedAdminKey(t, srv)
	checkSecretFiles(t, e.dataDir, key)

	c := newClient(8)
	cat := setupCatalog(t, c, srv.base, key, "g", 1, 1, 3)
	var slots []*slot
	for i := range 41 {
		ad := cat.ads[rng.IntN(len(cat.ads))]
		s := &slot{ad: ad, imp: fmt.Sprintf("gimp-%d", i), user: fmt.Sprintf("guser-%d", rng.IntN(5))}
		var err error
		if s.token, err = clickToken(context.Background(), c, srv.base, key, ad.id, s.imp, s.user); err != nil {
			t.Fatal(err)
		}
		slots = append(slots, s)
	}
	late := slots[40] // signed before the restart, clicked only after it
	slots = slots[:40]

	l := newLedger()
	var probs problems
	var transportErrs, okResp atomic.Int64
	var signaled atomic.Bool

	// A request in flight across the signal: its body is only finished after SIGTERM.
	pr, pw := io.Pipe()
	var slowKeys []string
	var slowFirst, slowRest bytes.Buffer
	for i := range 6 {
		s := slots[i]
		w := want{typ: event.TypeInteraction, name: "add_to_cart", eventID: fmt.Sprintf("slow-%d", i), ad: s.ad.id, imp: s.imp, user: s.user}
		slowKeys = append(slowKeys, l.register(w))
		b, _ := json.Marshal(lineJSON{Type: w.name, AdID: w.ad, ImpressionID: w.imp, EventID: w.eventID, UserID: w.user})
		buf := &slowFirst
		if i >= 3 {
			buf = &slowRest
		}
		buf.Write(append(b, '\n'))
	}
	type slowResult struct {
		resp *response
		err  error
	}
	slowDone := make(chan slowResult, 1)
	go func() {
		req, err := http.NewRequest("POST", srv.base+"/events", pr)
		if err != nil {
			slowDone <- slowResult{err: err}
			return
		}
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/x-ndjson")
		resp, err := newClient(1).Do(req)
		if err != nil {
			slowDone <- slowResult{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		slowDone <- slowResult{resp: &response{status: resp.StatusCode, header: resp.Header, body: b}, err: err}
	}()
	if _, err := pw.Write(slowFirst.Bytes()); err != nil {
		t.Fatal(err)
	}

	// Light load until the process is gone.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for w := range 4 {
		r := newRand(sd, uint64(100+w))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				s := slots[r.IntN(len(slots))]
				var cl *call
				var k string
				switch r.IntN(3) {
				case 0:
					k = l.register(want{typ: event.TypeClick, ad: s.ad.id, imp: s.imp, user: s.user})
					cl = &call{kind: kindClick, path: "/c/" + s.token, landing: s.ad.landing}
				case 1:
					k = l.register(want{typ: event.TypeImpression, ad: s.ad.id, imp: s.imp, user: s.user})
					cl = &call{kind: kindPixel, path: "/i/" + s.token}
				default:
					ev := want{typ: event.TypeInteraction, name: "view_item", eventID: fmt.Sprintf("g-%d-%d", w, r.Int64()), ad: s.ad.id, imp: s.imp, user: s.user}
					k = l.register(ev)
					b, _ := json.Marshal(lineJSON{Type: ev.name, AdID: ev.ad, ImpressionID: ev.imp, EventID: ev.eventID, UserID: ev.user})
					cl = &call{kind: kindBatch, path: "/events", body: append(b, '\n'), hdr: map[string]string{"Content-Type": "application/x-ndjson"}}
				}
				cl.keys = []string{k}
				method, auth := "GET", ""
				if cl.body != nil {
					method, auth = "POST", key
				}
				resp, err := do(ctx, c, method, srv.base+cl.path, auth, cl.hdr, cl.body)
				if err != nil {
					if !signaled.Load() {
						probs.add("%s %s failed before SIGTERM: %v", method, cl.path, err)
					}
					transportErrs.Add(1)
					time.Sleep(5 * time.Millisecond)
					continue
				}
				okResp.Add(1)
				ok := false
				switch cl.kind {
				case kindClick:
					ok = resp.status == http.StatusFound && resp.header.Get("Location") == cl.landing
				case kindPixel:
					ok = resp.status == http.StatusOK
				case kindBatch:
					var br batchResp
					ok = resp.status == http.StatusOK && json.Unmarshal(resp.body, &br) == nil && br.mismatch(1, nil) == ""
				}
				if !ok {
					probs.add("%s %s around SIGTERM: got %v", method, cl.path, resp)
					continue
				}
				l.ack(0, cl, cl.keys)
				time.Sleep(time.Duration(r.IntN(3)) * time.Millisecond)
			}
		}()
	}

	time.Sleep(time.Duration(200+rng.IntN(300)) * time.Millisecond)
	beforeSignal := okResp.Load()
	signaled.Store(true)
	srv.signal(t, syscall.SIGTERM)

	// It stops accepting: new connections are refused while the slow request still runs.
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", srv.api, time.Second)
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("the API listener still accepts connections 10s after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !srv.running() {
		t.Fatalf("the process exited while a request was still in flight: %v\n%s", srv.waitErr, srv.tail(30))
	}
	time.Sleep(100 * time.Millisecond)
	if _, err := pw.Write(slowRest.Bytes()); err != nil {
		t.Fatalf("finishing the in-flight request body: %v", err)
	}
	pw.Close()
	select {
	case res := <-slowDone:
		if res.err != nil {
			t.Fatalf("request in flight at SIGTERM: %v", res.err)
		}
		var br batchResp
		if res.resp.status != 200 || json.Unmarshal(res.resp.body, &br) != nil || br.mismatch(len(slowKeys), nil) != "" || br.Accepted != len(slowKeys) {
			t.Fatalf("request in flight at SIGTERM: got %v, want 200 accepting all %d events", res.resp, len(slowKeys))
		}
		l.ack(0, &call{kind: kindBatch}, slowKeys)
	case <-time.After(30 * time.Second):
		t.Fatal("request in flight at SIGTERM got no answer in 30s")
	}
	srv.waitExit(t, 40*time.Second)
	cancel()
	wg.Wait()
	probs.check(t, "light load around SIGTERM")
	if beforeSignal == 0 {
		t.Fatal("no request was answered before SIGTERM")
	}

	// Restart: the same generated admin key and click secret serve again; the key is not
	// printed a second time.
	srv2 := e.start()
	for _, line := range srv2.log() {
		if strings.Contains(line, key) {
			t.Errorf("the admin key was printed again on a restart: %s", line)
		}
	}
	checkSecretFiles(t, e.dataDir, key)
	c2 := newClient(2)
	mustJSON(t, c2, "GET", srv2.base+"/api/v1/ads/"+cat.ads[0].id, key, nil, 200, nil)
	resp := mustJSON(t, c2, "GET", srv2.base+"/api/v1/ads/"+cat.ads[0].id, "not-the-key", nil, 401, nil)
	if s := errorShape(resp); s != "" {
		t.Errorf("401 body: %s", s)
	}
	k := l.register(want{typ: event.TypeClick, ad: late.ad.id, imp: late.imp, user: late.user})
	resp, err := do(context.Background(), c2, "GET", srv2.base+"/c/"+late.token, "", nil, nil)
	if err != nil || resp.status != http.StatusFound || resp.header.Get("Location") != late.ad.landing {
		t.Fatalf("a token signed before the restart: got %v, %v; want 302 to %s (the click secret must persist)", resp, err, late.ad.landing)
	}
	l.ack(1, &call{kind: kindClick}, []string{k})
	srv2.stop(t)
	c2.CloseIdleConnections()
	c.CloseIdleConnections()

	byKey, total := readLog(t, filepath.Join(e.dataDir, "log"))
	for k := range l.acked {
		if len(byKey[k]) == 0 {
			t.Errorf("acknowledged event %s missing from the log", k)
		}
	}
	for k, es := range byKey {
		if len(es) > 1 {
			t.Errorf("key %s is in the log %d times", k, len(es))
		}
		if w, ok := l.sent[k]; !ok {
			t.Errorf("event in the log that was never sent: %+v", es[0].ev)
		} else if d := checkEvent(&es[0].ev, w, cat); d != "" {
			t.Errorf("logged event %s differs from what was sent: %s", k, d)
		}
	}
	t.Logf("graceful shutdown: %d responses (%d before SIGTERM), %d refused or reset after it, %d events acknowledged (%d distinct), log holds %d; exit status 0",
		okResp.Load(), beforeSignal, transportErrs.Load(), l.acks, len(l.acked), total)
}

// generatedAdminKey returns the admin key a first start generated and printed.
func generatedAdminKey(t *testing.T, s *server) string {
	t.Helper()
	for _, line := range s.log() {
		if i := strings.Index(line, "admin_key="); i >= 0 {
			k := strings.Trim(strings.Fields(line[i+len("admin_key="):])[0], `"`)
			if k != "" {
				return k
			}
		}
	}
	t.Fatalf("a first start without --admin-key printed no generated admin key:\n%s", s.tail(20))
	return ""
}

// checkSecretFiles requires the generated admin key to be stored in the data dir, and every
// file holding it, or named like a secret, to be private (0600).
func checkSecretFiles(t *testing.T, dataDir, key string) {
	t.Helper()
	holders := 0
	err := filepath.WalkDir(dataDir, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dataDir, path)
		secretName := strings.Contains(strings.ToLower(rel), "secret") || strings.Contains(strings.ToLower(filepath.Base(rel)), "key")
		holds := false
		if info.Size() < 1<<20 {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			holds = bytes.Contains(b, []byte(key))
		}
		if holds {
			holders++
		}
		if (holds || secretName) && info.Mode().Perm() != 0o600 {
			t.Errorf("%s holds a secret but has mode %v, want 0600", rel, info.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if holders == 0 {
		t.Errorf("the generated admin key is stored nowhere in the data dir")
	}
}

// ---------------------------------------------------------------------------------------
// Bad input.

func TestBadInput(t *testing.T) {
	needBinary(t)
	sd := seed(t)
	rng := newRand(sd, 0)
	e := newEnv(t)
	srv := e.start("--admin-key", testAdminKey, "--click-secret", testClickSecret)
	c := newClient(8)
	cat := setupCatalog(t, c, srv.base, testAdminKey, "b", 1, 1, 2)
	ad := cat.ads[0]
	sent := map[string]want{}
	expect := func(w want) { sent[w.key()] = w }

	tok, err := clickToken(context.Background(), c, srv.base, testAdminKey, ad.id, "bimp-0", "buser")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := do(context.Background(), c, "GET", srv.base+"/c/"+tok, "", nil, nil)
	if err != nil || resp.status != http.StatusFound || resp.header.Get("Location") != ad.landing {
		t.Fatalf("valid click: got %v, %v; want 302 to %s", resp, err, ad.landing)
	}
	expect(want{typ: event.TypeClick, ad: ad.id, imp: "bimp-0", user: "buser"})

	t.Run("tampered_tokens", func(t *testing.T) { tamperedTokens(t, srv, c, tok, rng) })
	t.Run("open_redirects", func(t *testing.T) { openRedirects(t, srv, c, tok, ad) })
	t.Run("oversized_bodies", func(t *testing.T) { oversized(t, srv, c, ad) })
	t.Run("bad_lines", func(t *testing.T) { badLines(t, srv, c, ad, expect) })
	t.Run("bad_requests", func(t *testing.T) { badRequests(t, srv, c, ad) })

	// Nothing of that crashed it or lost anything.
	if !srv.running() {
		t.Fatalf("the server died under bad input: %v\n%s", srv.waitErr, srv.tail(40))
	}
	mustJSON(t, c, "GET", "http://"+srv.ops+"/healthz", "", nil, 200, nil)
	srv.stop(t)
	c.CloseIdleConnections()
	byKey, total := readLog(t, filepath.Join(e.dataDir, "log"))
	for k, w := range sent {
		if len(byKey[k]) == 0 {
			t.Errorf("accepted event %s (%+v) missing from the log", k, w)
		}
	}
	for k, es := range byKey {
		if len(es) > 1 {
			t.Errorf("key %s is in the log %d times", k, len(es))
		}
		if w, ok := sent[k]; !ok {
			t.Errorf("bad input got into the log: %+v", es[0].ev)
		} else if d := checkEvent(&es[0].ev, w, cat); d != "" {
			t.Errorf("logged event %s differs from what was sent: %s", k, d)
		}
	}
	t.Logf("bad input: log holds exactly the %d events accepted (%d)", len(sent), total)
}

// tamperedTokens: no single-character change of a valid token (nor a deletion, insertion,
// truncation or extension, nor random garbage) is ever redirected or counted.
func tamperedTokens(t *testing.T, srv *server, c *http.Client, tok string, rng *rand.Rand) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	const extra = "=+/.~%! :@"
	set := map[string]bool{}
	for i := range len(tok) {
		for _, ch := range alphabet + extra {
			set[tok[:i]+string(ch)+tok[i+1:]] = true
		}
		set[tok[:i]+tok[i+1:]] = true                                         // deletion
		set[tok[:i]+string(alphabet[rng.IntN(len(alphabet))])+tok[i:]] = true // insertion
		set[tok[:i]] = true                                                   // truncation
	}
	for _, ch := range alphabet {
		set[tok+string(ch)] = true // extension
	}
	set[tok+tok] = true
	for range 300 {
		b := make([]byte, rng.IntN(700))
		for i := range b {
			if rng.IntN(4) == 0 {
				b[i] = byte(rng.IntN(256))
			} else {
				b[i] = alphabet[rng.IntN(len(alphabet))]
			}
		}
		set[string(b)] = true
	}
	delete(set, tok)
	muts := make([]string, 0, len(set))
	for m := range set {
		muts = append(muts, m)
	}
	sort.Strings(muts)

	var probs problems
	var n atomic.Int64
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(muts); i += 8 {
				paths := []string{"/c/"}
				if i%7 == 0 {
					paths = append(paths, "/i/")
				}
				for _, p := range paths {
					u := srv.base + p + pathEscape(muts[i])
					resp, err := do(context.Background(), c, "GET", u, "", nil, nil)
					n.Add(1)
					if err != nil {
						probs.add("GET %s: %v", u, err)
						continue
					}
					if resp.status < 400 || resp.status >= 500 || resp.header.Get("Location") != "" {
						probs.add("GET %s (token %q): got %v Location %q, want a 4xx and no Location", p, muts[i], resp, resp.header.Get("Location"))
						continue
					}
					if s := errorShape(resp); s != "" {
						probs.add("GET %s (token %q): %v: %s", p, muts[i], resp, s)
					}
				}
			}
		}()
	}
	wg.Wait()
	probs.check(t, "tampered tokens")
	t.Logf("%d tampered or garbage tokens (%d requests): none redirected or recorded", len(muts), n.Load())
}

// pathEscape escapes s as one path segment, including bytes that are not valid UTF-8.
func pathEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch < 0x80 && (ch >= 'A' && ch <= 'Z' || ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_' || ch == '.' || ch == '~') {
			b.WriteByte(ch)
		} else {
			fmt.Fprintf(&b, "%%%02X", ch)
		}
	}
	return b.String()
}

// rawGet sends a hand-written request (any request target, any Host) and reads the answer.
func rawGet(addr, target string, headers ...string) (*response, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	host := addr
	var extra strings.Builder
	for _, h := range headers {
		if strings.HasPrefix(strings.ToLower(h), "host:") {
			host = strings.TrimSpace(h[len("host:"):])
			continue
		}
		extra.WriteString(h + "\r\n")
	}
	req := "GET " + target + " HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: " + browserUA + "\r\n" + extra.String() + "Connection: close\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return &response{status: resp.StatusCode, header: resp.Header, body: body}, nil
}

// openRedirects: whatever the path, query or headers, a response either redirects to the
// landing URL the valid token names, or (path cleaning) to a path on this same server, or is
// an error of the contract's shape.
func openRedirects(t *testing.T, srv *server, c *http.Client, tok string, ad adInfo) {
	type tc struct {
		target  string
		headers []string
	}
	cases := []tc{
		{target: "/c/%2F%2Fevil.com"},
		{target: "/c/https:%2F%2Fevil.com"},
		{target: "/c/https%3A%2F%2Fevil.com"},
		{target: "/c/https://evil.com"},
		{target: "/c/http:%2F%2Fevil.com%2F"},
		{target: "/c//evil.com"},
		{target: "/c///evil.com"},
		{target: "/c/evil.com"},
		{target: "//evil.com"},
		{target: "///evil.com"},
		{target: "//evil.com/c/" + tok},
		{target: "///evil.com/%2e%2e"},
		{target: "/c/%5C%5Cevil.com"},
		{target: `/c/\\evil.com`},
		{target: `/\evil.com`},
		{target: "/c/%2e%2e%2F%2e%2e%2Fevil.com"},
		{target: "/c/../../evil.com"},
		{target: "/c/./evil.com"},
		{target: "/c/%09/evil.com"},
		{target: "/c/" + tok + "/..%2F..%2F%2Fevil.com"},
		{target: "/c/" + tok + "/%2F%2Fevil.com"},
		{target: "/c/" + tok + "%2F%2Fevil.com"},
		{target: "/c/" + tok + "/../../evil.com"},
		{target: "/c/" + tok + "?url=https://evil.com&redirect=https%3A%2F%2Fevil.com&next=//evil.com&landing_url=https://evil.com"},
		{target: "/c/" + tok + "%3Furl=https://evil.com"},
		{target: "/c/" + tok + "%23https://evil.com"},
		{target: "/c/" + tok + "@evil.com"},
		{target: "/c/" + tok + "%0d%0aLocation:%20https://evil.com"},
		{target: "/i/%2F%2Fevil.com"},
		{target: "/click?url=https://evil.com"},
		{target: "http://evil.com/c/" + tok},
		{target: "/c/" + tok, headers: []string{"Host: evil.com"}},
		{target: "/c/" + tok, headers: []string{"X-Forwarded-Host: evil.com", "X-Forwarded-Proto: https", "Forwarded: host=evil.com"}},
		{target: "/c/" + tok, headers: []string{"Referer: https://evil.com/"}},
	}
	for _, tc := range cases {
		target := tc.target
		for hop := 0; hop < 4; hop++ {
			resp, err := rawGet(srv.api, target, tc.headers...)
			if err != nil {
				t.Errorf("GET %s: %v", target, err)
				break
			}
			loc := resp.header.Get("Location")
			if resp.status >= 500 {
				t.Errorf("GET %s: %v, want no 5xx", target, resp)
			}
			if resp.status >= 400 {
				if s := errorShape(resp); s != "" {
					t.Errorf("GET %s: %v: %s", target, resp, s)
				}
			}
			if loc == "" {
				break
			}
			if loc == ad.landing && resp.status == http.StatusFound {
				if !strings.Contains(target, tok) {
					t.Errorf("GET %s: redirected to the landing URL without the valid token", target)
				}
				break
			}
			if resp.status == http.StatusFound || !sameServerPath(loc) {
				t.Errorf("GET %s: %d with Location %q: a redirect the token did not name", tc.target, resp.status, loc)
				break
			}
			target = loc // path cleaning: follow it on this server
		}
	}

	// The click URLs it signs use its configured public URL, never the request's Host.
	body, _ := json.Marshal(map[string]string{"ad_id": ad.id, "impression_id": "bimp-host"})
	resp, err := do(context.Background(), c, "POST", srv.base+"/api/v1/click-urls", testAdminKey,
		map[string]string{"Content-Type": "application/json", "X-Forwarded-Host": "evil.com"}, body)
	if err != nil || resp.status != 200 || bytes.Contains(resp.body, []byte("evil")) {
		t.Errorf("POST /api/v1/click-urls with X-Forwarded-Host: got %v, %v", resp, err)
	}
	t.Logf("%d redirect attempts: none left the landing URL or this server", len(cases))
}

// sameServerPath reports whether a Location stays on the server that sent it: a path that a
// browser cannot read as another host.
func sameServerPath(loc string) bool {
	return strings.HasPrefix(loc, "/") && !strings.HasPrefix(loc, "//") && !strings.HasPrefix(loc, `/\`) &&
		!strings.ContainsAny(loc, "\\\t\r\n")
}

// oversized: a body over --max-body answers 413 and accepts nothing (the final log check
// proves no line of it got in).
func oversized(t *testing.T, srv *server, c *http.Client, ad adInfo) {
	var body bytes.Buffer
	for i := 0; body.Len() <= 10<<20+100; i++ {
		fmt.Fprintf(&body, `{"type":"add_to_cart","event_id":"big-%d","impression_id":"bigimp-%d","ad_id":"%s"}`+"\n", i, i, ad.id)
	}
	resp, err := do(context.Background(), c, "POST", srv.base+"/events", testAdminKey, map[string]string{"Content-Type": "application/x-ndjson"}, body.Bytes())
	if err != nil {
		t.Fatalf("POST /events with %d bytes: %v", body.Len(), err)
	}
	if resp.status != http.StatusRequestEntityTooLarge {
		t.Fatalf("POST /events with %d bytes: got %v, want 413", body.Len(), resp)
	}
	if s := errorShape(resp); s != "" {
		t.Errorf("413 body: %s", s)
	}
	big := bytes.Repeat([]byte("x"), 100<<10)
	resp, err = do(context.Background(), c, "POST", srv.base+"/click", "", map[string]string{"Content-Type": "application/json"},
		[]byte(`{"ad_id":"`+ad.id+`","impression_id":"`+string(big)+`"}`))
	if err != nil || resp.status != http.StatusRequestEntityTooLarge && resp.status != http.StatusBadRequest || errorShape(resp) != "" {
		t.Errorf("POST /click with a 100 KiB body: got %v, %v; want 413 (or 400) with the error shape", resp, err)
	}
}

// badLines: a batch mixing good and bad lines accepts exactly the good ones and names each bad
// line; resending it accepts nothing more.
func badLines(t *testing.T, srv *server, c *http.Client, ad adInfo, expect func(want)) {
	old := time.Now().Add(-48 * time.Hour).UTC().Format(time.RFC3339)
	future := time.Now().Add(time.Hour).Unix()
	bad := []string{
		`not json`,
		`{"type":"click","ad_id":"` + ad.id + `","impression_id":"bl-0"`,
		`[]`,
		`42`,
		`"a string"`,
		`null`,
		`{}`,
		`{"type":"click","ad_id":"` + ad.id + `","impression_id":"bad id!"}`,
		`{"type":"Purchase!","ad_id":"` + ad.id + `","event_id":"bl-2"}`,
		`{"type":"click","ad_id":"` + ad.id + `"}`,
		`{"ad_id":"` + ad.id + `","impression_id":"bl-3"}`,
		`{"type":"click","ad_id":"no-such-ad","impression_id":"bl-4"}`,
		`{"type":"click","ad_id":"` + ad.id + `","impression_id":"bl-5","event_time":"` + old + `"}`,
		`{"type":"click","ad_id":"` + ad.id + `","impression_id":"bl-6","event_time":` + strconv.FormatInt(future, 10) + `}`,
		`{"type":"click","ad_id":"` + ad.id + `","impression_id":"bl-7","event_time":"yesterday"}`,
		`{"type":"impression","ad_id":"` + ad.id + `","impression_id":"bl-8","cpc_micros":5}`,
		`{"type":"click","ad_id":"` + ad.id + `","impression_id":"bl-9","cpc_micros":-1}`,
		`{"type":"click","ad_id":123,"impression_id":"bl-10"}`,
		`{"type":"click","ad_id":"` + ad.id + `","impression_id":"` + strings.Repeat("a", 65) + `"}`,
		`{"type":"click","ad_id":"` + ad.id + `","impression_id":"bl-11\u0000"}`,
		`{"type":"click","ad_id":"` + ad.id + `","impression_id":"` + strings.Repeat("é", 3000) + `"}`,
		`{"type":"impression","ad_id":"` + ad.id + `","impression_id":"bl-12","user_id":"u/../../etc"}`,
		`{"type":"click","ad_id":"` + ad.id + `","impression_id":"bl-13"} trailing`,
	}
	var good []string
	var goodW []want
	for i := range 12 {
		imp := fmt.Sprintf("gl-%d", i)
		var w want
		var lj lineJSON
		switch i % 3 {
		case 0:
			w = want{typ: event.TypeImpression, ad: ad.id, imp: imp}
			lj = lineJSON{Type: "impression", AdID: ad.id, ImpressionID: imp}
		case 1:
			w = want{typ: event.TypeClick, ad: ad.id, imp: imp}
			lj = lineJSON{Type: "click", AdID: ad.id, ImpressionID: imp, EventTime: time.Now().Add(-time.Hour).Unix()}
		default:
			w = want{typ: event.TypeInteraction, name: "purchase", ad: ad.id, imp: imp, eventID: "gl-ev-" + strconv.Itoa(i)}
			lj = lineJSON{Type: "purchase", AdID: ad.id, ImpressionID: imp, EventID: w.eventID}
		}
		b, _ := json.Marshal(lj)
		good = append(good, string(b))
		goodW = append(goodW, w)
	}
	// Interleave: good lines at even positions where possible; a blank line and a CRLF line too.
	var ndjson strings.Builder
	var badLinesNo []int
	line, gi, bi := 0, 0, 0
	for gi < len(good) || bi < len(bad) {
		line++
		if bi < len(bad) && (gi >= len(good) || line%2 == 0) {
			ndjson.WriteString(bad[bi] + "\n")
			badLinesNo = append(badLinesNo, line)
			bi++
			continue
		}
		end := "\n"
		if gi == 3 {
			end = "\r\n"
		}
		ndjson.WriteString(good[gi] + end)
		gi++
		if gi == 5 {
			ndjson.WriteString("\n") // blank lines are skipped but still numbered
			line++
		}
	}
	post := func(body, ct string) batchResp {
		resp, err := do(context.Background(), c, "POST", srv.base+"/events", testAdminKey, map[string]string{"Content-Type": ct}, []byte(body))
		if err != nil || resp.status != 200 {
			t.Fatalf("POST /events with bad lines: got %v, %v; want 200", resp, err)
		}
		var br batchResp
		if err := json.Unmarshal(resp.body, &br); err != nil {
			t.Fatalf("POST /events: %q: %v", resp.body, err)
		}
		return br
	}
	br := post(ndjson.String(), "application/x-ndjson")
	if d := br.mismatch(len(good)+len(bad), badLinesNo); d != "" || br.Accepted != len(good) {
		t.Fatalf("NDJSON batch with %d good and %d bad lines: %s; accepted %d; errors %+v", len(good), len(bad), d, br.Accepted, br.Errors)
	}
	for _, w := range goodW {
		expect(w)
	}
	br = post(ndjson.String(), "application/x-ndjson")
	if br.Accepted != 0 || br.Duplicates != len(good) || br.Rejected != len(bad) {
		t.Errorf("the same batch again: accepted %d duplicates %d rejected %d, want 0, %d, %d", br.Accepted, br.Duplicates, br.Rejected, len(good), len(bad))
	}

	// The same as a JSON array: elements are numbered from 1.
	var arr []json.RawMessage
	var arrBad []int
	for i := range 6 {
		imp := fmt.Sprintf("ga-%d", i)
		if i%2 == 1 {
			arr = append(arr, json.RawMessage(`{"type":"click","ad_id":"no-such-ad","impression_id":"`+imp+`"}`))
			arrBad = append(arrBad, i+1)
			continue
		}
		b, _ := json.Marshal(lineJSON{Type: "impression", AdID: ad.id, ImpressionID: imp})
		arr = append(arr, b)
		expect(want{typ: event.TypeImpression, ad: ad.id, imp: imp})
	}
	ab, _ := json.Marshal(arr)
	br = post(string(ab), "application/json")
	if d := br.mismatch(len(arr), arrBad); d != "" || br.Accepted != len(arr)-len(arrBad) {
		t.Errorf("JSON array batch: %s; accepted %d, errors %+v", d, br.Accepted, br.Errors)
	}
}

// badRequests: whole requests that are wrong get the right status and the error shape.
func badRequests(t *testing.T, srv *server, c *http.Client, ad adInfo) {
	jsonCT := map[string]string{"Content-Type": "application/json"}
	ndjsonCT := map[string]string{"Content-Type": "application/x-ndjson"}
	line := `{"type":"impression","ad_id":"` + ad.id + `","impression_id":"never-0"}`
	cases := []struct {
		name, method, path, key string
		hdr                     map[string]string
		body                    string
		want                    int
	}{
		{"events without a key", "POST", "/events", "", ndjsonCT, line, 401},
		{"events with a wrong key", "POST", "/events", "nope", ndjsonCT, line, 401},
		{"events, malformed array", "POST", "/events", testAdminKey, jsonCT, `[{"type":"impression",`, 400},
		{"click, bad JSON", "POST", "/click", "", jsonCT, `{"ad_id":`, 400},
		{"click, no impression id", "POST", "/click", "", jsonCT, `{"ad_id":"` + ad.id + `"}`, 400},
		{"click, unknown ad", "POST", "/click", "", jsonCT, `{"ad_id":"no-such-ad","impression_id":"never-1"}`, 404},
		{"click, bad ad id", "POST", "/click", "", jsonCT, `{"ad_id":"a b","impression_id":"never-2"}`, 400},
		{"click, wrong field type", "POST", "/click", "", jsonCT, `{"ad_id":1,"impression_id":"never-3"}`, 400},
		{"click, unknown field", "POST", "/click", "", jsonCT, `{"ad_id":"` + ad.id + `","impression_id":"never-4","landing_url":"https://evil.com"}`, 400},
		{"click-urls without a key", "POST", "/api/v1/click-urls", "", jsonCT, `{"ad_id":"` + ad.id + `","impression_id":"never-5"}`, 401},
		{"click-urls, unknown ad", "POST", "/api/v1/click-urls", testAdminKey, jsonCT, `{"ad_id":"no-such-ad","impression_id":"never-6"}`, 404},
		{"click-urls, bad impression id", "POST", "/api/v1/click-urls", testAdminKey, jsonCT, `{"ad_id":"` + ad.id + `","impression_id":"a/b"}`, 400},
		{"ad with a javascript: landing URL", "PUT", "/api/v1/ads/evil-1", testAdminKey, jsonCT, `{"campaign_id":"` + ad.campaign + `","landing_url":"javascript:alert(1)"}`, 400},
		{"ad with a relative landing URL", "PUT", "/api/v1/ads/evil-2", testAdminKey, jsonCT, `{"campaign_id":"` + ad.campaign + `","landing_url":"//evil.com/x"}`, 400},
		{"ad without a key", "PUT", "/api/v1/ads/evil-3", "", jsonCT, `{"campaign_id":"` + ad.campaign + `","landing_url":"https://evil.com/"}`, 401},
		{"pixel, garbage token", "GET", "/i/garbage", "", nil, "", 400},
		{"unknown path", "GET", "/nope", "", nil, "", 404},
		{"click on GET /click", "GET", "/click", "", nil, "", 404},
	}
	for _, tc := range cases {
		var body []byte
		if tc.body != "" {
			body = []byte(tc.body)
		}
		resp, err := do(context.Background(), c, tc.method, srv.base+tc.path, tc.key, tc.hdr, body)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if resp.status != tc.want {
			t.Errorf("%s: got %v, want %d", tc.name, resp, tc.want)
		}
		if s := errorShape(resp); s != "" {
			t.Errorf("%s: %v: %s", tc.name, resp, s)
		}
		if resp.header.Get("Location") != "" {
			t.Errorf("%s: Location %q on an error", tc.name, resp.header.Get("Location"))
		}
	}
}
