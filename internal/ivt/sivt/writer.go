package sivt

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/cockroachdb/pebble"
)

// maxEventMicros bounds the event times the metric store holds (as the aggregation does):
// a click outside it was never counted, so it is not moved either.
const maxEventMicros = 16725225600 * 1e6

type msgRef struct {
	part int
	m    *eventlog.Message
}

// round is one atomic write being built.
type round struct {
	batch    *pebble.Batch
	ranges   map[int]int64
	verdicts map[string]struct{} // click keys flagged in this round
	deltas   map[deltaKey]*metricstore.Counts

	consumed, corrupt, dups, judged, late int64
	flagged                               map[event.Reason]int64
	credits                               int64
}

type deltaKey struct {
	level  metricstore.Level
	id     string
	minute int64
}

func (s *Stage) runWriter(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		n, err := s.round(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil // the round was not committed and is replayed at the next start
			}
			return err
		}
		if n > 0 {
			continue
		}
		timer.Reset(s.opts.PollInterval)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		}
	}
}

// round reads every partition past its committed offset, keeps the messages appended at
// least Holdback ago, judges them in the merged order and commits. It returns how many
// messages it processed.
func (s *Stage) round(ctx context.Context) (int, error) {
	watermark := s.opts.Now().Add(-s.opts.Holdback)
	var refs []msgRef
	var lag int64
	for p := range s.next {
		msgs, err := s.opts.Log.Read(ctx, p, s.next[p], s.opts.ReadBytes)
		if err != nil {
			return 0, fmt.Errorf("read partition %d at %d: %w", p, s.next[p], err)
		}
		for i := range msgs {
			if msgs[i].Time.After(watermark) {
				break // it and everything after it wait for a later round
			}
			refs = append(refs, msgRef{p, &msgs[i]})
		}
		if _, end, err := s.opts.Log.Offsets(ctx, p); err == nil {
			lag += max(0, end-s.next[p])
		}
	}
	s.mu.Lock()
	s.lag = lag
	s.mu.Unlock()
	if len(refs) == 0 {
		return 0, nil
	}
	slices.SortFunc(refs, func(a, b msgRef) int {
		return cmp.Or(a.m.Time.Compare(b.m.Time), cmp.Compare(a.part, b.part), cmp.Compare(a.m.Offset, b.m.Offset))
	})
	r := &round{batch: s.db.NewBatch(), ranges: map[int]int64{}, verdicts: map[string]struct{}{},
		deltas: map[deltaKey]*metricstore.Counts{}, flagged: map[event.Reason]int64{}}
	defer r.batch.Close()
	for _, ref := range refs {
		if err := s.process(r, ref.part, ref.m); err != nil {
			return 0, err
		}
		r.ranges[ref.part] = ref.m.Offset + 1
	}
	if err := s.commit(r); err != nil {
		return 0, err
	}
	return len(refs), nil
}

func (s *Stage) process(r *round, part int, m *eventlog.Message) error {
	r.consumed++
	var ev event.Event
	if err := ev.Decode(m.Value); err != nil {
		r.corrupt++
		s.opts.Logger.Warn("sivt: undecodable message skipped", "partition", part, "offset", m.Offset, "err", err)
		return nil
	}
	if s.repeat(part, &ev) {
		r.dups++
		return nil
	}
	if ev.Invalid != event.ReasonNone {
		return nil
	}
	switch ev.Type {
	case event.TypeImpression:
		s.st.impression(&ev)
	case event.TypeClick:
		r.judged++
		key := ev.Key()
		_, flagged := r.verdicts[key]
		if !flagged {
			var err error
			if flagged, err = has(s.db, verdictKey(key)); err != nil {
				return err
			}
		}
		for _, v := range s.st.click(&ev, flagged, true) {
			if err := s.record(r, &v); err != nil {
				return err
			}
		}
	}
	return nil
}

