package ingest

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/cespare/xxhash/v2"
)

// Hot ads. An ad that takes a large share of the traffic would make its one partition, and the
// one process node that owns it, the bottleneck. Each Intake watches the share of each ad in
// what it appends and salts an ad it finds hot over Salts partitions: the event goes to
// partition (home + hash(key) mod Salts) mod P, where home is the ad's usual partition.
//
// Why this keeps counts exact (docs/design.md, "Partitioning and hot ads"): the partition of a
// copy depends on when and where it is sent, so two copies of one event could land in two
// partitions, where the stages' per-partition duplicate filter (dedup.Window) would not see
// both. A second copy reaches the log only if the dedup store let it through, that is if the
// store did not know the first copy was durable. The embedded store (dedup.Memory) always
// knows, except after the resolver released a key whose append may still land late; such a
// key is pinned to the partition its first copy was sent to, and every later copy follows
// it. A store that forgets durable keys (redisdedup, whose reservations expire) cannot be
// salted over, and the configuration refuses it.
//
// Detection is local to each Intake and needs no agreement: counts are exact whatever any
// node decides, so the decision only has to be good for throughput.

// HotOptions configure hot-ad detection and salting. Salting is off when Salts < 2.
type HotOptions struct {
	// Salts is how many partitions a hot ad is spread over (at most the log's partitions).
	Salts int
	// Share is the fraction of the events of one interval above which an ad turns hot
	// (default 0.2). A hot ad stays hot while its share is at least Share/2, and for
	// Cooldown after it fell below.
	Share float64
	// MinEvents is the number of events an interval must hold before any ad is judged hot
	// (default 1000), so a quiet node never salts.
	MinEvents int64
	// Interval is the span of one count (default 1 s).
	Interval time.Duration
	// Cooldown is how long an ad stays salted after it stopped qualifying (default 1 min):
	// hysteresis, so an ad near the threshold does not flap.
	Cooldown time.Duration
	// Tracked bounds the ads counted per interval (default 4096); an ad first seen when the
	// table is full is not counted in that interval. A hot ad is seen early in every
	// interval, so the bound costs nothing but keeps memory fixed.
	Tracked int
	// PinTTL is how long a key released by the resolver keeps its first partition (default
	// 25 h: longer than any dedup window in use; set it to the stream dedup window).
	PinTTL time.Duration
	// MaxPins bounds the pinned keys (default 1,000,000). Pins come only from appends with
	// an unknown outcome; past the bound the oldest go first.
	MaxPins int
}

func (o *HotOptions) defaults() {
	if o.Share <= 0 || o.Share > 1 {
		o.Share = 0.2
	}
	if o.MinEvents <= 0 {
		o.MinEvents = 1000
	}
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.Cooldown < 0 {
		o.Cooldown = 0
	} else if o.Cooldown == 0 {
		o.Cooldown = time.Minute
	}
	if o.Tracked <= 0 {
		o.Tracked = 4096
	}
	if o.PinTTL <= 0 {
		o.PinTTL = 25 * time.Hour
	}
	if o.MaxPins <= 0 {
		o.MaxPins = 1_000_000
	}
}

// hotAds detects hot ads and places events. Lock order: mu, then pinMu (never both held).
type hotAds struct {
	o HotOptions

	mu     sync.Mutex
	start  time.Time        // of the current interval
	counts map[string]int64 // events per ad in the current interval
	total  int64
	until  map[string]time.Time // hot ads and when they stop being hot unless seen again

	hot atomic.Pointer[map[string]struct{}] // read without a lock on the hot path

	pinMu   sync.Mutex
	pins    map[string]pin
	pinList []pinned // in pinning order, for expiry and the bound
	npins   atomic.Int64

	salted, transitions atomic.Int64
}

type pin struct {
	partition int32
	expires   time.Time
}

type pinned struct {
	key     string
	expires time.Time
}

func newHotAds(o HotOptions) *hotAds {
	o.defaults()
	h := &hotAds{o: o, counts: make(map[string]int64), until: make(map[string]time.Time), pins: make(map[string]pin)}
	empty := map[string]struct{}{}
	h.hot.Store(&empty)
	return h
}

