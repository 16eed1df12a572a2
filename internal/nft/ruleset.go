package nft

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/sockmark"
)

// The ruleset is computed as plain values first (this file), then turned
// into netlink messages (exprs.go, backend.go) or text (Render). Keeping
// the desired state pure makes --dry-run and reconciliation the same code.

// family is an address family of a set or rule.
type family uint8

const (
	v4 family = iota
	v6
)

var families = [...]family{v4, v6}

func (f family) String() string { return [...]string{"4", "6"}[f] }

// ip is the nft keyword for the family's network header.
func (f family) ip() string { return [...]string{"ip", "ip6"}[f] }

func familyOf(a netip.Addr) family {
	if a.Unmap().Is4() {
		return v4
	}
	return v6
}

// setKind says what a set holds, which fixes its flags.
type setKind uint8

const (
	sourceSet  setKind = iota // a group's source prefixes (interval, static)
	cidrSet                   // a rule's CIDR targets (interval, static)
	learnedSet                // addresses learned for rule×group (timeout, dynamic)
	podSet                    // a pod-selecting group's pod addresses (hash, no timeout; see pods.go)
)

// setSpec is one named set of the desired table.
type setSpec struct {
	name     string
	fam      family
	kind     setKind
	prefixes []netip.Prefix // static contents, for interval sets
	ifnames  []string       // static contents, for ifname sets
	addrs    []netip.Addr   // contents of pod sets, sorted
	// rule and group identify a learned set; group is "" for rules
	// without from.
	rule, group string
}

func (s *setSpec) interval() bool { return s.kind == sourceSet || s.kind == cidrSet }

// static reports whether the set's contents come from the policy (and
// are replaced on every Apply), not from learning.
func (s *setSpec) static() bool { return s.kind != learnedSet }

// learnKey finds the learned set for an entry.
type learnKey struct {
	rule, group string
	fam         family
}

// chainSpec is one chain of the desired table. Base chains have a hook.
type chainSpec struct {
	name  string
	hook  string // "" for regular chains; else output, forward, prerouting
	nat   bool   // type nat (else filter)
	rules []ruleSpec

	// prio is a filter chain's priority: 0 is "filter", prioRaw "raw";
	// a nat chain's: 0 is "dstnat" (-100).
	prio int32
}

// ruleSpec is one rule: all matches must hold, then the statements run.
type ruleSpec struct {
	matches []match
	stmts   []stmt
	comment string
}

// match is one packet test.
type match struct {
	kind   matchKind
	fam    family
	set    string // for saddrIn, daddrIn
	proto  policy.Proto
	lo, hi uint16 // for dport, icmpv6Type; lo for hopLimit
	state  uint32 // for ctState: conntrack state bits, any of which match

	pfx    netip.Prefix // for saddrPrefix, daddrPrefix
	strict bool         // for fibNoRoute: the route back must leave by the input interface
	until  time.Time    // for timeBefore
}

type matchKind uint8

const (
	ctState     matchKind = iota // ct state established|related
	oifLoopback                  // meta oiftype loopback
	ownMark                      // meta mark sockmark.Mark
	daddrLocal                   // fib daddr type local
	nfproto                      // meta nfproto ipv4|ipv6
	saddrIn                      // ip saddr @set
	daddrIn                      // ip daddr @set
	l4proto                      // meta l4proto tcp|udp
	dport                        // th dport lo-hi (after l4proto)
	icmpv6Type                   // icmpv6 type lo-hi
	icmpProto                    // meta l4proto icmp (fam v4) | ipv6-icmp (fam v6)
	hopLimit                     // ip6 hoplimit lo (after nfproto ipv6)
	socketOwned                  // meta skuid 0-4294967295: the packet comes from a process's socket
	timeBefore                   // meta time < until: the kernel's clock is before until
)

// stmt is one action.
type stmt struct {
	kind   stmtKind
	chain  string     // jump target
	port   uint16     // redirect / dnat port
	addr   netip.Addr // dnat address
	group  uint16     // log group
	rate   uint32     // log limit per second; 0: no limit (logAllow)
	prefix string     // log prefix (logAllow)
}

type stmtKind uint8

const (
	counter stmtKind = iota
	accept
	drop
	jump
	ret
	logSample  // limit rate N/second log group G prefix "fqdngate drop "
	redirect   // redirect to :port
	dnat       // dnat ip to addr:port
	rejectTCP  // reject with tcp reset
	rejectICMP // reject with icmpx admin-prohibited
	logAllow   // [limit rate N/second] log prefix P group G
)

