package attribution

import (
	"encoding/binary"
	"errors"
	"strings"

	"github.com/adpulse/adpulse/internal/metricstore"
)

// Keys of the attribution database. Ids never hold a 0 byte (event.ValidID), so 0 separates
// them; times are big-endian so that keys sort by time.
//
//	T user 0 catalog 0 time key   -> touch        a user's touches on a catalog's ads, oldest first
//	X time user 0 catalog 0 key   -> ""           touches by time, to forget them past the horizon
//	C conversion key              -> conversion   the decision, for replay and for the API
//	U user 0 catalog 0 time key   -> ""           a user's conversions by time, for late touches
//	Y time conversion key         -> ""           conversions by time, to forget them
//	O partition                   -> next offset  consumed log offsets
//	J seq                         -> deltas       journal entries not yet in the metric store
//	N                             -> next seq
const (
	prefixTouch      = 'T'
	prefixTouchTime  = 'X'
	prefixConversion = 'C'
	prefixUserConv   = 'U'
	prefixConvTime   = 'Y'
	prefixOffset     = 'O'
	prefixJournal    = 'J'
	keyJournalNext   = "N"
)

var errCorrupt = errors.New("attribution: corrupt record")

// userCatalog returns prefix + user 0 catalog 0.
func userCatalog(prefix byte, user, catalog string) []byte {
	b := make([]byte, 0, 3+len(user)+len(catalog)+8+24)
	b = append(b, prefix)
	b = append(b, user...)
	b = append(b, 0)
	b = append(b, catalog...)
	return append(b, 0)
}

func touchKey(user, catalog string, t int64, key string) []byte {
	b := binary.BigEndian.AppendUint64(userCatalog(prefixTouch, user, catalog), uint64(t))
	return append(b, key...)
}

func touchTimeKey(user, catalog string, t int64, key string) []byte {
	b := binary.BigEndian.AppendUint64([]byte{prefixTouchTime}, uint64(t))
	b = append(b, user...)
	b = append(b, 0)
	b = append(b, catalog...)
	b = append(b, 0)
	return append(b, key...)
}

// touchKeyFromTime turns an X key back into its T key.
func touchKeyFromTime(x []byte) ([]byte, bool) {
	if len(x) < 9 {
		return nil, false
	}
	t := x[1:9]
	rest := x[9:]
	i := strings.IndexByte(string(rest), 0)
	if i < 0 {
		return nil, false
	}
	j := strings.IndexByte(string(rest[i+1:]), 0)
	if j < 0 {
		return nil, false
	}
	j += i + 1
	b := append([]byte{prefixTouch}, rest[:j+1]...)
	b = append(b, t...)
	return append(b, rest[j+1:]...), true
}

func conversionKey(key string) []byte { return append([]byte{prefixConversion}, key...) }

func userConvKey(user, catalog string, t int64, key string) []byte {
	b := binary.BigEndian.AppendUint64(userCatalog(prefixUserConv, user, catalog), uint64(t))
	return append(b, key...)
}

func convTimeKey(t int64, key string) []byte {
	b := binary.BigEndian.AppendUint64([]byte{prefixConvTime}, uint64(t))
	return append(b, key...)
}

func offsetKey(p int) []byte { return binary.BigEndian.AppendUint32([]byte{prefixOffset}, uint32(p)) }

func journalKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixJournal}, seq)
}

// prefixEnd is the first key after every key that starts with p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

// Conversion is a conversion and the attribution decided for it.
type Conversion struct {
	Key         string // idempotency key ("e:" + event id)
	EventID     string
	Name        string // its type, such as "order"
	UserID      string
	CatalogID   string
	Time        int64 // event time, Unix microseconds
	ValueMicros int64
	Partition   int32 // where in the log it was first seen
	Offset      int64
	// Credited says whether Touch earned it; otherwise Reason says why no touch did.
	Credited bool
	Touch    Touch
	Reason   string
	// Touches is how many touches of the user on the catalog were considered.
	Touches int
	// Revisions counts the late touches that moved the credit after the first decision.
	Revisions int
}

// recordVersion is the first byte of a stored touch or conversion.
const recordVersion = 1

// enc appends fields; dec reads them back and remembers the first error.
type enc []byte

func (e enc) str(s string) enc { return append(binary.AppendUvarint(e, uint64(len(s))), s...) }
func (e enc) num(n int64) enc  { return binary.AppendVarint(e, n) }

type dec struct {
	b   []byte
	err error
}

