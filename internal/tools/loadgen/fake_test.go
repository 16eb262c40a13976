package loadgen

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/clicktoken"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/ivt"
)

const (
	testAdminKey = "adp_admin_test-key-0123456789"
	testSecret   = "k1:0123456789abcdef0123456789abcdef"
)

// fakeServer is a naive in-memory adpulse: the catalog, ingest with exact dedup by
// event.Key, and /metrics and /metrics/top computed from its own counts. It is independent
// of the ledger, so a run against it checks the generator, ledger and checker together.
// Faults can be injected to prove the checker catches them.
type fakeServer struct {
	t           testing.TB
	keys        *clicktoken.Keyring
	bots        *ivt.Detector
	metrics     bool // serve /metrics and /metrics/top
	metricsFail bool // answer them with 500

	mu        sync.Mutex
	rng       *rand.Rand
	campaigns map[string]string // campaign -> advertiser
	ads       map[string]string // ad -> campaign
	seen      map[string]bool
	counts    [numLevels]map[string]map[int64]*counts
	recorded  int

	// Faults. Each fires once, on the n-th counted key (from 1; 0 = never).
	loseNth, doubleNth, shiftNth int
	falseDupNth                  int // the n-th new /events line is answered as a duplicate and dropped
	newLines                     int
	flaky                        float64 // share of requests answered 503 (half after recording them)
}

func newFakeServer(t testing.TB, seed uint64) *fakeServer {
	kr, err := clicktoken.ParseKeyring(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	bots, err := ivt.New()
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{t: t, keys: kr, bots: bots, metrics: true, rng: rand.New(rand.NewPCG(seed, 1)),
		campaigns: map[string]string{}, ads: map[string]string{}, seen: map[string]bool{}}
	for i := range f.counts {
		f.counts[i] = map[string]map[int64]*counts{}
	}
	return f
}

func (f *fakeServer) start() string {
	srv := httptest.NewServer(f.handler())
	f.t.Cleanup(srv.Close)
	return srv.URL
}

func (f *fakeServer) handler() http.Handler {
	mux := http.NewServeMux()
	admin := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") != "Bearer "+testAdminKey {
				writeErr(w, 401, "unauthenticated")
				return
			}
			h(w, r)
		}
	}
	mux.HandleFunc("PUT /api/v1/advertisers/{id}", admin(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{}`)) }))
	mux.HandleFunc("PUT /api/v1/campaigns/{id}", admin(func(w http.ResponseWriter, r *http.Request) {
		var b struct {
			AdvertiserID string `json:"advertiser_id"`
		}
		json.NewDecoder(r.Body).Decode(&b)
		f.mu.Lock()
		f.campaigns[r.PathValue("id")] = b.AdvertiserID
		f.mu.Unlock()
		w.Write([]byte(`{}`))
	}))
	mux.HandleFunc("PUT /api/v1/ads/{id}", admin(func(w http.ResponseWriter, r *http.Request) {
		var b struct {
			CampaignID string `json:"campaign_id"`
		}
		json.NewDecoder(r.Body).Decode(&b)
		f.mu.Lock()
		f.ads[r.PathValue("id")] = b.CampaignID
		f.mu.Unlock()
		w.Write([]byte(`{}`))
	}))
	mux.HandleFunc("POST /api/v1/bulk/ads", admin(func(w http.ResponseWriter, r *http.Request) {
		sc := bufio.NewScanner(r.Body)
		n := 0
		f.mu.Lock()
		for sc.Scan() {
			var b struct {
				ID         string `json:"id"`
				CampaignID string `json:"campaign_id"`
			}
			if json.Unmarshal(sc.Bytes(), &b) == nil {
				f.ads[b.ID] = b.CampaignID
				n++
			}
		}
		f.mu.Unlock()
		fmt.Fprintf(w, `{"accepted":%d,"duplicates":0,"rejected":0,"errors":[]}`, n)
	}))
	mux.HandleFunc("GET /api/v1/ads/{id}", admin(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		c, ok := f.ads[r.PathValue("id")]
		f.mu.Unlock()
		if !ok {
			writeErr(w, 404, "not_found")
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"id": r.PathValue("id"), "campaign_id": c})
	}))
	mux.HandleFunc("POST /api/v1/click-urls", admin(func(w http.ResponseWriter, r *http.Request) {
		var b map[string]string
		json.NewDecoder(r.Body).Decode(&b)
		tok, err := f.keys.Sign(clicktoken.Claims{AdID: b["ad_id"], ImpressionID: b["impression_id"], UserID: b["user_id"], IssuedAt: time.Now()})
		if err != nil {
			writeErr(w, 400, "invalid_argument")
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"click_url": "https://t.example/c/" + tok, "impression_url": "https://t.example/i/" + tok})
	}))
	mux.HandleFunc("GET /i/{token}", func(w http.ResponseWriter, r *http.Request) {
		c, err := f.keys.Verify(r.PathValue("token"))
		if err != nil {
			writeErr(w, 400, "invalid_argument")
			return
		}
		e := event.Event{Type: event.TypeImpression, AdID: c.AdID, ImpressionID: c.ImpressionID}
		if f.bots.IsBot(r.UserAgent()) {
			e.Invalid = event.ReasonBot
		}
		f.single(w, &e, 200)
	})
	mux.HandleFunc("GET /c/{token}", func(w http.ResponseWriter, r *http.Request) {
		c, err := f.keys.Verify(r.PathValue("token"))
		if err != nil {
			writeErr(w, 400, "invalid_argument")
			return
		}
		e := event.Event{Type: event.TypeClick, AdID: c.AdID, ImpressionID: c.ImpressionID}
		switch {
		case c.Expired(time.Now(), time.Hour):
			e.Invalid = event.ReasonExpired
		case f.bots.IsBot(r.UserAgent()):
			e.Invalid = event.ReasonBot
		}
		f.single(w, &e, 302)
	})
	mux.HandleFunc("POST /click", func(w http.ResponseWriter, r *http.Request) {
		var b map[string]string
		if json.NewDecoder(r.Body).Decode(&b) != nil || b["impression_id"] == "" {
			writeErr(w, 400, "invalid_argument")
			return
		}
		e := event.Event{Type: event.TypeClick, AdID: b["ad_id"], ImpressionID: b["impression_id"]}
		if f.bots.IsBot(r.UserAgent()) {
			e.Invalid = event.ReasonBot
		}
		f.single(w, &e, 302)
	})
	mux.HandleFunc("POST /events", admin(f.events))
	mux.HandleFunc("GET /metrics", admin(f.serveMetrics))
	mux.HandleFunc("GET /metrics/top", admin(f.serveTop))
	return mux
}

func writeErr(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"error":{"code":%q,"message":"fake"}}`, code)
}

