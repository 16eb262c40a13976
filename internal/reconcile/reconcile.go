// Package reconcile recomputes the metric store's buckets from the raw archive, compares,
// and repairs: the batch check behind "each event counts once".
//
// What is compared. Every minute bucket at ad, campaign and advertiser level whose minute
// lies in the checked hours, and every counter of metricstore.Counts except spend:
// impressions, clicks, invalid clicks (total and by reason) and interactions by name. Spend
// is charged against budgets by the ledger (caps, auto-CPC, refunds), which the archive
// cannot tell, so it is neither compared nor repaired, and the reconciled mark does not
// vouch for it.
//
// How the archive is counted. Exactly as the aggregation stage counts the log (package
// aggregate): each partition in offset order through the same duplicate filter
// (dedup.Window over event.Key, fed from DedupSpan + 2*Slack before the first receive time
// that can hold a checked event), then each event in its event-time minute by the same
// rules. So the archive needs the receive hours from (from - MaxClockSkew - DedupSpan -
// 2*Slack) to (to + MaxLateness + Slack); a checked hour is ready once it is final in the
// store and the archive covers that span (Ready).
//
// Invariants:
//   - A report lists every bucket where the store and the archive differ, and only those.
//   - Repair is one fenced metricstore.Apply per chunk under its own consumer (partition 0,
//     one offset per commit): the store values it corrects were read after the consumer's
//     offset, so of two repairs racing, the second fails with ErrConflict, reads again
//     and finds nothing left to correct. A repeated repair changes nothing.
//   - The last commit of a repair marks the checked hours reconciled.
//   - Only hours final in the store are checked: no stage will write them any more, so
//     a correction cannot race with the counts it corrects.
package reconcile

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/adpulse/adpulse/internal/archive"
	"github.com/adpulse/adpulse/internal/metricstore"
)

// DefaultConsumer is the metric store consumer repairs commit under.
const DefaultConsumer = "reconcile"

// Options configure a reconciliation. Archive and Store are required; the durations are
// ingest's and the stream stages' settings (config.Config) and must match what the
// aggregator ran with.
type Options struct {
	Archive archive.Target
	Store   metricstore.Store
	// Scanner, if set, lists the store's stored minutes (see MinuteScanner); by default Store
	// is used if it is one.
	Scanner MinuteScanner
	// Consumer names the repairs' offsets in the store (default "reconcile").
	Consumer string
	// CountedBy is the consumer whose offsets say what the store has counted (default
	// "aggregate"): the archive must hold at least that much, or reach past the span.
	CountedBy string
	// MaxLateness and MaxClockSkew bound event time against receive time (ingest's).
	MaxLateness, MaxClockSkew time.Duration
	// DedupSpan is the stream's duplicate filter span (negative: off); Slack how far
	// receive times run out of order within a partition.
	DedupSpan, Slack time.Duration
	// MaxChunk bounds the deltas of one repair commit (default 50,000).
	MaxChunk int
	// Progress, if set, is called after each archive file read.
	Progress func(filesDone, filesTotal int, rows int64)
	Logger   *slog.Logger
}

