package loadgen

import (
	"container/heap"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/adpulse/adpulse/internal/clicktoken"
)

// Kind is a kind of request; latency and errors are reported per kind.
type Kind uint8

// Request kinds.
const (
	KindClickURL Kind = iota // POST /api/v1/click-urls: the ad server asks for a signed token
	KindPixel                // GET /i/{token}
	KindClick                // GET /c/{token}
	KindAppClick             // POST /click
	KindEvents               // POST /events
	numKinds
)

var kindNames = [numKinds]string{"click_url", "pixel", "click", "app_click", "events"}

func (k Kind) String() string { return kindNames[k] }

// The keys of a view: the idempotency keys it can produce (see event.Event.Key). Which metric
// each one counts in depends on the view (a bot's impression counts nowhere, its click as an
// invalid click).
const (
	keyImp uint8 = iota
	keyClick
	keyCart
	keyOrder
	numKeys
)

type channel uint8

const (
	chWeb channel = iota
	chApp
	chS2S
)

type viewFlags uint8

const (
	vfBot viewFlags = 1 << iota
	vfExpired
)

// lineRef names one key of one view: what a request (or one line of a batch) may record.
type lineRef struct {
	view int64
	key  uint8
}

// tokenRef is the click token of a web view: known at once when signing locally, or filled
// in by the view's click_url request. Pixel and click requests wait for it.
type tokenRef struct {
	once sync.Once
	done chan struct{}
	tok  string // valid once done is closed; "" if the token could not be obtained
}

func readyToken(tok string) *tokenRef {
	t := &tokenRef{done: make(chan struct{}), tok: tok}
	close(t.done)
	return t
}

func (t *tokenRef) set(tok string) {
	t.once.Do(func() {
		t.tok = tok
		close(t.done)
	})
}

// request is one HTTP request to send. It is immutable once next returns it: a client retry
// sends the same request again.
type request struct {
	kind  Kind
	ua    string
	tok   *tokenRef // pixel, click, click_url (which fills it)
	body  []byte    // click_url, app_click, events
	lines []lineRef // keys the request records, in body line order for events
	dup   dupKind   // why this request is a repeat, if it is one
}

type dupKind uint8

const (
	dupNone dupKind = iota
	dupDoubleClick
	dupRetry
)

// Timing of a view's actions, in request slots after the view starts. Slots stand in for
// time so that a run is the same sequence of requests at any rate.
const (
	pixelDelayMax    = 4
	clickDelayMin    = 8
	clickDelayMax    = 120
	doubleClickMax   = 3
	cartDelayMin     = 20
	cartDelayMax     = 300
	retryDelayMin    = 5
	retryDelayMax    = 200
	maxBatchAgeSlots = 2000 // a batch is sent when full or this many slots after its first line
	botCTR           = 0.3  // crawlers follow links far more often than people
	noTimeShare      = 0.1  // share of on-time lines sent without event_time (receive time applies)
	lineUAShare      = 0.3  // share of people's /events lines that carry the browser user agent
)

type actionKind uint8

const (
	actPixel actionKind = iota
	actClick
	actCart
	actOrder
	actResend
)

type action struct {
	slot int64
	seq  uint64
	kind actionKind
	dup  dupKind
	v    *viewInfo
	line []byte   // a repeated /events click line: the same bytes, so the same event_time
	req  *request // actResend
}

type actionQueue []*action

func (q actionQueue) Len() int { return len(q) }
func (q actionQueue) Less(i, j int) bool {
	if q[i].slot != q[j].slot {
		return q[i].slot < q[j].slot
	}
	return q[i].seq < q[j].seq
}
func (q actionQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *actionQueue) Push(x any)   { *q = append(*q, x.(*action)) }
func (q *actionQueue) Pop() any {
	old := *q
	a := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	return a
}

// viewInfo is what the generator remembers of a view until its last action ran.
type viewInfo struct {
	n     int64 // view number, the ledger's index
	ad    int
	user  int
	ch    channel
	flags viewFlags
	ua    string
	imp   string
	tok   *tokenRef
}

// genStats counts what the generator produced.
type genStats struct {
	views        [3]int64 // by channel
	botViews     int64
	doubleClicks int64
	retries      int64
	lateLines    int64
}

// generator turns a seed into a sequence of requests. next is called once per request slot
// by one goroutine at a time; the sequence depends only on the seed, the model and the
// layout, while event times, token issue times and ids of the run come from the clock and
// the run id.
type generator struct {
	m      Model
	lay    Layout
	rng    *rand.Rand
	zipf   *zipf
	rankAd []int32 // ad index of each popularity rank: the hot ads are spread over campaigns
	keys   *clicktoken.Keyring
	ledger *ledger
	now    func() time.Time
	runID  string

	slot  int64
	seq   uint64
	queue actionQueue

	batch      [][]byte
	batchRefs  []lineRef
	batchSince int64

	stats genStats
}

