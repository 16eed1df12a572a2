package policy

import (
	"bytes"
	"net/netip"

	"github.com/fqdngate/fqdngate/internal/netaddr"
)

// Decide answers q. Rules only allow; the first rule in file order that
// covers the destination, the source and the port decides. Anything no rule
// allows is denied, or WouldDeny in audit mode and for a source in a group
// that observes now (observe_until, read on the policy's clock). Decide
// does not allocate.
func (p *Policy) Decide(q Query) Decision {
	d := p.decide(q)
	if d.Action == Deny {
		if p.Mode == Audit {
			d.Action = WouldDeny
		} else if g := p.observer(&q); g != "" {
			d.Action, d.Observing = WouldDeny, g
		}
	}
	return d
}

// RuleAllows reports whether the rule r of p, on its own, allows q: what
// Decide would answer if r were p's only rule. The proxy asks it when a
// tunnel opened under r carries another name than the one decided, which
// must be r's too. Audit mode plays no part: the answer is r's.
func (p *Policy) RuleAllows(r *Rule, q Query) bool {
	if r == nil || r.Index < 0 || r.Index >= len(p.Rules) || p.Rules[r.Index] != r {
		return false
	}
	return p.decideOnly(q, int32(r.Index)).Action == Allow
}

func (p *Policy) decide(q Query) Decision { return p.decideOnly(q, -1) }

// decideOnly is decide over the rule of index only, or over every rule
// when only is -1: one walk of the index for both.
func (p *Policy) decideOnly(q Query, only int32) Decision {
	if q.Name == "" {
		return p.decideAddr(q, q.Addr, only)
	}
	if a, ok := ipLiteral(q.Name); ok {
		// An address where a name was expected must not fall through to
		// name matching: only CIDR rules speak for addresses.
		return p.decideAddr(q, a, only)
	}
	var buf nameBuf
	b, ok := canonical(&buf, q.Name)
	if !ok {
		return Decision{Reason: ReasonInvalidName}
	}
	if z := p.forwarded(b); z != nil {
		// A forward zone's names are internal: the DNS firewall answers
		// them from the zone's servers without rules (dnsfw's admit asks
		// Forwarded before Decide) and never learns their addresses, so
		// no rule may open them anywhere else either, not even a
		// wildcard above the zone.
		return Decision{Reason: ReasonForwarded, Pattern: string(z.Zone)}
	}
	m := matcher{p: p, q: q, best: -1, only: only}
	var n *node // the node of the suffix after b[:end]; nil before the first
	end := len(b)
	for {
		start := bytes.LastIndexByte(b[:end], '.') + 1
		if n != nil {
			// n matches the suffix after b[:end]; one or more labels remain.
			m.consider(n.many)
			if start == 0 {
				m.consider(n.one)
			}
		}
		c := p.idx.nodes[string(b[start:])]
		if c == nil {
			break
		}
		n = c
		if start == 0 {
			m.consider(n.exact)
			break
		}
		end = start - 1
	}
	return m.decision()
}

// ipLiteral reports whether name is an IP address rather than a host name.
// netip.ParseAddr allocates its error, so it is only called on text shaped
// like an address: four dotted decimals, or hex digits with two or more
// colons.
func ipLiteral(name string) (netip.Addr, bool) {
	dots, colons, digitRun, decOnly := 0, 0, 0, true
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case c >= '0' && c <= '9':
			digitRun++
			if digitRun > 3 {
				decOnly = false
			}
		case c == '.':
			if digitRun == 0 {
				decOnly = false
			}
			dots, digitRun = dots+1, 0
		case c == ':':
			colons, digitRun, decOnly = colons+1, 0, false
		case c >= 'a' && c <= 'f', c >= 'A' && c <= 'F':
			decOnly = false
		default:
			return netip.Addr{}, false
		}
	}
	v4 := decOnly && dots == 3 && digitRun > 0
	v6 := colons >= 2
	if !v4 && !v6 {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(name)
	return a, err == nil
}

// matcher tracks the best rule seen while walking the trie, and the most
// informative near miss for when nothing matches. The trie is walked from
// the shortest suffix to the longest, not in rule order, so both are chosen
// by rule index rather than by the order they are seen.
type matcher struct {
	p                *Policy
	q                Query // by value: a pointer would move the caller's Query to the heap
	best             int32 // rule index of the best full match, -1 if none
	bestPat, bestGrp string
	only             int32 // the one rule index considered, or -1 for all

	missReason Reason // ReasonPort or ReasonSource, valid when missRule != nil
	missRule   *Rule
	missPat    string
	missGroup  string
}

func (m *matcher) consider(refs []ref) {
	for _, rf := range refs {
		if m.best >= 0 && rf.rule >= m.best {
			return // lists are ascending; nothing later can win
		}
		if m.only >= 0 && rf.rule != m.only {
			continue
		}
		r := m.p.Rules[rf.rule]
		m.check(r, rf.rule, r.Names[rf.pat].Raw)
	}
}

func (m *matcher) check(r *Rule, ri int32, pat string) {
	grp, srcOK := m.p.sourceCovered(r, &m.q)
	if !srcOK {
		m.nearMiss(ReasonSource, r, pat, "")
		return
	}
	if !m.q.AnyPort && !r.portAllowed(m.q.Port, m.q.Proto) {
		m.nearMiss(ReasonPort, r, pat, grp)
		return
	}
	m.best, m.bestPat, m.bestGrp = ri, pat, grp
}

