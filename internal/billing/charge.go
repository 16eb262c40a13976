package billing

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/dedup"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/cespare/xxhash/v2"
	"github.com/cockroachdb/pebble"
)

// writer is the one goroutine that changes billing state: it consumes the log in rounds and
// serves refunds between rounds. Its caches hold committed values plus the changes of the
// round being built; a failed commit ends Run, so they never outlive a lost round.
type writer struct {
	c  *Charger
	o  *Options
	db *pebble.DB

	next        []int64 // per partition: next offset to consume (committed)
	journalNext uint64

	daySpend   map[spendKey]int64
	totalSpend map[string]int64
	known      map[string]struct{}

	profile        trafficProfile
	profileDirty   bool
	publishedDay   uint32 // profile day whose curve the pacer has
	viewsDeletedTo uint32 // views of days before it were deleted by this process

	// viewDups is per partition the duplicate filter of impressions (nil when off).
	viewDups []*dedup.Window

	ev   event.Event
	refs []msgRef
	got  [][]eventlog.Message
}

type spendKey struct {
	campaign string
	day      int64 // the budget day's start, Unix seconds
}

// maxCachedSpend bounds the spend caches; they are dropped (and refilled from disk) past it.
const maxCachedSpend = 1 << 16

func newWriter(ctx context.Context, c *Charger) (*writer, error) {
	w := &writer{
		c: c, o: &c.opts, db: c.db,
		next:       make([]int64, c.opts.Log.Partitions()),
		daySpend:   make(map[spendKey]int64),
		totalSpend: make(map[string]int64),
		known:      make(map[string]struct{}),
		got:        make([][]eventlog.Message, c.opts.Log.Partitions()),
	}
	for p := range w.next {
		start, end, err := c.opts.Log.Offsets(ctx, p)
		if err != nil {
			return nil, fmt.Errorf("offsets of partition %d: %w", p, err)
		}
		next, ok, err := w.getUvarint(offsetKey(p))
		if err != nil {
			return nil, fmt.Errorf("read offset of partition %d: %w", p, err)
		}
		if !ok {
			next = start
		}
		if next < start {
			// Clicks were deleted by log retention before they were charged: spend can no
			// longer be exact, and only an operator can decide what to do about it.
			return nil, fmt.Errorf("billing: partition %d: committed offset %d is before the log's first retained offset %d: %w", p, next, start, eventlog.ErrOffsetOutOfRange)
		}
		if next > end {
			return nil, fmt.Errorf("billing: partition %d: committed offset %d is past the log's end %d (was the log replaced?): %w", p, next, end, eventlog.ErrOffsetOutOfRange)
		}
		w.next[p] = next
	}
	if err := w.rebuildViewDups(ctx); err != nil {
		return nil, err
	}
	if err := w.migrateDates(); err != nil {
		return nil, err
	}
	jn, _, err := w.getUvarint(keyJournalNext)
	if err != nil {
		return nil, fmt.Errorf("read journal seq: %w", err)
	}
	w.journalNext = uint64(jn)
	if err := w.loadProfile(); err != nil {
		return nil, err
	}
	if err := w.loadKnown(); err != nil {
		return nil, err
	}
	c.pacer.setCurve(w.profile.curve())
	w.publishedDay = w.profile.Day
	return w, nil
}

func (w *writer) getUvarint(key []byte) (int64, bool, error) {
	v, closer, err := w.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	defer closer.Close()
	n, k := binary.Uvarint(v)
	if k <= 0 || k != len(v) || n > math.MaxInt64 {
		return 0, false, fmt.Errorf("%w: key %q value %x", errCorrupt, key, v)
	}
	return int64(n), true, nil
}

func getInt(r pebble.Reader, key []byte) (int64, error) {
	v, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer closer.Close()
	return decodeInt(v)
}

func (w *writer) loadProfile() error {
	v, closer, err := w.db.Get(keyProfile)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read traffic profile: %w", err)
	}
	defer closer.Close()
	if err := w.profile.decode(v); err != nil {
		return err
	}
	return nil
}