// Chain names. The filter base chain is named after its hook so that a
// changed hook replaces the chain instead of failing to update it.
const (
	enforceChain  = "enforce"
	redirectChain = "steer_covered"
	natChain      = "steer"
	logPrefix     = "fqdngate drop "
)

// desired is the whole table fqdngate wants.
type desired struct {
	sets    []setSpec
	chains  []chainSpec
	learned map[learnKey]string // learned set name by rule, group, family
	// allowLog names the rule and group behind each prefix the accept
	// rules log under (firewall.log_allowed).
	allowLog map[string]allowKey
}

// listener says how traffic for a local listener is steered per family.
type steer uint8

const (
	steerNone     steer = iota // the listener cannot be reached: drop (DNS) or leave alone (transparent)
	steerRedirect              // redirect to :port (the local address of the interface, or loopback on output)
	steerDNAT                  // dnat to addr:port
)

// steering decides, per family, how packets reach the listener at ap from
// the given hook: which families can be steered is policy.Steered's to
// say; loopback and wildcard listeners are reached by redirect (to the
// receiving interface's address, or loopback on output), others by DNAT.
func steering(ap netip.AddrPort, hook policy.Hook) [2]steer {
	var out [2]steer
	v4ok, v6ok := policy.Steered(ap, hook)
	how := steerDNAT
	if a := ap.Addr().Unmap(); a.IsUnspecified() || a.IsLoopback() {
		how = steerRedirect
	}
	if v4ok {
		out[v4] = how
	}
	if v6ok {
		out[v6] = how
	}
	return out
}

var plainIdent = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ident turns a rule or group name into a set-name component. Names that
// are not plain identifiers are hashed, so any policy name yields a valid,
// stable, collision-free set name.
func ident(s string) string {
	if plainIdent.MatchString(s) {
		return s
	}
	h := sha256.Sum256([]byte(s))
	return "h" + hex.EncodeToString(h[:8])
}

func learnedSetName(rule, group string, f family) string {
	n := "learn" + f.String() + "." + ident(rule)
	if group != "" {
		n += "." + ident(group)
	}
	return n
}

// listeners is what the policy says about fqdngate's own listeners, as
// the ruleset needs it.
type listeners struct {
	dns, transparent netip.AddrPort
	ports            []uint16 // TCP ports steered to transparent
}

// listenersOf reads the listeners from p. An address that does not parse
// (the loader forbids that) or is empty counts as no listener.
func listenersOf(p *policy.Policy) listeners {
	var l listeners
	l.dns, _ = netip.ParseAddrPort(p.Listen.DNS)
	l.transparent, _ = netip.ParseAddrPort(p.Listen.Transparent)
	l.ports = p.Firewall.TransparentPorts
	return l
}

