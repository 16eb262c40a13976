package loadgen

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/testseed"

	"github.com/adpulse/adpulse/internal/clicktoken"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/ivt"
)

// testSeed returns the seed of a randomized test (ADPULSE_TEST_SEED replays one) and logs it.
// testSeed is the repository's seed convention (internal/testseed).
func testSeed(t *testing.T) uint64 { return testseed.Seed(t) }

func TestZipf(t *testing.T) {
	for _, tc := range []struct {
		n int
		s float64
	}{{1, 1}, {10, 0.8}, {1000, 1.1}, {50, 2}} {
		z := newZipf(tc.n, tc.s)
		var sum float64
		for r := 0; r < tc.n; r++ {
			p := z.prob(r)
			if r > 0 && p > z.prob(r-1)+1e-15 {
				t.Fatalf("n=%d s=%v: P(%d)=%v > P(%d)", tc.n, tc.s, r, p, r-1)
			}
			if want := math.Pow(float64(r+1), -tc.s) / math.Pow(1, -tc.s) * z.prob(0); math.Abs(p-want) > 1e-9 {
				t.Fatalf("n=%d s=%v: P(%d)=%v, want %v", tc.n, tc.s, r, p, want)
			}
			sum += p
		}
		if math.Abs(sum-1) > 1e-9 {
			t.Fatalf("n=%d s=%v: probabilities sum to %v", tc.n, tc.s, sum)
		}
		if z.sample(0) != 0 || z.sample(math.Nextafter(1, 0)) != tc.n-1 {
			t.Fatalf("n=%d: sample(0)=%d sample(1-)=%d", tc.n, z.sample(0), z.sample(math.Nextafter(1, 0)))
		}
		// Sampled frequencies of the hottest ranks follow the distribution (fixed seed: this
		// is a check of the sampler, not a statistical test that may flake).
		rng := rand.New(rand.NewPCG(1, 2))
		const draws = 200_000
		hits := make([]int, tc.n)
		for range draws {
			hits[z.sample(rng.Float64())]++
		}
		for r := 0; r < min(tc.n, 3); r++ {
			got, want := float64(hits[r])/draws, z.prob(r)
			if math.Abs(got-want) > 0.01 {
				t.Errorf("n=%d s=%v: rank %d drawn %.4f of the time, want %.4f", tc.n, tc.s, r, got, want)
			}
		}
	}
}

// fixedClock returns a clock that advances 1ms per call from t0.
func fixedClock(t0 time.Time) func() time.Time {
	n := 0
	return func() time.Time {
		n++
		return t0.Add(time.Duration(n) * time.Millisecond)
	}
}

type genReq struct {
	Kind  Kind
	UA    string
	Tok   string
	Body  string
	Lines []lineRef
	Dup   dupKind
}

func generate(t *testing.T, seed uint64, m Model, lay Layout, signed bool, n int) ([]genReq, *generator) {
	t.Helper()
	var kr *clicktoken.Keyring
	if signed {
		var err error
		if kr, err = clicktoken.ParseKeyring(testSecret); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	l := newLedger(floorDiv(t0.Unix(), 60) - 30)
	g := newGenerator(seed, m, lay, kr, l, "run1", fixedClock(t0))
	out := make([]genReq, n)
	for i := range out {
		r := g.next()
		out[i] = genReq{Kind: r.kind, UA: r.ua, Body: string(r.body), Lines: r.lines, Dup: r.dup}
		if r.tok != nil {
			select {
			case <-r.tok.done:
				out[i].Tok = r.tok.tok
			default:
			}
		}
	}
	return out, g
}

var testLayout = Layout{Ads: 200, Campaigns: 20, Advertisers: 4, Prefix: "lg"}

func TestGeneratorIsDeterministic(t *testing.T) {
	m := DefaultModel()
	m.RetryShare, m.DoubleClick = 0.05, 0.1
	for _, signed := range []bool{false, true} {
		a, _ := generate(t, 42, m, testLayout, signed, 5000)
		b, _ := generate(t, 42, m, testLayout, signed, 5000)
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("signed=%v: two generators with seed 42 differ", signed)
		}
		c, _ := generate(t, 43, m, testLayout, signed, 5000)
		if reflect.DeepEqual(a, c) {
			t.Fatalf("signed=%v: seeds 42 and 43 generate the same requests", signed)
		}
	}
}

