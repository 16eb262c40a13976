package event

import (
	"encoding/binary"
	"errors"
)

// codecVersion is the first byte of every encoded event, so the format can evolve.
const codecVersion = 1

// codecVersionValue is version 1 followed by one more varint, the value: only conversions
// use it, so every other event keeps its version 1 bytes (and readers built before it).
const codecVersionValue = 2

// ErrCorrupt is returned by Decode for bytes that are not an encoded event.
var ErrCorrupt = errors.New("event: corrupt record")

// AppendBinary appends the binary encoding of e to b and returns the extended slice.
//
// Layout: version, type, invalid reason, then varints time, recv time, price, then the
// strings name, ad, campaign, advertiser, impression, event, user, catalog, each as a uvarint
// length and its bytes; a conversion (version 2) then has a varint value; then, only when
// either is set, source address and device id as strings (records written before they existed
// end before them and still decode). It allocates nothing when b has room.
func (e *Event) AppendBinary(b []byte) []byte {
	version := byte(codecVersion)
	if e.Type == TypeConversion {
		version = codecVersionValue
	}
	b = append(b, version, byte(e.Type), byte(e.Invalid))
	b = binary.AppendVarint(b, e.Time)
	b = binary.AppendVarint(b, e.RecvTime)
	b = binary.AppendVarint(b, e.PriceMicros)
	for _, s := range [...]string{e.Name, e.AdID, e.CampaignID, e.AdvertiserID, e.ImpressionID, e.EventID, e.UserID, e.CatalogID} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	if version == codecVersionValue {
		b = binary.AppendVarint(b, e.ValueMicros)
	}
	if e.SourceIP != "" || e.DeviceID != "" {
		for _, s := range [...]string{e.SourceIP, e.DeviceID} {
			b = binary.AppendUvarint(b, uint64(len(s)))
			b = append(b, s...)
		}
	}
	return b
}

// EncodedSizeHint is a capacity that fits most encoded events without growing.
const EncodedSizeHint = 160

// Decode parses an encoded event into e. Strings are copied out of b, so b may be reused.
func (e *Event) Decode(b []byte) error {
	if len(b) < 3 || (b[0] != codecVersion && b[0] != codecVersionValue) {
		return ErrCorrupt
	}
	version := b[0]
	e.Type, e.Invalid = Type(b[1]), Reason(b[2])
	if e.Type < TypeImpression || e.Type > TypeConversion || (e.Type == TypeConversion) != (version == codecVersionValue) {
		return ErrCorrupt
	}
	b = b[3:]
	for _, p := range [...]*int64{&e.Time, &e.RecvTime, &e.PriceMicros} {
		v, n := binary.Varint(b)
		if n <= 0 {
			return ErrCorrupt
		}
		*p, b = v, b[n:]
	}
	for _, p := range [...]*string{&e.Name, &e.AdID, &e.CampaignID, &e.AdvertiserID, &e.ImpressionID, &e.EventID, &e.UserID, &e.CatalogID} {
		l, n := binary.Uvarint(b)
		if n <= 0 || l > uint64(len(b)-n) {
			return ErrCorrupt
		}
		*p = string(b[n : n+int(l)])
		b = b[n+int(l):]
	}
	e.ValueMicros = 0
	if version == codecVersionValue {
		v, n := binary.Varint(b)
		if n <= 0 {
			return ErrCorrupt
		}
		e.ValueMicros, b = v, b[n:]
	}
	e.SourceIP, e.DeviceID = "", ""
	if len(b) != 0 {
		for _, p := range [...]*string{&e.SourceIP, &e.DeviceID} {
			l, n := binary.Uvarint(b)
			if n <= 0 || l > uint64(len(b)-n) {
				return ErrCorrupt
			}
			*p = string(b[n : n+int(l)])
			b = b[n+int(l):]
		}
	}
	if len(b) != 0 {
		return ErrCorrupt
	}
	return nil
}
