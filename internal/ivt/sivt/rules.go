package sivt

import (
	"net/netip"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/cespare/xxhash/v2"
)

// Rules are the thresholds of the behavioural rules. A zero limit turns its rule off.
type Rules struct {
	// FloodWindow is the window of the three flood rules (default 1 minute).
	FloodWindow time.Duration
	// MaxClicksPerUser, MaxClicksPerIP and MaxClicksPerDevice are the most clicks one user id,
	// source address or device may make within FloodWindow (defaults 10, 30 and 10: an
	// address is shared by a household or an office, a user and a device are one person).
	MaxClicksPerUser, MaxClicksPerIP, MaxClicksPerDevice int
	// ImpressionWindow is how long an impression is remembered for the no-impression and
	// too-fast rules (default 10 minutes), and how recently an ad must have had an impression
	// for its impressions to count as tracked.
	ImpressionWindow time.Duration
	// NoImpression turns on the no-impression rule (default on through DefaultRules).
	NoImpression bool
	// MinClickDelay is the shortest time from an impression to its click a person needs
	// (default 1s); a faster click is too_fast.
	MinClickDelay time.Duration
	// ManyAdsWindow and MaxAdsPerSource: one source (its user id, else its address) clicking
	// more than MaxAdsPerSource distinct ads within ManyAdsWindow is many_ads (defaults 20 ads
	// in 10 minutes).
	ManyAdsWindow   time.Duration
	MaxAdsPerSource int
}

// DefaultRules are the thresholds adpulse serve starts with.
func DefaultRules() Rules {
	return Rules{
		FloodWindow: time.Minute, MaxClicksPerUser: 10, MaxClicksPerIP: 30, MaxClicksPerDevice: 10,
		ImpressionWindow: 10 * time.Minute, NoImpression: true, MinClickDelay: time.Second,
		ManyAdsWindow: 10 * time.Minute, MaxAdsPerSource: 20,
	}
}

// span is the longest window of any rule: how far back a restarted stage must replay.
func (r *Rules) span() time.Duration {
	return max(r.FloodWindow, r.ImpressionWindow, r.ManyAdsWindow)
}

// Evidence is why a rule fired, as GET /api/v1/clicks/{id} shows it.
type Evidence struct {
	// Source is what the rule counted by: "user_id=u1", "ip=203.0.113.9", "device_id=...".
	Source string `json:"source,omitempty"`
	// Window, Limit and Count: Count clicks (or distinct ads, for many_ads) within Window,
	// more than Limit. Count is exact up to 4×Limit; a count of 4×Limit means at least that
	// many (the rules keep no more of one source: see the package's Memory).
	Window string `json:"window,omitempty"`
	Limit  int    `json:"limit,omitempty"`
	Count  int    `json:"count,omitempty"`
	// FirstClickTime is the receive time of the oldest click counted (when Count is 4×Limit,
	// the oldest of the 4×Limit newest clicks).
	FirstClickTime string `json:"first_click_time,omitempty"`
	// ImpressionTime and DelayMillis: the click's impression and how long after it the click
	// came (too_fast).
	ImpressionTime string `json:"impression_time,omitempty"`
	DelayMillis    *int64 `json:"delay_ms,omitempty"`
	// LastAdImpressionTime: the ad's latest impression before the click, which shows that
	// its impressions are tracked (no_impression).
	LastAdImpressionTime string `json:"last_ad_impression_time,omitempty"`
}

// Verdict is the decision of a rule on one click.
type Verdict struct {
	ClickKey string       // the click's idempotency key (event.Key)
	Reason   event.Reason // the rule
	// Late: the click looked valid when it was processed, and a later click of the same
	// source made the rule fire; TriggeredBy names that click (its id as the API shows it).
	Late        bool
	TriggeredBy string
	// DecidedAt is the receive time (micros) of the click whose processing fired the rule:
	// a function of the log, so a replay decides the same.
	DecidedAt int64
	Evidence  Evidence
	Click     *click
}

// keepPerLimit bounds what one source's window holds: the newest keepPerLimit*limit receive
// times (and, for many_ads, distinct ads). A rule only asks whether more than limit are in
// its window, so counts up to the bound are exact and a bigger one is reported as the bound.
const keepPerLimit = 4

type impression struct{ time, recv int64 }

