package aggregate

import (
	"strings"

	"github.com/cespare/xxhash/v2"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/metricstore"
)

// accKey is one ad's minute. Campaign and advertiser are part of the key (not looked up)
// because an event carries them as resolved when it was accepted: if an ad moves, history
// stays where it was.
type accKey struct {
	minute                   int64
	ad, campaign, advertiser string
}

// knownReasons is how many invalid reasons get a fixed slot; others go to a map.
const knownReasons = 4

type accEntry struct {
	impressions, clicks int64
	invalid             [knownReasons]int64
	invalidMore         map[event.Reason]int64
	interactions        []nameCount // few names per ad and minute: a slice beats a map
	// What Options.OnCount has been given of clicks and impressions, and whether the entry
	// changed since (listed in accumulator.touched).
	fedImpressions, fedClicks int64
	touched                   bool
}

type nameCount struct {
	name string
	n    int64
}

// accumulator sums events per ad and minute between commits. One event costs one hash of
// its ad id and a probe or two of an open-addressing table (a Go map keyed by the three ids
// cost twice as much: it hashes all three strings); the campaign and advertiser levels are
// derived at commit time from the much smaller set of entries.
type accumulator struct {
	tab     []int32 // index+1 into keys/entries; 0 = empty; power-of-two size
	mask    uint64
	hashes  []uint64 // per entry
	entries []accEntry
	keys    []accKey

	// Entries are only appended until reset, which is what lets queries index them lazily
	// (live.go) and lets touched name them by position.
	track          bool    // keep touched (Options.OnCount is set)
	touched        []int32 // entries changed since the last feed
	minMin, maxMin int64   // minutes of the entries (valid when there are entries)

	// Built by queries, under live.mu: per level, id -> its entries; indexed entries are in.
	byID    [3]map[string][]int32
	indexed int
}

func newAccumulator() *accumulator {
	a := &accumulator{}
	a.grow(1 << 12)
	return a
}

func (a *accumulator) len() int { return len(a.entries) }

func (a *accumulator) reset() {
	clear(a.tab)
	clear(a.entries) // drop references to maps and names
	a.entries = a.entries[:0]
	clear(a.keys)
	a.keys = a.keys[:0]
	a.hashes = a.hashes[:0]
	a.touched = a.touched[:0]
	for i := range a.byID {
		clear(a.byID[i])
	}
	a.indexed = 0
}

// grow resizes the table to n slots and reinserts the entries.
func (a *accumulator) grow(n int) {
	a.tab = make([]int32, n)
	a.mask = uint64(n - 1)
	for i, h := range a.hashes {
		j := h & a.mask
		for a.tab[j] != 0 {
			j = (j + 1) & a.mask
		}
		a.tab[j] = int32(i + 1)
	}
}

// add counts e (whose strings may alias a read buffer) in its minute. It reports false for
// an event it does not count: an invalid impression or interaction (there is no counter for
// those).
func (a *accumulator) add(e *counted, minute int64) bool {
	// A conversion has no ad of its own: the attribution stage counts it on the ad it credits.
	if e.typ == event.TypeConversion || (e.typ != event.TypeClick && e.invalid != event.ReasonNone) {
		return false
	}
	// Campaign and advertiser follow from the ad almost always, so they are compared but not
	// hashed.
	h := xxhash.Sum64String(e.ad) ^ uint64(minute)*0x9E3779B97F4A7C15
	j := h & a.mask
	var en *accEntry
	var idx int32
	for {
		i := a.tab[j]
		if i == 0 {
			break
		}
		k := &a.keys[i-1]
		if a.hashes[i-1] == h && k.minute == minute && k.ad == e.ad && k.campaign == e.campaign && k.advertiser == e.advertiser {
			en, idx = &a.entries[i-1], i-1
			break
		}
		j = (j + 1) & a.mask
	}
	if en == nil {
		if len(a.entries) == 0 || minute < a.minMin {
			a.minMin = minute
		}
		if len(a.entries) == 0 || minute > a.maxMin {
			a.maxMin = minute
		}
		// New key: its strings must outlive the read buffer.
		a.keys = append(a.keys, accKey{minute, strings.Clone(e.ad), strings.Clone(e.campaign), strings.Clone(e.advertiser)})
		a.hashes = append(a.hashes, h)
		a.entries = append(a.entries, accEntry{})
		a.tab[j] = int32(len(a.entries))
		idx = int32(len(a.entries) - 1)
		en = &a.entries[idx]
		if 2*len(a.entries) > len(a.tab) {
			a.grow(2 * len(a.tab))
		}
	}
	if a.track && !en.touched {
		en.touched = true
		a.touched = append(a.touched, idx)
	}
	switch e.typ {
	case event.TypeImpression:
		en.impressions++
	case event.TypeClick:
		switch {
		case e.invalid == event.ReasonNone:
			en.clicks++
		case int(e.invalid) < knownReasons:
			en.invalid[e.invalid]++
		default:
			if en.invalidMore == nil {
				en.invalidMore = make(map[event.Reason]int64)
			}
			en.invalidMore[e.invalid]++
		}
	case event.TypeInteraction:
		for j := range en.interactions {
			if en.interactions[j].name == e.name {
				en.interactions[j].n++
				return true
			}
		}
		en.interactions = append(en.interactions, nameCount{strings.Clone(e.name), 1})
	}
	return true
}

// levelKey is one id's minute at the campaign or advertiser level.
type levelKey struct {
	minute int64
	id     string
}

// deltas appends the accumulated counts to ds as ad, campaign and advertiser deltas. scratch
// maps are cleared and reused. Events without a campaign or advertiser id are counted at the
// levels they have.
func (a *accumulator) deltas(ds []metricstore.Delta, scratch *[2]map[levelKey]int) []metricstore.Delta {
	for i := range scratch {
		if scratch[i] == nil {
			scratch[i] = make(map[levelKey]int)
		}
		clear(scratch[i])
	}
	for i := range a.entries {
		en, k := &a.entries[i], &a.keys[i]
		if k.ad != "" {
			ds = append(ds, metricstore.Delta{Level: metricstore.LevelAd, ID: k.ad, Minute: k.minute})
			en.addTo(&ds[len(ds)-1].Counts)
		}
		for l, id := range [2]string{k.campaign, k.advertiser} {
			if id == "" {
				continue
			}
			lk := levelKey{k.minute, id}
			j, ok := scratch[l][lk]
			if !ok {
				j = len(ds)
				scratch[l][lk] = j
				ds = append(ds, metricstore.Delta{Level: metricstore.LevelCampaign + metricstore.Level(l), ID: id, Minute: k.minute})
			}
			en.addTo(&ds[j].Counts)
		}
	}
	return ds
}

func (en *accEntry) addTo(c *metricstore.Counts) {
	c.Impressions += en.impressions
	c.Clicks += en.clicks
	for r, n := range en.invalid {
		if n != 0 {
			c.AddInvalid(event.Reason(r), n)
		}
	}
	for r, n := range en.invalidMore {
		c.AddInvalid(r, n)
	}
	for _, nc := range en.interactions {
		c.AddInteraction(nc.name, nc.n)
	}
}
