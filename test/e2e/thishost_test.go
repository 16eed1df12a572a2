package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// thisHostRules: the host may resolve api.example.com; evil.example.com
// exists at the authority but no rule names it, so an NXDOMAIN for it is
// fqdngate's answer.
const thisHostRules = `  - name: api
    to: [api.example.com]
`

// thisHostSources are an inside that is not this host: the host's own
// addresses (192.0.2.129, 2001:db8:e::1) are in no group.
const thisHostSources = "  lab: [198.51.100.0/24]\n"

// askSelf sends the host's own queries over each network to each server
// and reports what came back where fqdngate did not answer as the policy
// says: api.example.com with its address, evil.example.com with NXDOMAIN.
func askSelf(c *client, servers, networks []string) []string {
	var bad []string
	for _, server := range servers {
		for _, network := range networks {
			r, err := c.exchange(network, server, "api.example.com", dns.TypeA, reachWait)
			if addrs, _ := answerAddrs(orEmpty(r)); err != nil || len(addrs) != 1 || addrs[0].String() != "203.0.113.10" {
				bad = append(bad, fmt.Sprintf("api.example.com to %s over %s: %v %v, want 203.0.113.10", server, network, answerOf(r), err))
			}
			r, err = c.exchange(network, server, "evil.example.com", dns.TypeA, reachWait)
			if err != nil || r.Rcode != dns.RcodeNameError {
				bad = append(bad, fmt.Sprintf("evil.example.com to %s over %s: %v %v, want fqdngate's NXDOMAIN", server, network, answerOf(r), err))
			}
		}
	}
	return bad
}

func orEmpty(r *dns.Msg) *dns.Msg {
	if r == nil {
		return new(dns.Msg)
	}
	return r
}

func answerOf(r *dns.Msg) string {
	if r == nil {
		return "no answer"
	}
	return dns.RcodeToString[r.Rcode] + fmt.Sprint(r.Answer)
}

// TestOutputWildcardDNSServesThisHost: with hook: output and the DNS
// listener on 0.0.0.0, the host's own queries reach fqdngate from the
// host's outside address, 192.0.2.129: those to the outside resolver,
// which the kernel redirects to 127.0.0.1 (a wildcard socket does not see
// that address), and those sent to 192.0.2.129 itself. They are this
// host's, like loopback's, and are answered, though 192.0.2.129 is in no
// source group. The same queries from another host to 192.0.2.129 are
// still dropped.
func TestOutputWildcardDNSServesThisHost(t *testing.T) {
	o := startOutput(t, thisHostRules, func(s *policySettings) {
		s.dnsListen = "0.0.0.0:53"
		s.sources = thisHostSources
	})
	o.inet.auth.Set("api.example.com", dnstest.A("api.example.com", 300, "203.0.113.10"))
	o.inet.auth.Set("evil.example.com", dnstest.A("evil.example.com", 300, "203.0.113.66"))

	self := &client{ns: o.host, roots: o.inet.ca.Pool()}
	for _, b := range askSelf(self, []string{authorityAddr, gwInet4 + ":53"}, []string{"udp", "tcp"}) {
		t.Errorf("this host's own query: %s", b)
	}
	if n := o.inet.auth.Seen("evil.example.com", 0); n != 0 {
		t.Errorf("the authority saw %d queries for the unlisted name, want 0", n)
	}

	out := &client{ns: o.inet.ns, src4: inet4, roots: o.inet.ca.Pool()}
	for _, network := range []string{"udp", "tcp"} {
		if r, err := out.exchange(network, gwInet4+":53", "api.example.com", dns.TypeA, time.Second); err == nil {
			t.Errorf("another host's query over %s to %s:53 was answered (%s), want it dropped", network, gwInet4, answerOf(r))
		}
	}
	if t.Failed() {
		t.Log(o.gate.logs())
	}
}

// TestThisHostWithoutKernel: without the nftables backend nothing in the
// kernel guards the listener, and fqdngate alone decides. The host's own
// queries to its outside addresses are answered; another host's are
// dropped and counted. A datagram from outside that claims one of the
// host's IPv6 addresses as its source, which Linux delivers (it drops such
// IPv4 packets as martians, not IPv6 ones), is not taken for the host; so
// neither is the host's own IPv6 datagram from that address, which looks
// the same. Over TCP the handshake proves the source.
func TestThisHostWithoutKernel(t *testing.T) {
	o := startOutput(t, thisHostRules, func(s *policySettings) {
		s.backend = "none"
		s.dnsListen = "[::]:53"
		s.sources = thisHostSources
	})
	o.inet.auth.Set("api.example.com", dnstest.A("api.example.com", 300, "203.0.113.10"))
	o.inet.auth.Set("evil.example.com", dnstest.A("evil.example.com", 300, "203.0.113.66"))

	self := &client{ns: o.host, roots: o.inet.ca.Pool()}
	for _, b := range askSelf(self, []string{gwInet4 + ":53"}, []string{"udp", "tcp"}) {
		t.Errorf("this host's own query: %s", b)
	}
	for _, b := range askSelf(self, []string{"[" + gwInet6 + "]:53"}, []string{"tcp"}) {
		t.Errorf("this host's own query: %s", b)
	}
	if r, err := self.exchange("udp", "["+gwInet6+"]:53", "api.example.com", dns.TypeA, dropWait); err == nil {
		t.Errorf("this host's IPv6 datagram from %s, which a forger could send, was answered (%s); want it dropped without the kernel's guard", gwInet6, answerOf(r))
	}

	out := &client{ns: o.inet.ns, src4: inet4, src6: inet6, roots: o.inet.ca.Pool()}
	for _, server := range []string{gwInet4 + ":53", "[" + gwInet6 + "]:53"} {
		for _, network := range []string{"udp", "tcp"} {
			if r, err := out.exchange(network, server, "api.example.com", dns.TypeA, time.Second); err == nil {
				t.Errorf("another host's query over %s to %s was answered (%s), want it dropped", network, server, answerOf(r))
			}
		}
	}
	o.gate.waitMetric("fqdngate_dns_outside_dropped_total", 5)

	// The forger: the internet namespace takes the host's IPv6 address
	// and sends from it to a second address of the host. The answer would
	// go to the host itself, so only fqdngate's log and counters can tell.
	const second = "2001:db8:e::3"
	o.host.IP("addr", "add", second+"/64", "dev", "h0", "nodad")
	o.inet.ns.IP("addr", "add", gwInet6+"/128", "dev", "i0", "nodad")
	forger := &client{ns: o.inet.ns, src6: gwInet6}
	before := o.gate.metric("fqdngate_dns_outside_dropped_total")
	if r, err := forger.exchange("udp", "["+second+"]:53", "forged.example.com", dns.TypeA, dropWait); err == nil {
		t.Errorf("the forger got an answer (%s); it should not even be able to", answerOf(r))
	}
	o.gate.waitMetric("fqdngate_dns_outside_dropped_total", before+1)
	if strings.Contains(o.gate.stdout.String(), "forged.example.com") {
		t.Errorf("fqdngate decided a query from outside that claimed this host's address %s; want it dropped as outside\n%s", gwInet6, o.gate.logs())
	}
	if t.Failed() {
		t.Log(o.gate.logs())
	}
}