func newGenerator(seed uint64, m Model, lay Layout, keys *clicktoken.Keyring, l *ledger, runID string, now func() time.Time) *generator {
	rng := rand.New(rand.NewPCG(seed, 0x6c6f616467656e)) // "loadgen"
	g := &generator{m: m, lay: lay, rng: rng, zipf: newZipf(lay.Ads, m.ZipfS), keys: keys, ledger: l, now: now, runID: runID}
	g.rankAd = make([]int32, lay.Ads)
	for r, ad := range rng.Perm(lay.Ads) {
		g.rankAd[r] = int32(ad)
	}
	return g
}

// next returns the request of the next slot.
func (g *generator) next() *request {
	g.slot++
	// Each pass runs a due action, sends a due batch or starts a view, and a view adds at
	// least one line or action, so a request comes after at most a batch's worth of passes.
	for {
		if len(g.queue) > 0 && g.queue[0].slot <= g.slot {
			a := heap.Pop(&g.queue).(*action)
			if r := g.run(a); r != nil {
				return g.emit(r)
			}
			continue
		}
		if r := g.flush(); r != nil {
			return g.emit(r)
		}
		if r := g.newView(); r != nil {
			return g.emit(r)
		}
	}
}

func (g *generator) schedule(after int64, a *action) {
	g.seq++
	a.slot, a.seq = g.slot+after, g.seq
	heap.Push(&g.queue, a)
}

func (g *generator) between(lo, hi int) int64 { return int64(lo + g.rng.IntN(hi-lo+1)) }

func (g *generator) chance(p float64) bool { return p > 0 && g.rng.Float64() < p }

// emit schedules a client retry of r, sometimes. A click_url request is not retried: a real
// ad server would ask again for a new token, which changes nothing that is counted.
func (g *generator) emit(r *request) *request {
	if r.kind != KindClickURL && g.chance(g.m.RetryShare) {
		cp := *r
		cp.dup = dupRetry
		g.schedule(g.between(retryDelayMin, retryDelayMax), &action{kind: actResend, req: &cp})
	}
	return r
}

func (g *generator) newView() *request {
	v := &viewInfo{ad: int(g.rankAd[g.zipf.sample(g.rng.Float64())]), user: g.rng.IntN(g.m.Users)}
	switch u := g.rng.Float64(); {
	case u < g.m.WebShare:
		v.ch = chWeb
	case u < g.m.WebShare+g.m.AppShare:
		v.ch = chApp
	default:
		v.ch = chS2S
	}
	g.stats.views[v.ch]++
	clickP := g.m.CTR
	if g.chance(g.m.BotShare) {
		v.flags |= vfBot
		v.ua = botUAs[g.rng.IntN(len(botUAs))]
		clickP = botCTR
		g.stats.botViews++
	} else if v.ch == chApp {
		v.ua = appUAs[g.rng.IntN(len(appUAs))]
	} else {
		v.ua = browserUAs[g.rng.IntN(len(browserUAs))]
	}
	if v.ch == chWeb && v.flags&vfBot == 0 && g.keys != nil && g.chance(g.m.ExpiredShare) {
		v.flags |= vfExpired
	}
	v.n = g.ledger.addView(int32(v.ad), v.flags)
	v.imp = g.lay.Prefix + "-" + g.runID + "-" + strconv.FormatInt(v.n, 10)
	clicked := g.chance(clickP)

	var out *request
	switch v.ch {
	case chWeb:
		if g.keys != nil {
			issued := g.now()
			if v.flags&vfExpired != 0 {
				issued = issued.Add(-7 * 24 * time.Hour) // past any sensible --click-ttl
			}
			tok, err := g.keys.Sign(clicktoken.Claims{AdID: g.lay.AdID(v.ad), ImpressionID: v.imp, UserID: g.userID(v.user), IssuedAt: issued})
			if err != nil {
				panic("loadgen: sign a generated token: " + err.Error()) // ids are generated valid
			}
			v.tok = readyToken(tok)
		} else {
			v.tok = &tokenRef{done: make(chan struct{})}
			body := `{"ad_id":"` + g.lay.AdID(v.ad) + `","impression_id":"` + v.imp + `","user_id":"` + g.userID(v.user) + `"}`
			out = &request{kind: KindClickURL, ua: toolUA, tok: v.tok, body: []byte(body)}
		}
		g.schedule(g.between(1, pixelDelayMax), &action{kind: actPixel, v: v})
	default:
		g.addLine(v, keyImp, nil)
	}
	if clicked {
		g.schedule(g.between(clickDelayMin, clickDelayMax), &action{kind: actClick, v: v})
	}
	return out
}

func (g *generator) userID(u int) string { return "u" + strconv.Itoa(u) }

