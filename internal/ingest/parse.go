package ingest

import (
	"bytes"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/httpapi"
	"github.com/valyala/fastjson"
)

// LineError is a rejected line of a batch, numbered from 1.
type LineError struct {
	Line    int    `json:"line"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// BatchLimits bound what one batch may hold.
type BatchLimits struct {
	MaxEvents    int           // lines per batch
	MaxLateness  time.Duration // oldest event_time accepted, before now
	MaxClockSkew time.Duration // newest event_time accepted, after now
	// ConversionTypes are the event types that, sent without an ad_id, are conversions to
	// attribute (event.TypeConversion), such as "order"; nil means none.
	ConversionTypes []string
}

// batchParser parses POST /events bodies. It is not safe for concurrent use; handlers take
// one from a pool.
type batchParser struct {
	p fastjson.Parser
}

// ParsedLine is one line of a batch: an event, or why it was rejected.
type ParsedLine struct {
	Line      int // from 1; for an array, the element's position
	Event     event.Event
	UserAgent string // optional "user_agent" of the original request, for bot filtering
	Err       *LineError
}

// errTooManyEvents is returned when a batch exceeds MaxEvents.
var errTooManyEvents = httpapi.Errorf(httpapi.CodeInvalidArgument, "body: too many events in one batch")

// MaxLineBytes bounds one event: an NDJSON line or an element of a JSON array. A real event is
// a few hundred bytes. The bound matters because the JSON parser builds a value for every
// number or string it meets: a line of tiny values costs it dozens of times the line's size,
// and a whole body of them parsed at once took gigabytes.
const MaxLineBytes = 64 << 10

var errArray = httpapi.BadField("body", "invalid JSON array: unbalanced brackets or an unterminated string")

// parse splits body into events: NDJSON (one object a line, blank lines ignored) or a JSON
// array of objects. Each line is validated on its own; a bad line never fails the others.
// The only whole-body errors are a malformed array and too many events. Each line or element
// is parsed on its own, so what the parser builds is bounded by MaxLineBytes, not by the body.
func (bp *batchParser) parse(body []byte, now time.Time, lim BatchLimits, out []ParsedLine) ([]ParsedLine, error) {
	out = out[:0]
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) > 0 && trimmed[0] == '[' {
		n, err := splitArray(trimmed, nil)
		if err != nil {
			return nil, err
		}
		if n > lim.MaxEvents {
			return nil, errTooManyEvents
		}
		_, _ = splitArray(trimmed, func(i int, elem []byte) {
			out = append(out, ParsedLine{Line: i})
			bp.parseLine(elem, i, now, lim, &out[len(out)-1])
		})
		return out, nil
	}
	line := 0
	for len(body) > 0 {
		var l []byte
		if i := bytes.IndexByte(body, '\n'); i >= 0 {
			l, body = body[:i], body[i+1:]
		} else {
			l, body = body, nil
		}
		line++
		if len(bytes.TrimSpace(l)) == 0 {
			continue
		}
		if len(out) >= lim.MaxEvents {
			return nil, errTooManyEvents
		}
		out = append(out, ParsedLine{Line: line})
		bp.parseLine(l, line, now, lim, &out[len(out)-1])
	}
	return out, nil
}

// parseLine parses one event of at most MaxLineBytes.
func (bp *batchParser) parseLine(l []byte, line int, now time.Time, lim BatchLimits, pl *ParsedLine) {
	if len(l) > MaxLineBytes {
		reject(pl, line, "body", "event longer than "+itoa(MaxLineBytes)+" bytes")
		return
	}
	v, err := bp.p.ParseBytes(l)
	if err != nil {
		pl.Err = &LineError{Line: line, Code: httpapi.CodeInvalidArgument, Message: "invalid JSON: " + err.Error()}
		return
	}
	parseObject(v, line, now, lim, pl)
}

// splitArray finds the elements of the JSON array b (which starts with '[') without parsing
// them, calling each (when not nil) with every element, numbered from 1, and returns how many
// there are. It checks what it must to find them: brackets balance and strings end, and only
// white space follows the array. Whether each element is valid JSON is left to its parse. It
// keeps a counter, not a stack, so no nesting depth can exhaust anything.
func splitArray(b []byte, each func(i int, elem []byte)) (int, error) {
	n, depth, start := 0, 0, 1
	emit := func(end int) {
		n++
		if each != nil {
			each(n, bytes.TrimSpace(b[start:end]))
		}
	}
	for i := 1; i < len(b); i++ {
		switch b[i] {
		case '"':
			for i++; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' {
					i++
				}
			}
			if i >= len(b) {
				return 0, errArray
			}
		case '{', '[':
			depth++
		case '}':
			if depth == 0 {
				return 0, errArray
			}
			depth--
		case ']':
			if depth > 0 {
				depth--
				continue
			}
			if n > 0 || len(bytes.TrimSpace(b[start:i])) > 0 {
				emit(i)
			}
			if len(bytes.TrimSpace(b[i+1:])) > 0 {
				return 0, httpapi.BadField("body", "invalid JSON array: data after the closing ]")
			}
			return n, nil
		case ',':
			if depth == 0 {
				emit(i)
				start = i + 1
			}
		}
	}
	return 0, errArray
}

func reject(pl *ParsedLine, line int, field, msg string) {
	pl.Err = &LineError{Line: line, Code: httpapi.CodeInvalidArgument, Message: field + ": " + msg}
}

// parseObject fills pl from one JSON object. Unknown fields are ignored so ad servers can send
// more than adpulse reads.
func parseObject(v *fastjson.Value, line int, now time.Time, lim BatchLimits, pl *ParsedLine) {
	obj, err := v.Object()
	if err != nil {
		reject(pl, line, "body", "each event must be a JSON object")
		return
	}
	e := &pl.Event
	var typ string
	// String fields are read first and then copied into one allocation per line: the bytes
	// fastjson returns live in its reusable buffer, and one string per field would be most of
	// the allocations of batch ingest. Fields are looked up by name (rather than visited) so
	// nothing escapes to the heap through a closure.
	stringFields := [...]struct {
		name string
		dst  *string
	}{
		{"type", &typ}, {"ad_id", &e.AdID}, {"impression_id", &e.ImpressionID}, {"event_id", &e.EventID},
		{"user_id", &e.UserID}, {"catalog_id", &e.CatalogID}, {"user_agent", &pl.UserAgent},
		{"ip", &e.SourceIP}, {"device_id", &e.DeviceID},
	}
	var raw [len(stringFields)][]byte
	total := 0
	for i, f := range stringFields {
		fv := obj.Get(f.name)
		if fv == nil || fv.Type() == fastjson.TypeNull {
			continue
		}
		sb, err := fv.StringBytes()
		if err != nil {
			reject(pl, line, f.name, "must be a string")
			return
		}
		if len(sb) > 1024 {
			reject(pl, line, f.name, "too long")
			return
		}
		raw[i] = sb
		total += len(sb)
	}
	var arena strings.Builder
	arena.Grow(total)
	for _, b := range raw {
		arena.Write(b)
	}
	all, off := arena.String(), 0
	for i, b := range raw {
		*stringFields[i].dst = all[off : off+len(b)]
		off += len(b)
	}
	if fv := obj.Get("cpc_micros"); fv != nil && fv.Type() != fastjson.TypeNull {
		n, err := fv.Int64()
		if err != nil || n < 0 || n > maxMicros {
			reject(pl, line, "cpc_micros", "must be an integer from 0 to 1e15")
			return
		}
		e.PriceMicros = n
	}
	if fv := obj.Get("value_micros"); fv != nil && fv.Type() != fastjson.TypeNull {
		n, err := fv.Int64()
		if err != nil || n < 0 || n > event.MaxValueMicros {
			reject(pl, line, "value_micros", "must be an integer from 0 to 1e15")
			return
		}
		e.ValueMicros = n
	}
	timeVal := obj.Get("event_time")
	if typ == "" {
		reject(pl, line, "type", "is required")
		return
	}
	var ok bool
	if e.Type, e.Name, ok = event.ParseTypeName(typ); !ok {
		reject(pl, line, "type", "must be impression, click or match [a-z][a-z0-9_]{0,31}")
		return
	}
	if e.Type == event.TypeInteraction && e.AdID == "" && slices.Contains(lim.ConversionTypes, e.Name) {
		e.Type = event.TypeConversion
	}
	if e.PriceMicros != 0 && e.Type != event.TypeClick {
		reject(pl, line, "cpc_micros", "only clicks carry a price")
		return
	}
	recv := now.UnixMicro()
	e.RecvTime, e.Time = recv, recv
	if timeVal != nil && timeVal.Type() != fastjson.TypeNull {
		t, msg := parseEventTime(timeVal)
		if msg != "" {
			reject(pl, line, "event_time", msg)
			return
		}
		if t.Before(now.Add(-lim.MaxLateness)) {
			reject(pl, line, "event_time", "older than the accepted lateness of "+lim.MaxLateness.String())
			return
		}
		if t.After(now.Add(lim.MaxClockSkew)) {
			reject(pl, line, "event_time", "more than "+lim.MaxClockSkew.String()+" in the future")
			return
		}
		e.Time = t.UnixMicro()
	}
	if err := e.Validate(); err != nil {
		fe := err.(*event.FieldError)
		reject(pl, line, fe.Field, fe.Reason)
		return
	}
	if e.SourceIP != "" {
		// One spelling per address, so that the behavioural rules count one source once.
		e.SourceIP = canonicalIP(e.SourceIP)
	}
}

// maxMicros bounds money fields: a billion units of any currency is past any real click.
const maxMicros = 1_000_000_000_000_000

func parseEventTime(v *fastjson.Value) (time.Time, string) {
	switch v.Type() {
	case fastjson.TypeNumber:
		n, err := v.Int64()
		if err != nil {
			return time.Time{}, "must be RFC 3339 or integer Unix seconds"
		}
		if n < 0 || n > 1<<40 {
			return time.Time{}, "Unix seconds out of range"
		}
		return time.Unix(n, 0), ""
	case fastjson.TypeString:
		sb, _ := v.StringBytes()
		t, err := httpapi.ParseTime(string(sb))
		if err != nil {
			return time.Time{}, err.Error()
		}
		return t, ""
	}
	return time.Time{}, "must be RFC 3339 or integer Unix seconds"
}

// itoa avoids fmt on the hot path.
func itoa(n int) string { return strconv.Itoa(n) }