// build computes the table for p. It is pure: same inputs, same table.
// Mode and listeners come from p, so a reload can change them; the hook
// and the drop sample come from cfg.
func build(cfg *Config, p *policy.Policy) *desired {
	d := &desired{learned: make(map[learnKey]string), allowLog: make(map[string]allowKey)}
	lis := listenersOf(p)
	addSet := func(s setSpec) { d.sets = append(d.sets, s) }

	// Which groups do rules use? Every source is subject to the policy,
	// whatever groups it is in: a source in no group may reach only what
	// rules without from allow, as Decide (and explain) say. Filtering only
	// the sources some rule names would leave every other host unfiltered.
	var groups []string
	for _, r := range p.Rules {
		for _, g := range r.From {
			if !slices.Contains(groups, g) {
				groups = append(groups, g)
			}
		}
	}
	// A group that observes (observe_until) needs its source sets even
	// when no rule names it yet: the kernel accepts its sources where it
	// would refuse them.
	// Its accept carries its deadline, so that the kernel stops
	// accepting at the deadline by itself, whether or not fqdngate runs
	// then; the ruleset applied after the deadline only tidies the rule
	// away. The deadline is the one Decide reads (Policy.Observed).
	var observing []policy.ObservedGroup
	for _, o := range p.Observed(p.Now()) {
		if !o.Observing {
			continue
		}
		observing = append(observing, o)
		if !slices.Contains(groups, o.Group) {
			groups = append(groups, o.Group)
		}
	}
	slices.Sort(groups)
	groupPrefixes := func(g string, f family) []netip.Prefix {
		var out []netip.Prefix
		for _, pfx := range p.Sources[g] {
			pfx = unmapPrefix(pfx)
			if familyOf(pfx.Addr()) == f {
				out = append(out, pfx)
			}
		}
		return out
	}
	for _, g := range groups {
		for _, f := range families {
			addSet(setSpec{name: "src" + f.String() + "." + ident(g), fam: f, kind: sourceSet, prefixes: groupPrefixes(g, f), group: g})
			if p.Dynamic(g) {
				addSet(setSpec{name: podSetName(g, f), fam: f, kind: podSet, group: g})
			}
		}
	}
	// The enforce chain: DNS that cannot be steered to fqdngate is dropped
	// first, then traffic between the unfiltered ranges accepted, then
	// each rule's accepts, then default deny.
	var enforce []ruleSpec
	dns := steering(lis.dns, cfg.Hook)
	for _, f := range families {
		if dns[f] != steerNone {
			continue
		}
		for _, proto := range []policy.Proto{policy.UDP, policy.TCP} {
			enforce = append(enforce, ruleSpec{
				matches: []match{{kind: nfproto, fam: f}, {kind: l4proto, proto: proto}, {kind: dport, lo: 53, hi: 53}},
				stmts:   denyStmts(p, proto == policy.TCP),
				comment: "dns that cannot reach fqdngate",
			})
		}
	}
	// Traffic between the unfiltered ranges is no egress; DNS that cannot
	// be steered is dropped first all the same (no resolver but
	// fqdngate), and transparent ports are not steered for it.
	enforce = append(enforce, acceptUnfiltered(p)...)
	enforce = append(enforce, unsteeredTransparent(p, lis)...)
	for _, r := range p.Rules {
		from := r.From
		if from == nil {
			from = []string{""}
		}
		for _, f := range families {
			var cidr string
			var targets []netip.Prefix
			for _, pfx := range r.Prefixes {
				if pfx = unmapPrefix(pfx); familyOf(pfx.Addr()) == f {
					targets = append(targets, pfx)
				}
			}
			if len(targets) > 0 {
				cidr = "cidr" + f.String() + "." + ident(r.Name)
				addSet(setSpec{name: cidr, fam: f, kind: cidrSet, prefixes: targets, rule: r.Name})
			}
			for _, g := range from {
				// Only rules with names learn; CIDR-only rules need no set.
				var learned string
				if len(r.Names) > 0 {
					learned = learnedSetName(r.Name, g, f)
					addSet(setSpec{name: learned, fam: f, kind: learnedSet, rule: r.Name, group: g})
					d.learned[learnKey{r.Name, g, f}] = learned
				}
				// The group's sources: its prefixes, and the addresses of
				// the pods it selects; one set each.
				srcs := [][]match{nil}
				if g != "" {
					srcs = nil
					if len(groupPrefixes(g, f)) > 0 {
						srcs = append(srcs, []match{{kind: saddrIn, fam: f, set: "src" + f.String() + "." + ident(g)}})
					}
					if p.Dynamic(g) {
						srcs = append(srcs, []match{{kind: saddrIn, fam: f, set: podSetName(g, f)}})
					}
					for i := range srcs {
						srcs[i] = append(srcs[i], groupInterfaces(p, g)...)
					}
				}
				comment := "rule " + r.Name
				if g != "" {
					comment += " from " + g
				}
				for _, src := range srcs {
					for _, dst := range []string{learned, cidr} {
						if dst == "" {
							continue
						}
						ms := append(slices.Clone(src), match{kind: daddrIn, fam: f, set: dst})
						for _, pm := range portMatches(r.Ports) {
							enforce = append(enforce, d.acceptRules(cfg, p, append(slices.Clone(ms), pm...), r.Name, g, comment)...)
						}
					}
				}
			}
		}
	}
	enforce = append(enforce, ruleSpec{stmts: []stmt{{kind: logSample, group: cfg.logGroup(), rate: cfg.logRate()}}, comment: "sample of drops"})
	// After the sample, so that what an observing group would have had
	// dropped is sampled too (the daemon records it as would-deny).
	for _, o := range observing {
		g := o.Group
		for _, f := range families {
			var srcs [][]match
			if len(groupPrefixes(g, f)) > 0 {
				srcs = append(srcs, []match{{kind: saddrIn, fam: f, set: "src" + f.String() + "." + ident(g)}})
			}
			if p.Dynamic(g) {
				srcs = append(srcs, []match{{kind: saddrIn, fam: f, set: podSetName(g, f)}})
			}
			for _, src := range srcs {
				ms := append(src, groupInterfaces(p, g)...)
				enforce = append(enforce, ruleSpec{
					matches: append(ms, match{kind: timeBefore, until: o.Until}),
					stmts:   []stmt{{kind: counter}, {kind: accept}},
					comment: "would-deny: " + g + " observes until " + o.Until.Format(time.RFC3339),
				})
			}
		}
	}
	enforce = append(enforce, denyRules(p, "default deny")...)

	// The filter base chain decides who is held to the policy.
	hook := cfg.Hook.String()
	var gate []ruleSpec
	gate = append(gate, gateTracked()...)
	if cfg.Hook == policy.HookOutput {
		gate = append(gate,
			ruleSpec{matches: []match{{kind: oifLoopback}}, stmts: []stmt{{kind: accept}}, comment: "loopback"},
			ruleSpec{matches: []match{{kind: ownMark}}, stmts: []stmt{{kind: accept}}, comment: "fqdngate's own traffic"},
			// Redirected packets keep the original output device, so
			// the loopback rule misses them.
			ruleSpec{matches: []match{{kind: daddrLocal}}, stmts: []stmt{{kind: accept}}, comment: "redirected to fqdngate"},
		)
	}
	gate = append(gate, gateNeighbourDiscovery(cfg.Hook, p.Mode)...)
	gate = append(gate, everySource(enforceChain)...)

	// The nat chain steers covered sources' DNS, and the transparent
	// ports, to fqdngate's listeners.
	var redir []ruleSpec
	tp := steering(lis.transparent, cfg.Hook)
	for _, f := range families {
		for _, proto := range []policy.Proto{policy.UDP, policy.TCP} {
			if st := steerStmt(dns[f], lis.dns); st != nil {
				redir = append(redir, ruleSpec{
					matches: []match{{kind: nfproto, fam: f}, {kind: l4proto, proto: proto}, {kind: dport, lo: 53, hi: 53}},
					stmts:   []stmt{*st}, comment: "dns to fqdngate",
				})
			}
		}
		st := steerStmt(tp[f], lis.transparent)
		if st == nil {
			continue
		}
		if ms := unfilteredMatches(p, f); ms != nil && len(lis.ports) > 0 {
			// Not egress: a connection between the unfiltered ranges
			// goes where it was sent, not to the transparent proxy.
			redir = append(redir, ruleSpec{matches: ms, stmts: []stmt{{kind: ret}}, comment: "unfiltered"})
		}
		for _, port := range lis.ports {
			redir = append(redir, ruleSpec{
				matches: []match{{kind: nfproto, fam: f}, {kind: l4proto, proto: policy.TCP}, {kind: dport, lo: port, hi: port}},
				stmts:   []stmt{*st}, comment: "transparent proxy",
			})
		}
	}
	var nat []ruleSpec
	natHook := "prerouting"
	if cfg.Hook == policy.HookOutput {
		natHook = "output"
		nat = append(nat,
			ruleSpec{matches: []match{{kind: oifLoopback}}, stmts: []stmt{{kind: ret}}, comment: "loopback"},
			ruleSpec{matches: []match{{kind: ownMark}}, stmts: []stmt{{kind: ret}}, comment: "fqdngate's own traffic"},
		)
	}
	if len(redir) > 0 {
		nat = append(nat, steerSources(cfg, p, redirectChain)...)
	}

	d.chains = []chainSpec{
		{name: hook, hook: hook, rules: gate},
		{name: enforceChain, rules: enforce},
		{name: natChain, hook: natHook, nat: true, rules: nat},
		{name: redirectChain, rules: redir},
	}
	addInside(d, cfg, p, lis)
	addIntercept(d, cfg, p, lis, dns)
	fillPods(d, p.Members())
	return d
}

