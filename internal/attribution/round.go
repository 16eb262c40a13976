package attribution

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/cockroachdb/pebble"
)

// maxExpirePerRound bounds the keys one round forgets, so a long pause does not make one
// huge batch.
const maxExpirePerRound = 10_000

// round is one atomic step: what every partition has past its committed offset, processed
// in a merged order (append time, partition, offset) in one indexed batch, so later events
// of the round see the earlier ones.
type round struct {
	b      *pebble.Batch
	it     *pebble.Iterator // reused for every scan of the round (creating one costs more than the scan)
	ranges map[int]int64
	deltas []metricstore.Delta
	st     Stats // this round's counts, added to the stage's after the commit
}

func (s *Stage) round(ctx context.Context) (int, error) {
	start := time.Now()
	s.refs = s.refs[:0]
	if s.sh != nil {
		s.sh.replayDone(s.next)
	}
	for p := range s.next {
		if s.sh != nil && !s.sh.wants(p, s.next[p]) {
			s.got[p] = nil
			continue
		}
		src := &s.src[p]
		msgs, err := src.log.Read(ctx, src.part, s.next[p], s.o.ReadBytes)
		if err != nil {
			return 0, fmt.Errorf("attribution: read partition %d at %d: %w", src.part, s.next[p], err)
		}
		s.got[p] = msgs
	}
	if s.sh != nil {
		s.sh.trim(s.got)
	}
	for p, msgs := range s.got {
		for i := range msgs {
			s.refs = append(s.refs, msgRef{p, i})
		}
	}
	slices.SortFunc(s.refs, func(a, b msgRef) int {
		ma, mb := &s.got[a.part][a.i], &s.got[b.part][b.i]
		if c := ma.Time.Compare(mb.Time); c != 0 {
			return c
		}
		if c := cmp.Compare(a.part, b.part); c != 0 {
			return c
		}
		return cmp.Compare(ma.Offset, mb.Offset)
	})
	r := &round{b: s.db.NewIndexedBatch(), ranges: make(map[int]int64)}
	defer r.close()
	clock := s.clock
	for _, ref := range s.refs {
		m := &s.got[ref.part][ref.i]
		if err := s.process(r, ref.part, m); err != nil {
			return 0, err
		}
		r.ranges[ref.part] = m.Offset + 1
		if s.src[ref.part].only != takeTouches {
			// The touches topic's append times are when a touch was republished, which
			// may be long after it reached the log (a republisher that lags or restarts):
			// they would forget touches that conversions not yet read still need.
			clock = max(clock, m.Time.UnixMicro())
		}
	}
	n := len(s.refs)
	for p := range s.got {
		s.got[p] = nil
	}
	expired, err := s.expire(r, clock)
	if err != nil {
		return 0, err
	}
	if n == 0 && !expired {
		return 0, s.lag(ctx)
	}
	if s.sh != nil {
		err = s.commitShared(ctx, r)
	} else {
		err = s.commit(r)
	}
	if err != nil {
		return 0, err
	}
	s.clock = clock
	r.st.LastRoundMicros = time.Since(start).Microseconds()
	s.addStats(&r.st)
	return n, s.lag(ctx)
}

// scan positions the round's iterator on [lo, hi), seeing every write of the round so far
// (SetOptions refreshes an indexed batch's view). lo and hi must not change afterwards.
func (r *round) scan(lo, hi []byte) (*pebble.Iterator, error) {
	o := &pebble.IterOptions{LowerBound: lo, UpperBound: hi}
	if r.it == nil {
		it, err := r.b.NewIter(o)
		if err != nil {
			return nil, err
		}
		r.it = it
		return it, nil
	}
	r.it.SetOptions(o)
	return r.it, nil
}

func (r *round) close() {
	if r.it != nil {
		r.it.Close()
	}
	r.b.Close()
}

func (s *Stage) process(r *round, src int, m *eventlog.Message) error {
	r.st.EventsConsumed++
	ev := &s.ev
	part, only := s.src[src].part, s.src[src].only
	if err := ev.Decode(m.Value); err != nil {
		r.st.Corrupt++
		s.o.Logger.Warn("attribution: undecodable message skipped", "partition", part, "offset", m.Offset, "err", err)
		return nil
	}
	if !attributable(ev) {
		return nil
	}
	switch {
	case ev.Type == event.TypeConversion:
		if only == takeTouches {
			return nil
		}
		return s.convert(r, part, m.Offset, ev)
	case only == takeConversions:
		return nil // its touches reach the stage through the touches topic
	case ev.Invalid != event.ReasonNone:
		return nil
	case ev.Type == event.TypeClick:
		return s.touch(r, ev, KindClick)
	case ev.Type == event.TypeImpression:
		return s.touch(r, ev, KindView)
	}
	return nil
}

