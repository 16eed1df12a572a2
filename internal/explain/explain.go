// Package explain turns one policy decision into the account an operator
// reads: allow or deny, which rule decided, and why; whether fqdngate
// serves the source at all; and, for what is allowed, what else applies
// (tunnel inspection, the wildcard budget). The CLI's explain command and
// the admin endpoint's /v1/explain both print it.
package explain

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/netaddr"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// Result is the explanation of one decision; its JSON form is the
// contract of `fqdngate explain --json` and /v1/explain.
type Result struct {
	Action       string   `json:"action"` // allow | deny | would-deny
	Rule         string   `json:"rule"`   // empty when no rule allowed it
	Reason       string   `json:"reason"`
	Pattern      string   `json:"pattern,omitempty"` // the name pattern or CIDR that matched
	Group        string   `json:"group,omitempty"`   // the source group that matched
	NearRule     string   `json:"near_rule,omitempty"`
	SourceGroups []string `json:"source_groups"` // every group the source belongs to
	// Observing is the source group whose observe_until made this a
	// would-deny; empty otherwise.
	Observing string `json:"observing,omitempty"`
	// Observe lists the source's groups that have observe_until: until
	// when each observes, and whether it still does.
	Observe []policy.ObservedGroup `json:"observe,omitempty"`
	// Usage is the deciding rule's usage (hits and last hit) as counted
	// by the policy given: a running daemon's (/v1/explain) has counted
	// its traffic; a policy just loaded (the CLI) has counted nothing.
	Usage *policy.RuleUsage `json:"rule_usage,omitempty"`
	// Pod names the pod (namespace/name) the source address belongs to,
	// by the pod snapshot of the policy (the daemon's /v1/explain; the
	// CLI, answering from the file alone, knows no pods).
	Pod   string `json:"pod,omitempty"`
	From  string `json:"from"`
	To    string `json:"to"`
	Port  uint16 `json:"port"`
	Proto string `json:"proto"`
	Mode  string `json:"mode"`
	// Served is false when the source is outside the inside: the DNS
	// firewall and the proxy do not serve it at all, whatever the rules
	// say (Action is then deny, and Reason says so).
	Served bool `json:"served"`
	// Routed is, for a source that is not served on a gateway (hook:
	// forward), the kernel's decision for its traffic routed through,
	// when it lets it pass: rules without from apply to every source, and
	// audit mode lets everything through. Nil otherwise.
	Routed *Routed `json:"routed,omitempty"`
	// InspectTunnels says, for TCP allowed by a rule, whether the proxy
	// reads the first bytes of the rule's CONNECT tunnels (the rule's
	// inspect_tunnels).
	InspectTunnels *bool `json:"inspect_tunnels,omitempty"`
	// BudgetPattern is, for an allowed name under a wildcard, the pattern
	// whose dns.wildcard_budget the name's queries are charged to, and
	// WildcardBudget that budget (new names per minute per client; 0:
	// none).
	BudgetPattern  string `json:"budget_pattern,omitempty"`
	WildcardBudget int    `json:"wildcard_budget,omitempty"`
	// DNSSEC is, for an allowed name when answers are validated
	// (dns.dnssec: validate), "required" when the rule the DNS firewall
	// finds for the name has dnssec: required (only secure answers are
	// answered and learned), else "validated" (bogus answers are refused,
	// insecure ones answered). Empty when answers are not validated.
	DNSSEC string `json:"dnssec,omitempty"`
	// Zone is, for a name in a forward zone (dns.forward), the zone: its
	// names are resolved by the zone's servers for every client, without
	// rules, and no rule opens them.
	Zone string `json:"zone,omitempty"`
}

// Routed is the kernel's decision for traffic of a source the gateway does
// not serve.
type Routed struct {
	Action  string `json:"action"`
	Rule    string `json:"rule"`
	Pattern string `json:"pattern,omitempty"`
}

// Target is a parsed destination: a name or an address, with a port.
type Target struct {
	Name  string
	Addr  netip.Addr
	Port  uint16
	Proto policy.Proto
}

// schemePorts are the URL schemes ParseTarget knows, with their ports.
var schemePorts = map[string]uint16{"http": 80, "https": 443, "ws": 80, "wss": 443}

// ParseTarget parses "api.bank.example:443", "api.bank.example" (443/tcp),
// "203.0.113.7:5432", "[2001:db8::1]:443" or "dns.example:853/udp", or a
// URL such as "https://api.bank.example/v1/pay" (its host, and its port
// or the scheme's; path and query do not matter).
func ParseTarget(s string) (Target, error) {
	if scheme, rest, ok := strings.Cut(s, "://"); ok {
		return parseURL(s, strings.ToLower(scheme), rest)
	}
	t := Target{Port: 443, Proto: policy.TCP}
	if base, proto, ok := strings.Cut(s, "/"); ok {
		switch strings.ToLower(proto) {
		case "tcp":
		case "udp":
			t.Proto = policy.UDP
		default:
			return t, fmt.Errorf("destination %q: protocol must be tcp or udp", s)
		}
		s = base
	}
	host := s
	if h, p, err := net.SplitHostPort(s); err == nil {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return t, fmt.Errorf("destination %q: port must be 1 to 65535", s)
		}
		host, t.Port = h, uint16(n)
	}
	host = strings.Trim(host, "[]")
	if a, err := netip.ParseAddr(host); err == nil {
		t.Addr = a
		return t, nil
	}
	n, err := dnsname.Parse(host)
	if err != nil {
		return t, fmt.Errorf("destination %q: %v", s, err)
	}
	t.Name = string(n)
	return t, nil
}

