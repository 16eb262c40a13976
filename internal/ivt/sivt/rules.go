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
	// more than Limit.
	Window string `json:"window,omitempty"`
	Limit  int    `json:"limit,omitempty"`
	Count  int    `json:"count,omitempty"`
	// FirstClickTime is the receive time of the oldest click counted.
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

// click is a valid click held by the rules' windows.
type click struct {
	key, id                  string // idempotency key; id as the API shows it (impression id or event_id)
	ad, campaign, advertiser string
	time, recv               int64
	flagged                  bool
}

// clickID is the id GET /api/v1/clicks/{id} takes for a click key ("c:imp" or "e:event").
func clickID(key string) string { return key[min(2, len(key)):] }

// window is one source's clicks in arrival order; entries with recv <= maxRecv - span are
// dropped as it is touched.
type window struct {
	clicks []*click
	ads    map[string]int // distinct ads of clicks held (many_ads windows only)
}

func (w *window) prune(cutoff int64, countAds bool) {
	n := 0
	for n < len(w.clicks) && w.clicks[n].recv <= cutoff {
		if countAds {
			w.dropAd(w.clicks[n].ad)
		}
		n++
	}
	if n == 0 {
		return
	}
	// Receive times run slightly out of order: an older entry behind a newer one stays
	// until it reaches the front, and counting checks each entry's time itself.
	w.clicks = append(w.clicks[:0], w.clicks[n:]...)
}

func (w *window) dropAd(ad string) {
	if w.ads[ad] <= 1 {
		delete(w.ads, ad)
	} else {
		w.ads[ad]--
	}
}

type impression struct{ time, recv int64 }

// state is everything the rules remember. It is a function of the set of events held (those
// received within the longest window of the latest one), not of the order they arrived in,
// so a stage rebuilt from the log holds the same state as one that never stopped.
type state struct {
	r       Rules
	maxRecv int64

	floods  [3]map[string]*window // by user, address, device
	sources map[string]*window    // many_ads, by user else address
	imps    map[uint64]impression // by hash of impression id
	impFIFO []impFIFOEntry
	adLast  map[string]int64 // ad -> receive time of its latest impression
	held    map[string]int64 // click key -> latest receive time, so a click reaching the log twice counts once
	swept   int64            // maxRecv at the last sweep of empty windows
}

type impFIFOEntry struct {
	h    uint64
	recv int64
}

func newState(r Rules) *state {
	s := &state{r: r, sources: map[string]*window{}, imps: map[uint64]impression{}, adLast: map[string]int64{}, held: map[string]int64{}}
	for i := range s.floods {
		s.floods[i] = map[string]*window{}
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
	if s.maxRecv-s.swept > s.r.span().Microseconds() {
		s.sweep()
	}
}

// sweep drops windows and ads whose every entry is older than their window: memory only,
// since every decision checks times.
func (s *state) sweep() {
	s.swept = s.maxRecv
	fc := s.maxRecv - s.r.FloodWindow.Microseconds()
	for i := range s.floods {
		for k, w := range s.floods[i] {
			if w.prune(fc, false); len(w.clicks) == 0 {
				delete(s.floods[i], k)
			}
		}
	}
	mc := s.maxRecv - s.r.ManyAdsWindow.Microseconds()
	for k, w := range s.sources {
		if w.prune(mc, true); len(w.clicks) == 0 {
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
}

// repeat records an occurrence of click key and reports whether an earlier one was received
// within the rules' span before it. Like dedup.Window, it does not chain on decisions: a
// rebuild that sees the occurrences of the span before its first event decides the same.
func (s *state) repeat(key string, recv int64) bool {
	last, ok := s.held[key]
	if recv > last {
		s.held[key] = recv
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
	c := &click{key: key, ad: ev.AdID, campaign: ev.CampaignID, advertiser: ev.AdvertiserID,
		time: ev.Time, recv: ev.RecvTime, flagged: flagged}
	c.id = clickID(c.key)
	var out []Verdict
	own := func(v Verdict) {
		if !c.flagged && decide {
			c.flagged = true
			v.ClickKey, v.Click, v.DecidedAt = c.key, c, c.recv
			out = append(out, v)
		}
	}
	// late flags the held clicks of w a rule just fired on.
	late := func(w *window, cutoff int64, reason event.Reason, ev Evidence) {
		if !decide {
			return
		}
		for _, o := range w.clicks {
			if o.recv > cutoff && !o.flagged && o != c {
				o.flagged = true
				out = append(out, Verdict{ClickKey: o.key, Reason: reason, Late: true, TriggeredBy: c.id, DecidedAt: c.recv, Evidence: ev, Click: o})
			}
		}
	}

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
		w := s.floods[i][by]
		if w == nil {
			w = &window{}
			s.floods[i][by] = w
		}
		w.prune(fcut, false)
		w.clicks = append(w.clicks, c)
		n, first := 0, c.recv
		for _, o := range w.clicks {
			if o.recv > fcut {
				n++
				first = min(first, o.recv)
			}
		}
		if n > limit {
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
		w := s.sources[src]
		if w == nil {
			w = &window{ads: map[string]int{}}
			s.sources[src] = w
		}
		w.prune(mcut, true)
		w.clicks = append(w.clicks, c)
		w.ads[c.ad]++
		if len(w.ads) > s.r.MaxAdsPerSource {
			// w.ads may still count a straggler older than the window: count exactly.
			ads := make(map[string]struct{}, len(w.ads))
			first := c.recv
			for _, o := range w.clicks {
				if o.recv > mcut {
					ads[o.ad] = struct{}{}
					first = min(first, o.recv)
				}
			}
			if len(ads) > s.r.MaxAdsPerSource {
				evd := Evidence{Source: field + src, Window: s.r.ManyAdsWindow.String(), Limit: s.r.MaxAdsPerSource,
					Count: len(ads), FirstClickTime: micros(first)}
				own(Verdict{Reason: event.ReasonManyAds, Evidence: evd})
				late(w, mcut, event.ReasonManyAds, evd)
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

// sizes reports how much the state holds, for Stats.
func (s *state) sizes() (sources, impressions int) {
	for i := range s.floods {
		sources += len(s.floods[i])
	}
	return sources + len(s.sources), len(s.imps)
}
