package dedup

import "math"

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
// Memory is 20 to 28 bytes per event of the last Span (BenchmarkWindowBytesPerKey), since one
// Window per partition per stage holds a day of events at the default window:
//   - a FIFO of (hash, receive time) in arrival order, in chunks of 1024 events, so it grows
//     without copying and wastes at most one chunk. A chunk stores receive times as 32-bit
//     offsets from its first one (12 bytes an event); a chunk whose events spread over more
//     than ±35 minutes (a partition with fewer than one event every two seconds) switches
//     to full 64-bit times;
//   - an open-addressing table, at most half full, of 32-bit FIFO positions (the low bits
//     of the position, plus one so that 0 marks an empty slot; positions held span less than
//     2^32, and the FIFO skips the one position whose low bits would read as empty) of each
//     key's occurrence with the latest receive time, the only one the rule needs. The key's
//     hash is read from the FIFO when a probe meets an entry, so a slot is 4 bytes, not 16.
//
// It is hand-rolled because it runs once per event at millions of events a second: a Go map
// costs three hashed operations per event (look up, insert, evict), the table a few probes.
type Window struct {
	span, slack int64 // micros
	maxRecv     int64

	// The FIFO holds the events seen, oldest first: positions head..head+n-1. Position p is
	// slot p&chunkMask of chunks[p>>chunkBits - firstChunk].
	chunks     []*windowChunk
	firstChunk int64
	spare      *windowChunk // the last chunk dropped, reused by the next one needed
	head, n    int64

	tab  []uint32 // hash -> uint32(FIFO position)+1 of its occurrence received last; 0 = empty
	mask uint64
	keys int

	sink uint64 // keeps Prefetch's loads from being optimised away
}

const (
	chunkBits = 10
	chunkLen  = 1 << chunkBits
	chunkMask = chunkLen - 1

	// emptyPos is the one uint32(position) the FIFO never hands out to a key, so that
	// uint32(position)+1 is never 0, the table's empty slot.
	emptyPos = math.MaxUint32
)

// windowChunk holds chunkLen consecutive FIFO slots. A slot's hash 0 marks an event that
// decides nothing (see Observe).
type windowChunk struct {
	hash [chunkLen]uint64
	rel  [chunkLen]int32 // receive time - base, unless wide is set
	base int64
	wide []int64 // receive times in full, once one did not fit rel
}

func (c *windowChunk) recv(i int64) int64 {
	if c.wide != nil {
		return c.wide[i]
	}
	return c.base + int64(c.rel[i])
}

func (c *windowChunk) set(i int64, h uint64, recv int64) {
	c.hash[i] = h
	if c.wide == nil {
		d := recv - c.base
		if d == int64(int32(d)) {
			c.rel[i] = int32(d)
			return
		}
		c.wide = make([]int64, chunkLen)
		for j := range i {
			c.wide[j] = c.base + int64(c.rel[j])
		}
	}
	c.wide[i] = recv
}

// NewWindow returns an empty filter. span is how long a key is remembered (--dedup-window);
// slack how far receive times may be out of order within a partition.
func NewWindow(span, slack int64) *Window { return newWindowAt(span, slack, 0) }

// newWindowAt is NewWindow with the FIFO's positions starting at first, so tests reach the
// positions where their low 32 bits wrap.
func newWindowAt(span, slack, first int64) *Window {
	w := &Window{span: span, slack: slack, head: first}
	w.tab = make([]uint32, 2048)
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
		h = 1 // 0 marks a FIFO slot that decides nothing
	}
	if recv > w.maxRecv {
		w.maxRecv = recv
		w.evict()
	}
	ti, found := w.find(h)
	dup := false
	if found {
		prev := w.recvAt(w.posOf(w.tab[ti]))
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
	w.tab[ti] = uint32(pos) + 1
	return dup
}

// Len is the number of distinct keys held.
func (w *Window) Len() int { return w.keys }

func (w *Window) chunk(pos int64) *windowChunk { return w.chunks[pos>>chunkBits-w.firstChunk] }

func (w *Window) hashAt(pos int64) uint64 { return w.chunk(pos).hash[pos&chunkMask] }

func (w *Window) recvAt(pos int64) int64 { return w.chunk(pos).recv(pos & chunkMask) }