func (o *Options) setDefaults() {
	if o.Consumer == "" {
		o.Consumer = DefaultConsumer
	}
	if o.CountedBy == "" {
		o.CountedBy = "aggregate"
	}
	if o.MaxChunk <= 0 {
		o.MaxChunk = 50_000
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Key is one bucket.
type Key struct {
	Level  metricstore.Level
	ID     string
	Minute int64
}

// Diff is a bucket where the store and the archive differ (spend left out of both).
type Diff struct {
	Key
	Store, Archive metricstore.Counts
}

// Report is the outcome of a reconciliation.
type Report struct {
	From, To   time.Time // the checked hours [From, To)
	Files      int       // archive files read
	Rows       int64     // archive rows read
	Counted    int64     // events counted into the checked hours
	Duplicates int64     // rows the duplicate filter dropped (in the whole span read)
	// Gaps are offsets missing between files of a partition within the span read: events
	// the archive lost (the log's retention dropped them first). Counts around them cannot
	// be trusted; a repair is refused.
	Gaps    int64
	Buckets int // distinct buckets compared
	Diffs   []Diff
	// Repaired is how many buckets the repair corrected (0 without repair); Commits how
	// many repair commits it took.
	Repaired, Commits int
	Took              time.Duration
}

// Sentinel errors.
var (
	// ErrNotReady: the hours are not final in the store yet, or the archive does not
	// cover them yet.
	ErrNotReady = errors.New("reconcile: not ready")
	// ErrGaps: the archive misses offsets; nothing is repaired.
	ErrGaps = errors.New("reconcile: the archive has gaps")
)

// MaxRange bounds the hours one Run checks: their buckets, from the archive and the store,
// are held in memory (about 150 bytes each at each level).
const MaxRange = 7 * 24 * time.Hour

// Hours returns [from, to) widened to whole UTC hours.
func Hours(from, to time.Time) (time.Time, time.Time) {
	f := from.UTC().Truncate(time.Hour)
	t := to.UTC().Truncate(time.Hour)
	if t.Before(to) {
		t = t.Add(time.Hour)
	}
	return f, t
}

// Run checks the hours [from, to) (widened to whole hours) and, with repair, corrects the
// store and marks them reconciled. It fails with ErrNotReady when an hour is not final or
// not archived yet.
func Run(ctx context.Context, o Options, from, to time.Time, repair bool) (*Report, error) {
	o.setDefaults()
	start := time.Now()
	from, to = Hours(from, to)
	if !from.Before(to) {
		return nil, fmt.Errorf("reconcile: empty range [%v, %v)", from, to)
	}
	if to.Sub(from) > MaxRange {
		return nil, fmt.Errorf("reconcile: range of %v, at most %v at once (the buckets of the range are held in memory)", to.Sub(from), MaxRange)
	}
	return check(ctx, &o, from, to, repair, nil, start)
}

// check is Run on whole hours, counting the archive with c (nil: a counter of its own).
func check(ctx context.Context, o *Options, from, to time.Time, repair bool, c *counter, start time.Time) (*Report, error) {
	if err := Ready(ctx, *o, from, to); err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		rep, err := runOnce(ctx, o, from, to, repair, c)
		if errors.Is(err, metricstore.ErrConflict) && attempt < 5 {
			o.Logger.Info("reconcile: another repair committed first; comparing again", "err", err)
			continue
		}
		if rep != nil {
			rep.Took = time.Since(start)
		}
		return rep, err
	}
}

// span is the receive-time range of the archive that decides the hours [from, to).
func (o *Options) span(from, to time.Time) (time.Time, time.Time) {
	lo := from.Add(-o.MaxClockSkew - 2*o.Slack)
	if o.DedupSpan > 0 {
		lo = lo.Add(-o.DedupSpan)
	}
	return lo, to.Add(o.MaxLateness + o.Slack)
}

// Ready reports nil when the hours [from, to) are final in the store, still kept at one
// minute, and the archive covers what decides them, and an error wrapping ErrNotReady
// otherwise (metricstore.ErrExpired when the store no longer keeps their minutes).
func Ready(ctx context.Context, o Options, from, to time.Time) error {
	o.setDefaults()
	// The first minute: a repair of minutes past their retention would only reach the
	// coarser buckets, which were never compared.
	res, err := o.Store.Query(ctx, metricstore.Query{Level: metricstore.LevelAd, Start: from, End: from.Add(time.Minute), Interval: time.Minute})
	if err != nil {
		return fmt.Errorf("reconcile: read the store at %v: %w", from, err)
	}
	if res.FinalBefore.IsZero() || res.FinalBefore.Before(to) {
		return fmt.Errorf("%w: the store is final before %v, the range ends %v", ErrNotReady, res.FinalBefore, to)
	}
	// The archive has what decides the hours in a partition if a file of it starts after
	// the span's end (files are written in offset order, and receive times within a
	// partition are out of order by at most Slack), or if it holds every offset the
	// store has counted (nothing else can change final hours).
	_, need := o.span(to, to)
	past := need.Add(o.Slack).Truncate(time.Hour).Add(time.Hour)
	files, err := archive.ListFiles(ctx, o.Archive, past, past.Add(time.Hour))
	if err != nil {
		return err
	}
	beyond := map[int]bool{}
	for _, f := range files {
		beyond[f.Partition] = true
	}
	committed, err := archive.Committed(ctx, o.Archive)
	if err != nil {
		return err
	}
	cp, err := o.Store.Checkpoint(ctx, o.CountedBy)
	if err != nil {
		return fmt.Errorf("reconcile: read %s's offsets: %w", o.CountedBy, err)
	}
	for p, counted := range cp.Offsets {
		if beyond[int(p)] {
			continue
		}
		if c, ok := committed[int(p)]; !ok || c < counted {
			return fmt.Errorf("%w: partition %d is archived up to offset %d, the store counted up to %d, and no file after %v yet",
				ErrNotReady, p, c, counted, need.Format(time.RFC3339))
		}
	}
	return nil
}

// runOnce compares (and repairs) the hours [from, to), counting the archive with c, or with
// a counter of its own when c is nil.
func runOnce(ctx context.Context, o *Options, from, to time.Time, repair bool, c *counter) (*Report, error) {
	rep := &Report{From: from, To: to}
	// The repair's fence: read before the store's values, so a repair committed after this
	// read makes ours fail instead of correcting twice.
	cp, err := o.Store.Checkpoint(ctx, o.Consumer)
	if err != nil {
		return nil, fmt.Errorf("reconcile: read %s's offsets: %w", o.Consumer, err)
	}
	if c == nil {
		c = newCounter(o, from, to)
	}
	want, err := countHours(ctx, c, from, to, rep)
	if err != nil {
		return nil, err
	}
	have, err := readStore(ctx, o, from, to, want)
	if err != nil {
		return nil, err
	}
	keys := make(map[Key]bool, len(want)+len(have))
	for k := range want {
		keys[k] = true
	}
	for k := range have {
		keys[k] = true
	}
	rep.Buckets = len(keys)
	var zero metricstore.Counts
	for _, k := range slices.SortedFunc(maps.Keys(keys), compareKeys) {
		a, s := want[k], have[k]
		if a == nil {
			a = &zero
		}
		if s == nil {
			s = &zero
		}
		if !a.Equal(s) {
			rep.Diffs = append(rep.Diffs, Diff{Key: k, Store: *s, Archive: *a})
		}
	}
	if !repair {
		return rep, nil
	}
	if rep.Gaps > 0 {
		return rep, fmt.Errorf("%w: %d offsets missing; not repairing", ErrGaps, rep.Gaps)
	}
	return rep, commitRepair(ctx, o, cp, rep)
}

// countHours feeds c what decides the hours [from, to) and returns their counts, with what
// the reading did in rep.
func countHours(ctx context.Context, c *counter, from, to time.Time, rep *Report) (map[Key]*metricstore.Counts, error) {
	before := c.stats
	lo, hi := c.o.span(from, to)
	if err := c.feed(ctx, lo, hi); err != nil {
		return nil, err
	}
	rep.Files += c.stats.files - before.files
	rep.Rows += c.stats.rows - before.rows
	rep.Duplicates += c.stats.dup - before.dup
	rep.Gaps = c.gapsIn(from, to)
	want := c.take(from, to)
	rep.Counted = 0
	for k, n := range want {
		if k.Level == metricstore.LevelAd {
			rep.Counted += n.Impressions + n.Clicks + n.InvalidClicks
			for _, v := range n.Interactions {
				rep.Counted += v
			}
		}
	}
	return want, nil
}

func compareKeys(a, b Key) int {
	return cmp.Or(cmp.Compare(a.Level, b.Level), cmp.Compare(a.ID, b.ID), cmp.Compare(a.Minute, b.Minute))
}

// commitRepair writes archive - store for each diff, in chunks, the last one with the marks.
func commitRepair(ctx context.Context, o *Options, cp metricstore.Checkpoint, rep *Report) error {
	next := cp.Offsets[0]
	var hours []int64
	for h := rep.From; h.Before(rep.To); h = h.Add(time.Hour) {
		hours = append(hours, h.Unix()/3600)
	}
	diffs := rep.Diffs
	for {
		n := min(len(diffs), o.MaxChunk)
		c := &metricstore.Commit{Consumer: o.Consumer, Ranges: []metricstore.OffsetRange{{Partition: 0, From: next, To: next + 1}}}
		for _, d := range diffs[:n] {
			c.Deltas = append(c.Deltas, metricstore.Delta{Level: d.Level, ID: d.ID, Minute: d.Minute, Counts: minus(&d.Archive, &d.Store)})
		}
		diffs = diffs[n:]
		if len(diffs) == 0 {
			c.ReconciledHours = hours
		}
		if err := o.Store.Apply(ctx, c); err != nil {
			return fmt.Errorf("reconcile: repair commit: %w", err)
		}
		rep.Repaired += n
		rep.Commits++
		next++
		if len(diffs) == 0 {
			return nil
		}
	}
}

// minus is a - b, spend left out.
func minus(a, b *metricstore.Counts) metricstore.Counts {
	d := metricstore.Counts{Impressions: a.Impressions - b.Impressions, Clicks: a.Clicks - b.Clicks, InvalidClicks: a.InvalidClicks - b.InvalidClicks}
	for r, n := range a.InvalidByReason {
		if v := n - b.InvalidByReason[r]; v != 0 {
			addMap(&d.InvalidByReason, r, v)
		}
	}
	for r, n := range b.InvalidByReason {
		if _, ok := a.InvalidByReason[r]; !ok && n != 0 {
			addMap(&d.InvalidByReason, r, -n)
		}
	}
	for name, n := range a.Interactions {
		if v := n - b.Interactions[name]; v != 0 {
			addMap(&d.Interactions, name, v)
		}
	}
	for name, n := range b.Interactions {
		if _, ok := a.Interactions[name]; !ok && n != 0 {
			addMap(&d.Interactions, name, -n)
		}
	}
	return d
}

func addMap[K comparable](m *map[K]int64, k K, v int64) {
	if *m == nil {
		*m = make(map[K]int64)
	}
	(*m)[k] += v
}

// maxEventMicros is the aggregator's bound on event time (year 2500).
const maxEventMicros = 16725225600 * 1e6

// MinuteScanner is a store that can list every stored minute bucket of a range (pebblestore):
// then buckets the archive does not know at all are compared too.
type MinuteScanner interface {
	ScanMinutes(ctx context.Context, from, to int64, fn func(d *metricstore.Delta) error) error
}

// queryBatch is how many ids one store query asks for.
const queryBatch = 200

// readStore reads the store's minute buckets of [from, to), spend left out: all of them
// from a MinuteScanner, otherwise those of the ids the archive has.
func readStore(ctx context.Context, o *Options, from, to time.Time, want map[Key]*metricstore.Counts) (map[Key]*metricstore.Counts, error) {
	out := make(map[Key]*metricstore.Counts)
	put := func(k Key, c metricstore.Counts) {
		c.SpendMicros = 0
		if c.IsZero() {
			return
		}
		out[k] = &c
	}
	sc := o.Scanner
	if sc == nil {
		sc, _ = o.Store.(MinuteScanner)
	}
	if sc != nil {
		err := sc.ScanMinutes(ctx, from.Unix()/60, to.Unix()/60, func(d *metricstore.Delta) error {
			put(Key{d.Level, d.ID, d.Minute}, d.Counts)
			return nil
		})
		return out, err
	}
	ids := map[metricstore.Level]map[string]bool{}
	for k := range want {
		if ids[k.Level] == nil {
			ids[k.Level] = map[string]bool{}
		}
		ids[k.Level][k.ID] = true
	}
	for _, level := range metricstore.Levels {
		list := slices.Sorted(maps.Keys(ids[level]))
		for len(list) > 0 {
			n := min(len(list), queryBatch)
			for h := from; h.Before(to); h = h.Add(time.Hour) {
				res, err := o.Store.Query(ctx, metricstore.Query{Level: level, IDs: list[:n], Start: h, End: h.Add(time.Hour), Interval: time.Minute})
				if err != nil {
					return nil, fmt.Errorf("reconcile: read the store: %w", err)
				}
				for _, s := range res.Series {
					for _, p := range s.Points {
						put(Key{level, s.ID, p.Time.Unix() / 60}, p.Counts)
					}
				}
			}
			list = list[n:]
		}
	}
	return out, nil
}
