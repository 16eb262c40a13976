package billing

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/adpulse/adpulse/internal/billing/ledger"
	"github.com/adpulse/adpulse/internal/event"
)

// Refunds.

// Refund is the outcome of crediting a click back.
type Refund struct {
	Click
	// RefundedMicros is what this call credited: the click's charge the first time, 0 when it
	// was already refunded.
	RefundedMicros  int64 `json:"refunded_micros"`
	AlreadyRefunded bool  `json:"already_refunded"`
}

// Refund marks the valid click named id invalid and credits its charge back: the ledger
// entry flips to refunded, and the campaign's spend (the click's budget day and total) and
// spend_micros in the metric store decrease by exactly what it was charged. id is the click's
// idempotency key as the client sent it (see clickKeys). Refunding again changes nothing. A
// click not charged yet (unknown, or not consumed yet) is ErrNotFound. The refund is its own
// ledger transaction, which locks the click's entry, so a refund through any node of a shared
// ledger applies once however many race. It needs no writer, but a Charger whose Run has
// returned refuses it (ErrNotRunning): it no longer publishes what it commits.
func (c *Charger) Refund(ctx context.Context, id string) (Refund, error) {
	switch {
	case c.aborted():
		return Refund{}, ErrClosed
	case c.started.Load() && c.runDone():
		return Refund{}, ErrNotRunning
	}
	return c.refund(ctx, id)
}

func (c *Charger) runDone() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// refund does one refund transaction.
func (c *Charger) refund(ctx context.Context, id string) (Refund, error) {
	if c.closed.Load() {
		return Refund{}, ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.RoundTimeout)
	defer cancel()
	keys := clickKeys(id)
	b := &batchState{}
	var out Refund
	start := time.Now()
	res, err := c.store.Update(ctx, func(ctx context.Context, tx ledger.Tx) (*ledger.Writes, error) {
		b.attempt = attemptState{deltas: make(map[deltaKey]int64)}
		found, err := tx.Entries(ctx, keys[:], true)
		if err != nil {
			return nil, err
		}
		var e ledgerEntry
		var ok bool
		for _, k := range keys {
			if e, ok = found[k]; ok {
				break
			}
		}
		if !ok {
			return nil, ErrNotFound
		}
		if e.State == stateRefunded {
			out = Refund{Click: clickOut(e.Key, &e), AlreadyRefunded: true}
			return nil, nil
		}
		e.State = stateRefunded
		e.RefundedAt = c.opts.Now().UnixMicro()
		wr := &ledger.Writes{Replace: []ledger.Entry{e}}
		if e.ChargedMicros > 0 {
			if e.DayStart == 0 { // a version 1 entry: its day as the legacy migration keyed it
				e.DayStart = c.legacyDayStart(e.CampaignID, e.Day)
			}
			k := spendKey{Campaign: e.CampaignID, DayStart: e.DayStart}
			if _, _, err := tx.LockSpend(ctx, []spendKey{k}); err != nil {
				return nil, err
			}
			wr.Spend = []ledger.SpendDelta{{SpendKey: k, Micros: -e.ChargedMicros}}
			addDeltas(b.attempt.deltas, &e, -e.ChargedMicros)
			wr.Journal = journalOf(b.attempt.deltas)
			b.attempt.refunds, b.attempt.refunded = 1, e.ChargedMicros
		}
		if h := c.opts.hooks; h != nil && h.beforeCommit != nil {
			if err := h.beforeCommit(); err != nil {
				return nil, err
			}
		}
		out = Refund{Click: clickOut(e.Key, &e), RefundedMicros: e.ChargedMicros}
		return wr, nil
	})
	switch {
	case errors.Is(err, ErrNotFound):
		return Refund{}, ErrNotFound
	case errors.Is(err, ledger.ErrClosed):
		return Refund{}, ErrClosed
	case err != nil:
		return Refund{}, fmt.Errorf("billing: refund %q: %w", id, err)
	}
	if !out.AlreadyRefunded {
		c.recordBatch(b, res, time.Since(start))
		if h := c.opts.hooks; h != nil && h.afterCommit != nil {
			if err := h.afterCommit(); err != nil {
				return Refund{}, err
			}
		}
	}
	return out, nil
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
		PriceMicros: e.PriceMicros, ChargedMicros: e.ChargedMicros, Reason: zeroReason(e.Reason).String(),
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

// ClickByID returns the ledger entry of the valid click named id: its impression id, or its
// event_id for a click sent without one.
func (c *Charger) ClickByID(id string) (Click, error) {
	if c.closed.Load() {
		return Click{}, ErrClosed
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.RoundTimeout)
	defer cancel()
	keys := clickKeys(id)
	found, err := c.store.Entries(ctx, keys[:])
	if err != nil {
		return Click{}, c.readErr(err)
	}
	for _, k := range keys {
		if e, ok := found[k]; ok {
			return clickOut(k, &e), nil
		}
	}
	return Click{}, ErrNotFound
}
