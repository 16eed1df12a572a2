package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// This file holds what the ruleset does with the policy's inside and its
// interfaces, in chains and sets of their own: the reverse path check, the
// nat steering limited to the inside, the input filter that keeps
// fqdngate's listeners closed to the outside, and source groups tied to
// interfaces.

// Match kinds of this file, numbered apart from ruleset.go's so the two
// lists can grow independently.
const (
	iifnameIn       matchKind = iota + 64 // meta iifname @set
	iiftypeLoopback                       // meta iiftype loopback
	saddrPrefix                           // ip saddr prefix
	daddrPrefix                           // ip daddr prefix
	fibNoRoute                            // fib saddr [. iif] oif missing
)

// ifnameSet holds interface names (static).
const ifnameSet setKind = 64

// prioRaw is the raw priority (-300): before connection tracking, so a
// forged packet is dropped before it creates a conntrack entry.
const prioRaw = -300

// Chain names of this file. The reverse path chain hooks prerouting (all
// incoming traffic, to this host and through it); the listeners chain
// hooks input.
const (
	reversePathChain = "reverse_path"
	listenersChain   = "listeners"
)

// addInside adds to d the sets and chains of this file.
func addInside(d *desired, cfg *Config, p *policy.Policy, lis listeners) {
	for _, g := range sortedTied(p) {
		d.sets = append(d.sets, setSpec{name: ifaceSetName(g), kind: ifnameSet, ifnames: p.SourceInterfaces[g], group: g})
	}
	for _, part := range p.InsideSpec.Parts {
		for _, f := range families {
			if pfx := prefixesOf(part.Prefixes, f); len(pfx) > 0 {
				d.sets = append(d.sets, setSpec{name: insideSetName(part.Name, f), fam: f, kind: sourceSet, prefixes: pfx})
			}
		}
		if part.Name == "" && part.Interfaces != nil {
			d.sets = append(d.sets, setSpec{name: insideIfaceSet, kind: ifnameSet, ifnames: part.Interfaces})
		}
	}
	if c := reversePath(p); c != nil {
		d.chains = append(d.chains, *c)
	}
	if c := listenerGuard(p, lis); c != nil {
		d.chains = append(d.chains, *c)
	}
}

func sortedTied(p *policy.Policy) []string {
	var out []string
	for g := range p.SourceInterfaces {
		out = append(out, g)
	}
	slices.Sort(out)
	return out
}

func ifaceSetName(group string) string { return "iif." + ident(group) }

const insideIfaceSet = "inside_if"

func insideSetName(part string, f family) string {
	n := "inside" + f.String()
	if part != "" {
		n += "." + ident(part)
	}
	return n
}

func prefixesOf(pfx []netip.Prefix, f family) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range pfx {
		if x = unmapPrefix(x); familyOf(x.Addr()) == f {
			out = append(out, x)
		}
	}
	return out
}

// groupInterfaces is the match that ties group g to its interfaces, if the
// policy ties it: the kernel counts a packet in g only when it arrived on
// one of them.
func groupInterfaces(p *policy.Policy, g string) []match {
	if _, ok := p.SourceInterfaces[g]; !ok {
		return nil
	}
	return []match{{kind: iifnameIn, set: ifaceSetName(g)}}
}

// insideMatches returns, for each way of being inside, the matches that
// hold for its packets: a part with ranges gives one list per family it has
// addresses of; a part of interfaces alone, one list.
func insideMatches(p *policy.Policy) [][]match {
	var out [][]match
	for _, part := range p.InsideSpec.Parts {
		var ifs []match
		switch {
		case part.Name != "" && part.Interfaces != nil:
			ifs = []match{{kind: iifnameIn, set: ifaceSetName(part.Name)}}
		case part.Interfaces != nil:
			ifs = []match{{kind: iifnameIn, set: insideIfaceSet}}
		}
		if part.Prefixes == nil {
			out = append(out, ifs)
			continue
		}
		for _, f := range families {
			if len(prefixesOf(part.Prefixes, f)) == 0 {
				continue
			}
			out = append(out, append([]match{{kind: saddrIn, fam: f, set: insideSetName(part.Name, f)}}, ifs...))
		}
	}
	return out
}

