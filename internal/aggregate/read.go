package aggregate

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
)

// Reading is split in two so that the partitions are read on every core: fetch (read the
// log, decode, filter duplicates) touches only its own partition's state and runs on any
// goroutine; count (add to the accumulator, under live.mu) is the runner's, in partition order.
// Fetching is most of an event's cost, and is what runs in parallel.

// counted is what the accumulator needs of an event that passed the duplicate filter and the
// time range check. Its strings alias the partition's read buffer.
type counted struct {
	ad, campaign, advertiser, name string
	time                           int64
	typ                            event.Type
	invalid                        event.Reason
}

// partBatch is one read of one partition: filled by fetch, consumed by count. Its buffers are
// reused by the partition's next read.
type partBatch struct {
	buf    eventlog.ReadBuffer
	ev     event.Event // decoding scratch
	keyBuf []byte      // keyHash scratch
	evs    []counted
	n      int   // messages read
	next   int64 // offset after the last message read
	err    error

	consumed, dups, corrupt, outOfRange int64
	lastRecv                            int64 // max receive time of the events that passed the filter
	done                                chan struct{}

	// fetchGroup's: per event of the group, its key hash, receive time, and whether it has
	// a key.
	hs    [fetchGroup]uint64
	recvs [fetchGroup]int64
	keyed [fetchGroup]bool
}

func newPartBatch() *partBatch { return &partBatch{done: make(chan struct{}, 1)} }

// read reads partition p into b's buffers when the log can reuse them.
func (r *runner) read(ctx context.Context, p int, from int64, b *partBatch) ([]eventlog.Message, error) {
	if br, ok := r.opts.Log.(eventlog.BufferedReader); ok {
		return br.ReadBuffered(ctx, p, from, r.opts.ReadBytes, &b.buf)
	}
	return r.opts.Log.Read(ctx, p, from, r.opts.ReadBytes)
}

// fetchGroup is how many events fetch decodes before it passes them through the duplicate
// filter, with their filter slots prefetched (dedup.Window.Prefetch).
const fetchGroup = 64

// fetch reads one batch of ps from ps.next into ps.batch and passes it through the duplicate
// filter. It touches only ps's filter and batch, and reads only ps.next and r.opts, so fetches
// of different partitions run in parallel.
func (r *runner) fetch(ctx context.Context, ps *partState) {
	b := ps.batch
	b.evs = b.evs[:0]
	b.n, b.next, b.err = 0, ps.next, nil
	b.consumed, b.dups, b.corrupt, b.outOfRange, b.lastRecv = 0, 0, 0, 0, 0
	msgs, err := r.read(ctx, ps.id, ps.next, b)
	if err != nil {
		b.err = fmt.Errorf("read partition %d at %d: %w", ps.id, ps.next, err)
		return
	}
	b.n = len(msgs)
	for len(msgs) > 0 {
		g := msgs[:min(fetchGroup, len(msgs))]
		msgs = msgs[len(g):]
		b.fetchGroup(r, ps, g)
	}
}

// fetchGroup decodes the messages g (at most fetchGroup) onto b.evs, then filters them: an
// event is kept if it is no duplicate and its time is in range. Deciding in a second pass, in
// the same order, leaves every decision as it was and lets the filter's memory be loaded for
// the whole group at once.
func (b *partBatch) fetchGroup(r *runner, ps *partState, g []eventlog.Message) {
	base, n := len(b.evs), 0
	e := &b.ev
	for i := range g {
		m := &g[i]
		if m.Offset < b.next {
			continue // never expected: offsets are dense and Read starts where asked
		}
		b.next = m.Offset + 1
		b.consumed++
		if err := decodeView(m.Value, e); err != nil {
			b.corrupt++
			r.opts.Logger.Warn("skipping undecodable event", "partition", ps.id, "offset", m.Offset, "err", err)
			continue
		}
		b.hs[n], b.recvs[n], b.keyed[n] = 0, e.RecvTime, false
		if ps.dedup != nil {
			b.hs[n], b.keyBuf, b.keyed[n] = keyHash(e, b.keyBuf)
		}
		b.evs = append(b.evs, counted{ad: e.AdID, campaign: e.CampaignID, advertiser: e.AdvertiserID, name: e.Name,
			time: e.Time, typ: e.Type, invalid: e.Invalid})
		n++
	}
	if ps.dedup != nil {
		ps.dedup.Prefetch(b.hs[:n])
	}
	kept := base
	for i := range n {
		if b.keyed[i] && ps.dedup.Observe(b.hs[i], b.recvs[i]) {
			b.dups++
			continue
		}
		b.lastRecv = max(b.lastRecv, b.recvs[i])
		c := b.evs[base+i]
		if c.time < 0 || c.time >= maxEventMicros {
			b.outOfRange++
			continue
		}
		b.evs[kept] = c
		kept++
	}
	clear(b.evs[kept:])
	b.evs = b.evs[:kept]
}

