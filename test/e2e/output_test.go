package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// TestOutputHook: fqdngate protects the host it runs on. The client shares
// its namespace, resolves through fqdngate on loopback, and is held to the
// same policy as a client behind a gateway: allowed names on their port,
// CIDR targets, nothing else; DNS to the outside is redirected to
// fqdngate, and fqdngate's own upstream queries still get out.
func TestOutputHook(t *testing.T) {
	host := netns.New(t)
	inet := newInternet(t, host, "h0")
	host.Route("default", inet4)
	host.Route("default", inet6)
	g := newGate(t, host)
	settings := policySettings{
		hook:      "output",
		dnsListen: "127.0.0.1:53",
		grace:     2 * time.Second,
		table:     g.table,
		stateFile: g.stateFile(),
	}
	g.writePolicy(settings.render(`  - name: api
    to: [api.example.com, "*.burst.example.com"]
  - name: partner
    to: [198.51.100.0/25]
`))
	g.start()
	c := &client{ns: host, dns: "127.0.0.1:53", roots: inet.ca.Pool()}
	auth := inet.auth
	auth.Set("api.example.com", dnstest.A("api.example.com", 300, "203.0.113.10"), dnstest.AAAA("api.example.com", 300, "2001:db8:100::10"), rrTXT("api.example.com", 300, "exfiltrate me"))
	auth.Set("evil.example.com", dnstest.A("evil.example.com", 300, "203.0.113.66"))

	mustDrop(t, c, ap("203.0.113.10", allowedPort))
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		addr, err := c.resolveAndGet("api.example.com", qt, allowedPort)
		if err != nil {
			t.Fatalf("allowed name over %s: %v\n%s", dns.TypeToString[qt], err, g.logs())
		}
		mustDrop(t, c, netip.AddrPortFrom(addr, otherPort))
	}
	mustDrop(t, c, ap("203.0.113.77", allowedPort))
	mustDrop(t, c, ap("2001:db8:100::77", allowedPort))
	mustReach(t, c, "api.example.com", ap("198.51.100.5", allowedPort))
	mustDrop(t, c, ap("198.51.100.200", allowedPort))

	// DNS to the outside resolver is fqdngate's to answer.
	for _, network := range []string{"udp", "tcp"} {
		r, err := c.exchange(network, authorityAddr, "evil.example.com", dns.TypeA, reachWait)
		if err != nil || r.Rcode != dns.RcodeNameError {
			t.Errorf("direct query over %s for an unlisted name: %v %v, want NXDOMAIN", network, r, err)
		}
		r, err = c.exchange(network, authorityAddr, "api.example.com", dns.TypeTXT, reachWait)
		if err != nil || r.Rcode != dns.RcodeRefused {
			t.Errorf("direct TXT query over %s: %v %v, want REFUSED", network, r, err)
		}
	}
	if r, err := c.exchange("udp", authorityAddr6, "api.example.com", dns.TypeA, time.Second); err == nil {
		t.Errorf("direct DNS over IPv6: got an answer (%s), want it dropped", dns.RcodeToString[r.Rcode])
	}
	if n := auth.Seen("evil.example.com", 0) + auth.Seen("api.example.com", dns.TypeTXT); n != 0 {
		t.Errorf("the authority saw %d queries for the unlisted name or TXT, want 0", n)
	}
	mustDrop(t, c, ap("203.0.113.66", allowedPort))

	// Connect the moment the answer arrives, to addresses never seen.
	auth.SetDynamic(func(name string, qtype uint16) []dns.RR {
		var i int
		if _, err := fmt.Sscanf(name, "n%d.burst.example.com", &i); err != nil {
			return nil
		}
		if a := burstAddr(i); a.Is4() {
			return []dns.RR{dnstest.A(name, 60, a.String())}
		}
		return []dns.RR{dnstest.AAAA(name, 60, burstAddr(i).String())}
	})
	var failures []string
	for i := range 200 {
		name := fmt.Sprintf("n%d.burst.example.com", i)
		qt := dns.TypeA
		if burstAddr(i).Is6() {
			qt = dns.TypeAAAA
		}
		if _, err := c.resolveAndGet(name, qt, allowedPort); err != nil {
			failures = append(failures, fmt.Sprintf("%s: %v", name, err))
		}
	}
	if len(failures) > 0 {
		t.Errorf("%d of 200 resolve-then-connect cycles failed, want 0:\n%s", len(failures), strings.Join(failures[:min(10, len(failures))], "\n"))
	}
	if t.Failed() {
		t.Log(g.logs())
	}
}
