// Package ivtgen generates labelled ad traffic for measuring the invalid-traffic rules: people
// browsing (the negatives) and four kinds of invalid traffic (the positives):
//
//   - Human: people who see impressions and now and then click one, seconds later, a few ads in
//     ten minutes; several share a household or mobile-carrier address.
//   - Flood: one bot hammering a few ads for a minute, several clicks a second, each with an
//     impression first; some rotate user ids behind one address, some rotate addresses on one
//     device.
//   - DatacenterBot: a script in a cloud that browses like a person (impressions, human
//     delays) from a data-centre address: only its address gives it away.
//   - DripFraud: click injection, slow enough to stay under every flood limit: one click every
//     15-45 seconds on ever new ads, half of them with no impression at all and half a few
//     milliseconds after one.
//
// Generate is deterministic for a seed, and every event carries its label, so a test can
// report the precision and recall of the rules on it (Score). Addresses of people come from
// residential-looking space (never a data-centre range or a documentation range).
package ivtgen

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"time"

	"github.com/adpulse/adpulse/internal/event"
)

// Label is the ground truth of an event.
type Label uint8

// Labels.
const (
	Human Label = iota
	Flood
	DatacenterBot
	DripFraud
)

// Labels lists every label.
var Labels = []Label{Human, Flood, DatacenterBot, DripFraud}

func (l Label) String() string {
	return [...]string{"human", "flood", "datacenter_bot", "drip_fraud"}[l]
}

// Event is a generated event, its label and the user agent it was sent with.
type Event struct {
	event.Event
	Label     Label
	UserAgent string
}

// Ad is an ad the traffic is about.
type Ad struct{ AdID, CampaignID, AdvertiserID string }

// Config shapes the traffic. Zero values take the defaults in brackets.
type Config struct {
	Seed     uint64
	Start    time.Time     // [2026-01-01T00:00:00Z]
	Duration time.Duration // [10 minutes]
	Ads      []Ad          // [50 ads over 5 campaigns of 2 advertisers]
	// Humans, Floods, DatacenterBots and Drips are how many sources of each kind there are
	// [2000, 4, 5, 5].
	Humans, Floods, DatacenterBots, Drips int
}

