package billing

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
)

// Key layout of the billing Pebble database. Every key starts with a one-byte prefix; ids are
// length-prefixed so no id can run into the next component.
//
//	'o' partition(u32 BE)                          -> uvarint next log offset to consume
//	'l' click key (event.Key: "c:<impression id>" or "e:<event_id>") -> ledger entry (encodeLedger)
//	'b' len campaign day start(u64 BE, Unix s)     -> varint micros spent that budget day
//	'd' len campaign date(u32 BE)                  -> legacy spend by local date; moved to 'b' by Open
//	't' len campaign                               -> varint micros spent in total
//	'j' seq(u64 BE)                                -> journal entry: metric deltas not yet applied
//	'k' campaign                                   -> (empty) a campaign seen in the log
//	'u' day(u32 BE) len user catalog               -> varint valid impressions (user views)
//	'm' name                                       -> metadata (next journal seq, traffic profile)
//
// Views are keyed day first (not user first) so that retention is one DeleteRange over whole
// days, while a user's day is still one contiguous prefix scan.
const (
	prefixOffset  = 'o'
	prefixLedger  = 'l'
	prefixDay     = 'b'
	prefixDate    = 'd' // legacy: spend keyed by a bare local date (see migrateDates)
	prefixTotal   = 't'
	prefixJournal = 'j'
	prefixKnown   = 'k'
	prefixViews   = 'u'
	prefixMeta    = 'm'
)

var (
	keyJournalNext = []byte("m/journal-next")
	keyProfile     = []byte("m/profile")
)

var errCorrupt = errors.New("billing: corrupt record")

func offsetKey(p int) []byte {
	return binary.BigEndian.AppendUint32([]byte{prefixOffset}, uint32(p))
}

func ledgerKey(clickKey string) []byte {
	return append([]byte{prefixLedger}, clickKey...)
}

// dayKey is the key of a campaign's spend on the budget day that starts at start (Unix
// seconds).
func dayKey(campaign string, start int64) []byte {
	b := make([]byte, 0, 2+len(campaign)+8)
	b = append(b, prefixDay, byte(len(campaign)))
	b = append(b, campaign...)
	return binary.BigEndian.AppendUint64(b, uint64(start))
}

// parseDayKey splits a dayKey.
func parseDayKey(k []byte) (campaign string, start int64, ok bool) {
	if len(k) < 2 || k[0] != prefixDay || len(k) != 2+int(k[1])+8 {
		return "", 0, false
	}
	return string(k[2 : 2+int(k[1])]), int64(binary.BigEndian.Uint64(k[len(k)-8:])), true
}

func totalKey(campaign string) []byte {
	b := make([]byte, 0, 2+len(campaign))
	b = append(b, prefixTotal, byte(len(campaign)))
	return append(b, campaign...)
}

func journalKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixJournal}, seq)
}

func knownKey(campaign string) []byte {
	return append([]byte{prefixKnown}, campaign...)
}

// viewsPrefix is the prefix of one user's counts on one UTC day.
func viewsPrefix(day uint32, user string) []byte {
	b := make([]byte, 0, 6+len(user)+16)
	b = binary.BigEndian.AppendUint32(append(b, prefixViews), day)
	b = append(b, byte(len(user)))
	return append(b, user...)
}

func viewsKey(day uint32, user, catalogID string) []byte {
	return append(viewsPrefix(day, user), catalogID...)
}

// parseViewsKey splits a viewsKey.
func parseViewsKey(k []byte) (day uint32, user, catalogID string, ok bool) {
	if len(k) < 6 || k[0] != prefixViews || len(k) < 6+int(k[5]) {
		return 0, "", "", false
	}
	n := 6 + int(k[5])
	return binary.BigEndian.Uint32(k[1:5]), string(k[6:n]), string(k[n:]), true
}

// viewsDayBound is the first key of day's views: [viewsDayBound(0), viewsDayBound(d)) holds
// every day before d.
func viewsDayBound(day uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{prefixViews}, day)
}