// state is everything the rules remember. It is a function of the set of events held (those
// received within the longest window of the latest one), not of the order they arrived in,
// so a stage rebuilt from the log holds the same state as one that never stopped.
type state struct {
	r       Rules
	maxRecv int64

	// floods (by user, address, device) and sources (many_ads, by user else address) are
	// keyed by sourceHash of the source. Two sources of one rule colliding in 64 bits (about
	// n²/2⁶⁵: 3·10⁻¹⁰ for 10⁵ sources) would share a window; the hash is fixed, so that is
	// the same on every replay. Evidence names the source from the click, not from the key.
	floods  [3]map[uint64]*window
	sources map[uint64]*adsWindow
	// slab holds the clicks without a verdict the windows reference; compacted when at least
	// half of it is records no window holds any more (checked at each sweep of the floods).
	slab clickSlab
	// refs and ads intern the ads of held clicks and of the many_ads windows (bounded by the
	// ads, rebuilt by compact).
	refs    interner[adRef]
	ads     interner[string]
	imps    map[uint64]impression // by hash of impression id
	impFIFO []impFIFOEntry
	adLast  map[string]int64 // ad -> receive time of its latest impression
	// held: hash of click key -> latest receive time, so a click reaching the log twice
	// counts once. Two keys of one span colliding in 64 bits (about n²/2⁶⁵: 4·10⁻⁶ for the
	// 12 million keys of 20 minutes at 10,000 clicks/s) would make the later click a repeat:
	// not judged, the same on every replay.
	held map[uint64]int64
	// floodSwept and swept are maxRecv at the last sweep of the flood windows and of the rest.
	floodSwept, swept int64
	counted           heldSizes // as of the last sweep of the flood windows
}

type impFIFOEntry struct {
	h    uint64
	recv int64
}

func newState(r Rules) *state {
	s := &state{r: r, sources: map[uint64]*adsWindow{},
		imps: map[uint64]impression{}, adLast: map[string]int64{}, held: map[uint64]int64{}}
	for i := range s.floods {
		s.floods[i] = map[uint64]*window{}
	}
	return s
}

var floodReasons = [3]event.Reason{event.ReasonFloodUser, event.ReasonFloodIP, event.ReasonFloodDevice}
var floodFields = [3]string{"user_id=", "ip=", "device_id="}

func (s *state) floodLimit(i int) int {
	return [3]int{s.r.MaxClicksPerUser, s.r.MaxClicksPerIP, s.r.MaxClicksPerDevice}[i]
}

func (s *state) advance(recv int64) {
	if recv > s.maxRecv {
		s.maxRecv = recv
	}
	// Impressions leave in FIFO order; lookups check the time, so stragglers do no harm.
	cut := s.maxRecv - s.r.ImpressionWindow.Microseconds()
	n := 0
	for n < len(s.impFIFO) && s.impFIFO[n].recv <= cut {
		e := s.impFIFO[n]
		if im, ok := s.imps[e.h]; ok && im.recv == e.recv {
			delete(s.imps, e.h)
		}
		n++
	}
	if n > 0 {
		s.impFIFO = append(s.impFIFO[:0], s.impFIFO[n:]...)
	}
	if s.maxRecv-s.floodSwept > s.r.FloodWindow.Microseconds() {
		s.sweepFloods()
	}
	if s.maxRecv-s.swept > s.r.span().Microseconds() {
		s.sweep()
	}
}

// sweepFloods drops what the flood windows hold from before their window. The flood window
// is the shortest, so it is swept more often than the rest.
func (s *state) sweepFloods() {
	s.floodSwept = s.maxRecv
	fc := s.maxRecv - s.r.FloodWindow.Microseconds()
	for i := range s.floods {
		for k, w := range s.floods[i] {
			if w.prune(fc, s.slab.recs); w.empty() {
				delete(s.floods[i], k)
			}
		}
	}
	s.countWindows()
	if len(s.slab.recs) > 1024 && len(s.slab.recs) > 2*s.live() {
		s.compact()
	}
}

// live counts the records some window holds.
func (s *state) live() int {
	seen := make([]bool, len(s.slab.recs))
	n := 0
	s.eachWindow(func(w *window) {
		for k := range w.pendingLen() {
			if i := w.pendingAt(k); !seen[i] {
				seen[i] = true
				n++
			}
		}
	})
	return n
}

// sweep drops windows and ads whose every entry is older than their window: memory only,
// since every decision checks times.
func (s *state) sweep() {
	s.swept = s.maxRecv
	s.sweepFloods()
	mc := s.maxRecv - s.r.ManyAdsWindow.Microseconds()
	for k, w := range s.sources {
		if w.prune(mc, s.slab.recs); w.empty() {
			delete(s.sources, k)
		}
	}
	hc := s.maxRecv - s.r.span().Microseconds()
	for k, recv := range s.held {
		if recv <= hc {
			delete(s.held, k)
		}
	}
	ic := s.maxRecv - s.r.ImpressionWindow.Microseconds()
	for ad, t := range s.adLast {
		if t <= ic {
			delete(s.adLast, ad)
		}
	}
	// Drop the records and interned ads no window holds any more.
	s.compact()
}