// TestGeneratorMix checks that a run contains every kind of traffic the model promises, and
// that what it sends is well formed.
func TestGeneratorMix(t *testing.T) {
	m := DefaultModel()
	m.ExpiredShare = 0.05
	reqs, g := generate(t, testSeed(t), m, testLayout, true, 30_000)
	byKind := map[Kind]int{}
	dups := map[dupKind]int{}
	adHits := map[string]int{}
	t0 := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	kr, _ := clicktoken.ParseKeyring(testSecret)
	var lines, withTime, late int
	for _, r := range reqs {
		byKind[r.Kind]++
		dups[r.Dup]++
		switch r.Kind {
		case KindPixel, KindClick:
			c, err := kr.Verify(r.Tok)
			if err != nil {
				t.Fatalf("%v token: %v", r.Kind, err)
			}
			if r.Kind == KindPixel {
				adHits[c.AdID]++
			}
		case KindEvents:
			for _, l := range strings.Split(strings.TrimSpace(r.Body), "\n") {
				lines++
				var e map[string]any
				if err := json.Unmarshal([]byte(l), &e); err != nil {
					t.Fatalf("line %q: %v", l, err)
				}
				typ, _ := e["type"].(string)
				if _, _, ok := event.ParseTypeName(typ); !ok {
					t.Fatalf("line %q: type", l)
				}
				for _, f := range []string{"ad_id", "impression_id", "user_id"} {
					if s, _ := e[f].(string); !event.ValidID(s) {
						t.Fatalf("line %q: %s", l, f)
					}
				}
				if (typ == "add_to_cart" || typ == "order") && !event.ValidID(e["event_id"].(string)) {
					t.Fatalf("line %q: interaction without event_id", l)
				}
				if typ == "impression" {
					adHits[e["ad_id"].(string)]++
				}
				var et time.Time
				switch v := e["event_time"].(type) {
				case nil:
					continue
				case float64:
					et = time.Unix(int64(v), 0)
				case string:
					var err error
					if et, err = time.Parse(time.RFC3339, v); err != nil {
						t.Fatalf("line %q: %v", l, err)
					}
				}
				withTime++
				// The fixed clock starts at t0 and advances 1ms per reading.
				if et.Before(t0.Add(-m.Lateness-time.Second)) || et.After(t0.Add(5*time.Minute)) {
					t.Fatalf("line %q: event_time %v outside [t0-lateness, t0+5m]", l, et)
				} else if et.Before(t0) {
					late++
				}
			}
		}
	}
	for k := range numKinds {
		if k != KindClickURL && byKind[k] == 0 {
			t.Errorf("no %v requests in %d", k, len(reqs))
		}
	}
	if byKind[KindClickURL] != 0 {
		t.Errorf("%d click_url requests although tokens are signed locally", byKind[KindClickURL])
	}
	if dups[dupRetry] == 0 || g.stats.doubleClicks == 0 {
		t.Errorf("retries %d, double clicks %d: want both", dups[dupRetry], g.stats.doubleClicks)
	}
	if late == 0 || withTime == lines {
		t.Errorf("%d lines: %d with event_time, %d late: want late lines and lines without a time", lines, withTime, late)
	}
	if g.stats.botViews == 0 {
		t.Error("no bot views")
	}
	// Hot ads: the most popular ad of a Zipf(1.1) over 200 ads gets about 19% of the views.
	var top int
	var total int
	for _, n := range adHits {
		top = max(top, n)
		total += n
	}
	if share := float64(top) / float64(total); share < 0.12 || share > 0.27 {
		t.Errorf("hottest ad has %.2f of the impressions, want about %.2f", share, newZipf(200, 1.1).prob(0))
	}
	var expired, bots int64
	for v := int64(0); v < g.ledger.n; v++ {
		f := g.ledger.rec(v).flags
		if f&vfExpired != 0 {
			expired++
		}
		if f&vfBot != 0 {
			bots++
		}
	}
	if expired == 0 || bots == 0 {
		t.Errorf("views: %d expired, %d bots; want some of both", expired, bots)
	}
}

// TestUserAgents: people's user agents must pass the server's crawler detection and bots'
// must not, or the ledger's idea of valid and invalid would be wrong.
func TestUserAgents(t *testing.T) {
	d, err := ivt.New()
	if err != nil {
		t.Fatal(err)
	}
	for _, ua := range append(browserUAs[:], appUAs[:]...) {
		if d.IsBot(ua) {
			t.Errorf("person's user agent taken for a bot: %s", ua)
		}
	}
	for _, ua := range botUAs {
		if !d.IsBot(ua) {
			t.Errorf("bot user agent not detected: %s", ua)
		}
		if strings.ContainsAny(ua, `"\`) {
			t.Errorf("user agent needs JSON escaping: %s", ua)
		}
	}
}

func TestLayoutAndModelValidation(t *testing.T) {
	if err := testLayout.validate(); err != nil {
		t.Fatal(err)
	}
	for _, l := range []Layout{{Ads: 0, Campaigns: 1, Advertisers: 1, Prefix: "x"}, {Ads: 5, Campaigns: 6, Advertisers: 1, Prefix: "x"}, {Ads: 5, Campaigns: 2, Advertisers: 1, Prefix: "a b"}} {
		if l.validate() == nil {
			t.Errorf("%+v: accepted", l)
		}
	}
	m := DefaultModel()
	if err := m.validate(); err != nil {
		t.Fatal(err)
	}
	m.WebShare, m.AppShare = 0.7, 0.5
	if m.validate() == nil {
		t.Error("web+app share over 1 accepted")
	}
	if got := testLayout.AdvertiserOf(testLayout.CampaignOf(123)); got != 3 {
		t.Errorf("ad 123: advertiser %d, want 3 (campaign 3)", got)
	}
}
