package e2e

import (
	"bufio"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// armOpts are the parts of a two-armed gateway's policy a test chooses.
type armOpts struct {
	backend                string // nftables or none
	dns, proxy, transparen string // listeners; "" is off
	firewall               string // more firewall keys, each line indented by two spaces
	top                    string // more top-level YAML: sources, inside
	rules                  string // the rules list, items indented by two spaces
}

func (o armOpts) render(g *gate) string {
	return fmt.Sprintf(`listen: {dns: %q, proxy: %q, transparent: %q, admin: "127.0.0.1:0"}
dns:
  upstreams: [%q]
  min_ttl: 1s
firewall:
  backend: %s
  hook: forward
  table: %s
  state_file: %s
%s%srules:
%s`, o.dns, o.proxy, o.transparen, authorityAddr, o.backend, g.table, g.stateFile(), o.firewall, o.top, o.rules)
}

// armPartnerRules open a CIDR of the internet namespace to each group, on
// 443/tcp and 5300/udp: payments the low half, others the high half.
const armPartnerRules = `  - name: pay-partner
    from: [payments]
    to: [198.51.100.0/25, "2001:db8:100::/64"]
    ports: [443, 5300/udp]
  - name: oth-partner
    from: [others]
    to: [198.51.100.128/25, "2001:db8:100:1::/64"]
    ports: [443, 5300/udp]
`

// forgery sends, from the others link, traffic with payments source
// addresses to payments-only destinations (UDP datagrams and TCP SYNs),
// then checks that each group's real traffic still passes. It returns
// which forged packets reached the internet side, as "udp4", "tcp6", ….
func forgery(t *testing.T, n *twoArmNet, sink *udpSink, syn *synProbe, tag string) []string {
	t.Helper()
	pay, oth := n.clients("")
	forger := n.forger()
	forged := map[string]netip.AddrPort{
		"4": ap("198.51.100.6", 5300),
		"6": ap("2001:db8:100::6", 5300),
	}
	synBefore := syn.count(t)
	for fam, dst := range forged {
		forger.send(t, dst, "forged"+fam+tag)
		// The handshake cannot complete (the SYN-ACK goes to the payments
		// link); the probe on the far side counts the SYN.
		if c, err := forger.ns.Dial("tcp", forger.src(dst.Addr()), netip.AddrPortFrom(dst.Addr(), allowedPort).String(), dropWait); err == nil {
			c.Close()
		}
	}
	// Each group's own traffic passes; once it has arrived, so would have
	// the forged datagrams sent before it.
	for fam, dst := range map[string][2]netip.AddrPort{
		"4": {ap("198.51.100.5", 5300), ap("198.51.100.130", 5300)},
		"6": {ap("2001:db8:100::5", 5300), ap("2001:db8:100:1::5", 5300)},
	} {
		pay.send(t, dst[0], "payments"+fam+tag)
		oth.send(t, dst[1], "others"+fam+tag)
		for _, p := range []string{"payments" + fam + tag, "others" + fam + tag} {
			if !sink.await(p, reachWait) {
				t.Errorf("%s never reached the internet side, want it to pass", p)
			}
		}
	}
	mustReach(t, pay, "example.com", ap("198.51.100.5", allowedPort))
	mustReach(t, pay, "example.com", ap("2001:db8:100::5", allowedPort))
	mustReach(t, oth, "example.com", ap("198.51.100.130", allowedPort))
	var through []string
	for fam := range forged {
		if from, ok := sink.saw("forged" + fam + tag); ok {
			through = append(through, "udp"+fam+" (from "+from+")")
		}
	}
	if k := syn.count(t) - synBefore; k > 0 {
		through = append(through, fmt.Sprintf("%d tcp SYNs", k))
	}
	return through
}

// TestReversePathForgedSource (issue 11, item 4): a host on the others
// link sends with a payments source address to a payments-only
// destination. By default (firewall.reverse_path strict with hook:
// forward) the gateway drops it, since its route back to that address
// leaves by the payments link; each group's own traffic still passes.
func TestReversePathForgedSource(t *testing.T) {
	n := newTwoArmNet(t)
	sink := newUDPSink(t, n.inet.ns, 5300)
	syn := newSYNProbe(t, n.inet.ns, armForged4, armForged6)
	g := n.startGate(t, armOpts{backend: "nftables", dns: armPayGW4 + ":53", top: armSources, rules: armPartnerRules}.render)
	if through := forgery(t, n, sink, syn, ""); len(through) > 0 {
		t.Errorf("forged payments sources from the others link reached the internet side: %s; want them dropped\n%s",
			strings.Join(through, ", "), g.logs())
	}
	// Dropped by the reverse path check: two datagrams and two SYNs at
	// least (SYNs are sent again).
	out, err := g.nft("list", "chain", "inet", g.table, "reverse_path")
	var dropped, bytes int
	if i := strings.Index(out, "counter packets "); err == nil && i >= 0 {
		fmt.Sscanf(out[i:], "counter packets %d bytes %d", &dropped, &bytes)
	}
	if dropped < 4 {
		t.Errorf("the reverse path check counted %d drops, want at least 4:\n%s %v", dropped, out, err)
	}
	// /metrics reads the same counter from the kernel.
	if got := g.metric("fqdngate_firewall_reverse_path_drops_total"); got < float64(dropped) {
		t.Errorf("fqdngate_firewall_reverse_path_drops_total = %v, want at least the chain's %d", got, dropped)
	}
	if t.Failed() {
		out, _ := g.nft("list", "table", "inet", g.table)
		t.Log(out)
	}
}

// TestInterfaceTiedSource: with the reverse path check off, a forged
// payments source from the others link gets through while the payments
// group is defined by address alone (the check this test makes can see
// it), and stops getting through once the group is tied to its interface.
func TestInterfaceTiedSource(t *testing.T) {
	n := newTwoArmNet(t)
	sink := newUDPSink(t, n.inet.ns, 5300)
	syn := newSYNProbe(t, n.inet.ns, armForged4, armForged6)
	opts := armOpts{backend: "nftables", dns: armPayGW4 + ":53", firewall: "  reverse_path: off\n", top: armSources, rules: armPartnerRules}
	g := n.startGate(t, opts.render)
	through := forgery(t, n, sink, syn, "-untied")
	if len(through) == 0 {
		t.Fatalf("with reverse_path off and no interface tie, no forged packet got through: the test cannot see a forgery\n%s", g.logs())
	}

	opts.top = fmt.Sprintf(`sources:
  payments: {cidrs: [192.0.2.0/26, "2001:db8:a::/64"], interfaces: [%s]}
  others: {cidrs: [192.0.2.64/26, "2001:db8:b::/64"], interfaces: [%s]}
`, armPayIf, armOthIf)
	g.writePolicy(opts.render(g))
	g.waitMetric(`fqdngate_policy_generation`, 2)
	if through := forgery(t, n, sink, syn, "-tied"); len(through) > 0 {
		t.Errorf("with payments tied to %s, forged payments sources from %s reached the internet side: %s; want them dropped\n%s",
			armPayIf, armOthIf, strings.Join(through, ", "), g.logs())
	}
}

// serveMarkerDNS answers every query on addr (UDP and TCP) in ns with one
// TXT record holding marker, so a test can tell who answered.
func serveMarkerDNS(t *testing.T, ns *netns.NS, addr, marker string) {
	t.Helper()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg).SetReply(r)
		if len(r.Question) == 1 {
			m.Answer = append(m.Answer, rrTXT(strings.TrimSuffix(r.Question[0].Name, "."), 60, marker))
		}
		_ = w.WriteMsg(m)
	})
	serveDNS(t, ns, h, addr)
}

