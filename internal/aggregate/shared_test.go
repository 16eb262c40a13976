package aggregate

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/eventlog/eventlogtest"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/metricstore/pebblestore"
	"github.com/adpulse/adpulse/internal/testseed"
)

// TestSharedTakeoverCountsOnce runs two nodes' Shared stages on one log and one store while
// partitions move between them: orderly moves (revoke, then assign) and zombie moves (the new
// owner starts while the old one still runs, and the old one is revoked only later). Every
// click, duplicates included, must be counted exactly once per ad at the end.
func TestSharedTakeoverCountsOnce(t *testing.T) {
	seed := testseed.Seed(t)
	rng := rand.New(rand.NewPCG(seed, 0))
	const parts, ads = 4, 12
	log := eventlogtest.NewMemLog(parts, time.Now)
	store, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	base := Options{Log: log, Store: store, CommitInterval: 5 * time.Millisecond, PollInterval: 2 * time.Millisecond, MaxLateness: time.Hour, Slack: time.Second}
	nodes := [2]*Shared{}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 2)
	for i := range nodes {
		if nodes[i], err = NewShared(base, nil); err != nil {
			t.Fatal(err)
		}
		go func() { runErr <- nodes[i].Run(ctx) }()
	}
	owner := [parts]int{}
	for p := range int32(parts) {
		if err := nodes[0].Assign(ctx, []int32{p}); err != nil {
			t.Fatal(err)
		}
	}

	want := map[string]int64{}
	var sent []event.Event
	now := time.Now().UnixMicro()
	for round := range 60 {
		var msgs []eventlog.Message
		for range 50 {
			var e event.Event
			if len(sent) > 0 && rng.IntN(5) == 0 {
				e = sent[rng.IntN(len(sent))] // a retry that reached the log twice
			} else {
				ad := rng.IntN(ads)
				e = event.Event{
					Type: event.TypeClick, Time: now - 60e6, RecvTime: now,
					AdID: fmt.Sprintf("ad-%d", ad), CampaignID: "c", AdvertiserID: "a",
					ImpressionID: fmt.Sprintf("imp-%d-%d", round, len(sent)),
				}
				want[e.AdID]++
				sent = append(sent, e)
			}
			// Partitioned by ad as ingest does, so a duplicate lands where its original did.
			msgs = append(msgs, eventlog.Message{Partition: int32(adPartition(e.AdID, parts)), Value: e.AppendBinary(nil)})
		}
		if err := log.Append(ctx, msgs); err != nil {
			t.Fatal(err)
		}
		if round%6 == 5 {
			p := int32(rng.IntN(parts))
			from, to := owner[p], 1-owner[p]
			if rng.IntN(2) == 0 {
				nodes[from].Revoke([]int32{p})
				if err := nodes[to].Assign(ctx, []int32{p}); err != nil {
					t.Fatal(err)
				}
			} else { // zombie: both run it for a while
				if err := nodes[to].Assign(ctx, []int32{p}); err != nil {
					t.Fatal(err)
				}
				time.Sleep(time.Duration(rng.IntN(30)) * time.Millisecond)
				nodes[from].Revoke([]int32{p})
			}
			owner[p] = to
		}
		time.Sleep(time.Millisecond)
	}
	// Let the owners catch up, then stop in order (each commits what it consumed).
	deadline := time.Now().Add(20 * time.Second)
	for !caughtUp(t, store, log, parts) {
		if time.Now().After(deadline) {
			t.Fatal("the owners did not catch up within 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	for range nodes {
		if err := <-runErr; err != nil {
			t.Fatalf("Run: %v", err)
		}
	}
	ids := make([]string, 0, ads)
	for ad := range ads {
		ids = append(ids, fmt.Sprintf("ad-%d", ad))
	}
	start := time.UnixMicro(now - 60e6).Truncate(24 * time.Hour)
	res, err := store.Query(context.Background(), metricstore.Query{Level: metricstore.LevelAd, IDs: ids, Start: start, End: start.Add(48 * time.Hour), Interval: 24 * time.Hour, Location: time.UTC})
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range res.Series {
		var got int64
		for _, pt := range s.Points {
			got += pt.Counts.Clicks
		}
		if got != want[ids[i]] {
			t.Errorf("%s: %d clicks counted, want %d", ids[i], got, want[ids[i]])
		}
	}
	st := nodes[0].Stats()
	st1 := nodes[1].Stats()
	t.Logf("duplicates dropped: %d; commits: %d; partitions resumed after a fence: %d", st.Duplicates+st1.Duplicates, st.Commits+st1.Commits, st.Fenced+st1.Fenced)
}

func adPartition(ad string, parts int) int {
	h := 0
	for _, c := range ad {
		h = h*31 + int(c)
	}
	return h % parts
}

// caughtUp reports whether every partition's consumer has committed the whole log.
func caughtUp(t *testing.T, store metricstore.Store, log eventlog.Log, parts int) bool {
	for p := range int32(parts) {
		cp, err := store.Checkpoint(context.Background(), PartitionConsumer("", p))
		if err != nil {
			t.Fatal(err)
		}
		_, end, _ := log.Offsets(context.Background(), int(p))
		if cp.Offsets[p] != end {
			return false
		}
	}
	return true
}
