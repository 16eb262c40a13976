// Package ledger is the storage of billing: the ledger of charged clicks, spend per campaign
// per budget day and in total, the consumed log offsets of each partition fenced by its
// ownership epoch, the spend journal that feeds the metric store, user view counts and a
// little metadata (known campaigns, the pacing traffic profile). Two implementations share
// one contract and one conformance suite (ledgertest): Pebble, embedded in one process, and
// SQL (PostgreSQL, MySQL/MariaDB), shared by every process node of a deployment.
//
// # The round
//
// Every change is one transaction, Store.Update: the charger's round of the log and a refund
// alike. Inside it the caller reads what it decides on through Tx (ledger entries by click
// key; spend rows, locked until commit), then returns the Writes; Update commits them
// atomically or not at all. The SQL store may run the function more than once (a deadlock, a
// serialization failure, two nodes inserting the same click key): it must decide from what
// Tx returns and keep no state across calls.
//
// # Invariants
//
//   - Atomic: a round's ledger entries, spend, view counts, journal entry, known campaigns,
//     metadata and consumed offsets commit together or not at all.
//   - Fenced: Claim bumps a partition's epoch and returns its committed offset. An Update
//     whose Writes.Offsets carry an older epoch for any partition fails with an error
//     matching ErrFenced and writes nothing, whether it ran before or raced the Claim: the
//     partition row is locked first in the transaction, and Claim takes the same lock.
//   - Spend is read with a lock held until commit (SQL: SELECT ... FOR UPDATE in one fixed
//     order, by campaign then day start, days before totals), so two writers charging the
//     same campaign are serialised and a budget is never exceeded.
//   - Spend deltas are added, never overwritten; spend never goes negative (the Update fails).
//   - The journal seq is allocated under a lock held until commit (the counter row), so
//     commit order equals seq order: when JournalNext returns n, every entry below n is
//     committed and readable.
//   - A ledger entry is inserted once: Writes.Entries with a key already present fails the
//     Update (SQL: the round is retried and the caller sees the entry), except a refund's
//     replacement, which names the key in Writes.Replace.
package ledger

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Errors.
var (
	// ErrFenced: the Update carried a partition epoch that a later Claim superseded.
	ErrFenced = errors.New("ledger: partition fenced by a newer owner")
	// ErrClosed: the store is closed.
	ErrClosed = errors.New("ledger: closed")
	// ErrCorrupt: a stored record does not decode.
	ErrCorrupt = errors.New("ledger: corrupt record")
	// ErrInvalid: Writes that break the contract (negative spend, a duplicate entry, ...).
	ErrInvalid = errors.New("ledger: invalid write")
)

// FencedError names the partitions whose epoch was stale. errors.Is(err, ErrFenced) holds.
type FencedError struct {
	Partitions []int32
}

func (e *FencedError) Error() string {
	s := make([]string, len(e.Partitions))
	for i, p := range e.Partitions {
		s[i] = fmt.Sprint(p)
	}
	return "ledger: partitions " + strings.Join(s, ",") + " fenced by a newer owner"
}

// Is makes errors.Is(err, ErrFenced) true.
func (e *FencedError) Is(target error) bool { return target == ErrFenced }

// Ledger entry states.
const (
	StateCharged  = 1 // charged (ChargedMicros may be 0: a zero-charge click is still recorded)
	StateRefunded = 2 // credited back; ChargedMicros keeps what was charged
)

// Entry is one valid click as charged, keyed by its idempotency key (event.Key).
type Entry struct {
	Key           string
	State         uint8
	Reason        uint8 // billing's reason code for a charge below the price
	ChargedMicros int64
	PriceMicros   int64
	Time          int64  // event time, Unix micros
	Day           uint32 // the budget day's label: its local date, days since 1970-01-01
	DayStart      int64  // the budget day's start, Unix seconds (0 in legacy entries)
	RefundedAt    int64  // Unix micros; 0 unless refunded
	Partition     int32
	Offset        int64
	CampaignID    string
	AdID          string
	AdvertiserID  string
}

// SpendKey names a campaign's spend on the budget day that starts at DayStart (Unix seconds).
type SpendKey struct {
	Campaign string
	DayStart int64
}

// CompareSpendKeys is the one order spend rows are locked in.
func CompareSpendKeys(a, b SpendKey) int {
	if c := strings.Compare(a.Campaign, b.Campaign); c != 0 {
		return c
	}
	switch {
	case a.DayStart < b.DayStart:
		return -1
	case a.DayStart > b.DayStart:
		return 1
	}
	return 0
}

// SpendDelta adds Micros (negative for a refund) to a campaign's day and its total.
type SpendDelta struct {
	SpendKey
	Micros int64
}

// ViewKey names one user's count of one catalog id on one UTC day (days since 1970-01-01).
type ViewKey struct {
	Day       uint32
	UserID    string
	CatalogID string
}

// ViewCount is a committed count.
type ViewCount struct {
	ViewKey
	Count int64
}

// Offset is the next offset to consume of a partition, committed under its owner's epoch.
type Offset struct {
	Partition int32
	Epoch     int64
	Next      int64
}

// Claim is what Store.Claim returns for one partition.
type Claim struct {
	Partition int32
	Epoch     int64 // the new epoch: Offsets committed with an older one are fenced
	Next      int64 // the committed next offset; meaningful when Committed
	Committed bool  // false if no offset was ever committed for the partition
}