// posOf is the FIFO position a table entry names: the one in head..head+2^32-1 with those low
// bits.
func (w *Window) posOf(v uint32) int64 {
	return w.head + int64((v-1)-uint32(w.head))
}

// push appends to the FIFO and returns the new position.
func (w *Window) push(h uint64, recv int64) int64 {
	pos := w.head + w.n
	if uint32(pos) == emptyPos {
		// Skip the position the table cannot name with a slot that decides nothing.
		w.pushAt(pos, 0, recv)
		pos++
	}
	w.pushAt(pos, h, recv)
	return pos
}

func (w *Window) pushAt(pos int64, h uint64, recv int64) {
	if w.n >= 1<<32-chunkLen {
		// posOf names positions within 2^32 of head: 48 GiB of events in one partition's span.
		panic("dedup: a Window holds 2^32 events")
	}
	if pos&chunkMask == 0 || len(w.chunks) == 0 {
		c := w.spare
		w.spare = nil
		if c == nil {
			c = new(windowChunk)
		}
		c.base, c.wide = recv, nil
		if len(w.chunks) == 0 {
			w.firstChunk = pos >> chunkBits
		}
		w.chunks = append(w.chunks, c)
	}
	w.chunk(pos).set(pos&chunkMask, h, recv)
	w.n++
}

// evict drops events received before maxRecv - span - slack from the front of the FIFO.
// Events further back that are as old stay until they reach the front, which only costs
// memory: decisions compare receive times, never presence alone.
func (w *Window) evict() {
	limit := w.maxRecv - w.span - w.slack
	for w.n > 0 {
		c := w.chunk(w.head)
		i := w.head & chunkMask
		if c.recv(i) >= limit {
			return
		}
		if h := c.hash[i]; h == 0 {
			// A slot that decides nothing (see Observe).
		} else if ti, ok := w.find(h); ok && w.posOf(w.tab[ti]) == w.head {
			w.remove(ti)
			w.keys--
		}
		w.head++
		w.n--
		if w.head&chunkMask == 0 {
			// The front chunk is spent; keep it for the next one needed.
			w.spare = w.chunks[0]
			w.chunks[0] = nil
			w.chunks = w.chunks[1:]
			w.firstChunk++
		}
	}
}

// find returns the table index holding h, or the empty index where it would go.
func (w *Window) find(h uint64) (int, bool) {
	i := h & w.mask
	for {
		v := w.tab[i]
		if v == 0 {
			return int(i), false
		}
		if w.hashAt(w.posOf(v)) == h {
			return int(i), true
		}
		i = (i + 1) & w.mask
	}
}

// remove deletes index i with backward-shift deletion, so probes need no tombstones.
func (w *Window) remove(i int) {
	j := i
	for {
		j = (j + 1) & int(w.mask)
		v := w.tab[j]
		if v == 0 {
			break
		}
		// Move j back to i unless its home lies cyclically in (i, j].
		home := int(w.hashAt(w.posOf(v)) & w.mask)
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			w.tab[i] = v
			i = j
		}
	}
	w.tab[i] = 0
}

// grow doubles the table.
func (w *Window) grow() {
	old := w.tab
	w.tab = make([]uint32, 2*len(old))
	w.mask = uint64(len(w.tab) - 1)
	for _, v := range old {
		if v != 0 {
			i, _ := w.find(w.hashAt(w.posOf(v)))
			w.tab[i] = v
		}
	}
}

// Prefetch loads the table slots, and the FIFO entries they name, that Observe of the hashes
// hs would probe first, and changes nothing. A caller that calls it for a few dozen events
// before observing them one by one waits for memory once per batch rather than once or twice
// per event: the loads are independent, so the processor overlaps them (the table and FIFO of
// a busy partition are tens of megabytes, far larger than the caches).
func (w *Window) Prefetch(hs []uint64) {
	var sink uint64
	for _, h := range hs {
		if h == 0 {
			h = 1
		}
		if v := w.tab[h&w.mask]; v != 0 {
			if pos := w.posOf(v); pos >= w.head && pos < w.head+w.n {
				sink += w.hashAt(pos)
			}
		}
	}
	w.sink = sink
}
