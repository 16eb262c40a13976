package billing

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/adpulse/adpulse/internal/billing/ledger"
	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/dedup"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/cespare/xxhash/v2"
)

// writer is the goroutine that consumes the log partitions this Charger owns, in rounds. Each
// round is one ledger transaction (ledger.Store.Update); spend is read inside it with a lock,
// never cached, because other nodes charge the same campaigns.
type writer struct {
	c *Charger
	o *Options

	// mu is held for a whole round and by Assign and Revoke while they change parts, so a
	// revoked partition is never in a round that commits after Revoke returns.
	mu    sync.Mutex
	parts map[int32]*ownedPartition

	known          map[string]struct{}
	profile        trafficProfile
	profileDirty   bool
	publishedDay   uint32 // profile day whose curve the pacer has
	viewsDeletedTo uint32 // views of days before it were deleted by this process

	refs []msgRef
	got  map[int32][]eventlog.Message
}

// ownedPartition is a partition this Charger claimed.
type ownedPartition struct {
	epoch int64
	next  int64         // next offset to consume, as committed
	dups  *dedup.Window // the impressions' duplicate filter; nil when off
	// dupsPending: dups is still to be built from the log (by buildViewDups) before the
	// partition's first message is processed.
	dupsPending bool
}

type spendKey = ledger.SpendKey

func newWriter(ctx context.Context, c *Charger) (*writer, error) {
	w := &writer{
		c: c, o: &c.opts,
		parts: make(map[int32]*ownedPartition),
		known: make(map[string]struct{}),
		got:   make(map[int32][]eventlog.Message),
	}
	if v, ok, err := c.store.Meta(ctx, w.profileName()); err != nil {
		return nil, fmt.Errorf("read traffic profile: %w", err)
	} else if ok {
		if err := w.profile.decode(v); err != nil {
			return nil, err
		}
	}
	known, err := c.store.Known(ctx)
	if err != nil {
		return nil, fmt.Errorf("read known campaigns: %w", err)
	}
	c.mu.Lock()
	for _, id := range known {
		w.known[id] = struct{}{}
		c.known[id] = struct{}{}
	}
	c.mu.Unlock()
	c.pacer.setCurve(w.profile.curve())
	w.publishedDay = w.profile.Day
	return w, nil
}

// profileName is the metadata name of the traffic profile: per node, because each node sees
// only the traffic of its partitions (the Pebble key of an unnamed node is the historical one).
func (w *writer) profileName() string {
	if w.o.Node == "" {
		return "profile"
	}
	return "profile/" + w.o.Node
}

// run is the writer's loop: a round of the owned partitions; it sleeps when caught up.
func (w *writer) run(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		n, err := w.round(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil // stopping: the round was not committed and is replayed at the next start
			}
			return err
		}
		if n > 0 {
			continue
		}
		timer.Reset(w.o.PollInterval)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		}
	}
}

// batchState is one atomic write being built: a round of the log or a refund. The part built
// inside the ledger transaction (clicks, spend, deltas, charge counters) is reset on every
// attempt.
type batchState struct {
	views    map[ledger.ViewKey]int64
	newKnown []string
	expire   uint32 // delete views of days before it; 0: none
	clicks   []pendingClick
	offsets  []ledger.Offset

	consumed, corrupt, viewsCounted, viewDups, roundDups int64
	attempt                                              attemptState
}

// attemptState is what one run of the transaction function decided.
type attemptState struct {
	entries []ledger.Entry
	spend   []ledger.SpendDelta
	deltas  map[deltaKey]int64

	charged, micros, partial, dups int64
	zero                           [len(zeroReasonNames)]int64
	refunds, refunded              int64
}

// pendingClick is a valid click read in a round, decided inside the transaction.
type pendingClick struct {
	key    string
	part   int32
	offset int64
	ev     event.Event
}

type msgRef struct {
	part int32
	i    int
}