// flake decides, under f.mu, whether this request fails with 503 before or after recording.
func (f *fakeServer) flake() (before, after bool) {
	if f.flaky == 0 || f.rng.Float64() >= f.flaky {
		return false, false
	}
	if f.rng.IntN(2) == 0 {
		return true, false
	}
	return false, true
}

func (f *fakeServer) single(w http.ResponseWriter, e *event.Event, status int) {
	f.mu.Lock()
	before, after := f.flake()
	if _, ok := f.ads[e.AdID]; !ok {
		f.mu.Unlock()
		writeErr(w, 404, "not_found")
		return
	}
	if !before {
		f.record(e, time.Now())
	}
	f.mu.Unlock()
	if before || after {
		writeErr(w, 503, "unavailable")
		return
	}
	if status == 302 {
		w.Header().Set("Location", "https://shop.example/")
	}
	w.WriteHeader(status)
}

// record applies one event under f.mu and reports whether its key was new.
func (f *fakeServer) record(e *event.Event, at time.Time) bool {
	k := e.Key()
	if f.seen[k] {
		return false
	}
	f.seen[k] = true
	var m Metric
	switch {
	case e.Type == event.TypeImpression && e.Invalid == event.ReasonNone:
		m = MetricImpressions
	case e.Type == event.TypeClick && e.Invalid == event.ReasonNone:
		m = MetricClicks
	case e.Type == event.TypeClick:
		m = MetricInvalidClicks
	case e.Type == event.TypeInteraction && e.Name == "add_to_cart":
		m = MetricAddToCart
	case e.Type == event.TypeInteraction && e.Name == "order":
		m = MetricOrder
	default:
		return true // an invalid impression: no counter
	}
	f.recorded++
	minute := floorDiv(at.Unix(), 60)
	n := int64(1)
	switch f.recorded {
	case f.loseNth:
		return true
	case f.doubleNth:
		n = 2
	case f.shiftNth:
		minute++
	}
	campaign := f.ads[e.AdID]
	for lv, id := range [numLevels]string{e.AdID, campaign, f.campaigns[campaign]} {
		mins := f.counts[lv][id]
		if mins == nil {
			mins = map[int64]*counts{}
			f.counts[lv][id] = mins
		}
		c := mins[minute]
		if c == nil {
			c = new(counts)
			mins[minute] = c
		}
		c[m] += n
	}
	return true
}

