package fleet

import (
	"fmt"
	"slices"
	"time"

	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/netaddr"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// Refusal is why an element read from etcd was not programmed. Reason is
// the metric label (fqdngate_fleet_ignored_total), snake_case.
type Refusal struct {
	Reason string
	Detail string
}

func (r *Refusal) Error() string { return r.Detail + " (" + r.Reason + ")" }

// The reasons an element from etcd is ignored.
const (
	ReasonMalformed      = "malformed"        // a batch (key.go) that does not parse: every element in it is ignored, counted once
	ReasonUnknownKey     = "unknown_key"      // a key under learned/ that is not a batch (another format or version)
	ReasonUnknownRule    = "unknown_rule"     // no rule of the applied policy has the element's rule name
	ReasonUnknownGroup   = "unknown_group"    // the rule does not apply to the element's source group
	ReasonNameNotAllowed = "name_not_allowed" // none of the rule's names matches the element's name
	ReasonAddress        = "address_refused"  // rebinding protection refuses the address
	ReasonExpiry         = "expiry_too_far"   // expires later than dns.max_ttl + dns.grace from now
	ReasonPerNameCap     = "per_name_cap"     // the name holds dns.max_learned_per_name elements from etcd already
	ReasonProgram        = "program_failed"   // the local publisher refused it
	ReasonRefused        = "refused"          // Options.Accept refused it with an error that is not a *Refusal
)

// clockSkew is how far ahead of this gateway's clock another gateway's may
// run: an expiry up to this much beyond what p allows is still accepted.
// Gateways run NTP; this is not a licence to run without it.
const clockSkew = 5 * time.Second

// Accept returns the check that elements read from etcd must pass before
// they are programmed under the applied policy p: everything the DNS
// firewall itself would have had to decide to learn the element, so that
// etcd can never open more than p does. The element's rule must be one of
// p's, its group one the rule applies to ("" for rules without from), its
// name one the rule's patterns match, its address one that
// dns.rebinding_protection lets through (policy.RebindingRefuses, the DNS
// firewall's own check; host, if not nil, holds this host's addresses,
// which count as non-public as they do for answers), and its expiry no
// later than a fresh answer's could be (dns.max_ttl plus dns.grace, plus
// clockSkew). dns.max_learned_per_name is applied by the Fleet (see
// Options.MaxPerName), and again by the local publisher, as for answers.
//
// The check is stricter than the DNS firewall in audit mode, which learns
// what rebinding protection would remove: from etcd, nothing of the kind
// is taken in any mode. The returned errors are *Refusal.
func Accept(p *policy.Policy, host netaddr.Host) func(learn.Entry) error {
	classes := netaddr.Classifier{Host: host}
	return func(e learn.Entry) error { return accept(p, classes, e, time.Now()) }
}

func accept(p *policy.Policy, classes netaddr.Classifier, e learn.Entry, now time.Time) error {
	r := p.Rule(e.Rule)
	if r == nil {
		return &Refusal{ReasonUnknownRule, fmt.Sprintf("%s %s: rule %q is not in the applied policy", e.Name, e.Addr, e.Rule)}
	}
	if r.AnySource() && e.Group != "" || !r.AnySource() && !slices.Contains(r.From, e.Group) {
		return &Refusal{ReasonUnknownGroup, fmt.Sprintf("%s %s: rule %q does not apply to source group %q", e.Name, e.Addr, e.Rule, e.Group)}
	}
	if !slices.ContainsFunc(r.Names, func(pat policy.Pattern) bool { return pat.Match(e.Name) }) {
		return &Refusal{ReasonNameNotAllowed, fmt.Sprintf("%s %s: rule %q does not allow the name", e.Name, e.Addr, e.Rule)}
	}
	if !e.Addr.IsValid() || p.RebindingRefuses(e.Addr, classes.Classify(e.Addr)) {
		return &Refusal{ReasonAddress, fmt.Sprintf("%s %s: rebinding protection refuses the address", e.Name, e.Addr)}
	}
	if limit := now.Add(p.DNS.MaxTTL + p.DNS.Grace + clockSkew + learn.ExpiryGranularity); e.Expires.After(limit) {
		return &Refusal{ReasonExpiry, fmt.Sprintf("%s %s: expires at %s, later than dns.max_ttl and dns.grace allow", e.Name, e.Addr, e.Expires.UTC().Format(time.RFC3339))}
	}
	return nil
}
