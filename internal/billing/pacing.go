package billing

import (
	"encoding/binary"
	"fmt"
	"math"
	"sync"
	"time"
)

// Pacing is probabilistic throttling: the feed gives each active campaign with a daily budget
// a pacing p in (0, 1], the share of eligible requests its ad servers should bid on, chosen so
// that the budget lasts the advertiser's whole local day along the day's traffic shape rather
// than running out in the morning.
//
// The method follows the adaptive throttling of Agarwal, Ghosh, Wei and Yu, "Budget Pacing for
// Targeted Online Advertisements at LinkedIn" (KDD 2014), with the traffic-shaped target of
// Lee, Jalali and Dasdan, "Real Time Bid Optimization with Smooth Budget Delivery in Online
// Advertising" (ADKDD 2013):
//
//  1. Traffic profile. The share of a day's traffic in each local quarter hour (96 slots) is
//     learned from the valid impressions and clicks the charger consumes, each at its
//     advertiser's local time of day, with counts decayed by 0.7 a day, smoothed over
//     neighbouring slots, and blended with a default diurnal curve (night trough, evening
//     peak) in proportion to how much history there is (half-half at 2000 events). Only
//     whole UTC days are learned from (seen from their first two hours to their end), so the
//     curve changes once a UTC day. A floor keeps every slot above zero.
//  2. Target. For a campaign with daily budget B on a budget day that runs from m0 to m1 (23,
//     24 or 25 hours, or a part of a local day where a time zone change starts it), share(t) is the profile's cumulative share of the day at t, computed
//     on the real quarter hours of that day, so it reaches 1 exactly at the next local
//     midnight across a DST change. The target spend at t is B × share(t).
//  3. Demand. Every PacingInterval the controller observes the campaign's spend ΔS over the
//     last step, during which it had pacing p and the day's share grew by Δshare, and
//     estimates its unthrottled demand for a whole day as spend over exposure,
//     ΣΔS / Σ(p·Δshare), with both sums forgotten by e per 5% of a day of exposure (so the
//     window holds about the same information at any pacing). The estimate carries over to
//     the next day.
//  4. Control. p = (B × share(t+h) − S) / (D × (share(t+h) − share(t))), clamped to
//     [MinPacing, 1]: the share of the demand expected over the next horizon h (PacingHorizon,
//     1 hour; capped at the day's end) that brings actual spend S back onto the target curve
//     by t+h. Ahead of target it throttles, behind it opens up, and near midnight it spends
//     what is left. Without an estimate yet (new campaign, first minutes) p is 1.
//
// The budget cap, not pacing, is what guarantees a budget is never exceeded; pacing only
// spreads the spend. State is in memory: after a restart the estimate is rebuilt within a few
// steps from the day's spend so far.

const (
	slots         = 96 // quarter hours of a 24-hour day
	quarter       = 15 * time.Minute
	profileDecay  = 0.7    // per day
	profilePrior  = 2000.0 // events of history at which the learned profile weighs half
	profileFloor  = 0.03   // share of the curve spread evenly, so no slot is ever zero
	demandTau     = 0.05   // forgetting scale of the demand estimate, in shares of a day
	demandMinData = 0.01   // exposure (unthrottled share of a day) observed before the estimate is trusted
)

// defaultHourly is the default local traffic shape: a typical consumer-web diurnal curve,
// lowest around 4:00, rising through the morning and peaking in the evening.
var defaultHourly = [24]float64{
	2.5, 1.6, 1.1, 0.8, 0.7, 0.9, 1.6, 2.8, 3.8, 4.5, 4.9, 5.1,
	5.3, 5.2, 5.0, 4.9, 4.9, 5.1, 5.5, 6.0, 6.4, 6.1, 5.0, 3.8,
}

// curve is the share of a day's traffic in each local quarter-hour slot; it sums to 1.
type curve [slots]float64

func slotOf(local time.Time) int { return local.Hour()*4 + local.Minute()/15 }

// defaultCurve interpolates defaultHourly linearly between hour centres.
func defaultCurve() curve {
	var c curve
	sum := 0.0
	for s := range c {
		x := (float64(s)+0.5)/4 - 0.5 // position in hours from the first hour's centre
		i0 := int(math.Floor(x))
		f := x - float64(i0)
		c[s] = defaultHourly[(i0+24)%24]*(1-f) + defaultHourly[(i0+1)%24]*f
		sum += c[s]
	}
	for s := range c {
		c[s] /= sum
	}
	return c
}

// trafficProfile is the learned traffic: event counts per local quarter-hour slot, of the
// current UTC day and of the completed days before it (decayed). Only completed days shape the
// curve: a UTC day covers every local slot of every time zone once, while a partial day would
// make the slots seen so far look busier than the rest.
type trafficProfile struct {
	Day   uint32 // the current UTC day
	First int64  // seconds into Day of its earliest event
	Today [slots]float64
	Hist  [slots]float64 // completed days, decayed to the day before Day
}

