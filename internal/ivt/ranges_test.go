package ivt

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
)

func TestDatacenterRanges(t *testing.T) {
	rs, err := DatacenterRanges()
	if err != nil {
		t.Fatal(err)
	}
	st := rs.Stats()
	t.Logf("embedded: %d IPv4 and %d IPv6 ranges from %d sources", st.V4, st.V6, st.Sources)
	for _, tc := range []struct {
		addr, want string // want "" means a person's network: in no range
	}{
		// Providers' published ranges.
		{"3.85.12.7", "aws"},             // EC2 us-east-1
		{"54.162.100.20", "aws"},         // EC2 us-east-1
		{"18.185.3.4", "aws"},            // EC2 eu-central-1
		{"2600:1f18:4a3:6a00::1", "aws"}, // EC2 us-east-1 IPv6
		{"34.123.45.67", "gcp"},
		{"35.225.1.1", "gcp"},
		{"2600:1900:4000::1", "gcp"},
		{"66.249.66.1", "googlebot"},
		{"157.55.39.10", "bingbot"},
		{"40.77.167.5", "bingbot"},
		{"20.42.10.5", "azure"},
		{"52.226.7.8", "azure"},
		{"129.213.1.2", "oracle"},
		{"159.203.45.6", "digitalocean"},
		{"2a03:b0c0:3:d0::1", "digitalocean"},
		{"5.9.10.11", "hetzner"},
		{"2a01:4f8:c17:1a2b::1", "hetzner"},
		{"51.38.1.2", "ovh"},
		{"2001:41d0:8:1a2b::1", "ovh"},
		// Never a person.
		{"192.0.2.1", "special"},
		{"198.51.100.7", "special"},
		{"203.0.113.255", "special"},
		{"198.18.0.1", "special"},
		{"2001:db8::1", "special"},
		{"::ffff:203.0.113.9", "special"}, // IPv4-mapped is looked up as IPv4
		// People: residential, mobile and office networks, and what a proxy in front of
		// adpulse looks like without --trusted-proxies.
		{"73.162.14.9", ""},          // Comcast
		{"84.150.3.7", ""},           // Deutsche Telekom
		{"2600:387:15:1c13::9", ""},  // AT&T mobile
		{"2a02:8108:1140:5a::1", ""}, // Vodafone DE
		{"10.1.2.3", ""},
		{"192.168.1.20", ""},
		{"172.16.0.9", ""},
		{"100.64.7.1", ""}, // carrier-grade NAT
		{"127.0.0.1", ""},
		{"::1", ""},
		{"fe80::1", ""},
		{"1.1.1.1", ""},       // Cloudflare: people browse through WARP and its resolvers' proxies
		{"17.253.144.10", ""}, // Apple
	} {
		got, ok := rs.Lookup(netip.MustParseAddr(tc.addr))
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("Lookup(%s) = %q %v, want %q", tc.addr, got, ok, tc.want)
		}
	}
	if _, ok := rs.Lookup(netip.Addr{}); ok {
		t.Error("the zero Addr is in a range")
	}
}

