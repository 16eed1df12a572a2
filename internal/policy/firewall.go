package policy

import (
	"fmt"
	"net/netip"

	"gopkg.in/yaml.v3"
)

// wireFirewall is what the firewall checks need beyond Policy's fields:
// values as written, and positions, for checks that span sections.
type wireFirewall struct {
	denyWith, logAllowed string
	denyNode, logNode    *yaml.Node
	listenNode           *yaml.Node // listen.transparent
	portsNode            *yaml.Node // firewall.transparent_ports

	intercept, unfiltered         []positioned
	interceptSet, unfilteredSet   bool
	interceptNode, unfilteredNode *yaml.Node
}

// firewall compiles the firewall settings that depend on others: the
// kernel's verdicts, and whether the transparent ports can be steered for
// every family a source can use. It runs after the rules are compiled.
func (d *decoder) firewall(p *Policy, w *wireFirewall) {
	switch w.denyWith {
	case "", "drop":
		p.Firewall.DenyWith = KernelDrop
	case "reject":
		p.Firewall.DenyWith = KernelReject
	default:
		d.errorf(w.denyNode, "firewall.deny_with must be drop or reject, not %q", w.denyWith)
	}
	switch w.logAllowed {
	case "", "off":
		p.Firewall.LogAllowed = LogAllowedOff
	case "all":
		p.Firewall.LogAllowed = LogAllowedAll
	case "sampled":
		p.Firewall.LogAllowed = LogAllowedSampled
	default:
		d.errorf(w.logNode, "firewall.log_allowed must be off, all or sampled, not %q", w.logAllowed)
	}
	if p.Firewall.Backend == BackendNftables && len(p.Firewall.TransparentPorts) > 0 {
		d.transparentSteering(p, w)
	}
	d.interceptDNS(p, w)
	d.unfiltered(p, w)
}

// interceptDNS compiles firewall.intercept_dns: single addresses (a DNS
// service's), of a family the DNS listener can be steered to.
func (d *decoder) interceptDNS(p *Policy, w *wireFirewall) {
	if !w.interceptSet {
		return
	}
	if len(w.intercept) == 0 {
		d.errorf(w.interceptNode, "firewall.intercept_dns is empty; list DNS service addresses like [198.51.100.10], or remove the key")
		return
	}
	if p.Firewall.Backend != BackendNftables {
		d.errorf(w.interceptNode, "firewall.intercept_dns is done by the kernel and needs firewall.backend: nftables; remove it or set backend: nftables")
		return
	}
	lis, err := netip.ParseAddrPort(p.Listen.DNS)
	if p.Listen.DNS == "" || err != nil {
		d.errorf(w.interceptNode, "firewall.intercept_dns redirects queries to listen.dns, which is not set; set listen.dns: \"[::]:53\"")
		return
	}
	v4, v6 := Steered(lis, p.Firewall.Hook)
	seen := map[netip.Addr]bool{}
	for _, it := range w.intercept {
		a, err := netip.ParseAddr(it.v)
		if err != nil {
			d.errorf(it.n, "firewall.intercept_dns: %q is not an IP address; list the DNS service's address, like 198.51.100.10 (a CIDR would take every resolver in it)", it.v)
			continue
		}
		a = a.WithZone("").Unmap()
		if a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() {
			d.errorf(it.n, "firewall.intercept_dns: %s is no DNS service's address; list the address clients send their queries to, like 198.51.100.10", a)
			continue
		}
		if ok := a.Is4() && v4 || a.Is6() && v6; !ok {
			d.errorf(it.n, "firewall.intercept_dns: listen.dns %s cannot receive the %s queries the kernel would redirect to it from %s; listen on \"[::]:%d\" (both families)", lis, familyName(a.Is6()), a, lis.Port())
			continue
		}
		if seen[a] {
			d.errorf(it.n, "firewall.intercept_dns: %s is listed twice; keep one", a)
			continue
		}
		seen[a] = true
		p.Firewall.InterceptDNS = append(p.Firewall.InterceptDNS, a)
	}
}

// unfiltered compiles firewall.unfiltered: ranges between which nothing is
// egress, such as a cluster's pod and service ranges.
func (d *decoder) unfiltered(p *Policy, w *wireFirewall) {
	if !w.unfilteredSet {
		return
	}
	if len(w.unfiltered) == 0 {
		d.errorf(w.unfilteredNode, "firewall.unfiltered is empty; list ranges like [10.244.0.0/16, 10.96.0.0/12], or remove the key")
		return
	}
	if p.Firewall.Backend != BackendNftables {
		d.errorf(w.unfilteredNode, "firewall.unfiltered is applied by the kernel and needs firewall.backend: nftables; remove it or set backend: nftables")
		return
	}
	for _, it := range w.unfiltered {
		pfx, err := parsePrefix(it.v)
		if err != nil {
			d.errorf(it.n, "firewall.unfiltered: %v", err)
			continue
		}
		if pfx.Bits() == 0 {
			d.errorf(it.n, "firewall.unfiltered: %s is every address, so nothing would be filtered; list the internal ranges only, like 10.244.0.0/16", pfx)
			continue
		}
		p.Firewall.Unfiltered = append(p.Firewall.Unfiltered, pfx)
	}
}