func (d *dec) num() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errCorrupt
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) str() string {
	if d.err != nil {
		return ""
	}
	l, n := binary.Uvarint(d.b)
	if n <= 0 || l > uint64(len(d.b)-n) {
		d.err = errCorrupt
		return ""
	}
	s := string(d.b[n : n+int(l)])
	d.b = d.b[n+int(l):]
	return s
}

func appendTouch(e enc, t *Touch) enc {
	e = append(e, byte(t.Kind))
	e = e.num(t.Time)
	return e.str(t.Key).str(t.AdID).str(t.CampaignID).str(t.AdvertiserID)
}

func (d *dec) touch(t *Touch) {
	if d.err != nil {
		return
	}
	if len(d.b) < 1 {
		d.err = errCorrupt
		return
	}
	t.Kind, d.b = TouchKind(d.b[0]), d.b[1:]
	if t.Kind != KindView && t.Kind != KindClick {
		d.err = errCorrupt
		return
	}
	t.Time = d.num()
	t.Key, t.AdID, t.CampaignID, t.AdvertiserID = d.str(), d.str(), d.str(), d.str()
}

func encodeTouch(t *Touch) []byte { return appendTouch(enc{recordVersion}, t) }

func decodeTouch(b []byte) (Touch, error) {
	var t Touch
	if len(b) < 1 || b[0] != recordVersion {
		return t, errCorrupt
	}
	d := dec{b: b[1:]}
	d.touch(&t)
	if d.err == nil && len(d.b) != 0 {
		d.err = errCorrupt
	}
	return t, d.err
}

func encodeConversion(c *Conversion) []byte {
	e := enc{recordVersion}
	e = e.str(c.Key).str(c.EventID).str(c.Name).str(c.UserID).str(c.CatalogID)
	e = e.num(c.Time).num(c.ValueMicros).num(int64(c.Partition)).num(c.Offset)
	e = e.num(int64(c.Touches)).num(int64(c.Revisions))
	if c.Credited {
		e = append(e, 1)
		return appendTouch(e, &c.Touch)
	}
	return append(e, 0).str(c.Reason)
}

// decodeConversion parses a stored conversion; it never panics on arbitrary bytes
// (FuzzDecodeConversion).
func decodeConversion(b []byte) (Conversion, error) {
	var c Conversion
	if len(b) < 1 || b[0] != recordVersion {
		return c, errCorrupt
	}
	d := dec{b: b[1:]}
	c.Key, c.EventID, c.Name, c.UserID, c.CatalogID = d.str(), d.str(), d.str(), d.str(), d.str()
	c.Time, c.ValueMicros, c.Partition, c.Offset = d.num(), d.num(), int32(d.num()), d.num()
	c.Touches, c.Revisions = int(d.num()), int(d.num())
	if d.err != nil || len(d.b) < 1 {
		return c, errCorrupt
	}
	credited := d.b[0]
	d.b = d.b[1:]
	switch credited {
	case 1:
		c.Credited = true
		d.touch(&c.Touch)
	case 0:
		c.Reason = d.str()
	default:
		return c, errCorrupt
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = errCorrupt
	}
	return c, d.err
}

// encodeDeltas is a journal entry: the metric store deltas of one round.
func encodeDeltas(ds []metricstore.Delta) []byte {
	e := enc{recordVersion}
	e = e.num(int64(len(ds)))
	for i := range ds {
		d := &ds[i]
		e = append(e, byte(d.Level))
		e = e.str(d.ID).num(d.Minute)
		e = e.num(d.Conversions).num(d.ConversionValueMicros).num(d.ViewConversions).num(d.ViewConversionValueMicros)
	}
	return e
}

func decodeDeltas(b []byte) ([]metricstore.Delta, error) {
	if len(b) < 1 || b[0] != recordVersion {
		return nil, errCorrupt
	}
	d := dec{b: b[1:]}
	n := d.num()
	if d.err != nil || n < 0 || n > int64(len(b)) {
		return nil, errCorrupt
	}
	ds := make([]metricstore.Delta, 0, n)
	for range n {
		if len(d.b) < 1 {
			return nil, errCorrupt
		}
		var x metricstore.Delta
		x.Level, d.b = metricstore.Level(d.b[0]), d.b[1:]
		x.ID, x.Minute = d.str(), d.num()
		x.Conversions, x.ConversionValueMicros, x.ViewConversions, x.ViewConversionValueMicros = d.num(), d.num(), d.num(), d.num()
		if d.err != nil {
			return nil, d.err
		}
		ds = append(ds, x)
	}
	if len(d.b) != 0 {
		return nil, errCorrupt
	}
	return ds, nil
}