// round reads what every owned partition has past its committed offset, processes the
// messages in a deterministic merged order and commits the result. It returns how many
// messages it processed.
func (w *writer) round(ctx context.Context) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.buildViewDups(ctx); err != nil {
		return 0, err
	}
	w.refs = w.refs[:0]
	defer clear(w.got) // let the messages go
	for p, op := range w.parts {
		msgs, err := w.o.Log.Read(ctx, int(p), op.next, w.o.ReadBytes)
		if err != nil {
			return 0, fmt.Errorf("read partition %d at %d: %w", p, op.next, err)
		}
		w.got[p] = msgs
		for i := range msgs {
			w.refs = append(w.refs, msgRef{p, i})
		}
	}
	// One merged order for the owned partitions: the charge decisions (who gets a budget's
	// last micros) then depend only on the log, not on read timing.
	slices.SortFunc(w.refs, func(a, b msgRef) int {
		ma, mb := &w.got[a.part][a.i], &w.got[b.part][b.i]
		if c := ma.Time.Compare(mb.Time); c != 0 {
			return c
		}
		if c := cmp.Compare(a.part, b.part); c != 0 {
			return c
		}
		return cmp.Compare(ma.Offset, mb.Offset)
	})
	b := &batchState{views: make(map[ledger.ViewKey]int64)}
	today := dayOf(w.o.Now(), time.UTC)
	cutoff := viewsCutoff(today, w.o.ViewRetentionDays)
	ranges := make(map[int32]int64)
	seen := make(map[string]struct{})
	for _, r := range w.refs {
		m := &w.got[r.part][r.i]
		w.process(b, r.part, m, cutoff, seen)
		ranges[r.part] = m.Offset + 1
	}
	for p, next := range ranges {
		b.offsets = append(b.offsets, ledger.Offset{Partition: p, Epoch: w.parts[p].epoch, Next: next})
	}
	slices.SortFunc(b.offsets, func(x, y ledger.Offset) int { return cmp.Compare(x.Partition, y.Partition) })
	n := len(w.refs)
	if cutoff > w.viewsDeletedTo {
		b.expire = cutoff
	}
	if n == 0 && b.expire == 0 {
		return 0, nil
	}
	if err := w.commit(ctx, b); err != nil {
		var fe *ledger.FencedError
		if errors.As(err, &fe) && w.o.Group {
			return n, w.fenced(ctx, fe.Partitions)
		}
		return 0, err
	}
	return n, nil
}

