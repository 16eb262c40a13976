package ledger

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Key layout of the billing Pebble database. Every key starts with a one-byte prefix; ids are
// length-prefixed so no id can run into the next component.
//
//	'o' partition(u32 BE)                          -> uvarint next log offset to consume
//	'e' partition(u32 BE)                          -> uvarint ownership epoch (Claim)
//	'l' click key (event.Key: "c:<impression id>" or "e:<event_id>") -> ledger entry (encodeLedger)
//	'b' len campaign day start(u64 BE, Unix s)     -> varint micros spent that budget day
//	'd' len campaign date(u32 BE)                  -> legacy spend by local date; moved to 'b' by Open
//	't' len campaign                               -> varint micros spent in total
//	'j' seq(u64 BE)                                -> journal entry: metric deltas not yet applied
//	'k' campaign                                   -> (empty) a campaign seen in the log
//	'u' day(u32 BE) len user catalog               -> varint valid impressions (user views)
//	'm' name                                       -> metadata ("m/journal-next", Writes.Meta as "m/"+name)
//
// Views are keyed day first (not user first) so that retention is one DeleteRange over whole
// days, while a user's day is still one contiguous prefix scan.
const (
	prefixOffset  = 'o'
	prefixEpoch   = 'e'
	prefixLedger  = 'l'
	prefixDay     = 'b'
	prefixDate    = 'd' // legacy: spend keyed by a bare local date (see MigrateLegacyDates)
	prefixTotal   = 't'
	prefixJournal = 'j'
	prefixKnown   = 'k'
	prefixViews   = 'u'
	prefixMeta    = 'm'
)

var keyJournalNext = []byte("m/journal-next")

func metaKey(name string) []byte { return append([]byte("m/"), name...) }

func offsetKey(p int32) []byte {
	return binary.BigEndian.AppendUint32([]byte{prefixOffset}, uint32(p))
}

func epochKey(p int32) []byte {
	return binary.BigEndian.AppendUint32([]byte{prefixEpoch}, uint32(p))
}

func ledgerKey(clickKey string) []byte {
	return appendLedgerKey(nil, clickKey)
}

// appendLedgerKey appends the ledger key of clickKey to dst.
func appendLedgerKey(dst []byte, clickKey string) []byte {
	return append(append(dst, prefixLedger), clickKey...)
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
		return 0, fmt.Errorf("%w: varint %x", ErrCorrupt, v)
	}
	return n, nil
}

// Ledger entries: encodeLedger does not store Entry.Key, which is the key of the record.

// Ledger entry versions: 2 adds DayStart at the end; version 1 entries (written before budget
// days were intervals) are still read.
const (
	ledgerVersion1 = 1
	ledgerVersion  = 2
)

func encodeLedger(b []byte, e *Entry) []byte {
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

func decodeLedger(v []byte) (Entry, error) {
	var e Entry
	bad := fmt.Errorf("%w: ledger entry %x", ErrCorrupt, v)
	if len(v) < 3 || (v[0] != ledgerVersion && v[0] != ledgerVersion1) || (v[1] != StateCharged && v[1] != StateRefunded) {
		return e, bad
	}
	version := v[0]
	e.State, e.Reason = v[1], v[2]
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
