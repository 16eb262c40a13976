// Package baseline is the HTTP front of the two designs `adpulse bench` compares adpulse with:
// a minimal Go click service over a Store, where the Store is either raw rows in ClickHouse
// (baseline/chbase) or counters in Redis (baseline/redisbase). It serves the subset of the
// adpulse contract (API.md) the bench drives, with the same shapes, so the same load
// generator and the same ground-truth check run against all three:
//
//	GET  /c/{token}     verify the signed token (same keyring and code as adpulse), record, 302
//	POST /events        NDJSON impressions and clicks (admin key), answered like adpulse
//	GET  /metrics       ad_ids only, any whole-minute interval
//	GET  /metrics/top   by=ad only, metric clicks or impressions
//	GET  /readyz        200
//
// What it deliberately leaves out (it would only slow the baselines down): a catalog (the
// landing URL comes from a function the bench gives), campaigns and advertisers, bot and
// expiry rules, billing. Each event is one impression or one click per impression id, as in
// adpulse; how duplicates are removed is the Store's business.
package baseline

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/adpulse/adpulse/internal/clicktoken"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/httpapi"
	"github.com/valyala/fastjson"
)

// Kind is what an event counts as.
type Kind uint8

// Kinds of events a baseline counts.
const (
	Impression Kind = iota
	Click
	NumKinds
)

func (k Kind) String() string {
	if k == Click {
		return "clicks"
	}
	return "impressions"
}

// Event is one impression or click. Its idempotency key is (Kind, ImpressionID).
type Event struct {
	Kind         Kind
	AdID         string
	ImpressionID string
	Time         time.Time // event time, whole seconds
}

// Counts of one bucket, by Kind.
type Counts [NumKinds]int64

// TopItem is one entry of a top list.
type TopItem struct {
	AdID  string
	Value int64
}

// Store is a baseline's storage design.
type Store interface {
	// Record stores the events and returns when they are stored (the baseline's
	// acknowledgement); accepted is how many were new, if the store knows at write time.
	Record(ctx context.Context, evs []Event) (accepted int, err error)
	// Series returns, per requested ad, the counts per bucket start (Unix seconds) over
	// [from, to) in buckets of step, each event once.
	Series(ctx context.Context, ads []string, from, to time.Time, step time.Duration) (map[string]map[int64]Counts, error)
	// Top returns the n ads with the highest count of kind over [from, to), highest first,
	// ties by ad id ascending, zeros not listed.
	Top(ctx context.Context, kind Kind, n int, from, to time.Time) ([]TopItem, error)
	Close() error
}

// Options of a Handler.
type Options struct {
	Store    Store
	Tokens   *clicktoken.Keyring
	AdminKey string
	// Landing gives the landing URL of an ad, or false for an unknown ad (the baselines keep
	// no catalog; the bench knows its layout).
	Landing func(adID string) (string, bool)
	MaxBody int64            // of POST /events; default 10 MiB
	Now     func() time.Time // default time.Now
}

// Handler serves the baseline's HTTP API.
type Handler struct {
	o   Options
	mux *http.ServeMux
	pp  fastjson.ParserPool
}

// NewHandler returns the HTTP handler of a baseline over o.Store.
func NewHandler(o Options) *Handler {
	if o.MaxBody <= 0 {
		o.MaxBody = 10 << 20
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	h := &Handler{o: o, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /c/{token}", h.click)
	h.mux.HandleFunc("POST /events", h.events)
	h.mux.HandleFunc("GET /metrics", h.metrics)
	h.mux.HandleFunc("GET /metrics/top", h.top)
	h.mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func unavailable(err error) error {
	return httpapi.Errorf(httpapi.CodeUnavailable, "store: "+err.Error())
}

func (h *Handler) click(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	c, err := h.o.Tokens.Verify(r.PathValue("token"))
	if err != nil {
		httpapi.WriteError(w, httpapi.BadField("token", "malformed or bad signature"))
		return
	}
	landing, ok := h.o.Landing(c.AdID)
	if !ok {
		httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeNotFound, "ad_id: no such ad"))
		return
	}
	ev := [1]Event{{Kind: Click, AdID: c.AdID, ImpressionID: c.ImpressionID, Time: h.o.Now().Truncate(time.Second)}}
	if _, err := h.o.Store.Record(r.Context(), ev[:]); err != nil {
		httpapi.WriteError(w, unavailable(err))
		return
	}
	w.Header().Set("Location", landing)
	w.WriteHeader(http.StatusFound)
}

func (h *Handler) authorized(r *http.Request) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(h.o.AdminKey)) == 1
}