// parseURL is ParseTarget of scheme://rest (s whole).
func parseURL(s, scheme, rest string) (Target, error) {
	// Only the authority matters: drop the path, query and fragment,
	// and any user information.
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		rest = rest[:i]
	}
	if i := strings.LastIndex(rest, "@"); i >= 0 {
		rest = rest[i+1:]
	}
	if rest == "" {
		return Target{}, fmt.Errorf("destination %q: no host in the URL", s)
	}
	def, known := schemePorts[scheme]
	if _, _, err := net.SplitHostPort(rest); err != nil {
		if !known {
			return Target{}, fmt.Errorf("destination %q: scheme %q has no port fqdngate knows; give it, as %s://HOST:PORT", s, scheme, scheme)
		}
		if strings.Contains(rest, ":") && !strings.HasPrefix(rest, "[") {
			return Target{}, fmt.Errorf("destination %q: an IPv6 address in a URL needs brackets, as https://[2001:db8::1]/", s)
		}
		rest = net.JoinHostPort(strings.Trim(rest, "[]"), strconv.Itoa(int(def)))
	}
	t, err := ParseTarget(rest)
	if err != nil {
		// Name the URL as given, not the host:port made of it.
		msg := strings.TrimPrefix(err.Error(), fmt.Sprintf("destination %q: ", rest))
		return t, fmt.Errorf("destination %q: %s", s, msg)
	}
	return t, nil
}

// Explain decides whether from may reach to under p, as the daemon would
// on a host whose own addresses are host (nil: none known, as for the
// CLI, which answers from the policy alone).
func Explain(p *policy.Policy, from, to string, host netaddr.Host) (Result, error) {
	src, err := netip.ParseAddr(from)
	if err != nil {
		return Result{}, fmt.Errorf("source %q is not an IP address", from)
	}
	t, err := ParseTarget(to)
	if err != nil {
		return Result{}, err
	}
	q := policy.Query{Source: src, Name: t.Name, Addr: t.Addr, Port: t.Port, Proto: t.Proto}
	d := p.Decide(q)
	var pod string
	if ref, ok := p.PodOf(src); ok {
		pod = ref.String()
	}
	r := Result{
		Pod:          pod,
		Action:       d.Action.String(),
		Rule:         d.RuleName(),
		Reason:       d.Reason.String(),
		Pattern:      d.Pattern,
		Group:        d.Group,
		SourceGroups: p.GroupsOf(src),
		From:         src.String(),
		To:           t.Name,
		Port:         t.Port,
		Proto:        t.Proto.String(),
		Mode:         p.Mode.String(),
		// As a datagram query would be: the first thing a client asks.
		Served: p.InsideConn(src, netip.Addr{}, host, false),
	}
	if r.To == "" {
		r.To = t.Addr.String()
	}
	if r.SourceGroups == nil {
		r.SourceGroups = []string{}
	}
	r.Observing = d.Observing
	if d.Rule != nil {
		u := d.Rule.UsageOf()
		r.Usage = &u
	}
	for _, o := range p.Observed(p.Now()) {
		if slices.Contains(r.SourceGroups, o.Group) {
			r.Observe = append(r.Observe, o)
		}
	}
	if d.NearRule != nil {
		r.NearRule = d.NearRule.Name
	}
	if d.Reason == policy.ReasonForwarded {
		r.Zone = d.Pattern
	}
	if !r.Served {
		if p.Firewall.Backend == policy.BackendNftables && p.Firewall.Hook == policy.HookForward && d.Action.Permits() {
			r.Routed = &Routed{Action: r.Action}
			if d.Rule != nil {
				r.Routed.Rule, r.Routed.Pattern = r.Rule, r.Pattern
			}
		}
		r.Action, r.Rule, r.Pattern, r.Group, r.NearRule = policy.Deny.String(), "", "", "", ""
		r.Observing, r.Usage = "", nil
		r.Reason = fmt.Sprintf("not served: %s is outside the inside (inside: %s)", r.From, p.DescribeInside())
		return r, nil
	}
	if d.Action != policy.Allow {
		return r, nil
	}
	if t.Proto == policy.TCP {
		inspected := !d.Rule.UninspectedTunnels
		r.InspectTunnels = &inspected
	}
	if t.Name != "" {
		// The budget is charged by the DNS firewall's decision, which
		// asks for the name on any port.
		dq := policy.Query{Source: src, Name: t.Name, AnyPort: true}
		dd := p.Decide(dq)
		if pat := dd.WildcardPattern(); pat != "" {
			r.BudgetPattern, r.WildcardBudget = pat, p.DNS.WildcardBudget
		}
		if p.DNS.DNSSEC == policy.DNSSECValidate && dd.Rule != nil {
			r.DNSSEC = "validated"
			if dd.Rule.DNSSECRequired {
				r.DNSSEC = "required"
			}
		}
	}
	return r, nil
}