func (c *Config) setDefaults() {
	if c.Start.IsZero() {
		c.Start = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	if c.Duration <= 0 {
		c.Duration = 10 * time.Minute
	}
	if len(c.Ads) == 0 {
		for i := range 50 {
			c.Ads = append(c.Ads, Ad{AdID: fmt.Sprintf("ad-%d", i), CampaignID: fmt.Sprintf("camp-%d", i%5), AdvertiserID: fmt.Sprintf("adv-%d", i%2)})
		}
	}
	if c.Humans == 0 && c.Floods == 0 && c.DatacenterBots == 0 && c.Drips == 0 {
		c.Humans, c.Floods, c.DatacenterBots, c.Drips = 2000, 4, 5, 5
	}
}

var browsers = []string{
	"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
	"Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
	"Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
	"Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
	"Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
}

// datacenterAddrs are in ranges of the embedded data-centre list (aws, gcp, hetzner).
var datacenterAddrs = []string{"3.80.1.10", "3.120.7.1", "13.56.9.9", "34.80.4.4", "35.190.2.2"}

type gen struct {
	cfg  Config
	r    *rand.Rand
	out  []Event
	n    int // impression/click id counter
	base int64
}

// Generate returns the traffic of cfg ordered by event time (then generation order).
func Generate(cfg Config) []Event {
	cfg.setDefaults()
	g := &gen{cfg: cfg, r: rand.New(rand.NewPCG(cfg.Seed, 0x1e7)), base: cfg.Start.UnixMicro()}
	for i := range cfg.Humans {
		g.human(i)
	}
	for i := range cfg.Floods {
		g.flood(i)
	}
	for i := range cfg.DatacenterBots {
		g.datacenterBot(i)
	}
	for i := range cfg.Drips {
		g.drip(i)
	}
	slices.SortStableFunc(g.out, func(a, b Event) int {
		switch {
		case a.Time < b.Time:
			return -1
		case a.Time > b.Time:
			return 1
		}
		return 0
	})
	return g.out
}

func (g *gen) span() int64 { return g.cfg.Duration.Microseconds() }

func (g *gen) ad() Ad { return g.cfg.Ads[g.r.IntN(len(g.cfg.Ads))] }

func (g *gen) emit(typ event.Type, label Label, at int64, ad Ad, imp, user, ip, device, ua string) {
	e := Event{Label: label, UserAgent: ua}
	e.Type, e.Time, e.RecvTime = typ, at, at
	e.AdID, e.CampaignID, e.AdvertiserID = ad.AdID, ad.CampaignID, ad.AdvertiserID
	e.ImpressionID, e.UserID, e.SourceIP, e.DeviceID = imp, user, ip, device
	g.out = append(g.out, e)
}

func (g *gen) impID(prefix string) string {
	g.n++
	return fmt.Sprintf("%s-%d", prefix, g.n)
}

// residential is a person's address: a household in 81.0.0.0/8 or 92.0.0.0/8 (a few people
// each), or a mobile carrier's shared 100.64.0.0/10 address.
func residential(i int) string {
	home := i / 3 // three people per household
	if i%7 == 6 {
		return netip.AddrFrom4([4]byte{100, 64 + byte(home%60), byte(home / 60 % 256), 1}).String()
	}
	first := byte(81)
	if home%2 == 1 {
		first = 92
	}
	return netip.AddrFrom4([4]byte{first, byte(home >> 16), byte(home >> 8), byte(home)}).String()
}

func (g *gen) human(i int) {
	user := fmt.Sprintf("u-%d", i)
	ip := residential(i)
	ua := browsers[g.r.IntN(len(browsers))]
	device := fmt.Sprintf("dev-h%d", i)
	t := g.base + g.r.Int64N(g.span())
	clicks := 0
	for t < g.base+g.span() {
		ad := g.ad()
		imp := g.impID("h")
		g.emit(event.TypeImpression, Human, t, ad, imp, user, ip, device, ua)
		if clicks < 3 && g.r.IntN(8) == 0 {
			g.emit(event.TypeClick, Human, t+2e6+g.r.Int64N(30e6), ad, imp, user, ip, device, ua)
			clicks++
		}
		t += 5e6 + g.r.Int64N(60e6)
	}
}

func (g *gen) flood(i int) {
	ua := browsers[i%len(browsers)]
	ip := netip.AddrFrom4([4]byte{81, 250, byte(i), 7}).String()
	device := fmt.Sprintf("dev-f%d", i)
	t := g.base + g.r.Int64N(g.span()/2)
	end := t + 60e6
	ads := []Ad{g.ad(), g.ad(), g.ad()}
	for k := 0; t < end; k++ {
		user := fmt.Sprintf("uf-%d", i)
		switch i % 3 {
		case 1:
			user = fmt.Sprintf("uf-%d-%d", i, k) // rotates user ids behind one address
		case 2:
			ip = netip.AddrFrom4([4]byte{92, 250, byte(i), byte(k)}).String() // rotates addresses on one device
		}
		ad := ads[k%len(ads)]
		imp := g.impID("f")
		g.emit(event.TypeImpression, Flood, t, ad, imp, user, ip, device, ua)
		g.emit(event.TypeClick, Flood, t+1e6+g.r.Int64N(500e3), ad, imp, user, ip, device, ua)
		t += 150e3 + g.r.Int64N(200e3)
	}
}

func (g *gen) datacenterBot(i int) {
	ip := datacenterAddrs[i%len(datacenterAddrs)]
	user := fmt.Sprintf("ud-%d", i)
	device := fmt.Sprintf("dev-d%d", i)
	ua := browsers[0]
	for t := g.base + g.r.Int64N(20e6); t < g.base+g.span(); t += 10e6 + g.r.Int64N(20e6) {
		ad := g.ad()
		imp := g.impID("d")
		g.emit(event.TypeImpression, DatacenterBot, t, ad, imp, user, ip, device, ua)
		if g.r.IntN(3) == 0 {
			g.emit(event.TypeClick, DatacenterBot, t+3e6+g.r.Int64N(10e6), ad, imp, user, ip, device, ua)
		}
	}
}

func (g *gen) drip(i int) {
	user := fmt.Sprintf("ur-%d", i)
	ip := netip.AddrFrom4([4]byte{92, 251, byte(i), 9}).String()
	device := fmt.Sprintf("dev-r%d", i)
	ua := browsers[(i+2)%len(browsers)]
	perm := g.r.Perm(len(g.cfg.Ads))
	k := 0
	for t := g.base + g.r.Int64N(30e6); t < g.base+g.span(); t += 15e6 + g.r.Int64N(30e6) {
		ad := g.cfg.Ads[perm[k%len(perm)]]
		k++
		imp := g.impID("r")
		if k%2 == 0 {
			// An impression the injector fires itself, and the click milliseconds later.
			g.emit(event.TypeImpression, DripFraud, t, ad, imp, user, ip, device, ua)
			g.emit(event.TypeClick, DripFraud, t+20e3+g.r.Int64N(100e3), ad, imp, user, ip, device, ua)
		} else {
			g.emit(event.TypeClick, DripFraud, t, ad, imp, user, ip, device, ua)
		}
	}
}
