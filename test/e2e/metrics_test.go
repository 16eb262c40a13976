package e2e

// Metrics exact under kill -9: concurrent clicks, impressions and batches (late, future,
// duplicated, from bots, on expired tokens) while the server is killed several times; at the
// end GET /metrics and GET /metrics/top must equal, exactly, a model built from what was
// acknowledged.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
)

// fact is what one idempotency key must count as.
type fact struct {
	typ     event.Type
	name    string // interaction name
	ad      string
	reason  event.Reason
	carried int64 // the price the event carries (token or cpc_micros); 0: the ad's bid
	at      int64 // the event_time the client chose (Unix seconds); 0: the receive time
}

func (f fact) key(imp, eventID string) string {
	e := event.Event{Type: f.typ, Name: f.name, Invalid: f.reason, ImpressionID: imp, EventID: eventID}
	return e.Key()
}

// mledger is the client-side record of the metrics test: every key sent with what it must
// count as, when it was first sent and when first acknowledged.
type mledger struct {
	mu        sync.Mutex
	facts     map[string]fact
	firstSent map[string]time.Time
	acked     map[string]time.Time
	okByKind  [numKinds]int
	acks      int
	acked0    []*mcall // a sample of acknowledged calls, replayed at the end
}

func (l *mledger) register(k string, f fact) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if old, ok := l.facts[k]; ok && old != f {
		panic(fmt.Sprintf("test bug: key %s sent as %+v and as %+v", k, old, f))
	}
	l.facts[k] = f
	return k
}

// mcall is one request of the load; a call that failed at a kill is retried unchanged.
type mcall struct {
	kind    callKind
	path    string
	body    []byte
	hdr     map[string]string
	keys    []string // per non-blank line; "" for a line that must be rejected
	landing string
	expired bool // a GET /c in the short click-TTL phase: replaying it later changes nothing
	tries   int
}

// mslot is one signed impression and how each of its keys is sent: a key always goes through
// the same channel with the same content, so what it counts as never depends on which attempt
// got in first.
type mslot struct {
	ad     adInfo
	imp    string
	token  string
	price  int64     // the token's cpc_micros, 0 if none
	minted time.Time // when the client got the token (the server signed it before)

	impViaBatch   bool // the impression comes in batches, else from the pixel
	clickViaBatch bool // the valid click comes in batches, else from GET /c or POST /click
	botViaBatch   bool // the bot click comes in batches, else from GET /c or POST /click
	botImpBatch   bool // the bot impression comes in batches, else from the pixel

	lines map[string]lineRec // the fixed batch lines of this slot, by role
}

// mgen makes the calls of the metrics test's load.
type mgen struct {
	l        *mledger
	cat      *catalog
	mu       sync.Mutex
	slots    []*mslot // in the order of minted
	pool     []lineRec
	ringNext int
	eventSeq atomic.Int64
	mintSeq  atomic.Int64
	phaseB   atomic.Bool // the server runs with the short click TTL: every GET /c is expired
}

// shortTTL is the click TTL of the test's second phase; a token older than expiredAge (client
// side, so at least that old at the server) is expired then, whatever the rounding.
const (
	shortTTL   = time.Second
	expiredAge = 2500 * time.Millisecond
)

// eventLine is one POST /events line.
type eventLine struct {
	Type         string `json:"type"`
	AdID         string `json:"ad_id"`
	ImpressionID string `json:"impression_id,omitempty"`
	EventID      string `json:"event_id,omitempty"`
	UserID       string `json:"user_id,omitempty"`
	EventTime    any    `json:"event_time,omitempty"`
	CPCMicros    int64  `json:"cpc_micros,omitempty"`
	UserAgent    string `json:"user_agent,omitempty"`
}

// eventTime picks an event_time: none (the receive time), recent, late (minutes to hours,
// within --max-lateness) or slightly in the future (within --max-clock-skew).
func eventTime(r *rand.Rand) (wire any, at int64) {
	now := time.Now()
	var t time.Time
	switch x := r.IntN(100); {
	case x < 40:
		return nil, 0
	case x < 70:
		t = now.Add(-time.Duration(r.IntN(120)) * time.Second)
	case x < 86:
		t = now.Add(-time.Duration(120+r.IntN(23*60)) * time.Second)
	case x < 93:
		t = now.Add(-time.Duration(30*60+r.IntN(150*60)) * time.Second)
	default:
		t = now.Add(time.Duration(5+r.IntN(145)) * time.Second)
	}
	if r.IntN(2) == 0 {
		return t.Unix(), t.Unix()
	}
	return t.UTC().Format(time.RFC3339), t.Unix()
}

