package dedup

// Window is the stream's second line of defence against duplicates: the stages after the log
// (aggregation, user views) pass every event of one log partition through it, in offset order,
// and skip the ones it calls repeats. The first line (Store, before the log) keeps a key out
// of the log while its outcome is known; Window catches what reaches the log twice anyway: an
// append whose outcome was unknown and was retried, a Redis that lost keys, a dedup window
// that restarted empty.
//
// Rule: an event is a repeat iff an earlier event of the partition with the same key (by
// 64-bit hash) was received at most Span before it. "Earlier" is any earlier event, counted or
// not, so the rule does not chain: the decision for an event depends only on which events of
// the partition carry its key and their receive times, never on earlier decisions.
//
// Replay: with Slack bounding how far receive times run out of order within a partition
// (ingest holds an event at most that long between receiving and appending it), every event
// that can still decide something was received after MaxRecv - Span - Slack. Entries older
// than that are dropped, and a restarted stage rebuilds the same decisions by feeding the
// events appended since (the append time of its last consumed event) - Span - 2*Slack; see
// ReplayFrom. Decisions are therefore the same with or without crashes.
//
// Memory is 48 to 80 bytes per event of the last Span (BenchmarkWindowBytesPerKey): a FIFO of (hash, receive time) in
// arrival order, and an open-addressing table of hash -> the FIFO position of its occurrence
// with the latest receive time (the only one the rule needs), at most half full. It is hand-rolled because it runs once per event at millions
// of events a second: a Go map costs three hashed operations per event (look up, insert,
// evict), the table a few probes of one cache line.
type Window struct {
	span, slack int64 // micros
	maxRecv     int64

	// fifo holds the events seen, oldest first: positions head..head+n-1, stored at
	// pos & fifoMask.
	fifo     []windowSlot
	fifoMask int64
	head, n  int64

	tab  []windowEnt // hash -> FIFO position of its occurrence received last; hash 0 = empty
	mask uint64
	keys int
}

type windowSlot struct {
	hash uint64
	recv int64
}

type windowEnt struct {
	hash uint64
	pos  int64
}

// NewWindow returns an empty filter. span is how long a key is remembered (--dedup-window);
// slack how far receive times may be out of order within a partition.
func NewWindow(span, slack int64) *Window {
	w := &Window{span: span, slack: slack}
	w.fifo = make([]windowSlot, 1024)
	w.fifoMask = 1023
	w.tab = make([]windowEnt, 2048)
	w.mask = 2047
	return w
}

// ReplayFrom is the earliest append time (micros) a restarted stage must feed again, given the
// append time of the last event it had consumed: every event received after the earliest
// receive time a later event can look back to was appended at or after it.
func ReplayFrom(lastAppend, span, slack int64) int64 {
	return lastAppend - span - 2*slack
}

// Observe records an event whose key hashes to h, received at recv (micros), and reports
// whether it repeats an earlier one.
func (w *Window) Observe(h uint64, recv int64) bool {
	if h == 0 {
		h = 1 // 0 marks an empty slot
	}
	if recv > w.maxRecv {
		w.maxRecv = recv
		w.evict()
	}
	ti, found := w.find(h)
	dup := false
	if found {
		prev := w.fifo[w.tab[ti].pos&w.fifoMask].recv
		dup = recv-prev <= w.span
		if recv < prev {
			// The key's latest receive time stays what decides; this event only has to
			// pass through the FIFO.
			w.push(0, recv)
			return dup
		}
	}
	pos := w.push(h, recv)
	if !found {
		if uint64(w.keys+1)*2 > uint64(len(w.tab)) {
			w.grow()
			ti, _ = w.find(h)
		}
		w.keys++
	}
	w.tab[ti] = windowEnt{h, pos}
	return dup
}

// Len is the number of distinct keys held.
func (w *Window) Len() int { return w.keys }

// push appends to the FIFO, doubling it when full, and returns the new position.
func (w *Window) push(h uint64, recv int64) int64 {
	if w.n == int64(len(w.fifo)) {
		bigger := make([]windowSlot, 2*len(w.fifo))
		newMask := int64(len(bigger) - 1)
		for p := w.head; p < w.head+w.n; p++ {
			bigger[p&newMask] = w.fifo[p&w.fifoMask]
		}
		w.fifo, w.fifoMask = bigger, newMask
	}
	pos := w.head + w.n
	w.fifo[pos&w.fifoMask] = windowSlot{h, recv}
	w.n++
	return pos
}

// evict drops events received before maxRecv - span - slack from the front of the FIFO.
// Events further back that are as old stay until they reach the front, which only costs
// memory: decisions compare receive times, never presence alone.
func (w *Window) evict() {
	limit := w.maxRecv - w.span - w.slack
	for w.n > 0 {
		s := w.fifo[w.head&w.fifoMask]
		if s.recv >= limit {
			return
		}
		if s.hash == 0 {
			// A slot that decides nothing (see Observe).
		} else if ti, ok := w.find(s.hash); ok && w.tab[ti].pos == w.head {
			w.remove(ti)
			w.keys--
		}
		w.head++
		w.n--
	}
}

// find returns the table index holding h, or the empty index where it would go.
func (w *Window) find(h uint64) (int, bool) {
	i := h & w.mask
	for {
		e := &w.tab[i]
		if e.hash == h {
			return int(i), true
		}
		if e.hash == 0 {
			return int(i), false
		}
		i = (i + 1) & w.mask
	}
}

// remove deletes index i with backward-shift deletion, so probes need no tombstones.
func (w *Window) remove(i int) {
	j := i
	for {
		j = (j + 1) & int(w.mask)
		h := w.tab[j].hash
		if h == 0 {
			break
		}
		// Move j back to i unless its home lies cyclically in (i, j].
		home := int(h & w.mask)
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			w.tab[i] = w.tab[j]
			i = j
		}
	}
	w.tab[i] = windowEnt{}
}

// grow doubles the table.
func (w *Window) grow() {
	old := w.tab
	w.tab = make([]windowEnt, 2*len(old))
	w.mask = uint64(len(w.tab) - 1)
	for _, e := range old {
		if e.hash != 0 {
			i, _ := w.find(e.hash)
			w.tab[i] = e
		}
	}
}