// Text renders r for a terminal: the verdict first, then the why.
func (r Result) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s -> %s port %d/%s\n", strings.ToUpper(r.Action), r.From, r.To, r.Port, r.Proto)
	groups := "none"
	if len(r.SourceGroups) > 0 {
		groups = strings.Join(r.SourceGroups, ", ")
	}
	if r.Pod != "" {
		fmt.Fprintf(&b, "  pod:     %s\n", r.Pod)
	}
	fmt.Fprintf(&b, "  source groups: %s\n", groups)
	switch {
	case !r.Served:
		fmt.Fprintf(&b, "  reason:  %s\n", r.Reason)
		b.WriteString("           fqdngate answers DNS and proxies only for its inside and this host\n")
		switch {
		case r.Routed == nil:
		case r.Routed.Rule != "":
			fmt.Fprintf(&b, "  routed:  the kernel still lets this source's traffic through the gateway by rule %s (pattern %s), which applies to every source\n", r.Routed.Rule, r.Routed.Pattern)
		default:
			b.WriteString("  routed:  in audit mode the kernel still lets this source's traffic through the gateway, counted as would-deny\n")
		}
		return b.String()
	case r.Rule != "":
		fmt.Fprintf(&b, "  rule:    %s\n  pattern: %s\n", r.Rule, r.Pattern)
		if u := r.Usage; u != nil && u.LastHit != nil {
			fmt.Fprintf(&b, "  usage:   %d hits, the last at %s\n", u.Hits, u.LastHit.Format(time.RFC3339))
		}
		if r.Group != "" {
			fmt.Fprintf(&b, "  via:     source group %s\n", r.Group)
		} else {
			b.WriteString("  via:     rule applies to every source\n")
		}
	case r.NearRule != "":
		fmt.Fprintf(&b, "  reason:  %s\n  closest: rule %s (pattern %s)\n", r.Reason, r.NearRule, r.Pattern)
	case r.Zone != "":
		fmt.Fprintf(&b, "  reason:  %s\n  zone:    %s (dns.forward): its names resolve through the zone's servers for every client, without rules;\n", r.Reason, r.Zone)
		b.WriteString("           their addresses are never learned, so no rule opens them (only firewall.unfiltered passes traffic to them)\n")
	default:
		fmt.Fprintf(&b, "  reason:  %s\n", r.Reason)
	}
	if r.InspectTunnels != nil {
		if *r.InspectTunnels {
			b.WriteString("  tunnels: inspected: a CONNECT tunnel must begin with a TLS hello or HTTP request for a name this rule allows (inspect_tunnels)\n")
		} else {
			b.WriteString("  tunnels: not inspected (inspect_tunnels: false): a CONNECT tunnel may carry anything to the address dialled\n")
		}
	}
	if r.BudgetPattern != "" {
		if r.WildcardBudget > 0 {
			fmt.Fprintf(&b, "  budget:  %d new names a minute per client under %s (dns.wildcard_budget)\n", r.WildcardBudget, r.BudgetPattern)
		} else {
			fmt.Fprintf(&b, "  budget:  none: dns.wildcard_budget is 0, every new name under %s reaches the upstream\n", r.BudgetPattern)
		}
	}
	switch r.DNSSEC {
	case "required":
		b.WriteString("  dnssec:  required: answered and learned only when DNSSEC proves the answer secure (dnssec: required)\n")
	case "validated":
		b.WriteString("  dnssec:  validated: bogus answers are refused, answers from unsigned zones are answered (dns.dnssec: validate)\n")
	}
	switch {
	case r.Observing != "":
		fmt.Fprintf(&b, "  observe: source group %s observes, so this traffic is let through and logged as would-deny\n", r.Observing)
	case r.Action == "would-deny":
		b.WriteString("  mode:    audit, so this traffic is let through and logged as would-deny\n")
	}
	for _, o := range r.Observe {
		if o.Observing {
			fmt.Fprintf(&b, "  observe: group %s observes until %s (observe_until: %s), then it is enforced\n", o.Group, o.Until.Format(time.RFC3339), o.Written)
		} else {
			fmt.Fprintf(&b, "  observe: group %s is enforced since %s (observe_until: %s)\n", o.Group, o.Until.Format(time.RFC3339), o.Written)
		}
	}
	return b.String()
}