func (g *mgen) slotLine(r *rand.Rand, s *mslot, role string) lineRec {
	g.mu.Lock()
	defer g.mu.Unlock()
	if lr, ok := s.lines[role]; ok {
		return lr
	}
	lj := eventLine{AdID: s.ad.id, ImpressionID: s.imp}
	var at int64
	lj.EventTime, at = eventTime(r)
	f := fact{ad: s.ad.id, at: at}
	switch role {
	case "impression":
		f.typ, lj.Type = event.TypeImpression, "impression"
	case "click":
		f.typ, lj.Type = event.TypeClick, "click"
		if r.IntN(2) == 0 {
			lj.CPCMicros = int64(50_000 + r.IntN(900_000))
			f.carried = lj.CPCMicros
		}
	case "bot-click":
		f.typ, f.reason, lj.Type, lj.UserAgent = event.TypeClick, event.ReasonBot, "click", botUAs[r.IntN(len(botUAs))]
	case "bot-impression":
		f.typ, f.reason, lj.Type, lj.UserAgent = event.TypeImpression, event.ReasonBot, "impression", botUAs[r.IntN(len(botUAs))]
	case "share":
		// An interaction without event_id is keyed by its type and impression id.
		f.typ, f.name, lj.Type = event.TypeInteraction, "share", "share"
	default:
		panic("test bug: role " + role)
	}
	b, _ := json.Marshal(lj)
	lr := lineRec{json: b, key: g.l.register(f.key(s.imp, ""), f)}
	s.lines[role] = lr
	return lr
}

// mint signs a new impression, with an auction price now and then.
func (g *mgen) mint(ctx context.Context, c *http.Client, base string, r *rand.Rand, round int) (*mslot, error) {
	s := &mslot{
		ad:          g.cat.ads[r.IntN(len(g.cat.ads))],
		imp:         fmt.Sprintf("mimp-%d-%d", round, g.mintSeq.Add(1)),
		impViaBatch: r.IntN(3) == 0, clickViaBatch: r.IntN(3) == 0, botViaBatch: r.IntN(3) == 0, botImpBatch: r.IntN(2) == 0,
		lines: map[string]lineRec{},
	}
	req := map[string]any{"ad_id": s.ad.id, "impression_id": s.imp, "user_id": fmt.Sprintf("muser-%d", r.IntN(40))}
	if r.IntN(3) == 0 {
		s.price = int64(100_000 + r.IntN(800_000))
		req["cpc_micros"] = s.price
	}
	body, _ := json.Marshal(req)
	resp, err := do(ctx, c, "POST", base+"/api/v1/click-urls", testAdminKey, map[string]string{"Content-Type": "application/json"}, body)
	if err != nil {
		return nil, err
	}
	if resp.status != 200 {
		return nil, fmt.Errorf("POST /api/v1/click-urls: %v", resp)
	}
	var out struct {
		ClickURL string `json:"click_url"`
	}
	if err := json.Unmarshal(resp.body, &out); err != nil {
		return nil, err
	}
	i := bytes.LastIndex([]byte(out.ClickURL), []byte("/c/"))
	if i < 0 {
		return nil, fmt.Errorf("click-urls: click_url %q", out.ClickURL)
	}
	s.token = out.ClickURL[i+3:]
	g.mu.Lock()
	s.minted = time.Now()
	g.slots = append(g.slots, s)
	g.mu.Unlock()
	return s, nil
}

func (g *mgen) pick(r *rand.Rand) *mslot {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := len(g.slots)
	if r.IntN(3) == 0 {
		return g.slots[n-1-r.IntN(min(n, 20))]
	}
	return g.slots[r.IntN(n)]
}

// pickOld returns a slot signed at least age ago, or nil.
func (g *mgen) pickOld(r *rand.Rand, age time.Duration) *mslot {
	g.mu.Lock()
	defer g.mu.Unlock()
	cut := time.Now().Add(-age)
	n, _ := slices.BinarySearchFunc(g.slots, cut, func(s *mslot, t time.Time) int { return s.minted.Compare(t) })
	if n == 0 {
		return nil
	}
	return g.slots[r.IntN(n)]
}

// pickVia returns a slot whose key of the role comes in batches, or nil.
func (g *mgen) pickVia(r *rand.Rand, role string) *mslot {
	for range 6 {
		s := g.pick(r)
		if role == "share" || role == "impression" && s.impViaBatch || role == "click" && s.clickViaBatch ||
			role == "bot-click" && s.botViaBatch || role == "bot-impression" && s.botImpBatch {
			return s
		}
	}
	return nil
}

func uaHdr(ua string) map[string]string { return map[string]string{"User-Agent": ua} }

