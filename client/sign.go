package client

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/adpulse/adpulse/internal/clicktoken"
	"github.com/adpulse/adpulse/internal/event"
)

// DefaultClickTTL is the server's --click-ttl default.
const DefaultClickTTL = time.Hour

// SignerConfig configures a Signer.
type SignerConfig struct {
	// Secret is the server's --click-secret: a plain secret, or a keyring such as
	// "k2:secretB,k1:secretA" whose first key signs. Keep it as secret as the server does:
	// whoever holds it can make click URLs that adpulse counts and charges.
	Secret string
	// BaseURL is the server's --public-url, e.g. "https://t.example.com": URLs are
	// BaseURL/c/TOKEN and BaseURL/i/TOKEN.
	BaseURL string
	// ClickTTL is the server's --click-ttl, used only to report ExpiresAt; zero means
	// DefaultClickTTL.
	ClickTTL time.Duration
	// Now is the clock tokens are issued by; nil means time.Now.
	Now func() time.Time
}

// Signer makes signed click and impression URLs without asking the server, in the server's
// token format: what POST /api/v1/click-urls answers, made locally. It is safe for concurrent
// use.
type Signer struct {
	keys *clicktoken.Keyring
	base string
	ttl  time.Duration
	now  func() time.Time
}

// ClickURLs is a signed click URL and its impression pixel URL; both carry the same token.
type ClickURLs struct {
	ClickURL      string    `json:"click_url"`
	ImpressionURL string    `json:"impression_url"`
	ExpiresAt     time.Time `json:"expires_at"` // later clicks still redirect but count as invalid
}

// NewSigner returns a Signer for cfg.
func NewSigner(cfg SignerConfig) (*Signer, error) {
	keys, err := clicktoken.ParseKeyring(cfg.Secret)
	if err != nil {
		return nil, fmt.Errorf("adpulse signer: %w", err)
	}
	u, err := url.Parse(cfg.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("adpulse signer: BaseURL %q must be an absolute http or https URL without query", cfg.BaseURL)
	}
	if cfg.ClickTTL < 0 {
		return nil, errors.New("adpulse signer: ClickTTL must not be negative")
	}
	s := &Signer{keys: keys, base: strings.TrimRight(cfg.BaseURL, "/"), ttl: orDefault(cfg.ClickTTL, DefaultClickTTL), now: cfg.Now}
	if s.now == nil {
		s.now = time.Now
	}
	return s, nil
}

// Token returns the signed token for an impression of adID. userID may be empty; cpcMicros is
// the price the auction set (0: the ad's bid applies), charged when the click counts.
func (s *Signer) Token(adID, impressionID, userID string, cpcMicros int64) (token string, issuedAt time.Time, err error) {
	if cpcMicros < 0 || cpcMicros > maxMicros {
		return "", time.Time{}, fieldError("cpc_micros", "must be an integer from 0 to 1e15")
	}
	for _, f := range [...]struct{ name, v string }{{"ad_id", adID}, {"impression_id", impressionID}, {"user_id", userID}} {
		if (f.v != "" || f.name != "user_id") && !event.ValidID(f.v) {
			return "", time.Time{}, fieldError(f.name, idRule)
		}
	}
	issuedAt = s.now().UTC().Truncate(time.Second)
	token, err = s.keys.Sign(clicktoken.Claims{AdID: adID, ImpressionID: impressionID, UserID: userID, PriceMicros: cpcMicros, IssuedAt: issuedAt})
	if err != nil {
		return "", time.Time{}, fmt.Errorf("adpulse signer: %w", err)
	}
	return token, issuedAt, nil
}

// URLs returns the click URL and the impression URL of one impression, with the time after
// which a click on it no longer counts.
func (s *Signer) URLs(adID, impressionID, userID string, cpcMicros int64) (ClickURLs, error) {
	tok, issued, err := s.Token(adID, impressionID, userID, cpcMicros)
	if err != nil {
		return ClickURLs{}, err
	}
	return ClickURLs{
		ClickURL:      s.base + "/c/" + tok,
		ImpressionURL: s.base + "/i/" + tok,
		ExpiresAt:     issued.Add(s.ttl),
	}, nil
}

// ClickURL returns the signed click URL (GET answers 302 to the ad's landing page) and when
// it expires: clicks after expiresAt still redirect but are recorded as invalid, never charged.
func (s *Signer) ClickURL(adID, impressionID, userID string, cpcMicros int64) (u string, expiresAt time.Time, err error) {
	urls, err := s.URLs(adID, impressionID, userID, cpcMicros)
	return urls.ClickURL, urls.ExpiresAt, err
}

// ImpressionURL returns the signed impression pixel URL (GET records one impression per
// impression id and answers a 1x1 GIF). Impressions do not expire.
func (s *Signer) ImpressionURL(adID, impressionID, userID string, cpcMicros int64) (string, error) {
	urls, err := s.URLs(adID, impressionID, userID, cpcMicros)
	return urls.ImpressionURL, err
}

// SigningKeyID is the id of the key that signs ("k0" for a plain secret).
func (s *Signer) SigningKeyID() string { return s.keys.SigningKeyID() }
