// Package httpapi holds what every adpulse HTTP handler shares: the JSON error shape of the API
// contract, JSON responses, request principals (who is calling), and parsing helpers.
//
// Invariant: every error response has the body {"error":{"code":...,"message":...}} with the
// status that matches its code.
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"
)

// Error codes of the API contract.
const (
	CodeInvalidArgument  = "invalid_argument"
	CodeUnauthenticated  = "unauthenticated"
	CodePermissionDenied = "permission_denied"
	CodeNotFound         = "not_found"
	CodePayloadTooLarge  = "payload_too_large"
	CodeRateLimited      = "rate_limited"
	CodeUnavailable      = "unavailable"
	CodeInternal         = "internal"
)

var codeStatus = map[string]int{
	CodeInvalidArgument:  http.StatusBadRequest,
	CodeUnauthenticated:  http.StatusUnauthorized,
	CodePermissionDenied: http.StatusForbidden,
	CodeNotFound:         http.StatusNotFound,
	CodePayloadTooLarge:  http.StatusRequestEntityTooLarge,
	CodeRateLimited:      http.StatusTooManyRequests,
	CodeUnavailable:      http.StatusServiceUnavailable,
	CodeInternal:         http.StatusInternalServerError,
}

// Error is an API error: a code of the contract and a message that names the bad field.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf builds an *Error.
func Errorf(code, message string) *Error { return &Error{Code: code, Message: message} }

// BadField is the usual invalid_argument error: "field: reason".
func BadField(field, reason string) *Error {
	return &Error{Code: CodeInvalidArgument, Message: field + ": " + reason}
}

// WriteError writes err as the contract's error body. Errors that are not *Error become
// internal errors whose details are not shown to the caller.
func WriteError(w http.ResponseWriter, err error) {
	var ae *Error
	if !errors.As(err, &ae) {
		ae = &Error{Code: CodeInternal, Message: "internal error"}
	}
	status, ok := codeStatus[ae.Code]
	if !ok {
		status = http.StatusInternalServerError
	}
	if ae.Code == CodeRateLimited && w.Header().Get("Retry-After") == "" {
		w.Header().Set("Retry-After", "1")
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	body, _ := json.Marshal(struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}{Error: struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}{ae.Code, ae.Message}})
	_, _ = w.Write(append(body, '\n'))
}

// WriteJSON writes v as a JSON response with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		WriteError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// DecodeJSON reads a JSON object body of at most maxBytes into v. Unknown fields are errors,
// so a misspelt field is reported instead of silently ignored.
func DecodeJSON(w http.ResponseWriter, r *http.Request, maxBytes int64, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooLarge *http.MaxBytesError
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &tooLarge):
			return Errorf(CodePayloadTooLarge, "body: larger than "+strconv.FormatInt(maxBytes, 10)+" bytes")
		case errors.As(err, &typ) && typ.Field == "":
			return BadField("body", "must be a JSON object")
		case errors.As(err, &typ):
			return BadField(typ.Field, "must be of JSON type "+jsonKind(typ.Type.Kind().String()))
		case errors.As(err, &syn):
			return BadField("body", "invalid JSON: "+syn.Error())
		default:
			return BadField("body", "invalid JSON: "+err.Error())
		}
	}
	if dec.More() {
		return BadField("body", "trailing data after the JSON object")
	}
	return nil
}

// jsonKind names a Go kind the way a JSON client thinks of it.
func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "string"
	case "bool":
		return "boolean"
	case "struct", "map":
		return "object"
	case "slice", "array":
		return "array"
	}
	return "number"
}

// Role is what a caller's key allows.
type Role uint8

// Roles, from least to most privileged.
const (
	RoleNone       Role = iota // no or unknown key
	RoleIngest                 // POST /events only
	RoleAdvertiser             // read its own advertiser's objects and metrics
	RoleAdmin                  // everything
)

// Principal is the authenticated caller of a request.
type Principal struct {
	Role         Role
	AdvertiserID string // set for RoleAdvertiser
}

// CanSee reports whether p may read objects owned by advertiserID. Callers answer 404 (not
// 403) when it is false, so a key cannot probe which ids exist.
func (p Principal) CanSee(advertiserID string) bool {
	return p.Role == RoleAdmin || p.Role == RoleAdvertiser && p.AdvertiserID == advertiserID
}

// Require returns the caller of r if its role is one of roles. Otherwise it returns the
// contract's error: 401 unauthenticated without a (known) key, 403 permission_denied for a
// key of another role. what names the allowed keys in the message ("an admin key").
func Require(r *http.Request, what string, roles ...Role) (Principal, error) {
	p := PrincipalFrom(r.Context())
	for _, role := range roles {
		if p.Role == role {
			return p, nil
		}
	}
	if p.Role == RoleNone {
		return p, Errorf(CodeUnauthenticated, "authorization: "+what+" is required (Authorization: Bearer KEY)")
	}
	return p, Errorf(CodePermissionDenied, "authorization: this key may not do this; "+what+" is required")
}

// RequireAdmin is Require for the admin key alone.
func RequireAdmin(r *http.Request) error {
	_, err := Require(r, "an admin key", RoleAdmin)
	return err
}

// RequireReader is Require for reads: the admin key or an advertiser key.
func RequireReader(r *http.Request) (Principal, error) {
	return Require(r, "an admin or advertiser key", RoleAdmin, RoleAdvertiser)
}

type principalKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the principal the auth middleware put in ctx.
func PrincipalFrom(ctx context.Context) Principal {
	p, _ := ctx.Value(principalKey{}).(Principal)
	return p
}

// ParseTime parses an API time: RFC 3339 or integer Unix seconds.
func ParseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, errors.New("empty time")
	}
	if allDigits(s) { // checked first: a failed ParseInt allocates its error
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n > 1<<40 {
			return time.Time{}, errors.New("unix seconds out of range")
		}
		return time.Unix(n, 0).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, errors.New("must be RFC 3339 or Unix seconds")
	}
	return t.UTC(), nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// FormatTime formats t as the API does: RFC 3339 in UTC.
func FormatTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }
