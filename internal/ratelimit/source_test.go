package ratelimit

import (
	"net/netip"
	"strings"
	"testing"
)

func prefixes(t testing.TB, ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// TestSource: the TCP peer is the source unless it is a trusted proxy; X-Forwarded-For is
// read from the right past trusted hops; what a client wrote to the left is never believed;
// malformed entries fall back to the last trusted hop.
func TestSource(t *testing.T) {
	p := NewProxies(prefixes(t, "10.0.0.0/8", "2001:db8:ffff::/48", "::ffff:192.168.1.0/120"))
	for _, tc := range []struct {
		name   string
		remote string
		xff    []string
		want   string
	}{
		{"no proxy trusted: peer", "203.0.113.9:5000", []string{"198.51.100.1"}, "203.0.113.9"},
		{"trusted peer, no header: peer", "10.1.1.1:80", nil, "10.1.1.1"},
		{"one hop", "10.1.1.1:80", []string{"198.51.100.1"}, "198.51.100.1"},
		{"client spoofs to the left", "10.1.1.1:80", []string{"1.2.3.4, 5.6.7.8, 198.51.100.1"}, "198.51.100.1"},
		{"two trusted hops", "10.1.1.1:80", []string{"198.51.100.1, 10.2.2.2"}, "198.51.100.1"},
		{"several header lines read as one list", "10.1.1.1:80", []string{"1.2.3.4", "198.51.100.1, 10.2.2.2"}, "198.51.100.1"},
		{"trusted hop in an earlier line", "10.1.1.1:80", []string{"198.51.100.1", "10.2.2.2"}, "198.51.100.1"},
		{"all trusted: leftmost", "10.1.1.1:80", []string{"10.3.3.3, 10.2.2.2"}, "10.3.3.3"},
		{"spaces and tabs", "10.1.1.1:80", []string{" 1.2.3.4 ,\t198.51.100.1\t"}, "198.51.100.1"},
		{"empty elements ignored", "10.1.1.1:80", []string{"198.51.100.1,, ,", ""}, "198.51.100.1"},
		{"port on an entry", "10.1.1.1:80", []string{"198.51.100.1:4711"}, "198.51.100.1"},
		{"IPv6 entry", "10.1.1.1:80", []string{"2001:db8::1"}, "2001:db8::1"},
		{"IPv6 in brackets with port", "10.1.1.1:80", []string{"[2001:db8::1]:443"}, "2001:db8::1"},
		{"IPv6 in brackets", "10.1.1.1:80", []string{"[2001:db8::1]"}, "2001:db8::1"},
		{"IPv6 zone dropped", "10.1.1.1:80", []string{"fe80::1%eth0"}, "fe80::1"},
		{"IPv4-mapped entry", "10.1.1.1:80", []string{"::ffff:198.51.100.1"}, "198.51.100.1"},
		{"IPv6 trusted peer", "[2001:db8:ffff::5]:80", []string{"198.51.100.1"}, "198.51.100.1"},
		{"IPv4-mapped trusted prefix", "192.168.1.7:80", []string{"198.51.100.1"}, "198.51.100.1"},
		{"IPv4-mapped peer", "[::ffff:10.1.1.1]:80", []string{"198.51.100.1"}, "198.51.100.1"},
		{"garbage: the trusted peer", "10.1.1.1:80", []string{"not-an-ip"}, "10.1.1.1"},
		{"unknown: the last trusted hop", "10.1.1.1:80", []string{"unknown, 10.2.2.2"}, "10.2.2.2"},
		{"garbage left of the source is never read", "10.1.1.1:80", []string{"garbage, 198.51.100.1"}, "198.51.100.1"},
		{"host name", "10.1.1.1:80", []string{"client.example.com"}, "10.1.1.1"},
		{"bracketed IPv4 is not an address", "10.1.1.1:80", []string{"[198.51.100.1]"}, "10.1.1.1"},
		{"address with a prefix length", "10.1.1.1:80", []string{"198.51.100.0/24"}, "10.1.1.1"},
		{"quoted", "10.1.1.1:80", []string{`"198.51.100.1"`}, "10.1.1.1"},
		{"bare peer address", "10.1.1.1", []string{"198.51.100.1"}, "198.51.100.1"},
		{"peer with zone", "[fe80::9%lo]:80", nil, "fe80::9"},
	} {
		got := p.Source(tc.remote, tc.xff)
		if tc.name == "no proxy trusted: peer" {
			got = NewProxies(nil).Source(tc.remote, tc.xff)
		}
		if got.String() != tc.want {
			t.Errorf("%s: Source(%q, %q) = %v, want %s", tc.name, tc.remote, tc.xff, got, tc.want)
		}
	}
	if a := p.Source("not an address", []string{"198.51.100.1"}); a.IsValid() {
		t.Errorf("unparsable peer: %v, want the invalid address", a)
	}
	// A peer outside the trusted ranges is the source whatever it sends.
	if a := p.Source("198.51.100.1:1", []string{"10.2.2.2"}); a.String() != "198.51.100.1" {
		t.Errorf("untrusted peer claiming a trusted address: %v", a)
	}
}

// TestSourceKey: IPv4 as is, IPv6 by /64, IPv4-mapped as IPv4.
func TestSourceKey(t *testing.T) {
	for in, want := range map[string]string{
		"198.51.100.1":              "198.51.100.1",
		"::ffff:198.51.100.1":       "198.51.100.1",
		"2001:db8:1:2:3:4:5:6":      "2001:db8:1:2::",
		"2001:db8:1:2:ffff::1%eth0": "2001:db8:1:2::",
	} {
		if got := SourceKey(netip.MustParseAddr(in)); got.String() != want {
			t.Errorf("SourceKey(%s) = %v, want %s", in, got, want)
		}
	}
	if SourceKey(netip.Addr{}).IsValid() {
		t.Error("SourceKey of the invalid address is valid")
	}
}

// FuzzSource: whatever X-Forwarded-For holds, Source does not panic, and its answer is the
// peer, the last trusted hop, or an address that appears in the header; with no trusted
// proxies it is always the peer.
func FuzzSource(f *testing.F) {
	for _, s := range []string{"", "198.51.100.1", "1.2.3.4, 10.0.0.1", "[2001:db8::1]:443, unknown", ",,, ,", "fe80::1%eth0", "\x00\xff", strings.Repeat("10.0.0.1,", 100)} {
		f.Add("10.9.9.9:80", s, "")
		f.Add("10.9.9.9:80", s, "2001:db8::2")
	}
	p := NewProxies(prefixes(f, "10.0.0.0/8", "2001:db8::/32"))
	none := NewProxies(nil)
	f.Fuzz(func(t *testing.T, remote, h1, h2 string) {
		xff := []string{h1, h2}
		if got, peer := none.Source(remote, xff), parsePeer(remote); got != peer {
			t.Fatalf("no trusted proxies: %v, want the peer %v", got, peer)
		}
		got := p.Source(remote, xff)
		peer := parsePeer(remote)
		if !peer.IsValid() {
			if got.IsValid() {
				t.Fatalf("unparsable peer %q: got %v", remote, got)
			}
			return
		}
		if got == peer {
			return
		}
		if got.Zone() != "" || got.Is4In6() {
			t.Fatalf("source %v keeps a zone or a mapping", got)
		}
		// got must be one of the header's entries.
		for _, h := range xff {
			for _, part := range strings.Split(h, ",") {
				if a, ok := parseHop(strings.Trim(part, " \t")); ok && a == got {
					return
				}
			}
		}
		t.Fatalf("Source(%q, %q) = %v: neither the peer nor an entry of the header", remote, xff, got)
	})
}
