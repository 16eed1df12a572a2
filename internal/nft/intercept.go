package nft

import (
	"net/netip"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// This file holds what the ruleset does with firewall.intercept_dns (DNS
// to named service addresses, redirected to fqdngate before anyone else's
// destination NAT) and firewall.unfiltered (traffic between internal
// ranges, accepted without the policy).

// prioBeforeDNAT is the priority of the intercept chain: below dstnat
// (-100), where kube-proxy (iptables, nftables or IPVS modes alike) and
// most other service load balancers rewrite a Service address to a
// backend's. The kernel runs the nat chains of a hook in priority order
// and stops at the first that binds the connection's destination NAT, so
// the chain with the lower priority decides: at -100 beside kube-proxy's
// -100 the order would be whichever registered first, and a query to the
// cluster DNS Service could reach CoreDNS directly, past fqdngate.
const prioBeforeDNAT = -110

// Chain and set names of this file.
const (
	interceptChain   = "intercept_dns"
	interceptCovered = "intercept_dns_covered"
)

func interceptSetName(f family) string  { return "intercept_dns" + f.String() }
func unfilteredSetName(f family) string { return "unfiltered" + f.String() }

// addIntercept adds the sets of intercept_dns and unfiltered, and the
// intercept chains, to d. dns is how each family reaches the DNS listener.
func addIntercept(d *desired, cfg *Config, p *policy.Policy, lis listeners, dns [2]steer) {
	for _, f := range families {
		if pfx := prefixesOf(p.Firewall.Unfiltered, f); len(pfx) > 0 {
			d.sets = append(d.sets, setSpec{name: unfilteredSetName(f), fam: f, kind: sourceSet, prefixes: pfx})
		}
	}
	var covered []ruleSpec
	for _, f := range families {
		var pfx []netip.Prefix
		for _, a := range p.Firewall.InterceptDNS {
			if familyOf(a) == f {
				pfx = append(pfx, netip.PrefixFrom(a, a.BitLen()))
			}
		}
		st := steerStmt(dns[f], lis.dns)
		if len(pfx) == 0 || st == nil {
			// The loader refuses addresses of a family the listener
			// cannot receive; the generic steering drops their DNS.
			continue
		}
		d.sets = append(d.sets, setSpec{name: interceptSetName(f), fam: f, kind: sourceSet, prefixes: pfx})
		for _, proto := range []policy.Proto{policy.UDP, policy.TCP} {
			covered = append(covered, ruleSpec{
				matches: []match{{kind: daddrIn, fam: f, set: interceptSetName(f)}, {kind: l4proto, proto: proto}, {kind: dport, lo: 53, hi: 53}},
				stmts:   []stmt{*st},
				comment: "dns to an intercepted address, to fqdngate",
			})
		}
	}
	if len(covered) == 0 {
		return
	}
	var base []ruleSpec
	hook := "prerouting"
	if cfg.Hook == policy.HookOutput {
		hook = "output"
		base = append(base,
			ruleSpec{matches: []match{{kind: oifLoopback}}, stmts: []stmt{{kind: ret}}, comment: "loopback"},
			// fqdngate's own queries to the zone's servers go where they
			// are sent.
			ruleSpec{matches: []match{{kind: ownMark}}, stmts: []stmt{{kind: ret}}, comment: "fqdngate's own traffic"},
		)
	}
	base = append(base, steerSources(cfg, p, interceptCovered)...)
	d.chains = append(d.chains,
		chainSpec{name: interceptChain, hook: hook, nat: true, prio: prioBeforeDNAT, rules: base},
		chainSpec{name: interceptCovered, rules: covered},
	)
}

// unfilteredMatches returns, per family that has unfiltered ranges, the
// matches of a packet whose source and destination are both in them.
func unfilteredMatches(p *policy.Policy, f family) []match {
	if len(prefixesOf(p.Firewall.Unfiltered, f)) == 0 {
		return nil
	}
	return []match{{kind: saddrIn, fam: f, set: unfilteredSetName(f)}, {kind: daddrIn, fam: f, set: unfilteredSetName(f)}}
}

// acceptUnfiltered accepts traffic between the unfiltered ranges before
// the rules see it: it is not egress (a cluster's pods and services
// talking to each other). It stands in the enforce chain after the drops
// of DNS that cannot be steered to fqdngate, so no DNS gets past fqdngate
// this way. On the output hook the source is this host's own address, so
// only this host's traffic from an address in the ranges (a bridge's,
// say) to one in them passes.
func acceptUnfiltered(p *policy.Policy) []ruleSpec {
	var out []ruleSpec
	for _, f := range families {
		if ms := unfilteredMatches(p, f); ms != nil {
			out = append(out, ruleSpec{matches: ms, stmts: []stmt{{kind: accept}}, comment: "unfiltered"})
		}
	}
	return out
}
