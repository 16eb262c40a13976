package loadgen

import (
	"sync"
	"time"
)

// The ledger is the client-side record of what the server acknowledged: for every key of
// every view, whether some request carrying it was acknowledged, whether one may have been
// recorded without an answer (timeout, connection error, 5xx), and the minute its event time
// falls in. A key counts once however often it was sent, so the expected count of a metric
// is the number of distinct acknowledged keys, not of acknowledgements.
//
// Event time: a line with an event_time has an exact minute. For everything else the server
// uses its receive time, which lies between the first send of the key and its first
// acknowledgement (any acknowledgement, even of a duplicate, comes after the recording), so
// the ledger keeps that window of minutes; a window spanning two minutes makes the per-minute
// comparison a bound rather than an equality.

// key state flags
const (
	ksExact uint8 = 1 << iota // lo is the event_time's minute
	ksSent                    // some request with the key was sent
	ksAcked                   // some request with the key was acknowledged
	ksMaybe                   // some request got no answer: it may have been recorded
)

// keyState is one key of a view. Minutes are offsets from ledger.base, so 8 bytes do.
type keyState struct {
	lo       uint16 // exact minute, or the minute of the first send
	ack      uint16 // minute of the first acknowledgement
	hi       uint16 // latest minute an unanswered request may have been recorded at
	attempts uint8  // requests sent with the key, saturating
	flags    uint8
}

type viewRec struct {
	ad    int32
	flags viewFlags
	keys  [numKeys]keyState
}

const chunkBits = 14

// ledger is safe for concurrent use: the generator adds views and event times, workers
// record attempts and answers. One mutex: each request takes it twice, briefly.
type ledger struct {
	mu     sync.Mutex
	base   int64 // Unix minute of offset 0
	chunks [][]viewRec
	n      int64
}

func newLedger(base int64) *ledger { return &ledger{base: base} }

// minute returns the offset of t's minute, clamped into the representable range (a run is
// far shorter than the 45 days that allows).
func (l *ledger) minute(unixSec int64) uint16 {
	m := floorDiv(unixSec, 60) - l.base
	switch {
	case m < 0:
		return 0
	case m > 0xffff:
		return 0xffff
	}
	return uint16(m)
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

func (l *ledger) rec(v int64) *viewRec { return &l.chunks[v>>chunkBits][v&(1<<chunkBits-1)] }

func (l *ledger) addView(ad int32, f viewFlags) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n>>chunkBits == int64(len(l.chunks)) {
		l.chunks = append(l.chunks, make([]viewRec, 1<<chunkBits))
	}
	v := l.n
	l.n++
	*l.rec(v) = viewRec{ad: ad, flags: f}
	return v
}

// setEventTime records the event_time of a key's line, before the line is sent.
func (l *ledger) setEventTime(v int64, k uint8, unixSec int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ks := &l.rec(v).keys[k]
	ks.lo = l.minute(unixSec)
	ks.flags |= ksExact
}

// Line states at send time, for checking the server's accepted/duplicates answer.
const (
	lineFresh   uint8 = iota // never sent before
	linePending              // sent before, not acknowledged yet
	lineAcked                // acknowledged before
)

// begin records that a request carrying refs is being sent at send, and fills before with
// the state of each key just before.
func (l *ledger) begin(refs []lineRef, send time.Time, before []uint8) {
	m := l.minute(send.Unix())
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, r := range refs {
		ks := &l.rec(r.view).keys[r.key]
		switch {
		case ks.flags&ksAcked != 0:
			before[i] = lineAcked
		case ks.flags&ksSent != 0:
			before[i] = linePending
		default:
			before[i] = lineFresh
		}
		if ks.flags&ksExact == 0 && (ks.flags&ksSent == 0 || m < ks.lo) {
			ks.lo = m
		}
		ks.flags |= ksSent
		if ks.attempts < 0xff {
			ks.attempts++
		}
	}
}

