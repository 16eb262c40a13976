package pebblestore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/adpulse/adpulse/internal/metricstore"
)

// TestScanMinutes writes random deltas over a few hours in several commits and checks that a
// scan of any minute range returns exactly the summed buckets of that range.
func TestScanMinutes(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 1))
	s, err := Open(t.TempDir(), Options{MinuteRetention: -1, HourRetention: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	type key struct {
		level  metricstore.Level
		id     string
		minute int64
	}
	want := map[key]int64{}
	base := int64(29_600_000) // a minute in 2026
	var off int64
	for c := 0; c < 5; c++ {
		var deltas []metricstore.Delta
		for i := 0; i < 200; i++ {
			d := metricstore.Delta{Level: metricstore.Levels[r.IntN(3)], ID: fmt.Sprint("id", r.IntN(20)), Minute: base + r.Int64N(300)}
			d.Clicks = 1 + r.Int64N(5)
			deltas = append(deltas, d)
			want[key{d.Level, d.ID, d.Minute}] += d.Clicks
		}
		if err := s.Apply(context.Background(), &metricstore.Commit{Consumer: "t", Ranges: []metricstore.OffsetRange{{Partition: 0, From: off, To: off + 1}}, Deltas: deltas}); err != nil {
			t.Fatal(err)
		}
		off++
	}
	for i := 0; i < 20; i++ {
		from := base - 10 + r.Int64N(320)
		to := from + r.Int64N(200)
		got := map[key]int64{}
		err := s.ScanMinutes(context.Background(), from, to, func(d *metricstore.Delta) error {
			k := key{d.Level, d.ID, d.Minute}
			if _, dup := got[k]; dup {
				return fmt.Errorf("bucket %v returned twice", k)
			}
			got[k] = d.Clicks
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for k, v := range want {
			if k.minute < from || k.minute >= to {
				continue
			}
			n++
			if got[k] != v {
				t.Fatalf("[%d,%d) %v: got %d, want %d", from, to, k, got[k], v)
			}
		}
		if n != len(got) {
			t.Fatalf("[%d,%d): %d buckets, want %d", from, to, len(got), n)
		}
	}
}
