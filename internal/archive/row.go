package archive

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/adpulse/adpulse/internal/event"
)

// Row is one archived event: a flat record whose columns a SQL engine reads as strings,
// integers and microsecond timestamps (UTC). Optional columns hold NULL where the event has
// no value. The typed writer and readers of this package use it; other readers see the
// column names in the tags.
type Row struct {
	Partition     int32  `parquet:"partition"`
	Offset        int64  `parquet:"offset,delta"`
	Type          string `parquet:"type,dict"`                    // impression, click or interaction
	Name          string `parquet:"name,optional,dict"`           // interaction name, NULL otherwise
	InvalidReason string `parquet:"invalid_reason,optional,dict"` // NULL for a valid event
	EventTime     int64  `parquet:"event_time,timestamp(microsecond:utc),delta"`
	RecvTime      int64  `parquet:"recv_time,timestamp(microsecond:utc),delta"`
	PriceMicros   int64  `parquet:"price_micros"` // 0 means the ad's bid
	AdID          string `parquet:"ad_id,dict"`
	CampaignID    string `parquet:"campaign_id,optional,dict"`
	AdvertiserID  string `parquet:"advertiser_id,optional,dict"`
	ImpressionID  string `parquet:"impression_id,optional"`
	EventID       string `parquet:"event_id,optional"`
	UserID        string `parquet:"user_id,optional"`
	CatalogID     string `parquet:"catalog_id,optional,dict"`
	ValueMicros   int64  `parquet:"value_micros"`       // a conversion's value; 0 otherwise
	SourceIP      string `parquet:"source_ip,optional"` // where a click or impression came from
	DeviceID      string `parquet:"device_id,optional"`
}

// record is Row as the archiver writes it. Its nullable columns are pointers: with
// parquet-go, an "optional" string field holding "" is not reliably written as NULL (some
// rows get an empty string instead), while a nil pointer is. Its schema is Row's.
type record struct {
	Partition     int32   `parquet:"partition"`
	Offset        int64   `parquet:"offset,delta"`
	Type          string  `parquet:"type,dict"`
	Name          *string `parquet:"name,dict"`
	InvalidReason *string `parquet:"invalid_reason,dict"`
	EventTime     int64   `parquet:"event_time,timestamp(microsecond:utc),delta"`
	RecvTime      int64   `parquet:"recv_time,timestamp(microsecond:utc),delta"`
	PriceMicros   int64   `parquet:"price_micros"`
	AdID          string  `parquet:"ad_id,dict"`
	CampaignID    *string `parquet:"campaign_id,dict"`
	AdvertiserID  *string `parquet:"advertiser_id,dict"`
	ImpressionID  *string `parquet:"impression_id"`
	EventID       *string `parquet:"event_id"`
	UserID        *string `parquet:"user_id"`
	CatalogID     *string `parquet:"catalog_id,dict"`
	ValueMicros   int64   `parquet:"value_micros"`
	SourceIP      *string `parquet:"source_ip"`
	DeviceID      *string `parquet:"device_id"`
}

// reasonNames holds the name of every invalid reason, so records can point to them.
var reasonNames = func() (names [256]string) {
	for i := range names {
		names[i] = event.Reason(i).String()
	}
	return names
}()

// nullable points to *s, or is nil for "".
func nullable(s *string) *string {
	if *s == "" {
		return nil
	}
	return s
}

// set makes r the record of e, pointing into e: e must not change until r is written.
func (r *record) set(partition int32, offset int64, e *event.Event) {
	*r = record{
		Partition:     partition,
		Offset:        offset,
		Type:          e.Type.String(),
		Name:          nullable(&e.Name),
		InvalidReason: nullable(&reasonNames[e.Invalid]),
		EventTime:     e.Time,
		RecvTime:      e.RecvTime,
		PriceMicros:   e.PriceMicros,
		AdID:          e.AdID,
		CampaignID:    nullable(&e.CampaignID),
		AdvertiserID:  nullable(&e.AdvertiserID),
		ImpressionID:  nullable(&e.ImpressionID),
		EventID:       nullable(&e.EventID),
		UserID:        nullable(&e.UserID),
		CatalogID:     nullable(&e.CatalogID),
		ValueMicros:   e.ValueMicros,
		SourceIP:      nullable(&e.SourceIP),
		DeviceID:      nullable(&e.DeviceID),
	}
}

