// Package clicktoken signs and verifies the tokens of click URLs (https://HOST/c/TOKEN) and
// impression pixels (/i/TOKEN, the same token). A token is all that ingest trusts of a public
// request: it names the ad, the impression, optionally the user and the auction price, and when
// it was issued. Because only a holder of a key can make one, /c never redirects anywhere a token
// issued here did not name.
//
// Invariants:
//   - Verify never panics and accepts only tokens that Sign made with a key of the Keyring: a
//     token changed in any character, truncated or extended is rejected.
//   - Tokens are canonical: Sign is deterministic, and a token that verifies is, character for
//     character, the token Sign makes from its claims with the same key. So a token string can
//     be used as a cache or log key without two spellings of one token.
//   - Claims that verify have ids that pass event.ValidID (user id may be empty), a price >= 0
//     and an IssuedAt in UTC, whole seconds, within years 1970-9999.
//   - Expiry is not decided here: the caller compares IssuedAt with its click TTL
//     (Claims.Expired), because an expired click is still recorded (as invalid), not refused.
//   - A Keyring is immutable and safe for concurrent use. Exactly one key signs; all verify.
//
// Token format, version 1: base64url without padding (RFC 4648 §5) of
//
//	version     1 byte, = 1
//	key id      1 byte length n (1-8), then n bytes [A-Za-z0-9]
//	issued at   uvarint, Unix seconds
//	price       uvarint, micros; 0 = the ad's bid applies
//	ad id       uvarint length, bytes
//	impr. id    uvarint length, bytes
//	user id     uvarint length (0 when absent), bytes
//	tag         the first 16 bytes of HMAC-SHA256(secret of key id, all bytes above)
//
// Uvarints are minimal (no redundant 0x80 continuation bytes). A token with ids of 10-20
// characters is about 95 characters long; the largest possible is 316.
package clicktoken

import (
	"crypto/hmac"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/adpulse/adpulse/internal/event"
)

// Errors of Verify. Every rejected token gets one of the first three (possibly wrapped with
// detail), so a handler maps them to 400 with errors.Is and can count them apart.
var (
	// ErrMalformed: not a token of a known version (bad length, base64 or layout, or claims
	// that break the id rules).
	ErrMalformed = errors.New("clicktoken: malformed token")
	// ErrUnknownKey: well-formed, but signed with a key id this Keyring does not hold (a
	// removed key, or a token of another installation).
	ErrUnknownKey = errors.New("clicktoken: unknown key id")
	// ErrBadSignature: the tag does not match: the token was altered or forged.
	ErrBadSignature = errors.New("clicktoken: bad signature")
	// ErrInvalidClaims is returned by Sign for claims that no token may carry.
	ErrInvalidClaims = errors.New("clicktoken: invalid claims")
)

// The detailed rejections are made once: Verify faces the open internet, so a flood of garbage
// must cost no allocation, and the messages deliberately do not echo attacker-chosen bytes.
// They are never modified.
var (
	errTooLong   = fmt.Errorf("%w: longer than %d characters", ErrMalformed, MaxTokenLen)
	errBase64    = fmt.Errorf("%w: not unpadded base64url", ErrMalformed)
	errShort     = fmt.Errorf("%w: too short", ErrMalformed)
	errVersion   = fmt.Errorf("%w: unknown version", ErrMalformed)
	errKeyIDLen  = fmt.Errorf("%w: bad key id length", ErrMalformed)
	errLayout    = fmt.Errorf("%w: bad field encoding", ErrMalformed)
	errTrailing  = fmt.Errorf("%w: trailing bytes", ErrMalformed)
	errBadClaims = fmt.Errorf("%w: claims break the id or price rules", ErrMalformed)
)

const (
	// MaxTokenLen is the longest token Verify decodes; longer input is refused before any
	// work. Every token Sign makes is shorter (at most 316 characters).
	MaxTokenLen = 512

	version = 1
	// tagLen truncates the HMAC-SHA256 tag to 128 bits. Forging a token means guessing a tag
	// online, one HTTP request per guess, with odds of 2^-128 each: truncation costs no real
	// security (NIST SP 800-107 allows tags down to 64 bits) and saves 22 URL characters.
	tagLen = 16
	// maxDecoded is the most bytes MaxTokenLen base64 characters decode to.
	maxDecoded = MaxTokenLen / 4 * 3
	// minPayload is version, key id length, a 1-byte id, 2 one-byte uvarints, 3 lengths, tag.
	minPayload = 1 + 1 + 1 + 2 + 3 + tagLen
	// maxUnix is 9999-12-31T23:59:59Z. Bounding IssuedAt keeps time.Unix and Time.Unix exact
	// inverses, which the canonical-token invariant needs.
	maxUnix = 253402300799
)

// Claims is what a token says. Verify returns only claims that Sign would accept.
type Claims struct {
	AdID         string
	ImpressionID string
	UserID       string    // optional; "" when the ad server did not know the user
	PriceMicros  int64     // auction price of a click; 0 means the ad's bid applies
	IssuedAt     time.Time // kept to whole seconds
}

// Expired reports whether claims issued at c.IssuedAt are older than ttl at now. A token issued
// "in the future" (clock skew between processes) is not expired.
func (c Claims) Expired(now time.Time, ttl time.Duration) bool {
	return now.Sub(c.IssuedAt) > ttl
}