// profileWholeDay: a UTC day whose first event came later than this into the day was not seen
// from its start (the process started, or came back, that day) and is not learned from.
const profileWholeDay = 2 * 60 * 60

// observe counts an event at secs seconds into UTC day day, in local slot slot.
func (p *trafficProfile) observe(day uint32, secs int64, slot int) {
	switch {
	case day > p.Day:
		fh := math.Pow(profileDecay, float64(day-p.Day))
		ft := math.Pow(profileDecay, float64(day-p.Day-1))
		whole := p.First <= profileWholeDay
		for i := range p.Hist {
			if whole {
				p.Hist[i] = p.Hist[i]*fh + p.Today[i]*ft
			} else {
				p.Hist[i] *= fh
			}
			p.Today[i] = 0
		}
		p.Day, p.First = day, secs
		p.Today[slot]++
	case day == p.Day:
		p.First = min(p.First, secs)
		p.Today[slot]++
	default: // a late event of a completed day
		p.Hist[slot] += math.Pow(profileDecay, float64(p.Day-day-1))
	}
}

// curve blends the smoothed learned shape with the default one by the amount of history.
func (p *trafficProfile) curve() *curve {
	def := defaultCurve()
	n := 0.0
	for _, v := range p.Hist {
		n += v
	}
	var out curve
	lambda := n / (n + profilePrior)
	kernel := [...]float64{1, 2, 3, 2, 1}
	sum := 0.0
	for s := range out {
		learned := 0.0
		if n > 0 {
			for k, wt := range kernel {
				learned += wt * p.Hist[(s+k-2+slots)%slots]
			}
			learned /= 9 * n
		}
		v := lambda*learned + (1-lambda)*def[s]
		out[s] = (1-profileFloor)*v + profileFloor/slots
		sum += out[s]
	}
	for s := range out {
		out[s] /= sum
	}
	return &out
}

func (p *trafficProfile) encode() []byte {
	b := binary.AppendUvarint(nil, uint64(p.Day))
	b = binary.AppendVarint(b, p.First)
	for _, a := range [...]*[slots]float64{&p.Today, &p.Hist} {
		for _, v := range a {
			b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
		}
	}
	return b
}

func (p *trafficProfile) decode(v []byte) error {
	d, k := binary.Uvarint(v)
	if k <= 0 || d > math.MaxUint32 {
		return fmt.Errorf("%w: traffic profile", errCorrupt)
	}
	v = v[k:]
	first, k := binary.Varint(v)
	if k <= 0 || len(v)-k != 2*slots*8 {
		return fmt.Errorf("%w: traffic profile", errCorrupt)
	}
	p.Day, p.First = uint32(d), first
	v = v[k:]
	for j, a := range [...]*[slots]float64{&p.Today, &p.Hist} {
		for i := range a {
			a[i] = math.Float64frombits(binary.LittleEndian.Uint64(v[8*(j*slots+i):]))
			if math.IsNaN(a[i]) || math.IsInf(a[i], 0) || a[i] < 0 {
				return fmt.Errorf("%w: traffic profile", errCorrupt)
			}
		}
	}
	return nil
}

// startOfDay returns the first instant of t's local date in loc. time.Date is not enough on
// its own: where a DST change skips or repeats midnight, it may pick an instant that is not
// the day's first.
func startOfDay(t time.Time, loc *time.Location) time.Time {
	y, m, d := t.In(loc).Date()
	s := time.Date(y, m, d, 0, 0, 0, 0, loc)
	same := func(u time.Time) bool {
		uy, um, ud := u.In(loc).Date()
		return uy == y && um == m && ud == d
	}
	for i := 0; i < 8 && !same(s); i++ { // midnight was skipped: the day starts later
		s = s.Add(quarter)
	}
	for i := 0; i < 8 && same(s.Add(-quarter)); i++ { // midnight repeated: take the first
		s = s.Add(-quarter)
	}
	return s
}

// dayCurve is a traffic curve laid over one real local day.
type dayCurve struct {
	m0, m1 time.Time
	cum    []float64 // cum[k]: share of the day before quarter k; cum[len-1] == 1
}

// newDayCurve lays c over the budget day [m0, m1) in loc: a local day, or a shorter one
// where a time zone change starts or ends it.
func newDayCurve(c *curve, m0, m1 time.Time, loc *time.Location) *dayCurve {
	n := int((m1.Sub(m0) + quarter - 1) / quarter)
	dc := &dayCurve{m0: m0, m1: m1, cum: make([]float64, n+1)}
	for k := range n {
		start := m0.Add(time.Duration(k) * quarter)
		length := min(quarter, m1.Sub(start))
		dc.cum[k+1] = dc.cum[k] + c[slotOf(start.In(loc))]*float64(length)/float64(quarter)
	}
	total := dc.cum[n]
	for k := range dc.cum {
		dc.cum[k] /= total
	}
	dc.cum[n] = 1
	return dc
}