func appendInt(b []byte, v int64) []byte { return binary.AppendVarint(b, v) }

func decodeInt(v []byte) (int64, error) {
	n, k := binary.Varint(v)
	if k <= 0 || k != len(v) {
		return 0, fmt.Errorf("%w: varint %x", errCorrupt, v)
	}
	return n, nil
}

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

// Ledger entries.

// Ledger states.
const (
	stateCharged  = 1 // charged (ChargedMicros may be 0: a zero-charge click is still recorded)
	stateRefunded = 2 // credited back by an admin; ChargedMicros keeps what was charged
)

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

// ledgerEntry is one valid click as charged.
type ledgerEntry struct {
	State         uint8
	Reason        zeroReason // why it charged 0 or less than PriceMicros; reasonNone for a full charge
	ChargedMicros int64
	PriceMicros   int64  // what it would have cost with budget left (0 when unknown)
	Time          int64  // event time, Unix micros
	Day           uint32 // the budget day's label: its local date
	DayStart      int64  // the budget day's start, Unix seconds: its spend key (0 in version 1 entries)
	RefundedAt    int64  // Unix micros; 0 unless refunded
	Partition     int32
	Offset        int64
	CampaignID    string
	AdID          string
	AdvertiserID  string
}

// Ledger entry versions: 2 adds DayStart at the end; version 1 entries (written before budget
// days were intervals) are still read.
const (
	ledgerVersion1 = 1
	ledgerVersion  = 2
)

func encodeLedger(b []byte, e *ledgerEntry) []byte {
	b = append(b, ledgerVersion, e.State, byte(e.Reason))
	b = binary.AppendVarint(b, e.ChargedMicros)
	b = binary.AppendVarint(b, e.PriceMicros)
	b = binary.AppendVarint(b, e.Time)
	b = binary.AppendUvarint(b, uint64(e.Day))
	b = binary.AppendVarint(b, e.RefundedAt)
	b = binary.AppendVarint(b, int64(e.Partition))
	b = binary.AppendVarint(b, e.Offset)
	for _, s := range [...]string{e.CampaignID, e.AdID, e.AdvertiserID} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return binary.AppendVarint(b, e.DayStart)
}

func decodeLedger(v []byte) (ledgerEntry, error) {
	var e ledgerEntry
	bad := fmt.Errorf("%w: ledger entry %x", errCorrupt, v)
	if len(v) < 3 || (v[0] != ledgerVersion && v[0] != ledgerVersion1) || (v[1] != stateCharged && v[1] != stateRefunded) {
		return e, bad
	}
	version := v[0]
	e.State, e.Reason = v[1], zeroReason(v[2])
	v = v[3:]
	var ints [6]int64
	for i := range ints {
		if i == 3 {
			u, k := binary.Uvarint(v)
			if k <= 0 || u > math.MaxUint32 {
				return e, bad
			}
			ints[i], v = int64(u), v[k:]
			continue
		}
		n, k := binary.Varint(v)
		if k <= 0 {
			return e, bad
		}
		ints[i], v = n, v[k:]
	}
	e.ChargedMicros, e.PriceMicros, e.Time, e.Day, e.RefundedAt = ints[0], ints[1], ints[2], uint32(ints[3]), ints[4]
	e.Partition = int32(ints[5])
	n, k := binary.Varint(v)
	if k <= 0 {
		return e, bad
	}
	e.Offset, v = n, v[k:]
	for _, p := range [...]*string{&e.CampaignID, &e.AdID, &e.AdvertiserID} {
		l, k := binary.Uvarint(v)
		if k <= 0 || l > uint64(len(v)-k) {
			return e, bad
		}
		*p, v = string(v[k:k+int(l)]), v[k+int(l):]
	}
	if version == ledgerVersion {
		n, k := binary.Varint(v)
		if k <= 0 {
			return e, bad
		}
		e.DayStart, v = n, v[k:]
	}
	if len(v) != 0 || e.ChargedMicros < 0 {
		return e, bad
	}
	return e, nil
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