// sourceHash is the key of a source's window (see state.floods).
func sourceHash(src string) uint64 { return xxhash.Sum64String(src) }

// repeat records an occurrence of click key and reports whether an earlier one was received
// within the rules' span before it. Like dedup.Window, it does not chain on decisions: a
// rebuild that sees the occurrences of the span before its first event decides the same.
func (s *state) repeat(key string, recv int64) bool {
	h := hashKey(key)
	last, ok := s.held[h]
	if recv > last {
		s.held[h] = recv
	}
	return ok && recv-last <= s.r.span().Microseconds() && recv >= last-s.r.span().Microseconds()
}

// seen records an occurrence of click key without judging anything: what a rebuild feeds
// from before the rules' span, so that repeat decides as it did.
func (s *state) seen(ev *event.Event) {
	s.advance(ev.RecvTime)
	s.repeat(ev.Key(), ev.RecvTime)
}

// impression records a valid impression.
func (s *state) impression(ev *event.Event) {
	s.advance(ev.RecvTime)
	if ev.ImpressionID == "" {
		return
	}
	h := xxhash.Sum64String(ev.ImpressionID)
	if old, ok := s.imps[h]; !ok || ev.RecvTime > old.recv {
		s.imps[h] = impression{ev.Time, ev.RecvTime}
		s.impFIFO = append(s.impFIFO, impFIFOEntry{h, ev.RecvTime})
	}
	if ev.RecvTime > s.adLast[ev.AdID] {
		s.adLast[ev.AdID] = ev.RecvTime
	}
}

