package billing

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/adpulse/adpulse/internal/billing/ledger"
	"github.com/adpulse/adpulse/internal/metricstore"
)

var errCorrupt = ledger.ErrCorrupt

// Dates. A date is numbered as days since 1970-01-01, whatever the time zone it is a date in:
// a budget day's label is its local date (budgetday.go), a views day is the UTC date.

// maxEventMicros bounds event times the store takes (year 2500), like the aggregator.
const maxEventMicros = 16725225600 * 1e6

func dayOf(t time.Time, loc *time.Location) uint32 {
	y, m, d := t.In(loc).Date()
	return uint32(time.Date(y, m, d, 0, 0, 0, 0, time.UTC).Unix() / 86400)
}

// dayTime is midnight UTC of day.
func dayTime(day uint32) time.Time { return time.Unix(int64(day)*86400, 0).UTC() }

func dayString(day uint32) string {
	return time.Unix(int64(day)*86400, 0).UTC().Format(time.DateOnly)
}

// Ledger states.
const (
	stateCharged  = ledger.StateCharged
	stateRefunded = ledger.StateRefunded
)

// ledgerEntry is one valid click as charged.
type ledgerEntry = ledger.Entry

// zeroReason says why a valid click charged nothing (or less than its price).
type zeroReason uint8

const (
	reasonNone zeroReason = iota
	reasonUnknownCampaign
	reasonUnknownAd
	reasonPaused
	reasonNotStarted
	reasonEnded
	reasonDailyBudget
	reasonTotalBudget
	reasonZeroPrice
	reasonBadPrice
	reasonBadTime
	reasonOverflow
)

var zeroReasonNames = [...]string{"", "unknown_campaign", "unknown_ad", "paused", "not_started", "ended",
	"daily_budget_exhausted", "total_budget_exhausted", "zero_price", "bad_price", "bad_time", "overflow"}

func (r zeroReason) String() string {
	if int(r) < len(zeroReasonNames) {
		return zeroReasonNames[r]
	}
	return fmt.Sprintf("reason_%d", uint8(r))
}

// Journal entries: the spend deltas of one committed batch, waiting to be applied to the
// metric store.

type deltaKey struct {
	level  metricstore.Level
	id     string
	minute int64
}

func encodeJournal(deltas map[deltaKey]int64) []byte {
	b := binary.AppendUvarint(nil, uint64(len(deltas)))
	for k, v := range deltas {
		b = append(b, byte(k.level))
		b = binary.AppendUvarint(b, uint64(len(k.id)))
		b = append(b, k.id...)
		b = binary.AppendVarint(b, k.minute)
		b = binary.AppendVarint(b, v)
	}
	return b
}

// decodeJournal adds the deltas of an encoded entry to into.
func decodeJournal(v []byte, into map[deltaKey]int64) error {
	bad := fmt.Errorf("%w: journal entry %x", errCorrupt, v)
	n, k := binary.Uvarint(v)
	if k <= 0 || n > uint64(len(v)) {
		return bad
	}
	v = v[k:]
	for range n {
		if len(v) < 1 {
			return bad
		}
		lvl := metricstore.Level(v[0])
		v = v[1:]
		l, k := binary.Uvarint(v)
		if k <= 0 || l > uint64(len(v)-k) {
			return bad
		}
		id := string(v[k : k+int(l)])
		v = v[k+int(l):]
		minute, k := binary.Varint(v)
		if k <= 0 {
			return bad
		}
		v = v[k:]
		spend, k := binary.Varint(v)
		if k <= 0 {
			return bad
		}
		v = v[k:]
		if !lvl.Valid() {
			return bad
		}
		into[deltaKey{lvl, id, minute}] += spend
	}
	if len(v) != 0 {
		return bad
	}
	return nil
}
