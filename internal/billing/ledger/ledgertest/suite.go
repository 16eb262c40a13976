// Package ledgertest is the conformance suite of ledger.Store: every implementation (Pebble,
// PostgreSQL, MariaDB) runs it from its own tests with Run.
//
// Random cases are driven by the seed given to Run (callers take it from testseed.Seed); it
// is logged and named in failures so a failure replays exactly. Concurrent cases use one
// Store from many goroutines: for the SQL store that is many connections, as several process
// nodes would be.
package ledgertest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/billing/ledger"
)

// Opener opens the store under test. The first call creates an empty store; a later call,
// made after the previous store was closed, reopens the same data.
type Opener func() (ledger.Store, error)

// Factory returns an Opener for a new, empty store, cleaning up with t.Cleanup.
type Factory func(t *testing.T) Opener

// Run runs the conformance suite.
func Run(t *testing.T, newStore Factory, seed uint64) {
	t.Logf("ledgertest seed %d", seed)
	cases := []struct {
		name string
		f    func(t *testing.T, s ledger.Store, open Opener, seed uint64)
	}{
		{"RoundIsAtomic", testAtomic},
		{"Fence", testFence},
		{"FenceRacesClaim", testFenceRace},
		{"DuplicateClickKeys", testDuplicates},
		{"SpendEqualsLedger", testSpendModel},
		{"JournalInCommitOrder", testJournalOrder},
		{"ConcurrentBudget", testConcurrentBudget},
		{"ConcurrentRefunds", testConcurrentRefunds},
		{"Views", testViews},
		{"MetaKnownAndReopen", testReopen},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			open := newStore(t)
			s, err := open()
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			t.Cleanup(func() { s.Close() })
			c.f(t, s, open, seed)
		})
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func entry(key, campaign string, day int64, micros int64) ledger.Entry {
	return ledger.Entry{Key: key, State: ledger.StateCharged, ChargedMicros: micros, PriceMicros: micros, Time: day * 1e6,
		DayStart: day, CampaignID: campaign, AdID: "a-" + campaign, AdvertiserID: "adv"}
}

// snapshot is everything a store holds, for before/after comparisons.
type snapshot struct {
	entries map[string]ledger.Entry
	days    map[ledger.SpendKey]int64
	totals  map[string]int64
	next    uint64
	views   []ledger.ViewCount
}

