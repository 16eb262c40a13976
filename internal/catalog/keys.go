package catalog

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/adpulse/adpulse/internal/httpapi"
)

// Key prefixes make a leaked key recognisable (secret scanners, logs) and say what it is for.
const (
	AdvertiserKeyPrefix = "adp_adv_"
	IngestKeyPrefix     = "adp_ing_"
)

// Stored key roles.
const (
	roleAdvertiser = "advertiser"
	roleIngest     = "ingest"
)

// CreateAdvertiserKey creates a key that reads the advertiser's own objects and metrics. The
// key is returned once; only its hash is stored. A missing advertiser is an error wrapping
// ErrNotFound.
func (c *Catalog) CreateAdvertiserKey(ctx context.Context, advertiserID string) (string, error) {
	if err := checkID("id", advertiserID); err != nil {
		return "", err
	}
	return c.createKey(ctx, AdvertiserKeyPrefix, httpapi.Principal{Role: httpapi.RoleAdvertiser, AdvertiserID: advertiserID})
}

// CreateIngestKey creates a key for POST /events only.
func (c *Catalog) CreateIngestKey(ctx context.Context) (string, error) {
	return c.createKey(ctx, IngestKeyPrefix, httpapi.Principal{Role: httpapi.RoleIngest})
}

func (c *Catalog) createKey(ctx context.Context, prefix string, p httpapi.Principal) (string, error) {
	// 32 bytes: a key is a bearer secret and must not be guessable, ever.
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("create key: %w", err)
	}
	key := prefix + base64.RawURLEncoding.EncodeToString(raw[:])
	h := keyHash(key)
	role, owner := roleIngest, sql.NullString{}
	if p.Role == httpapi.RoleAdvertiser {
		role, owner = roleAdvertiser, sql.NullString{String: p.AdvertiserID, Valid: true}
	}

	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	err := c.writeTx(ctx, func(tx *sql.Tx, ch *changes) error {
		if owner.Valid {
			var one int
			err := tx.QueryRowContext(ctx, c.d.q(`SELECT 1 FROM advertisers WHERE id = ?`), owner.String).Scan(&one)
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("advertiser %q: %w", owner.String, ErrNotFound)
			}
			if err != nil {
				return err
			}
		}
		hexHash := hex.EncodeToString(h[:])
		_, err := tx.ExecContext(ctx, c.d.q(`INSERT INTO api_keys (key_hash, role, advertiser_id, created_at) VALUES (?, ?, ?, ?)`),
			hexHash, role, owner, c.nowMicros())
		ch.add(changeKey, hexHash)
		return err
	}, func(context.Context) error {
		c.setKey(h, p)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("create %s key: %w", role, err)
	}
	return key, nil
}

func (c *Catalog) loadKeys(ctx context.Context) error {
	rows, err := c.db.QueryContext(ctx, c.d.q(`SELECT key_hash, role, advertiser_id FROM api_keys`))
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		h, p, ok, err := c.scanKey(rows)
		if err != nil {
			return err
		}
		if ok {
			c.setKey(h, p)
		}
	}
	return rows.Err()
}

// scanKey scans a key_hash, role, advertiser_id row. It reports !ok, having logged why, for a
// row that cannot be used.
func (c *Catalog) scanKey(r rowScanner) (h [sha256.Size]byte, p httpapi.Principal, ok bool, err error) {
	var hexHash, role string
	var owner sql.NullString
	if err := r.Scan(&hexHash, &role, &owner); err != nil {
		return h, p, false, err
	}
	if n, err := hex.Decode(h[:], []byte(hexHash)); err != nil || n != len(h) {
		c.log.Warn("catalog: malformed api key hash skipped", "role", role)
		return h, p, false, nil
	}
	switch role {
	case roleAdvertiser:
		return h, httpapi.Principal{Role: httpapi.RoleAdvertiser, AdvertiserID: owner.String}, true, nil
	case roleIngest:
		return h, httpapi.Principal{Role: httpapi.RoleIngest}, true, nil
	}
	c.log.Warn("catalog: api key of an unknown role skipped", "role", role)
	return h, p, false, nil
}

// Authenticate returns the principal of a key: the admin key (compared in constant time), or
// a created key found by its hash. Looking up a hash leaks nothing through timing: finding
// which stored hash is close to the hash of a guess says nothing about any key.
func (c *Catalog) Authenticate(key string) (httpapi.Principal, bool) {
	if key == "" {
		return httpapi.Principal{}, false
	}
	h := keyHash(key)
	if c.hasAdmin && subtle.ConstantTimeCompare(h[:], c.adminHash[:]) == 1 {
		return httpapi.Principal{Role: httpapi.RoleAdmin}, true
	}
	if v, ok := c.keys.Load(h); ok {
		return v.(httpapi.Principal), true
	}
	return httpapi.Principal{}, false
}

// Middleware puts the caller's principal into the request context: the one of the
// "Authorization: Bearer KEY" header, or RoleNone when it is absent or unknown. It rejects
// nothing; handlers decide between 401 and 403.
func (c *Catalog) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var p httpapi.Principal
		if key, ok := bearer(r.Header.Get("Authorization")); ok {
			if pp, ok := c.Authenticate(key); ok {
				p = pp
			}
		}
		if p == (httpapi.Principal{}) && httpapi.PrincipalFrom(r.Context()) == p {
			// Anonymous (every click and pixel): the context already yields the zero
			// principal, and a copy of the request and a context per click cost more than
			// the rest of the redirect.
			next.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r.WithContext(httpapi.WithPrincipal(r.Context(), p)))
	})
}

// bearer extracts the key of an "Authorization: Bearer KEY" header; the scheme is
// case-insensitive (RFC 9110).
func bearer(h string) (string, bool) {
	const scheme = "bearer "
	if len(h) <= len(scheme) || !strings.EqualFold(h[:len(scheme)], scheme) {
		return "", false
	}
	key := strings.TrimSpace(h[len(scheme):])
	return key, key != ""
}
