package clicktoken

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

const (
	secretA = "secret-A-0123456789abcdef"
	secretB = "secret-B-0123456789abcdef"
)

func mustRing(t testing.TB, spec string) *Keyring {
	t.Helper()
	k, err := ParseKeyring(spec)
	if err != nil {
		t.Fatalf("ParseKeyring(%q): %v", spec, err)
	}
	return k
}

func mustSign(t testing.TB, k *Keyring, c Claims) string {
	t.Helper()
	tok, err := k.Sign(c)
	if err != nil {
		t.Fatalf("Sign(%+v): %v", c, err)
	}
	return tok
}

// typical is a click as the ad server would ask for it.
func typical() Claims {
	return Claims{
		AdID:         "ad-123456",
		ImpressionID: "imp-01J9Z3K4QW8E5R7T",
		UserID:       "u-98765432",
		PriceMicros:  450000,
		IssuedAt:     time.Date(2026, 11, 21, 10, 0, 5, 0, time.UTC),
	}
}

func sameClaims(a, b Claims) bool {
	return a.AdID == b.AdID && a.ImpressionID == b.ImpressionID && a.UserID == b.UserID &&
		a.PriceMicros == b.PriceMicros && a.IssuedAt.Equal(b.IssuedAt)
}

func TestRoundTrip(t *testing.T) {
	k := mustRing(t, "k1:"+secretA)
	long := strings.Repeat("x", 64)
	for _, c := range []Claims{
		typical(),
		{AdID: "1", ImpressionID: "i", IssuedAt: time.Unix(0, 0)},
		{AdID: long, ImpressionID: long, UserID: long, PriceMicros: math.MaxInt64, IssuedAt: time.Unix(maxUnix, 0)},
		{AdID: "a.b_c:d-e", ImpressionID: "I", PriceMicros: 1, IssuedAt: time.Date(2030, 1, 1, 0, 0, 0, 999999999, time.FixedZone("X", 3600))},
	} {
		tok := mustSign(t, k, c)
		got, err := k.Verify(tok)
		if err != nil {
			t.Fatalf("Verify(Sign(%+v)) = %v", c, err)
		}
		want := c
		want.IssuedAt = c.IssuedAt.Truncate(time.Second)
		if !sameClaims(got, want) {
			t.Errorf("round trip: got %+v, want %+v", got, want)
		}
		if got.IssuedAt.Location() != time.UTC {
			t.Errorf("IssuedAt location = %v, want UTC", got.IssuedAt.Location())
		}
		if len(tok) > MaxTokenLen {
			t.Errorf("token of %d characters exceeds MaxTokenLen", len(tok))
		}
		if again := mustSign(t, k, got); again != tok {
			t.Errorf("Sign is not deterministic: %q then %q", tok, again)
		}
	}
}

func TestTypicalTokenIsShort(t *testing.T) {
	tok := mustSign(t, mustRing(t, "k1:"+secretA), typical())
	t.Logf("typical token: %d characters: %s", len(tok), tok)
	if len(tok) >= 100 {
		t.Errorf("typical token is %d characters, want well under 120", len(tok))
	}
}

func TestSignRejectsInvalidClaims(t *testing.T) {
	k := mustRing(t, secretA)
	ok := typical()
	for name, mut := range map[string]func(*Claims){
		"no ad":          func(c *Claims) { c.AdID = "" },
		"bad ad":         func(c *Claims) { c.AdID = "a/b" },
		"long ad":        func(c *Claims) { c.AdID = strings.Repeat("a", 65) },
		"no impression":  func(c *Claims) { c.ImpressionID = "" },
		"bad impression": func(c *Claims) { c.ImpressionID = "imp 1" },
		"bad user":       func(c *Claims) { c.UserID = "é" },
		"negative price": func(c *Claims) { c.PriceMicros = -1 },
		"zero time":      func(c *Claims) { c.IssuedAt = time.Time{} },
		"before 1970":    func(c *Claims) { c.IssuedAt = time.Unix(-1, 0) },
		"after 9999":     func(c *Claims) { c.IssuedAt = time.Unix(maxUnix+1, 0) },
	} {
		c := ok
		mut(&c)
		if _, err := k.Sign(c); !errors.Is(err, ErrInvalidClaims) {
			t.Errorf("%s: Sign error = %v, want ErrInvalidClaims", name, err)
		}
	}
}

