package sivt

import "slices"

// window is one source's recent clicks for one rule.
//
// It holds the newest receive times of the source's clicks (at most keep, ascending) and,
// for many_ads, the ads it clicked with their latest receive time (at most keep, ascending by
// time then ad). Both keep the greatest elements of the set of clicks seen, so they do not
// depend on the order the clicks came in, and they count exactly up to keep. It also holds
// the source's clicks without a verdict (pending: a late verdict may flag them); while a
// source is over its limit every click gets its verdict on arrival, so pending stays within
// about limit per window length.
//
// All three live in one pointer-free buffer, buf = times ‖ pending ‖ ads, so that a window
// is one small object and one noscan array: there are as many windows as sources, and most
// sources have a click or two.
type window struct {
	buf    []int64
	nt, np uint32 // buf[:nt] are the times, then (np+1)/2 cells of two pending record indexes each, then the ad pairs (id, last)
}

// adsWindow is a many_ads window: a window whose buffer also holds the ads its source clicked.
type adsWindow struct{ window }

type adSeen struct {
	ad   uint32 // index into state.ads.vals
	last int64
}

// before orders by time, then by the ad's id (its name, not its interned index, which
// depends on what else the state held).
func (a adSeen) before(b adSeen, names []string) bool {
	return a.last < b.last || a.last == b.last && names[a.ad] < names[b.ad]
}

func (w *window) times() []int64 { return w.buf[:w.nt] }

func (w *window) pendingLen() int { return int(w.np) }

// pendingAt returns the k-th pending record index: the low half of a cell for even k, the
// high half for odd k.
func (w *window) pendingAt(k int) uint32 {
	return uint32(uint64(w.buf[int(w.nt)+k/2]) >> (32 * (k % 2)))
}

func (w *window) setPending(k int, i uint32) {
	c := &w.buf[int(w.nt)+k/2]
	shift := 32 * (k % 2)
	*c = int64(uint64(*c)&^(0xffffffff<<shift) | uint64(i)<<shift)
}

// appendPending adds a record index to pending.
func (w *window) appendPending(i uint32) {
	if w.np%2 == 0 {
		w.buf = insert(w.buf, int(w.nt+w.np/2), int64(i))
	} else {
		w.setPending(int(w.np), i)
	}
	w.np++
}

// insert inserts v at i, growing a small buffer only to the allocator's next size class
// rather than doubling it: most windows hold a click or two and never grow again.
func insert(buf []int64, i int, v ...int64) []int64 {
	if n := len(buf) + len(v); n > cap(buf) && n <= 16 {
		nb := slices.Grow([]int64(nil), n)[:len(buf)]
		copy(nb, buf)
		buf = nb
	}
	return slices.Insert(buf, i, v...)
}

func (w *window) adsOff() int { return int(w.nt + (w.np+1)/2) }
func (w *window) adsLen() int { return (len(w.buf) - w.adsOff()) / 2 }
func (w *window) adAt(k int) adSeen {
	o := w.adsOff() + 2*k
	return adSeen{uint32(w.buf[o]), w.buf[o+1]}
}
func (w *window) setAd(k int, a adSeen) {
	o := w.adsOff() + 2*k
	w.buf[o], w.buf[o+1] = int64(a.ad), a.last
}

// addTime adds a receive time, dropping the oldest beyond keep.
func (w *window) addTime(recv int64, keep int) {
	times := w.times()
	i := len(times)
	for i > 0 && times[i-1] > recv {
		i--
	}
	if len(times) >= keep {
		if i == 0 {
			return
		}
		copy(times[:i-1], times[1:i])
		times[i-1] = recv
		return
	}
	w.buf = insert(w.buf, i, recv)
	w.nt++
}

// addAd records a click of ad at recv, keeping the keep ads clicked last.
func (w *adsWindow) addAd(ad uint32, recv int64, keep int, names []string) {
	n := w.adsLen()
	i := -1
	for k := range n {
		if w.adAt(k).ad == ad {
			i = k
			break
		}
	}
	switch {
	case i >= 0:
		if recv <= w.adAt(i).last {
			return
		}
		w.setAd(i, adSeen{ad, recv})
	case n < keep:
		w.buf = insert(w.buf, len(w.buf), int64(ad), recv)
		i = n
		n++
	default:
		a := adSeen{ad, recv}
		if !w.adAt(0).before(a, names) {
			return
		}
		w.setAd(0, a)
		i = 0
	}
	// Move the changed entry to its place: it only grew.
	for ; i+1 < n && w.adAt(i+1).before(w.adAt(i), names); i++ {
		a, b := w.adAt(i), w.adAt(i+1)
		w.setAd(i, b)
		w.setAd(i+1, a)
	}
	for ; i > 0 && w.adAt(i).before(w.adAt(i-1), names); i-- {
		a, b := w.adAt(i), w.adAt(i-1)
		w.setAd(i, b)
		w.setAd(i-1, a)
	}
}

// count returns how many held times are after cutoff and the oldest of them (or def).
func (w *window) count(cutoff, def int64) (n int, first int64) {
	times := w.times()
	i, _ := slices.BinarySearch(times, cutoff+1)
	if i < len(times) {
		def = min(def, times[i])
	}
	return len(times) - i, def
}

// distinctAds returns how many held ads were clicked after cutoff.
func (w *adsWindow) distinctAds(cutoff int64) int {
	n := 0
	for k := range w.adsLen() {
		if w.adAt(k).last > cutoff {
			n++
		}
	}
	return n
}

// prune drops the times at or before cutoff, and the pending clicks that have a verdict or
// were received at or before cutoff.
func (w *window) prune(cutoff int64, recs []clickRec) {
	i, _ := slices.BinarySearch(w.times(), cutoff+1)
	if i > 0 {
		w.buf = slices.Delete(w.buf, 0, i)
		w.nt -= uint32(i)
	}
	kept := 0
	for k := range w.pendingLen() {
		if i := w.pendingAt(k); !recs[i].flagged() && recs[i].recv > cutoff {
			w.setPending(kept, i)
			kept++
		}
	}
	if kept < int(w.np) {
		if kept%2 == 1 {
			w.setPending(kept, 0)
		}
		from, to := int(w.nt)+(kept+1)/2, int(w.nt)+int(w.np+1)/2
		w.buf = slices.Delete(w.buf, from, to)
		w.np = uint32(kept)
	}
	w.shrink()
}

// shrink releases the buffer once empty and trims one grown far beyond what it holds.
func (w *window) shrink() {
	switch {
	case len(w.buf) == 0:
		w.buf = nil
	case cap(w.buf) > 2*len(w.buf)+4:
		w.buf = slices.Clip(slices.Clone(w.buf))
	}
}

func (w *window) empty() bool { return w.nt == 0 && w.np == 0 }

// prune also drops the ads last clicked at or before cutoff.
func (w *adsWindow) prune(cutoff int64, recs []clickRec) {
	w.window.prune(cutoff, recs)
	i := 0
	for i < w.adsLen() && w.adAt(i).last <= cutoff {
		i++
	}
	if i > 0 {
		o := w.adsOff()
		w.buf = slices.Delete(w.buf, o, o+2*i)
		w.shrink()
	}
}

func (w *adsWindow) empty() bool { return len(w.buf) == 0 }
