package sivt

// The rules hold every click without a verdict until its windows expire: at 10,000 clicks/s
// that is millions of clicks. They are kept in slabs without pointers (records in one slice,
// key bytes in another, ads and sources as integer ids) so that the garbage collector, whose
// marking cost grows with the pointers it must follow, skips them: a click costs a few dozen
// bytes of a noscan slab instead of several small objects the collector scans on every cycle.

// clickRec is a click without a verdict, held by the windows (window.pending) a later click
// may fire on. A click with a verdict needs no record: its windows keep only its receive time.
type clickRec struct {
	time, recv     int64
	keyOff, keyLen uint32 // the idempotency key's bytes in clickSlab.keys
	ref            uint32 // its ad, campaign and advertiser: state.refTab[ref]
	flagged        bool
}

// clickSlab holds the click records and their keys. Records are appended and never moved
// except by compact, which drops the records no window references any more.
type clickSlab struct {
	recs []clickRec
	keys []byte // append-only arena of the records' keys
}

// add appends a record and returns its index.
func (s *clickSlab) add(key string, time, recv int64, ref uint32, flagged bool) uint32 {
	off := len(s.keys)
	s.keys = append(s.keys, key...)
	s.recs = append(s.recs, clickRec{time: time, recv: recv, keyOff: uint32(off), keyLen: uint32(len(key)), ref: ref, flagged: flagged})
	return uint32(len(s.recs) - 1)
}

// key returns the idempotency key of record i (a new string: verdicts outlive the slab's layout).
func (s *clickSlab) key(i uint32) string {
	r := &s.recs[i]
	return string(s.keys[r.keyOff : r.keyOff+r.keyLen])
}

// click is a held click as a verdict carries it: its key, ad and times.
type click struct {
	key        string // idempotency key; clickID(key) is its id
	ad         adRef
	time, recv int64
}

// id is the click's id as the API shows it.
func (c *click) id() string { return clickID(c.key) }

// adRef is a click's ad with its campaign and advertiser.
type adRef struct{ ad, campaign, advertiser string }

// clickID is the id GET /api/v1/clicks/{id} takes for a click key ("c:imp" or "e:event").
func clickID(key string) string { return key[min(2, len(key)):] }

// verdictClick returns record i as a verdict carries it.
func (s *state) verdictClick(i uint32) *click {
	r := &s.slab.recs[i]
	return &click{key: s.slab.key(i), ad: s.refTab[r.ref], time: r.time, recv: r.recv}
}

// eachWindow calls f with every window of every rule.
func (s *state) eachWindow(f func(w *window)) {
	for i := range s.floods {
		for _, w := range s.floods[i] {
			f(w)
		}
	}
	for _, w := range s.sources {
		f(&w.window)
	}
}

// compact rebuilds the slab with only the records some window still holds, in their old
// order, and the ad tables with only the ads those records and the many_ads windows use.
// The windows' pending lists keep their order, so the verdicts do not change.
func (s *state) compact() {
	const dead = ^uint32(0)
	remap := make([]uint32, len(s.slab.recs))
	for i := range remap {
		remap[i] = dead
	}
	s.eachWindow(func(w *window) {
		for k := range w.pendingLen() {
			remap[w.pendingAt(k)] = 0
		}
	})
	var live int
	for i := range remap {
		if remap[i] != dead {
			live++
		}
	}
	var ns clickSlab
	ns.recs = make([]clickRec, 0, live)
	refIDs := make(map[adRef]uint32)
	var refTab []adRef
	for i, r := range s.slab.recs {
		if remap[i] == dead {
			continue
		}
		ref := s.refTab[r.ref]
		id, ok := refIDs[ref]
		if !ok {
			id = uint32(len(refTab))
			refIDs[ref] = id
			refTab = append(refTab, ref)
		}
		remap[i] = ns.add(string(s.slab.keys[r.keyOff:r.keyOff+r.keyLen]), r.time, r.recv, id, r.flagged)
	}
	s.eachWindow(func(w *window) {
		for k := range w.pendingLen() {
			w.setPending(k, remap[w.pendingAt(k)])
		}
	})
	s.slab, s.refIDs, s.refTab = ns, refIDs, refTab

	adIDs := make(map[string]uint32)
	var adNames []string
	for _, w := range s.sources {
		for k := range w.adsLen() {
			a := w.adAt(k)
			name := s.adNames[a.ad]
			id, ok := adIDs[name]
			if !ok {
				id = uint32(len(adNames))
				adIDs[name] = id
				adNames = append(adNames, name)
			}
			w.setAd(k, adSeen{id, a.last})
		}
	}
	s.adIDs, s.adNames = adIDs, adNames
}

// internRef returns the id of an ad with its campaign and advertiser.
func (s *state) internRef(r adRef) uint32 {
	if id, ok := s.refIDs[r]; ok {
		return id
	}
	id := uint32(len(s.refTab))
	s.refIDs[r] = id
	s.refTab = append(s.refTab, r)
	return id
}

// internAd returns the id of an ad id for the many_ads windows.
func (s *state) internAd(ad string) uint32 {
	if id, ok := s.adIDs[ad]; ok {
		return id
	}
	id := uint32(len(s.adNames))
	s.adIDs[ad] = id
	s.adNames = append(s.adNames, ad)
	return id
}