// run performs a due action: it returns a request, or nil when the action only added a line
// to the pending batch.
func (g *generator) run(a *action) *request {
	v := a.v
	switch a.kind {
	case actResend:
		g.stats.retries++
		return a.req
	case actPixel:
		return &request{kind: KindPixel, ua: v.ua, tok: v.tok, lines: []lineRef{{v.n, keyImp}}}
	case actClick:
		if a.dup != dupNone {
			g.stats.doubleClicks++
		}
		var r *request
		var line []byte
		refs := []lineRef{{v.n, keyClick}}
		switch v.ch {
		case chWeb:
			r = &request{kind: KindClick, ua: v.ua, tok: v.tok, lines: refs, dup: a.dup}
		case chApp:
			body := `{"ad_id":"` + g.lay.AdID(v.ad) + `","impression_id":"` + v.imp + `","user_id":"` + g.userID(v.user) + `"}`
			r = &request{kind: KindAppClick, ua: v.ua, body: []byte(body), lines: refs, dup: a.dup}
		default:
			// A repeated line is the same bytes, so it carries the same event_time.
			line = g.addLine(v, keyClick, a.line)
		}
		if a.dup == dupNone {
			if g.chance(g.m.DoubleClick) {
				g.schedule(g.between(1, doubleClickMax), &action{kind: actClick, dup: dupDoubleClick, v: v, line: line})
			}
			if v.flags&vfBot == 0 && g.chance(g.m.CartRate) {
				g.schedule(g.between(cartDelayMin, cartDelayMax), &action{kind: actCart, v: v})
			}
		}
		return r
	case actCart:
		g.addLine(v, keyCart, nil)
		if g.chance(g.m.OrderRate) {
			g.schedule(g.between(cartDelayMin, cartDelayMax), &action{kind: actOrder, v: v})
		}
		return nil
	case actOrder:
		g.addLine(v, keyOrder, nil)
		return nil
	}
	return nil
}

var keyTypes = [numKeys]string{"impression", "click", "add_to_cart", "order"}

// addLine adds an /events line for key k of v to the pending batch (line, when not nil, is a
// repeat of an earlier line) and returns the line.
func (g *generator) addLine(v *viewInfo, k uint8, line []byte) []byte {
	if line == nil {
		line = g.makeLine(v, k)
	}
	if len(g.batch) == 0 {
		g.batchSince = g.slot
	}
	g.batch = append(g.batch, line)
	g.batchRefs = append(g.batchRefs, lineRef{v.n, k})
	return line
}

func (g *generator) makeLine(v *viewInfo, k uint8) []byte {
	b := make([]byte, 0, 256)
	b = append(b, `{"type":"`...)
	b = append(b, keyTypes[k]...)
	b = append(b, `","impression_id":"`...)
	b = append(b, v.imp...)
	b = append(b, `","ad_id":"`...)
	b = append(b, g.lay.AdID(v.ad)...)
	b = append(b, '"')
	switch k {
	case keyCart:
		b = append(b, `,"event_id":"`+v.imp+`-cart"`...)
	case keyOrder:
		b = append(b, `,"event_id":"`+v.imp+`-order"`...)
	}
	b = append(b, `,"user_id":"`+g.userID(v.user)+`"`...)
	// A bot's line must name its user agent: that is how the server tells it is a bot.
	if v.flags&vfBot != 0 || g.chance(lineUAShare) {
		b = append(b, `,"user_agent":"`...)
		b = append(b, v.ua...) // fixed strings without quotes or backslashes
		b = append(b, '"')
	}
	now := g.now()
	switch {
	case g.chance(g.m.LateShare):
		now = now.Add(-time.Duration(g.rng.Int64N(int64(g.m.Lateness))))
		g.stats.lateLines++
	case g.chance(noTimeShare):
		return append(b, '}') // the receive time is the event time: the ledger keeps a window
	}
	// Whole seconds: that is what the contract's integer form carries, and RFC 3339 with
	// seconds keeps the two spellings equal.
	sec := now.Unix()
	if g.rng.IntN(2) == 0 {
		b = append(b, `,"event_time":`...)
		b = strconv.AppendInt(b, sec, 10)
	} else {
		b = append(b, `,"event_time":"`...)
		b = time.Unix(sec, 0).UTC().AppendFormat(b, time.RFC3339)
		b = append(b, '"')
	}
	g.ledger.setEventTime(v.n, k, sec)
	return append(b, '}')
}

// flush returns the pending batch as a request when it is full or old enough. Lines are
// shuffled so that event times arrive out of order, as they do from real SDK buffers. Lines
// still pending when the run ends are never sent (and so never expected).
func (g *generator) flush() *request {
	n := len(g.batch)
	if n == 0 || n < g.m.Batch && g.slot-g.batchSince < maxBatchAgeSlots {
		return nil
	}
	g.rng.Shuffle(n, func(i, j int) {
		g.batch[i], g.batch[j] = g.batch[j], g.batch[i]
		g.batchRefs[i], g.batchRefs[j] = g.batchRefs[j], g.batchRefs[i]
	})
	size := 0
	for _, l := range g.batch {
		size += len(l) + 1
	}
	body := make([]byte, 0, size)
	for _, l := range g.batch {
		body = append(body, l...)
		body = append(body, '\n')
	}
	r := &request{kind: KindEvents, ua: toolUA, body: body, lines: append([]lineRef(nil), g.batchRefs...)}
	clear(g.batch)
	g.batch, g.batchRefs = g.batch[:0], g.batchRefs[:0]
	return r
}
