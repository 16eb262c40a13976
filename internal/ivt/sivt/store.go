package sivt

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/cespare/xxhash/v2"
	"github.com/cockroachdb/pebble"
)

// Keys of the stage's database. Every value is JSON except the counters (uvarints).
const (
	prefixOffset  = 'o' // + 4-byte partition -> next offset to consume
	prefixVerdict = 'v' // + click key -> verdictRecord
	prefixCredit  = 'c' // + advertiser id + 0 + 8-byte seq -> Credit
	prefixPending = 'p' // + 8-byte seq -> pendingCredit
	prefixJournal = 'j' // + 8-byte seq -> []metricstore.Delta
)

var (
	keyJournalNext = []byte("n")
	keyCreditNext  = []byte("q")
)

func offsetKey(p int) []byte { return binary.BigEndian.AppendUint32([]byte{prefixOffset}, uint32(p)) }
func verdictKey(clickKey string) []byte {
	return append([]byte{prefixVerdict}, clickKey...)
}
func seqKey(prefix byte, seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefix}, seq)
}
func creditPrefix(advertiser string) []byte {
	return append(append([]byte{prefixCredit}, advertiser...), 0)
}
func creditKey(advertiser string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(creditPrefix(advertiser), seq)
}

func hashKey(k string) uint64 { return xxhash.Sum64String(k) }

// verdictRecord is a verdict as stored and as GET /api/v1/clicks/{id} shows it.
type verdictRecord struct {
	Reason      string   `json:"reason"`
	Rule        string   `json:"rule"`
	Late        bool     `json:"late"`
	TriggeredBy string   `json:"triggered_by,omitempty"`
	DecidedAt   string   `json:"decided_at"`
	Evidence    Evidence `json:"evidence"`
	// CreditSeq finds the click's credit in its advertiser's trail.
	CreditSeq uint64 `json:"credit_seq"`
}

// Credit is one entry of an advertiser's credit trail: a click a rule made invalid and what
// was credited back for it.
type Credit struct {
	Seq          uint64 `json:"seq"`
	ClickID      string `json:"click_id"`
	AdID         string `json:"ad_id"`
	CampaignID   string `json:"campaign_id"`
	AdvertiserID string `json:"advertiser_id"`
	EventTime    string `json:"event_time"`
	Reason       string `json:"reason"`
	Late         bool   `json:"late"`
	DecidedAt    string `json:"decided_at"`
	// Status is pending (not credited yet: billing has not charged the click yet, or the
	// refund is being retried) or credited.
	Status          string `json:"status"`
	CreditedMicros  int64  `json:"credited_micros"`
	CreditedAt      string `json:"credited_at,omitempty"`
	AlreadyRefunded bool   `json:"already_refunded,omitempty"`
}

// pendingCredit is a credit waiting for its refund.
type pendingCredit struct {
	Advertiser string `json:"a"`
	Seq        uint64 `json:"s"`
	ClickID    string `json:"c"`
	Reason     uint8  `json:"r"`
}

// journalEntry is one round's metric moves.
type journalEntry struct {
	Deltas []metricstore.Delta `json:"d"`
}

var ruleText = map[string]string{
	"flood_user":    "more clicks from one user within the flood window than allowed",
	"flood_ip":      "more clicks from one address within the flood window than allowed",
	"flood_device":  "more clicks from one device within the flood window than allowed",
	"no_impression": "a click with no impression on an ad whose impressions are tracked",
	"too_fast":      "a click sooner after its impression than a person can click",
	"many_ads":      "one source clicked more distinct ads within the window than allowed",
}

func getUintOK(r pebble.Reader, key []byte) (uint64, bool, error) {
	v, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read %q: %w", key, err)
	}
	defer closer.Close()
	n, k := binary.Uvarint(v)
	if k <= 0 {
		return 0, false, fmt.Errorf("sivt: corrupt counter %q", key)
	}
	return n, true, nil
}

func getUint(r pebble.Reader, key []byte) (uint64, error) {
	n, _, err := getUintOK(r, key)
	return n, err
}

func has(r pebble.Reader, key []byte) (bool, error) {
	_, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %q: %w", key, err)
	}
	closer.Close()
	return true, nil
}

func getJSON(r pebble.Reader, key []byte, v any) (bool, error) {
	b, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %q: %w", key, err)
	}
	defer closer.Close()
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("sivt: corrupt record %q: %w", key, err)
	}
	return true, nil
}

func setJSON(b *pebble.Batch, key []byte, v any) error {
	j, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Set(key, j, nil)
}

func setUint(b *pebble.Batch, key []byte, n uint64) error {
	return b.Set(key, binary.AppendUvarint(nil, n), nil)
}

func countPrefix(r pebble.Reader, prefix byte) (int64, error) {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: []byte{prefix}, UpperBound: []byte{prefix + 1}})
	if err != nil {
		return 0, err
	}
	defer it.Close()
	var n int64
	for it.First(); it.Valid(); it.Next() {
		n++
	}
	return n, it.Error()
}

// firstSeq is the seq of the first key under prefix, or next when there is none.
func firstSeq(r pebble.Reader, prefix byte, next uint64) (uint64, error) {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: []byte{prefix}, UpperBound: []byte{prefix + 1}})
	if err != nil {
		return 0, err
	}
	defer it.Close()
	if !it.First() {
		return next, it.Error()
	}
	k := it.Key()
	if len(k) != 9 {
		return 0, fmt.Errorf("sivt: corrupt key %x", k)
	}
	return binary.BigEndian.Uint64(k[1:]), nil
}