// nearMiss records a rule that named the destination but did not allow it.
// A port miss explains more than a source miss (the source was right); among
// equals the earliest rule is reported, as a reader scanning the file would
// find it.
func (m *matcher) nearMiss(reason Reason, r *Rule, pat, grp string) {
	if m.missRule != nil {
		if m.missReason == ReasonPort && reason == ReasonSource {
			return
		}
		if m.missReason == reason && m.missRule.Index <= r.Index {
			return
		}
	}
	m.missReason, m.missRule, m.missPat, m.missGroup = reason, r, pat, grp
}

func (m *matcher) decision() Decision {
	if m.best >= 0 {
		return Decision{Action: Allow, Reason: ReasonMatched, Rule: m.p.Rules[m.best], Pattern: m.bestPat, Group: m.bestGrp}
	}
	if m.missRule == nil {
		return Decision{Reason: ReasonNoRule}
	}
	// Deny: Rule stays nil so nothing mistakes a near miss for permission;
	// the near miss is reported through Reason, Pattern and NearRule.
	return Decision{Reason: m.missReason, Pattern: m.missPat, Group: m.missGroup, NearRule: m.missRule}
}

func (p *Policy) decideAddr(q Query, a netip.Addr, only int32) Decision {
	if !a.IsValid() {
		return Decision{Reason: ReasonInvalidName}
	}
	a = a.WithZone("")
	// A mapped or NAT64 address reaches the IPv4 host it carries, so a rule
	// for that host covers it; a rule written for the IPv6 spelling itself
	// covers it too.
	u := netaddr.Unmap(a)
	m := matcher{p: p, q: q, best: -1, only: only}
	for _, c := range p.idx.cidrs {
		if m.best >= 0 && c.rule >= m.best {
			break
		}
		if only >= 0 && c.rule != only {
			continue
		}
		if c.prefix.Contains(u) || c.prefix.Contains(a) {
			m.check(p.Rules[c.rule], c.rule, c.raw)
		}
	}
	d := m.decision()
	if d.Reason == ReasonNoRule {
		d.Reason = ReasonNotAllowedIP
	}
	return d
}

// sourceCovered reports whether r applies to q's source address or user,
// and through which group.
func (p *Policy) sourceCovered(r *Rule, q *Query) (string, bool) {
	if r.From == nil {
		return "", true
	}
	src := sourceAddr(q.Source)
	var (
		mb            Member
		looked, found bool
	)
	for _, g := range r.fromGroups {
		for _, pfx := range g.prefixes {
			if pfx.Contains(src) {
				return g.name, true
			}
		}
		if g.dynamic {
			if !looked {
				mb, found = p.memberOf(src)
				looked = true
			}
			if inDynamic(mb, found, g.name) {
				return g.name, true
			}
		}
	}
	if q.User != "" {
		if u, ok := p.Users[q.User]; ok {
			for _, ug := range u.Groups {
				for _, g := range r.From {
					if ug == g {
						return g, true
					}
				}
			}
		}
	}
	return "", false
}

// sourceAddr is the address a source group is checked against. An IPv4
// client on a dual-stack socket appears as ::ffff:a.b.c.d, so that is
// unmapped. NAT64 is not: a packet from 64:ff9b::a00:1 came from an IPv6
// host, and reading it as 10.0.0.1 would let anyone who can choose their
// IPv6 source address claim an IPv4 group.
func sourceAddr(a netip.Addr) netip.Addr {
	return a.WithZone("").Unmap()
}

// allowsTCP reports whether any of r's ports is a TCP port.
func (r *Rule) allowsTCP() bool {
	for _, pr := range r.Ports {
		if pr.Proto == TCP {
			return true
		}
	}
	return false
}

func (r *Rule) portAllowed(port uint16, proto Proto) bool {
	for _, pr := range r.Ports {
		if pr.Contains(port, proto) {
			return true
		}
	}
	return false
}

// GroupsOf returns the source groups containing addr, in name order: by
// their prefixes, and for groups that select pods, by the current
// snapshot (Members).
func (p *Policy) GroupsOf(addr netip.Addr) []string {
	addr = sourceAddr(addr)
	mb, found := p.memberOf(addr)
	var out []string
	for _, g := range p.groupOrder {
		in := p.Dynamic(g) && inDynamic(mb, found, g)
		for _, pfx := range p.Sources[g] {
			if in || pfx.Contains(addr) {
				in = true
				break
			}
		}
		if in {
			out = append(out, g)
		}
	}
	return out
}

// NamesAddr reports whether some rule explicitly names a prefix containing
// addr, for any source. Rebinding and private-address protection make an
// exception for such addresses: the operator asked for them.
func (p *Policy) NamesAddr(addr netip.Addr) bool {
	addr = addr.WithZone("")
	u := netaddr.Unmap(addr)
	for _, c := range p.idx.cidrs {
		if c.prefix.Contains(u) || c.prefix.Contains(addr) {
			return true
		}
	}
	return false
}

// RebindingRefuses reports whether dns.rebinding_protection keeps address
// a, of class c, out of the learned set: it is not public (as the caller's
// classifier sees it, so that this host's own addresses count too) and no
// rule names it. The DNS firewall removes such addresses from answers, and
// the fleet refuses them from etcd, with this one check.
func (p *Policy) RebindingRefuses(a netip.Addr, c netaddr.Class) bool {
	return p.DNS.RebindingProtection && !c.IsPublic() && !p.NamesAddr(a)
}
