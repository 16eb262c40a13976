package feeds

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ManifestName is the file whose arrival marks a feed version complete.
const ManifestName = "_manifest.json"

// Limits of a manifest.
const (
	MaxManifestBytes = 1 << 20
	MaxFiles         = 10_000
	maxNameLen       = 64 // a feed, version or file name
)

// Manifest lists the files of one feed version: what the loader must find, byte for byte,
// before it reads a single row.
type Manifest struct {
	// Feed and Version, when given, must be those of the directory the manifest is in.
	Feed    string         `json:"feed,omitempty"`
	Version string         `json:"version,omitempty"`
	Files   []ManifestFile `json:"files"`
}

// ManifestFile is one data file of a version.
type ManifestFile struct {
	// Path is the file's name in the version's directory (no directories).
	Path string `json:"path"`
	// Rows is the number of data rows in the file (a CSV header is not a row).
	Rows int64 `json:"rows"`
	// SHA256 is the hex SHA-256 of the file's bytes.
	SHA256 string `json:"sha256"`
}

// Rows is the sum of the files' rows.
func (m Manifest) Rows() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Rows
	}
	return n
}

// ParseManifest reads and checks a manifest: one JSON object with no unknown fields, 1 to
// MaxFiles files with distinct valid names, non-negative row counts and well-formed checksums.
func ParseManifest(data []byte) (Manifest, error) {
	var m Manifest
	if len(data) > MaxManifestBytes {
		return m, fmt.Errorf("manifest: larger than %d bytes", MaxManifestBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, fmt.Errorf("manifest: not a manifest JSON object: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Manifest{}, errors.New("manifest: trailing data after the JSON object")
	}
	if m.Feed != "" && !ValidName(m.Feed) {
		return Manifest{}, errors.New("manifest: feed: must be 1-64 characters of [A-Za-z0-9._-]")
	}
	if m.Version != "" && !ValidName(m.Version) {
		return Manifest{}, errors.New("manifest: version: must be 1-64 characters of [A-Za-z0-9._-]")
	}
	if len(m.Files) == 0 {
		return Manifest{}, errors.New("manifest: files: at least one file is required")
	}
	if len(m.Files) > MaxFiles {
		return Manifest{}, fmt.Errorf("manifest: files: more than %d", MaxFiles)
	}
	seen := make(map[string]bool, len(m.Files))
	var total int64
	for i, f := range m.Files {
		switch {
		case !ValidName(f.Path) || f.Path == ManifestName:
			return Manifest{}, fmt.Errorf("manifest: files[%d].path: must be a file name of 1-64 characters of [A-Za-z0-9._-], not %s", i, ManifestName)
		case seen[f.Path]:
			return Manifest{}, fmt.Errorf("manifest: files[%d].path: %s is listed twice", i, f.Path)
		case f.Rows < 0 || f.Rows > MaxRowsLimit:
			return Manifest{}, fmt.Errorf("manifest: files[%d].rows: must be 0 to %d", i, MaxRowsLimit)
		case !validSHA256(f.SHA256):
			return Manifest{}, fmt.Errorf("manifest: files[%d].sha256: must be 64 hex digits", i)
		}
		seen[f.Path] = true
		if total += f.Rows; total > MaxRowsLimit {
			return Manifest{}, fmt.Errorf("manifest: more than %d rows in all", MaxRowsLimit)
		}
		m.Files[i].SHA256 = strings.ToLower(f.SHA256)
	}
	return m, nil
}

func validSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// ValidName reports whether s can name a feed, a version or a file: 1-64 characters of
// [A-Za-z0-9._-], not starting with a dot (hidden files and "..").
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > maxNameLen || s[0] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