const b64Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// TestTamperNeverVerifies changes a sample token in every way a person or proxy could: every
// character to every other (including characters outside the alphabet), every bit of the
// decoded payload, every truncation and extension.
func TestTamperNeverVerifies(t *testing.T) {
	k := mustRing(t, "k1:"+secretA)
	for _, c := range []Claims{typical(), {AdID: "1", ImpressionID: "i", IssuedAt: time.Unix(1, 0)}} {
		tok := mustSign(t, k, c)
		if _, err := k.Verify(tok); err != nil {
			t.Fatal(err)
		}
		reject := func(what, bad string) {
			t.Helper()
			if got, err := k.Verify(bad); err == nil {
				t.Fatalf("%s: %q verified as %+v", what, bad, got)
			}
		}
		subst := b64Alphabet + "=+/.~ \r\n\x00\xff%"
		for i := 0; i < len(tok); i++ {
			for j := 0; j < len(subst); j++ {
				if subst[j] != tok[i] {
					reject(fmt.Sprintf("char %d -> %q", i, subst[j]), tok[:i]+subst[j:j+1]+tok[i+1:])
				}
			}
			reject(fmt.Sprintf("delete char %d", i), tok[:i]+tok[i+1:])
			reject(fmt.Sprintf("truncate to %d", i), tok[:i])
			reject(fmt.Sprintf("insert at %d", i), tok[:i]+"A"+tok[i:])
		}
		for j := 0; j < len(subst); j++ {
			reject("append", tok+subst[j:j+1])
		}
		reject("pad", tok+"==")

		raw, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil {
			t.Fatal(err)
		}
		for i := range raw {
			for bit := 0; bit < 8; bit++ {
				b := append([]byte(nil), raw...)
				b[i] ^= 1 << bit
				reject(fmt.Sprintf("flip byte %d bit %d", i, bit), base64.RawURLEncoding.EncodeToString(b))
			}
		}
	}
}

// resign builds a token from raw payload bytes with a correct tag, to reach the checks that
// run after the signature: a bug in Sign, or a key holder's tool, could make such payloads.
func resign(secret string, payload []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(payload)
	return base64.RawURLEncoding.EncodeToString(m.Sum(payload)[:len(payload)+tagLen])
}

func TestVerifyErrors(t *testing.T) {
	k := mustRing(t, "k1:"+secretA)
	good := mustSign(t, k, typical())
	raw, _ := base64.RawURLEncoding.DecodeString(good)
	payload := raw[:len(raw)-tagLen]
	hdr := []byte{version, 2, 'k', '1'}
	fields := func(b ...byte) []byte { return append(append([]byte(nil), hdr...), b...) }

	for _, tc := range []struct {
		name, tok string
		want      error
	}{
		{"empty", "", ErrMalformed},
		{"too long", strings.Repeat("A", MaxTokenLen+1), ErrMalformed},
		{"max length garbage", strings.Repeat("A", MaxTokenLen), ErrMalformed},
		{"not base64", "!!!!", ErrMalformed},
		{"std alphabet", strings.NewReplacer("-", "+", "_", "/").Replace(good) + "+/", ErrMalformed},
		{"newline inside", good[:10] + "\n" + good[10:], ErrMalformed},
		{"bad version", resign(secretA, append([]byte{2}, payload[1:]...)), ErrMalformed},
		{"zero key id length", base64.RawURLEncoding.EncodeToString(append([]byte{version, 0}, make([]byte, 40)...)), ErrMalformed},
		{"long key id", base64.RawURLEncoding.EncodeToString(append([]byte{version, 9}, make([]byte, 40)...)), ErrMalformed},
		{"unknown key", mustSign(t, mustRing(t, "k9:"+secretA), typical()), ErrUnknownKey},
		{"other secret", mustSign(t, mustRing(t, "k1:"+secretB), typical()), ErrBadSignature},
		{"trailing byte", resign(secretA, append(append([]byte(nil), payload...), 0)), ErrMalformed},
		{"non-minimal uvarint", resign(secretA, fields(0x81, 0x00, 0, 1, 'a', 1, 'i', 0)), ErrMalformed},
		{"id length past end", resign(secretA, fields(1, 0, 1, 'a', 1, 'i', 9)), ErrMalformed},
		{"empty ad id", resign(secretA, fields(1, 0, 0, 1, 'i', 0)), ErrMalformed},
		{"bad id char", resign(secretA, fields(1, 0, 1, '/', 1, 'i', 0)), ErrMalformed},
		{"price over int64", resign(secretA, fields(append([]byte{1}, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 1, 'a', 1, 'i', 0)...)), ErrMalformed},
		{"year 10000", resign(secretA, fields(append(appendUvarint(nil, maxUnix+1), 0, 1, 'a', 1, 'i', 0)...)), ErrMalformed},
	} {
		got, err := k.Verify(tc.tok)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: Verify = %+v, %v; want %v", tc.name, got, err, tc.want)
		}
		if err != nil && got != (Claims{}) {
			t.Errorf("%s: error %v with non-zero claims %+v", tc.name, err, got)
		}
	}
	// The resign helper itself must produce tokens that verify, or the cases above prove nothing.
	if _, err := k.Verify(resign(secretA, fields(1, 0, 1, 'a', 1, 'i', 0))); err != nil {
		t.Fatalf("hand-built token: %v", err)
	}
}

func appendUvarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func TestRotation(t *testing.T) {
	old := mustRing(t, "k1:"+secretA)
	rotated := mustRing(t, "k2:"+secretB+",k1:"+secretA)
	retired := mustRing(t, "k2:"+secretB)

	oldTok := mustSign(t, old, typical())
	newTok := mustSign(t, rotated, typical())
	if oldTok == newTok {
		t.Fatal("rotation did not change the signing key")
	}
	if rotated.SigningKeyID() != "k2" {
		t.Errorf("SigningKeyID = %q, want k2", rotated.SigningKeyID())
	}
	for _, tc := range []struct {
		name string
		k    *Keyring
		tok  string
		want error
	}{
		{"rotated verifies old", rotated, oldTok, nil},
		{"rotated verifies new", rotated, newTok, nil},
		{"retired verifies new", retired, newTok, nil},
		{"retired refuses old", retired, oldTok, ErrUnknownKey},
		{"old refuses new", old, newTok, ErrUnknownKey},
		// Reusing an id for a different secret must not turn into acceptance.
		{"reused id", mustRing(t, "k1:"+secretB), oldTok, ErrBadSignature},
	} {
		c, err := tc.k.Verify(tc.tok)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
		if err == nil && !sameClaims(c, typical()) {
			t.Errorf("%s: claims %+v", tc.name, c)
		}
	}
	// A plain secret is the default id, so it can be rotated away from.
	plainTok := mustSign(t, mustRing(t, secretA), typical())
	if _, err := mustRing(t, "k1:"+secretB+","+DefaultKeyID+":"+secretA).Verify(plainTok); err != nil {
		t.Errorf("rotation from a plain secret: %v", err)
	}
}