// attributable reports whether an event can be a touch or a conversion at all: it names a
// user and a catalog.
func attributable(ev *event.Event) bool {
	return ev.Time > 0 && ev.UserID != "" && ev.CatalogID != "" && event.ValidID(ev.UserID) && event.ValidID(ev.CatalogID)
}

// touches reads a user's remembered touches on a catalog, oldest first, with their keys.
func (s *Stage) touches(r *round, user, catalog string) ([]Touch, [][]byte, error) {
	prefix := userCatalog(prefixTouch, user, catalog)
	it, err := r.scan(prefix, prefixEnd(prefix))
	if err != nil {
		return nil, nil, fmt.Errorf("attribution: iterate touches: %w", err)
	}
	var ts []Touch
	var keys [][]byte
	for it.First(); it.Valid(); it.Next() {
		t, err := decodeTouch(it.Value())
		if err != nil {
			return nil, nil, fmt.Errorf("attribution: touch %q: %w", it.Key(), err)
		}
		ts = append(ts, t)
		keys = append(keys, slices.Clone(it.Key()))
	}
	return ts, keys, it.Error()
}

// touch remembers a valid click or impression and moves the credit of the user's
// conversions that it beats (a late touch).
func (s *Stage) touch(r *round, ev *event.Event, kind TouchKind) error {
	t := Touch{Kind: kind, Time: ev.Time, Key: ev.Key(), AdID: ev.AdID, CampaignID: ev.CampaignID, AdvertiserID: ev.AdvertiserID}
	ts, keys, err := s.touches(r, ev.UserID, ev.CatalogID)
	if err != nil {
		return err
	}
	for i := range ts {
		if ts[i].Key == t.Key {
			r.st.DuplicateTouches++
			return nil
		}
	}
	if len(ts) >= s.o.MaxTouches {
		// Forget the oldest (which may be this one).
		if t.Time < ts[0].Time || (t.Time == ts[0].Time && t.Key < ts[0].Key) {
			r.st.TouchesEvicted++
			return nil
		}
		if err := r.b.Delete(keys[0], nil); err != nil {
			return err
		}
		if err := r.b.Delete(touchTimeKey(ev.UserID, ev.CatalogID, ts[0].Time, ts[0].Key), nil); err != nil {
			return err
		}
		ts = ts[1:]
		r.st.TouchesEvicted++
	}
	if err := r.b.Set(touchKey(ev.UserID, ev.CatalogID, t.Time, t.Key), encodeTouch(&t), nil); err != nil {
		return err
	}
	if err := r.b.Set(touchTimeKey(ev.UserID, ev.CatalogID, t.Time, t.Key), nil, nil); err != nil {
		return err
	}
	r.st.Touches++
	ts = append(ts, t)
	return s.reconsider(r, ev.UserID, ev.CatalogID, t.Time, ts)
}

// reconsider re-decides the user's conversions on the catalog that a touch at time t could
// be credited with (conversion time in [t, t+horizon)), given every touch now remembered.
func (s *Stage) reconsider(r *round, user, catalog string, t int64, ts []Touch) error {
	prefix := userCatalog(prefixUserConv, user, catalog)
	lo := binaryTime(prefix, t)
	hi := binaryTime(prefix, t+s.o.Policy.Horizon().Microseconds())
	it, err := r.scan(lo, hi)
	if err != nil {
		return fmt.Errorf("attribution: iterate conversions: %w", err)
	}
	var convKeys []string
	for it.First(); it.Valid(); it.Next() {
		convKeys = append(convKeys, string(it.Key()[len(prefix)+8:]))
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("attribution: iterate conversions: %w", err)
	}
	for _, ck := range convKeys {
		v, closer, err := r.b.Get(conversionKey(ck))
		if errors.Is(err, pebble.ErrNotFound) {
			continue // forgotten by retention in this very round
		}
		if err != nil {
			return fmt.Errorf("attribution: read conversion: %w", err)
		}
		c, err := decodeConversion(v)
		closer.Close()
		if err != nil {
			return fmt.Errorf("attribution: conversion %q: %w", ck, err)
		}
		// The credited touch competes even if it was forgotten since: adding a touch to the
		// set can only move the credit to that touch, and a late touch (in shared
		// processing, one republished late) must not take the credit from a touch it does
		// not beat just because that one is no longer remembered.
		cand := ts
		if c.Credited && !slices.ContainsFunc(ts, func(x Touch) bool { return x.Key == c.Touch.Key }) {
			cand = append(slices.Clip(ts), c.Touch)
		}
		i, reason := s.o.Policy.Choose(c.Time, cand)
		same := (i < 0 && !c.Credited) || (i >= 0 && c.Credited && cand[i].Key == c.Touch.Key)
		if same {
			continue
		}
		if c.Credited {
			r.credit(&c, -1)
		}
		c.Credited, c.Reason, c.Touch, c.Touches = i >= 0, reason, Touch{}, len(ts)
		if i >= 0 {
			c.Touch = cand[i]
			r.credit(&c, +1)
		}
		c.Revisions++
		r.st.Reattributed++
		if err := r.b.Set(conversionKey(ck), encodeConversion(&c), nil); err != nil {
			return err
		}
	}
	return nil
}

