// Package review finds what a valid policy probably did not mean, for
// "fqdngate check --strict": a rule made meaningless by an earlier
// broader one, a target another target of the same rule already covers,
// source groups and users no rule uses, targets open to every address or
// every port, and a policy with no rules. Each warning is positioned in
// the file the policy was written in, read again as YAML nodes.
package review

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// Warning is one finding, at a position in File (0:0 when not known).
type Warning struct {
	File      string
	Line, Col int
	Msg       string
}

func (w Warning) String() string {
	if w.Line == 0 {
		return fmt.Sprintf("%s: warning: %s", w.File, w.Msg)
	}
	return fmt.Sprintf("%s:%d:%d: warning: %s", w.File, w.Line, w.Col, w.Msg)
}

// Strict reviews p, loaded from data (the file named file). Warnings are
// in file order.
func Strict(p *policy.Policy, file string, data []byte) []Warning {
	pos := positions(data)
	var ws []Warning
	at := func(n *yaml.Node, format string, args ...any) {
		w := Warning{File: file, Msg: fmt.Sprintf(format, args...)}
		if n != nil {
			w.Line, w.Col = n.Line, n.Column
		}
		ws = append(ws, w)
	}
	if len(p.Rules) == 0 {
		at(pos.rulesKey, "the policy has no rules, so it denies everything; add rules (see docs/policy.md) or, to learn what is needed first, run it with mode: audit")
	}
	used := map[string]bool{}
	for _, r := range p.Rules {
		for _, g := range r.From {
			used[g] = true
		}
	}
	for i, r := range p.Rules {
		rp := pos.rule(i)
		for j := 0; j < i; j++ {
			e := p.Rules[j]
			if coversSources(e, r) && coversTargets(e, r) && coversPorts(e.Ports, r.Ports) {
				what := "its from: restriction changes nothing"
				if r.AnySource() {
					what = "it changes nothing"
				}
				at(rp.node, "rule %q allows nothing rule %q (line %d) does not already allow to %s: %s; remove it, or narrow rule %q",
					r.Name, e.Name, pos.rule(j).line(), sourcesText(e), what, e.Name)
				break
			}
		}
		for a, t := range r.Names {
			for b, u := range r.Names {
				if a != b && covers(u, t) && (u.Raw != t.Raw || b < a) {
					at(rp.target(t.Raw), "rule %q: target %q is already covered by %q; remove one", r.Name, t.Raw, u.Raw)
					break
				}
			}
		}
		for a, t := range r.Prefixes {
			if t.Bits() == 0 {
				at(rp.target(t.String()), "rule %q allows %s: every %s address, which defeats name-based control; list the networks it needs", r.Name, t, family(t))
				continue
			}
			for b, u := range r.Prefixes {
				if a != b && u.Bits() <= t.Bits() && u.Contains(t.Addr()) && (u != t || b < a) {
					at(rp.target(t.String()), "rule %q: target %s is already covered by %s; remove one", r.Name, t, u)
					break
				}
			}
		}
		for _, pr := range r.Ports {
			if pr.Lo <= 1 && pr.Hi == 65535 {
				n := rp.ports
				if n == nil {
					n = rp.node
				}
				at(n, "rule %q allows every port; list the ports its destinations serve (443, 8000-8100)", r.Name)
				break
			}
		}
	}
	groups := make([]string, 0, len(p.Sources))
	for g := range p.Sources {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	now := p.Now()
	for _, g := range groups {
		// A group that observes while no rule names it yet is how
		// adoption starts (docs/adopting.md): the kernel lets it through
		// and records what it would deny. Unused once its date passes.
		if !used[g] && !p.Observing(g, now) {
			at(pos.sources[g], "source group %q is named in no rule's from: its hosts reach only what rules for every source allow; name it in a rule, or remove it", g)
		}
	}
	users := make([]string, 0, len(p.Users))
	for u := range p.Users {
		users = append(users, u)
	}
	sort.Strings(users)
	for _, u := range users {
		any := false
		for _, g := range p.Users[u].Groups {
			// A group that observes lets its users through as would-deny.
			any = any || used[g] || p.Observing(g, now)
		}
		if !any {
			at(pos.users[u], "user %q is in no group a rule's from names, so signing in gains it nothing; name one of its groups (%s) in a rule, or remove it", u, strings.Join(p.Users[u].Groups, ", "))
		}
	}
	sort.SliceStable(ws, func(a, b int) bool {
		if ws[a].Line != ws[b].Line {
			return ws[a].Line < ws[b].Line
		}
		return ws[a].Col < ws[b].Col
	})
	return ws
}

func family(p netip.Prefix) string {
	if p.Addr().Is4() {
		return "IPv4"
	}
	return "IPv6"
}

func sourcesText(r *policy.Rule) string {
	if r.AnySource() {
		return "every source"
	}
	return strings.Join(r.From, ", ")
}

// coversSources: e applies to every source r applies to.
func coversSources(e, r *policy.Rule) bool {
	if e.AnySource() {
		return true
	}
	if r.AnySource() {
		return false
	}
	for _, g := range r.From {
		found := false
		for _, h := range e.From {
			found = found || g == h
		}
		if !found {
			return false
		}
	}
	return true
}

// coversTargets: every name and address r allows, e allows.
func coversTargets(e, r *policy.Rule) bool {
	for _, t := range r.Names {
		ok := false
		for _, u := range e.Names {
			ok = ok || covers(u, t)
		}
		if !ok {
			return false
		}
	}
	for _, t := range r.Prefixes {
		ok := false
		for _, u := range e.Prefixes {
			ok = ok || u.Bits() <= t.Bits() && u.Contains(t.Addr())
		}
		if !ok {
			return false
		}
	}
	return true
}

func coversPorts(e, r []policy.PortRange) bool {
	for _, t := range r {
		ok := false
		for _, u := range e {
			ok = ok || u.Proto == t.Proto && u.Lo <= t.Lo && t.Hi <= u.Hi
		}
		if !ok {
			return false
		}
	}
	return true
}

// under reports whether name x is strictly below name b.
func under(x, b string) bool { return len(x) > len(b)+1 && strings.HasSuffix(x, "."+b) }

// oneBelow reports whether x is exactly one label below b.
func oneBelow(x, b string) bool {
	return under(x, b) && !strings.Contains(x[:len(x)-len(b)-1], ".")
}

// covers reports whether p matches every name q matches.
func covers(p, q policy.Pattern) bool {
	pb, qb := string(p.Base), string(q.Base)
	switch p.Kind {
	case policy.Exact:
		return q.Kind == policy.Exact && qb == pb
	case policy.OneLabel:
		return q.Kind == policy.Exact && oneBelow(qb, pb) || q.Kind == policy.OneLabel && qb == pb
	case policy.AnyLabels:
		switch q.Kind {
		case policy.Exact, policy.ApexAndAny:
			return under(qb, pb)
		default:
			return qb == pb || under(qb, pb)
		}
	case policy.ApexAndAny:
		return qb == pb || under(qb, pb)
	}
	return false
}
