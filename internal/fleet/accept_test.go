package fleet

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/netaddr"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// testPolicyYAML is the policy the fleet's tests check elements against:
// max_ttl 1h and grace 10m (the defaults), four elements per name.
const testPolicyYAML = `
dns:
  upstreams: [192.0.2.53:53]
  max_learned_per_name: 4
sources:
  payments: [198.51.100.0/25]
  web: [198.51.100.128/25]
rules:
  - name: bank
    from: [payments]
    to: [api.bank.example, "*.edge.bank.example"]
    ports: [443]
  - name: everyone
    to: [public.example, "**.cdn.example"]
    ports: [443]
  - name: lab
    to: [lab.example, 10.1.2.0/24]
    ports: [443]
`

func testPolicy(t testing.TB) *policy.Policy {
	t.Helper()
	p, err := policy.Parse("test.yaml", []byte(testPolicyYAML))
	if err != nil {
		t.Fatalf("test policy: %v", err)
	}
	return p
}

func entry(name, addr, rule, group string, ttl time.Duration) learn.Entry {
	return learn.Entry{Name: dnsname.Name(name), Addr: netip.MustParseAddr(addr), Rule: rule, Group: group, Expires: time.Now().Add(ttl)}
}

func TestAccept(t *testing.T) {
	p := testPolicy(t)
	host := netaddr.HostList{netip.MustParseAddr("203.0.113.7")}
	for _, tc := range []struct {
		name   string
		e      learn.Entry
		reason string // "" accepted
	}{
		{"rule with from", entry("api.bank.example", "192.0.2.1", "bank", "payments", time.Minute), ""},
		{"wildcard", entry("x.edge.bank.example", "192.0.2.1", "bank", "payments", time.Minute), ""},
		{"rule without from", entry("a.b.cdn.example", "2001:db8::1", "everyone", "", time.Minute), ""},
		{"longest expiry a fresh answer can have", entry("public.example", "192.0.2.1", "everyone", "", time.Hour+10*time.Minute), ""},
		{"private address a rule names", entry("lab.example", "10.1.2.3", "lab", "", time.Minute), ""},
		{"unknown rule", entry("public.example", "192.0.2.1", "nope", "", time.Minute), ReasonUnknownRule},
		{"group not in from", entry("api.bank.example", "192.0.2.1", "bank", "web", time.Minute), ReasonUnknownGroup},
		{"group for rule without from", entry("public.example", "192.0.2.1", "everyone", "payments", time.Minute), ReasonUnknownGroup},
		{"no group for rule with from", entry("api.bank.example", "192.0.2.1", "bank", "", time.Minute), ReasonUnknownGroup},
		{"name of another rule", entry("public.example", "192.0.2.1", "bank", "payments", time.Minute), ReasonNameNotAllowed},
		{"one label too many", entry("a.x.edge.bank.example", "192.0.2.1", "bank", "payments", time.Minute), ReasonNameNotAllowed},
		{"private address", entry("public.example", "10.0.0.1", "everyone", "", time.Minute), ReasonAddress},
		{"private address another rule names", entry("public.example", "10.1.2.3", "everyone", "", time.Minute), ""},
		{"loopback", entry("public.example", "127.0.0.1", "everyone", "", time.Minute), ReasonAddress},
		{"mapped private", entry("public.example", "::ffff:10.0.0.1", "everyone", "", time.Minute), ReasonAddress},
		{"metadata", entry("public.example", "169.254.169.254", "everyone", "", time.Minute), ReasonAddress},
		{"this host", entry("public.example", "203.0.113.7", "everyone", "", time.Minute), ReasonAddress},
		{"invalid address", learn.Entry{Name: "public.example", Rule: "everyone", Expires: time.Now().Add(time.Minute)}, ReasonAddress},
		{"expiry beyond max_ttl and grace", entry("public.example", "192.0.2.1", "everyone", "", 2*time.Hour), ReasonExpiry},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Accept(p, host)(tc.e)
			if tc.reason == "" {
				if err != nil {
					t.Fatalf("got %v, want accepted", err)
				}
				return
			}
			var r *Refusal
			if !errors.As(err, &r) || r.Reason != tc.reason {
				t.Fatalf("got %v, want refused for %s", err, tc.reason)
			}
		})
	}
}

// TestAcceptMatchesFirewall: an address is refused from etcd exactly when
// the DNS firewall's rebinding check removes it from answers: one check,
// policy.RebindingRefuses, for both.
func TestAcceptMatchesFirewall(t *testing.T) {
	p := testPolicy(t)
	for _, a := range []string{"192.0.2.1", "10.0.0.1", "10.1.2.3", "100.64.0.1", "::1", "fe80::1", "fc00::1", "2001:db8::1", "0.0.0.0", "224.0.0.1", "64:ff9b::a00:1"} {
		addr := netip.MustParseAddr(a)
		firewall := p.RebindingRefuses(addr, netaddr.Classify(addr))
		err := Accept(p, nil)(learn.Entry{Name: "public.example", Addr: addr, Rule: "everyone", Expires: time.Now().Add(time.Minute)})
		if got := err != nil; got != firewall {
			t.Errorf("%s: refused from etcd %v (%v), by the firewall %v", a, got, err, firewall)
		}
	}
}
