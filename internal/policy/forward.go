package policy

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/net/publicsuffix"
	"gopkg.in/yaml.v3"

	"github.com/fqdngate/fqdngate/internal/dnsname"
)

// ForwardZone is a zone whose names are forwarded to its own servers
// (dns.forward): an internal zone, such as a cluster's cluster.local or an
// Active Directory domain, whose authoritative servers answer for it. Its
// names need no rule, are answered with whatever the servers give, and
// their addresses are never learned.
type ForwardZone struct {
	// Zone is the zone's apex; names at or under it are forwarded.
	Zone dnsname.Name
	// To are the zone's servers, tried like dns.upstreams.
	To []Upstream
}

// Forwarded returns the forward zone that name (any case, with or without
// the trailing dot) is at or under, the longest when zones nest, or nil
// when it is in none. It does not allocate.
func (p *Policy) Forwarded(name string) *ForwardZone {
	if len(p.DNS.Forward) == 0 {
		return nil
	}
	var buf nameBuf
	b, ok := canonical(&buf, name)
	if !ok {
		return nil
	}
	return p.forwarded(b)
}

// forwarded is Forwarded for the canonical name b: it looks b and each of
// its parent names up in the zones' index, longest first, so the first
// hit is the longest zone. (A map index converted from bytes does not
// allocate.)
func (p *Policy) forwarded(b []byte) *ForwardZone {
	idx := p.DNS.forwardIdx
	if len(idx) == 0 {
		return nil
	}
	for {
		if i, ok := idx[string(b)]; ok {
			return &p.DNS.Forward[i]
		}
		dot := bytes.IndexByte(b, '.')
		if dot < 0 {
			return nil
		}
		b = b[dot+1:]
	}
}

// inZone reports whether the canonical name b is zone or under it.
func inZone(b []byte, zone string) bool {
	n := len(b) - len(zone)
	return n >= 0 && string(b[n:]) == zone && (n == 0 || b[n-1] == '.')
}

// wireForward is one dns.forward item as written.
type wireForward struct {
	node       *yaml.Node
	zone       positioned
	reverse    positioned
	to         []positioned
	toSet      bool
	toNode     *yaml.Node
	zoneSet    bool
	reverseSet bool
}

func (d *decoder) forwardItem(n *yaml.Node) *wireForward {
	n = d.deref(n)
	w := &wireForward{node: n}
	d.mapping(n, "dns.forward item",
		field{"zone", func(v *yaml.Node) {
			if s, ok := d.scalar(v, "dns.forward zone"); ok {
				w.zone, w.zoneSet = positioned{s, d.deref(v)}, true
			}
		}},
		field{"reverse", func(v *yaml.Node) {
			if s, ok := d.scalar(v, "dns.forward reverse"); ok {
				w.reverse, w.reverseSet = positioned{s, d.deref(v)}, true
			}
		}},
		field{"to", func(v *yaml.Node) {
			w.toNode = d.deref(v)
			d.positionedList(&w.to, &w.toSet, "dns.forward to")(v)
		}},
	)
	if n.Kind != yaml.MappingNode {
		if !isNull(n) {
			return nil // mapping reported it
		}
		d.errorf(n, "dns.forward has an empty item; write it like {zone: cluster.local, to: [198.51.100.10]}")
		return nil
	}
	return w
}