func (w *writer) loadKnown() error {
	it, err := w.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixKnown}, UpperBound: []byte{prefixKnown + 1}})
	if err != nil {
		return fmt.Errorf("read known campaigns: %w", err)
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		w.known[string(it.Key()[1:])] = struct{}{}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("read known campaigns: %w", err)
	}
	w.c.mu.Lock()
	for id := range w.known {
		w.c.known[id] = struct{}{}
	}
	w.c.mu.Unlock()
	return nil
}

// run is the writer's loop: refunds first (someone is waiting for each), then a round of
// every partition; it sleeps when caught up.
func (w *writer) run(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		for drained := false; !drained; {
			select {
			case req := <-w.c.refunds:
				if err := w.serveRefund(req); err != nil {
					return err
				}
			default:
				drained = true
			}
		}
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
		case req := <-w.c.refunds:
			timer.Stop()
			if err := w.serveRefund(req); err != nil {
				return err
			}
		case <-timer.C:
		}
	}
}

// batchState is one atomic write being built: a round of the log or a refund.
type batchState struct {
	batch    *pebble.Batch
	ranges   map[int]int64 // partition -> new next offset
	clicks   map[string]struct{}
	days     map[spendKey]struct{}
	totals   map[string]struct{}
	views    map[string]int64
	deltas   map[deltaKey]int64
	newKnown []string
	expire   uint32 // delete views of days before it; 0: none

	consumed, corrupt, charged, micros, partial, dups, viewsCounted, viewDups int64
	zero                                                                      [len(zeroReasonNames)]int64
	refunds, refunded                                                         int64
}

func (w *writer) newBatch() *batchState {
	return &batchState{
		batch:  w.db.NewBatch(),
		ranges: make(map[int]int64),
		clicks: make(map[string]struct{}),
		days:   make(map[spendKey]struct{}),
		totals: make(map[string]struct{}),
		views:  make(map[string]int64),
		deltas: make(map[deltaKey]int64),
	}
}

type msgRef struct {
	part int
	i    int
}

// round reads what every partition has past its committed offset, processes the messages in
// a deterministic merged order and commits the result. It returns how many messages it
// processed.
func (w *writer) round(ctx context.Context) (int, error) {
	w.refs = w.refs[:0]
	for p := range w.next {
		msgs, err := w.o.Log.Read(ctx, p, w.next[p], w.o.ReadBytes)
		if err != nil {
			return 0, fmt.Errorf("read partition %d at %d: %w", p, w.next[p], err)
		}
		w.got[p] = msgs
		for i := range msgs {
			w.refs = append(w.refs, msgRef{p, i})
		}
	}
	// One merged order for all partitions: the charge decisions (who gets a budget's last
	// micros) then depend only on the log, not on read timing.
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
	b := w.newBatch()
	defer b.batch.Close()
	today := dayOf(w.o.Now(), time.UTC)
	cutoff := viewsCutoff(today, w.o.ViewRetentionDays)
	for _, r := range w.refs {
		m := &w.got[r.part][r.i]
		if err := w.process(b, r.part, m, cutoff); err != nil {
			return 0, err
		}
		b.ranges[r.part] = m.Offset + 1
	}
	n := len(w.refs)
	for p := range w.got {
		w.got[p] = nil // let the messages go
	}
	if cutoff > w.viewsDeletedTo {
		b.expire = cutoff
	}
	if n == 0 && b.expire == 0 {
		return 0, nil
	}
	return n, w.commit(b)
}

// viewsCutoff is the first UTC day of views kept.
func viewsCutoff(today uint32, retentionDays int) uint32 {
	if uint32(retentionDays) > today {
		return 0
	}
	return today - uint32(retentionDays) + 1
}

