// Package event defines what flows through adpulse's pipeline: one ad event (an impression, a
// click or another interaction), its idempotency key, the validation rules of the HTTP contract,
// and a compact binary codec used by the event log.
//
// Invariants: an Event that passed Validate has well-formed ids, a known type and a key; the
// codec round-trips every such Event exactly; Decode never panics on arbitrary bytes.
package event

import (
	"fmt"
	"net/netip"
)

// Type is the kind of an event.
type Type uint8

// Event types. Every interaction other than an impression or a click is TypeInteraction with
// its name in Event.Name.
const (
	TypeImpression  Type = 1
	TypeClick       Type = 2
	TypeInteraction Type = 3
	// TypeConversion is a conversion reported without an ad (an order from a shop's
	// checkout): Name is its type ("order", "add_to_cart"), UserID, CatalogID and EventID are
	// required, AdID is empty. The attribution stage decides which ad earned it.
	TypeConversion Type = 4
)

func (t Type) String() string {
	switch t {
	case TypeImpression:
		return "impression"
	case TypeClick:
		return "click"
	case TypeInteraction:
		return "interaction"
	case TypeConversion:
		return "conversion"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Reason says why a click is invalid traffic. ReasonNone marks a valid event.
type Reason uint8

// Invalid-traffic reasons. New reasons are appended; the numbers are stored in the log.
const (
	ReasonNone    Reason = 0
	ReasonExpired Reason = 1 // the click token is older than the click validity window
	ReasonBot     Reason = 2 // a known bot or crawler user agent
	// ReasonDatacenter: the request came from a data-centre, cloud or crawler address range,
	// or from a range that is never a person's browser (documentation, reserved).
	ReasonDatacenter Reason = 3
	// ReasonBadUserAgent: the user agent is missing, absurdly short, a placeholder, holds
	// control characters or invalid UTF-8, or is longer than any browser sends.
	ReasonBadUserAgent Reason = 4
	// ReasonPrefetch: the browser fetched the URL speculatively (Sec-Purpose, Purpose, X-Moz
	// or X-Purpose says prefetch, prerender or preview); nobody has clicked yet.
	ReasonPrefetch Reason = 5
	// ReasonPreview: a link-preview fetcher (a chat or social app unfurling a pasted link).
	ReasonPreview Reason = 6

	// Behavioural reasons: verdicts of the stream stage (internal/ivt/behaviour) on clicks
	// that were valid when they were received. They never appear in the log; the stage moves
	// such clicks from clicks to invalid clicks in the metric store and credits them back.

	// ReasonFloodUser: more clicks from one user id within the flood window than allowed.
	ReasonFloodUser Reason = 7
	// ReasonFloodIP: more clicks from one source address within the flood window than allowed.
	ReasonFloodIP Reason = 8
	// ReasonFloodDevice: more clicks from one device within the flood window than allowed.
	ReasonFloodDevice Reason = 9
	// ReasonNoImpression: a click on an ad whose impressions are tracked, with no impression
	// of its impression id before it.
	ReasonNoImpression Reason = 10
	// ReasonTooFast: a click sooner after its impression than a person can click.
	ReasonTooFast Reason = 11
	// ReasonManyAds: one source (user, else address) clicked more distinct ads within the
	// window than a person browsing does.
	ReasonManyAds Reason = 12
)

// reasonNames maps each reason to the name used in metrics and the API.
var reasonNames = [...]string{"", "expired", "bot", "datacenter", "bad_user_agent", "prefetch", "preview",
	"flood_user", "flood_ip", "flood_device", "no_impression", "too_fast", "many_ads"}

// ParseReason maps a reason's name back to it.
func ParseReason(name string) (Reason, bool) {
	for i := 1; i < len(reasonNames); i++ {
		if reasonNames[i] == name {
			return Reason(i), true
		}
	}
	return ReasonNone, false
}

// Named reports whether r is one of the reasons this build knows (and has a name for).
func (r Reason) Named() bool { return r != ReasonNone && int(r) < len(reasonNames) }

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason_%d", uint8(r))
}

// Event is one ad event. Times are Unix microseconds. CampaignID and AdvertiserID are resolved
// from the catalog when the event is accepted, so the rest of the pipeline never looks them up
// and later catalog changes do not move history.
type Event struct {
	Type         Type
	Name         string // interaction name for TypeInteraction, such as "add_to_cart"
	Invalid      Reason
	Time         int64 // event time
	RecvTime     int64 // when adpulse received it
	PriceMicros  int64 // the auction price a click token carried; 0 means the ad's bid
	ValueMicros  int64 // a conversion's value (an order's total); 0 for other events
	AdID         string
	CampaignID   string
	AdvertiserID string
	ImpressionID string
	EventID      string
	UserID       string
	CatalogID    string
	// SourceIP is the address the request came from (canonical text form), or what an ad
	// server reported; empty when unknown. The behavioural rules count clicks per address.
	SourceIP string
	// DeviceID names the device: the device_id a client sent, else a fingerprint of the
	// request's user agent and language ("fp-" and 16 hex digits); empty when unknown.
	DeviceID string
}

// TypeName is the name of the event's type as the API spells it.
func (e *Event) TypeName() string {
	switch e.Type {
	case TypeImpression:
		return "impression"
	case TypeClick:
		return "click"
	}
	return e.Name
}

// Key returns the idempotency key: at most one event per key is counted.
//
// Impressions and clicks are keyed by impression id (one of each per impression, whatever
// event_id a client sends), which is what makes a retried click cost the advertiser once.
// Invalid impressions and clicks have their own key per reason, so a crawler that prefetches
// a click URL or a pixel does not use up the real person's click or view. Other interactions
// are keyed by event_id, or by their type and impression id when they carry no event_id.
func (e *Event) Key() string {
	builtin := e.Type == TypeImpression || e.Type == TypeClick
	switch {
	case builtin && e.Invalid != ReasonNone && e.ImpressionID != "":
		return "x" + string(rune('0'+e.Type)) + string(rune('0'+e.Invalid)) + ":" + e.ImpressionID
	case builtin && e.ImpressionID != "":
		if e.Type == TypeImpression {
			return "i:" + e.ImpressionID
		}
		return "c:" + e.ImpressionID
	case e.EventID != "":
		return "e:" + e.EventID
	case e.ImpressionID != "":
		return "t:" + e.Name + ":" + e.ImpressionID
	}
	return ""
}

// MaxIDLen is the longest id the API accepts.
const MaxIDLen = 64

// ValidID reports whether s is 1-64 characters of [A-Za-z0-9._:-].
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > MaxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

// ValidInteractionName reports whether s matches [a-z][a-z0-9_]{0,31} and is not one of the
// two built-in types.
func ValidInteractionName(s string) bool {
	if len(s) == 0 || len(s) > 32 || !(s[0] >= 'a' && s[0] <= 'z') {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// FieldError is a validation error that names the offending field.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// Validate checks the ids and type of an event as the API contract states them.
func (e *Event) Validate() error {
	switch e.Type {
	case TypeImpression, TypeClick:
	case TypeInteraction:
		if !ValidInteractionName(e.Name) || e.Name == "impression" || e.Name == "click" {
			return &FieldError{"type", "must be impression, click or match [a-z][a-z0-9_]{0,31}"}
		}
	case TypeConversion:
		return e.validateConversion()
	default:
		return &FieldError{"type", "unknown event type"}
	}
	if e.ValueMicros != 0 {
		return &FieldError{"value_micros", "only conversions sent without an ad_id carry a value"}
	}
	ids := [...]struct {
		name, v  string
		required bool
	}{
		{"ad_id", e.AdID, true},
		{"campaign_id", e.CampaignID, false},
		{"advertiser_id", e.AdvertiserID, false},
		{"impression_id", e.ImpressionID, false},
		{"event_id", e.EventID, false},
		{"user_id", e.UserID, false},
		{"catalog_id", e.CatalogID, false},
	}
	for _, id := range ids {
		if id.v == "" {
			if id.required {
				return &FieldError{id.name, "is required"}
			}
			continue
		}
		if !ValidID(id.v) {
			return &FieldError{id.name, "must be 1-64 characters of [A-Za-z0-9._:-]"}
		}
	}
	if e.DeviceID != "" && !ValidID(e.DeviceID) {
		return &FieldError{"device_id", "must be 1-64 characters of [A-Za-z0-9._:-]"}
	}
	if e.SourceIP != "" {
		if a, err := netip.ParseAddr(e.SourceIP); err != nil || a.Zone() != "" {
			return &FieldError{"ip", "must be an IPv4 or IPv6 address"}
		}
	}
	if e.ImpressionID == "" && e.EventID == "" {
		return &FieldError{"impression_id", "impression_id or event_id is required"}
	}
	if e.PriceMicros < 0 {
		return &FieldError{"cpc_micros", "must not be negative"}
	}
	return nil
}

// ParseTypeName maps a wire type name ("impression", "click", "add_to_cart") to Type and Name.
func ParseTypeName(s string) (Type, string, bool) {
	switch s {
	case "impression":
		return TypeImpression, "", true
	case "click":
		return TypeClick, "", true
	}
	if ValidInteractionName(s) {
		return TypeInteraction, s, true
	}
	return 0, "", false
}

// MaxValueMicros bounds a conversion's value: a billion units of any currency.
const MaxValueMicros = 1_000_000_000_000_000

// validateConversion checks a TypeConversion: a named type, the user, catalog and event ids
// (the order id, its idempotency key), no ad or impression, and a value in range.
func (e *Event) validateConversion() error {
	if !ValidInteractionName(e.Name) || e.Name == "impression" || e.Name == "click" {
		return &FieldError{"type", "must match [a-z][a-z0-9_]{0,31}"}
	}
	if e.AdID != "" || e.ImpressionID != "" {
		return &FieldError{"ad_id", "a conversion is sent without ad_id and impression_id; attribution finds the ad"}
	}
	for _, id := range [...]struct{ name, v string }{{"user_id", e.UserID}, {"catalog_id", e.CatalogID}, {"event_id", e.EventID}} {
		if id.v == "" {
			return &FieldError{id.name, "is required for a conversion"}
		}
		if !ValidID(id.v) {
			return &FieldError{id.name, "must be 1-64 characters of [A-Za-z0-9._:-]"}
		}
	}
	if e.ValueMicros < 0 || e.ValueMicros > MaxValueMicros {
		return &FieldError{"value_micros", "must be an integer from 0 to 1e15"}
	}
	if e.PriceMicros != 0 {
		return &FieldError{"cpc_micros", "only clicks carry a price"}
	}
	return nil
}