// RowOf is the archive row of the event at offset of partition.
func RowOf(partition int32, offset int64, e *event.Event) Row {
	return Row{
		Partition:     partition,
		Offset:        offset,
		Type:          e.Type.String(),
		Name:          e.Name,
		InvalidReason: e.Invalid.String(),
		EventTime:     e.Time,
		RecvTime:      e.RecvTime,
		PriceMicros:   e.PriceMicros,
		AdID:          e.AdID,
		CampaignID:    e.CampaignID,
		AdvertiserID:  e.AdvertiserID,
		ImpressionID:  e.ImpressionID,
		EventID:       e.EventID,
		UserID:        e.UserID,
		CatalogID:     e.CatalogID,
		ValueMicros:   e.ValueMicros,
		SourceIP:      e.SourceIP,
		DeviceID:      e.DeviceID,
	}
}

// Event converts a row back to the event it was made from.
func (r *Row) Event() (event.Event, error) {
	e := event.Event{
		Name:         r.Name,
		Time:         r.EventTime,
		RecvTime:     r.RecvTime,
		PriceMicros:  r.PriceMicros,
		AdID:         r.AdID,
		CampaignID:   r.CampaignID,
		AdvertiserID: r.AdvertiserID,
		ImpressionID: r.ImpressionID,
		EventID:      r.EventID,
		UserID:       r.UserID,
		CatalogID:    r.CatalogID,
		ValueMicros:  r.ValueMicros,
		SourceIP:     r.SourceIP,
		DeviceID:     r.DeviceID,
	}
	t, ok := parseType(r.Type)
	if !ok {
		return e, fmt.Errorf("archive: unknown event type %q", r.Type)
	}
	e.Type = t
	reason, ok := parseReason(r.InvalidReason)
	if !ok {
		return e, fmt.Errorf("archive: unknown invalid reason %q", r.InvalidReason)
	}
	e.Invalid = reason
	return e, nil
}

func parseType(s string) (event.Type, bool) {
	for t := event.TypeImpression; t <= event.TypeConversion; t++ {
		if t.String() == s {
			return t, true
		}
	}
	return 0, false
}

func parseReason(s string) (event.Reason, bool) {
	if n, ok := strings.CutPrefix(s, "reason_"); ok {
		v, err := strconv.ParseUint(n, 10, 8)
		return event.Reason(v), err == nil
	}
	for r := event.Reason(0); r < 255; r++ {
		if r.String() == s {
			return r, true
		}
		if strings.HasPrefix(r.String(), "reason_") {
			break
		}
	}
	return 0, false
}

// File naming. A data file holds offsets [first, end) of one partition and lives in the
// Hive directory of the receive time of its first event:
//
//	dt=2025-03-14/hour=09/p0007-o000000001200-000000001500.parquet
//
// Checkpoints live under "_checkpoints/", which Spark, Trino and Hive skip (a leading
// underscore), as local temporary files do (a leading dot).
const (
	fileSuffix    = ".parquet"
	checkpointDir = "_checkpoints/"
)

// hourDir is the directory, with a trailing slash, of receive time recv (Unix micros).
func hourDir(recv int64) string {
	t := time.UnixMicro(recv).UTC()
	return fmt.Sprintf("dt=%04d-%02d-%02d/hour=%02d/", t.Year(), t.Month(), t.Day(), t.Hour())
}

// filePrefix is the start of the name of every file of partition p beginning at first.
func filePrefix(p int, first int64) string {
	return fmt.Sprintf("p%04d-o%012d-", p, first)
}

// fileName names the file of offsets [first, end) of partition p.
func fileName(p int, first, end int64) string {
	return fmt.Sprintf("%s%012d%s", filePrefix(p, first), end, fileSuffix)
}

// parseFileName is the inverse of fileName.
func parseFileName(name string) (p int, first, end int64, ok bool) {
	base, found := strings.CutSuffix(name, fileSuffix)
	if !found {
		return 0, 0, 0, false
	}
	if _, err := fmt.Sscanf(base, "p%d-o%d-%d", &p, &first, &end); err != nil {
		return 0, 0, 0, false
	}
	return p, first, end, fileName(p, first, end) == name
}

func checkpointKey(p int) string { return fmt.Sprintf("%sp%04d.json", checkpointDir, p) }