// click decides a valid click and records it. flagged says whether the click already has a
// verdict (a rebuild feeds clicks decided before); decide false only records it. It returns
// the verdicts: the click's own and those of earlier clicks a flood or many_ads made invalid.
func (s *state) click(ev *event.Event, flagged, decide bool) []Verdict {
	s.advance(ev.RecvTime)
	key := ev.Key()
	if s.repeat(key, ev.RecvTime) {
		// The same click again (the duplicate filter is off or forgot it): it was counted
		// and judged once already.
		return nil
	}
	ref := adRef{ev.AdID, ev.CampaignID, ev.AdvertiserID}
	c := &click{key: key, ad: ref, time: ev.Time, recv: ev.RecvTime}
	var out []Verdict
	own := func(v Verdict) {
		if !flagged && decide {
			flagged = true
			v.ClickKey, v.Click, v.DecidedAt = c.key, c, c.recv
			out = append(out, v)
		}
	}
	// late flags the pending clicks of w a rule just fired on. The click itself is in no
	// window yet.
	late := func(w *window, cutoff int64, reason event.Reason, evd Evidence) {
		if !decide {
			return
		}
		for k := range w.pendingLen() {
			o := w.pendingAt(k)
			if r := &s.slab.recs[o]; r.recv > cutoff && !r.flagged() {
				r.setFlagged()
				out = append(out, Verdict{ClickKey: s.slab.key(o), Reason: reason, Late: true, TriggeredBy: c.id(), DecidedAt: c.recv, Evidence: evd, Click: s.verdictClick(o)})
			}
		}
	}
	// Windows hold the click itself only while it has no verdict: they get it at the end.
	var touched [4]*window

	// Floods: the click's own verdict comes from the first rule that fires, in the order
	// user, address, device; every rule that fires still flags its earlier clicks.
	fcut := s.maxRecv - s.r.FloodWindow.Microseconds()
	ip := ev.SourceIP
	if !Countable(ip) {
		ip = ""
	}
	for i, by := range [3]string{ev.UserID, ip, ev.DeviceID} {
		limit := s.floodLimit(i)
		if by == "" || limit <= 0 {
			continue
		}
		h := sourceHash(by)
		w := s.floods[i][h]
		if w == nil {
			w = &window{}
			s.floods[i][h] = w
		}
		w.prune(fcut, s.slab.recs)
		w.addTime(c.recv, keepPerLimit*limit)
		touched[i] = w
		if n, first := w.count(fcut, c.recv); n > limit {
			evd := Evidence{Source: floodFields[i] + by, Window: s.r.FloodWindow.String(), Limit: limit, Count: n,
				FirstClickTime: micros(first)}
			own(Verdict{Reason: floodReasons[i], Evidence: evd})
			late(w, fcut, floodReasons[i], evd)
		}
	}

	// Impressions: too fast after its impression, or none where the ad's are tracked.
	icut := s.maxRecv - s.r.ImpressionWindow.Microseconds()
	im, hasImp := impression{}, false
	if ev.ImpressionID != "" {
		im, hasImp = s.imps[xxhash.Sum64String(ev.ImpressionID)]
		hasImp = hasImp && im.recv > icut
	}
	if hasImp {
		if delay := ev.Time - im.time; s.r.MinClickDelay > 0 && delay < s.r.MinClickDelay.Microseconds() {
			ms := delay / 1000
			own(Verdict{Reason: event.ReasonTooFast, Evidence: Evidence{ImpressionTime: micros(im.time), DelayMillis: &ms,
				Limit: int(s.r.MinClickDelay.Milliseconds())}})
		}
	} else if last, tracked := s.adLast[ev.AdID]; s.r.NoImpression && tracked && last > icut {
		own(Verdict{Reason: event.ReasonNoImpression, Evidence: Evidence{LastAdImpressionTime: micros(last), Window: s.r.ImpressionWindow.String()}})
	}

	src := ev.UserID
	field := "user_id="
	if src == "" {
		src, field = ip, "ip="
	}
	if src != "" && s.r.MaxAdsPerSource > 0 {
		mcut := s.maxRecv - s.r.ManyAdsWindow.Microseconds()
		h := sourceHash(src)
		w := s.sources[h]
		if w == nil {
			w = &adsWindow{}
			s.sources[h] = w
		}
		w.prune(mcut, s.slab.recs)
		keep := keepPerLimit * s.r.MaxAdsPerSource
		w.addTime(c.recv, keep)
		w.addAd(s.ads.id(ev.AdID), c.recv, keep, s.ads.vals)
		touched[3] = &w.window
		if ads := w.distinctAds(mcut); ads > s.r.MaxAdsPerSource {
			_, first := w.count(mcut, c.recv)
			evd := Evidence{Source: field + src, Window: s.r.ManyAdsWindow.String(), Limit: s.r.MaxAdsPerSource,
				Count: ads, FirstClickTime: micros(first)}
			own(Verdict{Reason: event.ReasonManyAds, Evidence: evd})
			late(&w.window, mcut, event.ReasonManyAds, evd)
		}
	}
	if !flagged {
		// An unflagged click waits in its windows for a later click.
		var i uint32
		held := false
		for _, w := range touched {
			if w != nil {
				if !held {
					i, held = s.slab.add([]byte(key), c.time, c.recv, s.refs.id(ref)), true
				}
				w.appendPending(i)
			}
		}
	}
	return out
}

// cgnat is the carriers' shared address space (RFC 6598): thousands of phones behind each.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// Countable reports whether clicks may be counted per address: a public unicast address.
// Private, loopback, link-local and carrier-shared addresses are many people at once (or
// every client, behind a proxy adpulse was not told to trust), so the address rules skip them.
func Countable(ip string) bool {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	a = a.Unmap()
	return a.IsGlobalUnicast() && !a.IsPrivate() && !cgnat.Contains(a)
}

func micros(t int64) string { return time.UnixMicro(t).UTC().Format(time.RFC3339Nano) }

// sizes reports how much the state holds, for Stats: the windows' contents as of the last
// sweep of the flood windows (counting them is a walk over every window), the rest now.
func (s *state) sizes() heldSizes {
	z := s.counted
	z.sources = len(s.floods[0]) + len(s.floods[1]) + len(s.floods[2]) + len(s.sources)
	z.keys, z.impressions = len(s.held), len(s.imps)
	return z
}

// countWindows counts the windows' contents for sizes.
func (s *state) countWindows() {
	var z heldSizes
	count := func(w *window) {
		z.times += int(w.nt)
		z.pending += int(w.np)
	}
	for i := range s.floods {
		for _, w := range s.floods[i] {
			count(w)
		}
	}
	for _, w := range s.sources {
		count(&w.window)
		z.ads += w.adsLen()
	}
	s.counted = z
}

// heldSizes is what the rules hold: windows (one per source and rule), the receive times and
// distinct ads they count, their references to clicks without a verdict (kept for late
// verdicts; a click is in up to four windows), the click keys of the duplicate check, and
// impressions.
type heldSizes struct {
	sources, times, ads, pending, keys, impressions int
}