// share is the cumulative traffic share of the day at t.
func (dc *dayCurve) share(t time.Time) float64 {
	if !t.After(dc.m0) {
		return 0
	}
	if !t.Before(dc.m1) {
		return 1
	}
	k := int(t.Sub(dc.m0) / quarter)
	start := dc.m0.Add(time.Duration(k) * quarter)
	length := min(quarter, dc.m1.Sub(start))
	f := float64(t.Sub(start)) / float64(length)
	return dc.cum[k] + f*(dc.cum[k+1]-dc.cum[k])
}

// paceState is the controller's memory of one campaign.
type paceState struct {
	day       time.Time // local midnight of the day lastSpent is about
	last      time.Time // last step
	lastSpent int64
	lastShare float64
	p         float64
	num, den  float64 // forgotten sums of ΔS and p·Δshare
}

type dayCurveKey struct {
	loc     string
	m0, m1  int64
	version uint64
}

// pacer holds the pacing controller's state. Its methods are safe for concurrent use.
type pacer struct {
	interval, horizon time.Duration
	minP              float64

	mu      sync.Mutex // guards everything below
	curve   *curve
	version uint64
	days    map[dayCurveKey]*dayCurve
	states  map[string]*paceState
}

func newPacer(interval, horizon time.Duration, minP float64) *pacer {
	def := defaultCurve()
	return &pacer{interval: interval, horizon: horizon, minP: minP, curve: &def,
		days: make(map[dayCurveKey]*dayCurve), states: make(map[string]*paceState)}
}

func (pc *pacer) setCurve(c *curve) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pc.curve = c
	pc.version++
	clear(pc.days)
}

func (pc *pacer) dayCurveLocked(day budgetDay) *dayCurve {
	k := dayCurveKey{day.Loc.String(), day.Start.Unix(), day.End.Unix(), pc.version}
	if dc, ok := pc.days[k]; ok {
		return dc
	}
	if len(pc.days) > 4096 {
		clear(pc.days)
	}
	dc := newDayCurve(pc.curve, day.Start, day.End, day.Loc)
	pc.days[k] = dc
	return dc
}

// pacing steps campaign id's controller if a step is due and returns its pacing. day is the
// budget day that contains now, budget the day's effective budget (0: none, pacing 1) and
// spent what the campaign spent so far on it.
func (pc *pacer) pacing(id string, now time.Time, day budgetDay, budget, spent int64) float64 {
	if budget <= 0 {
		return 1
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	dc := pc.dayCurveLocked(day)
	sh := dc.share(now)
	st := pc.states[id]
	if len(pc.states) > 1<<20 {
		pc.pruneLocked(now)
	}
	switch {
	case st == nil:
		st = &paceState{p: 1}
		pc.states[id] = st
		if spent > 0 && sh >= demandMinData {
			// First sight mid-day (a restart): assume the day so far ran unthrottled. That
			// underestimates demand if it was throttled, which the next steps correct.
			// (Without a restart the state already exists: a campaign is seen at 0 spend.)
			st.num, st.den = float64(spent), sh
		}
	case !st.day.Equal(dc.m0) || now.Sub(st.last) > 3*pc.interval || now.Before(st.last) || spent < st.lastSpent:
		// A new day, a gap (the campaign was out of the feed) or a refund: no clean sample.
	case now.Sub(st.last) < pc.interval:
		return st.p
	default:
		if dSh := sh - st.lastShare; dSh > 0 {
			// Spend over exposure (the Poisson rate estimate with exposure p·Δshare), not the
			// mean of ΔS/p: at a low pacing one click would otherwise swing it wildly.
			// Forgetting by exposure keeps about demandTau of it in the window at any pacing.
			exposure := st.p * dSh
			f := math.Exp(-exposure / demandTau)
			st.num = st.num*f + float64(spent-st.lastSpent)
			st.den = st.den*f + exposure
		}
	}
	st.day, st.last, st.lastSpent, st.lastShare = dc.m0, now, spent, sh
	st.p = pc.control(st, dc, now, budget, spent)
	return st.p
}

func (pc *pacer) control(st *paceState, dc *dayCurve, now time.Time, budget, spent int64) float64 {
	if st.den < demandMinData || st.num <= 0 {
		return 1
	}
	demand := st.num / st.den
	end := now.Add(pc.horizon)
	if end.After(dc.m1) {
		end = dc.m1
	}
	shNow, shEnd := dc.share(now), dc.share(end)
	expected := demand * (shEnd - shNow)
	if expected <= 0 {
		return 1
	}
	need := float64(budget)*shEnd - float64(spent)
	p := need / expected
	switch {
	case math.IsNaN(p) || p < pc.minP:
		return pc.minP
	case p > 1:
		return 1
	}
	return p
}

// pruneLocked forgets campaigns not stepped for two days.
func (pc *pacer) pruneLocked(now time.Time) {
	for id, st := range pc.states {
		if now.Sub(st.last) > 48*time.Hour {
			delete(pc.states, id)
		}
	}
}