// steerSources sends the sources fqdngate serves to chain: on the output
// hook every packet is this host's own; on a gateway only the inside's,
// so DNS and transparent ports arriving from the outside (towards a
// protected host, or the gateway itself) are never redirected to fqdngate.
func steerSources(cfg *Config, p *policy.Policy, chain string) []ruleSpec {
	if cfg.Hook == policy.HookOutput {
		return everySource(chain)
	}
	var out []ruleSpec
	for _, ms := range insideMatches(p) {
		out = append(out, ruleSpec{matches: ms, stmts: []stmt{{kind: jump, chain: chain}}, comment: "inside"})
	}
	return out
}

// reversePath is the chain that drops packets whose source address does not
// route back the way they came (firewall.reverse_path), before anything
// else sees them: a host on one link cannot pass for a group on another.
// Exempt are packets that cannot have a route back by nature, which Linux
// never forwards: from 0.0.0.0 (DHCP before an address), from :: (duplicate
// address detection, MLD) and from IPv6 link-local addresses (neighbour
// discovery, DHCPv6, router advertisements); and this host's own, on
// loopback. In audit mode drops are counted, not made.
func reversePath(p *policy.Policy) *chainSpec {
	mode := p.Firewall.ReversePath
	if mode == policy.ReversePathOff {
		return nil
	}
	accept := []stmt{{kind: accept}}
	return &chainSpec{name: reversePathChain, hook: "prerouting", prio: prioRaw, rules: []ruleSpec{
		{matches: []match{{kind: iiftypeLoopback}}, stmts: accept, comment: "this host"},
		{matches: []match{{kind: saddrPrefix, fam: v4, pfx: netip.MustParsePrefix("0.0.0.0/32")}}, stmts: accept, comment: "no address yet"},
		{matches: []match{{kind: saddrPrefix, fam: v6, pfx: netip.MustParsePrefix("::/128")}}, stmts: accept, comment: "no address yet"},
		{matches: []match{{kind: saddrPrefix, fam: v6, pfx: netip.MustParsePrefix("fe80::/10")}}, stmts: accept, comment: "link-local"},
		{matches: []match{{kind: fibNoRoute, strict: mode == policy.ReversePathStrict}}, stmts: verdictDrop(p.Mode), comment: "reverse path " + mode.String()},
	}}
}

// listenerGuard is the input chain that keeps fqdngate's DNS, proxy and
// transparent listeners closed to the outside: a packet for one of them
// from neither the inside nor this host is dropped, whatever the mode (an
// open resolver is no audit finding to be logged). It is also what makes
// an inside of interfaces alone hold: the DNS firewall and the proxy see
// addresses only.
func listenerGuard(p *policy.Policy, lis listeners) *chainSpec {
	proxy, _ := netip.ParseAddrPort(p.Listen.Proxy)
	type listener struct {
		name   string // as guardedListeners has it
		ap     netip.AddrPort
		protos []policy.Proto
	}
	var drops []ruleSpec
	for _, l := range []listener{
		{"dns", lis.dns, []policy.Proto{policy.UDP, policy.TCP}},
		{"proxy", proxy, []policy.Proto{policy.TCP}},
		{"transparent", lis.transparent, []policy.Proto{policy.TCP}},
	} {
		if !l.ap.IsValid() {
			continue
		}
		a := l.ap.Addr().Unmap()
		var dsts [][]match
		switch {
		case a.IsUnspecified() && a.Is6():
			// Go listens dual-stack on "[::]:port".
			dsts = [][]match{{{kind: nfproto, fam: v4}}, {{kind: nfproto, fam: v6}}}
		case a.IsUnspecified():
			dsts = [][]match{{{kind: nfproto, fam: v4}}}
		default:
			dsts = [][]match{{{kind: daddrPrefix, fam: familyOf(a), pfx: netip.PrefixFrom(a, a.BitLen())}}}
		}
		for _, dst := range dsts {
			for _, proto := range l.protos {
				ms := append(slices.Clone(dst), match{kind: l4proto, proto: proto}, match{kind: dport, lo: l.ap.Port(), hi: l.ap.Port()})
				drops = append(drops, ruleSpec{matches: ms, stmts: []stmt{{kind: counter}, {kind: drop}}, comment: outsideComment(l.name)})
			}
		}
	}
	if len(drops) == 0 {
		return nil
	}
	accept := []stmt{{kind: accept}}
	rules := []ruleSpec{
		{matches: []match{{kind: ctState, state: stateEstablished}}, stmts: accept, comment: "established flows"},
		{matches: []match{{kind: iiftypeLoopback}}, stmts: accept, comment: "this host"},
	}
	for _, ms := range insideMatches(p) {
		rules = append(rules, ruleSpec{matches: ms, stmts: accept, comment: "inside"})
	}
	return &chainSpec{name: listenersChain, hook: "input", rules: append(rules, drops...)}
}

