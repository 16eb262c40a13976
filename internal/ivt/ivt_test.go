package ivt

import (
	"bufio"
	"encoding/json"
	"os"
	"regexp"
	"testing"
)

var browsers = []string{
	"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
	"Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
	"Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
	"Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.43 Mobile Safari/537.36",
	"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
}

func loadInstances(t testing.TB) []string {
	f, err := os.Open("testdata/bot-instances.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		if sc.Text() != "" {
			out = append(out, sc.Text())
		}
	}
	return out
}

// TestMatchesNaive checks the split matcher against the obvious one: every pattern compiled on
// its own, tried in turn.
func TestMatchesNaive(t *testing.T) {
	var pats []string
	if err := json.Unmarshal(crawlerPatterns, &pats); err != nil {
		t.Fatal(err)
	}
	naive := make([]*regexp.Regexp, len(pats))
	for i, p := range pats {
		naive[i] = regexp.MustCompile(p)
	}
	d, err := New()
	if err != nil {
		t.Fatal(err)
	}
	st := d.Stats()
	t.Logf("%d patterns: %d literals, %d prefixes, %d regexps", len(pats), st.Literals, st.Prefixes, st.Regexps)
	if st.Regexps > len(pats)/5 {
		t.Errorf("only %d of %d patterns were turned into literals", len(pats)-st.Regexps, len(pats))
	}
	uas := append(loadInstances(t), browsers...)
	uas = append(uas, "", "x", "Bot", "curl", "  Googlebot/2.1", "wget", "Wget/1.21")
	bots := 0
	for _, ua := range uas {
		want := false
		for _, re := range naive {
			if re.MatchString(ua) {
				want = true
				break
			}
		}
		if got := d.match(ua); got != want {
			t.Errorf("match(%q) = %v, naive says %v", ua, got, want)
		}
		if want {
			bots++
		}
	}
	if bots < len(uas)-len(browsers)-10 {
		t.Errorf("only %d of %d known bot instances detected", bots, len(uas))
	}
}

func TestIsBot(t *testing.T) {
	d, err := New()
	if err != nil {
		t.Fatal(err)
	}
	for _, ua := range browsers {
		if d.IsBot(ua) {
			t.Errorf("browser %q flagged as bot", ua)
		}
		if d.IsBot(ua) { // cached path
			t.Errorf("browser %q flagged as bot (cached)", ua)
		}
	}
	for _, ua := range []string{"", "curl/8.5.0", "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "Go-http-client/1.1", "facebookexternalhit/1.1"} {
		if !d.IsBot(ua) {
			t.Errorf("%q not flagged as bot", ua)
		}
	}
}

func BenchmarkMatchBrowser(b *testing.B) {
	d, _ := New()
	for i := 0; i < b.N; i++ {
		if d.match(browsers[i%len(browsers)]) {
			b.Fatal("bot")
		}
	}
}

func BenchmarkIsBotCached(b *testing.B) {
	d, _ := New()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			d.IsBot(browsers[i%len(browsers)])
			i++
		}
	})
}