type outcome uint8

const (
	outNotRecorded outcome = iota // a 4xx: the contract says nothing was accepted
	outAcked                      // 2xx or 302
	outUnknown                    // no answer or 5xx: it may have been recorded
)

// finish records the outcome of a request begun with refs. rejected reports lines of an
// acknowledged batch that the server rejected (nil: none). For an acknowledged batch it
// returns how many lines must have been accepted (fresh at send and sent by nobody else
// since) and how many must have been duplicates (acknowledged before the send).
func (l *ledger) finish(refs []lineRef, before []uint8, out outcome, at time.Time, rejected func(i int) bool) (mustAccept, mustDup int) {
	m := l.minute(at.Unix())
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, r := range refs {
		if rejected != nil && rejected(i) {
			continue
		}
		ks := &l.rec(r.view).keys[r.key]
		switch out {
		case outAcked:
			if before[i] == lineFresh && ks.attempts == 1 {
				mustAccept++
			}
			if before[i] == lineAcked {
				mustDup++
			}
			if ks.flags&ksAcked == 0 {
				ks.flags |= ksAcked
				ks.ack = m
			}
		case outUnknown:
			if ks.flags&ksMaybe == 0 || m > ks.hi {
				ks.hi = m
			}
			ks.flags |= ksMaybe
		}
	}
	return mustAccept, mustDup
}

// Metric is a counter of GET /metrics that the checker compares.
type Metric uint8

// Compared metrics.
const (
	MetricImpressions Metric = iota
	MetricClicks
	MetricInvalidClicks
	MetricAddToCart
	MetricOrder
	numMetrics
)

var metricNames = [numMetrics]string{"impressions", "clicks", "invalid_clicks", "add_to_cart", "order"}

func (m Metric) String() string { return metricNames[m] }

// metricOf is the metric key k of a view with flags f counts in, or -1 when it counts in
// none (a bot's impression: the server keeps no counter of invalid impressions).
func metricOf(f viewFlags, k uint8) int {
	switch k {
	case keyImp:
		if f&vfBot != 0 {
			return -1
		}
		return int(MetricImpressions)
	case keyClick:
		if f&(vfBot|vfExpired) != 0 {
			return int(MetricInvalidClicks)
		}
		return int(MetricClicks)
	case keyCart:
		return int(MetricAddToCart)
	}
	return int(MetricOrder)
}

// keyWindow is where one key may count: at ad, in minutes [lo, hi] (absolute Unix minutes),
// definitely (acknowledged) or possibly.
type keyWindow struct {
	ad       int32
	metric   Metric
	lo, hi   int64
	definite bool
}

// each calls fn for every key that was acknowledged or may have been recorded, and returns
// how many bot impressions were acknowledged (they count in no metric).
func (l *ledger) each(fn func(keyWindow)) (botImpressions int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for v := int64(0); v < l.n; v++ {
		rec := l.rec(v)
		for k := range rec.keys {
			ks := &rec.keys[k]
			if ks.flags&(ksAcked|ksMaybe) == 0 {
				continue
			}
			m := metricOf(rec.flags, uint8(k))
			if m < 0 {
				if ks.flags&ksAcked != 0 {
					botImpressions++
				}
				continue
			}
			w := keyWindow{ad: rec.ad, metric: Metric(m), definite: ks.flags&ksAcked != 0}
			switch {
			case ks.flags&ksExact != 0:
				w.lo, w.hi = int64(ks.lo), int64(ks.lo)
			case w.definite:
				w.lo, w.hi = int64(ks.lo), int64(ks.ack)
			default:
				w.lo, w.hi = int64(ks.lo), int64(ks.hi)
			}
			if w.hi < w.lo { // clock steps backwards; keep the window well formed
				w.lo, w.hi = w.hi, w.lo
			}
			w.lo += l.base
			w.hi += l.base
			fn(w)
		}
	}
	return botImpressions
}