// next makes one call of the load, or nil when the action drawn does not apply to the slot.
func (g *mgen) next(r *rand.Rand) *mcall {
	s := g.pick(r)
	phaseB := g.phaseB.Load()
	switch x := r.IntN(100); {
	case x < 20: // the slot's valid click
		if s.clickViaBatch {
			return g.batchOf(r, []lineRec{g.slotLine(r, s, "click")})
		}
		if phaseB && s.price != 0 {
			return nil // only its token carries its price, and any GET /c now is expired
		}
		f := fact{typ: event.TypeClick, ad: s.ad.id, carried: s.price}
		k := g.l.register(f.key(s.imp, ""), f)
		if s.price == 0 && (phaseB || r.IntN(2) == 0) {
			return g.appClick(r, s, k, browserUA)
		}
		return &mcall{kind: kindClick, path: "/c/" + s.token, keys: []string{k}, landing: s.ad.landing}
	case x < 40: // the slot's impression
		if s.impViaBatch {
			return g.batchOf(r, []lineRec{g.slotLine(r, s, "impression")})
		}
		f := fact{typ: event.TypeImpression, ad: s.ad.id}
		return &mcall{kind: kindPixel, path: "/i/" + s.token, keys: []string{g.l.register(f.key(s.imp, ""), f)}}
	case x < 47: // a bot clicks
		if s.botViaBatch {
			return g.batchOf(r, []lineRec{g.slotLine(r, s, "bot-click")})
		}
		f := fact{typ: event.TypeClick, ad: s.ad.id, reason: event.ReasonBot}
		k := g.l.register(f.key(s.imp, ""), f)
		ua := botUAs[r.IntN(len(botUAs))]
		if phaseB || r.IntN(2) == 0 {
			return g.appClick(r, s, k, ua)
		}
		return &mcall{kind: kindClick, path: "/c/" + s.token, keys: []string{k}, landing: s.ad.landing, hdr: uaHdr(ua)}
	case x < 51: // a bot fetches the pixel: not an impression
		if s.botImpBatch {
			return g.batchOf(r, []lineRec{g.slotLine(r, s, "bot-impression")})
		}
		f := fact{typ: event.TypeImpression, ad: s.ad.id, reason: event.ReasonBot}
		return &mcall{kind: kindPixel, path: "/i/" + s.token, keys: []string{g.l.register(f.key(s.imp, ""), f)}, hdr: uaHdr(botUAs[r.IntN(len(botUAs))])}
	case x < 60: // a click on an expired token (second phase only)
		if !phaseB {
			return nil
		}
		if s = g.pickOld(r, expiredAge); s == nil {
			return nil
		}
		f := fact{typ: event.TypeClick, ad: s.ad.id, reason: event.ReasonExpired, carried: s.price}
		k := g.l.register(f.key(s.imp, ""), f)
		return &mcall{kind: kindClick, path: "/c/" + s.token, keys: []string{k}, landing: s.ad.landing, expired: true}
	}
	return g.batch(r)
}

func (g *mgen) appClick(r *rand.Rand, s *mslot, key, ua string) *mcall {
	c := &mcall{kind: kindAppClick, path: "/click", keys: []string{key}, landing: s.ad.landing,
		hdr: map[string]string{"Content-Type": "application/json", "User-Agent": ua}}
	if r.IntN(3) == 0 {
		c.hdr["Idempotency-Key"] = s.imp
		c.body, _ = json.Marshal(map[string]string{"ad_id": s.ad.id})
	} else {
		c.body, _ = json.Marshal(map[string]string{"ad_id": s.ad.id, "impression_id": s.imp})
	}
	return c
}

// linesCall is a POST /events call of exactly these lines.
func linesCall(lines []lineRec) *mcall {
	c := &mcall{kind: kindBatch, path: "/events", hdr: map[string]string{"Content-Type": "application/x-ndjson"}}
	for _, lr := range lines {
		c.body = append(append(c.body, lr.json...), '\n')
		c.keys = append(c.keys, lr.key)
	}
	return c
}

// batchOf is a POST /events call of these lines and, now and then, one that must be rejected.
func (g *mgen) batchOf(r *rand.Rand, lines []lineRec) *mcall {
	c := linesCall(lines)
	if r.IntN(25) == 0 {
		now := time.Now()
		bad := [...]string{
			`{"type":"click","ad_id":"no-such-ad","impression_id":"never-` + strconv.Itoa(r.IntN(1000)) + `"}`,
			`{"type":"click","ad_id":`,
			`{"type":"impression","ad_id":"` + g.cat.ads[0].id + `","impression_id":"too-old-` + strconv.Itoa(r.IntN(1000)) + `","event_time":` + strconv.FormatInt(now.Add(-26*time.Hour).Unix(), 10) + `}`,
			`{"type":"click","ad_id":"` + g.cat.ads[0].id + `","impression_id":"too-new-` + strconv.Itoa(r.IntN(1000)) + `","event_time":"` + now.Add(time.Hour).UTC().Format(time.RFC3339) + `"}`,
		}[r.IntN(4)]
		at := r.IntN(len(c.keys) + 1)
		all := bytes.SplitAfter(c.body, []byte("\n"))
		c.body = slices.Concat(slices.Concat(all[:at]...), []byte(bad+"\n"), slices.Concat(all[at:]...))
		c.keys = slices.Insert(c.keys, at, "")
	}
	return c
}

