package ledger_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/adpulse/adpulse/internal/billing/ledger"
	"github.com/cockroachdb/pebble/vfs"
)

// BenchmarkChargeNewClicks measures the ledger's share of charging one new click: a round of
// 1,000 clicks looks its keys up (none is there, as for almost every click) and inserts them,
// in a ledger that already holds a few hundred thousand entries on disk, as after hours of
// traffic. One op is one click.
//
//	go test -run '^$' -bench ChargeNewClicks -count 6 ./internal/billing/ledger/
func BenchmarkChargeNewClicks(b *testing.B) {
	const prefill, round = 100_000, 1000
	ctx := context.Background()
	// An in-memory file system: the fsync per round is the disk's cost, not the CPU's, and
	// would drown what this measures.
	st, err := ledger.OpenPebble("billing", ledger.PebbleOptions{FS: vfs.NewMem()})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	k := ledger.SpendKey{Campaign: "c", DayStart: 0}
	insert := func(keys []string) {
		_, err := st.Update(ctx, func(ctx context.Context, tx ledger.Tx) (*ledger.Writes, error) {
			have, err := tx.Entries(ctx, keys, false)
			if err != nil {
				return nil, err
			}
			if _, _, err := tx.LockSpend(ctx, []ledger.SpendKey{k}); err != nil {
				return nil, err
			}
			w := &ledger.Writes{}
			for _, key := range keys {
				if _, dup := have[key]; dup {
					continue
				}
				w.Entries = append(w.Entries, ledger.Entry{Key: key, State: ledger.StateCharged, ChargedMicros: 1, PriceMicros: 1, Time: 1, CampaignID: "c", AdID: "a", AdvertiserID: "v"})
				w.Spend = append(w.Spend, ledger.SpendDelta{SpendKey: k, Micros: 1})
			}
			return w, nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	keys := make([]string, 0, round)
	next := 0
	fill := func() {
		keys = keys[:0]
		for range round {
			keys = append(keys, fmt.Sprintf("c:%016x", uint64(next)*0x9E3779B97F4A7C15))
			next++
		}
	}
	for next < prefill {
		fill()
		insert(keys)
		if next%25_000 == 0 {
			// Several sstables, as a ledger written over hours has.
			if err := ledger.FlushPebble(st); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; done += round {
		fill()
		insert(keys)
	}
}
