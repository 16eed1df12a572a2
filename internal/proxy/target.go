package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/fqdngate/fqdngate/internal/dnsname"
)

// Target is a destination a client asked for: exactly one of Name and Addr
// is set. A host that any common parser would read as an address is an
// Addr, never a Name, so that only CIDR rules can allow it.
type Target struct {
	Name dnsname.Name
	Addr netip.Addr
	Port uint16
}

// Host returns the name or the address, for messages and audit lines.
func (t Target) Host() string {
	if t.Name != "" {
		return string(t.Name)
	}
	if t.Addr.IsValid() {
		return t.Addr.String()
	}
	return ""
}

// parseTarget parses an authority "host:port" as found in a CONNECT request
// line or a Host header. If the port is missing, defaultPort is used; 0
// makes a missing port an error.
func parseTarget(authority string, defaultPort uint16) (Target, error) {
	host, portStr, hasPort, err := splitAuthority(authority)
	if err != nil {
		return Target{}, err
	}
	port := defaultPort
	if hasPort {
		p, err := parsePort(portStr)
		if err != nil {
			return Target{}, err
		}
		port = p
	}
	if port == 0 {
		return Target{}, fmt.Errorf("%q has no port; write host:port", authority)
	}
	t, err := parseHost(host)
	if err != nil {
		return Target{}, err
	}
	t.Port = port
	return t, nil
}

// splitAuthority splits "host:port", "[v6]:port", "host" and "[v6]". An
// unbracketed host with a colon is ambiguous and refused.
func splitAuthority(s string) (host, port string, hasPort bool, err error) {
	if s == "" {
		return "", "", false, errors.New("empty host")
	}
	if s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", false, fmt.Errorf("%q: missing ']'", s)
		}
		host, rest := s[:end+1], s[end+1:]
		if rest == "" {
			return host, "", false, nil
		}
		if rest[0] != ':' {
			return "", "", false, fmt.Errorf("%q: unexpected text after ']'", s)
		}
		return host, rest[1:], true, nil
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return s, "", false, nil
	}
	if strings.IndexByte(s[:i], ':') >= 0 {
		return "", "", false, fmt.Errorf("%q: IPv6 addresses must be bracketed, as in [::1]:443", s)
	}
	return s[:i], s[i+1:], true, nil
}

// parsePort accepts 1-65535 in plain decimal; leading zeros are allowed
// (they still mean decimal in a port), signs and spaces are not.
func parsePort(s string) (uint16, error) {
	if s == "" || len(s) > 5 {
		return 0, fmt.Errorf("invalid port %q; write a number from 1 to 65535", s)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("invalid port %q; write a number from 1 to 65535", s)
		}
	}
	n, _ := strconv.Atoi(s)
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("invalid port %q; write a number from 1 to 65535", s)
	}
	return uint16(n), nil
}

// parseHost classifies host as an address or a name. IPv4-mapped IPv6 is
// unmapped: it reaches the same IPv4 host, and every later check (the
// decision, the private-address check, the dial) must see the same address.
func parseHost(host string) (Target, error) {
	if host == "" {
		return Target{}, errors.New("empty host")
	}
	if host[0] == '[' {
		if host[len(host)-1] != ']' {
			return Target{}, fmt.Errorf("%q: missing ']'", host)
		}
		a, err := netip.ParseAddr(host[1 : len(host)-1])
		if err != nil || !a.Is6() {
			return Target{}, fmt.Errorf("%q is not an IPv6 address", host)
		}
		if a.Zone() != "" {
			return Target{}, fmt.Errorf("%q: zones are not allowed in a destination", host)
		}
		return Target{Addr: a.Unmap()}, nil
	}
	if strings.IndexByte(host, ':') >= 0 {
		a, err := netip.ParseAddr(host)
		if err != nil || a.Zone() != "" {
			return Target{}, fmt.Errorf("invalid host %q", host)
		}
		return Target{Addr: a.Unmap()}, nil
	}
	// Trailing dots do not turn an address into a name: "127.0.0.1." and
	// "127.1.." reach loopback through many resolvers.
	trimmed := strings.TrimRight(host, ".")
	if trimmed == "" {
		return Target{}, fmt.Errorf("invalid host %q", host)
	}
	if a, ok := parseIPv4Loose(trimmed); ok {
		return Target{Addr: a}, nil
	}
	// A name whose last label is numeric is an address spelling some
	// parser will accept (WHATWG URL "ends in a number"); no real name has a
	// numeric top-level label, so refuse rather than guess.
	last := trimmed[strings.LastIndexByte(trimmed, '.')+1:]
	if isNumericLabel(last) {
		return Target{}, fmt.Errorf("%q is neither a valid IPv4 address nor a host name", host)
	}
	n, err := dnsname.Parse(host)
	if err != nil {
		return Target{}, fmt.Errorf("invalid host %q: %v", host, err)
	}
	// IDNA mapping can turn a Unicode spelling into an address: "１２７.０.０.１"
	// (full-width digits) maps to 127.0.0.1, as a browser would map it.
	if a, ok := parseIPv4Loose(string(n)); ok {
		return Target{Addr: a}, nil
	}
	if isNumericLabel(string(n)[strings.LastIndexByte(string(n), '.')+1:]) {
		return Target{}, fmt.Errorf("%q is neither a valid IPv4 address nor a host name", host)
	}
	return Target{Name: n}, nil
}