// everySource sends every source to chain.
func everySource(chain string) []ruleSpec {
	return []ruleSpec{{stmts: []stmt{{kind: jump, chain: chain}}, comment: "every source"}}
}

func steerStmt(s steer, ap netip.AddrPort) *stmt {
	switch s {
	case steerRedirect:
		return &stmt{kind: redirect, port: ap.Port()}
	case steerDNAT:
		return &stmt{kind: dnat, addr: ap.Addr().Unmap(), port: ap.Port()}
	}
	return nil
}

// verdictDrop ends a rule that discards: audit mode counts and falls
// through to the chain's accept policy.
func verdictDrop(m policy.Mode) []stmt {
	if m == policy.Audit {
		return []stmt{{kind: counter}}
	}
	return []stmt{{kind: counter}, {kind: drop}}
}

// denyStmts ends a rule that refuses what the policy denies, TCP or not:
// audit mode counts and falls through; enforce mode drops, or with
// firewall.deny_with: reject answers with a TCP reset, or ICMP
// administratively prohibited, so the client fails at once instead of
// waiting for a timeout.
func denyStmts(p *policy.Policy, tcp bool) []stmt {
	switch {
	case p.Mode == policy.Audit || p.Firewall.DenyWith == policy.KernelDrop:
		return verdictDrop(p.Mode)
	case tcp:
		return []stmt{{kind: counter}, {kind: rejectTCP}}
	}
	return []stmt{{kind: counter}, {kind: rejectICMP}}
}