// buildViewDups builds the duplicate filters of the partitions assigned since the last round.
// Their committed offsets have not moved since the claim (only a round moves them), so each
// filter is the one the claim would have built. Called with w.mu held.
func (w *writer) buildViewDups(ctx context.Context) error {
	start := time.Now()
	var built []int32
	for p, op := range w.parts {
		if !op.dupsPending {
			continue
		}
		dups, err := w.newViewDups(ctx, p, op.next)
		if err != nil {
			return err
		}
		op.dups, op.dupsPending = dups, false
		built = append(built, p)
	}
	if len(built) > 0 {
		slices.Sort(built)
		w.o.Logger.Info("billing: impression windows rebuilt from the log", "partitions", built, "took", time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// fenced drops partitions another owner claimed. The round's other partitions stay owned,
// but their duplicate filters saw the round's uncommitted impressions, so they are rebuilt.
func (w *writer) fenced(ctx context.Context, lost []int32) error {
	w.o.Logger.Warn("billing: partitions taken over by another owner; dropping them", "partitions", lost)
	for _, p := range lost {
		delete(w.parts, p)
	}
	w.c.mu.Lock()
	w.c.stats.Fenced++
	w.c.mu.Unlock()
	for p, op := range w.parts {
		dups, err := w.newViewDups(ctx, p, op.next)
		if err != nil {
			return err
		}
		op.dups = dups
	}
	w.c.setCommitted(w.parts)
	return nil
}

// viewsCutoff is the first UTC day of views kept.
func viewsCutoff(today uint32, retentionDays int) uint32 {
	if uint32(retentionDays) > today {
		return 0
	}
	return today - uint32(retentionDays) + 1
}

// process handles one message outside the transaction: impressions are filtered and counted
// here; clicks are queued for the transaction, first occurrence of a key only.
func (w *writer) process(b *batchState, part int32, m *eventlog.Message, viewsCutoff uint32, seen map[string]struct{}) {
	b.consumed++
	var ev event.Event
	if err := ev.Decode(m.Value); err != nil {
		b.corrupt++
		w.o.Logger.Warn("billing: undecodable message skipped", "partition", part, "offset", m.Offset, "err", err)
		return
	}
	if ev.Invalid != event.ReasonNone || (ev.Type != event.TypeClick && ev.Type != event.TypeImpression) {
		return
	}
	if ev.CampaignID != "" && event.ValidID(ev.CampaignID) {
		if _, ok := w.known[ev.CampaignID]; !ok {
			w.known[ev.CampaignID] = struct{}{}
			b.newKnown = append(b.newKnown, ev.CampaignID)
		}
	}
	inRange := ev.Time > 0 && ev.Time < maxEventMicros
	if inRange {
		w.observeTraffic(&ev)
	}
	if ev.Type == event.TypeImpression {
		if w.repeatedView(part, &ev) {
			b.viewDups++
			return
		}
		if inRange && ev.UserID != "" && ev.CatalogID != "" && event.ValidID(ev.UserID) && event.ValidID(ev.CatalogID) {
			day := dayOf(time.UnixMicro(ev.Time), time.UTC)
			if day >= viewsCutoff {
				b.views[ledger.ViewKey{Day: day, UserID: ev.UserID, CatalogID: ev.CatalogID}]++
				b.viewsCounted++
			}
		}
		return
	}
	key := ev.Key()
	if _, dup := seen[key]; dup {
		b.roundDups++
		return
	}
	seen[key] = struct{}{}
	b.clicks = append(b.clicks, pendingClick{key: key, part: part, offset: m.Offset, ev: ev})
}

// observeTraffic adds a valid event to the traffic profile at its advertiser's local time of
// day: the shape pacing spreads budgets along.
func (w *writer) observeTraffic(ev *event.Event) {
	loc := w.c.zoneAt(ev.AdvertiserID, time.UnixMicro(ev.Time))
	secs := ev.Time / 1e6
	w.profile.observe(uint32(secs/86400), secs%86400, slotOf(time.UnixMicro(ev.Time).In(loc)))
	w.profileDirty = true
}

// spendKeyOf is the spend row a click may charge, if any: the budget day of its event time.
func (c *Charger) spendKeyOf(ev *event.Event) (spendKey, bool) {
	if ev.Time <= 0 || ev.Time >= maxEventMicros {
		return spendKey{}, false
	}
	camp, ok := c.cat.Campaign(ev.CampaignID)
	if !ok {
		return spendKey{}, false
	}
	return spendKey{Campaign: camp.CampaignID, DayStart: c.budgetDayOf(camp.AdvertiserID, time.UnixMicro(ev.Time)).Start.Unix()}, true
}

// spendBook is the spend a transaction read (locked) plus what it has charged so far.
type spendBook struct {
	day   map[spendKey]int64
	total map[string]int64
}

// decideClicks is the transaction function's part of a round: it looks the round's clicks up
// in the ledger, locks the spend they may charge and decides each click in order.
func (w *writer) decideClicks(ctx context.Context, tx ledger.Tx, b *batchState) error {
	b.attempt = attemptState{deltas: make(map[deltaKey]int64)}
	if len(b.clicks) == 0 {
		return nil
	}
	keys := make([]string, len(b.clicks))
	var sks []spendKey
	for i := range b.clicks {
		keys[i] = b.clicks[i].key
		if k, ok := w.c.spendKeyOf(&b.clicks[i].ev); ok {
			sks = append(sks, k)
		}
	}
	existing, err := tx.Entries(ctx, keys, false)
	if err != nil {
		return err
	}
	day, total, err := tx.LockSpend(ctx, sks)
	if err != nil {
		return err
	}
	book := &spendBook{day: day, total: total}
	a := &b.attempt
	for i := range b.clicks {
		pc := &b.clicks[i]
		if _, dup := existing[pc.key]; dup {
			a.dups++
			continue
		}
		e := ledgerEntry{
			Key: pc.key, State: stateCharged, Time: pc.ev.Time, Partition: pc.part, Offset: pc.offset,
			CampaignID: pc.ev.CampaignID, AdID: pc.ev.AdID, AdvertiserID: pc.ev.AdvertiserID,
		}
		w.c.decide(&e, &pc.ev, book)
		a.entries = append(a.entries, e)
		if e.ChargedMicros == 0 {
			a.zero[e.Reason]++
			continue
		}
		a.charged++
		a.micros += e.ChargedMicros
		if zeroReason(e.Reason) != reasonNone {
			a.partial++
		}
		k := spendKey{Campaign: e.CampaignID, DayStart: e.DayStart}
		book.day[k] += e.ChargedMicros
		book.total[e.CampaignID] += e.ChargedMicros
		a.spend = append(a.spend, ledger.SpendDelta{SpendKey: k, Micros: e.ChargedMicros})
		addDeltas(a.deltas, &e, e.ChargedMicros)
	}
	return nil
}

// decide fills e's day, price, charge and reason from the spend in book. It is the charging
// rule of API.md.
func (c *Charger) decide(e *ledgerEntry, ev *event.Event, book *spendBook) {
	if ev.Time <= 0 || ev.Time >= maxEventMicros {
		e.Reason = uint8(reasonBadTime)
		return
	}
	camp, ok := c.cat.Campaign(ev.CampaignID)
	if !ok {
		e.Reason = uint8(reasonUnknownCampaign)
		return
	}
	t := time.UnixMicro(ev.Time)
	day := c.budgetDayOf(camp.AdvertiserID, t)
	e.Day, e.DayStart = day.Label, day.Start.Unix()
	price := ev.PriceMicros
	if price <= 0 {
		ad, ok := c.cat.Ad(ev.AdID)
		if !ok {
			e.Reason = uint8(reasonUnknownAd)
			return
		}
		price = ad.CPCBidMicros
	}
	e.PriceMicros = price
	switch {
	case camp.Status == catalog.StatusPaused:
		e.Reason = uint8(reasonPaused)
		return
	case !camp.EndTime.IsZero() && !t.Before(camp.EndTime):
		e.Reason = uint8(reasonEnded)
		return
	case !camp.StartTime.IsZero() && t.Before(camp.StartTime):
		e.Reason = uint8(reasonNotStarted)
		return
	case price <= 0:
		e.Reason = uint8(reasonZeroPrice)
		return
	case price > catalog.MaxMicros:
		e.Reason = uint8(reasonBadPrice)
		return
	}
	charge := price
	if camp.DailyBudgetMicros > 0 {
		spent := book.day[spendKey{Campaign: camp.CampaignID, DayStart: e.DayStart}]
		if rem := max(0, camp.DailyBudgetMicros-spent); rem < charge {
			charge, e.Reason = rem, uint8(reasonDailyBudget)
		}
	}
	total := book.total[camp.CampaignID]
	if camp.TotalBudgetMicros > 0 {
		if rem := max(0, camp.TotalBudgetMicros-total); rem < charge {
			charge, e.Reason = rem, uint8(reasonTotalBudget)
		}
	}
	if charge > 0 && total > math.MaxInt64-charge {
		charge, e.Reason = 0, uint8(reasonOverflow)
	}
	e.ChargedMicros = charge
}

// addDeltas adds micros of spend at the click's event-time minute, at every level: a refund
// too, so the click's buckets net out (see the package comment on retention).
func addDeltas(deltas map[deltaKey]int64, e *ledgerEntry, micros int64) {
	minute := e.Time / 60e6
	for _, d := range [...]deltaKey{
		{metricstore.LevelAd, e.AdID, minute},
		{metricstore.LevelCampaign, e.CampaignID, minute},
		{metricstore.LevelAdvertiser, e.AdvertiserID, minute},
	} {
		if d.id != "" {
			deltas[d] += micros
		}
	}
}

// journalOf encodes the non-zero deltas, or returns nil when there are none.
func journalOf(deltas map[deltaKey]int64) []byte {
	for k, v := range deltas {
		if v == 0 {
			delete(deltas, k)
		}
	}
	if len(deltas) == 0 {
		return nil
	}
	return encodeJournal(deltas)
}

// commit writes a round as one ledger transaction, then publishes what it changed.
func (w *writer) commit(ctx context.Context, b *batchState) error {
	ctx, cancel := context.WithTimeout(ctx, w.o.RoundTimeout)
	defer cancel()
	var profile []byte
	if w.profileDirty {
		profile = w.profile.encode()
	}
	start := time.Now()
	res, err := w.c.store.Update(ctx, func(ctx context.Context, tx ledger.Tx) (*ledger.Writes, error) {
		if err := w.decideClicks(ctx, tx, b); err != nil {
			return nil, err
		}
		wr := &ledger.Writes{
			Offsets: b.offsets, Entries: b.attempt.entries, Spend: b.attempt.spend,
			ExpireViewsBefore: b.expire, Journal: journalOf(b.attempt.deltas), Known: b.newKnown,
		}
		for k, n := range b.views {
			wr.Views = append(wr.Views, ledger.ViewCount{ViewKey: k, Count: n})
		}
		if profile != nil {
			wr.Meta = map[string][]byte{w.profileName(): profile}
		}
		if h := w.o.hooks; h != nil && h.beforeCommit != nil {
			if err := h.beforeCommit(); err != nil {
				return nil, err
			}
		}
		return wr, nil
	})
	if err != nil {
		return fmt.Errorf("commit billing round: %w", err)
	}
	lat := time.Since(start)

	// Committed: from here on nothing may fail the round.
	w.profileDirty = false
	for _, o := range b.offsets {
		w.parts[o.Partition].next = o.Next
	}
	if b.expire > 0 {
		w.viewsDeletedTo = b.expire
	}
	w.c.recordBatch(b, res, lat)
	w.c.setCommitted(w.parts)
	if len(res.Views) > 0 && w.o.OnViews != nil {
		views := make([]ViewCount, len(res.Views))
		for i, v := range res.Views {
			views[i] = ViewCount{Day: dayTime(v.Day), UserID: v.UserID, CatalogID: v.CatalogID, Count: v.Count}
		}
		w.o.OnViews(views)
	}
	if w.profile.Day != w.publishedDay {
		// The curve changes once a UTC day, so a day's pacing is not chased by its own clicks.
		w.c.pacer.setCurve(w.profile.curve())
		w.publishedDay = w.profile.Day
	}
	if h := w.o.hooks; h != nil && h.afterCommit != nil {
		if err := h.afterCommit(); err != nil {
			return err
		}
	}
	return nil
}

// recordBatch adds a committed batch to the stats and wakes the publisher if it journaled.
func (c *Charger) recordBatch(b *batchState, res ledger.Result, lat time.Duration) {
	a := &b.attempt
	c.mu.Lock()
	s := &c.stats
	s.EventsConsumed += b.consumed
	s.Corrupt += b.corrupt
	s.ClicksCharged += a.charged
	s.MicrosCharged += a.micros
	s.PartialCharges += a.partial
	s.DuplicateClicks += b.roundDups + a.dups
	s.ViewsCounted += b.viewsCounted
	s.ViewDuplicates += b.viewDups
	s.Refunds += a.refunds
	s.MicrosRefunded += a.refunded
	s.Retries += int64(max(0, res.Attempts-1))
	for r, n := range a.zero {
		if n != 0 {
			s.ZeroCharge[zeroReason(r).String()] += n
		}
	}
	s.Commits++
	s.LastCommitLatency = lat
	s.MaxCommitLatency = max(s.MaxCommitLatency, lat)
	s.TotalCommitLatency += lat
	for _, id := range b.newKnown {
		c.known[id] = struct{}{}
	}
	c.mu.Unlock()
	if len(a.deltas) > 0 {
		c.noteJournal(res.JournalSeq + 1)
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
}

// repeatedView passes a valid impression through its partition's duplicate filter.
func (w *writer) repeatedView(part int32, ev *event.Event) bool {
	op := w.parts[part]
	if op.dups == nil {
		return false
	}
	return op.dups.Observe(xxhash.Sum64String(ev.Key()), ev.RecvTime)
}

// newViewDups builds partition p's duplicate filter from the impressions appended since
// dedup.ReplayFrom of the last message before next, so it decides as an uninterrupted run
// would. It returns nil when the filter is off.
func (w *writer) newViewDups(ctx context.Context, p int32, next int64) (*dedup.Window, error) {
	if w.o.DedupSpan < 0 {
		return nil, nil
	}
	span, slack := w.o.DedupSpan.Microseconds(), w.o.Slack.Microseconds()
	win := dedup.NewWindow(span, slack)
	start, _, err := w.o.Log.Offsets(ctx, int(p))
	if err != nil {
		return nil, fmt.Errorf("offsets of partition %d: %w", p, err)
	}
	if next <= start {
		return win, nil
	}
	last, err := w.o.Log.Read(ctx, int(p), next-1, 1)
	if err != nil || len(last) == 0 {
		return nil, fmt.Errorf("billing: read partition %d at %d: %v", p, next-1, err)
	}
	off, err := w.o.Log.OffsetForTime(ctx, int(p), time.UnixMicro(dedup.ReplayFrom(last[0].Time.UnixMicro(), span, slack)))
	if err != nil {
		return nil, fmt.Errorf("billing: partition %d: %w", p, err)
	}
	var ev event.Event
	for off = max(off, start); off < next; {
		msgs, err := w.o.Log.Read(ctx, int(p), off, w.o.ReadBytes)
		if err != nil {
			return nil, fmt.Errorf("billing: replay partition %d at %d: %w", p, off, err)
		}
		if len(msgs) == 0 {
			return nil, fmt.Errorf("billing: replay partition %d: log ends at %d, before the committed offset %d", p, off, next)
		}
		for i := range msgs {
			if msgs[i].Offset >= next {
				break
			}
			off = msgs[i].Offset + 1
			if ev.Decode(msgs[i].Value) == nil && ev.Type == event.TypeImpression && ev.Invalid == event.ReasonNone {
				win.Observe(xxhash.Sum64String(ev.Key()), ev.RecvTime)
			}
		}
	}
	return win, nil
}