// count adds what fetch read of ps to the accumulator and moves ps past it. idleAt is the time
// (micros) taken before the read, for a partition found at its end.
func (r *runner) count(ps *partState, idx int, idleAt int64) {
	b := ps.batch
	if b.n == 0 {
		// Whatever arrives later was received after about the time of this read (less
		// Slack), not of the next commit, since events may be appended in between.
		ps.caughtUp, ps.idleSince = true, idleAt
		return
	}
	ps.caughtUp = false
	r.consumed += b.consumed
	r.dups += b.dups
	r.corrupt += b.corrupt
	r.outOfRange += b.outOfRange
	ps.lastRecv = max(ps.lastRecv, b.lastRecv)
	// Queries read the accumulator and its offsets under live.mu (live.go).
	l := &r.a.live
	l.mu.Lock()
	for i := range b.evs {
		c := &b.evs[i]
		if !r.acc.add(c, c.time/60e6) {
			r.uncounted++
			continue
		}
		r.counted++
		if c.time < r.finalBefore {
			r.late++
		}
	}
	ps.next = b.next
	l.segs[0].to[idx] = ps.next
	l.mu.Unlock()
	clear(b.evs) // drop the references to the read buffer's strings
}

// readRound reads one batch of every partition and counts it. Partitions are fetched by
// min(GOMAXPROCS, partitions) goroutines (the runner's among them) and counted in order as
// soon as each is fetched. It reports whether any partition had messages; on a read error it
// counts the partitions before the failing one and returns the error.
func (r *runner) readRound(ctx context.Context) (bool, error) {
	idleAt := r.opts.Now().UnixMicro()
	n := len(r.parts)
	var claimed atomic.Int64 // partitions handed out to fetchers
	claim := func() (int, bool) {
		i := int(claimed.Add(1) - 1)
		return i, i < n
	}
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), n) - 1 {
		wg.Go(func() {
			for i, ok := claim(); ok; i, ok = claim() {
				r.fetch(ctx, &r.parts[i])
				r.parts[i].batch.done <- struct{}{}
			}
		})
	}
	defer wg.Wait()
	progressed := false
	var err error
	for next := 0; next < n; next++ {
		ps := &r.parts[next]
		// Fetch partitions of our own while the next one to count is still being fetched.
	wait:
		for {
			select {
			case <-ps.batch.done:
				break wait
			default:
			}
			i, ok := claim()
			if !ok {
				<-ps.batch.done
				break
			}
			r.fetch(ctx, &r.parts[i])
			r.parts[i].batch.done <- struct{}{}
		}
		if err != nil {
			continue // drain the others' fetches
		}
		if ps.batch.err != nil {
			err = ps.batch.err
			continue
		}
		r.count(ps, next, idleAt)
		progressed = progressed || ps.batch.n > 0
	}
	return progressed, err
}

// replay feeds offsets [from, to) of partition p to its duplicate filter without counting,
// so the filter is in the state an uninterrupted run would have at to.
func (r *runner) replay(ctx context.Context, p int, from, to int64) error {
	ps := &r.parts[r.index[int32(p)]]
	b := ps.batch
	for from < to {
		msgs, err := r.read(ctx, p, from, b)
		if err != nil {
			return fmt.Errorf("replay partition %d at %d: %w", p, from, err)
		}
		if len(msgs) == 0 {
			return fmt.Errorf("replay partition %d: log ends at %d, before the committed offset %d", p, from, to)
		}
		for i := range msgs {
			m := &msgs[i]
			if m.Offset >= to {
				break
			}
			from = m.Offset + 1
			r.replayed++
			if err := decodeView(m.Value, &b.ev); err != nil {
				continue
			}
			var h uint64
			var ok bool
			if h, b.keyBuf, ok = keyHash(&b.ev, b.keyBuf); ok {
				ps.dedup.Observe(h, b.ev.RecvTime)
			}
			ps.lastRecv = max(ps.lastRecv, b.ev.RecvTime)
		}
	}
	return nil
}