// compileForward checks the forward zones and sorts them longest first,
// so that Forwarded finds the longest zone that holds a name. It runs
// after the rules are compiled: a rule naming something inside a zone is
// an error.
func (d *decoder) compileForward(p *Policy, items []*wireForward) {
	seen := map[dnsname.Name]*yaml.Node{}
	for _, w := range items {
		if w == nil {
			continue
		}
		var zones []dnsname.Name
		at := w.zone.n
		switch {
		case w.zoneSet && w.reverseSet:
			d.errorf(w.reverse.n, "dns.forward item has both zone and reverse; write one per item, like {zone: cluster.local, to: [...]} and {reverse: 10.96.0.0/12, to: [...]}")
			continue
		case w.reverseSet:
			at = w.reverse.n
			zones = d.reverseZones(w.reverse)
		case w.zoneSet:
			if z, ok := d.forwardZone(w.zone); ok {
				zones = []dnsname.Name{z}
			}
		default:
			d.errorf(w.node, "dns.forward item has no zone; write it like {zone: cluster.local, to: [198.51.100.10]} or {reverse: 10.96.0.0/12, to: [198.51.100.10]}")
			continue
		}
		if len(zones) == 0 {
			continue // reported
		}
		label := "zone " + string(zones[0])
		if w.reverseSet {
			label = "reverse " + w.reverse.v
		}
		dupe := false
		for _, z := range zones {
			if prev, dup := seen[z]; dup {
				d.errorf(at, "dns.forward: zone %s is listed twice (first at line %d); merge its servers into one item", z, prev.Line)
				dupe = true
				break
			}
			seen[z] = at
		}
		if dupe {
			continue
		}
		var to []Upstream
		if !w.toSet && hasOtherKeys(w.node, "zone", "reverse", "to") {
			continue // a misspelt to is reported as an unknown key already
		}
		if !w.toSet || len(w.to) == 0 {
			at := w.toNode
			if at == nil {
				at = w.node
			}
			d.errorf(at, "dns.forward: %s has no servers; list them under to, like to: [198.51.100.10]", label)
			continue
		}
		self, _ := netip.ParseAddrPort(p.Listen.DNS)
		for _, t := range w.to {
			up, err := ParseUpstream(t.v)
			if err != nil {
				d.errorf(t.n, "dns.forward: %s: %v", label, err)
				continue
			}
			if isSelf(up.Addr, self) {
				d.errorf(t.n, "dns.forward: %s: %s is fqdngate's own DNS listener, so its queries would go round in circles; list the zone's own servers", label, up.Addr)
				continue
			}
			to = append(to, up)
		}
		for _, z := range zones {
			d.zoneRuleOverlap(p, z, at)
			p.DNS.Forward = append(p.DNS.Forward, ForwardZone{Zone: z, To: to})
		}
	}
	slices.SortStableFunc(p.DNS.Forward, func(a, b ForwardZone) int { return len(b.Zone) - len(a.Zone) })
	if len(p.DNS.Forward) > 0 {
		p.DNS.forwardIdx = make(map[string]int, len(p.DNS.Forward))
		for i, z := range p.DNS.Forward {
			p.DNS.forwardIdx[string(z.Zone)] = i
		}
	}
}

// reverseZones returns the reverse zones (in-addr.arpa, ip6.arpa) that
// hold the names of the addresses of a CIDR: one when its length is on a
// label boundary (8 bits for IPv4, a 4-bit nibble for IPv6), else one per
// value of the bits up to the next boundary (10.96.0.0/12 is
// 96.10.in-addr.arpa to 111.10.in-addr.arpa).
func (d *decoder) reverseZones(v positioned) []dnsname.Name {
	pfx, err := netip.ParsePrefix(v.v)
	if err != nil {
		if a, aerr := netip.ParseAddr(v.v); aerr == nil {
			pfx = netip.PrefixFrom(a, a.BitLen())
		} else {
			d.errorf(v.n, "dns.forward: reverse %q is not a CIDR; write the range whose reverse names to forward, like 10.96.0.0/12", v.v)
			return nil
		}
	}
	if pfx.Masked() != pfx {
		d.errorf(v.n, "dns.forward: reverse %q has bits set past the prefix length; write %s", v.v, pfx.Masked())
		return nil
	}
	if pfx.Addr().Is4In6() {
		d.errorf(v.n, "dns.forward: reverse %s is an IPv4-mapped range; write it as IPv4, like %s", pfx, netip.PrefixFrom(pfx.Addr().Unmap(), max(pfx.Bits()-96, 0)))
		return nil
	}
	step, suffix := 8, "in-addr.arpa"
	if pfx.Addr().Is6() {
		step, suffix = 4, "ip6.arpa"
	}
	if pfx.Bits() == 0 {
		d.errorf(v.n, "dns.forward: reverse %s is every address, so every reverse name would be forwarded; write the internal range, like 10.96.0.0/12", pfx)
		return nil
	}
	bits := (pfx.Bits() + step - 1) / step * step
	var out []dnsname.Name
	for sub := range subPrefixes(pfx, bits) {
		out = append(out, dnsname.Name(reverseName(sub, step)+suffix))
	}
	return out
}