func TestParseRanges(t *testing.T) {
	rs, err := ParseRanges(strings.NewReader(`# comment
10.0.0.0/8 outer   # trailing comment

10.1.0.0/16 inner
10.1.2.0/24 inner
11.0.0.0/8 next
0.0.0.0/32 zero
255.255.255.255/32 top
2001:db8::/32 six
2001:db8:1::/48 six-inner
::/128 six-zero
ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128 six-top
8000::/1 six-half
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ addr, want string }{
		{"10.0.0.0", "outer"}, {"10.1.2.3", "outer"}, {"10.255.255.255", "outer"}, {"11.0.0.0", "next"},
		{"11.255.255.255", "next"}, {"12.0.0.0", ""}, {"9.255.255.255", ""}, {"0.0.0.0", "zero"},
		{"0.0.0.1", ""}, {"255.255.255.255", "top"}, {"255.255.255.254", ""},
		{"2001:db8::", "six"}, {"2001:db8:1::5", "six"}, {"2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "six"},
		{"2001:db9::", ""}, {"::", "six-zero"}, {"::1", ""},
		{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "six-half"}, {"8000::", "six-half"}, {"7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", ""},
	} {
		got, ok := rs.Lookup(netip.MustParseAddr(tc.addr))
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("Lookup(%s) = %q %v, want %q", tc.addr, got, ok, tc.want)
		}
	}
	if st := rs.Stats(); st.V4 != 4 || st.V6 != 3 {
		t.Errorf("stats %+v: want nested prefixes dropped (4 IPv4, 3 IPv6 intervals)", st)
	}

	for _, bad := range []string{
		"10.0.0.0/8",              // no source
		"10.0.0.0/8 a b",          // too many fields
		"10.0.0.1/8 aws",          // host bits set
		"10.0.0.0 aws",            // not a prefix
		"10.0.0.0/33 aws",         // bad length
		"::ffff:10.0.0.0/104 aws", // IPv4-mapped
		"fe80::%eth0/64 aws",      // zone
		"10.0.0.0/8 AWS",          // upper case source
		"10.0.0.0/8 " + strings.Repeat("a", 33),
		strings.Repeat(" ", maxRangeLine+1) + "10.0.0.0/8 aws", // line too long
	} {
		if _, err := ParseRanges(strings.NewReader("1.0.0.0/24 ok\n" + bad + "\n")); err == nil {
			t.Errorf("ParseRanges accepted %q", bad)
		} else if !strings.Contains(err.Error(), "line 2") && !strings.Contains(err.Error(), "read ranges") {
			t.Errorf("%q: error %q does not name line 2", bad, err)
		}
	}
}

// naiveRanges is the obvious implementation: every prefix tried in turn.
type naiveRanges []struct {
	p   netip.Prefix
	src string
}

func parseNaive(t testing.TB, data []byte) naiveRanges {
	var out naiveRanges
	for _, line := range strings.Split(string(data), "\n") {
		line, _, _ = strings.Cut(line, "#")
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		p, err := netip.ParsePrefix(f[0])
		if err != nil {
			t.Fatalf("naive parse %q: %v", line, err)
		}
		out = append(out, struct {
			p   netip.Prefix
			src string
		}{p, f[1]})
	}
	return out
}

// sources returns the sources of every prefix holding a.
func (n naiveRanges) sources(a netip.Addr) []string {
	var out []string
	for _, x := range n {
		if x.p.Contains(a.Unmap()) {
			out = append(out, x.src)
		}
	}
	return out
}

// TestLookupMatchesNaive compares the table with the naive scan on random addresses and on
// every boundary of the embedded list.
func TestLookupMatchesNaive(t *testing.T) {
	rs, err := DatacenterRanges()
	if err != nil {
		t.Fatal(err)
	}
	naive := parseNaive(t, datacenterRanges)
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 0))
	var addrs []netip.Addr
	for _, x := range naive {
		first := x.p.Addr()
		addrs = append(addrs, first, first.Prev(), lastAddr(x.p), lastAddr(x.p).Next())
	}
	for range 20000 {
		var b [16]byte
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		addrs = append(addrs, netip.AddrFrom4([4]byte(b[:4])), netip.AddrFrom16(b))
		if r.IntN(4) == 0 { // near a listed provider's IPv6 space
			b[0], b[1] = 0x26, 0x00
			addrs = append(addrs, netip.AddrFrom16(b))
		}
	}
	checkAgainstNaive(t, rs, naive, addrs)
}

func checkAgainstNaive(t *testing.T, rs *Ranges, naive naiveRanges, addrs []netip.Addr) {
	t.Helper()
	for _, a := range addrs {
		if !a.IsValid() {
			continue
		}
		got, ok := rs.Lookup(a)
		srcs := naive.sources(a)
		if ok != (len(srcs) > 0) {
			t.Fatalf("Lookup(%s) = %q %v; naive finds %v", a, got, ok, srcs)
		}
		if ok && !contains(srcs, got) {
			t.Fatalf("Lookup(%s) = %q, not one of the prefixes holding it (%v)", a, got, srcs)
		}
	}
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// lastAddr is the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// FuzzParseRanges: ParseRanges never panics, and what it accepts it looks up exactly as the
// naive scan does, at the edges of every prefix.
func FuzzParseRanges(f *testing.F) {
	f.Add(datacenterRanges)
	f.Add([]byte("10.0.0.0/8 a\n10.1.0.0/16 b\n::/0 all\n"))
	f.Add([]byte("0.0.0.0/0 all # everything\n2001:db8::/32 doc\n"))
	f.Add([]byte("1.2.3.0/24 x\n\n# c\n1.2.3.0/24 y\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := ParseRanges(bytes.NewReader(data))
		if err != nil {
			return
		}
		naive := parseNaive(t, data)
		var addrs []netip.Addr
		for _, x := range naive {
			first := x.p.Addr()
			addrs = append(addrs, first, first.Prev(), lastAddr(x.p), lastAddr(x.p).Next(), netip.AddrFrom16(first.As16()))
		}
		checkAgainstNaive(t, rs, naive, addrs)
	})
}

func BenchmarkLookup(b *testing.B) {
	rs, err := DatacenterRanges()
	if err != nil {
		b.Fatal(err)
	}
	addrs := []netip.Addr{
		netip.MustParseAddr("73.162.14.9"),  // miss
		netip.MustParseAddr("3.85.12.7"),    // hit
		netip.MustParseAddr("2a01:4f8::1"),  // hit
		netip.MustParseAddr("2600:387::9"),  // miss
		netip.MustParseAddr("84.150.3.7"),   // miss
		netip.MustParseAddr("159.203.45.6"), // hit
	}
	b.ReportAllocs()
	n := 0
	for i := 0; b.Loop(); i++ {
		if _, ok := rs.Lookup(addrs[i%len(addrs)]); ok {
			n++
		}
	}
	if n == 0 {
		b.Fatal("no hits")
	}
}
