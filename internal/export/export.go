// Package export writes the aggregates of ads, campaigns or advertisers over a time range as
// CSV, NDJSON or Parquet, for advertisers' reports and data science (`adpulse export`).
//
// It reads through GET /metrics of a running server with the public client, not the metric
// store's files: the embedded store is locked by the process that serves it, the scale-out
// stores are elsewhere, and /metrics already gives every point its finality and applies the
// time zone of day buckets. Requests are cut to the server's limits (1000 ids, 10,000 points
// per series, 100,000 per response).
//
// Output: one row per id and bucket, ids in the order given and buckets oldest first, with
// the columns time, level, id, impressions, clicks, invalid_clicks, spend_micros,
// interactions (a JSON object with sorted keys) and final. The same input gives the same
// bytes.
package export

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/adpulse/adpulse/client"
	"github.com/adpulse/adpulse/internal/progress"
)

// Server limits of GET /metrics (docs/api.md).
const (
	maxIDsPerRequest    = 1000
	maxPointsPerSeries  = 10_000
	maxPointsPerRequest = 100_000
)

// Options configure Run.
type Options struct {
	Client   *client.Client
	Level    string // ad, campaign or advertiser
	IDs      []string
	From, To time.Time
	Interval time.Duration // 1m, 1h or 1d
	// TZ aligns day buckets to local midnights (day intervals only); times are written in it.
	TZ     string
	Format string // csv, ndjson or parquet
	// Zeros keeps buckets whose counters are all zero (left out by default).
	Zeros    bool
	Progress *progress.Reporter // optional; counts series

	// seriesPoints overrides maxPointsPerSeries in tests, to cut small ranges into windows.
	seriesPoints int
}

// Row is one bucket of one id: what every format holds.
type Row struct {
	Time          time.Time `json:"time" parquet:"time,timestamp(millisecond)"`
	Level         string    `json:"level" parquet:"level"`
	ID            string    `json:"id" parquet:"id"`
	Impressions   int64     `json:"impressions" parquet:"impressions"`
	Clicks        int64     `json:"clicks" parquet:"clicks"`
	InvalidClicks int64     `json:"invalid_clicks" parquet:"invalid_clicks"`
	SpendMicros   int64     `json:"spend_micros" parquet:"spend_micros"`
	Interactions  string    `json:"-" parquet:"interactions"` // JSON object, sorted keys
	Final         bool      `json:"final" parquet:"final"`
}

// Stats is what Run wrote.
type Stats struct {
	Series, Rows int64
	Requests     int
}

// Validate checks o before anything is asked or written.
func (o *Options) Validate() error {
	switch o.Level {
	case "ad", "campaign", "advertiser":
	default:
		return errors.New("--by: want ad, campaign or advertiser")
	}
	switch o.Interval {
	case time.Minute, time.Hour, 24 * time.Hour:
	default:
		return errors.New("--interval: want 1m, 1h or 1d")
	}
	switch o.Format {
	case "csv", "ndjson", "parquet":
	default:
		return errors.New("--format: want csv, ndjson or parquet")
	}
	if o.From.IsZero() || o.To.IsZero() || !o.From.Before(o.To) {
		return errors.New("--from and --to are required, --from before --to")
	}
	if len(o.IDs) == 0 {
		return errors.New("--ids: no ids to export")
	}
	if o.TZ != "" {
		if o.Interval != 24*time.Hour {
			return errors.New("--tz: only day buckets (--interval 1d) follow a time zone")
		}
		if _, err := time.LoadLocation(o.TZ); err != nil {
			return fmt.Errorf("--tz: %w", err)
		}
	}
	return nil
}

// windows cuts [from, to) into ranges of at most n buckets, on bucket boundaries (local
// midnights for day buckets in a time zone), so that no bucket is asked twice.
func windows(from, to time.Time, interval time.Duration, loc *time.Location, n int) [][2]time.Time {
	var start time.Time
	if loc != nil {
		y, m, d := from.In(loc).Date()
		start = time.Date(y, m, d, 0, 0, 0, 0, loc)
	} else {
		start = from.UTC().Truncate(interval) // 1m, 1h and 1d divide the day: epoch-aligned
	}
	var out [][2]time.Time
	for start.Before(to) {
		var end time.Time
		if loc != nil {
			end = start.AddDate(0, 0, n)
		} else {
			end = start.Add(time.Duration(n) * interval)
		}
		if end.After(to) {
			end = to
		}
		out = append(out, [2]time.Time{start, end})
		start = end
		if loc != nil {
			// A window that ended at --to mid-day: the next starts at the following midnight.
			y, m, d := start.In(loc).Date()
			if mid := time.Date(y, m, d, 0, 0, 0, 0, loc); !mid.Equal(start) {
				start = mid.AddDate(0, 0, 1)
			}
		}
	}
	return out
}