// subPrefixes yields the prefixes of length bits (at least pfx's) that
// make up pfx, in order.
func subPrefixes(pfx netip.Prefix, bits int) func(func(netip.Prefix) bool) {
	return func(yield func(netip.Prefix) bool) {
		n := 1 << (bits - pfx.Bits())
		a := pfx.Addr()
		for range n {
			if !yield(netip.PrefixFrom(a, bits)) {
				return
			}
			// The next prefix of this length: add 1 at bit position bits.
			b := a.AsSlice()
			for i := bits - 1; i >= 0; i-- {
				mask := byte(0x80 >> (i % 8))
				b[i/8] ^= mask
				if b[i/8]&mask != 0 {
					break // no carry
				}
			}
			a, _ = netip.AddrFromSlice(b)
		}
	}
}

// reverseName is the reverse name of pfx's fixed labels, with a trailing
// dot: 10.244.0.0/16 is "244.10.", 2001:db8::/32 "8.b.d.0.1.0.0.2.".
func reverseName(pfx netip.Prefix, step int) string {
	b := pfx.Addr().AsSlice()
	var labels []string
	if step == 8 {
		for i := 0; i < pfx.Bits()/8; i++ {
			labels = append(labels, fmt.Sprint(b[i]))
		}
	} else {
		for i := 0; i < pfx.Bits()/4; i++ {
			nib := b[i/2] >> 4
			if i%2 == 1 {
				nib = b[i/2] & 0xf
			}
			labels = append(labels, fmt.Sprintf("%x", nib))
		}
	}
	slices.Reverse(labels)
	return strings.Join(labels, ".") + "."
}

// isSelf reports whether a server at ap is fqdngate's DNS listener at
// self: the same address, or, for a listener on a wildcard address, a
// loopback address on its port.
func isSelf(ap, self netip.AddrPort) bool {
	if !self.IsValid() || ap.Port() != self.Port() {
		return false
	}
	a, s := ap.Addr().Unmap(), self.Addr().Unmap()
	return a == s || s.IsUnspecified() && a.IsLoopback()
}

// forwardZone parses a zone name: a valid name, not the root, not a
// public suffix (forwarding all of com, or all of in-addr.arpa, would
// hand whole swathes of the DNS to one server without rules).
func (d *decoder) forwardZone(v positioned) (dnsname.Name, bool) {
	s := strings.TrimSuffix(v.v, ".")
	if s == "" {
		d.errorf(v.n, "dns.forward: zone %q is the root, which would forward every name without rules; name an internal zone like cluster.local", v.v)
		return "", false
	}
	if strings.Contains(s, "*") {
		d.errorf(v.n, "dns.forward: zone %q is a pattern; a zone covers itself and every name under it, so write it without wildcards, like cluster.local", v.v)
		return "", false
	}
	z, err := dnsname.Parse(s)
	if err != nil {
		d.errorf(v.n, "dns.forward: zone %q is not a valid name: %v; write it like cluster.local", v.v, err)
		return "", false
	}
	if ps, icann := publicsuffix.PublicSuffix(string(z)); icann && ps == string(z) {
		d.errorf(v.n, "dns.forward: zone %s is a public suffix, so every name under it would be answered without rules; forward the internal zone under it you need, like corp.example.com, or the reverse zones of a range, like {reverse: 10.96.0.0/12, to: [...]}", z)
		return "", false
	}
	return z, true
}

// zoneRuleOverlap reports every rule target that names a name at or under
// zone: such names are forwarded without rules and never learned, so the
// target could never allow anything, and the reader could not tell which
// of the two was meant. A wildcard above the zone (**.example.com beside
// the zone corp.example.com) is not an error: it also names names outside
// the zone, and those it allows; inside the zone the longer match, the
// zone, wins, as between zones (Decide denies names in a zone).
func (d *decoder) zoneRuleOverlap(p *Policy, zone dnsname.Name, at *yaml.Node) {
	for _, r := range p.Rules {
		for _, pat := range r.Names {
			if inZone([]byte(pat.Base), string(zone)) {
				d.errorf(at, "dns.forward: zone %s covers %q of rule %q: its names are forwarded without rules and their addresses are never learned, so the rule could not allow them; remove the target from the rule, or forward a narrower zone", zone, pat.Raw, r.Name)
			}
		}
	}
}

// ForwardString is how explain and check name a zone and its servers.
func (z *ForwardZone) String() string {
	to := make([]string, len(z.To))
	for i, u := range z.To {
		to[i] = u.String()
	}
	return fmt.Sprintf("%s (to %s)", z.Zone, strings.Join(to, ", "))
}