// denyRules refuses whatever reaches them, as denyStmts has it.
func denyRules(p *policy.Policy, comment string) []ruleSpec {
	if p.Mode == policy.Audit || p.Firewall.DenyWith == policy.KernelDrop {
		return []ruleSpec{{stmts: verdictDrop(p.Mode), comment: comment}}
	}
	return []ruleSpec{
		{matches: []match{{kind: l4proto, proto: policy.TCP}}, stmts: denyStmts(p, true), comment: comment},
		{stmts: denyStmts(p, false), comment: comment},
	}
}

// Conntrack state bits, as the kernel's ct expression reports them
// (NF_CT_STATE_BIT in linux/netfilter/nf_conntrack_common.h).
const (
	stateEstablished uint32 = 2
	stateRelated     uint32 = 4
)

// gateTracked accepts what belongs to flows the policy already let
// through: established connections, and the ICMP errors conntrack relates
// to them. Other related flows (a conntrack helper's expected connection,
// such as an FTP data channel) are new connections and face the policy.
func gateTracked() []ruleSpec {
	acc := []stmt{{kind: accept}}
	return []ruleSpec{
		{matches: []match{{kind: ctState, state: stateEstablished}}, stmts: acc, comment: "established flows"},
		{matches: []match{{kind: ctState, state: stateRelated}, {kind: icmpProto, fam: v4}}, stmts: acc, comment: "icmp errors of tracked flows"},
		{matches: []match{{kind: ctState, state: stateRelated}, {kind: icmpProto, fam: v6}}, stmts: acc, comment: "icmp errors of tracked flows"},
	}
}

// Link scope, where neighbour discovery belongs (RFC 4861).
var (
	linkLocal     = netip.MustParsePrefix("fe80::/10")
	linkMulticast = netip.MustParsePrefix("ff02::/16")
)

// gateNeighbourDiscovery lets the host's own neighbour discovery (ICMPv6
// types 133-137) out on the output hook as RFC 4861 has it: hop limit 255,
// to a link-local or link-scope multicast address. Solicitations and
// advertisements to an on-link global address (neighbour unreachability
// detection, or the answer to a neighbour soliciting from its global
// address) pass only when the kernel sends them: it sends them only to
// neighbours on the link, and a process's packets are told apart by their
// socket (meta skuid matches only packets of a process's socket, so the
// rule that takes those stands before the kernel's accept). Every
// other message of these types faces the policy, which allows no ICMPv6:
// no process can hide data in them. On the forward hook nothing is
// accepted: neighbour discovery is never forwarded.
func gateNeighbourDiscovery(hook policy.Hook, m policy.Mode) []ruleSpec {
	if hook != policy.HookOutput {
		return nil
	}
	nd := func(lo, hi uint16, more ...match) []match {
		return append([]match{{kind: nfproto, fam: v6}, {kind: icmpv6Type, lo: lo, hi: hi}}, more...)
	}
	hop255 := match{kind: hopLimit, lo: 255}
	acc := []stmt{{kind: accept}}
	return []ruleSpec{
		{matches: nd(133, 137, hop255, match{kind: daddrPrefix, fam: v6, pfx: linkLocal}), stmts: acc, comment: "neighbour discovery on the link"},
		{matches: nd(133, 137, hop255, match{kind: daddrPrefix, fam: v6, pfx: linkMulticast}), stmts: acc, comment: "neighbour discovery on the link"},
		{matches: nd(133, 137, match{kind: socketOwned}), stmts: verdictDrop(m), comment: "neighbour discovery a process sends off the link"},
		{matches: nd(135, 136, hop255), stmts: acc, comment: "the kernel's neighbour discovery, to on-link neighbours only"},
	}
}

