package dedup

import (
	"bytes"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// TestReadKeysModel writes snapshots of shards filled with keys crafted to share home slots
// and to wrap past the table's end (as TestMemoryShardModel's), reads them back, and checks
// each shard against the model and its Robin Hood invariants (checkShard): the entries are
// placed by their order without probing, so a wrong place would leave a key that lookups
// miss. Besides WriteKeys' own output it reads snapshots whose entries are shuffled, or hold
// a key twice (the later expiry is kept, in whichever order they are read), which take the general path.
func TestReadKeysModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 29))
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	nowMin := uint32(now.Unix() / 60)
	for round := range 40 {
		const shard = 3
		// Even rounds crowd keys onto a few homes (read the general way: too far from the
		// first words' order), odd ones spread them as hashes do, with a few at the last
		// slots so that a run wraps (read by placeSorted).
		crowd := round%2 == 0
		keyOf := func() memKey {
			var lo uint64
			r := rng.IntN(4)
			if !crowd {
				r = 3
				if rng.IntN(50) == 0 {
					r = 0
				}
			}
			switch r {
			case 0:
				lo = math.MaxUint64 - uint64(rng.IntN(1<<40)) // homes at the last slots
			case 1:
				lo = uint64(rng.IntN(3))<<62 | uint64(rng.IntN(1<<16))
			case 2:
				lo = uint64(rng.IntN(1 << 12)) // home 0
			default:
				lo = rng.Uint64()
				if crowd {
					lo >>= uint(rng.IntN(64))
				}
			}
			lo = lo&^(memShards-1) | shard
			return fingerprint{lo, uint64(rng.IntN(3)) << 32}.key()
		}
		src := NewMemory(time.Hour)
		model := map[memKey]uint32{}
		for range rng.IntN(3000) {
			k, exp := keyOf(), nowMin-5+uint32(rng.IntN(20)) // some expired at now
			src.shards[shard].put(k, exp)
			if exp > nowMin {
				model[k] = exp
			} else {
				delete(model, k)
			}
		}
		var snap bytes.Buffer
		// Written a minute before now, so the keys expiring in between are in the file and
		// must be skipped on reading.
		if _, err := src.WriteKeys(&snap, now.Add(-5*time.Minute)); err != nil {
			t.Fatal(err)
		}
		variants := map[string][]byte{"as written": snap.Bytes()}
		if entries := shardEntries(t, snap.Bytes(), shard); len(entries) > 1 {
			shuffled := bytes.Clone(entries)
			rng.Shuffle(len(shuffled)/snapEntry, func(i, j int) {
				a, b := shuffled[i*snapEntry:(i+1)*snapEntry], shuffled[j*snapEntry:(j+1)*snapEntry]
				var tmp [snapEntry]byte
				copy(tmp[:], a)
				copy(a, b)
				copy(b, tmp[:])
			})
			variants["shuffled"] = withShard(snap.Bytes(), shard, shuffled)
			// The first entry again after the last, with a later expiry.
			twice := append(bytes.Clone(entries), entries[:snapEntry]...)
			binary.LittleEndian.PutUint32(twice[len(twice)-4:], nowMin+100)
			variants["a key twice"] = withShard(snap.Bytes(), shard, twice)
		}
		for name, b := range variants {
			want := model
			if name == "a key twice" {
				want = map[memKey]uint32{}
				for k, v := range model {
					want[k] = v
				}
				fp, _ := snapEntryAt(shardEntries(t, b, shard), 0)
				want[fp.key()] = nowMin + 100
			}
			m := NewMemory(time.Hour)
			n, err := m.ReadKeys(bytes.NewReader(b), now)
			if err != nil {
				t.Fatalf("round %d, %s: %v", round, name, err)
			}
			if n != int64(len(want)) || m.Len() != int64(len(want)) {
				t.Fatalf("round %d, %s: read %d keys, holds %d; want %d", round, name, n, m.Len(), len(want))
			}
			t.Run("", func(t *testing.T) { checkShard(t, &m.shards[shard], want) })
			if t.Failed() {
				t.Fatalf("round %d, %s (seed above)", round, name)
			}
		}
	}
}

// shardEntries returns the entries of shard in the snapshot b.
func shardEntries(t *testing.T, b []byte, shard int) []byte {
	t.Helper()
	for i := range memShards {
		n := int(binary.LittleEndian.Uint32(b))
		if i == shard {
			return b[4 : 4+n*snapEntry]
		}
		b = b[4+n*snapEntry:]
	}
	t.Fatal("no such shard")
	return nil
}

// withShard returns the snapshot b with shard's entries replaced.
func withShard(b []byte, shard int, entries []byte) []byte {
	var out []byte
	for i := range memShards {
		n := int(binary.LittleEndian.Uint32(b))
		if i == shard {
			out = binary.LittleEndian.AppendUint32(out, uint32(len(entries)/snapEntry))
			out = append(out, entries...)
		} else {
			out = append(out, b[:4+n*snapEntry]...)
		}
		b = b[4+n*snapEntry:]
	}
	return out
}