// Run writes the export to w.
func Run(ctx context.Context, o Options, w io.Writer) (Stats, error) {
	if err := o.Validate(); err != nil {
		return Stats{}, err
	}
	var loc *time.Location
	if o.TZ != "" {
		loc, _ = time.LoadLocation(o.TZ)
	}
	buckets := int(o.To.Sub(o.From)/o.Interval) + 2
	limit := maxPointsPerSeries
	if o.seriesPoints > 0 {
		limit = o.seriesPoints
	}
	perSeries := min(buckets, limit)
	group := max(1, min(maxIDsPerRequest, maxPointsPerRequest/perSeries))
	wins := windows(o.From, o.To, o.Interval, loc, perSeries-1)
	if o.Progress != nil {
		o.Progress.SetTotal(int64(len(o.IDs)))
	}
	out, err := newWriter(o.Format, w, loc)
	if err != nil {
		return Stats{}, err
	}
	var st Stats
	for i := 0; i < len(o.IDs); i += group {
		ids := o.IDs[i:min(i+group, len(o.IDs))]
		series := make([][]client.Point, len(ids))
		for _, win := range wins {
			q := client.MetricsQuery{Start: win[0], End: win[1], Interval: o.Interval, TZ: o.TZ}
			switch o.Level {
			case "ad":
				q.AdIDs = ids
			case "campaign":
				q.CampaignIDs = ids
			default:
				q.AdvertiserIDs = ids
			}
			m, err := o.Client.Metrics(ctx, q)
			st.Requests++
			if err != nil {
				return st, fmt.Errorf("GET /metrics for %d ids from %s: %w", len(ids), win[0].Format(time.RFC3339), err)
			}
			if len(m.Series) != len(ids) {
				return st, fmt.Errorf("GET /metrics answered %d series for %d ids", len(m.Series), len(ids))
			}
			for k := range ids {
				for _, p := range m.Series[k].Points {
					// Windows meet on bucket boundaries; a bucket outside [From, To) is not asked for.
					if !p.Time.Before(o.To) || p.Time.Before(win[0]) {
						continue
					}
					series[k] = append(series[k], p)
				}
			}
		}
		for k, id := range ids {
			for _, p := range series[k] {
				if !o.Zeros && isZero(p) {
					continue
				}
				if err := out.write(toRow(o.Level, id, p)); err != nil {
					return st, err
				}
				st.Rows++
			}
			st.Series++
		}
		if o.Progress != nil {
			o.Progress.Add(int64(len(ids)), st.Series)
		}
	}
	return st, out.close()
}

func isZero(p client.Point) bool {
	if p.Impressions != 0 || p.Clicks != 0 || p.InvalidClicks != 0 || p.SpendMicros != 0 {
		return false
	}
	for _, n := range p.Interactions {
		if n != 0 {
			return false
		}
	}
	return true
}

func toRow(level, id string, p client.Point) Row {
	r := Row{Time: p.Time, Level: level, ID: id, Impressions: p.Impressions, Clicks: p.Clicks, InvalidClicks: p.InvalidClicks,
		SpendMicros: p.SpendMicros, Final: p.Final, Interactions: "{}"}
	if len(p.Interactions) > 0 {
		b, _ := json.Marshal(p.Interactions) // map keys come out sorted
		r.Interactions = string(b)
	}
	return r
}

// rowWriter writes rows in one format.
type rowWriter interface {
	write(Row) error
	close() error
}

func newWriter(format string, w io.Writer, loc *time.Location) (rowWriter, error) {
	if loc == nil {
		loc = time.UTC
	}
	switch format {
	case "csv":
		cw := csv.NewWriter(w)
		if err := cw.Write([]string{"time", "level", "id", "impressions", "clicks", "invalid_clicks", "spend_micros", "interactions", "final"}); err != nil {
			return nil, err
		}
		return &csvWriter{w: cw, loc: loc}, nil
	case "ndjson":
		return &ndjsonWriter{w: w, loc: loc}, nil
	}
	return &parquetWriter{w: parquet.NewGenericWriter[Row](w, parquet.Compression(&parquet.Zstd))}, nil
}

type csvWriter struct {
	w   *csv.Writer
	loc *time.Location
}

func (c *csvWriter) write(r Row) error {
	return c.w.Write([]string{r.Time.In(c.loc).Format(time.RFC3339), r.Level, r.ID, itoa(r.Impressions), itoa(r.Clicks),
		itoa(r.InvalidClicks), itoa(r.SpendMicros), r.Interactions, strconv.FormatBool(r.Final)})
}

func (c *csvWriter) close() error { c.w.Flush(); return c.w.Error() }

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

type ndjsonWriter struct {
	w   io.Writer
	loc *time.Location
}

func (n *ndjsonWriter) write(r Row) error {
	b, err := json.Marshal(struct {
		Time string `json:"time"`
		Row
		Interactions json.RawMessage `json:"interactions"`
	}{r.Time.In(n.loc).Format(time.RFC3339), r, json.RawMessage(r.Interactions)})
	if err != nil {
		return err
	}
	_, err = n.w.Write(append(b, '\n'))
	return err
}

func (n *ndjsonWriter) close() error { return nil }

type parquetWriter struct{ w *parquet.GenericWriter[Row] }

func (p *parquetWriter) write(r Row) error {
	r.Time = r.Time.UTC()
	_, err := p.w.Write([]Row{r})
	return err
}

func (p *parquetWriter) close() error { return p.w.Close() }
