package query

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
)

// fakeStore is a metricstore.Store in memory: enough of the contract for the handler tests
// (sums per minute, the shared bucket grid, final flags) plus an injectable query error.
type fakeStore struct {
	mu          sync.Mutex
	data        map[fakeKey]*metricstore.Counts
	finalBefore time.Time
	err         error
	queries     []metricstore.Query
}

type fakeKey struct {
	level  metricstore.Level
	id     string
	minute int64
}

func newFakeStore() *fakeStore { return &fakeStore{data: make(map[fakeKey]*metricstore.Counts)} }

func (s *fakeStore) Apply(_ context.Context, c *metricstore.Commit) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range c.Deltas {
		d := &c.Deltas[i]
		k := fakeKey{d.Level, d.ID, d.Minute}
		cur := s.data[k]
		if cur == nil {
			cur = &metricstore.Counts{}
			s.data[k] = cur
		}
		cur.Add(&d.Counts)
	}
	return nil
}

func (s *fakeStore) Checkpoint(context.Context, string) (metricstore.Checkpoint, error) {
	return metricstore.Checkpoint{}, nil
}

func (s *fakeStore) Query(ctx context.Context, q metricstore.Query) (*metricstore.Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queries = append(s.queries, q)
	if s.err != nil {
		return nil, s.err
	}
	b, err := q.Buckets()
	if err != nil {
		return nil, err
	}
	n := len(b) - 1
	res := &metricstore.Result{Start: time.Unix(b[0]*60, 0).UTC(), End: time.Unix(b[n]*60, 0).UTC(), FinalBefore: s.finalBefore}
	for _, id := range q.IDs {
		pts := make([]metricstore.Point, n)
		metricstore.FillTimes(pts, b, s.finalBefore)
		for k, c := range s.data {
			if k.level != q.Level || k.id != id || k.minute < b[0] || k.minute >= b[n] {
				continue
			}
			i := sort.Search(n, func(i int) bool { return b[i+1] > k.minute })
			pts[i].Add(c)
		}
		res.Series = append(res.Series, metricstore.Series{ID: id, Points: pts})
	}
	return res, nil
}

func (s *fakeStore) Close() error { return nil }

// fakeOwners is a catalog: ads in campaigns in advertisers.
type fakeOwners struct {
	adCampaign map[string]string
	campAdv    map[string]string
}

func (o *fakeOwners) AdCampaign(ad string) (string, bool) {
	c, ok := o.adCampaign[ad]
	return c, ok
}

func (o *fakeOwners) AdAdvertiser(ad string) (string, bool) {
	c, ok := o.adCampaign[ad]
	if !ok {
		return "", false
	}
	a, ok := o.campAdv[c]
	return a, ok
}

func (o *fakeOwners) CampaignAdvertiser(c string) (string, bool) {
	a, ok := o.campAdv[c]
	return a, ok
}
