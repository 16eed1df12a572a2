package policy

import (
	"bytes"
	"net/netip"

	"github.com/fqdngate/fqdngate/internal/netaddr"
)

// Decide answers q. Rules only allow; the first rule in file order that
// covers the destination, the source and the port decides. Anything no rule
// allows is denied, or WouldDeny in audit mode. Decide does not allocate.
func (p *Policy) Decide(q Query) Decision {
	d := p.decide(q)
	if d.Action == Deny && p.Mode == Audit {
		d.Action = WouldDeny
	}
	return d
}

func (p *Policy) decide(q Query) Decision {
	if q.Name == "" {
		return p.decideAddr(q)
	}
	var buf nameBuf
	b, ok := canonical(&buf, q.Name)
	if !ok {
		return Decision{Reason: ReasonInvalidName}
	}
	m := matcher{p: p, q: &q, best: -1}
	n := p.idx.root
	end := len(b)
	for {
		start := bytes.LastIndexByte(b[:end], '.') + 1
		if n != p.idx.root {
			// n matches the suffix after b[:end]; one or more labels remain.
			m.consider(n.many)
			if start == 0 {
				m.consider(n.one)
			}
		}
		c := n.children[string(b[start:end])]
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

// matcher tracks the best rule seen while walking the trie, and the most
// informative near miss for when nothing matches.
type matcher struct {
	p                *Policy
	q                *Query
	best             int32 // rule index of the best full match, -1 if none
	bestPat, bestGrp string

	miss      Reason // best near miss: ReasonPort beats ReasonSource beats ReasonNoRule
	missRule  *Rule
	missPat   string
	missGroup string
}

func (m *matcher) consider(refs []ref) {
	for _, rf := range refs {
		if m.best >= 0 && rf.rule >= m.best {
			return // lists are ascending; nothing later can win
		}
		r := m.p.Rules[rf.rule]
		pat := r.Names[rf.pat].Raw
		m.check(r, rf.rule, pat)
	}
}

func (m *matcher) check(r *Rule, ri int32, pat string) {
	grp, srcOK := m.p.sourceCovered(r, m.q)
	if !srcOK {
		if m.miss == ReasonNoRule && m.missRule == nil {
			m.miss, m.missRule, m.missPat = ReasonSource, r, pat
		}
		return
	}
	if !m.q.AnyPort && !r.portAllowed(m.q.Port, m.q.Proto) {
		if m.missRule == nil || m.miss == ReasonSource {
			m.miss, m.missRule, m.missPat, m.missGroup = ReasonPort, r, pat, grp
		}
		return
	}
	m.best, m.bestPat, m.bestGrp = ri, pat, grp
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
	return Decision{Reason: m.miss, Pattern: m.missPat, Group: m.missGroup, NearRule: m.missRule}
}

func (p *Policy) decideAddr(q Query) Decision {
	a := netaddr.Unmap(q.Addr)
	if !a.IsValid() {
		return Decision{Reason: ReasonInvalidName}
	}
	m := matcher{p: p, q: &q, best: -1}
	for _, c := range p.idx.cidrs {
		if m.best >= 0 && c.rule >= m.best {
			break
		}
		if c.prefix.Contains(a) {
			m.check(p.Rules[c.rule], c.rule, c.prefix.String())
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
	src := netaddr.Unmap(q.Source)
	for _, g := range r.fromGroups {
		for _, pfx := range g.prefixes {
			if pfx.Contains(src) {
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

func (r *Rule) portAllowed(port uint16, proto Proto) bool {
	for _, pr := range r.Ports {
		if pr.Contains(port, proto) {
			return true
		}
	}
	return false
}

// GroupsOf returns the source groups containing addr, in name order.
func (p *Policy) GroupsOf(addr netip.Addr) []string {
	addr = netaddr.Unmap(addr)
	var out []string
	for _, g := range p.groupOrder {
		for _, pfx := range p.Sources[g] {
			if pfx.Contains(addr) {
				out = append(out, g)
				break
			}
		}
	}
	return out
}

// NamesAddr reports whether some rule explicitly names a prefix containing
// addr, for any source. Rebinding and private-address protection make an
// exception for such addresses: the operator asked for them.
func (p *Policy) NamesAddr(addr netip.Addr) bool {
	addr = netaddr.Unmap(addr)
	for _, c := range p.idx.cidrs {
		if c.prefix.Contains(addr) {
			return true
		}
	}
	return false
}
