package query

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/httpapi"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/query/topn"
)

// Limits of the API contract.
const (
	MaxIDs    = 1000  // ids per /metrics request, as given (repeats included)
	MaxPoints = 10000 // points per series
	// MaxTotalPoints bounds one response (distinct ids x points): the contract's two limits
	// together would allow ten million points, a response of gigabytes. This allows 1000 ids
	// over a day at 15m, 69 ads over a day at 1m, or 10 ids at the full 10000 points: about
	// 15 MB of JSON.
	MaxTotalPoints = 100_000
	// ChunkPoints is how many points /metrics reads from the store at once (at least one
	// series): what a request holds while a client reads its response.
	ChunkPoints     = 10_000
	DefaultRange    = time.Hour
	MaxTopMinutes   = 1440 // the top-N window, and how far back it may start
	DefaultTopN     = 10
	DefaultMinutes  = 5
	maxIntervalDays = 3660 // about ten years: far beyond any useful bucket, and no overflow
)

// idParams are the three ways to name the series of /metrics, by level.
var idParams = [...]struct {
	name  string
	level metricstore.Level
	key   string // the key of a series in the response
}{
	{"ad_ids", metricstore.LevelAd, "ad_id"},
	{"campaign_ids", metricstore.LevelCampaign, "campaign_id"},
	{"advertiser_ids", metricstore.LevelAdvertiser, "advertiser_id"},
}

// seriesKey is the response key of an id at level l.
func seriesKey(l metricstore.Level) string { return idParams[l-1].key }

// metricsParams is a validated GET /metrics request.
type metricsParams struct {
	level    metricstore.Level
	idsParam string   // which of ad_ids, campaign_ids, advertiser_ids
	ids      []string // as requested, in order, each once (where it first appears)
	points   int      // per series
	start    time.Time
	end      time.Time
	interval time.Duration
	name     string         // the interval, normalised: "1m", "90m", "2h", "1d"
	loc      *time.Location // nil: buckets aligned in UTC
}

// single returns the only value of a parameter, or "" and false when it is absent. A
// parameter given twice is an error rather than a silent choice.
func single(v url.Values, name string) (string, bool, error) {
	vs, ok := v[name]
	if !ok {
		return "", false, nil
	}
	if len(vs) > 1 {
		return "", false, httpapi.BadField(name, "given more than once")
	}
	return vs[0], true, nil
}

// quoteID quotes a caller's string for an error message, shortened.
func quoteID(s string) string {
	if len(s) > 70 {
		s = s[:64] + "..."
	}
	return strconv.Quote(s)
}

// parseIDs splits the comma-separated, possibly repeated values of one parameter. An id named
// more than once is kept once, where it first appears; the limit counts the ids as given.
func parseIDs(name string, vs []string) ([]string, error) {
	var ids []string
	seen := make(map[string]struct{})
	given := 0
	for _, v := range vs {
		for id := range strings.SplitSeq(v, ",") {
			if id == "" {
				return nil, httpapi.BadField(name, "empty id (ids are comma-separated, 1-64 characters from [A-Za-z0-9._:-])")
			}
			if !event.ValidID(id) {
				return nil, httpapi.BadField(name, "invalid id "+quoteID(id)+" (ids are 1-64 characters from [A-Za-z0-9._:-])")
			}
			if given == MaxIDs {
				return nil, httpapi.BadField(name, fmt.Sprintf("more than %d ids", MaxIDs))
			}
			given++
			if _, dup := seen[id]; dup {
				continue
			}
			seen[id] = struct{}{}
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// parseInterval parses a whole positive number of minutes, hours or days ("1m", "90m", "2h",
// "1d") and returns it with its normalised name (the largest unit that divides it).
func parseInterval(s string) (time.Duration, string, error) {
	const want = "must be a whole number of minutes, hours or days, such as 1m, 5m, 15m, 1h, 1d or 30m"
	if len(s) < 2 || len(s) > 12 {
		return 0, "", httpapi.BadField("interval", want)
	}
	digits, unit := s[:len(s)-1], s[len(s)-1]
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return 0, "", httpapi.BadField("interval", want)
		}
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil {
		return 0, "", httpapi.BadField("interval", want)
	}
	var per int64
	switch unit {
	case 'm':
		per = 1
	case 'h':
		per = 60
	case 'd':
		per = 1440
	default:
		return 0, "", httpapi.BadField("interval", want)
	}
	if n == 0 {
		return 0, "", httpapi.BadField("interval", "must be positive")
	}
	if n > maxIntervalDays*1440/per {
		return 0, "", httpapi.BadField("interval", fmt.Sprintf("at most %dd", maxIntervalDays))
	}
	minutes := n * per
	var name string
	switch {
	case minutes%1440 == 0:
		name = strconv.FormatInt(minutes/1440, 10) + "d"
	case minutes%60 == 0:
		name = strconv.FormatInt(minutes/60, 10) + "h"
	default:
		name = strconv.FormatInt(minutes, 10) + "m"
	}
	return time.Duration(minutes) * time.Minute, name, nil
}

// validZoneName accepts IANA names such as "Asia/Kolkata", "America/Argentina/Buenos_Aires",
// "Etc/GMT+5" or "UTC", and refuses what LoadLocation would read from elsewhere ("Local",
// paths).
func validZoneName(s string) bool {
	if s == "" || len(s) > 64 || s == "Local" || s[0] == '/' || strings.Contains(s, "..") || strings.HasSuffix(s, "/") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '+' || c == '/') {
			return false
		}
	}
	return true
}