// insideText renders this file's match kinds in nft syntax.
func (m match) insideText() (string, bool) {
	switch m.kind {
	case iifnameIn:
		return "iifname @" + m.set, true
	case iiftypeLoopback:
		return "meta iiftype loopback", true
	case saddrPrefix, daddrPrefix:
		dir := " saddr "
		if m.kind == daddrPrefix {
			dir = " daddr "
		}
		if m.pfx.IsSingleIP() {
			return m.fam.ip() + dir + m.pfx.Addr().String(), true
		}
		return m.fam.ip() + dir + m.pfx.String(), true
	case fibNoRoute:
		if m.strict {
			return "fib saddr . iif oif missing", true
		}
		return "fib saddr oif missing", true
	}
	return "", false
}

// insideExprs compiles this file's match kinds, as nft compiles them.
func (m match) insideExprs(sets map[string]*nftables.Set) ([]expr.Any, bool) {
	switch m.kind {
	case iifnameIn:
		s := sets[m.set]
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
		}, true
	case iiftypeLoopback:
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyIIFTYPE, Register: 1}, reg1cmp(binaryutil.NativeEndian.PutUint16(arphrdLoopback))}, true
	case saddrPrefix, daddrPrefix:
		off := saddrOffset[m.fam]
		if m.kind == daddrPrefix {
			off = daddrOffset[m.fam]
		}
		out := append(nfprotoExprs(m.fam), &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: addrLen[m.fam]})
		if !m.pfx.IsSingleIP() {
			out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: addrLen[m.fam],
				Mask: prefixMask(m.pfx), Xor: make([]byte, addrLen[m.fam])})
		}
		return append(out, reg1cmp(m.pfx.Masked().Addr().AsSlice())), true
	case fibNoRoute:
		return []expr.Any{
			&expr.Fib{Register: 1, FlagSADDR: true, FlagIIF: m.strict, FlagPRESENT: true, ResultOIF: true},
			reg1cmp(make([]byte, 4)),
		}, true
	}
	return nil, false
}

// fibName names what a fib expression loads, as nft spells it.
func fibName(e *expr.Fib) string {
	switch {
	case e.FlagDADDR && e.ResultADDRTYPE:
		return "fib daddr type"
	case e.FlagSADDR && e.FlagIIF && e.ResultOIF:
		return "fib saddr . iif oif"
	case e.FlagSADDR && e.ResultOIF:
		return "fib saddr oif"
	}
	return "fib"
}

// insideValue shows the values this file's matches compare with.
func insideValue(subject string, b []byte) (string, bool) {
	switch subject {
	case "ip saddr", "ip daddr", "ip6 saddr", "ip6 daddr":
		if a, ok := netip.AddrFromSlice(b); ok {
			return a.String(), true
		}
	case "meta iiftype":
		if len(b) == 2 && binary.NativeEndian.Uint16(b) == arphrdLoopback {
			return "loopback", true
		}
	case "iifname":
		return fmt.Sprintf("%q", strings.TrimRight(string(b), "\x00")), true
	case "fib saddr . iif oif", "fib saddr oif":
		if len(b) == 4 && binary.NativeEndian.Uint32(b) == 0 {
			return "missing", true
		}
	}
	return "", false
}

// ifnameElements encodes interface names as nft does: 16 bytes, padded
// with zeros.
func ifnameElements(names []string) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, len(names))
	for _, n := range names {
		out = append(out, nftables.SetElement{Key: ifnameKey(n)})
	}
	return out
}

func ifnameKey(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}