// unsteeredTransparent refuses TCP to a transparent port that reached the
// policy chain: steered connections go to fqdngate, so these are ones the
// nat chain could not steer (a family the listener does not receive).
// Such a port is decided by name at the transparent proxy and must never
// fall back to the learned sets, which would let any SNI reach a learned
// address.
func unsteeredTransparent(p *policy.Policy, lis listeners) []ruleSpec {
	var out []ruleSpec
	for _, port := range lis.ports {
		out = append(out, ruleSpec{
			matches: []match{{kind: l4proto, proto: policy.TCP}, {kind: dport, lo: port, hi: port}},
			stmts:   denyStmts(p, true),
			comment: "transparent port not steered to fqdngate",
		})
	}
	return out
}

// portMatches turns a rule's ports into match lists, one per range. A rule
// without ports is open on every port.
func portMatches(ports []policy.PortRange) [][]match {
	if len(ports) == 0 {
		return [][]match{nil}
	}
	out := make([][]match, 0, len(ports))
	for _, pr := range ports {
		out = append(out, []match{{kind: l4proto, proto: pr.Proto}, {kind: dport, lo: pr.Lo, hi: pr.Hi}})
	}
	return out
}

func unmapPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() {
		bits := p.Bits() - 96
		if bits < 0 {
			bits = 0
		}
		return netip.PrefixFrom(p.Addr().Unmap(), bits).Masked()
	}
	return p.Masked()
}

// addrRange is an inclusive range of addresses of one family.
type addrRange struct{ lo, hi netip.Addr }

