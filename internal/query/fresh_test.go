package query

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/aggregate"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/eventlog/locallog"
	"github.com/adpulse/adpulse/internal/httpapi"
	"github.com/adpulse/adpulse/internal/metricstore/pebblestore"
	"github.com/adpulse/adpulse/internal/query/topn"
	"github.com/adpulse/adpulse/internal/testseed"
)

// liveEnv is the embedded read path on real parts: the local log, an aggregator committing to
// a Pebble store, the top-N index fed as the aggregator counts, and the handler merging the
// aggregator's pending counts, as adpulse serve wires them.
type liveEnv struct {
	t      *testing.T
	log    *locallog.Log
	store  *pebblestore.Store
	agg    *aggregate.Aggregator
	mux    *http.ServeMux
	start  time.Time
	n      atomic.Int64 // clicks numbered so far (each its own impression id)
	stop   context.CancelFunc
	runErr chan error
}

const liveParts = 4

func newLiveEnv(t *testing.T, commitEvery time.Duration) *liveEnv {
	t.Helper()
	l, err := locallog.Open(locallog.Options{Dir: t.TempDir(), Partitions: liveParts})
	if err != nil {
		t.Fatal(err)
	}
	s, err := pebblestore.Open(t.TempDir(), pebblestore.Options{CacheBytes: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	owners := &fakeOwners{adCampaign: map[string]string{"ad1": "c1", "ad2": "c1"}, campAdv: map[string]string{"c1": "a1"}}
	top := topn.New(topn.Options{Owners: owners})
	agg, err := aggregate.New(aggregate.Options{Log: l, Store: s, CommitInterval: commitEvery, OnCount: top.Add})
	if err != nil {
		t.Fatal(err)
	}
	// A generous wait: on a loaded test machine the aggregator may take a while to be
	// scheduled, and the checks below need every acknowledged click counted.
	h, err := New(Options{Store: s, Index: top, Owners: owners, Pending: agg, PendingWait: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	e := &liveEnv{t: t, log: l, store: s, agg: agg, mux: http.NewServeMux(), start: time.Now().Add(-time.Minute).Truncate(time.Minute), runErr: make(chan error, 1)}
	h.Register(e.mux)
	ctx, cancel := context.WithCancel(context.Background())
	e.stop = cancel
	go func() { e.runErr <- agg.Run(ctx) }()
	t.Cleanup(func() {
		e.shutdown()
		s.Close()
		l.Close()
	})
	// Wait for Run to be counting: until then queries have nothing to wait for.
	if err := e.click("warm", 1); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if n, _, err := e.metricsClicks("ad", "warm"); err != nil || n == 1 {
			break
		} else if time.Now().After(deadline) {
			t.Fatal("the aggregator did not start counting")
		}
	}
	return e
}

func (e *liveEnv) shutdown() {
	if e.stop == nil {
		return
	}
	e.stop()
	e.stop = nil
	if err := <-e.runErr; err != nil {
		e.t.Errorf("aggregator: %v", err)
	}
}

// click appends n valid clicks of ad (campaign c1, advertiser a1; for ad warm, cw and aw),
// spread over the partitions.
func (e *liveEnv) click(ad string, n int) error {
	msgs := make([]eventlog.Message, n)
	now := time.Now().UnixMicro()
	for i := range msgs {
		k := e.n.Add(1)
		c, adv := "c1", "a1"
		if ad == "warm" {
			c, adv = "cw", "aw"
		}
		ev := event.Event{Type: event.TypeClick, AdID: ad, CampaignID: c, AdvertiserID: adv, ImpressionID: fmt.Sprintf("imp-%d", k),
			Time: now, RecvTime: now, UserID: "u"}
		msgs[i] = eventlog.Message{Partition: int32(k % liveParts), Value: ev.AppendBinary(nil)}
	}
	return e.log.Append(context.Background(), msgs)
}

func (e *liveEnv) get(path string) (int, []byte) {
	req := httptest.NewRequest("GET", path, nil)
	req = req.WithContext(httpapi.WithPrincipal(req.Context(), admin))
	w := httptest.NewRecorder()
	e.mux.ServeHTTP(w, req)
	return w.Code, w.Body.Bytes()
}

// metricsClicks is the clicks of id at level over the last minutes (1h buckets, summed), and
// whether every point that has clicks is final.
func (e *liveEnv) metricsClicks(level, id string) (clicks int64, final bool, err error) {
	v := url.Values{level + "_ids": {id}, "start_time": {e.start.Format(time.RFC3339)},
		"end_time": {time.Now().Add(2 * time.Minute).Format(time.RFC3339)}, "interval": {"1h"}}
	code, body := e.get("/metrics?" + v.Encode())
	if code != http.StatusOK {
		return 0, false, fmt.Errorf("GET /metrics: %d %s", code, body)
	}
	var r struct {
		Series []struct {
			Points []struct {
				Clicks int64 `json:"clicks"`
				Final  bool  `json:"final"`
			} `json:"points"`
		} `json:"series"`
	}
	if err := json.Unmarshal(body, &r); err != nil || len(r.Series) != 1 {
		return 0, false, fmt.Errorf("GET /metrics: %v: %s", err, body)
	}
	final = true
	for _, p := range r.Series[0].Points {
		clicks += p.Clicks
		if p.Clicks > 0 && !p.Final {
			final = false
		}
	}
	return clicks, final, nil
}

// topClicks is the clicks of id in /metrics/top by level over the last few minutes.
func (e *liveEnv) topClicks(level, id string) (int64, error) {
	code, body := e.get("/metrics/top?metric=clicks&minutes=5&n=10&by=" + level)
	if code != http.StatusOK {
		return 0, fmt.Errorf("GET /metrics/top: %d %s", code, body)
	}
	var r struct {
		Items []map[string]any `json:"items"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return 0, err
	}
	for _, it := range r.Items {
		if it[level+"_id"] == id {
			return int64(it["clicks"].(float64)), nil
		}
	}
	return 0, nil
}

// TestQueriesExactAcrossCommits hammers /metrics and /metrics/top while clicks are appended
// and commits land every millisecond or so: every count a query sees lies between the clicks
// acknowledged before it started and those sent before it ended (more means a part counted in
// the store and as pending; less, a part in neither), and never goes down. In the end the
// counts equal what was acknowledged.
func TestQueriesExactAcrossCommits(t *testing.T) {
	rng := rand.New(rand.NewPCG(testseed.Seed(t), 7))
	e := newLiveEnv(t, time.Millisecond)
	var sent, acked atomic.Int64
	const writers, readers, total = 4, 4, 1500
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var failed atomic.Bool
	fail := func(format string, args ...any) {
		if failed.CompareAndSwap(false, true) {
			cancel()
		}
		t.Errorf(format, args...)
	}
	var written atomic.Int64
	batch := 1 + rng.IntN(4)
	for range writers {
		wg.Go(func() {
			for ctx.Err() == nil && written.Add(int64(batch)) <= total {
				sent.Add(int64(batch))
				if err := e.click("ad1", batch); err != nil {
					fail("append: %v", err)
					return
				}
				acked.Add(int64(batch))
			}
		})
	}
	var queries atomic.Int64
	readersDone := make(chan struct{})
	var rwg sync.WaitGroup
	for r := range readers {
		rwg.Go(func() {
			type view struct{ level, id string }
			views := []view{{"ad", "ad1"}, {"campaign", "c1"}, {"advertiser", "a1"}}
			last := map[string]int64{}
			for i := 0; ; i++ {
				select {
				case <-readersDone:
					return
				default:
				}
				if ctx.Err() != nil {
					return
				}
				v := views[(i+r)%len(views)]
				top := (i+r)%2 == 1
				lo := acked.Load()
				var got int64
				var err error
				if top {
					got, err = e.topClicks(v.level, v.id)
				} else {
					got, _, err = e.metricsClicks(v.level, v.id)
				}
				hi := sent.Load()
				queries.Add(1)
				name := fmt.Sprintf("top=%v %s %s", top, v.level, v.id)
				switch {
				case err != nil:
					fail("%s: %v", name, err)
				case got < lo || got > hi:
					fail("%s counts %d clicks; %d were acknowledged before the query and %d sent before its answer", name, got, lo, hi)
				case got < last[name]:
					fail("%s went down from %d to %d", name, last[name], got)
				}
				last[name] = got
			}
		})
	}
	wg.Wait()
	close(readersDone)
	rwg.Wait()
	if failed.Load() {
		return
	}
	want := acked.Load()
	// Everything acknowledged is visible at once, before any further commit.
	for _, v := range [][2]string{{"ad", "ad1"}, {"campaign", "c1"}, {"advertiser", "a1"}} {
		deadline := time.Now().Add(5 * time.Second)
		for {
			got, _, err := e.metricsClicks(v[0], v[1])
			if err != nil {
				t.Fatal(err)
			}
			top, err := e.topClicks(v[0], v[1])
			if err != nil {
				t.Fatal(err)
			}
			if got == want && top == want {
				break
			}
			if time.Now().After(deadline) || got > want || top > want {
				t.Fatalf("%s %s: /metrics %d, /metrics/top %d, want %d", v[0], v[1], got, top, want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	st := e.agg.Stats()
	t.Logf("%d clicks, %d queries, %d commits", want, queries.Load(), st.Commits)
	if st.Commits < 20 {
		t.Errorf("only %d commits landed during the run: the commit boundary was hardly exercised", st.Commits)
	}
	// After an orderly stop everything is committed and the counts are unchanged.
	e.shutdown()
	if got, final, err := e.metricsClicks("ad", "ad1"); err != nil || got != want || final {
		t.Errorf("after the last commit: %d clicks (final %v, err %v), want %d, not final", got, final, err, want)
	}
}

// TestAcknowledgedVisibleWithoutCommit: with an hour between commits, an acknowledged click is
// counted by /metrics and /metrics/top at every level without any commit, and its point is not
// final (finality describes the committed state).
func TestAcknowledgedVisibleWithoutCommit(t *testing.T) {
	e := newLiveEnv(t, time.Hour)
	for want := int64(1); want <= 3; want++ {
		if err := e.click("ad2", 1); err != nil {
			t.Fatal(err)
		}
		for _, v := range [][2]string{{"ad", "ad2"}, {"campaign", "c1"}, {"advertiser", "a1"}} {
			deadline := time.Now().Add(10 * time.Second)
			for {
				got, final, err := e.metricsClicks(v[0], v[1])
				if err != nil {
					t.Fatal(err)
				}
				top, err := e.topClicks(v[0], v[1])
				if err != nil {
					t.Fatal(err)
				}
				if got == want && top == want {
					if final {
						t.Errorf("%s %s: a point with uncommitted clicks is final", v[0], v[1])
					}
					break
				}
				if got > want || top > want || time.Now().After(deadline) {
					t.Fatalf("%s %s: /metrics %d, /metrics/top %d clicks, want %d", v[0], v[1], got, top, want)
				}
				time.Sleep(time.Millisecond)
			}
		}
	}
	if st := e.agg.Stats(); st.Commits != 0 {
		t.Fatalf("%d commits: the test needs none", st.Commits)
	}
	cp, err := e.store.Checkpoint(context.Background(), aggregate.DefaultConsumer)
	if err != nil || len(cp.Offsets) != 0 {
		t.Fatalf("the store holds a commit: %v %v", cp, err)
	}
}
