package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// TestForwardCNAMEOutOfPolicy (issue 11, item 6): a name an allowed
// wildcard covers that is a CNAME for a name no rule allows is refused by
// default, and the target's addresses stay closed. With dns.inspect_cname
// off, once the default, the answer went out and the kernel opened the
// target's addresses for the allowed name.
func TestForwardCNAMEOutOfPolicy(t *testing.T) {
	f := startForward(t, 2*time.Second, `  - name: cdn
    from: [a]
    to: ["*.example.com"]
    ports: [443]
`)
	auth := f.net.inet.auth
	auth.Set("alias.example.com", dnstest.CNAME("alias.example.com", 300, "evil.example.net"))
	auth.Set("evil.example.net", dnstest.A("evil.example.net", 300, "203.0.113.66"), dnstest.AAAA("evil.example.net", 300, "2001:db8:100::66"))
	auth.Set("www.example.com", dnstest.A("www.example.com", 300, "203.0.113.67"))

	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		r, err := f.a.exchange("udp", gatewayDNS, "alias.example.com", qt, reachWait)
		if err != nil {
			t.Fatalf("alias.example.com %s: %v\n%s", dns.TypeToString[qt], err, f.gate.logs())
		}
		if addrs, _ := answerAddrs(r); r.Rcode != dns.RcodeNameError || len(addrs) != 0 {
			t.Errorf("alias.example.com %s (CNAME evil.example.net): got %s with %v, want NXDOMAIN with no address",
				dns.TypeToString[qt], dns.RcodeToString[r.Rcode], addrs)
		}
	}
	mustDrop(t, f.a, ap("203.0.113.66", allowedPort))
	mustDrop(t, f.a, ap("2001:db8:100::66", allowedPort))

	// The audit line says why.
	deadline := time.Now().Add(reachWait)
	for !strings.Contains(f.gate.stdout.String(), `"reason":"a name in the CNAME chain is not allowed (dns.inspect_cname)"`) {
		if time.Now().After(deadline) {
			t.Errorf("no audit line with the CNAME reason\n%s", f.gate.logs())
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A name of the wildcard that is not an alias still works.
	if _, err := f.a.resolveAndGet("www.example.com", dns.TypeA, allowedPort); err != nil {
		t.Errorf("www.example.com: %v\n%s", err, f.gate.logs())
	}
	if t.Failed() {
		t.Log(f.gate.logs())
	}
}
