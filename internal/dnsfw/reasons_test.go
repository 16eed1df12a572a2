package dnsfw

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// TestAuditReasons checks that every refusal's audit line carries the real
// reason, an empty rule, and the rule that named the name as near_rule.
func TestAuditReasons(t *testing.T) {
	chain := dnstest.Answer(
		dnstest.CNAME("api.bank.example", 300, "lb.cdn.example"),
		dnstest.A("lb.cdn.example", 300, "198.51.100.7"),
	)
	tests := []struct {
		name      string
		h         dns.HandlerFunc
		o         opts
		fault     dnstest.Fault
		src       string
		qtype     uint16
		wantRcode int
		want      map[string]any
	}{
		{"allowed", zone(), opts{}, dnstest.Fault{}, payments, dns.TypeA, dns.RcodeSuccess,
			map[string]any{"action": "allow", "rule": "bank", "reason": "matched", "near_rule": nil}},
		{"record type", zone(), opts{}, dnstest.Fault{}, payments, dns.TypeTXT, dns.RcodeRefused,
			map[string]any{"action": "deny", "rule": "", "reason": policy.ReasonQType.String(), "near_rule": "bank", "dns_reason": noteQType}},
		{"record type, audit mode", zone(), opts{mode: "audit"}, dnstest.Fault{}, payments, dns.TypeTXT, dns.RcodeSuccess,
			map[string]any{"action": "would-deny", "rule": "", "reason": policy.ReasonQType.String(), "near_rule": "bank"}},
		{"CNAME target", chain, opts{dns: "  inspect_cname: true"}, dnstest.Fault{}, payments, dns.TypeA, dns.RcodeNameError,
			map[string]any{"action": "deny", "rule": "", "reason": policy.ReasonCNAME.String(), "near_rule": "bank", "dns_reason": noteCNAME + "lb.cdn.example."}},
		{"rebinding", dnstest.Answer(dnstest.A("api.bank.example", 300, "10.0.0.1")), opts{}, dnstest.Fault{}, payments, dns.TypeA, dns.RcodeServerFailure,
			map[string]any{"action": "deny", "rule": "", "reason": policy.ReasonRebinding.String(), "near_rule": "bank", "dns_reason": noteRebinding}},
		// Failures are not denials: an outage must not read as an attack.
		{"upstream SERVFAIL", zone(), opts{}, dnstest.Fault{Rcode: dns.RcodeServerFailure}, payments, dns.TypeA, dns.RcodeServerFailure,
			map[string]any{"action": "fail", "rule": "", "reason": policy.ReasonUpstream.String(), "near_rule": "bank", "answers": ""}},
		{"upstream silent", zone(), opts{dns: "  timeout: 100ms"}, dnstest.Fault{Drop: true}, payments, dns.TypeA, dns.RcodeServerFailure,
			map[string]any{"action": "fail", "rule": "", "reason": policy.ReasonUpstream.String(), "near_rule": "bank"}},
		{"upstream silent, audit mode", zone(), opts{mode: "audit", dns: "  timeout: 100ms"}, dnstest.Fault{Drop: true}, payments, dns.TypeA, dns.RcodeServerFailure,
			map[string]any{"action": "fail", "rule": "", "reason": policy.ReasonUpstream.String(), "near_rule": "bank"}},
		{"upstream REFUSED, audit mode, name not allowed", zone(), opts{mode: "audit"}, dnstest.Fault{Rcode: dns.RcodeRefused}, web, dns.TypeA, dns.RcodeRefused,
			map[string]any{"action": "fail", "rule": "", "reason": policy.ReasonUpstream.String(), "near_rule": "bank"}},
		{"publish failed", zone(), opts{cfg: func(c *Config) { c.Publisher = failingPublisher{} }}, dnstest.Fault{}, payments, dns.TypeA, dns.RcodeServerFailure,
			map[string]any{"action": "fail", "rule": "", "reason": policy.ReasonPublish.String(), "near_rule": "bank"}},
		{"policy: other group", zone(), opts{}, dnstest.Fault{}, web, dns.TypeA, dns.RcodeNameError,
			map[string]any{"action": "deny", "rule": "", "reason": policy.ReasonSource.String(), "near_rule": "bank"}},
		{"policy: source in no group", zone(), opts{}, dnstest.Fault{}, stranger, dns.TypeA, dns.RcodeNameError,
			map[string]any{"action": "deny", "rule": "", "reason": policy.ReasonSource.String(), "near_rule": "bank"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, tt.h, tt.o)
			e.up.SetFault(tt.fault)
			r := e.ask(tt.src, "api.bank.example", tt.qtype)
			if r.Rcode != tt.wantRcode {
				t.Errorf("rcode: got %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.wantRcode])
			}
			lines := e.auditLines(1)
			if len(lines) != 1 {
				t.Fatalf("audit lines: got %d, want 1", len(lines))
			}
			for k, v := range tt.want {
				if got := lines[0][k]; got != v {
					t.Errorf("%s: got %v, want %v", k, got, v)
				}
			}
		})
	}
}

func TestDeniedNXDOMAINHasSOA(t *testing.T) {
	e := newEnv(t, zone(), opts{})
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			m := new(dns.Msg).SetQuestion("Evil.Example.", dns.TypeA)
			r, err := e.exchange(payments, network, m, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if r.Rcode != dns.RcodeNameError || len(r.Answer) != 0 {
				t.Fatalf("got %s with %d answers, want NXDOMAIN with none", dns.RcodeToString[r.Rcode], len(r.Answer))
			}
			if len(r.Ns) != 1 {
				t.Fatalf("authority: got %v, want one SOA", r.Ns)
			}
			soa, ok := r.Ns[0].(*dns.SOA)
			if !ok {
				t.Fatalf("authority: got %v, want a SOA", r.Ns[0])
			}
			if soa.Hdr.Name != "Evil.Example." || soa.Ns != "fqdngate.invalid." {
				t.Errorf("SOA owner and mname: got %s %s, want Evil.Example. fqdngate.invalid.", soa.Hdr.Name, soa.Ns)
			}
			// RFC 2308: the negative TTL is min(TTL, MINIMUM).
			if soa.Hdr.Ttl != deniedNegTTL || soa.Minttl != deniedNegTTL {
				t.Errorf("SOA TTL/minimum: got %d/%d, want %d/%d", soa.Hdr.Ttl, soa.Minttl, deniedNegTTL, deniedNegTTL)
			}
		})
	}
	// Refused and dropped denials carry nothing.
	e = newEnv(t, zone(), opts{dns: "  deny_with: refused"})
	if r := e.ask(payments, "evil.example", dns.TypeA); r.Rcode != dns.RcodeRefused || len(r.Ns) != 0 {
		t.Errorf("deny_with refused: got %s with %d authority records, want REFUSED with none", dns.RcodeToString[r.Rcode], len(r.Ns))
	}
}

// failingPublisher cannot enforce anything.
type failingPublisher struct{}

func (failingPublisher) Publish(context.Context, []learn.Entry) error {
	return errors.New("the kernel refused the batch")
}
