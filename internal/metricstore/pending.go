package metricstore

import "context"

// Counts a writer holds but has not committed yet. The embedded aggregator counts an event
// the moment the log makes it readable and commits every CommitInterval; queries add what it
// holds to what the store holds, so an acknowledged event is visible within milliseconds
// while commits stay as large and as rare as durability and efficiency want.
//
// Exactness rests on offsets: every pending part says which log offsets it was counted from
// (a commit of its writer covers all of a part or none of it), and a Query that sets
// OffsetsOf gets that writer's committed offsets as of the very snapshot it read. A part is
// added only if the snapshot does not hold it yet, so an event is counted once whether the
// commit landed before, during or after the query. Queries read the pending parts first and
// the store second: a commit landing in between moves a part from pending to the snapshot,
// never out of both.

// PendingReader is a writer whose uncommitted counts queries can read (aggregate.Aggregator).
type PendingReader interface {
	// PendingConsumer is the consumer name the writer commits under: the one whose offsets
	// tell pending parts from committed ones (Query.OffsetsOf).
	PendingConsumer() string
	// CatchUp waits, until ctx is done, for the writer to have counted what its source held
	// when CatchUp was called, so a query sees what was acknowledged before it started.
	CatchUp(ctx context.Context) error
	// Pending returns the writer's uncommitted counts for the ids of q at q.Level in the
	// buckets b (q.Buckets()). Each cell names its series by position in q.IDs (a repeated
	// id gets cells at each position) and its bucket by index in b.
	Pending(q *Query, b []int64) []PendingPart
}

// PendingPart is counts a writer will commit in one Commit (or has just committed).
type PendingPart struct {
	// Ranges are the offsets the part was counted from, each non-empty. The part is in a
	// snapshot as soon as the snapshot's offset of any of these partitions is past From.
	Ranges []OffsetRange
	Cells  []PendingCell
}

// PendingCell is one series' bucket of a pending part.
type PendingCell struct {
	Series, Bucket int
	Counts
}

// Committed reports whether p is already in a snapshot whose offsets of p's writer are
// offsets.
func (p *PendingPart) Committed(offsets map[int32]int64) bool {
	for _, r := range p.Ranges {
		if o, ok := offsets[r.Partition]; ok && o > r.From {
			return true
		}
	}
	return false
}

// AddPending adds to res the parts its snapshot does not hold yet (res.Offsets must come from
// a Query with OffsetsOf set to the parts' writer; without it nothing is added, since nothing
// tells them apart). A point that gets pending counts is neither final nor reconciled: both
// describe the committed state, which is about to change. It reports how many parts it added.
func (res *Result) AddPending(parts []PendingPart) int {
	if res.Offsets == nil {
		return 0
	}
	n := 0
	for i := range parts {
		p := &parts[i]
		if p.Committed(res.Offsets) {
			continue
		}
		n++
		for j := range p.Cells {
			c := &p.Cells[j]
			if c.Series < 0 || c.Series >= len(res.Series) || c.Bucket < 0 || c.Bucket >= len(res.Series[c.Series].Points) {
				continue
			}
			pt := &res.Series[c.Series].Points[c.Bucket]
			pt.Counts.Add(&c.Counts)
			pt.Final, pt.Reconciled = false, false
		}
	}
	return n
}
