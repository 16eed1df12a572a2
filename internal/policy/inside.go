package policy

import (
	"net/netip"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/fqdngate/fqdngate/internal/netaddr"
)

// Inside is the part of the network fqdngate serves: it answers DNS, proxies
// and steers traffic (DNS redirect, transparent ports) for packets from the
// inside only. A packet is from the inside when it matches one of Parts;
// this host itself is served too (see InsideConn).
type Inside struct {
	// Explicit is set when the policy has an inside key; otherwise Parts
	// are the source groups.
	Explicit bool
	Parts    []InsidePart
}

// InsidePart is one way of being inside: a packet whose source is in
// Prefixes (when set) and that arrived on one of Interfaces (when set).
type InsidePart struct {
	// Name is "" for the inside key and for the source groups that are not
	// tied to interfaces (merged into one part), else the group's name.
	Name string
	// Prefixes are the source ranges; nil means any address (an inside
	// given by interfaces alone).
	Prefixes []netip.Prefix
	// Interfaces are the input interfaces' names; nil means any.
	Interfaces []string
}

// Inside reports whether fqdngate serves the source src: loopback, or an
// address in the inside's ranges. Only the kernel sees interfaces, so a part
// given by interfaces alone admits every address here (with the nftables
// backend, its input filter has already dropped what arrived elsewhere; the
// loader refuses interfaces without it). Mapped IPv4 addresses are read as
// IPv4, as source groups read them. Inside does not allocate.
func (p *Policy) Inside(src netip.Addr) bool {
	a := sourceAddr(src)
	if a.IsLoopback() {
		return true
	}
	for i := range p.InsideSpec.Parts {
		part := &p.InsideSpec.Parts[i]
		if part.Prefixes == nil {
			return true
		}
		for _, pfx := range part.Prefixes {
			if pfx.Contains(a) {
				return true
			}
		}
	}
	return false
}

// InsideConn is the inside check of the DNS firewall and the proxy: it
// reports whether they serve a query or connection from src that arrived
// at the local address local, on a host whose own addresses are host (nil:
// none known); handshake says that src completed a handshake (TCP), so
// that it is not forged. Besides the inside, this host itself is always
// served:
//
//   - what was sent to a loopback address came from this host (Linux drops
//     packets for 127.0.0.0/8 and ::1 from elsewhere), even when the kernel
//     redirected it there from another of the host's addresses;
//   - what comes from an address of this host is this host's own: a query
//     the kernel redirected to loopback, arriving at a socket bound to a
//     wildcard address, which cannot see where it was sent, or one a
//     process sent to the host's outside address. Linux drops IPv4 packets
//     from elsewhere that claim a local source (martians, unless the
//     accept_local sysctl is on), but delivers such IPv6 ones. So an IPv6
//     source is taken on its word only after a handshake, or with the
//     nftables backend, whose listeners chain drops packets to fqdngate's
//     listeners that arrive from neither loopback nor the inside.
//
// On a socket bound to a wildcard address, pass the socket's address when
// the datagram's own is not known. InsideConn does not allocate if
// host.Contains does not.
func (p *Policy) InsideConn(src, local netip.Addr, host netaddr.Host, handshake bool) bool {
	if local.Unmap().IsLoopback() || p.Inside(src) {
		return true
	}
	if host == nil {
		return false
	}
	a := sourceAddr(src)
	if a.Is6() && !handshake && p.Firewall.Backend != BackendNftables {
		return false
	}
	return host.Contains(a)
}

// DescribeInside says who the inside is, in the policy's words, for
// explain: the inside key's ranges and interfaces, or the source groups
// (with the interfaces of those tied to some), or that there is none.
func (p *Policy) DescribeInside() string {
	if p.InsideSpec.Explicit && len(p.InsideSpec.Parts) == 1 {
		part := p.InsideSpec.Parts[0]
		var out []string
		if part.Prefixes != nil {
			rs := make([]string, len(part.Prefixes))
			for i, r := range part.Prefixes {
				rs[i] = r.String()
			}
			out = append(out, "inside.ranges "+strings.Join(rs, ", "))
		}
		if part.Interfaces != nil {
			out = append(out, "inside.interfaces "+strings.Join(part.Interfaces, ", "))
		}
		return strings.Join(out, " arriving on ")
	}
	if len(p.Sources) == 0 {
		return "none: the policy has no source groups and no inside key"
	}
	groups := sortedKeys(p.Sources)
	for i, g := range groups {
		if ifs, ok := p.SourceInterfaces[g]; ok {
			groups[i] = g + " (on " + strings.Join(ifs, ", ") + ")"
		}
	}
	return "source groups " + strings.Join(groups, ", ")
}

