package sivt

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/cockroachdb/pebble"
)

// maxApplyEntries bounds the journal entries merged into one metric store Apply.
const maxApplyEntries = 256

// runPublisher applies the journal to the metric store after each commit (and every second),
// retrying failures with a backoff.
func (s *Stage) runPublisher(ctx context.Context) error {
	const minBackoff, maxBackoff = 50 * time.Millisecond, 5 * time.Second
	backoff := minBackoff
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		wait := time.Second
		if err := s.publish(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.mu.Lock()
			s.stats.MetricApplyErrors++
			s.mu.Unlock()
			s.opts.Logger.Warn("sivt: applying invalid-traffic moves to the metric store failed; retrying", "err", err, "retry_in", backoff)
			wait, backoff = backoff, min(2*backoff, maxBackoff)
		} else {
			backoff = minBackoff
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-s.kickPub:
			timer.Stop() // Go 1.23 timers: no stale tick after Stop or Reset
		case <-timer.C:
		}
	}
}

// publish applies every journal entry committed so far, fenced on the journal's seq.
func (s *Stage) publish(ctx context.Context) error {
	s.pubMu.Lock()
	defer s.pubMu.Unlock()
	for {
		from, next := s.applied.Load(), s.journalPub.Load()
		if from >= next {
			return nil
		}
		to := min(next, from+maxApplyEntries)
		sums := map[deltaKey]*metricstore.Counts{}
		err := s.read(func(r pebble.Reader) error {
			for seq := from; seq < to; seq++ {
				var e journalEntry
				ok, err := getJSON(r, seqKey(prefixJournal, seq), &e)
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("sivt: journal entry %d missing", seq)
				}
				for _, d := range e.Deltas {
					k := deltaKey{d.Level, d.ID, d.Minute}
					if sums[k] == nil {
						sums[k] = &metricstore.Counts{}
					}
					sums[k].Add(&d.Counts)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		commit := &metricstore.Commit{Consumer: s.opts.Consumer,
			Ranges: []metricstore.OffsetRange{{Partition: JournalPartition, From: int64(from), To: int64(to)}}}
		for k, c := range sums {
			commit.Deltas = append(commit.Deltas, metricstore.Delta{Level: k.level, ID: k.id, Minute: k.minute, Counts: *c})
		}
		slices.SortFunc(commit.Deltas, func(a, b metricstore.Delta) int {
			return cmp.Or(cmp.Compare(a.Level, b.Level), cmp.Compare(a.ID, b.ID), cmp.Compare(a.Minute, b.Minute))
		})
		actx, cancel := context.WithTimeout(ctx, s.opts.BackendTimeout)
		err = s.opts.Metrics.Apply(actx, commit)
		if errors.Is(err, metricstore.ErrConflict) {
			// An earlier Apply went in unheard (a timeout, a crash): the checkpoint says how far.
			cp, cerr := s.opts.Metrics.Checkpoint(actx, s.opts.Consumer)
			if cerr != nil {
				cancel()
				return fmt.Errorf("apply journal [%d, %d): %w; reading the checkpoint: %w", from, to, err, cerr)
			}
			m, ok := cp.Offsets[JournalPartition]
			if !ok || m <= int64(from) || m > int64(next) {
				cancel()
				return fmt.Errorf("apply journal [%d, %d): the store's journal offset is %d (present %v): %w", from, to, m, ok, err)
			}
			to, err = uint64(m), nil
		}
		cancel()
		if err != nil {
			return fmt.Errorf("apply journal [%d, %d): %w", from, to, err)
		}
		s.applied.Store(to)
		// Applied entries are not needed again; losing this delete only leaves them on disk.
		_ = s.withDB(func(db *pebble.DB) error {
			return db.DeleteRange(seqKey(prefixJournal, 0), seqKey(prefixJournal, to), pebble.NoSync)
		})
	}
}

func (s *Stage) withDB(f func(db *pebble.DB) error) error {
	s.life.RLock()
	defer s.life.RUnlock()
	if s.closed {
		return ErrClosed
	}
	return f(s.db)
}

// runRefunds credits pending clicks back, after each commit that flagged clicks and every
// RefundInterval (a click billing has not charged yet waits for the next pass).
func (s *Stage) runRefunds(ctx context.Context) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		if err := s.refundPending(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		timer.Reset(s.opts.RefundInterval)
		select {
		case <-ctx.Done():
			return nil
		case <-s.kickRef:
			timer.Stop() // Go 1.23 timers: no stale tick after Stop or Reset
		case <-timer.C:
		}
	}
}

// maxRefundPass bounds the pending credits one pass tries.
const maxRefundPass = 1024

// refundPending tries each pending credit once, oldest first. It returns an error only when
// the database fails.
func (s *Stage) refundPending(ctx context.Context) error {
	var pend []pendingCredit
	err := s.read(func(r pebble.Reader) error {
		it, err := r.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixPending}, UpperBound: []byte{prefixPending + 1}})
		if err != nil {
			return err
		}
		defer it.Close()
		for it.First(); it.Valid() && len(pend) < maxRefundPass; it.Next() {
			var p pendingCredit
			if err := json.Unmarshal(it.Value(), &p); err != nil {
				return fmt.Errorf("sivt: corrupt pending credit %x: %w", it.Key(), err)
			}
			pend = append(pend, p)
		}
		return it.Error()
	})
	if err != nil {
		return err
	}
	for _, p := range pend {
		rctx, cancel := context.WithTimeout(ctx, s.opts.BackendTimeout)
		res, err := s.opts.Refunder.Refund(rctx, p.ClickID, event.Reason(p.Reason))
		cancel()
		if errors.Is(err, ErrNotCharged) {
			continue // billing has not consumed the click yet
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.mu.Lock()
			s.stats.RefundErrors++
			s.mu.Unlock()
			s.opts.Logger.Warn("sivt: credit-back failed; retrying", "click_id", p.ClickID, "err", err)
			return nil // billing is not answering: the next pass retries
		}
		if err := s.settle(p, res); err != nil {
			return err
		}
	}
	return nil
}