// parseTimes parses start_time and end_time; absent ones are zero.
func parseTimes(v url.Values) (start, end time.Time, err error) {
	for _, p := range []struct {
		name string
		t    *time.Time
	}{{"start_time", &start}, {"end_time", &end}} {
		s, ok, err := single(v, p.name)
		if err != nil {
			return start, end, err
		}
		if !ok {
			continue
		}
		t, err := httpapi.ParseTime(s)
		if err != nil {
			return start, end, httpapi.BadField(p.name, err.Error())
		}
		if t.Before(time.Unix(0, 0)) {
			return start, end, httpapi.BadField(p.name, "before 1970-01-01T00:00:00Z")
		}
		*p.t = t
	}
	return start, end, nil
}

// parseMetricsParams validates a GET /metrics query. zone loads a time zone by name.
func parseMetricsParams(v url.Values, now time.Time, zone func(string) (*time.Location, error)) (*metricsParams, error) {
	p := &metricsParams{}
	for _, ip := range idParams {
		vs, ok := v[ip.name]
		if !ok {
			continue
		}
		if p.idsParam != "" {
			return nil, httpapi.BadField(ip.name, "cannot be combined with "+p.idsParam+": give exactly one of ad_ids, campaign_ids, advertiser_ids")
		}
		ids, err := parseIDs(ip.name, vs)
		if err != nil {
			return nil, err
		}
		p.idsParam, p.level, p.ids = ip.name, ip.level, ids
	}
	if p.idsParam == "" {
		return nil, httpapi.BadField("ad_ids", "required: give exactly one of ad_ids, campaign_ids, advertiser_ids")
	}

	start, end, err := parseTimes(v)
	if err != nil {
		return nil, err
	}
	if end.IsZero() {
		end = now
	}
	if start.IsZero() {
		start = end.Add(-DefaultRange)
		if start.Before(time.Unix(0, 0)) {
			start = time.Unix(0, 0).UTC()
		}
	}
	if !start.Before(end) {
		return nil, httpapi.BadField("start_time", "must be before end_time")
	}

	p.interval, p.name = time.Minute, "1m"
	if s, ok, err := single(v, "interval"); err != nil {
		return nil, err
	} else if ok {
		if p.interval, p.name, err = parseInterval(s); err != nil {
			return nil, err
		}
	}

	if s, ok, err := single(v, "tz"); err != nil {
		return nil, err
	} else if ok {
		if !validZoneName(s) {
			return nil, httpapi.BadField("tz", "must be an IANA time zone name such as Asia/Kolkata, got "+quoteID(s))
		}
		loc, err := zone(s)
		if err != nil {
			return nil, httpapi.BadField("tz", "unknown time zone "+quoteID(s))
		}
		if p.interval%(24*time.Hour) != 0 {
			return nil, httpapi.BadField("tz", "applies only to intervals of whole days (1d, 7d, ...); the interval is "+p.name)
		}
		p.loc = loc
	}

	// Bound the work before computing the grid: one point more than the rough count covers
	// the alignment at both ends, and local days are at least 23 hours.
	rough := int64(end.Sub(start) / p.interval)
	if p.loc != nil {
		rough = int64(end.Sub(start) / (p.interval / 24 * 23))
	}
	if rough > MaxPoints+1 {
		return nil, tooManyPoints(rough, p.name)
	}
	p.start, p.end = start, end
	q := p.query(nil)
	b, err := q.Buckets()
	if err != nil {
		return nil, httpapi.BadField("interval", strings.TrimPrefix(err.Error(), "metricstore: "))
	}
	n := int64(len(b) - 1)
	if n > MaxPoints {
		return nil, tooManyPoints(n, p.name)
	}
	if total := n * int64(len(p.ids)); total > MaxTotalPoints {
		return nil, httpapi.BadField("interval", fmt.Sprintf("%d ids x %d points is %d points, at most %d in one response: ask for fewer ids, a larger interval or a shorter range", len(p.ids), n, total, MaxTotalPoints))
	}
	p.points = int(n)
	return p, nil
}

