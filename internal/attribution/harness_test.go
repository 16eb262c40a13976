package attribution

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/eventlog/eventlogtest"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/metricstore/pebblestore"
	"github.com/cockroachdb/pebble/vfs"
)

// errInjected is a simulated failure.
var errInjected = errors.New("injected failure")

// faultyStore fails Apply on demand: before the store sees it, or after it committed (the
// caller then hears an error for a commit that went in).
type faultyStore struct {
	metricstore.Store
	mu                    sync.Mutex
	rng                   *rand.Rand
	failBefore, failAfter float64
}

func (f *faultyStore) Apply(ctx context.Context, c *metricstore.Commit) error {
	f.mu.Lock()
	before, after := f.rng != nil && f.rng.Float64() < f.failBefore, f.rng != nil && f.rng.Float64() < f.failAfter
	f.mu.Unlock()
	if before {
		return errInjected
	}
	if err := f.Store.Apply(ctx, c); err != nil {
		return err
	}
	if after {
		return errInjected
	}
	return nil
}

// testClock is the append clock of the in-memory log.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// harness is a stage with its metric store on a strict in-memory file system, so that a
// crash (dropping everything not synced) can be simulated.
type harness struct {
	t     testing.TB
	fs    *vfs.MemFS
	log   *eventlogtest.MemLog
	clock *testClock
	store *pebblestore.Store
	ms    *faultyStore
	s     *Stage
	opts  Options
}

func newHarness(t testing.TB, partitions int, start time.Time, o Options) *harness {
	h := &harness{t: t, fs: vfs.NewStrictMem(), clock: &testClock{t: start}, ms: &faultyStore{}}
	h.log = eventlogtest.NewMemLog(partitions, h.clock.Now)
	o.Dir, o.Log, o.FS = "attribution", h.log, h.fs
	h.opts = o
	h.open()
	t.Cleanup(func() {
		if h.s != nil {
			h.s.Close()
		}
		if h.store != nil {
			h.store.Close()
		}
	})
	return h
}

func (h *harness) open() {
	h.t.Helper()
	var err error
	h.store, err = pebblestore.Open("metrics", pebblestore.Options{FS: h.fs, MinuteRetention: -1, HourRetention: -1})
	if err != nil {
		h.t.Fatalf("open metric store: %v", err)
	}
	h.ms.Store = h.store
	o := h.opts
	o.Metrics = h.ms
	h.s, err = Open(context.Background(), o)
	if err != nil {
		h.t.Fatalf("open attribution: %v", err)
	}
}

// crash drops whatever the stage and the metric store did not sync, and reopens both.
func (h *harness) crash() {
	h.t.Helper()
	h.fs.SetIgnoreSyncs(true)
	h.s.Close()
	h.store.Close()
	h.fs.ResetToSyncedState()
	h.fs.SetIgnoreSyncs(false)
	h.open()
}

// append appends events to their partitions (by ad id, conversions by user id, as ingest
// does) one message each, advancing the clock a millisecond per message.
func (h *harness) append(evs ...event.Event) {
	h.t.Helper()
	for i := range evs {
		key := evs[i].AdID
		if evs[i].Type == event.TypeConversion {
			key = evs[i].UserID
		}
		p := int32(hashString(key) % uint64(h.log.Partitions()))
		msg := eventlog.Message{Partition: p, Value: evs[i].AppendBinary(nil)}
		if err := h.log.Append(context.Background(), []eventlog.Message{msg}); err != nil {
			h.t.Fatal(err)
		}
		h.clock.Advance(time.Millisecond)
	}
}

func hashString(s string) uint64 {
	var x uint64 = 14695981039346656037
	for i := 0; i < len(s); i++ {
		x = (x ^ uint64(s[i])) * 1099511628211
	}
	return x
}

// step runs one round and one publish without Run; a failure (an injected one) is a crash.
// It reports whether the round processed anything.
func (h *harness) step() bool {
	h.t.Helper()
	ctx := context.Background()
	n, err := h.s.round(ctx)
	if err != nil {
		if !errors.Is(err, errInjected) {
			h.t.Fatalf("round: %v", err)
		}
		h.crash()
		return true
	}
	if err := h.s.publish(ctx); err != nil {
		if !errors.Is(err, errInjected) {
			h.t.Fatalf("publish: %v", err)
		}
		h.crash()
		return true
	}
	return n > 0
}

// sync consumes everything in the log and publishes the journal (with no faults).
func (h *harness) sync() {
	h.t.Helper()
	for h.step() {
	}
	if h.s.applied != h.s.journalNext {
		h.t.Fatalf("journal not applied: %d of %d", h.s.applied, h.s.journalNext)
	}
}

// totals returns the conversion counts of ids at a level over [from, to).
func (h *harness) totals(level metricstore.Level, from, to time.Time, ids ...string) map[string]metricstore.Counts {
	h.t.Helper()
	res, err := h.store.Query(context.Background(), metricstore.Query{Level: level, IDs: ids, Start: from, End: to, Interval: to.Sub(from).Truncate(time.Minute) + time.Minute})
	if err != nil {
		h.t.Fatalf("query: %v", err)
	}
	out := make(map[string]metricstore.Counts)
	for _, s := range res.Series {
		var c metricstore.Counts
		for _, p := range s.Points {
			c.Add(&p.Counts)
		}
		out[s.ID] = conversionsOnly(c)
	}
	return out
}

func conversionsOnly(c metricstore.Counts) metricstore.Counts {
	return metricstore.Counts{Conversions: c.Conversions, ConversionValueMicros: c.ConversionValueMicros,
		ViewConversions: c.ViewConversions, ViewConversionValueMicros: c.ViewConversionValueMicros}
}
