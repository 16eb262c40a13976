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

// TestTopLoadGatesCommits: while the top-N index is rebuilt after the process is ready, a
// commit of a stage waits, and then reaches the store and the index once; /metrics/top waits
// for the rebuild rather than answer from a half-built index.
func TestTopLoadGatesCommits(t *testing.T) {
	now := time.Now()
	minute := now.Unix()/60 - 1
	store, err := pebblestore.Open("m", pebblestore.Options{FS: vfs.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	commit := func(s metricstore.Store, from int64, clicks int64) error {
		return s.Apply(ctx, &metricstore.Commit{Consumer: "aggregate", Ranges: []metricstore.OffsetRange{{Partition: 0, From: from, To: from + 1}},
			Deltas: []metricstore.Delta{{Level: metricstore.LevelAd, ID: "ad1", Minute: minute, Counts: metricstore.Counts{Clicks: clicks}}}})
	}
	if err := commit(store, 0, 5); err != nil {
		t.Fatal(err)
	}
	ix := topn.New(topn.Options{Owners: fixedOwners{}, Now: time.Now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	tl := newTopLoad(ix)
	held := heldScanner{src: store, release: make(chan struct{})}
	go func() { _ = tl.run(ctx, held, slog.New(slog.NewTextHandler(io.Discard, nil))) }()

	applied := make(chan error, 1)
	go func() { applied <- commit(&gatedStore{Store: store, top: tl}, 1, 3) }()
	qctx, qcancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, qerr := tl.Top(qctx, topn.Query{Level: metricstore.LevelAd, Metric: topn.Clicks, From: minute, To: minute + 1, N: 10})
	qcancel()
	if qerr == nil {
		t.Fatal("a top-N query answered before the index was rebuilt")
	}
	select {
	case err := <-applied:
		t.Fatalf("a commit reached the store while the index was being rebuilt (%v)", err)
	default:
	}
	close(held.release)
	if err := <-applied; err != nil {
		t.Fatal(err)
	}
	items, err := tl.Top(ctx, topn.Query{Level: metricstore.LevelAd, Metric: topn.Clicks, From: minute, To: minute + 1, N: 10})
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
	now := time.Now()
	minute := now.Unix()/60 - 1
	store, err := pebblestore.Open("m", pebblestore.Options{FS: vfs.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clicks := func(n int64) []metricstore.Delta {
		return []metricstore.Delta{{Level: metricstore.LevelAd, ID: "ad1", Minute: minute, Counts: metricstore.Counts{Clicks: n}}}
	}
	commit := func(s metricstore.Store, from int64, n int64) error {
		return s.Apply(ctx, &metricstore.Commit{Consumer: "aggregate", Ranges: []metricstore.OffsetRange{{Partition: 0, From: from, To: from + 1}},
			Deltas: clicks(n)})
	}
	if err := commit(store, 0, 5); err != nil { // the previous run's
		t.Fatal(err)
	}
	ix := topn.New(topn.Options{Owners: fixedOwners{}, Now: time.Now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	tl := newTopLoad(ix)
	held := heldScanner{src: store, release: make(chan struct{})}
	go func() { _ = tl.run(ctx, held, slog.New(slog.NewTextHandler(io.Discard, nil))) }()

	counted := clicks(3)
	tl.count(counted)
	counted[0].Clicks = 1000 // OnCount's caller reuses its slice
	applied := make(chan error, 1)
	go func() { applied <- commit(&gatedStore{Store: store, top: tl, counted: true}, 1, 3) }()
	select {
	case err := <-applied:
		t.Fatalf("the aggregator's commit reached the store while the index was being rebuilt (%v)", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(held.release)
	if err := <-applied; err != nil {
		t.Fatal(err)
	}
	tl.count(clicks(2)) // counted after the load, not yet committed
	items, err := tl.Top(ctx, topn.Query{Level: metricstore.LevelAd, Metric: topn.Clicks, From: minute, To: minute + 1, N: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 1 || items[0].Value != 10 {
		t.Fatalf("top after the rebuild: %+v, want ad1 with 10 clicks (5 stored before, 3 counted while loading, 2 after)", items)
	}
}
