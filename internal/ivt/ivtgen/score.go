package ivtgen

import (
	"fmt"
	"slices"
	"strings"

	"github.com/adpulse/adpulse/internal/event"
)

// Report is how well verdicts on the clicks of generated traffic match their labels.
type Report struct {
	Clicks int
	// ByReason: per rule (reason), the clicks it flagged and how many of them were invalid
	// traffic indeed.
	ByReason map[event.Reason]*RuleScore
	// ByLabel: per label, its clicks and how many were flagged by any rule.
	ByLabel map[Label]*LabelScore
	// Precision: flagged clicks that were invalid traffic; Recall: invalid-traffic clicks
	// flagged. Both 1 when there is nothing to measure.
	Precision, Recall float64
}

// RuleScore is one rule's record.
type RuleScore struct {
	Flagged, Correct int
	Precision        float64
}

// LabelScore is one label's record.
type LabelScore struct {
	Clicks, Flagged int
	Rate            float64 // Flagged/Clicks: recall for invalid traffic, false positive rate for Human
}

// Score compares verdicts with labels: reasons[i] is the verdict on clicks[i] (ReasonNone:
// judged valid). Events other than clicks are ignored.
func Score(clicks []Event, reasons []event.Reason) Report {
	rep := Report{ByReason: map[event.Reason]*RuleScore{}, ByLabel: map[Label]*LabelScore{}}
	for _, l := range Labels {
		rep.ByLabel[l] = &LabelScore{}
	}
	var flagged, correct, bad, caught int
	for i := range clicks {
		c := &clicks[i]
		if c.Type != event.TypeClick {
			continue
		}
		rep.Clicks++
		ls := rep.ByLabel[c.Label]
		ls.Clicks++
		invalid := c.Label != Human
		if invalid {
			bad++
		}
		r := reasons[i]
		if r == event.ReasonNone {
			continue
		}
		ls.Flagged++
		rs := rep.ByReason[r]
		if rs == nil {
			rs = &RuleScore{}
			rep.ByReason[r] = rs
		}
		rs.Flagged++
		flagged++
		if invalid {
			rs.Correct++
			correct++
			caught++
		}
	}
	ratio := func(a, b int) float64 {
		if b == 0 {
			return 1
		}
		return float64(a) / float64(b)
	}
	for _, rs := range rep.ByReason {
		rs.Precision = ratio(rs.Correct, rs.Flagged)
	}
	for _, ls := range rep.ByLabel {
		ls.Rate = ratio(ls.Flagged, ls.Clicks)
	}
	rep.Precision, rep.Recall = ratio(correct, flagged), ratio(caught, bad)
	return rep
}

func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d clicks: precision %.4f, recall %.4f\n", r.Clicks, r.Precision, r.Recall)
	reasons := make([]event.Reason, 0, len(r.ByReason))
	for k := range r.ByReason {
		reasons = append(reasons, k)
	}
	slices.Sort(reasons)
	for _, k := range reasons {
		s := r.ByReason[k]
		fmt.Fprintf(&b, "  rule %-15s flagged %6d  precision %.4f\n", k, s.Flagged, s.Precision)
	}
	for _, l := range Labels {
		s := r.ByLabel[l]
		what := "recall"
		if l == Human {
			what = "false positive rate"
		}
		fmt.Fprintf(&b, "  %-15s clicks %6d  flagged %6d  %s %.4f\n", l, s.Clicks, s.Flagged, what, s.Rate)
	}
	return b.String()
}
