package bulkimport

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/adpulse/adpulse/client"
)

// Record is one row of a source: column name (lower case) -> value as text. Typed values
// (Parquet integers and timestamps, SQL columns) are rendered to text by their source, so
// every source goes through the one conversion below and reports errors the same way.
type Record map[string]string

// Columns an import reads; any other column is ignored. They are the fields of a line of
// POST /events.
var Columns = []string{"type", "ad_id", "impression_id", "event_id", "user_id", "catalog_id", "event_time", "cpc_micros", "user_agent"}

// RowError is a row the import did not send, or that the server rejected: the row number
// (1-based, in the source's order; a CSV header is not a row) and the field.
type RowError struct {
	Row     int64
	Field   string // "" when the server's message names it
	Message string
}

func (e RowError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("row %d: %s", e.Row, e.Message)
	}
	return fmt.Sprintf("row %d: %s: %s", e.Row, e.Field, e.Message)
}

// toEvent converts a record to an event and checks it with client.Event.Validate, the
// client's copy of the rules of POST /events. The server checks again (and checks what needs
// the catalog); this only catches mistakes before they cost a request.
func toEvent(r Record) (client.Event, *RowError) {
	ev := client.Event{
		Type:         strings.TrimSpace(r["type"]),
		AdID:         r["ad_id"],
		ImpressionID: r["impression_id"],
		EventID:      r["event_id"],
		UserID:       r["user_id"],
		CatalogID:    r["catalog_id"],
		UserAgent:    r["user_agent"],
	}
	if s := strings.TrimSpace(r["event_time"]); s != "" {
		t, err := parseTime(s)
		if err != nil {
			return ev, &RowError{Field: "event_time", Message: err.Error()}
		}
		ev.Time = t
	}
	if s := strings.TrimSpace(r["cpc_micros"]); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return ev, &RowError{Field: "cpc_micros", Message: "must be an integer"}
		}
		ev.CPCMicros = n
	}
	if err := ev.Validate(); err != nil {
		if fe, ok := err.(*client.FieldError); ok {
			return ev, &RowError{Field: fe.Field, Message: fe.Reason}
		}
		return ev, &RowError{Message: err.Error()}
	}
	return ev, nil
}

// parseTime accepts RFC 3339 (what POST /events takes), and the "YYYY-MM-DD HH:MM:SS[.fff]"
// form databases print, read as UTC.
func parseTime(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if t, err := time.ParseInLocation("2006-01-02 15:04:05.999999999", s, time.UTC); err == nil {
		return t, nil
	}
	if t, err := time.Parse("2006-01-02 15:04:05.999999999Z07:00", s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%q is not an RFC 3339 time", truncate(s, 40))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
