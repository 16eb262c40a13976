package query

import (
	"context"
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
	// The store is read in chunks of ids of at most ChunkPoints points, each encoded and
	// written before the next is read: what one request holds does not grow with its
	// response. The first chunk is read before anything is written, so a request that fails
	// at once gets a proper error.
	h.catchUp(r)
	per := max(1, ChunkPoints/mp.points)
	chunk := mp.ids[:min(per, len(mp.ids))]
	res, err := h.read(r, mp, chunk)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)

	bp, _ := h.bufs.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
		*bp = make([]byte, 0, httpapi.StreamPiece+4<<10)
	}
	st := httpapi.NewStream(w, *bp, h.opts.WriteIdle, h.opts.WriteTimeout)
	st.B = appendMetricsHead(st.B, mp, res)
	for i := 0; i < len(mp.ids) && st.Err() == nil; i += len(chunk) {
		if i > 0 {
			chunk = mp.ids[i:min(i+per, len(mp.ids))]
			if res, err = h.read(r, mp, chunk); err != nil {
				// Too late for an error status: cut the response so that the client sees a
				// failed request, not a shorter answer.
				h.failed.Add(1)
				if r.Context().Err() == nil {
					h.opts.Logger.Error("analytics query failed mid-response", "path", r.URL.Path, "query", r.URL.RawQuery, "err", err)
				}
				panic(http.ErrAbortHandler)
			}
			st.B = append(st.B, ',')
		}
		appendSeries(st, mp, i, res)
	}
	st.B = append(st.B, "]}\n"...)
	err = st.Flush(true)
	if cap(st.B) <= 4*httpapi.StreamPiece {
		*bp = st.B[:0]
		h.bufs.Put(bp)
	}
	if err == nil {
		h.metricsOK.Add(1)
	}
}

// read asks the store for the series of ids, within the store timeout.
func (h *Handler) read(r *http.Request, mp *metricsParams, ids []string) (*metricstore.Result, error) {
	ctx, cancel := context.WithTimeout(r.Context(), h.opts.StoreTimeout)
	defer cancel()
	q := mp.query(ids)
	// What the aggregator counted but has not committed: read before the store, so a commit
	// landing in between is in the store's snapshot rather than in neither
	// (metricstore/pending.go); the snapshot's offsets then tell which parts it holds.
	var pending []metricstore.PendingPart
	if h.opts.Pending != nil {
		if b, err := q.Buckets(); err == nil {
			if pending = h.opts.Pending.Pending(&q, b); len(pending) > 0 {
				q.OffsetsOf = h.opts.Pending.PendingConsumer()
			}
		}
	}
	res, err := h.opts.Store.Query(ctx, q)
	if err != nil {
		return nil, storeError(err)
	}
	if len(res.Series) != len(ids) {
		return nil, errBadStoreResult
	}
	res.AddPending(pending)
	return res, nil
}

type storeResultError struct{}

func (storeResultError) Error() string { return "metric store returned the wrong number of series" }

var errBadStoreResult error = storeResultError{}

// appendMetricsHead writes the /metrics response up to its first series. The response is
// hand-written because a day of minutes for a handful of ads is tens of thousands of points,
// where encoding/json's reflection and map sorting cost more than the store read.
func appendMetricsHead(b []byte, mp *metricsParams, res *metricstore.Result) []byte {
	b = append(b, `{"start_time":`...)
	b = appendTime(b, res.Start)
	b = append(b, `,"end_time":`...)
	b = appendTime(b, res.End)
	b = append(b, `,"interval":"`...)
	b = append(b, mp.name...)
	return append(b, `","series":[`...)
}

// appendSeries writes the series of res, the ids of mp from first on, flushing st as it
// fills; it stops early when a write failed.
func appendSeries(st *httpapi.Stream, mp *metricsParams, first int, res *metricstore.Result) {
	key := seriesKey(mp.level)
	for i := range res.Series {
		if i > 0 {
			st.B = append(st.B, ',')
		}
		st.B = append(st.B, `{"`...)
		st.B = append(st.B, key...)
		st.B = append(st.B, `":`...)
		st.B = appendString(st.B, mp.ids[first+i])
		st.B = append(st.B, `,"points":[`...)
		pts := res.Series[i].Points
		for j := range pts {
			if j > 0 {
				st.B = append(st.B, ',')
			}
			st.B = appendPoint(st.B, &pts[j])
			if st.Flush(false) != nil {
				return
			}
		}
		st.B = append(st.B, "]}"...)
	}
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
	b = append(b, `,"conversions":`...)
	b = strconv.AppendInt(b, pt.Conversions, 10)
	b = append(b, `,"conversion_value_micros":`...)
	b = strconv.AppendInt(b, pt.ConversionValueMicros, 10)
	b = append(b, `,"view_conversions":`...)
	b = strconv.AppendInt(b, pt.ViewConversions, 10)
	b = append(b, `,"view_conversion_value_micros":`...)
	b = strconv.AppendInt(b, pt.ViewConversionValueMicros, 10)
	if len(pt.Interactions) > 0 {
		b = appendCounts(b, `,"interactions":`, pt.Interactions, func(s string) string { return s })
	}
	if pt.Final {
		b = append(b, `,"final":true`...)
	} else {
		b = append(b, `,"final":false`...)
	}
	if pt.Reconciled {
		b = append(b, `,"reconciled":true`...)
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