func snap(t *testing.T, s ledger.Store) snapshot {
	t.Helper()
	ctx := ctxT(t)
	sn := snapshot{entries: map[string]ledger.Entry{}, days: map[ledger.SpendKey]int64{}, totals: map[string]int64{}}
	if err := s.ScanLedger(ctx, func(e ledger.Entry) error { sn.entries[e.Key] = e; return nil }); err != nil {
		t.Fatal(err)
	}
	err := s.ScanSpend(ctx, func(k ledger.SpendKey, v int64) error {
		if v != 0 {
			sn.days[k] = v
		}
		return nil
	}, func(id string, v int64) error {
		if v != 0 {
			sn.totals[id] = v
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if sn.next, err = s.JournalNext(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.ScanViews(ctx, 100, func(v ledger.ViewCount) error { sn.views = append(sn.views, v); return nil }); err != nil {
		t.Fatal(err)
	}
	return sn
}

func equalSnap(a, b snapshot) bool {
	return fmt.Sprint(a.entries) == fmt.Sprint(b.entries) && fmt.Sprint(a.days) == fmt.Sprint(b.days) &&
		fmt.Sprint(a.totals) == fmt.Sprint(b.totals) && a.next == b.next && fmt.Sprint(a.views) == fmt.Sprint(b.views)
}

func claim(t *testing.T, s ledger.Store, p int32) ledger.Claim {
	t.Helper()
	cl, err := s.Claim(ctxT(t), []int32{p})
	if err != nil || len(cl) != 1 || cl[0].Partition != p {
		t.Fatalf("claim %d: %+v, %v", p, cl, err)
	}
	return cl[0]
}

// testAtomic: a failing Update leaves nothing behind, whether fn fails or the write does.
func testAtomic(t *testing.T, s ledger.Store, _ Opener, _ uint64) {
	ctx := ctxT(t)
	cl := claim(t, s, 0)
	before := snap(t, s)
	full := func() *ledger.Writes {
		return &ledger.Writes{
			Offsets: []ledger.Offset{{Partition: 0, Epoch: cl.Epoch, Next: 10}},
			Entries: []ledger.Entry{entry("c:x1", "camp", 86400, 500)},
			Spend:   []ledger.SpendDelta{{SpendKey: ledger.SpendKey{Campaign: "camp", DayStart: 86400}, Micros: 500}},
			Views:   []ledger.ViewCount{{ViewKey: ledger.ViewKey{Day: 100, UserID: "u", CatalogID: "k"}, Count: 2}},
			Journal: []byte("j"), Known: []string{"camp"}, Meta: map[string][]byte{"m": []byte("v")},
		}
	}
	boom := errors.New("boom")
	if _, err := s.Update(ctx, func(ctx context.Context, tx ledger.Tx) (*ledger.Writes, error) {
		if _, _, err := tx.LockSpend(ctx, []ledger.SpendKey{{Campaign: "camp", DayStart: 86400}}); err != nil {
			return nil, err
		}
		return nil, boom
	}); !errors.Is(err, boom) {
		t.Fatalf("Update with a failing function: %v", err)
	}
	// The write fails at its end: replacing an entry that does not exist.
	if _, err := s.Update(ctx, func(context.Context, ledger.Tx) (*ledger.Writes, error) {
		w := full()
		w.Replace = []ledger.Entry{entry("c:missing", "camp", 86400, 1)}
		return w, nil
	}); err == nil {
		t.Fatal("Update replacing a missing entry succeeded")
	}
	if after := snap(t, s); !equalSnap(before, after) {
		t.Fatalf("a failed Update changed the store:\nbefore %+v\nafter  %+v", before, after)
	}
	if _, ok, _ := s.Meta(ctx, "m"); ok {
		t.Fatal("a failed Update wrote metadata")
	}
	res, err := s.Update(ctx, func(context.Context, ledger.Tx) (*ledger.Writes, error) { return full(), nil })
	if err != nil {
		t.Fatal(err)
	}
	after := snap(t, s)
	if len(after.entries) != 1 || after.days[ledger.SpendKey{Campaign: "camp", DayStart: 86400}] != 500 || after.totals["camp"] != 500 ||
		after.next != before.next+1 || res.JournalSeq != before.next || len(res.Views) != 1 || res.Views[0].Count != 2 {
		t.Fatalf("after a full Update: %+v, result %+v", after, res)
	}
	if cl2 := claim(t, s, 0); !cl2.Committed || cl2.Next != 10 || cl2.Epoch <= cl.Epoch {
		t.Fatalf("claim after a commit: %+v", cl2)
	}
}

// round commits one entry and offset under epoch.
func round(ctx context.Context, s ledger.Store, p int32, epoch, next int64, key string) error {
	_, err := s.Update(ctx, func(context.Context, ledger.Tx) (*ledger.Writes, error) {
		return &ledger.Writes{Offsets: []ledger.Offset{{Partition: p, Epoch: epoch, Next: next}},
			Entries: []ledger.Entry{entry(key, "f", 0, 0)}}, nil
	})
	return err
}

// testFence: after a new Claim, the old epoch cannot commit, and writes nothing.
func testFence(t *testing.T, s ledger.Store, _ Opener, _ uint64) {
	ctx := ctxT(t)
	old := claim(t, s, 3)
	if old.Committed {
		t.Fatalf("a new partition claims as committed: %+v", old)
	}
	if err := round(ctx, s, 3, old.Epoch, 5, "c:f1"); err != nil {
		t.Fatal(err)
	}
	cur := claim(t, s, 3)
	if cur.Epoch <= old.Epoch || !cur.Committed || cur.Next != 5 {
		t.Fatalf("second claim: %+v after %+v", cur, old)
	}
	err := round(ctx, s, 3, old.Epoch, 9, "c:f2")
	var fe *ledger.FencedError
	if !errors.Is(err, ledger.ErrFenced) || !errors.As(err, &fe) || !slices.Equal(fe.Partitions, []int32{3}) {
		t.Fatalf("commit under a stale epoch: %v", err)
	}
	if e, _ := s.Entries(ctx, []string{"c:f2"}); len(e) != 0 {
		t.Fatal("a fenced round wrote its ledger entry")
	}
	if err := round(ctx, s, 3, cur.Epoch, 9, "c:f3"); err != nil {
		t.Fatalf("commit under the current epoch: %v", err)
	}
	if c := claim(t, s, 3); c.Next != 9 {
		t.Fatalf("offset after the owner's commit: %+v", c)
	}
	// An offset of a partition never claimed is fenced too.
	if err := round(ctx, s, 77, 1, 1, "c:f4"); !errors.Is(err, ledger.ErrFenced) {
		t.Fatalf("commit for a partition never claimed: %v", err)
	}
}

// testFenceRace: a round racing the new owner's Claim either commits entirely before the
// Claim (which then returns its offset) or is fenced and writes nothing.
func testFenceRace(t *testing.T, s ledger.Store, _ Opener, seed uint64) {
	ctx := ctxT(t)
	rng := rand.New(rand.NewPCG(seed, 7))
	for i := range 20 {
		p := int32(10 + i)
		old := claim(t, s, p)
		key := fmt.Sprintf("c:race%d", i)
		started := make(chan struct{})
		release := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			_, err := s.Update(ctx, func(ctx context.Context, tx ledger.Tx) (*ledger.Writes, error) {
				if _, _, err := tx.LockSpend(ctx, []ledger.SpendKey{{Campaign: "race", DayStart: 0}}); err != nil {
					return nil, err
				}
				select {
				case <-started:
				default:
					close(started)
				}
				<-release
				return &ledger.Writes{Offsets: []ledger.Offset{{Partition: p, Epoch: old.Epoch, Next: 42}},
					Entries: []ledger.Entry{entry(key, "race", 0, 1)},
					Spend:   []ledger.SpendDelta{{SpendKey: ledger.SpendKey{Campaign: "race", DayStart: 0}, Micros: 1}}}, nil
			})
			done <- err
		}()
		<-started
		claimed := make(chan ledger.Claim, 1)
		go func() {
			cl, err := s.Claim(ctx, []int32{p})
			if err != nil {
				t.Error(err)
			}
			claimed <- cl[0]
		}()
		time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
		close(release)
		err := <-done
		cl := <-claimed
		got, _ := s.Entries(ctx, []string{key})
		switch {
		case err == nil:
			if !cl.Committed || cl.Next != 42 || len(got) != 1 {
				t.Fatalf("round %d committed but the claim saw %+v (entry present %v)", i, cl, len(got) == 1)
			}
		case errors.Is(err, ledger.ErrFenced):
			if cl.Committed || len(got) != 0 {
				t.Fatalf("round %d fenced but the claim saw %+v (entry present %v)", i, cl, len(got) == 1)
			}
		default:
			t.Fatalf("round %d: %v", i, err)
		}
	}
	// Spend equals the ledger despite the fenced rounds.
	checkSpendEqualsLedger(t, s)
}

// testDuplicates: two writers inserting the same click key concurrently end with one entry,
// and an Update inserting a key that exists fails without writing.
func testDuplicates(t *testing.T, s ledger.Store, _ Opener, _ uint64) {
	ctx := ctxT(t)
	var wins atomic.Int64
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Update(ctx, func(ctx context.Context, tx ledger.Tx) (*ledger.Writes, error) {
				have, err := tx.Entries(ctx, []string{"c:dup"}, false)
				if err != nil || len(have) > 0 {
					return nil, err
				}
				k := ledger.SpendKey{Campaign: "d", DayStart: 0}
				if _, _, err := tx.LockSpend(ctx, []ledger.SpendKey{k}); err != nil {
					return nil, err
				}
				return &ledger.Writes{Entries: []ledger.Entry{entry("c:dup", "d", 0, 7)}, Spend: []ledger.SpendDelta{{SpendKey: k, Micros: 7}}}, nil
			})
			if err != nil {
				t.Error(err)
			}
			if res := err == nil; res {
				wins.Add(1)
			}
		}()
	}
	wg.Wait()
	sn := snap(t, s)
	if len(sn.entries) != 1 || sn.totals["d"] != 7 {
		t.Fatalf("after concurrent inserts of one key: %+v", sn)
	}
	before := snap(t, s)
	_, err := s.Update(ctx, func(context.Context, ledger.Tx) (*ledger.Writes, error) {
		return &ledger.Writes{Entries: []ledger.Entry{entry("c:dup", "d", 0, 7)}, Spend: []ledger.SpendDelta{{SpendKey: ledger.SpendKey{Campaign: "d"}, Micros: 7}}}, nil
	})
	if err == nil {
		t.Fatal("inserting an existing key succeeded")
	}
	if !equalSnap(before, snap(t, s)) {
		t.Fatal("a refused duplicate insert changed the store")
	}
}

func checkSpendEqualsLedger(t *testing.T, s ledger.Store) {
	t.Helper()
	sn := snap(t, s)
	days, totals := map[ledger.SpendKey]int64{}, map[string]int64{}
	for _, e := range sn.entries {
		if e.State == ledger.StateCharged && e.ChargedMicros != 0 {
			days[ledger.SpendKey{Campaign: e.CampaignID, DayStart: e.DayStart}] += e.ChargedMicros
			totals[e.CampaignID] += e.ChargedMicros
		}
	}
	if fmt.Sprint(days) != fmt.Sprint(sn.days) || fmt.Sprint(totals) != fmt.Sprint(sn.totals) {
		t.Fatalf("spend differs from the ledger:\nledger days %v totals %v\nstored days %v totals %v", days, totals, sn.days, sn.totals)
	}
}

// testSpendModel: random charges and refunds keep stored spend equal to the ledger's sums.
func testSpendModel(t *testing.T, s ledger.Store, _ Opener, seed uint64) {
	ctx := ctxT(t)
	rng := rand.New(rand.NewPCG(seed, 11))
	var keys []string
	for i := range 60 {
		if len(keys) > 0 && rng.IntN(4) == 0 {
			key := keys[rng.IntN(len(keys))]
			if err := refund(ctx, s, key); err != nil {
				t.Fatal(err)
			}
			continue
		}
		key := fmt.Sprintf("c:m%d", i)
		camp := fmt.Sprintf("camp%d", rng.IntN(3))
		day := int64(rng.IntN(3)) * 86400
		micros := int64(rng.IntN(1000))
		k := ledger.SpendKey{Campaign: camp, DayStart: day}
		_, err := s.Update(ctx, func(ctx context.Context, tx ledger.Tx) (*ledger.Writes, error) {
			if _, _, err := tx.LockSpend(ctx, []ledger.SpendKey{k}); err != nil {
				return nil, err
			}
			return &ledger.Writes{Entries: []ledger.Entry{entry(key, camp, day, micros)}, Spend: []ledger.SpendDelta{{SpendKey: k, Micros: micros}}}, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, key)
	}
	checkSpendEqualsLedger(t, s)
}

// refund flips key to refunded and takes its charge off, once.
func refund(ctx context.Context, s ledger.Store, key string) error {
	_, err := s.Update(ctx, func(ctx context.Context, tx ledger.Tx) (*ledger.Writes, error) {
		got, err := tx.Entries(ctx, []string{key}, true)
		if err != nil {
			return nil, err
		}
		e, ok := got[key]
		if !ok || e.State == ledger.StateRefunded {
			return nil, nil
		}
		k := ledger.SpendKey{Campaign: e.CampaignID, DayStart: e.DayStart}
		if _, _, err := tx.LockSpend(ctx, []ledger.SpendKey{k}); err != nil {
			return nil, err
		}
		e.State, e.RefundedAt = ledger.StateRefunded, 1
		return &ledger.Writes{Replace: []ledger.Entry{e}, Spend: []ledger.SpendDelta{{SpendKey: k, Micros: -e.ChargedMicros}}, Journal: []byte(key)}, nil
	})
	return err
}

// testJournalOrder: concurrent writers get contiguous seqs, and whenever JournalNext says n,
// every entry below n is readable (commit order is seq order).
func testJournalOrder(t *testing.T, s ledger.Store, _ Opener, _ uint64) {
	ctx := ctxT(t)
	const writers, each = 4, 15
	stop := make(chan struct{})
	var readerErr error
	var rd sync.WaitGroup
	rd.Add(1)
	go func() {
		defer rd.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, err := s.JournalNext(ctx)
			if err != nil {
				readerErr = err
				return
			}
			want := uint64(0)
			err = s.Journal(ctx, 0, n, func(seq uint64, _ []byte) error {
				if seq != want {
					return fmt.Errorf("JournalNext %d but entry %d missing (found %d)", n, want, seq)
				}
				want++
				return nil
			})
			if err == nil && want != n {
				err = fmt.Errorf("JournalNext %d but entries end at %d", n, want)
			}
			if err != nil {
				readerErr = err
				return
			}
		}
	}()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				payload := fmt.Appendf(nil, "w%d-%d", w, i)
				_, err := s.Update(ctx, func(ctx context.Context, tx ledger.Tx) (*ledger.Writes, error) {
					return &ledger.Writes{Journal: payload}, nil
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	rd.Wait()
	if readerErr != nil {
		t.Fatal(readerErr)
	}
	seen := map[string]bool{}
	n, _ := s.JournalNext(ctx)
	if err := s.Journal(ctx, 0, n, func(_ uint64, v []byte) error { seen[string(v)] = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != writers*each || len(seen) != writers*each {
		t.Fatalf("journal next %d, %d distinct entries; want %d", n, len(seen), writers*each)
	}
	if err := s.DropJournal(ctx, 10); err != nil {
		t.Fatal(err)
	}
	if first, err := s.FirstJournal(ctx); err != nil || first != 10 {
		t.Fatalf("first journal entry after dropping below 10: %d, %v", first, err)
	}
}

// testConcurrentBudget: writers charging one campaign's day against a budget never exceed it.
func testConcurrentBudget(t *testing.T, s ledger.Store, _ Opener, seed uint64) {
	ctx := ctxT(t)
	const budget, total = 10_000, 25_000
	var wg sync.WaitGroup
	var n atomic.Int64
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for range 12 {
				key := fmt.Sprintf("c:b%d", n.Add(1))
				day := int64(rng.IntN(3)) * 86400
				price := int64(300 + rng.IntN(900))
				k := ledger.SpendKey{Campaign: "bud", DayStart: day}
				_, err := s.Update(ctx, func(ctx context.Context, tx ledger.Tx) (*ledger.Writes, error) {
					d, tot, err := tx.LockSpend(ctx, []ledger.SpendKey{k})
					if err != nil {
						return nil, err
					}
					charge := min(price, max(0, budget-d[k]), max(0, total-tot["bud"]))
					w := &ledger.Writes{Entries: []ledger.Entry{entry(key, "bud", day, charge)}}
					if charge > 0 {
						w.Spend = []ledger.SpendDelta{{SpendKey: k, Micros: charge}}
					}
					return w, nil
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	sn := snap(t, s)
	if sn.totals["bud"] != total {
		t.Errorf("total spend %d, want exactly the total budget %d", sn.totals["bud"], total)
	}
	for k, v := range sn.days {
		if v > budget {
			t.Errorf("day %d: spend %d exceeds %d", k.DayStart, v, budget)
		}
	}
	checkSpendEqualsLedger(t, s)
}

// testConcurrentRefunds: many refunds of one click credit it once.
func testConcurrentRefunds(t *testing.T, s ledger.Store, _ Opener, _ uint64) {
	ctx := ctxT(t)
	k := ledger.SpendKey{Campaign: "r", DayStart: 86400}
	if _, err := s.Update(ctx, func(context.Context, ledger.Tx) (*ledger.Writes, error) {
		return &ledger.Writes{Entries: []ledger.Entry{entry("c:r1", "r", 86400, 900), entry("c:r2", "r", 86400, 100)},
			Spend: []ledger.SpendDelta{{SpendKey: k, Micros: 1000}}}, nil
	}); err != nil {
		t.Fatal(err)
	}
	before, _ := s.JournalNext(ctx)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := refund(ctx, s, "c:r1"); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	sn := snap(t, s)
	after, _ := s.JournalNext(ctx)
	if sn.days[k] != 100 || sn.totals["r"] != 100 || sn.entries["c:r1"].State != ledger.StateRefunded || after != before+1 {
		t.Fatalf("after 8 concurrent refunds of one click: spend %d/%d, entry %+v, journal %d -> %d", sn.days[k], sn.totals["r"], sn.entries["c:r1"], before, after)
	}
	// Spend never goes negative.
	if _, err := s.Update(ctx, func(context.Context, ledger.Tx) (*ledger.Writes, error) {
		return &ledger.Writes{Spend: []ledger.SpendDelta{{SpendKey: k, Micros: -101}}}, nil
	}); err == nil {
		t.Fatal("spend below zero was accepted")
	}
	checkSpendEqualsLedger(t, s)
}

// testViews: counts add up across writers; Update returns committed totals; expiry deletes
// whole days.
func testViews(t *testing.T, s ledger.Store, _ Opener, _ uint64) {
	ctx := ctxT(t)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 {
				res, err := s.Update(ctx, func(context.Context, ledger.Tx) (*ledger.Writes, error) {
					return &ledger.Writes{Views: []ledger.ViewCount{
						{ViewKey: ledger.ViewKey{Day: 100, UserID: "u1", CatalogID: "k1"}, Count: 1},
						{ViewKey: ledger.ViewKey{Day: 100, UserID: "u1", CatalogID: "k2"}, Count: 2},
						{ViewKey: ledger.ViewKey{Day: 99, UserID: "u1", CatalogID: "k1"}, Count: 1},
					}}, nil
				})
				if err != nil {
					t.Error(err)
					return
				}
				if len(res.Views) != 3 {
					t.Errorf("committed totals: %+v", res.Views)
				}
			}
		}()
	}
	wg.Wait()
	got, err := s.Views(ctx, 100, "u1")
	if err != nil || got["k1"] != 20 || got["k2"] != 40 || len(got) != 2 {
		t.Fatalf("views of u1 on day 100: %v, %v", got, err)
	}
	var scanned []ledger.ViewCount
	if err := s.ScanViews(ctx, 100, func(v ledger.ViewCount) error { scanned = append(scanned, v); return nil }); err != nil || len(scanned) != 2 || scanned[0].CatalogID != "k1" {
		t.Fatalf("scan of day 100: %+v, %v", scanned, err)
	}
	if _, err := s.Update(ctx, func(context.Context, ledger.Tx) (*ledger.Writes, error) {
		return &ledger.Writes{ExpireViewsBefore: 100}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Views(ctx, 99, "u1"); len(got) != 0 {
		t.Fatalf("day 99 after expiry: %v", got)
	}
	if got, _ := s.Views(ctx, 100, "u1"); len(got) != 2 {
		t.Fatalf("day 100 after expiring the days before it: %v", got)
	}
}

// testReopen: metadata, known campaigns, epochs and offsets survive a reopen.
func testReopen(t *testing.T, s ledger.Store, open Opener, _ uint64) {
	ctx := ctxT(t)
	cl := claim(t, s, 1)
	if _, err := s.Update(ctx, func(context.Context, ledger.Tx) (*ledger.Writes, error) {
		return &ledger.Writes{Offsets: []ledger.Offset{{Partition: 1, Epoch: cl.Epoch, Next: 3}}, Known: []string{"k2", "k1", "k1"},
			Meta: map[string][]byte{"profile": []byte{1, 2, 3}}}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(ctx, func(context.Context, ledger.Tx) (*ledger.Writes, error) {
		return &ledger.Writes{Known: []string{"k1"}, Meta: map[string][]byte{"profile": []byte{4}}}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.JournalNext(ctx); !errors.Is(err, ledger.ErrClosed) {
		t.Fatalf("JournalNext on a closed store: %v", err)
	}
	s2, err := open()
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	known, err := s2.Known(ctx)
	slices.Sort(known)
	if err != nil || !slices.Equal(known, []string{"k1", "k2"}) {
		t.Fatalf("known after reopen: %v, %v", known, err)
	}
	if v, ok, err := s2.Meta(ctx, "profile"); err != nil || !ok || !slices.Equal(v, []byte{4}) {
		t.Fatalf("meta after reopen: %v %v %v", v, ok, err)
	}
	if c := claim(t, s2, 1); c.Epoch != cl.Epoch+1 || c.Next != 3 || !c.Committed {
		t.Fatalf("claim after reopen: %+v (previous epoch %d)", c, cl.Epoch)
	}
}
