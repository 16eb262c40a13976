package ledger_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/adpulse/adpulse/internal/billing/ledger"
	"github.com/adpulse/adpulse/internal/testseed"
)

// TestPebbleLookupsAcrossLevels: ledger lookups (prefix seeks through Bloom filters) find
// every entry wherever it lives (memtable, L0, the bottom level, across a reopen) and nothing
// else, also for keys that are prefixes or extensions of stored ones.
func TestPebbleLookupsAcrossLevels(t *testing.T) {
	rng := rand.New(rand.NewPCG(testseed.Seed(t), 1))
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "billing")
	st, err := ledger.OpenPebble(dir, ledger.PebbleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { st.Close() }()
	stored := map[string]bool{}
	var all []string
	insert := func(keys []string) {
		t.Helper()
		_, err := st.Update(ctx, func(ctx context.Context, tx ledger.Tx) (*ledger.Writes, error) {
			have, err := tx.Entries(ctx, keys, false)
			if err != nil {
				return nil, err
			}
			if len(have) != 0 {
				return nil, fmt.Errorf("new keys found: %v", have)
			}
			w := &ledger.Writes{}
			for _, k := range keys {
				w.Entries = append(w.Entries, ledger.Entry{Key: k, State: ledger.StateCharged, Time: int64(len(k)), CampaignID: "c"})
			}
			return w, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			stored[k] = true
			all = append(all, k)
		}
	}
	batch := func(n int) []string {
		var keys []string
		for range n {
			keys = append(keys, fmt.Sprintf("c:%x", rng.Uint64()))
		}
		return keys
	}
	check := func(stage string) {
		t.Helper()
		var probe []string
		for _, k := range all {
			probe = append(probe, k, k+"0", k[:len(k)-1])
		}
		probe = append(probe, batch(200)...)
		got, err := st.Entries(ctx, probe)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range probe {
			e, ok := got[k]
			if ok != stored[k] {
				t.Fatalf("%s: key %q found %v, stored %v", stage, k, ok, stored[k])
			}
			if ok && (e.Key != k || e.Time != int64(len(k))) {
				t.Fatalf("%s: key %q read as %+v", stage, k, e)
			}
		}
		if len(got) != len(all) {
			t.Fatalf("%s: found %d of %d", stage, len(got), len(all))
		}
	}
	insert(batch(500))
	check("memtable")
	if err := ledger.CompactPebble(st); err != nil {
		t.Fatal(err)
	}
	check("bottom level")
	insert(batch(500))
	if err := ledger.FlushPebble(st); err != nil {
		t.Fatal(err)
	}
	insert(batch(500))
	check("memtable, L0 and bottom level")
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if st, err = ledger.OpenPebble(dir, ledger.PebbleOptions{}); err != nil {
		t.Fatal(err)
	}
	check("reopened")
}

// TestPebbleInsertOfReadKeyChecked: Update skips the existence check only for keys its own
// transaction found missing; a key the transaction read as present is still refused.
func TestPebbleInsertOfReadKeyChecked(t *testing.T) {
	ctx := context.Background()
	st, err := ledger.OpenPebble(filepath.Join(t.TempDir(), "billing"), ledger.PebbleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	entry := func(k string) ledger.Entry {
		return ledger.Entry{Key: k, State: ledger.StateCharged, CampaignID: "c"}
	}
	if _, err := st.Update(ctx, func(context.Context, ledger.Tx) (*ledger.Writes, error) {
		return &ledger.Writes{Entries: []ledger.Entry{entry("c:old")}}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := ledger.CompactPebble(st); err != nil {
		t.Fatal(err)
	}
	_, err = st.Update(ctx, func(ctx context.Context, tx ledger.Tx) (*ledger.Writes, error) {
		if _, err := tx.Entries(ctx, []string{"c:new", "c:old"}, false); err != nil {
			return nil, err
		}
		return &ledger.Writes{Entries: []ledger.Entry{entry("c:new"), entry("c:old")}}, nil
	})
	if err == nil {
		t.Fatal("inserting a key the transaction had read as present succeeded")
	}
	got, err := st.Entries(ctx, []string{"c:new", "c:old"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got["c:new"]; ok || len(got) != 1 {
		t.Fatalf("a refused insert changed the ledger: %v", got)
	}
}
