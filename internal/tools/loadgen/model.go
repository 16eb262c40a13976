package loadgen

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"time"
)

// Layout is the catalog the traffic runs against: ad i belongs to campaign i % Campaigns,
// campaign j to advertiser j % Advertisers. Setup creates exactly this; a run without setup
// must be given the same numbers as the run that created it.
type Layout struct {
	Ads, Campaigns, Advertisers int
	Prefix                      string // ids are Prefix-ad-N, Prefix-cmp-N, Prefix-adv-N
}

// AdID, CampaignID and AdvertiserID name the objects of the layout.
func (l Layout) AdID(i int) string         { return l.Prefix + "-ad-" + strconv.Itoa(i) }
func (l Layout) CampaignID(j int) string   { return l.Prefix + "-cmp-" + strconv.Itoa(j) }
func (l Layout) AdvertiserID(k int) string { return l.Prefix + "-adv-" + strconv.Itoa(k) }

// CampaignOf and AdvertiserOf give the owner of an ad and of a campaign.
func (l Layout) CampaignOf(ad int) int         { return ad % l.Campaigns }
func (l Layout) AdvertiserOf(campaign int) int { return campaign % l.Advertisers }

func (l Layout) validate() error {
	switch {
	case l.Ads < 1 || l.Ads > 10_000_000:
		return errors.New("ads must be 1-10000000")
	case l.Campaigns < 1 || l.Campaigns > l.Ads:
		return errors.New("campaigns must be 1 to the number of ads")
	case l.Advertisers < 1 || l.Advertisers > l.Campaigns:
		return errors.New("advertisers must be 1 to the number of campaigns")
	case l.Prefix == "" || len(l.Prefix) > 20:
		return errors.New("id prefix must be 1-20 characters")
	}
	for i := 0; i < len(l.Prefix); i++ {
		if c := l.Prefix[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("id prefix %q: only [A-Za-z0-9._-]", l.Prefix)
		}
	}
	return nil
}

// Model is the shape of the traffic. Every choice it implies is drawn from the run's seed.
//
// A view is one impression of an ad (chosen by Zipf popularity) to a user, through one of
// three channels: web (a signed impression pixel GET /i/{token}, then the click URL
// GET /c/{token}), app (the impression in an /events batch, the click as POST /click) or
// server-to-server (both in /events batches). A share of the clicks is followed by add_to_cart
// and then order events in /events batches.
type Model struct {
	ZipfS        float64       // popularity of the ad of rank r is proportional to 1/(r+1)^s
	CTR          float64       // share of people's views that are clicked
	WebShare     float64       // share of views through pixel and click URL
	AppShare     float64       // share through /events and POST /click; the rest is all /events
	CartRate     float64       // share of people's clicks followed by an add_to_cart
	OrderRate    float64       // share of add_to_carts followed by an order
	DoubleClick  float64       // share of clicks sent twice in quick succession
	RetryShare   float64       // share of requests sent again a little later (client retries)
	LateShare    float64       // share of /events lines with an event_time in the past
	Lateness     time.Duration // how far in the past a late line may be (within the server's --max-lateness)
	BotShare     float64       // share of views by crawlers (bot user agents)
	ExpiredShare float64       // share of web clicks on an expired token (only when signing locally)
	Batch        int           // lines per POST /events
	Users        int           // distinct user ids
}

// DefaultModel is a plausible mix: mostly web, a CTR of 5%, 3% bots, and a few percent of
// duplicates and late events.
func DefaultModel() Model {
	return Model{
		ZipfS:        1.1,
		CTR:          0.05,
		WebShare:     0.6,
		AppShare:     0.2,
		CartRate:     0.3,
		OrderRate:    0.3,
		DoubleClick:  0.02,
		RetryShare:   0.01,
		LateShare:    0.05,
		Lateness:     10 * time.Minute,
		BotShare:     0.03,
		ExpiredShare: 0.005,
		Batch:        100,
		Users:        100_000,
	}
}

func (m Model) validate() error {
	for _, p := range [...]struct {
		name string
		v    float64
	}{
		{"ctr", m.CTR}, {"web share", m.WebShare}, {"app share", m.AppShare}, {"cart rate", m.CartRate},
		{"order rate", m.OrderRate}, {"double-click share", m.DoubleClick}, {"retry share", m.RetryShare},
		{"late share", m.LateShare}, {"bot share", m.BotShare}, {"expired share", m.ExpiredShare},
	} {
		if !(p.v >= 0 && p.v <= 1) {
			return fmt.Errorf("%s must be within [0, 1], got %v", p.name, p.v)
		}
	}
	switch {
	case m.WebShare+m.AppShare > 1:
		return errors.New("web share + app share must be at most 1")
	case !(m.ZipfS > 0 && m.ZipfS <= 10):
		return errors.New("zipf s must be within (0, 10]")
	case m.Lateness < 0 || m.Lateness > 24*time.Hour:
		return errors.New("lateness must be within [0, 24h] (and within the server's --max-lateness)")
	case m.LateShare > 0 && m.Lateness < time.Second:
		return errors.New("late share needs a lateness of at least 1s")
	case m.Batch < 1 || m.Batch > 10_000:
		return errors.New("batch must be 1-10000 lines")
	case m.Users < 1 || m.Users > math.MaxInt32:
		return errors.New("users must be at least 1")
	}
	return nil
}

// zipf samples ranks 0..n-1 with P(r) proportional to 1/(r+1)^s. Unlike math/rand's Zipf it
// accepts any s > 0: measured ad popularity is often near s = 1, where that one needs s > 1.
type zipf struct {
	cdf []float64
}

func newZipf(n int, s float64) *zipf {
	cdf := make([]float64, n)
	var sum float64
	for r := range cdf {
		sum += math.Pow(float64(r+1), -s)
		cdf[r] = sum
	}
	for r := range cdf {
		cdf[r] /= sum
	}
	cdf[n-1] = 1 // no rounding gap above the last rank
	return &zipf{cdf: cdf}
}

// sample maps u in [0, 1) to a rank.
func (z *zipf) sample(u float64) int {
	r := sort.SearchFloat64s(z.cdf, u)
	if r >= len(z.cdf) {
		r = len(z.cdf) - 1
	}
	return r
}

// prob is the probability of rank r.
func (z *zipf) prob(r int) float64 {
	if r == 0 {
		return z.cdf[0]
	}
	return z.cdf[r] - z.cdf[r-1]
}

// User agents. People's browsers and apps must not match the server's crawler list; bots
// must (TestUserAgents checks both against internal/ivt).
var (
	browserUAs = [...]string{
		"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
		"Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
		"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
		"Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
		"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51",
	}
	appUAs = [...]string{
		"Dalvik/2.1.0 (Linux; U; Android 14; Pixel 8 Build/UD1A.230803.041)",
		"ShopApp/4.2.1 (iPhone; iOS 17.4; Scale/3.00)",
	}
	botUAs = [...]string{
		"Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
		"Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
		"Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
		"facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
	}
)

// toolUA identifies loadgen's own admin and ingest requests (an ad server's calls).
const toolUA = "adpulse-loadgen/1"