type lineError struct {
	Line    int    `json:"line"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (h *Handler) events(w http.ResponseWriter, r *http.Request) {
	if !h.authorized(r) {
		httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeUnauthenticated, "authorization: the admin key is required"))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.o.MaxBody))
	if err != nil {
		httpapi.WriteError(w, httpapi.Errorf(httpapi.CodePayloadTooLarge, "body: too large or unreadable"))
		return
	}
	now := h.o.Now()
	p := h.pp.Get()
	defer h.pp.Put(p)
	evs := make([]Event, 0, bytes.Count(body, []byte{'\n'})+1)
	var errs []lineError
	line := 0
	for len(body) > 0 {
		var l []byte
		l, body, _ = bytes.Cut(body, []byte{'\n'})
		line++
		if len(bytes.TrimSpace(l)) == 0 {
			continue
		}
		ev, err := parseLine(p, l, now)
		if err != nil {
			errs = append(errs, lineError{Line: line, Code: httpapi.CodeInvalidArgument, Message: err.Error()})
			continue
		}
		if _, ok := h.o.Landing(ev.AdID); !ok {
			errs = append(errs, lineError{Line: line, Code: httpapi.CodeNotFound, Message: "ad_id: no such ad"})
			continue
		}
		evs = append(evs, ev)
	}
	accepted, err := h.o.Store.Record(r.Context(), evs)
	if err != nil {
		httpapi.WriteError(w, unavailable(err))
		return
	}
	if errs == nil {
		errs = []lineError{}
	}
	httpapi.WriteJSON(w, http.StatusOK, struct {
		Accepted   int         `json:"accepted"`
		Duplicates int         `json:"duplicates"`
		Rejected   int         `json:"rejected"`
		Errors     []lineError `json:"errors"`
	}{accepted, len(evs) - accepted, len(errs), errs})
}

// parseLine reads one NDJSON event: type impression or click, impression_id, ad_id and an
// optional event_time (RFC 3339 or Unix seconds; default now).
func parseLine(p *fastjson.Parser, l []byte, now time.Time) (Event, error) {
	v, err := p.ParseBytes(l)
	if err != nil {
		return Event{}, errors.New("not a JSON object")
	}
	var ev Event
	switch string(v.GetStringBytes("type")) {
	case "impression":
		ev.Kind = Impression
	case "click":
		ev.Kind = Click
	default:
		return Event{}, errors.New("type: only impression and click are counted by this baseline")
	}
	ev.AdID = string(v.GetStringBytes("ad_id"))
	ev.ImpressionID = string(v.GetStringBytes("impression_id"))
	if !event.ValidID(ev.AdID) || !event.ValidID(ev.ImpressionID) {
		return Event{}, errors.New("ad_id and impression_id must be 1-64 characters of [A-Za-z0-9._:-]")
	}
	ev.Time = now.Truncate(time.Second)
	if t := v.Get("event_time"); t != nil {
		var s string
		switch t.Type() {
		case fastjson.TypeNumber:
			s = t.String()
		case fastjson.TypeString:
			s = string(t.GetStringBytes())
		default:
			return Event{}, errors.New("event_time: RFC 3339 or Unix seconds")
		}
		tt, err := httpapi.ParseTime(s)
		if err != nil {
			return Event{}, errors.New("event_time: RFC 3339 or Unix seconds")
		}
		ev.Time = tt.Truncate(time.Second)
	}
	return ev, nil
}

// parseInterval reads 1m, 5m, 1h, 1d, 30m, 2h...: a whole, positive number of minutes.
func parseInterval(s string) (time.Duration, error) {
	if s == "" {
		return time.Minute, nil
	}
	if len(s) < 2 {
		return 0, errors.New("interval: like 1m, 1h or 1d")
	}
	n, err := strconv.Atoi(s[:len(s)-1])
	if err != nil || n <= 0 {
		return 0, errors.New("interval: like 1m, 1h or 1d")
	}
	unit := map[byte]time.Duration{'m': time.Minute, 'h': time.Hour, 'd': 24 * time.Hour}[s[len(s)-1]]
	if unit == 0 {
		return 0, errors.New("interval: like 1m, 1h or 1d")
	}
	return time.Duration(n) * unit, nil
}

func timeParam(q map[string][]string, name string, def time.Time) (time.Time, error) {
	v := q[name]
	if len(v) == 0 || v[0] == "" {
		return def, nil
	}
	t, err := httpapi.ParseTime(v[0])
	if err != nil {
		return time.Time{}, httpapi.BadField(name, "RFC 3339 or Unix seconds")
	}
	return t, nil
}

func floorTo(t time.Time, step time.Duration) time.Time {
	s := int64(step / time.Second)
	u := t.Unix()
	return time.Unix(u-((u%s)+s)%s, 0).UTC()
}

func ceilTo(t time.Time, step time.Duration) time.Time {
	f := floorTo(t, step)
	if f.Before(t) {
		return f.Add(step)
	}
	return f
}

func (h *Handler) metrics(w http.ResponseWriter, r *http.Request) {
	if !h.authorized(r) {
		httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeUnauthenticated, "authorization: the admin key is required"))
		return
	}
	q := r.URL.Query()
	var ads []string
	for _, v := range q["ad_ids"] {
		for id := range strings.SplitSeq(v, ",") {
			if !event.ValidID(id) {
				httpapi.WriteError(w, httpapi.BadField("ad_ids", "ids must be 1-64 characters of [A-Za-z0-9._:-]"))
				return
			}
			ads = append(ads, id)
		}
	}
	if len(ads) == 0 || len(ads) > 1000 {
		httpapi.WriteError(w, httpapi.BadField("ad_ids", "1-1000 ad ids (this baseline serves ad series only)"))
		return
	}
	step, err := parseInterval(q.Get("interval"))
	if err != nil {
		httpapi.WriteError(w, httpapi.BadField("interval", err.Error()))
		return
	}
	now := h.o.Now()
	to, err := timeParam(q, "end_time", now)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	from, err := timeParam(q, "start_time", to.Add(-time.Hour))
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	from, to = floorTo(from, step), ceilTo(to, step)
	points := int64(to.Sub(from) / step)
	if points <= 0 || points > 10000 {
		httpapi.WriteError(w, httpapi.BadField("start_time", "must be before end_time, at most 10000 points"))
		return
	}
	got, err := h.o.Store.Series(r.Context(), ads, from, to, step)
	if err != nil {
		httpapi.WriteError(w, unavailable(err))
		return
	}
	b := make([]byte, 0, 256+len(ads)*int(points)*100)
	b = fmt.Appendf(b, `{"start_time":%q,"end_time":%q,"interval":%q,"series":[`, httpapi.FormatTime(from), httpapi.FormatTime(to), q.Get("interval"))
	for i, ad := range ads {
		if i > 0 {
			b = append(b, ',')
		}
		b = fmt.Appendf(b, `{"ad_id":%q,"points":[`, ad)
		buckets := got[ad]
		for p := range points {
			t := from.Add(time.Duration(p) * step)
			c := buckets[t.Unix()]
			if p > 0 {
				b = append(b, ',')
			}
			b = fmt.Appendf(b, `{"time":%q,"impressions":%d,"clicks":%d,"invalid_clicks":0,"spend_micros":0}`, httpapi.FormatTime(t), c[Impression], c[Click])
		}
		b = append(b, "]}"...)
	}
	b = append(b, "]}"...)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

func (h *Handler) top(w http.ResponseWriter, r *http.Request) {
	if !h.authorized(r) {
		httpapi.WriteError(w, httpapi.Errorf(httpapi.CodeUnauthenticated, "authorization: the admin key is required"))
		return
	}
	q := r.URL.Query()
	n := 10
	if v := q.Get("n"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 || n > 1000 {
			httpapi.WriteError(w, httpapi.BadField("n", "1-1000"))
			return
		}
	}
	if by := q.Get("by"); by != "" && by != "ad" {
		httpapi.WriteError(w, httpapi.BadField("by", "this baseline ranks ads only"))
		return
	}
	kind := Click
	switch q.Get("metric") {
	case "", "clicks":
	case "impressions":
		kind = Impression
	default:
		httpapi.WriteError(w, httpapi.BadField("metric", "clicks or impressions"))
		return
	}
	now := h.o.Now()
	var from, to time.Time
	if q.Get("start_time") != "" || q.Get("end_time") != "" {
		var err error
		if to, err = timeParam(q, "end_time", now); err != nil {
			httpapi.WriteError(w, err)
			return
		}
		if from, err = timeParam(q, "start_time", to.Add(-5*time.Minute)); err != nil {
			httpapi.WriteError(w, err)
			return
		}
		from, to = floorTo(from, time.Minute), ceilTo(to, time.Minute)
	} else {
		minutes := 5
		if v := q.Get("minutes"); v != "" {
			var err error
			if minutes, err = strconv.Atoi(v); err != nil || minutes < 1 || minutes > 100000 {
				httpapi.WriteError(w, httpapi.BadField("minutes", "a positive number of minutes"))
				return
			}
		}
		to = floorTo(now, time.Minute).Add(time.Minute)
		from = to.Add(-time.Duration(minutes) * time.Minute)
	}
	if !from.Before(to) {
		httpapi.WriteError(w, httpapi.BadField("start_time", "must be before end_time"))
		return
	}
	items, err := h.o.Store.Top(r.Context(), kind, n, from, to)
	if err != nil {
		httpapi.WriteError(w, unavailable(err))
		return
	}
	b := fmt.Appendf(nil, `{"start_time":%q,"end_time":%q,"metric":%q,"by":"ad","items":[`, httpapi.FormatTime(from), httpapi.FormatTime(to), kind.String())
	for i, it := range items {
		if i > 0 {
			b = append(b, ',')
		}
		b = fmt.Appendf(b, `{"ad_id":%q,%q:%d}`, it.AdID, kind.String(), it.Value)
	}
	b = append(b, "]}"...)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

// SortTop orders items highest first, ties by ad id ascending, drops zeros and keeps n.
func SortTop(items []TopItem, n int) []TopItem {
	items = slices.DeleteFunc(items, func(it TopItem) bool { return it.Value <= 0 })
	slices.SortFunc(items, func(a, b TopItem) int {
		if a.Value != b.Value {
			if a.Value > b.Value {
				return -1
			}
			return 1
		}
		return strings.Compare(a.AdID, b.AdID)
	})
	if len(items) > n {
		items = items[:n]
	}
	return items
}
