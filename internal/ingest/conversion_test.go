package ingest

import (
	"strings"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
)

// TestParseConversions: a configured conversion type without ad_id is a conversion that
// needs user, catalog and event ids; with an ad_id it stays an interaction; value_micros is
// for conversions only and bounded.
func TestParseConversions(t *testing.T) {
	now := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	lim := BatchLimits{MaxEvents: 100, MaxLateness: time.Hour, MaxClockSkew: time.Minute, ConversionTypes: []string{"order", "add_to_cart"}}
	for _, tc := range []struct {
		line      string
		typ       event.Type
		value     int64
		errSubstr string // "" when accepted
	}{
		{`{"type":"order","event_id":"o1","user_id":"u1","catalog_id":"cat7","value_micros":25000000}`, event.TypeConversion, 25000000, ""},
		{`{"type":"add_to_cart","event_id":"o2","user_id":"u1","catalog_id":"cat7"}`, event.TypeConversion, 0, ""},
		{`{"type":"order","event_id":"o3","impression_id":"i","ad_id":"1"}`, event.TypeInteraction, 0, ""},
		{`{"type":"order","event_id":"o4","catalog_id":"cat7"}`, 0, 0, "user_id: is required for a conversion"},
		{`{"type":"order","event_id":"o5","user_id":"u1"}`, 0, 0, "catalog_id: is required"},
		{`{"type":"order","user_id":"u1","catalog_id":"cat7"}`, 0, 0, "event_id: is required"},
		{`{"type":"order","event_id":"o6","user_id":"u1","catalog_id":"cat7","impression_id":"i"}`, 0, 0, "ad_id: a conversion is sent without"},
		{`{"type":"order","event_id":"o7","user_id":"u1","catalog_id":"cat7","value_micros":-1}`, 0, 0, "value_micros"},
		{`{"type":"order","event_id":"o8","user_id":"u1","catalog_id":"cat7","value_micros":1e16}`, 0, 0, "value_micros"},
		{`{"type":"order","event_id":"o9","user_id":"u1","catalog_id":"cat7","value_micros":"5"}`, 0, 0, "value_micros"},
		{`{"type":"click","impression_id":"i","ad_id":"1","value_micros":5}`, 0, 0, "value_micros"},
		{`{"type":"signup","event_id":"o10","user_id":"u1","catalog_id":"cat7"}`, 0, 0, "ad_id: is required"},
	} {
		bp := &batchParser{}
		lines, err := bp.parse([]byte(tc.line), now, lim, nil)
		if err != nil || len(lines) != 1 {
			t.Fatalf("%s: %v", tc.line, err)
		}
		pl := lines[0]
		switch {
		case tc.errSubstr == "" && pl.Err != nil:
			t.Errorf("%s: rejected: %s", tc.line, pl.Err.Message)
		case tc.errSubstr == "" && (pl.Event.Type != tc.typ || pl.Event.ValueMicros != tc.value):
			t.Errorf("%s: got %v value %d", tc.line, pl.Event.Type, pl.Event.ValueMicros)
		case tc.errSubstr != "" && (pl.Err == nil || !strings.Contains(pl.Err.Message, tc.errSubstr)):
			t.Errorf("%s: got %+v, want an error with %q", tc.line, pl.Err, tc.errSubstr)
		}
	}
}

// TestConversionsPartitionByUser: a conversion has no ad; its partition is its user's, so a
// user's orders (and their duplicates) stay in one partition.
func TestConversionsPartitionByUser(t *testing.T) {
	c := event.Event{Type: event.TypeConversion, UserID: "u1", EventID: "o1"}
	if partitionKey(&c) != "u1" {
		t.Fatalf("partition key %q", partitionKey(&c))
	}
	if k := partitionKey(&event.Event{Type: event.TypeClick, AdID: "7", UserID: "u1"}); k != "7" {
		t.Fatalf("click partition key %q", k)
	}
}