func (w *writer) process(b *batchState, part int, m *eventlog.Message, viewsCutoff uint32) error {
	b.consumed++
	ev := &w.ev
	if err := ev.Decode(m.Value); err != nil {
		b.corrupt++
		w.o.Logger.Warn("billing: undecodable message skipped", "partition", part, "offset", m.Offset, "err", err)
		return nil
	}
	if ev.Invalid != event.ReasonNone || (ev.Type != event.TypeClick && ev.Type != event.TypeImpression) {
		return nil
	}
	if ev.CampaignID != "" && event.ValidID(ev.CampaignID) {
		if _, ok := w.known[ev.CampaignID]; !ok {
			w.known[ev.CampaignID] = struct{}{}
			b.newKnown = append(b.newKnown, ev.CampaignID)
		}
	}
	inRange := ev.Time > 0 && ev.Time < maxEventMicros
	if inRange {
		w.observeTraffic(ev)
	}
	if ev.Type == event.TypeImpression {
		if w.repeatedView(part, ev) {
			b.viewDups++
			return nil
		}
		if inRange && ev.UserID != "" && ev.CatalogID != "" && event.ValidID(ev.UserID) && event.ValidID(ev.CatalogID) {
			day := dayOf(time.UnixMicro(ev.Time), time.UTC)
			if day >= viewsCutoff {
				b.views[string(viewsKey(day, ev.UserID, ev.CatalogID))]++
				b.viewsCounted++
			}
		}
		return nil
	}
	return w.charge(b, part, m.Offset, ev)
}

// observeTraffic adds a valid event to the traffic profile at its advertiser's local time of
// day: the shape pacing spreads budgets along.
func (w *writer) observeTraffic(ev *event.Event) {
	loc := w.c.zoneAt(ev.AdvertiserID, time.UnixMicro(ev.Time))
	secs := ev.Time / 1e6
	w.profile.observe(uint32(secs/86400), secs%86400, slotOf(time.UnixMicro(ev.Time).In(loc)))
	w.profileDirty = true
}

// charge decides and records one valid click.
func (w *writer) charge(b *batchState, part int, offset int64, ev *event.Event) error {
	key := ev.Key()
	if _, dup := b.clicks[key]; dup {
		b.dups++
		return nil
	}
	_, closer, err := w.db.Get(ledgerKey(key))
	switch {
	case err == nil:
		closer.Close()
		b.dups++
		return nil
	case !errors.Is(err, pebble.ErrNotFound):
		return fmt.Errorf("read ledger: %w", err)
	}
	e := ledgerEntry{
		State: stateCharged, Time: ev.Time, Partition: int32(part), Offset: offset,
		CampaignID: ev.CampaignID, AdID: ev.AdID, AdvertiserID: ev.AdvertiserID,
	}
	if err := w.decide(&e, ev); err != nil {
		return err
	}
	b.clicks[key] = struct{}{}
	if err := b.batch.Set(ledgerKey(key), encodeLedger(nil, &e), nil); err != nil {
		return fmt.Errorf("batch set ledger: %w", err)
	}
	if e.ChargedMicros == 0 {
		b.zero[e.Reason]++
		return nil
	}
	b.charged++
	b.micros += e.ChargedMicros
	if e.Reason != reasonNone {
		b.partial++
	}
	if err := w.addSpend(b, e.CampaignID, e.DayStart, e.ChargedMicros); err != nil {
		return err
	}
	addDeltas(b, &e, e.ChargedMicros)
	return nil
}

// decide fills e's day, price, charge and reason. It is the charging rule of API.md.
func (w *writer) decide(e *ledgerEntry, ev *event.Event) error {
	if ev.Time <= 0 || ev.Time >= maxEventMicros {
		e.Reason = reasonBadTime
		return nil
	}
	camp, ok := w.o.Catalog.Campaign(ev.CampaignID)
	if !ok {
		e.Reason = reasonUnknownCampaign
		return nil
	}
	t := time.UnixMicro(ev.Time)
	day := w.c.budgetDayOf(camp.AdvertiserID, t)
	e.Day, e.DayStart = day.Label, day.Start.Unix()
	price := ev.PriceMicros
	if price <= 0 {
		ad, ok := w.o.Catalog.Ad(ev.AdID)
		if !ok {
			e.Reason = reasonUnknownAd
			return nil
		}
		price = ad.CPCBidMicros
	}
	e.PriceMicros = price
	switch {
	case camp.Status == catalog.StatusPaused:
		e.Reason = reasonPaused
		return nil
	case !camp.EndTime.IsZero() && !t.Before(camp.EndTime):
		e.Reason = reasonEnded
		return nil
	case !camp.StartTime.IsZero() && t.Before(camp.StartTime):
		e.Reason = reasonNotStarted
		return nil
	case price <= 0:
		e.Reason = reasonZeroPrice
		return nil
	case price > catalog.MaxMicros:
		e.Reason = reasonBadPrice
		return nil
	}
	charge := price
	if camp.DailyBudgetMicros > 0 {
		spent, err := w.daySpent(spendKey{camp.CampaignID, e.DayStart})
		if err != nil {
			return err
		}
		if rem := max(0, camp.DailyBudgetMicros-spent); rem < charge {
			charge, e.Reason = rem, reasonDailyBudget
		}
	}
	total, err := w.totalSpent(camp.CampaignID)
	if err != nil {
		return err
	}
	if camp.TotalBudgetMicros > 0 {
		if rem := max(0, camp.TotalBudgetMicros-total); rem < charge {
			charge, e.Reason = rem, reasonTotalBudget
		}
	}
	if charge > 0 && total > math.MaxInt64-charge {
		charge, e.Reason = 0, reasonOverflow
	}
	e.ChargedMicros = charge
	return nil
}