func tooManyPoints(n int64, interval string) error {
	return httpapi.BadField("interval", fmt.Sprintf("%d points per series at %s, at most %d: use a larger interval or a shorter range", n, interval, MaxPoints))
}

// query is the store query of p for ids.
func (p *metricsParams) query(ids []string) metricstore.Query {
	return metricstore.Query{Level: p.level, IDs: ids, Start: p.start, End: p.end, Interval: p.interval, Location: p.loc}
}

// topParams is a validated GET /metrics/top request.
type topParams struct {
	n          int
	metric     topn.Metric
	level      metricstore.Level
	from, to   int64 // minutes since the epoch, [from, to)
	campaign   string
	advertiser string
}

func parseTopParams(v url.Values, now time.Time) (*topParams, error) {
	p := &topParams{n: DefaultTopN, metric: topn.Clicks, level: metricstore.LevelAd}
	if s, ok, err := single(v, "n"); err != nil {
		return nil, err
	} else if ok {
		n, err := strictInt(s)
		if err != nil || n < 1 || n > topn.MaxN {
			return nil, httpapi.BadField("n", fmt.Sprintf("must be an integer from 1 to %d", topn.MaxN))
		}
		p.n = int(n)
	}
	if s, ok, err := single(v, "metric"); err != nil {
		return nil, err
	} else if ok {
		m, ok := topn.ParseMetric(s)
		if !ok {
			return nil, httpapi.BadField("metric", "must be clicks, impressions, spend_micros, conversions or conversion_value_micros")
		}
		p.metric = m
	}
	if s, ok, err := single(v, "by"); err != nil {
		return nil, err
	} else if ok {
		l, ok := metricstore.ParseLevel(s)
		if !ok {
			return nil, httpapi.BadField("by", "must be ad, campaign or advertiser")
		}
		p.level = l
	}
	for _, f := range []struct {
		name string
		dst  *string
	}{{"campaign_id", &p.campaign}, {"advertiser_id", &p.advertiser}} {
		s, ok, err := single(v, f.name)
		if err != nil {
			return nil, err
		}
		if ok && !event.ValidID(s) {
			return nil, httpapi.BadField(f.name, "invalid id "+quoteID(s)+" (ids are 1-64 characters from [A-Za-z0-9._:-])")
		}
		*f.dst = s
	}

	cur := floorDiv(now.Unix(), 60) // the current minute
	minutesStr, haveMinutes, err := single(v, "minutes")
	if err != nil {
		return nil, err
	}
	start, end, err := parseTimes(v)
	if err != nil {
		return nil, err
	}
	if haveMinutes && (!start.IsZero() || !end.IsZero()) {
		return nil, httpapi.BadField("minutes", "give either minutes or start_time/end_time, not both")
	}
	if start.IsZero() && end.IsZero() {
		minutes := int64(DefaultMinutes)
		if haveMinutes {
			minutes, err = strictInt(minutesStr)
			if err != nil || minutes < 1 || minutes > MaxTopMinutes {
				return nil, httpapi.BadField("minutes", fmt.Sprintf("must be an integer from 1 to %d", MaxTopMinutes))
			}
		}
		p.from, p.to = cur-minutes+1, cur+1
		return p, nil
	}
	// An explicit window: floored and ceiled to whole minutes. A missing end is the end of
	// the current minute; a missing start is DefaultMinutes before the end.
	if end.IsZero() {
		p.to = cur + 1
	} else {
		p.to = ceilDiv(end.Unix(), 60)
		if end.Nanosecond() != 0 && end.Unix()%60 == 0 {
			p.to++
		}
	}
	if start.IsZero() {
		p.from = p.to - DefaultMinutes
	} else {
		p.from = floorDiv(start.Unix(), 60)
	}
	switch {
	case p.from >= p.to:
		return nil, httpapi.BadField("start_time", "must be before end_time")
	case p.from > cur:
		return nil, httpapi.BadField("start_time", "is in the future")
	case p.from < cur-MaxTopMinutes+1:
		return nil, httpapi.BadField("start_time", fmt.Sprintf("top-N covers the last %d minutes; use GET /metrics for older data", MaxTopMinutes))
	case p.to-p.from > MaxTopMinutes:
		return nil, httpapi.BadField("end_time", fmt.Sprintf("the window is longer than %d minutes", MaxTopMinutes))
	}
	return p, nil
}

// strictInt parses a decimal integer without sign or spaces.
func strictInt(s string) (int64, error) {
	if s == "" || len(s) > 9 {
		return 0, strconv.ErrSyntax
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, strconv.ErrSyntax
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

func ceilDiv(a, b int64) int64 { return -floorDiv(-a, b) }