// batch is 1-12 lines: interactions with fresh event ids, the slots' batch lines, lines of
// earlier batches and repeats inside the batch.
func (g *mgen) batch(r *rand.Rand) *mcall {
	n := 1 + r.IntN(12)
	var lines, own []lineRec
	for range n {
		var lr lineRec
		switch x := r.IntN(100); {
		case len(own) > 0 && x < 10:
			lr = own[r.IntN(len(own))]
		case x < 25:
			g.mu.Lock()
			if len(g.pool) > 0 {
				lr = g.pool[r.IntN(len(g.pool))]
			}
			g.mu.Unlock()
		case x < 80:
			role := "impression"
			switch {
			case x < 50:
			case x < 68:
				role = "click"
			case x < 73:
				role = "bot-click"
			case x < 76:
				role = "bot-impression"
			default:
				role = "share"
			}
			if s := g.pickVia(r, role); s != nil {
				lr = g.slotLine(r, s, role)
			}
		}
		if lr.json == nil {
			s := g.pick(r)
			f := fact{typ: event.TypeInteraction, name: interactionNames[r.IntN(len(interactionNames))], ad: s.ad.id}
			lj := eventLine{Type: f.name, AdID: s.ad.id, ImpressionID: s.imp, EventID: fmt.Sprintf("mev-%d", g.eventSeq.Add(1))}
			lj.EventTime, f.at = eventTime(r)
			b, _ := json.Marshal(lj)
			lr = lineRec{json: b, key: g.l.register(f.key(s.imp, lj.EventID), f)}
			own = append(own, lr)
		}
		lines = append(lines, lr)
	}
	g.mu.Lock()
	for _, lr := range own {
		if len(g.pool) < 2000 {
			g.pool = append(g.pool, lr)
		} else {
			g.pool[g.ringNext] = lr
			g.ringNext = (g.ringNext + 1) % len(g.pool)
		}
	}
	g.mu.Unlock()
	return g.batchOf(r, lines)
}

// mrun is the state one metrics test shares with its workers.
type mrun struct {
	l       *mledger
	g       *mgen
	retries struct {
		sync.Mutex
		calls []*mcall
	}
	probs  problems
	killed atomic.Bool

	requests, failedAtKill, unavailable atomic.Int64
}

func (mr *mrun) retry(c *mcall) {
	mr.retries.Lock()
	mr.retries.calls = append(mr.retries.calls, c)
	mr.retries.Unlock()
}

func (mr *mrun) pending() int {
	mr.retries.Lock()
	defer mr.retries.Unlock()
	return len(mr.retries.calls)
}

func (mr *mrun) popRetry() *mcall {
	mr.retries.Lock()
	defer mr.retries.Unlock()
	if len(mr.retries.calls) == 0 {
		return nil
	}
	c := mr.retries.calls[0]
	mr.retries.calls = mr.retries.calls[1:]
	return c
}

