package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestParseTime(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Time
		ok   bool
	}{
		{"2026-11-21T10:00:00Z", time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC), true},
		{"2026-11-21T15:30:00+05:30", time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC), true},
		{"1795255200", time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC), true},
		{"0", time.Unix(0, 0).UTC(), true},
		{"", time.Time{}, false}, {"-5", time.Time{}, false}, {"99999999999999999999", time.Time{}, false},
		{"2026-11-21", time.Time{}, false}, {"yesterday", time.Time{}, false},
	} {
		got, err := ParseTime(tc.in)
		if (err == nil) != tc.ok || tc.ok && !got.Equal(tc.want) {
			t.Errorf("ParseTime(%q) = %v, %v", tc.in, got, err)
		}
	}
}

func TestWriteErrorShape(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
		code   string
	}{
		{BadField("ad_id", "is required"), 400, CodeInvalidArgument},
		{Errorf(CodeNotFound, "x"), 404, CodeNotFound},
		{Errorf(CodeRateLimited, "slow down"), 429, CodeRateLimited},
		{errors.New("secret detail"), 500, CodeInternal},
	} {
		w := httptest.NewRecorder()
		WriteError(w, tc.err)
		var body struct {
			Error struct{ Code, Message string }
		}
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || w.Code != tc.status || body.Error.Code != tc.code {
			t.Errorf("%v: %d %s", tc.err, w.Code, w.Body)
		}
		if strings.Contains(w.Body.String(), "secret detail") {
			t.Errorf("internal error details leaked: %s", w.Body)
		}
		if tc.code == CodeRateLimited && w.Header().Get("Retry-After") == "" {
			t.Error("429 without Retry-After")
		}
	}
}

func TestDecodeJSON(t *testing.T) {
	type req struct {
		Name  string `json:"name"`
		Count int64  `json:"count"`
	}
	for _, tc := range []struct {
		body, code, field string
	}{
		{`{"name":"a","count":1}`, "", ""},
		{`{"name":1}`, CodeInvalidArgument, "name"},
		{`{"nmae":"a"}`, CodeInvalidArgument, "nmae"},
		{`[]`, CodeInvalidArgument, "body: must be a JSON object"},
		{`{"name":"a"} {}`, CodeInvalidArgument, "trailing"},
		{`{`, CodeInvalidArgument, "body"},
		{`{"name":"` + strings.Repeat("x", 200) + `"}`, CodePayloadTooLarge, "body"},
	} {
		r := httptest.NewRequest("POST", "/", strings.NewReader(tc.body))
		var v req
		err := DecodeJSON(httptest.NewRecorder(), r, 100, &v)
		var ae *Error
		switch {
		case tc.code == "" && err != nil:
			t.Errorf("%s: %v", tc.body, err)
		case tc.code != "" && (!errors.As(err, &ae) || ae.Code != tc.code || !strings.Contains(ae.Message, tc.field)):
			t.Errorf("%s: got %v, want %s naming %q", tc.body, err, tc.code, tc.field)
		}
	}
}

func TestPrincipalCanSee(t *testing.T) {
	adv := Principal{Role: RoleAdvertiser, AdvertiserID: "a1"}
	if !adv.CanSee("a1") || adv.CanSee("a2") || (Principal{Role: RoleIngest}).CanSee("a1") || !(Principal{Role: RoleAdmin}).CanSee("x") {
		t.Fatal("CanSee rules broken")
	}
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	if PrincipalFrom(WithPrincipal(r.Context(), adv)) != adv || PrincipalFrom(r.Context()).Role != RoleNone {
		t.Fatal("principal not carried by the context")
	}
}

func TestRequire(t *testing.T) {
	for _, tc := range []struct {
		p    Principal
		code string
	}{
		{Principal{}, CodeUnauthenticated},
		{Principal{Role: RoleIngest}, CodePermissionDenied},
		{Principal{Role: RoleAdvertiser, AdvertiserID: "a"}, ""},
		{Principal{Role: RoleAdmin}, ""},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r = r.WithContext(WithPrincipal(r.Context(), tc.p))
		_, err := RequireReader(r)
		var ae *Error
		if tc.code == "" && err != nil || tc.code != "" && (!errors.As(err, &ae) || ae.Code != tc.code || !strings.Contains(ae.Message, "authorization")) {
			t.Errorf("%+v: %v", tc.p, err)
		}
	}
}
