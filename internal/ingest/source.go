package ingest

import (
	"net/http"
	"net/netip"
	"strings"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/cespare/xxhash/v2"
)

// sourcer is what a Bots implementation offers when it knows the source address of a request
// (ivt.Filter does, with the trusted proxies of the rate limits). Without it, the TCP peer is
// the source.
type sourcer interface {
	Source(r *http.Request) netip.Addr
}

// setSource records where a /c, /i or /click request came from, for the behavioural rules of
// the stream (floods per address and per device): the source address, and the device the
// client named (deviceID, POST /click only) or else a fingerprint of the user agent, language
// and address. The fingerprint is no identity: it tells apart browsers behind one address. It
// is left empty for a private, loopback or carrier-shared address, where it would lump
// strangers together (a proxy adpulse does not trust makes every client one address).
func (h *Handlers) setSource(r *http.Request, e *event.Event, deviceID string) {
	var addr netip.Addr
	if s, ok := h.o.Bots.(sourcer); ok {
		addr = s.Source(r)
	} else if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		addr = ap.Addr()
	}
	if addr.IsValid() {
		e.SourceIP = ipString(addr.Unmap().WithZone(""), r.RemoteAddr)
	}
	if deviceID != "" {
		e.DeviceID = deviceID
		return
	}
	if a := addr.Unmap(); a.IsGlobalUnicast() && !a.IsPrivate() && !cgnat.Contains(a) {
		e.DeviceID = Fingerprint(r.UserAgent(), r.Header.Get("Accept-Language"), e.SourceIP)
	}
}

// ipString is a.String(), taken from the peer's address "host:port" when that already spells
// it the same way (the usual case): a substring costs no allocation.
func ipString(a netip.Addr, remoteAddr string) string {
	var buf [64]byte
	b := a.AppendTo(buf[:0])
	host := remoteAddr
	if i := strings.LastIndexByte(host, ':'); i >= 0 {
		host = strings.TrimSuffix(strings.TrimPrefix(host[:i], "["), "]")
	}
	if string(b) == host {
		return host
	}
	return string(b)
}

// cgnat is the carriers' shared address space (RFC 6598).
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// Fingerprint is the device id given to a request that names no device: "fp-" and 16 hex
// digits of a hash of its user agent, Accept-Language and source address.
func Fingerprint(userAgent, acceptLanguage, addr string) string {
	d := xxhash.New()
	_, _ = d.WriteString(userAgent)
	_, _ = d.WriteString("\x00")
	_, _ = d.WriteString(acceptLanguage)
	_, _ = d.WriteString("\x00")
	_, _ = d.WriteString(addr)
	// Built in one array so that the string is the only allocation.
	var buf [3 + 16]byte
	copy(buf[:], "fp-")
	const hexDigits = "0123456789abcdef"
	for i, v := len(buf)-1, d.Sum64(); i >= 3; i, v = i-1, v>>4 {
		buf[i] = hexDigits[v&0xf]
	}
	return string(buf[:])
}

// canonicalIP spells a valid address one way (IPv4-mapped IPv6 as IPv4, IPv6 compressed).
func canonicalIP(s string) string {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return s // Validate refused it already
	}
	return a.Unmap().String()
}

// addressJudge is what a Bots implementation offers when it knows data-centre ranges
// (ivt.Filter does).
type addressJudge interface {
	Address(ip string) event.Reason
}

// judgeAddress flags a click or impression of POST /events whose reported source address is
// a data-centre one, as /c, /i and /click are flagged by their request's address.
func (h *Handlers) judgeAddress(e *event.Event) {
	if e.Invalid != event.ReasonNone || e.SourceIP == "" || (e.Type != event.TypeClick && e.Type != event.TypeImpression) {
		return
	}
	if a, ok := h.o.Bots.(addressJudge); ok {
		e.Invalid = a.Address(e.SourceIP)
	}
}