// exec sends cl until it is answered (503s are retried in place); a call that fails because
// the server was killed is queued for after the restart.
func (mr *mrun) exec(ctx context.Context, c *http.Client, base string, cl *mcall) {
	for {
		if ctx.Err() != nil {
			mr.retry(cl)
			return
		}
		cl.tries++
		mr.requests.Add(1)
		now := time.Now()
		mr.l.mu.Lock()
		for _, k := range cl.keys {
			if _, ok := mr.l.firstSent[k]; k != "" && !ok {
				mr.l.firstSent[k] = now
			}
		}
		mr.l.mu.Unlock()
		key, method := "", "GET"
		if cl.kind == kindBatch {
			key = testAdminKey
		}
		if cl.body != nil {
			method = "POST"
		}
		resp, err := do(ctx, c, method, base+cl.path, key, cl.hdr, cl.body)
		if err != nil {
			if !isTransportErr(err) || !mr.killed.Load() {
				mr.probs.add("%s %s failed while the server was up: %v", method, cl.path, err)
				return
			}
			mr.failedAtKill.Add(1)
			mr.retry(cl)
			return
		}
		if resp.status == http.StatusServiceUnavailable && cl.tries < 300 {
			mr.unavailable.Add(1)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if !mr.check(cl, resp) {
			return
		}
		acked := time.Now()
		mr.l.mu.Lock()
		mr.l.okByKind[cl.kind]++
		for _, k := range cl.keys {
			if k == "" {
				continue
			}
			mr.l.acks++
			if _, ok := mr.l.acked[k]; !ok {
				mr.l.acked[k] = acked
			}
		}
		if mr.requests.Load()%20 == 0 && len(mr.l.acked0) < 1000 {
			mr.l.acked0 = append(mr.l.acked0, cl)
		}
		mr.l.mu.Unlock()
		return
	}
}

func (mr *mrun) check(cl *mcall, resp *response) bool {
	switch cl.kind {
	case kindClick, kindAppClick:
		if resp.status != http.StatusFound || resp.header.Get("Location") != cl.landing {
			mr.probs.add("%s %s (%v): got %v Location %q, want 302 to %q", kindNames[cl.kind], cl.path, cl.hdr, resp, resp.header.Get("Location"), cl.landing)
			return false
		}
	case kindPixel:
		if resp.status != http.StatusOK || !bytes.HasPrefix(resp.body, []byte("GIF8")) {
			mr.probs.add("GET %s: got %v, want a 200 GIF", cl.path, resp)
			return false
		}
	case kindBatch:
		var br batchResp
		if resp.status != http.StatusOK || json.Unmarshal(resp.body, &br) != nil {
			mr.probs.add("POST /events: got %v, want 200 with counts", resp)
			return false
		}
		var bad []int
		for i, k := range cl.keys {
			if k == "" {
				bad = append(bad, i+1)
			}
		}
		if d := br.mismatch(len(cl.keys), bad); d != "" {
			mr.probs.add("POST /events: %s (body %q, response %s)", d, cl.body, resp.body)
			return false
		}
	}
	return true
}

// load runs workers until ctx ends or the server is killed.
func (mr *mrun) load(ctx context.Context, c *http.Client, base string, sd uint64, round, workers int) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := range workers {
		r := newRand(sd, uint64(5000+100*round+w))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && !mr.killed.Load() {
				cl := mr.popRetry()
				if cl == nil && r.IntN(100) < 15 {
					if _, err := mr.g.mint(ctx, c, base, r, round); err != nil && !mr.killed.Load() && ctx.Err() == nil {
						mr.probs.add("POST /api/v1/click-urls while the server was up: %v", err)
					}
					continue
				}
				if cl == nil {
					if cl = mr.g.next(r); cl == nil {
						continue
					}
				}
				mr.exec(ctx, c, base, cl)
			}
		}()
	}
	return &wg
}

// drain retries every call that failed at a kill until it is acknowledged.
func (mr *mrun) drain(t *testing.T, c *http.Client, base string) int {
	t.Helper()
	n := 0
	var wg sync.WaitGroup
	var mu sync.Mutex
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for cl := mr.popRetry(); cl != nil; cl = mr.popRetry() {
				mu.Lock()
				n++
				mu.Unlock()
				mr.exec(context.Background(), c, base, cl)
			}
		}()
	}
	wg.Wait()
	mr.probs.check(t, "retrying the calls that failed at a kill")
	if left := mr.pending(); left > 0 {
		t.Fatalf("%d calls still unacknowledged after a restart", left)
	}
	return n
}