// Writes are the changes of one Update.
type Writes struct {
	// Offsets are fenced: every one must carry its partition's current epoch.
	Offsets []Offset
	// Entries are new ledger entries; Replace are entries that exist (a refund).
	Entries []Entry
	Replace []Entry
	Spend   []SpendDelta
	// Views are added to the stored counts; Update returns the committed totals.
	Views []ViewCount
	// ExpireViewsBefore, if not 0, deletes the views of the days before it.
	ExpireViewsBefore uint32
	// Journal, if not nil, is written as the next journal entry (seq = JournalNext).
	Journal []byte
	// Known are campaign ids seen in the log (added; repeats are fine).
	Known []string
	// Meta are named values to set.
	Meta map[string][]byte
}

func (w *Writes) empty() bool {
	return len(w.Offsets) == 0 && len(w.Entries) == 0 && len(w.Replace) == 0 && len(w.Spend) == 0 &&
		len(w.Views) == 0 && w.ExpireViewsBefore == 0 && w.Journal == nil && len(w.Known) == 0 && len(w.Meta) == 0
}

// Result is what an Update committed.
type Result struct {
	JournalSeq uint64 // the seq of Writes.Journal, when it was set
	// Views are the committed totals of the counts Writes.Views changed.
	Views []ViewCount
	// Attempts is how many times the function ran (more than 1 after retried conflicts).
	Attempts int
}

// Tx is the read side of one Update.
type Tx interface {
	// Entries returns the ledger entries present among keys, by key. With lock, they stay
	// locked until commit (a refund).
	Entries(ctx context.Context, keys []string, lock bool) (map[string]Entry, error)
	// LockSpend reads the spend of days and the total spend of their campaigns, and locks
	// them until commit. A row never written reads 0.
	LockSpend(ctx context.Context, days []SpendKey) (day map[SpendKey]int64, total map[string]int64, err error)
}

// Store is the billing storage. Its methods are safe for concurrent use.
type Store interface {
	// Claim makes the caller the owner of partitions: it bumps each one's epoch (fencing the
	// previous owner's later Updates) and returns the new epochs and committed offsets.
	Claim(ctx context.Context, partitions []int32) ([]Claim, error)
	// Update runs fn in one transaction and commits the Writes it returns (nil: nothing).
	Update(ctx context.Context, fn func(ctx context.Context, tx Tx) (*Writes, error)) (Result, error)

	// Entries returns the committed ledger entries among keys.
	Entries(ctx context.Context, keys []string) (map[string]Entry, error)
	// Spend returns the committed spend of days and the totals of their campaigns.
	Spend(ctx context.Context, days []SpendKey) (map[SpendKey]int64, map[string]int64, error)
	// Views returns userID's counts on day, by catalog id.
	Views(ctx context.Context, day uint32, userID string) (map[string]int64, error)
	// ScanViews calls fn with every count of day, by user then catalog id.
	ScanViews(ctx context.Context, day uint32, fn func(ViewCount) error) error

	// JournalNext is the seq the next journal entry gets; every entry below it is committed.
	JournalNext(ctx context.Context) (uint64, error)
	// FirstJournal is the oldest retained entry's seq (JournalNext if none is retained).
	FirstJournal(ctx context.Context) (uint64, error)
	// Journal calls fn with the retained entries of [from, to) in seq order.
	Journal(ctx context.Context, from, to uint64, fn func(seq uint64, entry []byte) error) error
	// DropJournal deletes the entries below seq (they are in the metric store).
	DropJournal(ctx context.Context, below uint64) error

	// Known lists the campaigns seen in the log.
	Known(ctx context.Context) ([]string, error)
	// Meta returns a named value.
	Meta(ctx context.Context, name string) ([]byte, bool, error)

	// ScanLedger and ScanSpend read everything, for audits and tests.
	ScanLedger(ctx context.Context, fn func(Entry) error) error
	ScanSpend(ctx context.Context, day func(SpendKey, int64) error, total func(string, int64) error) error

	Close() error
}

// sortedSpendKeys returns days sorted and without repeats, and their campaigns sorted.
func sortedSpendKeys(days []SpendKey) ([]SpendKey, []string) {
	d := slices.Clone(days)
	slices.SortFunc(d, CompareSpendKeys)
	d = slices.Compact(d)
	camps := make([]string, 0, len(d))
	for _, k := range d {
		camps = append(camps, k.Campaign)
	}
	return d, slices.Compact(camps)
}

// checkWrites rejects Writes that no store may commit.
func checkWrites(w *Writes) error {
	seen := make(map[int32]bool, len(w.Offsets))
	for _, o := range w.Offsets {
		if seen[o.Partition] || o.Partition < 0 || o.Next < 0 {
			return fmt.Errorf("%w: offset %+v", ErrInvalid, o)
		}
		seen[o.Partition] = true
	}
	keys := make(map[string]bool, len(w.Entries))
	for _, e := range append(slices.Clip(w.Entries), w.Replace...) {
		if e.Key == "" || keys[e.Key] || (e.State != StateCharged && e.State != StateRefunded) || e.ChargedMicros < 0 {
			return fmt.Errorf("%w: ledger entry %q", ErrInvalid, e.Key)
		}
		keys[e.Key] = true
	}
	return nil
}