func binaryTime(prefix []byte, t int64) []byte {
	b := append([]byte(nil), prefix...)
	return append(b, byte(t>>56), byte(t>>48), byte(t>>40), byte(t>>32), byte(t>>24), byte(t>>16), byte(t>>8), byte(t))
}

// convert decides a conversion seen for the first time.
func (s *Stage) convert(r *round, part int, offset int64, ev *event.Event) error {
	key := ev.Key()
	_, closer, err := r.b.Get(conversionKey(key))
	switch {
	case err == nil:
		closer.Close()
		r.st.DuplicateConversions++
		return nil
	case !errors.Is(err, pebble.ErrNotFound):
		return fmt.Errorf("attribution: read conversion: %w", err)
	}
	ts, _, err := s.touches(r, ev.UserID, ev.CatalogID)
	if err != nil {
		return err
	}
	c := Conversion{
		Key: key, EventID: ev.EventID, Name: ev.Name, UserID: ev.UserID, CatalogID: ev.CatalogID,
		Time: ev.Time, ValueMicros: ev.ValueMicros, Partition: int32(part), Offset: offset, Touches: len(ts),
	}
	i, reason := s.o.Policy.Choose(c.Time, ts)
	r.st.Conversions++
	if i >= 0 {
		c.Credited, c.Touch = true, ts[i]
		r.credit(&c, +1)
	} else {
		c.Reason = reason
		r.st.Uncredited++
	}
	if err := r.b.Set(conversionKey(key), encodeConversion(&c), nil); err != nil {
		return err
	}
	if err := r.b.Set(userConvKey(c.UserID, c.CatalogID, c.Time, key), nil, nil); err != nil {
		return err
	}
	return r.b.Set(convTimeKey(c.Time, key), nil, nil)
}

// credit adds (sign +1) or takes back (-1) a credited conversion at its touch's ad, campaign
// and advertiser, in the conversion's minute.
func (r *round) credit(c *Conversion, sign int64) {
	d := metricstore.Counts{Conversions: sign, ConversionValueMicros: sign * c.ValueMicros}
	if c.Touch.Kind == KindView {
		d.ViewConversions, d.ViewConversionValueMicros = d.Conversions, d.ConversionValueMicros
	}
	if sign > 0 {
		if c.Touch.Kind == KindView {
			r.st.CreditedView++
		} else {
			r.st.CreditedClick++
		}
	}
	minute := c.Time / 60e6
	for _, x := range [...]struct {
		l  metricstore.Level
		id string
	}{{metricstore.LevelAd, c.Touch.AdID}, {metricstore.LevelCampaign, c.Touch.CampaignID}, {metricstore.LevelAdvertiser, c.Touch.AdvertiserID}} {
		if x.id == "" || !event.ValidID(x.id) {
			continue
		}
		r.deltas = append(r.deltas, metricstore.Delta{Level: x.l, ID: x.id, Minute: minute, Counts: d})
	}
}