func TestMetricsExactUnderKill(t *testing.T) {
	needBinary(t)
	sd := seed(t)
	rng := newRand(sd, 0)
	e := newEnv(t)
	base := []string{"--admin-key", testAdminKey, "--click-secret", testClickSecret}
	short := append(slices.Clone(base), "--click-ttl", shortTTL.String())
	var (
		killsA  = 2 + rng.IntN(2) // with the default click TTL
		killsB  = 1 + rng.IntN(2) // with the short one: every GET /c is an expired click
		workers = 16
		started = time.Now()
	)
	mr := &mrun{l: &mledger{facts: map[string]fact{}, firstSent: map[string]time.Time{}, acked: map[string]time.Time{}}}
	srv := e.start(base...)
	client := newClient(workers)
	cat := setupCatalog(t, client, srv.base, testAdminKey, "m", 3, 2, 3)
	// Bids: the campaign's 250000, overridden on some ads; a token or cpc_micros may carry
	// the auction's price instead. No campaign has a budget, so each valid click charges its
	// price.
	bid := map[string]int64{}
	for i, ad := range cat.ads {
		bid[ad.id] = 250_000
		if i%2 == 1 {
			bid[ad.id] = int64(100_000 + rng.IntN(9)*50_000)
			mustJSON(t, client, "PUT", srv.base+"/api/v1/ads/"+ad.id, testAdminKey, map[string]any{
				"campaign_id": ad.campaign, "landing_url": ad.landing, "catalog_id": ad.catalogID, "cpc_bid_micros": bid[ad.id],
			}, 200, nil)
		}
	}
	mr.g = &mgen{l: mr.l, cat: cat}
	for i := range 60 {
		if _, err := mr.g.mint(context.Background(), client, srv.base, newRand(sd, uint64(10+i)), 0); err != nil {
			t.Fatal(err)
		}
	}

	rounds := killsA + killsB
	for round := 0; round < rounds; round++ {
		if round == killsA {
			// Switch to the short click TTL. First every call that failed at the last kill
			// is acknowledged on a server with the default TTL (a retried click must count as
			// what its first, maybe durable, attempt counted as), then a clean stop.
			n := mr.drain(t, client, srv.base)
			srv.stop(t)
			client.CloseIdleConnections()
			mr.g.phaseB.Store(true)
			srv = e.start(short...)
			// The first slots are old enough to be expired from the start of this phase.
			time.Sleep(time.Until(mr.g.slots[0].minted.Add(expiredAge)))
			t.Logf("switched to --click-ttl %v after retrying %d calls on the default TTL", shortTTL, n)
		}
		ctx, cancel := context.WithCancel(context.Background())
		before := mr.requests.Load()
		wg := mr.load(ctx, client, srv.base, sd, round, workers)
		dur := time.Duration(500+rng.IntN(1000)) * time.Millisecond
		time.Sleep(dur)
		mr.killed.Store(true)
		srv.kill(t)
		cancel()
		wg.Wait()
		mr.killed.Store(false)
		client.CloseIdleConnections()
		mr.probs.check(t, fmt.Sprintf("round %d", round))
		args := base
		if mr.g.phaseB.Load() {
			args = short
		}
		srv = e.start(args...)
		t.Logf("round %d: %d requests in %v, SIGKILL, %d calls to retry; restarted (recovery %s)",
			round, mr.requests.Load()-before, dur, mr.pending(), srv.recovery())
	}

	// After the last restart: retry what failed and replay a sample of acknowledged calls (each
	// must change nothing). Then nothing writes to the log any more: a copy of it gives the
	// model its event times. The live server must agree with the model (the top-N index as
	// updated by the aggregator), and again after one more kill -9 (as rebuilt).
	retried := mr.drain(t, client, srv.base)
	mr.l.mu.Lock()
	replay := slices.Clone(mr.l.acked0)
	mr.l.mu.Unlock()
	nReplay := 0
	for _, cl := range replay {
		if cl.kind == kindClick && !cl.expired {
			continue // a valid GET /c of the first phase would be an expired click now
		}
		mr.exec(context.Background(), client, srv.base, &mcall{kind: cl.kind, path: cl.path, body: cl.body, hdr: cl.hdr, keys: cl.keys, landing: cl.landing})
		nReplay++
	}
	mr.probs.check(t, "replaying acknowledged calls")
	snap := e.snapshotLog(t, "log-final")
	byKey, logTotal := readLog(t, snap)
	md, stats := mr.model(t, byKey, cat, bid, started)
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("loaded: %d kills, %d requests (%d failed at a kill and were retried, %d answered 503), %d retried after the last kill, %d replayed; "+
		"ok: GET /c %d, GET /i %d, POST /click %d, POST /events %d; %d keys acknowledged (%d acknowledgements); log holds %d events; %s",
		rounds, mr.requests.Load(), mr.failedAtKill.Load(), mr.unavailable.Load(), retried, nReplay,
		mr.l.okByKind[kindClick], mr.l.okByKind[kindPixel], mr.l.okByKind[kindAppClick], mr.l.okByKind[kindBatch],
		len(mr.l.acked), mr.l.acks, logTotal, stats)

	checkAnalytics(t, "live", srv, client, md, cat, rng)
	srv.kill(t)
	client.CloseIdleConnections()
	srv = e.start(short...)
	checkAnalytics(t, "after one more kill -9 and a restart", srv, client, md, cat, rng)
	srv.stop(t)
	client.CloseIdleConnections()
	t.Logf("metrics test took %v", time.Since(started).Round(time.Millisecond))
}

