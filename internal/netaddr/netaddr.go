// Package netaddr classifies IP addresses by where they can route, the one
// classification shared by the DNS firewall (rebinding protection) and the
// proxy (SSRF protection).
package netaddr

import "net/netip"

// Class is the routing class of an address.
type Class uint8

const (
	Public      Class = iota // globally routable, including the documentation ranges
	Private                  // RFC 1918, fc00::/7 (unique local)
	Loopback                 // 127.0.0.0/8, ::1
	LinkLocal                // 169.254.0.0/16 (cloud metadata lives here), fe80::/10
	CGNAT                    // 100.64.0.0/10, shared address space
	Unspecified              // 0.0.0.0, ::
	Multicast                // 224.0.0.0/4, ff00::/8, broadcast
	Reserved                 // everything else not meant to be reached: 0/8, 240/4, benchmarking, ...
	// Local is an address of one of this host's own interfaces (other
	// than loopback, which stays Loopback): reaching it reaches this
	// host's services, as loopback does. Only a Classifier that knows the
	// host's addresses returns it.
	Local
)

var classNames = [...]string{"public", "private", "loopback", "link-local", "cgnat", "unspecified", "multicast", "reserved", "local"}

func (c Class) String() string {
	if int(c) < len(classNames) {
		return classNames[c]
	}
	return "unknown"
}

// IsPublic reports whether the class is globally routable.
func (c Class) IsPublic() bool { return c == Public }

var nat64 = netip.MustParsePrefix("64:ff9b::/96")

type classPrefix struct {
	p netip.Prefix
	c Class
}

// Order matters only where prefixes nest; none here do.
var table = func() []classPrefix {
	m := []struct {
		s string
		c Class
	}{
		{"0.0.0.0/8", Reserved},
		{"10.0.0.0/8", Private},
		{"100.64.0.0/10", CGNAT},
		{"127.0.0.0/8", Loopback},
		{"169.254.0.0/16", LinkLocal},
		{"172.16.0.0/12", Private},
		{"192.0.0.0/24", Reserved}, // IETF protocol assignments
		{"192.88.99.0/24", Reserved},
		{"192.168.0.0/16", Private},
		{"198.18.0.0/15", Reserved}, // benchmarking
		{"224.0.0.0/4", Multicast},
		{"240.0.0.0/4", Reserved},    // includes 255.255.255.255
		{"64:ff9b:1::/48", Reserved}, // local-use NAT64: embedding is site-specific
		{"100::/64", Reserved},       // discard-only
		{"2001::/23", Reserved},      // IETF protocol assignments (Teredo, ORCHID, ...)
		{"2002::/16", Reserved},      // 6to4 embeds arbitrary IPv4
		{"fc00::/7", Private},
		{"fe80::/10", LinkLocal},
		{"fec0::/10", Reserved}, // deprecated site-local
		{"ff00::/8", Multicast},
	}
	out := make([]classPrefix, len(m))
	for i, e := range m {
		out[i] = classPrefix{netip.MustParsePrefix(e.s), e.c}
	}
	return out
}()

// Classify returns the class of a. IPv4-mapped IPv6 (::ffff:a.b.c.d) and
// NAT64 (64:ff9b::a.b.c.d) addresses are classified by the IPv4 address they
// carry, so neither spelling can smuggle a private address past a check.
// IPv6 outside 2000::/3 that no other entry covers is Reserved.
func Classify(a netip.Addr) Class {
	if !a.IsValid() {
		return Reserved
	}
	a = Unmap(a)
	if a.IsUnspecified() {
		return Unspecified
	}
	if a.Is6() && a == netip.IPv6Loopback() {
		return Loopback
	}
	for _, e := range table {
		if e.p.Contains(a) {
			return e.c
		}
	}
	if a.Is6() {
		if b := a.As16(); b[0]&0xe0 != 0x20 { // outside 2000::/3 global unicast
			return Reserved
		}
	}
	return Public
}

// Unmap strips IPv4-mapped and NAT64 wrappers and any zone, returning the
// address a connection to a would actually reach on the IPv4 internet.
func Unmap(a netip.Addr) netip.Addr {
	a = a.WithZone("")
	if a.Is4In6() {
		return a.Unmap()
	}
	if a.Is6() && nat64.Contains(a) {
		b := a.As16()
		return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	}
	return a
}

// Host is the set of this host's own addresses; *localaddr.Set is one,
// kept current as addresses come and go.
type Host interface {
	Contains(netip.Addr) bool
}

// HostList is a Host that holds a fixed list of addresses, for tests and
// for callers that know them once. Like *localaddr.Set, it ignores zones
// and reads an IPv4-mapped address as the IPv4 address it carries.
type HostList []netip.Addr

// Contains reports whether a is in the list.
func (h HostList) Contains(a netip.Addr) bool {
	a = a.WithZone("").Unmap()
	for _, x := range h {
		if x.WithZone("").Unmap() == a {
			return true
		}
	}
	return false
}

// Classifier classifies addresses the way Classify does, except that an
// address of this host's interfaces is Local. Its zero value knows no host
// addresses and is Classify.
type Classifier struct {
	// Host holds this host's addresses. If nil, none are Local.
	Host Host
}

// Classify returns the class of a, Local for an address of c.Host (but
// Loopback, Unspecified and Multicast addresses keep those classes).
func (c Classifier) Classify(a netip.Addr) Class {
	cl := Classify(a)
	if c.Host == nil {
		return cl
	}
	switch cl {
	case Loopback, Unspecified, Multicast:
		return cl
	}
	if c.Host.Contains(Unmap(a)) {
		return Local
	}
	return cl
}

// ClassError says that every address a name resolved to was left out for
// its class: what a resolver returns, wrapped, so that its caller can tell
// an address it must not reach from a name that did not resolve.
type ClassError struct {
	// Class is Local when every address left out was one of this host's,
	// else Private (non-public).
	Class Class
}

func (e *ClassError) Error() string {
	what := "non-public"
	if e.Class == Local {
		what = "an address of this host"
	}
	return "every address is " + what
}
