package policy

import (
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

// forwarded is Forwarded for the canonical name b.
func (p *Policy) forwarded(b []byte) *ForwardZone {
	// Longest first (compileForward), so the first that holds wins.
	for i := range p.DNS.Forward {
		z := &p.DNS.Forward[i]
		if inZone(b, string(z.Zone)) {
			return z
		}
	}
	return nil
}

// inZone reports whether the canonical name b is zone or under it.
func inZone(b []byte, zone string) bool {
	n := len(b) - len(zone)
	return n >= 0 && string(b[n:]) == zone && (n == 0 || b[n-1] == '.')
}

// wireForward is one dns.forward item as written.
type wireForward struct {
	node    *yaml.Node
	zone    positioned
	to      []positioned
	toSet   bool
	toNode  *yaml.Node
	zoneSet bool
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
		if !w.zoneSet {
			d.errorf(w.node, "dns.forward item has no zone; write it like {zone: cluster.local, to: [198.51.100.10]}")
			continue
		}
		z, ok := d.forwardZone(w.zone)
		if !ok {
			continue
		}
		if prev, dup := seen[z]; dup {
			d.errorf(w.zone.n, "dns.forward: zone %s is listed twice (first at line %d); merge its servers into one item", z, prev.Line)
			continue
		}
		seen[z] = w.zone.n
		fz := ForwardZone{Zone: z}
		if !w.toSet && hasOtherKeys(w.node, "zone", "to") {
			continue // a misspelt to is reported as an unknown key already
		}
		if !w.toSet || len(w.to) == 0 {
			at := w.toNode
			if at == nil {
				at = w.node
			}
			d.errorf(at, "dns.forward: zone %s has no servers; list them under to, like to: [198.51.100.10]", z)
			continue
		}
		self, _ := netip.ParseAddrPort(p.Listen.DNS)
		for _, t := range w.to {
			up, err := ParseUpstream(t.v)
			if err != nil {
				d.errorf(t.n, "dns.forward: zone %s: %v", z, err)
				continue
			}
			if isSelf(up.Addr, self) {
				d.errorf(t.n, "dns.forward: zone %s: %s is fqdngate's own DNS listener, so its queries would go round in circles; list the zone's own servers", z, up.Addr)
				continue
			}
			fz.To = append(fz.To, up)
		}
		d.zoneRuleOverlap(p, fz.Zone, w.zone.n)
		p.DNS.Forward = append(p.DNS.Forward, fz)
	}
	slices.SortStableFunc(p.DNS.Forward, func(a, b ForwardZone) int { return len(b.Zone) - len(a.Zone) })
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
		d.errorf(v.n, "dns.forward: zone %s is a public suffix, so every name under it would be answered without rules; forward the internal zone under it you need, like corp.example.com or 10.in-addr.arpa", z)
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