// model checks the log against the ledger (each acknowledged key once, as sent, at a
// plausible time; nothing else) and builds the exact model of the metrics from it: the
// client's facts, with the event times of the log for events timed by their receipt.
func (mr *mrun) model(t *testing.T, byKey map[string][]logEntry, cat *catalog, bid map[string]int64, started time.Time) (*model, string) {
	t.Helper()
	l := mr.l
	l.mu.Lock()
	defer l.mu.Unlock()
	var missing, dupes, unknown, wrong, unacked []string
	for k := range l.facts {
		if _, ok := l.acked[k]; !ok {
			unacked = append(unacked, k)
		}
	}
	for k, es := range byKey {
		if len(es) > 1 {
			dupes = append(dupes, fmt.Sprintf("%s x%d", k, len(es)))
		}
		if _, ok := l.facts[k]; !ok {
			unknown = append(unknown, fmt.Sprintf("%s: %+v", k, es[0].ev))
		}
	}
	md := newModel()
	var nImp, nClk, nInter, nBot, nExp, nBotImp, spend int64
	late := 0
	for k, ackAt := range l.acked {
		f := l.facts[k]
		es := byKey[k]
		if len(es) == 0 {
			missing = append(missing, k)
			continue
		}
		ev := &es[0].ev
		ad := cat.byID[f.ad]
		var d []string
		if ev.Type != f.typ || ev.Name != f.name || ev.Invalid != f.reason {
			d = append(d, fmt.Sprintf("type %v %q invalid %q, want %v %q invalid %q", ev.Type, ev.Name, ev.Invalid, f.typ, f.name, f.reason))
		}
		if ev.AdID != ad.id || ev.CampaignID != ad.campaign || ev.AdvertiserID != ad.advertiser {
			d = append(d, fmt.Sprintf("ad/campaign/advertiser %s/%s/%s, want %s/%s/%s", ev.AdID, ev.CampaignID, ev.AdvertiserID, ad.id, ad.campaign, ad.advertiser))
		}
		if f.typ == event.TypeClick && f.reason == event.ReasonNone && ev.PriceMicros != f.carried {
			d = append(d, fmt.Sprintf("price %d, want %d", ev.PriceMicros, f.carried))
		}
		evt := time.UnixMicro(ev.Time)
		if f.at != 0 {
			if ev.Time != f.at*1e6 {
				d = append(d, fmt.Sprintf("event time %v, want the event_time sent, %v", evt, time.Unix(f.at, 0)))
			}
		} else if lo, hi := l.firstSent[k].Add(-time.Second), ackAt.Add(time.Second); evt.Before(lo) || evt.After(hi) {
			d = append(d, fmt.Sprintf("event time %v outside [first sent, acknowledged] = [%v, %v]", evt, lo, hi))
		}
		if len(d) > 0 {
			wrong = append(wrong, k+": "+fmt.Sprint(d))
			continue
		}
		if evt.Before(started.Add(-time.Minute)) {
			late++
		}
		var c counts
		switch {
		case f.typ == event.TypeImpression && f.reason == event.ReasonNone:
			c.imp = 1
			nImp++
		case f.typ == event.TypeImpression:
			nBotImp++ // not counted anywhere
		case f.typ == event.TypeClick && f.reason == event.ReasonNone:
			c.clk = 1
			c.spend = f.carried
			if c.spend == 0 {
				c.spend = bid[f.ad]
			}
			nClk++
			spend += c.spend
		case f.typ == event.TypeClick:
			c.invalid = map[string]int64{f.reason.String(): 1}
			if f.reason == event.ReasonBot {
				nBot++
			} else {
				nExp++
			}
		default:
			c.inter = map[string]int64{f.name: 1}
			nInter++
		}
		md.add(ad, ev.Time/60e6, &c)
	}
	report(t, "final log: keys sent but never acknowledged", unacked)
	report(t, "final log: acknowledged keys missing", missing)
	report(t, "final log: keys more than once", dupes)
	report(t, "final log: events never sent", unknown)
	report(t, "final log: events that differ from what was sent", wrong)
	return md, fmt.Sprintf("model: %d impressions, %d valid clicks (spend %d), %d bot clicks, %d expired clicks, %d interactions, %d bot impressions (not counted), %d events timed before the test started",
		nImp, nClk, spend, nBot, nExp, nInter, nBotImp, late)
}

