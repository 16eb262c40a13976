package metricstore

// Reconciled marks. A reconciliation recomputes an hour's buckets from the raw archive,
// writes the corrections, and marks the hour in the same commit (Commit.ReconciledHours). A
// mark means "impressions, clicks, invalid clicks and interactions of every bucket in this
// hour were confirmed"; spend is the ledger's and is not part of it. Any later commit that
// changes one of those counters in the hour (a late event past finality, a correction from
// elsewhere) removes the mark, so a point never claims a confirmation its counts no longer
// have. Every implementation keeps the marks with the same rules, through these helpers.

// MinutesPerHour is the width of a mark.
const MinutesPerHour = 60

// HourOf is the UTC hour (since the Unix epoch) of a minute.
func HourOf(minute int64) int64 { return floorDiv(minute, MinutesPerHour) }

// ChangesReconciled reports whether d changes a counter a mark vouches for: anything but
// spend.
func ChangesReconciled(d *Delta) bool {
	c := d.Counts
	c.SpendMicros = 0
	return !c.IsZero()
}

// UnmarkedHours returns the hours whose marks commit c removes: those where a delta changes
// a vouched counter, except the hours c marks itself. Sorted is not promised; no repeats.
func UnmarkedHours(c *Commit) []int64 {
	var out []int64
	seen := map[int64]bool{}
	for _, h := range c.ReconciledHours {
		seen[h] = true
	}
	for i := range c.Deltas {
		d := &c.Deltas[i]
		if h := HourOf(d.Minute); !seen[h] && ChangesReconciled(d) {
			seen[h] = true
			out = append(out, h)
		}
	}
	return out
}

// FillReconciled sets Reconciled of points from bucket boundaries b (as returned by
// Buckets): a point is reconciled when every hour it overlaps is marked.
func FillReconciled(points []Point, b []int64, marked func(hour int64) bool) {
	for i := range points {
		ok := true
		for h := HourOf(b[i]); ok && h*MinutesPerHour < b[i+1]; h++ {
			ok = marked(h)
		}
		points[i].Reconciled = ok
	}
}