func (w *writer) daySpent(k spendKey) (int64, error) {
	if v, ok := w.daySpend[k]; ok {
		return v, nil
	}
	v, err := getInt(w.db, dayKey(k.campaign, k.day))
	if err != nil {
		return 0, fmt.Errorf("read spend of %s on the day from %s: %w", k.campaign, dayStartString(k.day), err)
	}
	w.daySpend[k] = v
	return v, nil
}

func (w *writer) totalSpent(campaign string) (int64, error) {
	if v, ok := w.totalSpend[campaign]; ok {
		return v, nil
	}
	v, err := getInt(w.db, totalKey(campaign))
	if err != nil {
		return 0, fmt.Errorf("read total spend of %s: %w", campaign, err)
	}
	w.totalSpend[campaign] = v
	return v, nil
}

// addSpend adds micros (negative for a refund) to a campaign's budget day (by its start) and
// total. It loads both first: a campaign without a daily budget was charged without reading
// its day.
func (w *writer) addSpend(b *batchState, campaign string, day int64, micros int64) error {
	k := spendKey{campaign, day}
	if _, err := w.daySpent(k); err != nil {
		return err
	}
	if _, err := w.totalSpent(campaign); err != nil {
		return err
	}
	w.daySpend[k] += micros
	w.totalSpend[campaign] += micros
	b.days[k] = struct{}{}
	b.totals[campaign] = struct{}{}
	return nil
}

// addDeltas adds micros of spend at the click's event-time minute, at every level: a refund
// too, so the click's buckets net out (see the package comment on retention).
func addDeltas(b *batchState, e *ledgerEntry, micros int64) {
	minute := e.Time / 60e6
	for _, d := range [...]deltaKey{
		{metricstore.LevelAd, e.AdID, minute},
		{metricstore.LevelCampaign, e.CampaignID, minute},
		{metricstore.LevelAdvertiser, e.AdvertiserID, minute},
	} {
		if d.id != "" {
			b.deltas[d] += micros
		}
	}
}