// checkAnalytics polls GET /metrics (1m, 1h, 1d in two zones; ad, campaign, advertiser) and
// GET /metrics/top (several windows, metrics, levels and filters) until they equal the model.
func checkAnalytics(t *testing.T, when string, srv *server, c *http.Client, md *model, cat *catalog, rng *rand.Rand) {
	t.Helper()
	lo, hi, ok := md.minutes()
	if !ok {
		t.Fatal("the model is empty")
	}
	start := time.Unix(lo*60, 0).Add(-2 * time.Minute).UTC()
	end := time.Unix(max(hi*60, time.Now().Unix()), 0).Add(3 * time.Minute).UTC()

	ids := [numLevels][]string{}
	owner := map[string][2]string{}
	for _, ad := range cat.ads {
		ids[lvAd] = append(ids[lvAd], ad.id)
		owner[ad.id] = [2]string{ad.campaign, ad.advertiser}
		if !slices.Contains(ids[lvCampaign], ad.campaign) {
			ids[lvCampaign] = append(ids[lvCampaign], ad.campaign)
			owner[ad.campaign] = [2]string{ad.campaign, ad.advertiser}
		}
		if !slices.Contains(ids[lvAdvertiser], ad.advertiser) {
			ids[lvAdvertiser] = append(ids[lvAdvertiser], ad.advertiser)
			owner[ad.advertiser] = [2]string{"", ad.advertiser}
		}
	}
	ownerOf := func(l level, id string) (string, string) {
		o := owner[id]
		return o[0], o[1]
	}
	zones := []string{"Asia/Kolkata", "America/St_Johns", "Pacific/Chatham", "America/Los_Angeles", "Europe/Berlin"}
	rng.Shuffle(len(zones), func(i, j int) { zones[i], zones[j] = zones[j], zones[i] })
	var mqs []*metricsQuery
	for l := range numLevels {
		shuffled := slices.Clone(ids[l])
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		mqs = append(mqs,
			&metricsQuery{level: l, ids: shuffled, interval: "1m", step: time.Minute},
			&metricsQuery{level: l, ids: shuffled, interval: "1h", step: time.Hour})
		for _, z := range zones[:2] {
			loc, err := time.LoadLocation(z)
			if err != nil {
				t.Fatal(err)
			}
			mqs = append(mqs, &metricsQuery{level: l, ids: shuffled, interval: "1d", step: 24 * time.Hour, tz: z, loc: loc})
		}
	}
	// Top-N: windows from the current minute alone to the whole day, and two explicit ones in
	// the past (late events only); every metric and level, with and without filters.
	var tqs []*topQuery
	windows := []int{1, 5, 20 + rng.IntN(20), 1440, 0, 0}
	now := time.Now().Truncate(time.Minute)
	past := [][2]time.Time{
		{now.Add(-time.Duration(60+rng.IntN(100)) * time.Minute), now.Add(-time.Duration(10+rng.IntN(40)) * time.Minute)},
		{now.Add(-time.Duration(3+rng.IntN(10)) * time.Minute), now.Add(-time.Duration(1+rng.IntN(2)) * time.Minute)},
	}
	for i, minutes := range windows {
		for _, metric := range []string{"clicks", "impressions", "spend_micros"} {
			adv := ids[lvAdvertiser][rng.IntN(len(ids[lvAdvertiser]))]
			cmp := ids[lvCampaign][rng.IntN(len(ids[lvCampaign]))]
			base := topQuery{metric: metric, minutes: minutes, n: 1000}
			if minutes == 0 {
				base.from, base.to = past[i-4][0], past[i-4][1]
			}
			for by := range numLevels {
				q := base
				q.by = by
				tqs = append(tqs, &q)
				qa := q
				qa.advertiser = adv
				tqs = append(tqs, &qa)
				if by != lvAdvertiser {
					qc := q
					qc.campaign = cmp
					tqs = append(tqs, &qc)
				}
			}
			q3 := base
			q3.n = 3 // truncation keeps the order
			tqs = append(tqs, &q3)
		}
	}
	ctx := context.Background()
	took := poll(t, when+": GET /metrics and /metrics/top against the model", 30*time.Second, func() []string {
		var diffs []string
		for _, q := range mqs {
			path := q.path(start, end)
			var r metricsResp
			if err := getJSON(ctx, c, srv.base, path, testAdminKey, &r); err != nil {
				diffs = append(diffs, err.Error())
				continue
			}
			diffs = append(diffs, md.checkMetrics(q, path, &r, start, end)...)
		}
		for _, q := range tqs {
			path := q.path()
			now := time.Now()
			r, err := getTop(ctx, c, srv.base, path, testAdminKey, q.by.idKey(), q.metric)
			if err != nil {
				diffs = append(diffs, err.Error())
				continue
			}
			diffs = append(diffs, md.checkTop(q, path, r, now, ownerOf)...)
		}
		return diffs
	})
	if !t.Failed() {
		t.Logf("%s: GET /metrics (%d queries over [%s, %s): 1m, 1h, 1d in %s and %s) and GET /metrics/top (%d queries, minutes %v and [%s, %s), [%s, %s)) equal the model within %v",
			when, len(mqs), start.Format(time.RFC3339), end.Format(time.RFC3339), zones[0], zones[1], len(tqs), windows[:4],
			past[0][0].Format("15:04"), past[0][1].Format("15:04"), past[1][0].Format("15:04"), past[1][1].Format("15:04"), took.Round(time.Millisecond))
	}
}