func TestParseKeyring(t *testing.T) {
	for _, tc := range []struct {
		spec string
		ids  []string // nil: want ErrInvalidKeyring
	}{
		{secretA, []string{DefaultKeyID}},
		{"  " + secretA + "\n", []string{DefaultKeyID}},
		{"k1:" + secretA, []string{"k1"}},
		{"k2:" + secretB + ",k1:" + secretA, []string{"k2", "k1"}},
		{" k2 : " + secretB + " , k1:" + secretA, []string{"k2", "k1"}},
		{"ABCDEFGH:" + secretA, []string{"ABCDEFGH"}},
		{"k1:" + secretA + ":with:colons", []string{"k1"}},
		{"", nil},
		{"   ", nil},
		{"short", nil},
		{"k1:short", nil},
		{"k1:" + secretA + ",", nil},
		{",k1:" + secretA, nil},
		{"k1:" + secretA + ",k1:" + secretB, nil},
		{"k1:" + secretA + "," + secretB, nil},
		{":" + secretA, nil},
		{"ABCDEFGHI:" + secretA, nil},
		{"k-1:" + secretA, nil},
		{"k1:", nil},
		{"k1:" + secretA + ",k2:", nil},
	} {
		k, err := ParseKeyring(tc.spec)
		if tc.ids == nil {
			if !errors.Is(err, ErrInvalidKeyring) {
				t.Errorf("ParseKeyring(%q) = %v, %v; want ErrInvalidKeyring", tc.spec, k, err)
			} else if strings.Contains(err.Error(), "secret-") {
				t.Errorf("ParseKeyring(%q) error leaks a secret: %v", tc.spec, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseKeyring(%q): %v", tc.spec, err)
			continue
		}
		if got := strings.Join(k.KeyIDs(), ","); got != strings.Join(tc.ids, ",") {
			t.Errorf("ParseKeyring(%q) ids = %s, want %v", tc.spec, got, tc.ids)
		}
	}
}

func TestNoSecretsInOutput(t *testing.T) {
	k := mustRing(t, "k2:"+secretB+",k1:"+secretA)
	key := Key{ID: "k1", Secret: secretA}
	for _, s := range []string{
		fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %s", k, k, k, k),
		fmt.Sprint(key), fmt.Sprintf("%v %+v %#v %s", key, key, key, key),
	} {
		if strings.Contains(s, "secret-") {
			t.Errorf("output leaks a secret: %s", s)
		}
	}
}

func TestGenerateSecret(t *testing.T) {
	a, b := GenerateSecret(), GenerateSecret()
	if a == b {
		t.Fatal("two generated secrets are equal")
	}
	k, err := ParseKeyring(a)
	if err != nil {
		t.Fatalf("generated secret is not a valid spec: %v", err)
	}
	if k.SigningKeyID() != DefaultKeyID {
		t.Errorf("generated secret parsed with id %q", k.SigningKeyID())
	}
}

func TestExpired(t *testing.T) {
	issued := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	c := Claims{IssuedAt: issued}
	for _, tc := range []struct {
		now  time.Time
		want bool
	}{
		{issued, false},
		{issued.Add(-time.Minute), false}, // issuer's clock ahead of ours
		{issued.Add(time.Hour), false},
		{issued.Add(time.Hour + time.Nanosecond), true},
	} {
		if got := c.Expired(tc.now, time.Hour); got != tc.want {
			t.Errorf("Expired(%v, 1h) = %v, want %v", tc.now, got, tc.want)
		}
	}
}

func TestConcurrent(t *testing.T) {
	k := mustRing(t, "k2:"+secretB+",k1:"+secretA)
	oldTok := mustSign(t, mustRing(t, "k1:"+secretA), typical())
	done := make(chan error)
	for g := 0; g < 8; g++ {
		go func(g int) {
			for i := 0; i < 500; i++ {
				c := typical()
				c.ImpressionID = fmt.Sprintf("imp-%d-%d", g, i)
				tok, err := k.Sign(c)
				if err == nil {
					var got Claims
					if got, err = k.Verify(tok); err == nil && !sameClaims(got, c) {
						err = fmt.Errorf("got %+v, want %+v", got, c)
					}
				}
				if err == nil {
					_, err = k.Verify(oldTok)
				}
				if err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}(g)
	}
	for g := 0; g < 8; g++ {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

func TestVerifyAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	k := mustRing(t, "k1:"+secretA)
	tok := mustSign(t, k, typical())
	if n := testing.AllocsPerRun(100, func() { _, _ = k.Verify(tok) }); n > 1 {
		t.Errorf("Verify allocates %v times, want at most 1", n)
	}
	bad := tok[:len(tok)-2] + "AA"
	if n := testing.AllocsPerRun(100, func() { _, _ = k.Verify(bad) }); n > 0 {
		t.Errorf("rejecting a forged token allocates %v times, want 0", n)
	}
}

// FuzzVerify: Verify never panics, and whatever verifies is canonical: Sign of its claims gives
// back the very same token, and those claims verify equal.
//
// A fuzzer cannot forge tags, so mutated tokens almost never get past the signature check. To
// reach the field parser behind it too, each input that decodes is also re-tagged with the
// secret its key id names and checked the same way.
func FuzzVerify(f *testing.F) {
	k := mustRing(f, "k2:"+secretB+",k1:"+secretA)
	signers := map[string]*Keyring{"k2": k, "k1": mustRing(f, "k1:"+secretA)}
	secrets := map[string]string{"k2": secretB, "k1": secretA}
	long := strings.Repeat("z", 64)
	for _, c := range []Claims{
		typical(),
		{AdID: "1", ImpressionID: "i", IssuedAt: time.Unix(0, 0)},
		{AdID: long, ImpressionID: long, UserID: long, PriceMicros: math.MaxInt64, IssuedAt: time.Unix(maxUnix, 0)},
	} {
		for _, s := range signers {
			f.Add(mustSign(f, s, c))
		}
	}
	f.Add("")
	f.Add("AQJrMQ")
	check := func(t *testing.T, tok string) {
		c, err := k.Verify(tok)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnknownKey) && !errors.Is(err, ErrBadSignature) {
				t.Fatalf("Verify(%q): error %v wraps no sentinel", tok, err)
			}
			return
		}
		if p := c.problem(); p != "" {
			t.Fatalf("Verify(%q) returned claims that Sign refuses: %s", tok, p)
		}
		raw, _ := base64.RawURLEncoding.DecodeString(tok)
		signer := signers[string(raw[2:2+int(raw[1])])]
		if again := mustSign(t, signer, c); again != tok {
			t.Fatalf("not canonical: %q verifies, but its claims sign to %q", tok, again)
		}
		got, err := k.Verify(mustSign(t, k, c))
		if err != nil || !sameClaims(got, c) {
			t.Fatalf("re-signed claims verify as %+v, %v; want %+v", got, err, c)
		}
	}
	f.Fuzz(func(t *testing.T, tok string) {
		check(t, tok)
		raw, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil || len(raw) < 2+tagLen || len(raw) < 2+int(raw[1]) {
			return
		}
		if secret, ok := secrets[string(raw[2:2+int(raw[1])])]; ok {
			check(t, resign(secret, raw[:len(raw)-tagLen]))
		}
	})
}

func BenchmarkSign(b *testing.B) {
	k := mustRing(b, "k1:"+secretA)
	c := typical()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.Sign(c); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	k := mustRing(b, "k2:"+secretB+",k1:"+secretA)
	tok := mustSign(b, k, typical())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.Verify(tok); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyParallel(b *testing.B) {
	k := mustRing(b, "k2:"+secretB+",k1:"+secretA)
	tok := mustSign(b, k, typical())
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := k.Verify(tok); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkVerifyForged is the cost of a flood of well-formed tokens with wrong tags.
func BenchmarkVerifyForged(b *testing.B) {
	k := mustRing(b, "k1:"+secretA)
	tok := mustSign(b, k, typical())
	tok = tok[:len(tok)-2] + "AA"
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.Verify(tok); !errors.Is(err, ErrBadSignature) {
			b.Fatal(err)
		}
	}
}

// BenchmarkMAC compares the pooled, reset HMAC that Keyring uses with hmac.New per token.
func BenchmarkMAC(b *testing.B) {
	k := mustRing(b, "k1:"+secretA)
	tok := mustSign(b, k, typical())
	raw, _ := base64.RawURLEncoding.DecodeString(tok)
	msg := raw[:len(raw)-tagLen]
	b.Run("pooled", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			s := k.pool.Get().(*scratch)
			k.mac(s, 0, msg)
			k.pool.Put(s)
		}
	})
	b.Run("new", func(b *testing.B) {
		b.ReportAllocs()
		var sum [sha256.Size]byte
		for b.Loop() {
			m := hmac.New(sha256.New, []byte(secretA))
			m.Write(msg)
			m.Sum(sum[:0])
		}
	})
}
