// Package explain turns one policy decision into the account an operator
// reads: allow or deny, which rule decided, and why. The CLI's explain
// command and the admin endpoint's /v1/explain both print it.
package explain

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/fqdngate/fqdngate/internal/dnsname"
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
	From         string   `json:"from"`
	To           string   `json:"to"`
	Port         uint16   `json:"port"`
	Proto        string   `json:"proto"`
	Mode         string   `json:"mode"`
}

// Target is a parsed destination: a name or an address, with a port.
type Target struct {
	Name  string
	Addr  netip.Addr
	Port  uint16
	Proto policy.Proto
}

// ParseTarget parses "api.bank.example:443", "api.bank.example" (443/tcp),
// "203.0.113.7:5432", "[2001:db8::1]:443" or "dns.example:853/udp".
func ParseTarget(s string) (Target, error) {
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

// Explain decides whether from may reach to under p.
func Explain(p *policy.Policy, from, to string) (Result, error) {
	src, err := netip.ParseAddr(from)
	if err != nil {
		return Result{}, fmt.Errorf("source %q is not an IP address", from)
	}
	t, err := ParseTarget(to)
	if err != nil {
		return Result{}, err
	}
	d := p.Decide(policy.Query{Source: src, Name: t.Name, Addr: t.Addr, Port: t.Port, Proto: t.Proto})
	r := Result{
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
	}
	if r.To == "" {
		r.To = t.Addr.String()
	}
	if r.SourceGroups == nil {
		r.SourceGroups = []string{}
	}
	if d.NearRule != nil {
		r.NearRule = d.NearRule.Name
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
	fmt.Fprintf(&b, "  source groups: %s\n", groups)
	switch {
	case r.Rule != "":
		fmt.Fprintf(&b, "  rule:    %s\n  pattern: %s\n", r.Rule, r.Pattern)
		if r.Group != "" {
			fmt.Fprintf(&b, "  via:     source group %s\n", r.Group)
		} else {
			b.WriteString("  via:     rule applies to every source\n")
		}
	case r.NearRule != "":
		fmt.Fprintf(&b, "  reason:  %s\n  closest: rule %s (pattern %s)\n", r.Reason, r.NearRule, r.Pattern)
	default:
		fmt.Fprintf(&b, "  reason:  %s\n", r.Reason)
	}
	if r.Action == "would-deny" {
		b.WriteString("  mode:    audit, so this traffic is let through and logged as would-deny\n")
	}
	return b.String()
}
