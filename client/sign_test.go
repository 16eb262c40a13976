package client_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/adpulse/adpulse/client"
	"github.com/adpulse/adpulse/internal/clicktoken"
)

func TestSignerMatchesServerFormat(t *testing.T) {
	now := time.Date(2026, 11, 21, 10, 0, 5, 700, time.UTC)
	s, err := client.NewSigner(client.SignerConfig{Secret: "k2:secret-B-0123456789abcdef,k1:secret-A-0123456789abcdef", BaseURL: "https://t.example.com/", ClickTTL: 30 * time.Minute, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	urls, err := s.URLs("ad-1", "imp-1", "u1", 450_000)
	if err != nil {
		t.Fatal(err)
	}
	tok, ok := strings.CutPrefix(urls.ClickURL, "https://t.example.com/c/")
	if !ok || urls.ImpressionURL != "https://t.example.com/i/"+tok {
		t.Fatalf("URLs %+v", urls)
	}
	if !urls.ExpiresAt.Equal(time.Date(2026, 11, 21, 10, 30, 5, 0, time.UTC)) {
		t.Fatalf("ExpiresAt %v", urls.ExpiresAt)
	}
	// The server's keyring (verifying with both keys) takes it, signed by the first key.
	ring, _ := clicktoken.ParseKeyring("k1:secret-A-0123456789abcdef,k2:secret-B-0123456789abcdef")
	cl, err := ring.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	want := clicktoken.Claims{AdID: "ad-1", ImpressionID: "imp-1", UserID: "u1", PriceMicros: 450_000, IssuedAt: now.Truncate(time.Second)}
	if cl != want {
		t.Fatalf("claims %+v, want %+v", cl, want)
	}
	if s.SigningKeyID() != "k2" {
		t.Fatalf("signing key %s", s.SigningKeyID())
	}
	// Same claims, same token: what POST /api/v1/click-urls makes in the same second.
	server, _ := clicktoken.ParseKeyring("k2:secret-B-0123456789abcdef")
	if st, _ := server.Sign(want); st != tok {
		t.Fatalf("token %s, server's %s", tok, st)
	}

	for _, bad := range []struct{ ad, imp, user string }{{"", "i", ""}, {"a", "", ""}, {"a b", "i", ""}, {"a", "i", "u/1"}, {strings.Repeat("a", 65), "i", ""}} {
		var fe *client.FieldError
		if _, _, err := s.ClickURL(bad.ad, bad.imp, bad.user, 0); !errors.As(err, &fe) {
			t.Errorf("ClickURL(%q, %q, %q): %v, want a FieldError", bad.ad, bad.imp, bad.user, err)
		}
	}
	if _, err := s.ImpressionURL("a", "i", "", -1); err == nil {
		t.Error("negative price: no error")
	}
	for _, cfg := range []client.SignerConfig{{Secret: "short", BaseURL: "https://x"}, {Secret: "0123456789abcdef0123", BaseURL: "t.example.com"}} {
		if _, err := client.NewSigner(cfg); err == nil {
			t.Errorf("NewSigner(%+v): no error", cfg)
		}
	}
}

func TestEventValidate(t *testing.T) {
	ok := []client.Event{
		{Type: "impression", AdID: "a", ImpressionID: "i"},
		{Type: "click", AdID: "a.b:c_d-e", ImpressionID: "i", CPCMicros: 1e15},
		{Type: "add_to_cart", AdID: "a", EventID: "e"},
		{Type: "x", AdID: "a", EventID: "e", ImpressionID: "i", UserID: "u", CatalogID: "c", Time: time.Now()},
	}
	for _, e := range ok {
		if err := e.Validate(); err != nil {
			t.Errorf("%+v: %v", e, err)
		}
	}
	bad := map[string]client.Event{
		"type":          {Type: "Add", AdID: "a", EventID: "e"},
		"ad_id":         {Type: "impression", AdID: "", ImpressionID: "i"},
		"impression_id": {Type: "click", AdID: "a", EventID: "e"},
		"event_id":      {Type: "add_to_cart", AdID: "a", ImpressionID: "i"},
		"user_id":       {Type: "impression", AdID: "a", ImpressionID: "i", UserID: "ü"},
		"cpc_micros":    {Type: "impression", AdID: "a", ImpressionID: "i", CPCMicros: 5},
		"user_agent":    {Type: "impression", AdID: "a", ImpressionID: "i", UserAgent: strings.Repeat("x", 1025)},
	}
	for field, e := range bad {
		var fe *client.FieldError
		if err := e.Validate(); !errors.As(err, &fe) || fe.Field != field {
			t.Errorf("%+v: %v, want an error naming %s", e, err, field)
		}
	}
}