// problem returns "" for claims that may be signed, or what is wrong with them. It returns a
// constant string so Verify can call it without allocating.
func (c *Claims) problem() string {
	switch {
	case !event.ValidID(c.AdID):
		return "ad id must be 1-64 characters of [A-Za-z0-9._:-]"
	case !event.ValidID(c.ImpressionID):
		return "impression id must be 1-64 characters of [A-Za-z0-9._:-]"
	case c.UserID != "" && !event.ValidID(c.UserID):
		return "user id must be empty or 1-64 characters of [A-Za-z0-9._:-]"
	case c.PriceMicros < 0:
		return "price must not be negative"
	}
	if s := c.IssuedAt.Unix(); s < 0 || s > maxUnix {
		return "issued at must be within years 1970-9999"
	}
	return ""
}

// Sign returns the token for c, signed with the Keyring's signing key. IssuedAt is truncated to
// whole seconds. It fails only for claims that break the id, price or time rules.
func (k *Keyring) Sign(c Claims) (string, error) {
	if p := c.problem(); p != "" {
		return "", fmt.Errorf("%w: %s", ErrInvalidClaims, p)
	}
	s := k.pool.Get().(*scratch)
	defer k.pool.Put(s)

	signer := &k.keys[0]
	// buf has room for the largest payload (237 bytes), so the appends never reallocate.
	b := append(s.buf[:0], version, byte(len(signer.id)))
	b = append(b, signer.id...)
	b = binary.AppendUvarint(b, uint64(c.IssuedAt.Unix()))
	b = binary.AppendUvarint(b, uint64(c.PriceMicros))
	for _, f := range [...]string{c.AdID, c.ImpressionID, c.UserID} {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	sum := k.mac(s, 0, b)
	b = append(b, sum[:tagLen]...)

	out := s.tok[:k.enc.EncodedLen(len(b))]
	k.enc.Encode(out, b)
	return string(out), nil
}

// Verify checks token and returns its claims. Errors wrap ErrMalformed, ErrUnknownKey or
// ErrBadSignature. On success it allocates once (the three ids share one string).
//
// Only the version and key id are read before the tag is checked; the fields are parsed only
// from bytes a key holder wrote, so the parser never works on forged input.
func (k *Keyring) Verify(token string) (Claims, error) {
	if len(token) > MaxTokenLen {
		return Claims{}, errTooLong
	}
	// The base64 decoder skips CR and LF; refusing them keeps one spelling per token.
	// Strict decoding refuses every other byte outside the alphabet, '=' padding, and
	// nonzero unused bits in the last character.
	if strings.ContainsAny(token, "\r\n") {
		return Claims{}, errBase64
	}
	s := k.pool.Get().(*scratch)
	defer k.pool.Put(s)

	src := s.tok[:copy(s.tok[:], token)]
	n, err := k.enc.Decode(s.buf[:], src)
	if err != nil {
		return Claims{}, errBase64
	}
	p := s.buf[:n]
	if len(p) < minPayload {
		return Claims{}, errShort
	}
	if p[0] != version {
		return Claims{}, errVersion
	}
	idLen := int(p[1])
	if idLen < 1 || idLen > MaxKeyIDLen {
		return Claims{}, errKeyIDLen
	}
	ki := k.index(p[2 : 2+idLen])
	if ki < 0 {
		return Claims{}, ErrUnknownKey
	}
	body, tag := p[:len(p)-tagLen], p[len(p)-tagLen:]
	if !hmac.Equal(k.mac(s, ki, body)[:tagLen], tag) {
		return Claims{}, ErrBadSignature
	}
	return parseFields(body[2+idLen:])
}

// parseFields decodes the authenticated fields after the key id.
func parseFields(b []byte) (Claims, error) {
	issued, n := uvarint(b)
	if n == 0 || issued > maxUnix {
		return Claims{}, errLayout
	}
	b = b[n:]
	price, n := uvarint(b)
	if n == 0 || price > math.MaxInt64 {
		return Claims{}, errLayout
	}
	b = b[n:]

	// One string for the three ids, sliced below: one allocation instead of three.
	all := string(b)
	var ids [3]string
	off := 0
	for i := range ids {
		l, n := uvarint(b[off:])
		if n == 0 || l > uint64(len(b)-off-n) {
			return Claims{}, errLayout
		}
		start := off + n
		off = start + int(l)
		ids[i] = all[start:off]
	}
	if off != len(b) {
		return Claims{}, errTrailing
	}
	c := Claims{
		AdID:         ids[0],
		ImpressionID: ids[1],
		UserID:       ids[2],
		PriceMicros:  int64(price),
		IssuedAt:     time.Unix(int64(issued), 0).UTC(),
	}
	if c.problem() != "" {
		return Claims{}, errBadClaims
	}
	return c, nil
}

// uvarint decodes a minimal uvarint from b, returning n == 0 on any error. Refusing redundant
// encodings (a last byte of 0 after a continuation) is what makes tokens canonical.
func uvarint(b []byte) (uint64, int) {
	v, n := binary.Uvarint(b)
	if n <= 0 || n > 1 && b[n-1] == 0 {
		return 0, 0
	}
	return v, n
}