// record adds a verdict to the round: the verdict, its credit (pending) and its metric move.
func (s *Stage) record(r *round, v *Verdict) error {
	c := v.Click
	if _, dup := r.verdicts[v.ClickKey]; dup {
		return nil
	}
	r.verdicts[v.ClickKey] = struct{}{}
	seq := s.creditNext
	s.creditNext++
	reason := v.Reason.String()
	rec := verdictRecord{Reason: reason, Rule: ruleText[reason], Late: v.Late, TriggeredBy: v.TriggeredBy,
		DecidedAt: micros(v.DecidedAt), Evidence: v.Evidence, CreditSeq: seq}
	if err := setJSON(r.batch, verdictKey(v.ClickKey), rec); err != nil {
		return err
	}
	cr := Credit{Seq: seq, ClickID: c.id(), AdID: c.ad.ad, CampaignID: c.ad.campaign, AdvertiserID: c.ad.advertiser,
		EventTime: micros(c.time), Reason: reason, Late: v.Late, DecidedAt: rec.DecidedAt, Status: "pending"}
	if err := setJSON(r.batch, creditKey(c.ad.advertiser, seq), cr); err != nil {
		return err
	}
	if err := setJSON(r.batch, seqKey(prefixPending, seq), pendingCredit{Advertiser: c.ad.advertiser, Seq: seq, ClickID: c.id(), Reason: uint8(v.Reason)}); err != nil {
		return err
	}
	r.credits++
	r.flagged[v.Reason]++
	if v.Late {
		r.late++
	}
	if c.time < 0 || c.time >= maxEventMicros {
		return nil
	}
	minute := c.time / 60e6
	for l, id := range [3]string{c.ad.ad, c.ad.campaign, c.ad.advertiser} {
		if id == "" {
			continue
		}
		k := deltaKey{metricstore.Levels[l], id, minute}
		d := r.deltas[k]
		if d == nil {
			d = &metricstore.Counts{}
			r.deltas[k] = d
		}
		d.Clicks--
		d.AddInvalid(v.Reason, 1)
	}
	return nil
}

// commit writes the round with its offsets and, when it moved clicks, its journal entry.
func (s *Stage) commit(r *round) error {
	b := r.batch
	for p, next := range r.ranges {
		if err := setUint(b, offsetKey(p), uint64(next)); err != nil {
			return err
		}
	}
	journalNext := s.journalNext
	if len(r.deltas) > 0 {
		e := journalEntry{Deltas: make([]metricstore.Delta, 0, len(r.deltas))}
		for k, c := range r.deltas {
			e.Deltas = append(e.Deltas, metricstore.Delta{Level: k.level, ID: k.id, Minute: k.minute, Counts: *c})
		}
		slices.SortFunc(e.Deltas, func(a, b metricstore.Delta) int {
			return cmp.Or(cmp.Compare(a.Level, b.Level), cmp.Compare(a.ID, b.ID), cmp.Compare(a.Minute, b.Minute))
		})
		if err := setJSON(b, seqKey(prefixJournal, journalNext), e); err != nil {
			return err
		}
		journalNext++
		if err := setUint(b, keyJournalNext, journalNext); err != nil {
			return err
		}
	}
	if r.credits > 0 {
		if err := setUint(b, keyCreditNext, s.creditNext); err != nil {
			return err
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("commit ivt round: %w", err)
	}
	for p, next := range r.ranges {
		s.next[p] = next
	}
	s.journalNext = journalNext
	s.journalPub.Store(journalNext)
	held := s.st.sizes()
	s.mu.Lock()
	st := &s.stats
	st.EventsConsumed += r.consumed
	st.Corrupt += r.corrupt
	st.Duplicates += r.dups
	st.ClicksJudged += r.judged
	st.Late += r.late
	st.CreditsPending += r.credits
	for reason, n := range r.flagged {
		st.Flagged[reason] += n
	}
	st.Sources, st.Times, st.Ads, st.PendingClicks, st.ClickKeys, st.Impressions = held.sources, held.times, held.ads, held.pending, held.keys, held.impressions
	s.mu.Unlock()
	if len(r.deltas) > 0 {
		kick(s.kickPub)
	}
	if r.credits > 0 {
		kick(s.kickRef)
	}
	return nil
}