// expire forgets touches no acceptable conversion can be credited to, and decisions past
// their retention. Times come from the log (the latest append time), so a replay forgets the
// same things.
func (s *Stage) expire(r *round, clock int64) (bool, error) {
	if clock == 0 {
		return false, nil
	}
	n := 0
	touchCutoff := clock - (s.o.MaxLateness + s.o.Slack + s.o.Policy.Horizon()).Microseconds()
	if touchCutoff > 0 {
		it, err := r.b.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixTouchTime}, UpperBound: binaryTime([]byte{prefixTouchTime}, touchCutoff)})
		if err != nil {
			return false, err
		}
		for it.First(); it.Valid() && n < maxExpirePerRound; it.Next() {
			tk, ok := touchKeyFromTime(it.Key())
			if !ok {
				it.Close()
				return false, fmt.Errorf("attribution: bad touch time key %q", it.Key())
			}
			if err := errors.Join(r.b.Delete(slices.Clone(it.Key()), nil), r.b.Delete(tk, nil)); err != nil {
				it.Close()
				return false, err
			}
			n++
			r.st.TouchesExpired++
		}
		if err := errors.Join(it.Error(), it.Close()); err != nil {
			return false, err
		}
	}
	convCutoff := clock - s.o.ConversionRetention.Microseconds()
	if convCutoff > 0 {
		it, err := r.b.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixConvTime}, UpperBound: binaryTime([]byte{prefixConvTime}, convCutoff)})
		if err != nil {
			return false, err
		}
		var doomed [][]byte
		for it.First(); it.Valid() && n < maxExpirePerRound; it.Next() {
			doomed = append(doomed, slices.Clone(it.Key()))
			n++
		}
		if err := errors.Join(it.Error(), it.Close()); err != nil {
			return false, err
		}
		for _, y := range doomed {
			key := string(y[9:])
			v, closer, err := r.b.Get(conversionKey(key))
			if err == nil {
				c, derr := decodeConversion(v)
				closer.Close()
				if derr != nil {
					return false, derr
				}
				if err := r.b.Delete(userConvKey(c.UserID, c.CatalogID, c.Time, key), nil); err != nil {
					return false, err
				}
			} else if !errors.Is(err, pebble.ErrNotFound) {
				return false, err
			}
			if err := errors.Join(r.b.Delete(conversionKey(key), nil), r.b.Delete(y, nil)); err != nil {
				return false, err
			}
			r.st.ConversionsExpired++
		}
	}
	return n > 0, nil
}

// commit writes the round: state, offsets and the journal entry, with sync.
func (s *Stage) commit(r *round) error {
	for p, next := range r.ranges {
		if err := r.b.Set(offsetKey(p), enc(nil).num(next), nil); err != nil {
			return err
		}
	}
	seq := s.journalNext
	deltas := mergeDeltas(r.deltas)
	if len(deltas) > 0 {
		if err := r.b.Set(journalKey(seq), encodeDeltas(deltas), nil); err != nil {
			return err
		}
		seq++
		if err := r.b.Set([]byte(keyJournalNext), enc(nil).num(int64(seq)), nil); err != nil {
			return err
		}
	}
	if err := hook(s.hooksFn(func(h *testHooks) func() error { return h.beforeCommit })); err != nil {
		return err
	}
	if err := r.b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("attribution: commit: %w", err)
	}
	for p, next := range r.ranges {
		s.next[p] = next
	}
	s.journalNext = seq
	r.st.Commits++
	return hook(s.hooksFn(func(h *testHooks) func() error { return h.afterCommit }))
}

func (s *Stage) hooksFn(pick func(*testHooks) func() error) func() error {
	if s.o.hooks == nil {
		return nil
	}
	return pick(s.o.hooks)
}

func (s *Stage) addStats(d *Stats) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &s.stats
	st.EventsConsumed += d.EventsConsumed
	st.Corrupt += d.Corrupt
	st.Touches += d.Touches
	st.DuplicateTouches += d.DuplicateTouches
	st.TouchesEvicted += d.TouchesEvicted
	st.TouchesExpired += d.TouchesExpired
	st.Conversions += d.Conversions
	st.DuplicateConversions += d.DuplicateConversions
	st.CreditedClick += d.CreditedClick
	st.CreditedView += d.CreditedView
	st.Uncredited += d.Uncredited
	st.Reattributed += d.Reattributed
	st.ConversionsExpired += d.ConversionsExpired
	st.Commits += d.Commits
	st.LastRoundMicros = d.LastRoundMicros
	st.JournalNext = s.journalNext
}

// lag records each partition's committed offset and end.
func (s *Stage) lag(ctx context.Context) error {
	if time.Since(s.lagAt) < time.Second {
		return nil
	}
	s.lagAt = time.Now()
	ps := make([]PartitionStats, len(s.next))
	for p := range s.next {
		src := &s.src[p]
		_, end, err := src.log.Offsets(ctx, src.part)
		if err != nil {
			return fmt.Errorf("attribution: offsets of partition %d: %w", src.part, err)
		}
		ps[p] = PartitionStats{Partition: src.part, Touches: src.only == takeTouches, Committed: s.next[p], End: end, Lag: max(0, end-s.next[p])}
	}
	s.mu.Lock()
	s.stats.Partitions = ps
	s.mu.Unlock()
	return nil
}