// settle records a done refund: the credit's status and amount, and the end of its pending
// entry, in one write.
func (s *Stage) settle(p pendingCredit, res RefundResult) error {
	return s.withDB(func(db *pebble.DB) error {
		var cr Credit
		ok, err := getJSON(db, creditKey(p.Advertiser, p.Seq), &cr)
		if err != nil || !ok {
			return cmp.Or(err, fmt.Errorf("sivt: credit %d of advertiser %q missing", p.Seq, p.Advertiser))
		}
		cr.Status, cr.CreditedMicros, cr.AlreadyRefunded = "credited", res.RefundedMicros, res.AlreadyRefunded
		cr.CreditedAt = s.opts.Now().UTC().Format(time.RFC3339Nano)
		b := db.NewBatch()
		defer b.Close()
		if err := setJSON(b, creditKey(p.Advertiser, p.Seq), cr); err != nil {
			return err
		}
		if err := b.Delete(seqKey(prefixPending, p.Seq), nil); err != nil {
			return err
		}
		if err := b.Commit(pebble.Sync); err != nil {
			return fmt.Errorf("commit credit: %w", err)
		}
		s.mu.Lock()
		s.stats.CreditsPending--
		s.stats.Credits++
		s.stats.MicrosCredited += res.RefundedMicros
		s.mu.Unlock()
		return nil
	})
}

// Explanation is a click's verdict as GET /api/v1/clicks/{id} shows it.
type Explanation = verdictRecord

// Explain returns the verdict of the click with idempotency key clickKey (event.Key), or nil
// when no rule fired on it.
func (s *Stage) Explain(clickKey string) (*Explanation, error) {
	var rec verdictRecord
	var found bool
	err := s.read(func(r pebble.Reader) error {
		var err error
		found, err = getJSON(r, verdictKey(clickKey), &rec)
		return err
	})
	if err != nil || !found {
		return nil, err
	}
	return &rec, nil
}

// MaxCreditsPage is the most credits one call returns.
const MaxCreditsPage = 1000

// Credits returns advertiser's credits, newest first: at most limit of them with a seq below
// before (0: from the newest). next is the before of the following page, 0 when none.
func (s *Stage) Credits(advertiser string, limit int, before uint64) (out []Credit, next uint64, err error) {
	limit = max(1, min(limit, MaxCreditsPage))
	upper := append(creditPrefix(advertiser), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	if before > 0 {
		upper = creditKey(advertiser, before)
	}
	err = s.read(func(r pebble.Reader) error {
		it, err := r.NewIter(&pebble.IterOptions{LowerBound: creditPrefix(advertiser), UpperBound: upper})
		if err != nil {
			return err
		}
		defer it.Close()
		for ok := it.Last(); ok; ok = it.Prev() {
			if len(out) == limit {
				k := it.Key()
				next = binary.BigEndian.Uint64(k[len(k)-8:]) + 1
				break
			}
			var c Credit
			if err := json.Unmarshal(it.Value(), &c); err != nil {
				return fmt.Errorf("sivt: corrupt credit %x: %w", it.Key(), err)
			}
			out = append(out, c)
		}
		return it.Error()
	})
	return out, next, err
}