// armWebRules: payments may resolve pay.example.com; a rule without from
// lets every source resolve www.example.com, the outside included as far
// as the rules go.
const armWebRules = `  - name: pay-api
    from: [payments]
    to: [pay.example.com]
  - name: anyone-web
    to: [www.example.com]
`

// outsideQueries asks each server, from the internet namespace over UDP
// and TCP, for a name every source may resolve, all at once, and returns
// the answers that came back.
func outsideQueries(t *testing.T, out *client, servers []string) []string {
	t.Helper()
	var (
		mu  sync.Mutex
		got []string
		wg  sync.WaitGroup
	)
	for _, server := range servers {
		for _, network := range []string{"udp", "tcp"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := out.exchange(network, server, "www.example.com", dns.TypeA, 2*time.Second)
				if err == nil {
					mu.Lock()
					got = append(got, fmt.Sprintf("%s over %s: %s %v", server, network, dns.RcodeToString[r.Rcode], r.Answer))
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	return got
}

// outsideConnect sends a CONNECT for a name every source may reach to the
// proxy at addr from the internet namespace and returns what the proxy
// said, "" if nothing (the connection dropped, refused or closed).
func outsideConnect(out *client, addr netip.AddrPort) string {
	c, err := out.ns.Dial("tcp", out.src(addr.Addr()), addr.String(), time.Second)
	if err != nil {
		return ""
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	fmt.Fprintf(c, "CONNECT www.example.com:443 HTTP/1.1\r\nHost: www.example.com:443\r\n\r\n")
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line)
}

// servedOutside reports whether the DNS firewall or the proxy wrote an
// audit line for a source on the internet side. (The kernel's sampled
// drops of its traffic are lines of the firewall component.)
func servedOutside(g *gate) bool {
	for _, c := range []string{"dns", "proxy"} {
		for _, src := range []string{inet4, inet6} {
			if strings.Contains(g.stdout.String(), `"component":"`+c+`","source":"`+src+`"`) {
				return true
			}
		}
	}
	return false
}

// outsideServers are fqdngate's DNS listener as the internet namespace
// can address it: the gateway's outside addresses, and its inside one
// (routed to the gateway all the same).
var outsideServers = []string{gwInet4 + ":53", "[" + gwInet6 + "]:53", armPayGW4 + ":53"}

// TestOutsideNotServed (issue 11, item 7): fqdngate serves DNS and steers
// traffic only for its inside, here the source groups' ranges, even when
// a rule without from applies to every source. From the internet side,
// queries to the gateway get no answer (no open resolver, no reflection),
// its proxy does not serve, DNS to a protected host is not redirected to
// fqdngate, nor TLS to a transparent port. Inside clients are served as
// before.
func TestOutsideNotServed(t *testing.T) {
	n := newTwoArmNet(t)
	auth := n.inet.auth
	auth.Set("www.example.com", dnstest.A("www.example.com", 300, "203.0.113.20"))
	auth.Set("pay.example.com", dnstest.A("pay.example.com", 300, "203.0.113.21"))
	serveMarkerDNS(t, n.pay, armPay4+":53", "payments-host")
	g := n.startGate(t, armOpts{
		backend: "nftables", dns: "[::]:53", proxy: "[::]:3128", transparen: "[::]:3129",
		firewall: "  transparent_ports: [8443]\n", top: armSources, rules: armWebRules,
	}.render)
	pay, _ := n.clients(armPayGW4 + ":53")
	out := n.outsider()

	// Inside: served. (Resolving first also puts the name in fqdngate's
	// cache, so an answer to the outside would come at once.)
	if _, err := pay.resolveAndGet("pay.example.com", dns.TypeA, allowedPort); err != nil {
		t.Fatalf("payments client: %v\n%s", err, g.logs())
	}
	if addrs, _, err := pay.lookup("www.example.com", dns.TypeA); err != nil || len(addrs) != 1 {
		t.Fatalf("payments client, www.example.com: %v %v\n%s", addrs, err, g.logs())
	}
	if r, err := pay.exchange("udp", authorityAddr, "evil.example.com", dns.TypeA, reachWait); err != nil || r.Rcode != dns.RcodeNameError {
		t.Errorf("payments client, DNS to the outside resolver: %v %v; want fqdngate's NXDOMAIN", r, err)
	}
	if got := outsideConnect(pay, ap(armPayGW4, 3128)); !strings.Contains(got, " 200") {
		t.Errorf("payments client, CONNECT through the proxy: %q, want 200", got)
	}

	// Outside: the gateway's resolver does not answer.
	for _, a := range outsideQueries(t, out, outsideServers) {
		t.Errorf("the internet side got an answer from fqdngate: %s; want none", a)
	}
	// Nor does its proxy.
	for _, addr := range []netip.AddrPort{ap(gwInet4, 3128), ap(gwInet6, 3128), ap(armPayGW4, 3128)} {
		if got := outsideConnect(out, addr); got != "" {
			t.Errorf("the internet side's CONNECT to the proxy at %s: %q, want no answer", addr, got)
		}
	}
	// DNS to a protected host is not fqdngate's to answer: it reaches
	// the host (if the policy let it) or nothing.
	for _, network := range []string{"udp", "tcp"} {
		r, err := out.exchange(network, armPay4+":53", "probe.example.com", dns.TypeTXT, 2*time.Second)
		if err == nil && !(len(r.Answer) == 1 && strings.Contains(r.Answer[0].String(), "payments-host")) {
			t.Errorf("inbound DNS over %s to the payments host was answered by someone else (fqdngate): %s %v", network, dns.RcodeToString[r.Rcode], r.Answer)
		}
	}
	// TLS to a transparent port of a protected host is not redirected to
	// the transparent proxy: it meets default deny.
	mustDrop(t, out, ap(armPay4, 8443))
	if servedOutside(g) {
		t.Errorf("fqdngate's DNS firewall or proxy decided traffic from the internet side; want it never served\n%s", g.logs())
	}
	// The kernel dropped them before fqdngate saw them, and /metrics
	// says so: three servers over UDP and TCP, the proxy three times.
	if got := g.metric(`fqdngate_firewall_outside_drops_total{listener="dns"}`); got < 6 {
		t.Errorf(`fqdngate_firewall_outside_drops_total{listener="dns"} = %v, want at least 6`, got)
	}
	if got := g.metric(`fqdngate_firewall_outside_drops_total{listener="proxy"}`); got < 3 {
		t.Errorf(`fqdngate_firewall_outside_drops_total{listener="proxy"} = %v, want at least 3`, got)
	}
	if got := g.metric(`fqdngate_dns_outside_dropped_total`); got != 0 {
		t.Errorf("fqdngate_dns_outside_dropped_total = %v: a query from outside reached the DNS firewall past the kernel", got)
	}
	if t.Failed() {
		t.Log(g.logs())
	}
}

// TestOutsideNotServedWithoutKernel: with firewall.backend none nothing
// filters in the kernel, and fqdngate itself refuses the outside: DNS
// queries from the internet side get no answer and are counted, proxy
// connections are closed at accept and counted.
func TestOutsideNotServedWithoutKernel(t *testing.T) {
	n := newTwoArmNet(t)
	n.inet.auth.Set("www.example.com", dnstest.A("www.example.com", 300, "203.0.113.20"))
	g := n.startGate(t, armOpts{backend: "none", dns: "[::]:53", proxy: "[::]:3128", top: armSources, rules: armWebRules}.render)
	pay, _ := n.clients(armPayGW4 + ":53")
	out := n.outsider()

	if addrs, _, err := pay.lookup("www.example.com", dns.TypeA); err != nil || len(addrs) != 1 {
		t.Fatalf("payments client, www.example.com: %v %v\n%s", addrs, err, g.logs())
	}
	if got := outsideConnect(pay, ap(armPayGW4, 3128)); !strings.Contains(got, " 200") {
		t.Errorf("payments client, CONNECT through the proxy: %q, want 200", got)
	}
	for _, a := range outsideQueries(t, out, outsideServers) {
		t.Errorf("the internet side got an answer from fqdngate: %s; want none", a)
	}
	for _, addr := range []netip.AddrPort{ap(gwInet4, 3128), ap(gwInet6, 3128)} {
		if got := outsideConnect(out, addr); got != "" {
			t.Errorf("the internet side's CONNECT to the proxy at %s: %q, want no answer", addr, got)
		}
	}
	// Three servers, over UDP and TCP; the proxy twice.
	g.waitMetric(`fqdngate_dns_outside_dropped_total`, 6)
	g.waitMetric(`fqdngate_proxy_outside_refused_total{listener="explicit"}`, 2)
	if servedOutside(g) {
		t.Errorf("fqdngate audited traffic from the internet side; want it counted, not logged per packet\n%s", g.logs())
	}
}