// commit writes b as one synced Pebble batch, then publishes what it changed.
func (w *writer) commit(b *batchState) error {
	wb := b.batch
	for p, next := range b.ranges {
		if err := wb.Set(offsetKey(p), binary.AppendUvarint(nil, uint64(next)), nil); err != nil {
			return fmt.Errorf("batch set offset: %w", err)
		}
	}
	for k := range b.days {
		v := w.daySpend[k]
		if v < 0 {
			return fmt.Errorf("billing: spend of %s on the day from %s would become %d", k.campaign, dayStartString(k.day), v)
		}
		if err := wb.Set(dayKey(k.campaign, k.day), appendInt(nil, v), nil); err != nil {
			return fmt.Errorf("batch set spend: %w", err)
		}
	}
	for id := range b.totals {
		v := w.totalSpend[id]
		if v < 0 {
			return fmt.Errorf("billing: total spend of %s would become %d", id, v)
		}
		if err := wb.Set(totalKey(id), appendInt(nil, v), nil); err != nil {
			return fmt.Errorf("batch set total spend: %w", err)
		}
	}
	var views []ViewCount // the committed totals, for OnViews
	for k, n := range b.views {
		cur, err := getInt(w.db, []byte(k))
		if err != nil {
			return fmt.Errorf("read views: %w", err)
		}
		if err := wb.Set([]byte(k), appendInt(nil, cur+n), nil); err != nil {
			return fmt.Errorf("batch set views: %w", err)
		}
		if w.o.OnViews != nil {
			day, user, cat, _ := parseViewsKey([]byte(k))
			views = append(views, ViewCount{Day: dayTime(day), UserID: user, CatalogID: cat, Count: cur + n})
		}
	}
	if b.expire > 0 {
		if err := wb.DeleteRange(viewsDayBound(0), viewsDayBound(b.expire), nil); err != nil {
			return fmt.Errorf("batch expire views: %w", err)
		}
	}
	for _, id := range b.newKnown {
		if err := wb.Set(knownKey(id), nil, nil); err != nil {
			return fmt.Errorf("batch set known campaign: %w", err)
		}
	}
	if w.profileDirty {
		if err := wb.Set(keyProfile, w.profile.encode(), nil); err != nil {
			return fmt.Errorf("batch set profile: %w", err)
		}
	}
	for k, v := range b.deltas {
		if v == 0 {
			delete(b.deltas, k)
		}
	}
	journal := len(b.deltas) > 0
	if journal {
		if err := wb.Set(journalKey(w.journalNext), encodeJournal(b.deltas), nil); err != nil {
			return fmt.Errorf("batch set journal: %w", err)
		}
		if err := wb.Set(keyJournalNext, binary.AppendUvarint(nil, w.journalNext+1), nil); err != nil {
			return fmt.Errorf("batch set journal seq: %w", err)
		}
	}
	if h := w.o.hooks; h != nil && h.beforeCommit != nil {
		if err := h.beforeCommit(); err != nil {
			return err
		}
	}
	start := time.Now()
	if err := wb.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("commit billing batch: %w", err)
	}
	lat := time.Since(start)

	// Committed: from here on nothing may fail the round.
	w.profileDirty = false
	for p, next := range b.ranges {
		w.next[p] = next
	}
	if b.expire > 0 {
		w.viewsDeletedTo = b.expire
	}
	if journal {
		w.journalNext++
		w.c.journalNext.Store(w.journalNext)
	}
	w.c.recordBatch(b, lat, w.next)
	if len(views) > 0 {
		w.o.OnViews(views)
	}
	if journal {
		select {
		case w.c.kick <- struct{}{}:
		default:
		}
	}
	if len(w.daySpend) > maxCachedSpend {
		clear(w.daySpend)
	}
	if len(w.totalSpend) > maxCachedSpend {
		clear(w.totalSpend)
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

// recordBatch adds a committed batch to the stats.
func (c *Charger) recordBatch(b *batchState, lat time.Duration, next []int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := &c.stats
	s.EventsConsumed += b.consumed
	s.Corrupt += b.corrupt
	s.ClicksCharged += b.charged
	s.MicrosCharged += b.micros
	s.PartialCharges += b.partial
	s.DuplicateClicks += b.dups
	s.ViewsCounted += b.viewsCounted
	s.ViewDuplicates += b.viewDups
	s.Refunds += b.refunds
	s.MicrosRefunded += b.refunded
	for r, n := range b.zero {
		if n != 0 {
			s.ZeroCharge[zeroReason(r).String()] += n
		}
	}
	s.Commits++
	s.LastCommitLatency = lat
	s.MaxCommitLatency = max(s.MaxCommitLatency, lat)
	s.TotalCommitLatency += lat
	copy(c.committed, next)
	for _, id := range b.newKnown {
		c.known[id] = struct{}{}
	}
}

// Refunds.

// Refund is the outcome of crediting a click back.
type Refund struct {
	Click
	// RefundedMicros is what this call credited: the click's charge the first time, 0 when it
	// was already refunded.
	RefundedMicros  int64 `json:"refunded_micros"`
	AlreadyRefunded bool  `json:"already_refunded"`
}

type refundReq struct {
	id    string // as the client sent it
	reply chan refundReply
}

type refundReply struct {
	r   Refund
	err error
}

// Refund marks the valid click named id invalid and credits its charge back: the ledger
// entry flips to refunded, and the campaign's spend (the click's budget day and total) and
// spend_micros in the metric store decrease by exactly what it was charged. id is the click's
// idempotency key as the client sent it (see clickKeys). Refunding again changes nothing. A
// click not charged yet (unknown, or not consumed yet) is ErrNotFound. The writer does the
// refund, so Run must be running.
func (c *Charger) Refund(ctx context.Context, id string) (Refund, error) {
	req := &refundReq{id: id, reply: make(chan refundReply, 1)}
	select {
	case c.refunds <- req:
	case <-ctx.Done():
		return Refund{}, ctx.Err()
	case <-c.done:
		return Refund{}, ErrNotRunning
	case <-c.abort:
		return Refund{}, ErrClosed
	}
	// The writer answers every request it took, even when it fails.
	rep := <-req.reply
	return rep.r, rep.err
}

// serveRefund does one refund and answers it. It returns an error only when the writer must
// stop (a failed commit).
func (w *writer) serveRefund(req *refundReq) error {
	r, err, fatal := w.refund(req.id)
	req.reply <- refundReply{r, err}
	if fatal {
		return err
	}
	return nil
}

func (w *writer) refund(id string) (r Refund, err error, fatal bool) {
	key, e, err := findClick(w.db, id)
	if errors.Is(err, ErrNotFound) {
		return r, err, false
	}
	if err != nil {
		return r, err, true
	}
	if e.State == stateRefunded {
		return Refund{Click: clickOut(key, &e), AlreadyRefunded: true}, nil, false
	}
	b := w.newBatch()
	defer b.batch.Close()
	e.State = stateRefunded
	e.RefundedAt = w.o.Now().UnixMicro()
	if err := b.batch.Set(ledgerKey(key), encodeLedger(nil, &e), nil); err != nil {
		return r, fmt.Errorf("batch set ledger: %w", err), true
	}
	if e.ChargedMicros > 0 {
		if e.DayStart == 0 { // a version 1 entry: its day as migrateDates keyed it
			e.DayStart = w.c.legacyDayStart(e.CampaignID, e.Day)
		}
		if err := w.addSpend(b, e.CampaignID, e.DayStart, -e.ChargedMicros); err != nil {
			return r, err, true
		}
		addDeltas(b, &e, -e.ChargedMicros)
		b.refunds, b.refunded = 1, e.ChargedMicros
	}
	if err := w.commit(b); err != nil {
		return r, err, true
	}
	return Refund{Click: clickOut(key, &e), RefundedMicros: e.ChargedMicros}, nil, false
}

// Click is a ledger entry as the API shows it.
type Click struct {
	// ID is the click's idempotency key as sent, what GET /api/v1/clicks/{id} takes: its
	// impression id, or its event_id for a click sent without an impression id.
	ID            string `json:"id"`
	ImpressionID  string `json:"impression_id,omitempty"`
	EventID       string `json:"event_id,omitempty"`
	CampaignID    string `json:"campaign_id"`
	AdID          string `json:"ad_id"`
	AdvertiserID  string `json:"advertiser_id"`
	EventTime     string `json:"event_time"`
	Day           string `json:"day"` // budget day, in the advertiser's time zone
	Status        string `json:"status"`
	PriceMicros   int64  `json:"price_micros"`
	ChargedMicros int64  `json:"charged_micros"`
	// Reason says why it charged less than its price (0 included): paused, ended,
	// daily_budget_exhausted, ...; empty for a full charge.
	Reason     string `json:"reason,omitempty"`
	RefundedAt string `json:"refunded_at,omitempty"`
}

func clickOut(key string, e *ledgerEntry) Click {
	id := key[min(2, len(key)):]
	c := Click{
		ID: id, CampaignID: e.CampaignID, AdID: e.AdID, AdvertiserID: e.AdvertiserID,
		EventTime: time.UnixMicro(e.Time).UTC().Format(time.RFC3339Nano), Status: "charged",
		PriceMicros: e.PriceMicros, ChargedMicros: e.ChargedMicros, Reason: e.Reason.String(),
	}
	if key[0] == 'e' {
		c.EventID = id
	} else {
		c.ImpressionID = id
	}
	if e.Day != 0 {
		c.Day = dayString(e.Day)
	}
	if e.State == stateRefunded {
		c.Status = "refunded"
		c.RefundedAt = time.UnixMicro(e.RefundedAt).UTC().Format(time.RFC3339Nano)
	}
	return c
}

// clickKeys are the ledger keys a click id can name, in the order they are tried. The ledger
// is keyed by event.Key: a click with an impression id is "c:" + impression id (whatever
// event_id came with it), and a click sent with only an event_id is "e:" + event_id. An id
// that is both one click's impression id and another's event_id names the impression's
// click, as it did before event_id clicks could be looked up.
func clickKeys(id string) [2]string {
	return [2]string{
		(&event.Event{Type: event.TypeClick, ImpressionID: id}).Key(),
		(&event.Event{Type: event.TypeClick, EventID: id}).Key(),
	}
}

// findClick reads the ledger entry of the click named id and returns its ledger key.
func findClick(r pebble.Reader, id string) (string, ledgerEntry, error) {
	for _, key := range clickKeys(id) {
		v, closer, err := r.Get(ledgerKey(key))
		if errors.Is(err, pebble.ErrNotFound) {
			continue
		}
		if err != nil {
			return "", ledgerEntry{}, fmt.Errorf("read ledger: %w", err)
		}
		e, err := decodeLedger(v)
		closer.Close()
		return key, e, err
	}
	return "", ledgerEntry{}, ErrNotFound
}

// ClickByID returns the ledger entry of the valid click named id: its impression id, or its
// event_id for a click sent without one.
func (c *Charger) ClickByID(id string) (Click, error) {
	var out Click
	err := c.read(func(r pebble.Reader) error {
		key, e, err := findClick(r, id)
		if err != nil {
			return err
		}
		out = clickOut(key, &e)
		return nil
	})
	return out, err
}

// repeatedView passes a valid impression through its partition's duplicate filter.
func (w *writer) repeatedView(part int, ev *event.Event) bool {
	if w.viewDups == nil {
		return false
	}
	return w.viewDups[part].Observe(xxhash.Sum64String(ev.Key()), ev.RecvTime)
}

// rebuildViewDups feeds each partition's duplicate filter the impressions appended since
// dedup.ReplayFrom of the last consumed message, so it decides as an uninterrupted run would.
func (w *writer) rebuildViewDups(ctx context.Context) error {
	if w.o.DedupSpan < 0 {
		return nil
	}
	span, slack := w.o.DedupSpan.Microseconds(), w.o.Slack.Microseconds()
	w.viewDups = make([]*dedup.Window, len(w.next))
	var ev event.Event
	for p, next := range w.next {
		w.viewDups[p] = dedup.NewWindow(span, slack)
		start, _, err := w.o.Log.Offsets(ctx, p)
		if err != nil {
			return fmt.Errorf("offsets of partition %d: %w", p, err)
		}
		if next <= start {
			continue
		}
		last, err := w.o.Log.Read(ctx, p, next-1, 1)
		if err != nil || len(last) == 0 {
			return fmt.Errorf("billing: read partition %d at %d: %v", p, next-1, err)
		}
		off, err := w.o.Log.OffsetForTime(ctx, p, time.UnixMicro(dedup.ReplayFrom(last[0].Time.UnixMicro(), span, slack)))
		if err != nil {
			return fmt.Errorf("billing: partition %d: %w", p, err)
		}
		for off = max(off, start); off < next; {
			msgs, err := w.o.Log.Read(ctx, p, off, w.o.ReadBytes)
			if err != nil {
				return fmt.Errorf("billing: replay partition %d at %d: %w", p, off, err)
			}
			if len(msgs) == 0 {
				return fmt.Errorf("billing: replay partition %d: log ends at %d, before the committed offset %d", p, off, next)
			}
			for i := range msgs {
				if msgs[i].Offset >= next {
					break
				}
				off = msgs[i].Offset + 1
				if ev.Decode(msgs[i].Value) == nil && ev.Type == event.TypeImpression && ev.Invalid == event.ReasonNone {
					w.viewDups[p].Observe(xxhash.Sum64String(ev.Key()), ev.RecvTime)
				}
			}
		}
	}
	return nil
}
