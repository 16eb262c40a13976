package query

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/httpapi"
	"github.com/adpulse/adpulse/internal/metricstore"
)

func (h *Handler) serveMetrics(w http.ResponseWriter, r *http.Request) {
	p, err := httpapi.RequireReader(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	mp, err := parseMetricsParams(r.URL.Query(), h.opts.Now(), h.zone)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if p.Role != httpapi.RoleAdmin {
		kind := mp.level.String()
		for _, id := range mp.ids {
			if !h.owns(p.AdvertiserID, mp.level, id) {
				h.fail(w, r, notFound(mp.idsParam, kind, id))
				return
			}
		}
	}
	// Ask the store for each id once; a repeated id gets a copy of its series back.
	uniq := mp.ids
	index := make(map[string]int, len(mp.ids))
	for _, id := range mp.ids {
		if _, ok := index[id]; !ok {
			index[id] = len(index)
		}
	}
	if len(index) < len(mp.ids) {
		uniq = make([]string, 0, len(index))
		for _, id := range mp.ids {
			if index[id] == len(uniq) {
				uniq = append(uniq, id)
			}
		}
	}
	res, err := h.opts.Store.Query(r.Context(), mp.query(uniq))
	if err != nil {
		h.fail(w, r, storeError(err))
		return
	}
	if len(res.Series) != len(uniq) {
		h.fail(w, r, errBadStoreResult)
		return
	}
	body := appendMetrics(make([]byte, 0, 256+len(mp.ids)*len(res.Series[0].Points)*130), mp, res, index)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
	h.metricsOK.Add(1)
}

type storeResultError struct{}

func (storeResultError) Error() string { return "metric store returned the wrong number of series" }

var errBadStoreResult error = storeResultError{}

// appendMetrics writes the /metrics response. It is hand-written because a day of minutes for
// a handful of ads is tens of thousands of points, where encoding/json's reflection and map
// sorting cost more than the store read.
func appendMetrics(b []byte, mp *metricsParams, res *metricstore.Result, index map[string]int) []byte {
	b = append(b, `{"start_time":`...)
	b = appendTime(b, res.Start)
	b = append(b, `,"end_time":`...)
	b = appendTime(b, res.End)
	b = append(b, `,"interval":"`...)
	b = append(b, mp.name...)
	b = append(b, `","series":[`...)
	key := seriesKey(mp.level)
	for i, id := range mp.ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"`...)
		b = append(b, key...)
		b = append(b, `":`...)
		b = appendString(b, id)
		b = append(b, `,"points":[`...)
		for j := range res.Series[index[id]].Points {
			if j > 0 {
				b = append(b, ',')
			}
			b = appendPoint(b, &res.Series[index[id]].Points[j])
		}
		b = append(b, "]}"...)
	}
	return append(b, "]}\n"...)
}

func appendPoint(b []byte, pt *metricstore.Point) []byte {
	b = append(b, `{"time":`...)
	b = appendTime(b, pt.Time)
	b = append(b, `,"impressions":`...)
	b = strconv.AppendInt(b, pt.Impressions, 10)
	b = append(b, `,"clicks":`...)
	b = strconv.AppendInt(b, pt.Clicks, 10)
	b = append(b, `,"invalid_clicks":`...)
	b = strconv.AppendInt(b, pt.InvalidClicks, 10)
	b = append(b, `,"spend_micros":`...)
	b = strconv.AppendInt(b, pt.SpendMicros, 10)
	if len(pt.Interactions) > 0 {
		b = appendCounts(b, `,"interactions":`, pt.Interactions, func(s string) string { return s })
	}
	if pt.Final {
		b = append(b, `,"final":true`...)
	} else {
		b = append(b, `,"final":false`...)
	}
	if len(pt.InvalidByReason) > 0 {
		b = appendCounts(b, `,"invalid_by_reason":`, pt.InvalidByReason, reasonName)
	}
	return append(b, '}')
}

func reasonName(r event.Reason) string {
	if s := r.String(); s != "" {
		return s
	}
	return "none"
}

// appendCounts writes field and the non-zero entries of m as a JSON object with sorted keys,
// or nothing when there are none (the contract omits empty objects).
func appendCounts[K comparable](b []byte, field string, m map[K]int64, name func(K) string) []byte {
	type kv struct {
		k string
		n int64
	}
	var arr [8]kv
	kvs := arr[:0]
	for k, n := range m {
		if n != 0 {
			kvs = append(kvs, kv{name(k), n})
		}
	}
	if len(kvs) == 0 {
		return b
	}
	slices.SortFunc(kvs, func(a, b kv) int { return strings.Compare(a.k, b.k) })
	b = append(b, field...)
	b = append(b, '{')
	for i, e := range kvs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, e.k)
		b = append(b, ':')
		b = strconv.AppendInt(b, e.n, 10)
	}
	return append(b, '}')
}

func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.UTC().AppendFormat(b, time.RFC3339)
	return append(b, '"')
}

// appendString writes s as a JSON string (valid UTF-8; control characters and the characters
// HTML cares about escaped, as encoding/json does).
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20 || c == '<' || c == '>' || c == '&':
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