func familyName(is6 bool) string {
	if is6 {
		return "IPv6"
	}
	return "IPv4"
}

// transparentSteering refuses a transparent listener the kernel cannot
// steer some source's connections to: those connections would otherwise
// bypass the SNI check (the kernel drops them, but the operator should
// hear it from check, not from users).
func (d *decoder) transparentSteering(p *Policy, w *wireFirewall) {
	example := p.Firewall.TransparentPorts[0]
	if p.Listen.Transparent == "" {
		d.errorf(w.portsNode, "firewall.transparent_ports needs listen.transparent, the listener the kernel steers these ports to; set listen.transparent: \"[::]:3129\"")
		return
	}
	ap, err := netip.ParseAddrPort(p.Listen.Transparent)
	if err != nil {
		return // reported where it was decoded
	}
	at := w.listenNode
	if at == nil {
		at = w.portsNode
	}
	dual := netip.AddrPortFrom(netip.IPv6Unspecified(), ap.Port())
	if ap.Addr().IsLoopback() && p.Firewall.Hook == HookForward {
		d.errorf(at, "listen.transparent %s is on loopback, where the kernel cannot steer forwarded connections (firewall.hook: forward); listen on %s (both families) or on an address of the inside interface", ap, dual)
		return
	}
	v4, v6 := Steered(ap, p.Firewall.Hook)
	for _, f := range []struct {
		name    string
		steered bool
		is6     bool
	}{{"IPv4", v4, false}, {"IPv6", v6, true}} {
		if f.steered {
			continue
		}
		if why := p.familyUser(f.is6); why != "" {
			d.errorf(at, "listen.transparent %s cannot receive %s connections to firewall.transparent_ports (such as %d), and %s; listen on %s to steer both families",
				ap, f.name, example, why, dual)
		}
	}
}

// Steered reports the address families whose connections nftables can
// steer to a listener at ap when enforcing at hook. A redirect sends a
// forwarded connection to the address of the interface it arrived on, and
// a local one to loopback; so a loopback listener is reachable only from
// the output hook, a wildcard listener for its own family ("[::]" is
// dual-stack), and any other address, by DNAT, for its family only.
func Steered(ap netip.AddrPort, hook Hook) (v4, v6 bool) {
	if !ap.IsValid() {
		return false, false
	}
	a := ap.Addr().Unmap()
	switch {
	case a.IsUnspecified():
		return true, a.Is6()
	case a.IsLoopback() && hook != HookOutput:
		return false, false
	}
	return a.Is4(), a.Is6()
}

// ListenNetwork returns the network a listener at addr ("ip:port") binds,
// for base "tcp" or "udp": an IPv4 address, 0.0.0.0 included, receives
// IPv4 only (base+"4"), as Steered and the kernel's guard of fqdngate's
// listeners take it; an IPv6 address receives its own family, and "[::]"
// both. Go alone would bind "0.0.0.0" to both families, and IPv6 would
// reach the listener unguarded.
func ListenNetwork(base, addr string) string {
	if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Addr().Unmap().Is4() {
		return base + "4"
	}
	return base
}

// familyUser says why some source may use IPv6 (is6) or IPv4: a rule
// without from applies to every source (on a gateway, every source of the
// inside, which is all that is steered), or a group a rule names has such
// addresses. It returns "" when no source can.
func (p *Policy) familyUser(is6 bool) string {
	fam := "IPv4"
	if is6 {
		fam = "IPv6"
	}
	if p.Firewall.Hook == HookOutput || p.insideHasFamily(is6) {
		for _, r := range p.Rules {
			if r.AnySource() {
				return fmt.Sprintf("rule %q applies to every source, %s ones included", r.Name, fam)
			}
		}
	}
	for _, r := range p.Rules {
		for _, g := range r.From {
			for _, pfx := range p.sourceRanges(g) {
				if pfx.Addr().Unmap().Is6() == is6 {
					return fmt.Sprintf("source group %q of rule %q has %s addresses", g, r.Name, fam)
				}
			}
		}
	}
	return ""
}

// insideHasFamily reports whether the inside admits sources of IPv6 (is6)
// or IPv4: a part with ranges of that family, or a part given by
// interfaces alone.
func (p *Policy) insideHasFamily(is6 bool) bool {
	for _, part := range p.InsideSpec.Parts {
		if part.Prefixes == nil {
			return true
		}
		for _, pfx := range part.Prefixes {
			if pfx.Addr().Unmap().Is6() == is6 {
				return true
			}
		}
	}
	return false
}
