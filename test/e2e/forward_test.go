package e2e

import (
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

const basicRules = `  - name: api
    from: [a]
    to: [api.example.com]
    ports: [443]
  - name: partner
    from: [a]
    to: [198.51.100.0/25]
    ports: [443]
  - name: b-only
    from: [b]
    to: [b.example.com]
`

// TestForwardAllowedAndUnlisted: through the gateway, an allowed name is
// reachable on its port once resolved and on no other; an unlisted name is
// not answered and its address stays closed; raw addresses are closed
// unless a CIDR rule lists them.
func TestForwardAllowedAndUnlisted(t *testing.T) {
	f := startForward(t, 2*time.Second, basicRules)
	auth := f.net.inet.auth
	auth.Set("api.example.com", dnstest.A("api.example.com", 300, "203.0.113.10"), dnstest.AAAA("api.example.com", 300, "2001:db8:100::10"))
	auth.Set("evil.example.com", dnstest.A("evil.example.com", 300, "203.0.113.66"))

	// Default deny: nothing is learned before the first answer.
	mustDrop(t, f.a, ap("203.0.113.10", allowedPort))
	mustDrop(t, f.a, ap("2001:db8:100::10", allowedPort))

	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		addr, err := f.a.resolveAndGet("api.example.com", qt, allowedPort)
		if err != nil {
			t.Fatalf("allowed name over %s: %v\n%s", dns.TypeToString[qt], err, f.gate.logs())
		}
		mustDrop(t, f.a, netip.AddrPortFrom(addr, otherPort))
	}

	// An unlisted name: fqdngate answers NXDOMAIN itself, the authority
	// never hears of it, and the address it would have given stays closed.
	r, err := f.a.exchange("udp", gatewayDNS, "evil.example.com", dns.TypeA, reachWait)
	if err != nil {
		t.Fatal(err)
	}
	if r.Rcode != dns.RcodeNameError || len(r.Answer) != 0 {
		t.Errorf("unlisted name: got %s with %d answers, want NXDOMAIN", dns.RcodeToString[r.Rcode], len(r.Answer))
	}
	if n := auth.Seen("evil.example.com", 0); n != 0 {
		t.Errorf("the authority saw %d queries for the unlisted name, want 0", n)
	}
	mustDrop(t, f.a, ap("203.0.113.66", allowedPort))

	// Raw addresses no rule lists.
	mustDrop(t, f.a, ap("203.0.113.77", allowedPort))
	mustDrop(t, f.a, ap("2001:db8:100::77", allowedPort))

	// A CIDR target needs no DNS, on its port only, within its prefix only.
	mustReach(t, f.a, "api.example.com", ap("198.51.100.5", allowedPort))
	mustDrop(t, f.a, ap("198.51.100.5", otherPort))
	mustDrop(t, f.a, ap("198.51.100.200", allowedPort))
	// Group b has neither rule. (b needs a rule of its own: a group that
	// no rule names is not covered, and the gateway leaves uncovered
	// sources unfiltered.)
	mustDrop(t, f.b, ap("198.51.100.5", allowedPort))
	mustDrop(t, f.b, ap("203.0.113.10", allowedPort))
	if t.Failed() {
		t.Log(f.gate.logs())
	}
}