// isNumericLabel reports whether s looks like an inet_aton part: decimal
// digits, or 0x followed by hex digits (possibly none).
func isNumericLabel(s string) bool {
	if s == "" {
		return false
	}
	if len(s) >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') {
		for i := 2; i < len(s); i++ {
			if !isHex(s[i]) {
				return false
			}
		}
		return true
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// parseIPv4Loose parses s with inet_aton semantics: one to four parts,
// each decimal, octal (leading 0) or hexadecimal (0x); the last part fills
// the remaining bytes. "3405803783", "0313.0.0.1", "0xcb.0.0x71.7" and
// "127.1" are all addresses.
func parseIPv4Loose(s string) (netip.Addr, bool) {
	var parts [4]uint64
	n := 0
	for len(s) > 0 || n == 0 {
		if n == 4 {
			return netip.Addr{}, false
		}
		var part string
		if i := strings.IndexByte(s, '.'); i >= 0 {
			part, s = s[:i], s[i+1:]
			if s == "" {
				return netip.Addr{}, false // "1.2." : a trailing dot inside
			}
		} else {
			part, s = s, ""
		}
		v, ok := parseAtonPart(part)
		if !ok {
			return netip.Addr{}, false
		}
		parts[n] = v
		n++
	}
	var v uint64
	switch n {
	case 1:
		if parts[0] > 0xffffffff {
			return netip.Addr{}, false
		}
		v = parts[0]
	case 2:
		if parts[0] > 0xff || parts[1] > 0xffffff {
			return netip.Addr{}, false
		}
		v = parts[0]<<24 | parts[1]
	case 3:
		if parts[0] > 0xff || parts[1] > 0xff || parts[2] > 0xffff {
			return netip.Addr{}, false
		}
		v = parts[0]<<24 | parts[1]<<16 | parts[2]
	case 4:
		for _, p := range parts {
			if p > 0xff {
				return netip.Addr{}, false
			}
		}
		v = parts[0]<<24 | parts[1]<<16 | parts[2]<<8 | parts[3]
	}
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
}

// parseAtonPart parses one part like strtoul(part, 0): 0x prefix is hex
// ("0x" alone is 0, as glibc reads it), a leading 0 is octal, otherwise
// decimal. Values saturate above 32 bits so overflow cannot wrap.
func parseAtonPart(p string) (uint64, bool) {
	if p == "" {
		return 0, false
	}
	base := uint64(10)
	switch {
	case len(p) >= 2 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X'):
		base, p = 16, p[2:]
	case len(p) >= 2 && p[0] == '0':
		base, p = 8, p[1:]
	}
	var v uint64
	for i := 0; i < len(p); i++ {
		c := p[i]
		var d uint64
		switch {
		case c >= '0' && c <= '9':
			d = uint64(c - '0')
		case c >= 'a' && c <= 'f':
			d = uint64(c-'a') + 10
		case c >= 'A' && c <= 'F':
			d = uint64(c-'A') + 10
		default:
			return 0, false
		}
		if d >= base {
			return 0, false
		}
		v = v*base + d
		if v > 0xffffffff {
			v = 0x100000000 // saturate: too big for any part
		}
	}
	return v, true
}
