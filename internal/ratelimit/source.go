package ratelimit

import (
	"encoding/binary"
	"net/netip"
	"strings"
)

// Source addresses. X-Forwarded-For is written by whoever sends the request, so believing it
// from anyone would let one client claim a new address per request (a fresh bucket each
// time) or name somebody else's address (and get them limited). It is read only when the TCP
// peer is a configured trusted proxy, and then from the right: each trusted hop appends the
// address it received the request from, so the rightmost entry that is not itself a trusted
// proxy is the first address no trusted party can vouch past: the source. Whatever a client
// wrote lies to the left of it and is never reached.

// Proxies decides the source address of requests. The zero value trusts nobody: the source
// is always the TCP peer.
type Proxies struct {
	trusted []netip.Prefix
}

// NewProxies returns Proxies that believe X-Forwarded-For from peers in trusted.
func NewProxies(trusted []netip.Prefix) *Proxies {
	p := &Proxies{}
	for _, pr := range trusted {
		if pr.Addr().Is4In6() && pr.Bits() >= 96 {
			pr = netip.PrefixFrom(pr.Addr().Unmap(), pr.Bits()-96)
		}
		p.trusted = append(p.trusted, pr.Masked())
	}
	return p
}

// Trusts reports whether a is a trusted proxy.
func (p *Proxies) Trusts(a netip.Addr) bool {
	a = a.Unmap()
	for _, pr := range p.trusted {
		if pr.Contains(a) {
			return true
		}
	}
	return false
}

// Source returns the address a request came from, given its TCP peer (http.Request.RemoteAddr,
// "host:port") and its X-Forwarded-For header values in order. The peer is the answer unless
// it is a trusted proxy; then X-Forwarded-For is walked from the right past trusted proxies.
// An entry that is not an address ("unknown", a host name, garbage) ends the walk at
// the last hop that was trusted: past it nothing can be believed, and falling back to the
// proxy, not to the garbage, keeps a client from minting a new source per request. When every
// entry is a trusted proxy, the leftmost is the source. The result is invalid only when the
// peer itself cannot be parsed.
func (p *Proxies) Source(remoteAddr string, xff []string) netip.Addr {
	peer := parsePeer(remoteAddr)
	if !peer.IsValid() || len(p.trusted) == 0 || !p.Trusts(peer) {
		return peer
	}
	src := peer
	for i := len(xff) - 1; i >= 0; i-- {
		for h := xff[i]; h != ""; {
			var part string
			if j := strings.LastIndexByte(h, ','); j >= 0 {
				part, h = h[j+1:], h[:j]
			} else {
				part, h = h, ""
			}
			part = strings.Trim(part, " \t")
			if part == "" {
				continue // empty list elements are ignored (RFC 9110, section 5.6.1)
			}
			a, ok := parseHop(part)
			if !ok {
				return src
			}
			src = a
			if !p.Trusts(a) {
				return a
			}
		}
	}
	return src
}

// parsePeer parses a RemoteAddr: "ip:port" normally, a bare address from some test servers.
func parsePeer(s string) netip.Addr {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().WithZone("").Unmap()
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return a.WithZone("").Unmap()
	}
	return netip.Addr{}
}

// parseHop parses one X-Forwarded-For entry: an IPv4 or IPv6 address, optionally with a port
// ("192.0.2.1:443", "[2001:db8::1]:443") or in brackets ("[2001:db8::1]"), as proxies write
// them. A zone is dropped: it names an interface of the proxy, not a different source.
func parseHop(s string) (netip.Addr, bool) {
	if s == "" {
		return netip.Addr{}, false
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return a.WithZone("").Unmap(), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().WithZone("").Unmap(), true
	}
	if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
		if a, err := netip.ParseAddr(s[1 : len(s)-1]); err == nil && a.Is6() {
			return a.WithZone("").Unmap(), true
		}
	}
	return netip.Addr{}, false
}

// SourceKey is the bucket an address is limited by: the address itself for IPv4, its /64 for
// IPv6. One IPv6 subscriber usually holds a whole /64 (often far more), so limiting single
// IPv6 addresses would hand each client 2^64 fresh buckets.
func SourceKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.WithZone("").Prefix(64)
		return p.Addr()
	}
	return a
}

// hashAddr spreads addresses over shards.
func hashAddr(a netip.Addr) uint64 {
	b := a.As16()
	return mix(binary.BigEndian.Uint64(b[:8])*0x9e3779b97f4a7c15 ^ binary.BigEndian.Uint64(b[8:]))
}

// mix is the finaliser of MurmurHash3: every input bit affects the low bits a shard is
// picked by.
func mix(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}
