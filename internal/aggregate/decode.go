package aggregate

import (
	"encoding/binary"
	"unicode/utf8"
	"unsafe"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/cespare/xxhash/v2"
)

// decodeView decodes an encoded event like event.Decode, but its strings alias b instead of
// being copied: the aggregator reads a million events a second and keeps almost none of
// their strings (only those of new accumulator keys, which it clones). e is valid only while
// b is unchanged. It accepts exactly what event.Decode accepts (TestDecodeViewMatchesDecode);
// a record of any other codec version goes through event.Decode.
func decodeView(b []byte, e *event.Event) error {
	if len(b) < 3 || b[0] != 1 {
		return e.Decode(b) // another version, or corrupt: the codec decides
	}
	e.Type, e.Invalid = event.Type(b[1]), event.Reason(b[2])
	if e.Type < event.TypeImpression || e.Type > event.TypeInteraction {
		return event.ErrCorrupt
	}
	b = b[3:]
	for _, p := range [...]*int64{&e.Time, &e.RecvTime, &e.PriceMicros} {
		v, n := binary.Varint(b)
		if n <= 0 {
			return event.ErrCorrupt
		}
		*p, b = v, b[n:]
	}
	for _, p := range [...]*string{&e.Name, &e.AdID, &e.CampaignID, &e.AdvertiserID, &e.ImpressionID, &e.EventID, &e.UserID, &e.CatalogID} {
		l, n := binary.Uvarint(b)
		if n <= 0 || l > uint64(len(b)-n) {
			return event.ErrCorrupt
		}
		if l == 0 {
			*p = ""
		} else {
			*p = unsafe.String(&b[n], int(l))
		}
		b = b[n+int(l):]
	}
	// The optional trailer (source address and device id) follows the codec's layout.
	e.SourceIP, e.DeviceID = "", ""
	if len(b) != 0 {
		for _, p := range [...]*string{&e.SourceIP, &e.DeviceID} {
			l, n := binary.Uvarint(b)
			if n <= 0 || l > uint64(len(b)-n) {
				return event.ErrCorrupt
			}
			if l != 0 {
				*p = unsafe.String(&b[n], int(l))
			}
			b = b[n+int(l):]
		}
	}
	if len(b) != 0 {
		return event.ErrCorrupt
	}
	return nil
}

// keyHash returns xxhash64 of e.Key() without building the string (buf is scratch space,
// returned grown for reuse), and false when the event has no key. It must follow Key exactly
// (TestKeyHashMatchesKey): two events are duplicates here iff their keys are equal, up to
// 64-bit hash collisions.
func keyHash(e *event.Event, buf []byte) (uint64, []byte, bool) {
	buf = buf[:0]
	builtin := e.Type == event.TypeImpression || e.Type == event.TypeClick
	switch {
	case builtin && e.Invalid != event.ReasonNone && e.ImpressionID != "":
		// Key writes '0'+type and '0'+reason as runes: UTF-8, so reasons past 79 take two
		// bytes.
		buf = append(buf, 'x')
		buf = utf8.AppendRune(buf, rune('0'+e.Type))
		buf = utf8.AppendRune(buf, rune('0'+e.Invalid))
		buf = append(buf, ':')
		buf = append(buf, e.ImpressionID...)
	case builtin && e.ImpressionID != "":
		if e.Type == event.TypeImpression {
			buf = append(buf, "i:"...)
		} else {
			buf = append(buf, "c:"...)
		}
		buf = append(buf, e.ImpressionID...)
	case e.EventID != "":
		buf = append(buf, "e:"...)
		buf = append(buf, e.EventID...)
	case e.ImpressionID != "":
		buf = append(buf, "t:"...)
		buf = append(buf, e.Name...)
		buf = append(buf, ':')
		buf = append(buf, e.ImpressionID...)
	default:
		return 0, buf, false
	}
	return xxhash.Sum64(buf), buf, true
}
