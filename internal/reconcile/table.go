package reconcile

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/metricstore"
)

// WriteTable prints the differences, one line per counter that differs, then a summary.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	if len(r.Diffs) > 0 {
		fmt.Fprintln(tw, "LEVEL\tID\tMINUTE\tCOUNTER\tSTORE\tARCHIVE\tDIFF\t")
	}
	for _, d := range r.Diffs {
		for _, c := range counters(&d.Store, &d.Archive) {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%+d\t\n", d.Level, d.ID,
				time.Unix(d.Minute*60, 0).UTC().Format("2006-01-02T15:04Z"), c.name, c.store, c.archive, c.archive-c.store)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "reconciled %s to %s: %d buckets compared, %d differ; %d archive files, %d rows, %d events counted, %d duplicates dropped, %d offsets missing; repaired %d in %d commits; took %v\n",
		r.From.Format(time.RFC3339), r.To.Format(time.RFC3339), r.Buckets, len(r.Diffs), r.Files, r.Rows, r.Counted, r.Duplicates, r.Gaps,
		r.Repaired, r.Commits, r.Took.Round(time.Millisecond))
	return err
}

type counterDiff struct {
	name           string
	store, archive int64
}

// counters lists the counters where s and a differ, spend aside.
func counters(s, a *metricstore.Counts) []counterDiff {
	var out []counterDiff
	add := func(name string, sv, av int64) {
		if sv != av {
			out = append(out, counterDiff{name, sv, av})
		}
	}
	add("impressions", s.Impressions, a.Impressions)
	add("clicks", s.Clicks, a.Clicks)
	add("invalid_clicks", s.InvalidClicks, a.InvalidClicks)
	reasons := map[event.Reason]bool{}
	for r := range s.InvalidByReason {
		reasons[r] = true
	}
	for r := range a.InvalidByReason {
		reasons[r] = true
	}
	for _, r := range slices.Sorted(maps.Keys(reasons)) {
		add("invalid."+r.String(), s.InvalidByReason[r], a.InvalidByReason[r])
	}
	names := map[string]bool{}
	for n := range s.Interactions {
		names[n] = true
	}
	for n := range a.Interactions {
		names[n] = true
	}
	for _, n := range slices.Sorted(maps.Keys(names)) {
		add("interaction."+strconv.Quote(n)[1:len(strconv.Quote(n))-1], s.Interactions[n], a.Interactions[n])
	}
	return out
}
