package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/query/topn"
)

// topLoad rebuilds the embedded top-N index after the process is ready instead of before:
// the rebuild reads every retained minute of the metric store (seconds with millions of
// ads), and nothing that takes clicks depends on it.
//
// Exactness is kept by a gate. Until the rebuild is done, every commit of the stages that
// write the metric store waits before it reaches the store (gatedStore.Apply), so the
// rebuild's scan sees a store that does not move and every later commit reaches the index
// once, through Add, in commit order. /metrics/top waits for the rebuild within its own
// deadline (an answer from a half-built index would be wrong, not late).
//
// The aggregator, which feeds the index as it counts (count), starts at once rather than after
// the rebuild: its commits wait at the gate like every stage's, and what it counts meanwhile
// is kept and added to the index when the rebuild is done. So /metrics, which adds the
// aggregator's pending counts, is fresh as soon as the process is ready, however long the
// rebuild takes, and the index still holds each count once: the rebuild's scan has the store
// as the previous run left it, the kept counts everything since.
type topLoad struct {
	ix     *topn.Index
	done   chan struct{} // closed when the rebuild has finished, however it ended
	loaded atomic.Bool   // the rebuild succeeded: the index may be read and fed

	mu      sync.Mutex
	settled bool                // the rebuild has finished and early was added
	early   []metricstore.Delta // counted before the rebuild finished, in the order counted
}

func newTopLoad(ix *topn.Index) *topLoad { return &topLoad{ix: ix, done: make(chan struct{})} }

// run rebuilds the index from src, opens the gate, then maintains the index until ctx ends.
func (t *topLoad) run(ctx context.Context, src topn.MinuteScanner, logger *slog.Logger) error {
	t0 := time.Now()
	err := t.ix.Rebuild(ctx, src)
	t.loaded.Store(err == nil)
	t.mu.Lock()
	if err == nil && len(t.early) > 0 {
		t.ix.Add(t.early)
	}
	t.early, t.settled = nil, true
	t.mu.Unlock()
	close(t.done)
	if err != nil {
		return fmt.Errorf("rebuild top-N index: %w", err)
	}
	logger.Info("top-N index rebuilt from the metric store", "took", time.Since(t0).Round(time.Millisecond))
	return t.ix.Run(ctx)
}

// count is the aggregator's OnCount: it adds ds to the index, or keeps them until the
// rebuild is done.
func (t *topLoad) count(ds []metricstore.Delta) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case !t.settled:
		t.early = append(t.early, ds...) // OnCount's slice is reused: copy the deltas
	case t.loaded.Load():
		t.ix.Add(ds)
	}
}

// wait returns once the rebuild has finished (true if it succeeded) or ctx has ended.
func (t *topLoad) wait(ctx context.Context) (bool, error) {
	select {
	case <-t.done:
		return t.loaded.Load(), nil
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

// Top implements query.TopIndex.
func (t *topLoad) Top(ctx context.Context, q topn.Query) ([]topn.Item, error) {
	ok, err := t.wait(ctx)
	if err != nil {
		return nil, fmt.Errorf("top-N index still loading: %w", err)
	}
	if !ok {
		return nil, errors.New("top-N index: rebuild failed")
	}
	return t.ix.Top(ctx, q)
}

// gatedStore is the metric store as the stages see it while the top-N index loads: a commit
// waits for the rebuild, then reaches the store and, once it is applied, the index.
type gatedStore struct {
	metricstore.Store
	top *topLoad
	// counted: the writer feeds the index as it counts (topLoad.count), so its commits only
	// wait for the rebuild and do not reach the index again.
	counted bool
}

func (g *gatedStore) Apply(ctx context.Context, c *metricstore.Commit) error {
	loaded, err := g.top.wait(ctx)
	if err != nil {
		return err
	}
	if err := g.Store.Apply(ctx, c); err != nil {
		return err
	}
	if loaded && !g.counted {
		g.top.ix.Add(c.Deltas)
	}
	return nil
}