func (f *fakeServer) events(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	type lineErr struct {
		Line    int    `json:"line"`
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	resp := struct {
		Accepted   int       `json:"accepted"`
		Duplicates int       `json:"duplicates"`
		Rejected   int       `json:"rejected"`
		Errors     []lineErr `json:"errors"`
	}{Errors: []lineErr{}}
	f.mu.Lock()
	before, after := f.flake()
	if before {
		f.mu.Unlock()
		writeErr(w, 503, "unavailable")
		return
	}
	now := time.Now()
	for i, line := range bytes.Split(bytes.TrimSpace(body), []byte("\n")) {
		var l struct {
			Type         string          `json:"type"`
			AdID         string          `json:"ad_id"`
			ImpressionID string          `json:"impression_id"`
			EventID      string          `json:"event_id"`
			UserAgent    string          `json:"user_agent"`
			EventTime    json.RawMessage `json:"event_time"`
		}
		if err := json.Unmarshal(line, &l); err != nil {
			f.t.Errorf("events line %d: %v: %s", i+1, err, line)
			continue
		}
		typ, name, ok := event.ParseTypeName(l.Type)
		if _, known := f.ads[l.AdID]; !ok || !known {
			resp.Rejected++
			resp.Errors = append(resp.Errors, lineErr{i + 1, "not_found", "ad_id: no such ad"})
			continue
		}
		at := now
		if len(l.EventTime) > 0 {
			s := strings.Trim(string(l.EventTime), `"`)
			if n, err := strconv.ParseInt(s, 10, 64); err == nil {
				at = time.Unix(n, 0)
			} else if at, err = time.Parse(time.RFC3339, s); err != nil {
				f.t.Errorf("events line %d: event_time %s", i+1, l.EventTime)
			}
		}
		e := event.Event{Type: typ, Name: name, AdID: l.AdID, ImpressionID: l.ImpressionID, EventID: l.EventID}
		if l.UserAgent != "" && f.bots.IsBot(l.UserAgent) && typ != event.TypeInteraction {
			e.Invalid = event.ReasonBot
		}
		if !f.seen[e.Key()] {
			f.newLines++
			if f.newLines == f.falseDupNth {
				resp.Duplicates++
				continue
			}
		}
		if f.record(&e, at) {
			resp.Accepted++
		} else {
			resp.Duplicates++
		}
	}
	f.mu.Unlock()
	if after {
		writeErr(w, 503, "unavailable")
		return
	}
	json.NewEncoder(w).Encode(resp)
}

func parseMinute(t testing.TB, s string) int64 {
	tm, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Errorf("time %q: %v", s, err)
	}
	return tm.Unix() / 60
}

func (f *fakeServer) serveMetrics(w http.ResponseWriter, r *http.Request) {
	if !f.metrics {
		writeErr(w, 404, "not_found")
		return
	}
	if f.metricsFail {
		writeErr(w, 500, "internal")
		return
	}
	q := r.URL.Query()
	start, end := parseMinute(f.t, q.Get("start_time")), parseMinute(f.t, q.Get("end_time"))
	if q.Get("interval") != "1m" {
		f.t.Errorf("interval %q", q.Get("interval"))
	}
	var lv Level
	var ids []string
	for l, p := range [numLevels]string{"ad_ids", "campaign_ids", "advertiser_ids"} {
		if v := q.Get(p); v != "" {
			lv, ids = Level(l), strings.Split(v, ",")
		}
	}
	type point struct {
		Time          string           `json:"time"`
		Impressions   int64            `json:"impressions"`
		Clicks        int64            `json:"clicks"`
		InvalidClicks int64            `json:"invalid_clicks"`
		SpendMicros   int64            `json:"spend_micros"`
		Interactions  map[string]int64 `json:"interactions,omitempty"`
	}
	var series []map[string]any
	f.mu.Lock()
	for _, id := range ids {
		var pts []point
		for m := start; m < end; m++ {
			p := point{Time: minuteStart(m).Format(time.RFC3339)}
			if c := f.counts[lv][id][m]; c != nil {
				p.Impressions, p.Clicks, p.InvalidClicks = c[MetricImpressions], c[MetricClicks], c[MetricInvalidClicks]
				if c[MetricAddToCart]+c[MetricOrder] > 0 {
					p.Interactions = map[string]int64{"add_to_cart": c[MetricAddToCart], "order": c[MetricOrder]}
				}
			}
			pts = append(pts, p)
		}
		series = append(series, map[string]any{lv.String() + "_id": id, "points": pts})
	}
	f.mu.Unlock()
	json.NewEncoder(w).Encode(map[string]any{"start_time": minuteStart(start), "end_time": minuteStart(end), "interval": "1m", "series": series})
}

func (f *fakeServer) serveTop(w http.ResponseWriter, r *http.Request) {
	if !f.metrics {
		writeErr(w, 404, "not_found")
		return
	}
	q := r.URL.Query()
	start, end := parseMinute(f.t, q.Get("start_time")), parseMinute(f.t, q.Get("end_time"))
	lv, ok := map[string]Level{"ad": LevelAd, "campaign": LevelCampaign, "advertiser": LevelAdvertiser}[q.Get("by")]
	if !ok {
		writeErr(w, 400, "invalid_argument")
		return
	}
	m := map[string]Metric{"clicks": MetricClicks, "impressions": MetricImpressions}[q.Get("metric")]
	n, _ := strconv.Atoi(q.Get("n"))
	var items []topItem
	f.mu.Lock()
	for id, mins := range f.counts[lv] {
		var v int64
		for t, c := range mins {
			if t >= start && t < end {
				v += c[m]
			}
		}
		if v > 0 {
			items = append(items, topItem{id, v})
		}
	}
	f.mu.Unlock()
	slices.SortFunc(items, func(a, b topItem) int {
		if a.value != b.value {
			return int(b.value - a.value)
		}
		return strings.Compare(a.id, b.id)
	})
	out := []map[string]any{}
	for _, it := range items[:min(n, len(items))] {
		out = append(out, map[string]any{lv.String() + "_id": it.id, m.String(): it.value})
	}
	json.NewEncoder(w).Encode(map[string]any{"metric": m.String(), "by": lv.String(), "items": out})
}
