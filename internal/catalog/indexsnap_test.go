package catalog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"testing"
)

// encodeIndex returns x's part of a snapshot, for records naming campaigns below ncamp.
func encodeIndex(tb testing.TB, x *adIndex, ncamp uint32) []byte {
	tb.Helper()
	var buf bytes.Buffer
	e := &snapEncoder{w: &buf}
	if _, err := x.writeSnapshot(e, ncamp); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

func decodeIndexBytes(b []byte, ncamp uint32) (*adIndex, error) {
	x := newAdIndex()
	d := newSnapDecoder(bytes.NewReader(b))
	if err := x.readSnapshot(d, ncamp); err != nil {
		return nil, err
	}
	if _, err := d.r.ReadByte(); err == nil {
		return nil, errors.New("bytes left after the ads")
	}
	return x, nil
}

// indexAds returns every ad of x, id to record, read through the slots.
func indexAds(x *adIndex) map[string]adRec {
	ads := map[string]adRec{}
	for i := range x.shards {
		t := x.shards[i].tab.Load()
		if t == nil {
			continue
		}
		for j := range t.slots {
			if v := t.slots[j].Load(); v != 0 {
				r := t.rec(v)
				ads[string(recID(r))] = decodeRec(r)
			}
		}
	}
	return ads
}

// TestIndexSnapshotRoundTrip: an index read from its snapshot resolves every ad as the
// original does, holds no garbage, and takes writes (growth, updates, compaction) after.
func TestIndexSnapshotRoundTrip(t *testing.T) {
	const n, campaigns = 30_000, 50
	c := memCatalog(campaigns)
	fillIndex(t, c, n, campaigns)
	pad := strings.Repeat("p", 200)
	for r := range 2 { // updates leave garbage behind
		for i := r; i < n; i += 2 {
			if err := c.ads.put(benchAdID(i), uint32(i%campaigns), "https://updated.example/"+pad+strconv.Itoa(i), "", 7, true); err != nil {
				t.Fatal(err)
			}
		}
	}
	x, err := decodeIndexBytes(encodeIndex(t, c.ads, campaigns), campaigns)
	if err != nil {
		t.Fatal(err)
	}
	if x.seed != c.ads.seed || x.len() != n {
		t.Fatalf("seed %x (want %x), %d ads (want %d)", x.seed, c.ads.seed, x.len(), n)
	}
	for i := range n {
		want, _ := c.ads.get(benchAdID(i))
		got, ok := x.get(benchAdID(i))
		if !ok || got != want {
			t.Fatalf("ad %d: %+v, %v; want %+v", i, got, ok, want)
		}
	}
	if _, ok := x.get("missing"); ok {
		t.Error("an ad never written is found")
	}
	for i := range x.shards {
		sh := &x.shards[i]
		live := 0
		if t := sh.tab.Load(); t != nil {
			for j := range t.slots {
				if v := t.slots[j].Load(); v != 0 {
					live += recLen(t.rec(v))
				}
			}
		}
		if sh.garbage != 0 || sh.written != live {
			t.Errorf("shard %d: %d bytes of garbage and %d written after a load, %d live", i, sh.garbage, sh.written, live)
		}
	}
	if b := x.bytes.Load(); b <= 0 || b >= c.ads.bytes.Load() {
		t.Errorf("index bytes %d after the load, %d before: the garbage should be gone", b, c.ads.bytes.Load())
	}
	// Writes after the load: new ads (the tables grow), updates (garbage, then compactions).
	for r := range 5 {
		for i := range n + 5000 {
			if i%7 != r {
				continue
			}
			if err := x.put(benchAdID(i), uint32(i%campaigns), "https://after.example/"+strconv.Itoa(r), "", 0, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := range n + 5000 {
		got, ok := x.get(benchAdID(i))
		switch {
		case i%7 < 5:
			if !ok || got.tail != "https://after.example/"+strconv.Itoa(i%7) {
				t.Fatalf("ad %d after writes: %+v, %v", i, got, ok)
			}
		case ok != (i < n):
			t.Fatalf("ad %d: found %v", i, ok)
		}
	}
}

// TestIndexSnapshotLeavesOutLateAds: ads naming campaigns created after the snapshot's copy
// of the campaigns are left out, and every other ad is still found (leaving a slot word out
// must not cut a probe chain).
func TestIndexSnapshotLeavesOutLateAds(t *testing.T) {
	const n, campaigns, ncamp = 20_000, 10, 7
	c := memCatalog(campaigns)
	fillIndex(t, c, n, campaigns)
	x, err := decodeIndexBytes(encodeIndex(t, c.ads, ncamp), ncamp)
	if err != nil {
		t.Fatal(err)
	}
	kept := 0
	for i := range n {
		rec, ok := x.get(benchAdID(i))
		late := i%campaigns >= ncamp
		if ok == late {
			t.Fatalf("ad %d of campaign %d: found %v", i, i%campaigns, ok)
		}
		if ok {
			kept++
			if want, _ := c.ads.get(benchAdID(i)); rec != want {
				t.Fatalf("ad %d: %+v, want %+v", i, rec, want)
			}
		}
	}
	if x.len() != kept {
		t.Errorf("%d ads counted, %d found", x.len(), kept)
	}
}

// TestIndexSnapshotRefusesBadLayouts: a whole file with a bad layout (as a buggy writer or a
// hand could produce) is refused, not loaded into an index that could panic or loop.
func TestIndexSnapshotRefusesBadLayouts(t *testing.T) {
	c := memCatalog(3)
	c.ads.seed = 1 // the same ads in shard 0 every run
	fillIndex(t, c, 2000, 3)
	good := encodeIndex(t, c.ads, 3)
	if _, err := decodeIndexBytes(good, 3); err != nil {
		t.Fatal(err)
	}
	// Find shard 0's slot words: after the seed, its chunks (length, bytes, ..., 0), the
	// slot count and the ad count.
	d := newSnapDecoder(bytes.NewReader(good[8:]))
	for l := d.uvar(); l != 0; l = d.uvar() {
		d.full(make([]byte, l))
	}
	nslots, nads := d.count(), d.count()
	r := d.r.(*bytes.Reader)
	slotsAt := len(good) - r.Len()
	counts := slotsAt - len(binary.AppendUvarint(binary.AppendUvarint(nil, uint64(nslots)), uint64(nads)))
	word := func(b []byte, j int) []byte { return b[slotsAt+8*j : slotsAt+8*j+8] }
	var occupied []int
	for j := range nslots {
		if binary.LittleEndian.Uint64(word(good, j)) != 0 {
			occupied = append(occupied, j)
		}
	}
	edit := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	setWord := func(j int, v func(old uint64) uint64) []byte {
		return edit(func(b []byte) []byte {
			w := word(b, j)
			binary.LittleEndian.PutUint64(w, v(binary.LittleEndian.Uint64(w)))
			return b
		})
	}
	splice := func(from, to int, with ...byte) []byte {
		return append(append(append([]byte(nil), good[:from]...), with...), good[to:]...)
	}
	setCounts := func(slots, ads int) []byte {
		return splice(counts, slotsAt, binary.AppendUvarint(binary.AppendUvarint(nil, uint64(slots)), uint64(ads))...)
	}
	first, second := occupied[0], occupied[1]
	cases := map[string][]byte{
		"offset past the chunks":   setWord(first, func(v uint64) uint64 { return v | 0xffff0000 }),
		"offset zero":              setWord(first, func(v uint64) uint64 { return v >> 32 << 32 }),
		"offset in the last bytes": setWord(first, func(v uint64) uint64 { return v>>32<<32 | chunkSize - 2 }),
		"two words at one record": setWord(second, func(v uint64) uint64 {
			return v>>32<<32 | uint64(uint32(binary.LittleEndian.Uint64(word(good, first))))
		}),
		"one ad more than the slots":  setCounts(nslots, nads+1),
		"one ad less than the slots":  setCounts(nslots, nads-1),
		"a table without empty slots": setCounts(nads, nads),
		"far too many slots":          setCounts(1<<30, nads),
		"an empty shard with a chunk": splice(counts, slotsAt, 0),
		"a chunk length past a chunk": splice(8, 8+uvarLen(good[8:]), binary.AppendUvarint(nil, chunkSize+1)...),
		"a tiny chunk before another": splice(8, 8, 1, 0), // only a shard's last chunk may be short
		"a trailing byte":             append(append([]byte(nil), good...), 0),
		"truncated in the slot words": good[:slotsAt+4],
		"truncated before the seed":   good[:5],
	}
	for name, b := range cases {
		if _, err := decodeIndexBytes(b, 3); err == nil {
			t.Errorf("%s: loaded", name)
		}
	}
	// ncamp 0: every record names a campaign the snapshot does not hold.
	if _, err := decodeIndexBytes(good, 0); err == nil {
		t.Error("records naming campaigns past ncamp loaded")
	}
}

func uvarLen(b []byte) int {
	_, n := binary.Uvarint(b)
	return n
}

// FuzzIndexSnapshot: whatever the ads' part of a snapshot holds, reading it either fails or
// gives an index whose lookups and writes work: no panic, no endless probe, and an ad written
// after the load is read back.
func FuzzIndexSnapshot(f *testing.F) {
	for _, n := range []int{0, 1, 40, 400} {
		c := memCatalog(3)
		fillIndex(f, c, n, 3)
		f.Add(encodeIndex(f, c.ads, 3))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := decodeIndexBytes(b, 3)
		if err != nil {
			return
		}
		ads := indexAds(x)
		if len(ads) > x.len() {
			t.Fatalf("%d ids in the slots, %d ads counted", len(ads), x.len())
		}
		for id := range ads {
			x.get(id)
		}
		x.get("ad-never-written")
		for i := range 3 {
			id := "fuzz-" + strconv.Itoa(i)
			if err := x.put(id, 1, "https://f.example/", "sku", 5, true); err != nil {
				t.Fatal(err)
			}
			if got, ok := x.get(id); !ok || got.tail != "skuhttps://f.example/" || got.bid != 5 {
				t.Fatalf("%s after a put: %+v, %v", id, got, ok)
			}
		}
		for id := range ads {
			if err := x.put(id, 2, "https://g.example/", "", 0, false); err != nil {
				t.Fatal(err)
			}
			if got, ok := x.get(id); !ok || got.tail != "https://g.example/" {
				t.Fatalf("%s after an update: %+v, %v", id, got, ok)
			}
		}
	})
}