// ranges merges prefixes into sorted, disjoint, non-adjacent ranges: the
// kernel rejects overlapping interval elements, and policies may overlap.
func ranges(prefixes []netip.Prefix) []addrRange {
	rs := make([]addrRange, 0, len(prefixes))
	for _, p := range prefixes {
		p = p.Masked()
		rs = append(rs, addrRange{p.Addr(), lastAddr(p)})
	}
	slices.SortFunc(rs, func(a, b addrRange) int { return a.lo.Compare(b.lo) })
	var out []addrRange
	for _, r := range rs {
		if n := len(out); n > 0 {
			last := &out[n-1]
			next := last.hi.Next()
			if !next.IsValid() || r.lo.Compare(next) <= 0 {
				if r.hi.Compare(last.hi) > 0 {
					last.hi = r.hi
				}
				continue
			}
		}
		out = append(out, r)
	}
	return out
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Text rendering, in nft syntax, for --dry-run and Show.

func (m match) String() string {
	switch m.kind {
	case ctState:
		return "ct state " + ctStateText(m.state)
	case oifLoopback:
		return "meta oiftype loopback"
	case ownMark:
		return fmt.Sprintf("meta mark %#x", sockmark.Mark)
	case daddrLocal:
		return "fib daddr type local"
	case nfproto:
		return "meta nfproto ipv" + m.fam.String()
	case saddrIn:
		return m.fam.ip() + " saddr @" + m.set
	case daddrIn:
		return m.fam.ip() + " daddr @" + m.set
	case l4proto:
		return "meta l4proto " + m.proto.String()
	case dport:
		return "th dport " + portText(m.lo, m.hi)
	case icmpv6Type:
		return "icmpv6 type " + portText(m.lo, m.hi)
	case icmpProto:
		return "meta l4proto " + [...]string{"icmp", "ipv6-icmp"}[m.fam]
	case hopLimit:
		return fmt.Sprintf("ip6 hoplimit %d", m.lo)
	case socketOwned:
		return "meta skuid 0-4294967295"
	case timeBefore:
		// In seconds since the epoch: nft reads a date in its own time
		// zone. Rounded down, so the script never accepts for longer
		// than the rule Apply programs.
		return fmt.Sprintf("meta time < %d", m.until.Unix())
	}
	if s, ok := m.insideText(); ok {
		return s
	}
	return "?"
}

// ctStateText names the conntrack state bits the way nft does.
func ctStateText(bits uint32) string {
	var names []string
	for _, s := range []struct {
		bit  uint32
		name string
	}{{stateEstablished, "established"}, {stateRelated, "related"}} {
		if bits&s.bit != 0 {
			names = append(names, s.name)
		}
	}
	return strings.Join(names, ",")
}

func portText(lo, hi uint16) string {
	if lo == hi {
		return fmt.Sprint(lo)
	}
	return fmt.Sprintf("%d-%d", lo, hi)
}

func (s stmt) String() string {
	switch s.kind {
	case counter:
		return "counter"
	case accept:
		return "accept"
	case drop:
		return "drop"
	case jump:
		return "jump " + s.chain
	case ret:
		return "return"
	case logSample:
		return fmt.Sprintf("limit rate %d/second burst %d packets log prefix %q group %d", s.rate, s.rate, logPrefix, s.group)
	case redirect:
		return fmt.Sprintf("redirect to :%d", s.port)
	case dnat:
		if s.addr.Is6() {
			return fmt.Sprintf("dnat ip6 to [%s]:%d", s.addr, s.port)
		}
		return fmt.Sprintf("dnat ip to %s:%d", s.addr, s.port)
	case rejectTCP:
		return "reject with tcp reset"
	case rejectICMP:
		return "reject with icmpx admin-prohibited"
	case logAllow:
		l := fmt.Sprintf("log prefix %q group %d", s.prefix, s.group)
		if s.rate > 0 {
			l = fmt.Sprintf("limit rate %d/second burst %d packets ", s.rate, s.rate) + l
		}
		return l
	}
	return "?"
}

func (r ruleSpec) String() string {
	var parts []string
	for _, m := range r.matches {
		// "meta nfproto" is implied by the ip/ip6 keywords nft prints.
		parts = append(parts, m.String())
	}
	for _, s := range r.stmts {
		parts = append(parts, s.String())
	}
	if r.comment != "" {
		parts = append(parts, fmt.Sprintf("comment %q", r.comment))
	}
	return strings.Join(parts, " ")
}

// render writes d as an nft script.
func (d *desired) render(table string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", table)
	for _, s := range d.sets {
		typ := "ipv4_addr"
		if s.fam == v6 {
			typ = "ipv6_addr"
		}
		if s.kind == ifnameSet {
			typ = "ifname"
		}
		fmt.Fprintf(&b, "\tset %s {\n\t\ttype %s\n", s.name, typ)
		if s.kind == ifnameSet {
			fmt.Fprintf(&b, "\t\telements = { %s }\n", quoteAll(s.ifnames))
		} else if s.kind == podSet {
			if len(s.addrs) > 0 {
				el := make([]string, len(s.addrs))
				for i, a := range s.addrs {
					el[i] = a.String()
				}
				fmt.Fprintf(&b, "\t\telements = { %s }\n", strings.Join(el, ", "))
			}
		} else if s.interval() {
			b.WriteString("\t\tflags interval\n")
			if len(s.prefixes) > 0 {
				var el []string
				for _, r := range ranges(s.prefixes) {
					el = append(el, rangeText(r))
				}
				fmt.Fprintf(&b, "\t\telements = { %s }\n", strings.Join(el, ", "))
			}
		} else {
			b.WriteString("\t\tflags timeout\n")
		}
		b.WriteString("\t}\n")
	}
	for _, c := range d.chains {
		fmt.Fprintf(&b, "\tchain %s {\n", c.name)
		if c.hook != "" {
			typ, prio := "filter", "filter"
			if c.prio == prioRaw {
				prio = "raw"
			}
			if c.nat {
				// nft accepts the name dstnat only at prerouting.
				typ, prio = "nat", "-100"
				if c.prio != 0 {
					prio = fmt.Sprint(c.prio)
				}
			}
			fmt.Fprintf(&b, "\t\ttype %s hook %s priority %s; policy accept;\n", typ, c.hook, prio)
		}
		for _, r := range c.rules {
			fmt.Fprintf(&b, "\t\t%s\n", r)
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

func rangeText(r addrRange) string {
	for bits := 0; bits <= r.lo.BitLen(); bits++ {
		p := netip.PrefixFrom(r.lo, bits)
		if p.Masked().Addr() == r.lo && lastAddr(p) == r.hi {
			if bits == r.lo.BitLen() {
				return r.lo.String()
			}
			return p.String()
		}
	}
	return r.lo.String() + "-" + r.hi.String()
}