// saltedPartition is the partition of a hot ad's event: its salt is the hash of the event's
// idempotency key, so every copy of one event gets the same salt, and home is one of the k.
func saltedPartition(home int32, key string, salts, partitions int) int32 {
	k := min(salts, partitions)
	return int32((uint64(home) + xxhash.Sum64String(key)%uint64(k)) % uint64(partitions))
}

// place returns the partition of an event whose key is key and whose usual partition is home.
func (h *hotAds) place(e *event.Event, key string, home int32, partitions int) int32 {
	if h.npins.Load() > 0 {
		h.pinMu.Lock()
		p, ok := h.pins[key]
		h.pinMu.Unlock()
		if ok {
			return p.partition
		}
	}
	if e.Type == event.TypeConversion || h.o.Salts < 2 || partitions < 2 {
		return home // a conversion has no ad: it stays with its user
	}
	if _, ok := (*h.hot.Load())[e.AdID]; !ok {
		return home
	}
	h.salted.Add(1)
	return saltedPartition(home, key, h.o.Salts, partitions)
}

// observe counts the ads of a batch appended at now, and closes the interval when it is over.
func (h *hotAds) observe(evs []event.Event, out []Outcome, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.start.IsZero() {
		h.start = now
	}
	if now.Sub(h.start) >= h.o.Interval {
		h.closeInterval(now)
	}
	for i := range evs {
		if out[i] != Accepted || evs[i].Type == event.TypeConversion {
			continue
		}
		h.total++
		if n, ok := h.counts[evs[i].AdID]; ok || len(h.counts) < h.o.Tracked {
			h.counts[evs[i].AdID] = n + 1
		}
	}
}

// closeInterval judges the interval that ends at now and starts the next.
func (h *hotAds) closeInterval(now time.Time) {
	changed := false
	if h.total >= h.o.MinEvents {
		for ad, n := range h.counts {
			share := float64(n) / float64(h.total)
			_, isHot := h.until[ad]
			if share >= h.o.Share || (isHot && share >= h.o.Share/2) {
				if !isHot {
					changed = true
					h.transitions.Add(1)
				}
				h.until[ad] = now.Add(h.o.Cooldown)
			}
		}
	}
	for ad, t := range h.until {
		if !now.Before(t) {
			delete(h.until, ad)
			h.transitions.Add(1)
			changed = true
		}
	}
	if changed {
		hot := make(map[string]struct{}, len(h.until))
		for ad := range h.until {
			hot[ad] = struct{}{}
		}
		h.hot.Store(&hot)
	}
	clear(h.counts)
	h.total = 0
	h.start = now
}

// pin keeps keys on the partitions their copies were sent to: keys the resolver released,
// whose copies may still land in the log.
func (h *hotAds) pin(keys []string, partitions []int32, now time.Time) {
	h.pinMu.Lock()
	defer h.pinMu.Unlock()
	exp := now.Add(h.o.PinTTL)
	for i, k := range keys {
		h.pins[k] = pin{partition: partitions[i], expires: exp}
		h.pinList = append(h.pinList, pinned{k, exp})
	}
	// Drop expired pins and, past the bound, the oldest.
	drop := 0
	for drop < len(h.pinList) && (len(h.pins) > h.o.MaxPins || !now.Before(h.pinList[drop].expires)) {
		p := h.pinList[drop]
		if cur, ok := h.pins[p.key]; ok && cur.expires.Equal(p.expires) {
			delete(h.pins, p.key)
		}
		drop++
	}
	h.pinList = append(h.pinList[:0], h.pinList[drop:]...)
	h.npins.Store(int64(len(h.pins)))
}

// HotStats describes hot-ad salting.
type HotStats struct {
	HotAds      int   // ads salted now
	Salted      int64 // events placed on a salted partition
	Transitions int64 // ads turning hot or cold
	Pinned      int64 // keys kept on their first partition
}

func (h *hotAds) stats() HotStats {
	return HotStats{HotAds: len(*h.hot.Load()), Salted: h.salted.Load(), Transitions: h.transitions.Load(), Pinned: h.npins.Load()}
}
