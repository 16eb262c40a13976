package billing

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
)

// readCounter counts the reads of the log.
type readCounter struct {
	eventlog.Log
	reads atomic.Int64
}

func (l *readCounter) Read(ctx context.Context, p int, offset int64, maxBytes int) ([]eventlog.Message, error) {
	l.reads.Add(1)
	return l.Log.Read(ctx, p, offset, maxBytes)
}

// TestOpenReadsNoLog: an embedded Open claims every partition but reads nothing of the log
// (the impression windows are rebuilt by the first round, after the process is ready), so a
// restart does not grow with the log; the serving status is right before that first round,
// and the first round still charges nothing twice.
func TestOpenReadsNoLog(t *testing.T) {
	h := basicSetup(t)
	imp := event.Event{Type: event.TypeImpression, Time: t0.UnixMicro(), RecvTime: t0.UnixMicro(), AdID: "a1", CampaignID: "c1", AdvertiserID: "adv1", ImpressionID: "i1"}
	appendEvents(t, h.log, imp, h.click("i1", "a1", t0, 0), h.click("i2", "a1", t0.Add(time.Second), 0))
	h.sync()
	counter := &readCounter{Log: h.log}
	h.opts.Log = counter
	h.restart()
	if n := counter.reads.Load(); n != 0 {
		t.Fatalf("Open read the log %d times, want 0", n)
	}
	if owned := h.c.Owned(); len(owned) != h.log.Partitions() {
		t.Fatalf("Open owns %v, want all %d partitions", owned, h.log.Partitions())
	}
	if s := h.status("c1"); s.Budget.SpentTodayMicros != 1_000_000 {
		t.Fatalf("spend before the first round %d, want 1000000", s.Budget.SpentTodayMicros)
	}
	appendEvents(t, h.log, imp, h.click("i1", "a1", t0.Add(time.Minute), 0), h.click("i3", "a1", t0.Add(time.Minute), 0))
	h.sync()
	if counter.reads.Load() == 0 {
		t.Fatal("the first round read nothing of the log")
	}
	// i1 again is not charged again; i3 takes what is left of the day (200000).
	if e := h.entry("i1"); e.ChargedMicros != 500_000 {
		t.Errorf("i1 charged %d, want 500000", e.ChargedMicros)
	}
	if s := h.status("c1"); s.Budget.SpentTodayMicros != 1_200_000 {
		t.Errorf("spend %d, want 1200000", s.Budget.SpentTodayMicros)
	}
}
