package server

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/metricstore/pebblestore"
	"github.com/adpulse/adpulse/internal/query/topn"
	"github.com/cockroachdb/pebble/vfs"
)

type fixedOwners struct{}

func (fixedOwners) AdCampaign(string) (string, bool)         { return "c1", true }
func (fixedOwners) AdAdvertiser(string) (string, bool)       { return "adv1", true }
func (fixedOwners) CampaignAdvertiser(string) (string, bool) { return "adv1", true }

// heldScanner reads its snapshot of the store when the rebuild starts and hands it over only
// once released: a commit landing meanwhile is not in the snapshot.
type heldScanner struct {
	src     topn.MinuteScanner
	release chan struct{}
}

func (h heldScanner) ScanMinutes(ctx context.Context, from, to int64, fn func(d *metricstore.Delta) error) error {
	var ds []metricstore.Delta
	if err := h.src.ScanMinutes(ctx, from, to, func(d *metricstore.Delta) error {
		c := *d
		c.ID = string([]byte(d.ID))
		ds = append(ds, c)
		return nil
	}); err != nil {
		return err
	}
	<-h.release
	for i := range ds {
		if err := fn(&ds[i]); err != nil {
			return err
		}
	}
	return nil
}

// loadingFixture is a metric store holding 5 clicks of ad1 from a previous run, and a top-N
// index whose rebuild from it has started and is held until held.release is closed.
type loadingFixture struct {
	ctx    context.Context
	minute int64
	store  *pebblestore.Store
	tl     *topLoad
	held   heldScanner
}

func newLoadingFixture(t *testing.T) *loadingFixture {
	t.Helper()
	store, err := pebblestore.Open("m", pebblestore.Options{FS: vfs.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	f := &loadingFixture{ctx: ctx, minute: time.Now().Unix()/60 - 1, store: store}
	if err := f.commit(store, 0, 5); err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.tl = newTopLoad(topn.New(topn.Options{Owners: fixedOwners{}, Now: time.Now, Logger: logger}))
	f.held = heldScanner{src: store, release: make(chan struct{})}
	go func() { _ = f.tl.run(ctx, f.held, logger) }()
	return f
}

func (f *loadingFixture) clicks(n int64) []metricstore.Delta {
	return []metricstore.Delta{{Level: metricstore.LevelAd, ID: "ad1", Minute: f.minute, Counts: metricstore.Counts{Clicks: n}}}
}

// commit commits n clicks of ad1 covering offset from of partition 0 through s.
func (f *loadingFixture) commit(s metricstore.Store, from int64, n int64) error {
	return s.Apply(f.ctx, &metricstore.Commit{Consumer: "aggregate", Ranges: []metricstore.OffsetRange{{Partition: 0, From: from, To: from + 1}},
		Deltas: f.clicks(n)})
}

func (f *loadingFixture) top(ctx context.Context) ([]topn.Item, error) {
	return f.tl.Top(ctx, topn.Query{Level: metricstore.LevelAd, Metric: topn.Clicks, From: f.minute, To: f.minute + 1, N: 10})
}

// TestTopLoadGatesCommits: while the top-N index is rebuilt after the process is ready, a
// commit of a stage waits, and then reaches the store and the index once; /metrics/top waits
// for the rebuild rather than answer from a half-built index.
func TestTopLoadGatesCommits(t *testing.T) {
	f := newLoadingFixture(t)
	applied := make(chan error, 1)
	go func() { applied <- f.commit(&gatedStore{Store: f.store, top: f.tl}, 1, 3) }()
	qctx, qcancel := context.WithTimeout(f.ctx, 100*time.Millisecond)
	_, qerr := f.top(qctx)
	qcancel()
	if qerr == nil {
		t.Fatal("a top-N query answered before the index was rebuilt")
	}
	select {
	case err := <-applied:
		t.Fatalf("a commit reached the store while the index was being rebuilt (%v)", err)
	default:
	}
	close(f.held.release)
	if err := <-applied; err != nil {
		t.Fatal(err)
	}
	items, err := f.top(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 1 || items[0].Value != 8 {
		t.Fatalf("top after the rebuild: %+v, want ad1 with 8 clicks", items)
	}
}

// TestTopLoadKeepsCountsWhileLoading: the aggregator runs while the index loads. What it
// counts meanwhile reaches the index once the rebuild is done, its commit waits for the
// rebuild and does not reach the index a second time, and what it counts after goes straight
// in.
func TestTopLoadKeepsCountsWhileLoading(t *testing.T) {
	f := newLoadingFixture(t)
	counted := f.clicks(3)
	f.tl.count(counted)
	counted[0].Clicks = 1000 // OnCount's caller reuses its slice
	applied := make(chan error, 1)
	go func() { applied <- f.commit(&gatedStore{Store: f.store, top: f.tl, counted: true}, 1, 3) }()
	select {
	case err := <-applied:
		t.Fatalf("the aggregator's commit reached the store while the index was being rebuilt (%v)", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(f.held.release)
	if err := <-applied; err != nil {
		t.Fatal(err)
	}
	f.tl.count(f.clicks(2)) // counted after the load, not yet committed
	items, err := f.top(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 1 || items[0].Value != 10 {
		t.Fatalf("top after the rebuild: %+v, want ad1 with 10 clicks (5 stored before, 3 counted while loading, 2 after)", items)
	}
}