// wireInside is the inside key as written.
type wireInside struct {
	node                   *yaml.Node
	ranges, ifaces         []positioned
	rangesSet, ifacesSet   bool
	rangesNode, ifacesNode *yaml.Node
}

func (d *decoder) inside(n *yaml.Node) *wireInside {
	w := &wireInside{node: d.deref(n)}
	d.mapping(n, "inside",
		field{"ranges", func(v *yaml.Node) {
			w.rangesNode = d.deref(v)
			d.positionedList(&w.ranges, &w.rangesSet, "inside.ranges")(v)
		}},
		field{"interfaces", func(v *yaml.Node) {
			w.ifacesNode = d.deref(v)
			d.positionedList(&w.ifaces, &w.ifacesSet, "inside.interfaces")(v)
		}},
	)
	return w
}

// interfaceNames validates interface names as Linux does (dev_valid_name):
// 1 to 15 bytes, not . or .., without '/', ':' or white space. It returns
// them sorted and without repeats.
func (d *decoder) interfaceNames(items []positioned, path string) []string {
	var out []string
	for _, it := range items {
		if err := checkInterfaceName(it.v); err != "" {
			d.errorf(it.n, "%s: %q %s", path, it.v, err)
			continue
		}
		out = append(out, it.v)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func checkInterfaceName(s string) string {
	switch {
	case s == "":
		return "is empty; write an interface name, like eth1"
	case len(s) > 15:
		return "is longer than 15 bytes, the longest interface name Linux allows"
	case s == "." || s == "..":
		return "is not an interface name"
	case strings.Contains(s, "*"):
		return "is a wildcard; list each interface by its name"
	case strings.ContainsAny(s, "/: \t\n\r\v\f"):
		return "holds '/', ':' or white space, which interface names cannot"
	}
	return ""
}

// insideInputs are the decoded pieces compileInside needs, with the nodes
// its errors point at.
type insideInputs struct {
	wire       *wireInside // nil: no inside key
	hookNode   *yaml.Node
	listenNode map[string]*yaml.Node // by key: dns, proxy, transparent
	groupNodes map[string]*yaml.Node // source group keys
	ifNodes    map[string]*yaml.Node // sources.<group>.interfaces values
}

// compileInside sets p.InsideSpec from the inside key, or from the source
// groups, and refuses a policy that needs an inside it cannot know: a
// gateway (hook forward with the nftables backend) or a listener other
// hosts can reach, with neither.
func (d *decoder) compileInside(p *Policy, in insideInputs) {
	for _, g := range sortedKeys(p.SourceInterfaces) {
		switch {
		case p.Firewall.Backend != BackendNftables:
			d.errorf(in.ifNodes[g], "sources.%s.interfaces needs firewall.backend: nftables: only the kernel sees the interface a packet arrived on (the DNS firewall and the proxy decide groups by address); remove interfaces or set backend: nftables", g)
		case p.Firewall.Hook != HookForward:
			d.errorf(in.ifNodes[g], "sources.%s.interfaces: with firewall.hook: output every packet is this host's own and arrives on no interface, so the group would match nothing; remove interfaces, or use hook: forward", g)
		}
	}
	if w := in.wire; w != nil {
		p.InsideSpec.Explicit = true
		part := InsidePart{}
		for _, r := range w.ranges {
			pfx, err := parsePrefix(r.v)
			if err != nil {
				d.errorf(r.n, "inside.ranges: %v", err)
				continue
			}
			part.Prefixes = append(part.Prefixes, pfx)
		}
		part.Interfaces = d.interfaceNames(w.ifaces, "inside.interfaces")
		if w.ifacesSet && len(w.ifaces) == 0 {
			d.errorf(w.ifacesNode, "inside.interfaces is empty; list interfaces like [eth1], or remove the key")
		}
		if w.rangesSet && len(w.ranges) == 0 {
			d.errorf(w.rangesNode, "inside.ranges is empty; list ranges like [10.0.0.0/8], or remove the key")
		}
		if !w.rangesSet && !w.ifacesSet && (w.node.Kind == yaml.MappingNode || isNull(w.node)) {
			d.errorf(w.node, "inside is empty; list ranges, interfaces or both, like inside: {ranges: [10.0.0.0/8]}, or remove it to serve the source groups")
		}
		if w.ifacesSet && p.Firewall.Backend != BackendNftables {
			d.errorf(w.ifacesNode, "inside.interfaces needs firewall.backend: nftables: only the kernel sees the interface a packet arrived on; list the inside's addresses under inside.ranges instead, or set backend: nftables")
		}
		if w.rangesSet {
			d.groupsOutside(p, part.Prefixes, in.groupNodes)
		}
		p.InsideSpec.Parts = []InsidePart{part}
		return
	}
	// No inside key: the source groups are the inside. Groups tied to
	// interfaces are inside on those only.
	var untied []netip.Prefix
	var tied []InsidePart
	for _, g := range sortedKeys(p.Sources) {
		if ifs, ok := p.SourceInterfaces[g]; ok {
			tied = append(tied, InsidePart{Name: g, Prefixes: p.sourceRanges(g), Interfaces: ifs})
			continue
		}
		untied = append(untied, p.sourceRanges(g)...)
	}
	if untied != nil {
		p.InsideSpec.Parts = append(p.InsideSpec.Parts, InsidePart{Prefixes: untied})
	}
	p.InsideSpec.Parts = append(p.InsideSpec.Parts, tied...)
	if len(p.Sources) > 0 {
		return
	}
	const write = "list it, like inside: {ranges: [10.0.0.0/8]} or inside: {interfaces: [eth1]}, or define source groups"
	if p.Firewall.Backend == BackendNftables && p.Firewall.Hook == HookForward {
		d.errorf(in.hookNode, "firewall.hook: forward: a gateway serves DNS and steers traffic only for its inside, and this policy names none (no sources, no inside); %s", write)
		return
	}
	for _, key := range []string{"dns", "proxy", "transparent"} {
		addr := map[string]string{"dns": p.Listen.DNS, "proxy": p.Listen.Proxy, "transparent": p.Listen.Transparent}[key]
		ap, err := netip.ParseAddrPort(addr)
		if err != nil || ap.Addr().Unmap().IsLoopback() {
			continue
		}
		n := in.listenNode[key]
		if n == nil {
			n = in.hookNode
		}
		d.errorf(n, "listen.%s: %s can be reached from other hosts, and fqdngate serves only its inside, which this policy does not name (no sources, no inside); %s, or listen on 127.0.0.1", key, addr, write)
		return
	}
}

// groupsOutside reports source group prefixes that inside.ranges do not
// cover: their clients would be neither answered nor steered.
func (d *decoder) groupsOutside(p *Policy, ranges []netip.Prefix, groupNodes map[string]*yaml.Node) {
	for _, g := range sortedKeys(p.Sources) {
		for _, pfx := range p.Sources[g] {
			if !slices.ContainsFunc(ranges, func(r netip.Prefix) bool { return covers(r, pfx) }) {
				d.errorf(groupNodes[g], "source group %q: %s is not in inside.ranges, so fqdngate would neither answer its DNS nor steer its traffic; add it to inside.ranges", g, pfx)
			}
		}
	}
	// Pods' addresses lie in the pod range, one of cluster_cidrs; which
	// one is not written, but when inside.ranges cover none of them no
	// pod could be served.
	if k := p.Kubernetes; k != nil && len(p.Pods) > 0 && len(k.ClusterCIDRs) > 0 {
		if !slices.ContainsFunc(k.ClusterCIDRs, func(c netip.Prefix) bool {
			return slices.ContainsFunc(ranges, func(r netip.Prefix) bool { return covers(r, c) })
		}) {
			g := sortedKeys(p.Pods)[0]
			d.errorf(groupNodes[g], "source group %q selects pods, whose addresses are in kubernetes.cluster_cidrs, and inside.ranges cover none of them, so fqdngate would neither answer the pods' DNS nor steer their traffic; add the pod range (like %s) to inside.ranges", g, k.ClusterCIDRs[0])
		}
	}
}

// covers reports whether outer holds every address of inner.
func covers(outer, inner netip.Prefix) bool {
	return outer.Addr().Is4() == inner.Addr().Is4() && outer.Bits() <= inner.Bits() && outer.Contains(inner.Addr())
}
