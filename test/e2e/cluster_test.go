package e2e

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// The cluster stand-ins live in the internet namespace, which owns
// 198.51.100.0/24: the cluster DNS Service address, which a service proxy
// rewrites to its backend, the backend ("CoreDNS"), and hosts of the
// service range.
const (
	clusterDNS     = "198.51.100.10" // the Service address clients are configured with
	clusterBackend = "198.51.100.11" // where kube-proxy sends it
	nodeLocalDNS   = "169.254.20.10" // NodeLocal DNSCache, on the gateway itself
	clusterPod     = "203.0.113.99"  // the cluster name's address: outside unfiltered
	clusterName    = "kube-dns.kube-system.svc.cluster.local"
	// strayAnswer is what the stand-ins answer for names outside the
	// cluster: a resolver that would let anything through.
	strayAnswer = "203.0.113.66"
)

// clusterRules allow group a api.example.com only; nothing names the
// cluster's ranges.
const clusterRules = `  - name: api
    from: [a]
    to: [api.example.com]
    ports: [443]
  - name: b-only
    from: [b]
    to: [b.example.com]
`

// standIn is a DNS server in the internet namespace that records who
// asked it what. For names under cluster.local it answers as a cluster
// DNS would; for any other name with strayAnswer.
type standIn struct {
	mu   sync.Mutex // guards seen
	seen []string   // "source name"
}

func (s *standIn) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	q := r.Question[0]
	src, _ := netip.ParseAddrPort(w.RemoteAddr().String())
	s.mu.Lock()
	s.seen = append(s.seen, src.Addr().String()+" "+strings.TrimSuffix(q.Name, "."))
	s.mu.Unlock()
	m := new(dns.Msg).SetReply(r)
	m.Authoritative = true
	switch {
	case strings.EqualFold(q.Name, clusterName+".") && q.Qtype == dns.TypeA:
		m.Answer = append(m.Answer, dnstest.A(q.Name, 30, clusterPod))
	case strings.HasSuffix(strings.ToLower(q.Name), ".cluster.local."):
		m.Rcode = dns.RcodeNameError
	case q.Qtype == dns.TypeA:
		m.Answer = append(m.Answer, dnstest.A(q.Name, 30, strayAnswer))
	}
	_ = w.WriteMsg(m)
}

func (s *standIn) queries() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

// serveStandIn starts a standIn on addr:53 (UDP and TCP) in ns.
func serveStandIn(t *testing.T, ns *netns.NS, addr string) *standIn {
	t.Helper()
	s := &standIn{}
	ap := addr + ":53"
	serveDNS(t, ns, s, ap)
	return s
}

// kubeProxy programs, in the gateway namespace, what kube-proxy programs
// for the cluster DNS Service: a nat chain at dstnat (-100) that rewrites
// its address to the backend's. It replaces the table, as a resync that
// recreates it would: the chain's hook is registered anew, and so runs
// before every chain of the same priority registered earlier.
func kubeProxy(t *testing.T, gw *netns.NS) { kubeProxyAt(t, gw, "prerouting") }

// kubeProxyAt is kubeProxy for the given nat hook: prerouting for the
// pods' traffic, output for the node's own.
func kubeProxyAt(t *testing.T, gw *netns.NS, hook string) {
	t.Helper()
	script := filepath.Join(t.TempDir(), "kube-proxy.nft")
	body := `table ip kube-proxy-e2e {}
delete table ip kube-proxy-e2e
table ip kube-proxy-e2e {
	chain nat-` + hook + ` {
		type nat hook ` + hook + ` priority -100; policy accept;
		ip daddr ` + clusterDNS + ` udp dport 53 dnat to ` + clusterBackend + `:53
		ip daddr ` + clusterDNS + ` tcp dport 53 dnat to ` + clusterBackend + `:53
	}
}
`
	if err := os.WriteFile(script, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	gw.MustExec("nft", "-f", script)
}

// TestClusterDNSAndRanges: the three settings a Kubernetes node compiles
// its cluster into, on the gateway topology with the real binary.
//
//   - firewall.intercept_dns: a client's queries to the cluster DNS Service
//     address, UDP and TCP, are answered by fqdngate even though a service
//     proxy rewrites that address at dstnat: neither the Service's stand-in
//     nor its backend hears from the client. Without it (first, as a
//     control) the service proxy, started after fqdngate, wins.
//   - dns.forward: cluster names (and search-path forms) are forwarded to
//     the cluster DNS for every client, without a rule; their addresses
//     are never learned, so they stay closed; other names are decided by
//     the rules as before.
//   - firewall.unfiltered: a client reaches a host in the service range
//     without any rule; a host outside is still dropped.
func TestClusterDNSAndRanges(t *testing.T) {
	settings := func(intercept bool) func(*policySettings) {
		return func(s *policySettings) {
			s.dns = "  forward: [{zone: cluster.local, to: [" + clusterDNS + "]}]\n"
			s.firewall = []string{"unfiltered: [192.0.2.0/25, 198.51.100.0/25]"}
			if intercept {
				s.firewall = append(s.firewall, "intercept_dns: ["+clusterDNS+", "+nodeLocalDNS+"]")
			}
		}
	}
	f := startForwardWith(t, 2*time.Second, clusterRules, settings(false))
	n := f.net
	n.inet.auth.Set("api.example.com", dnstest.A("api.example.com", 300, "203.0.113.10"))
	service := serveStandIn(t, n.inet.ns, clusterDNS)
	backend := serveStandIn(t, n.inet.ns, clusterBackend)
	// NodeLocal DNSCache listens on a link-local address of the node (on
	// a dummy interface, which this kernel may lack: loopback serves as
	// well), run with -setupiptables=false: no NOTRACK. Nothing DNATs
	// it, so the generic DNS steering would take it as well; listed in
	// intercept_dns it is taken first.
	n.gw.Addr("lo", nodeLocalDNS+"/32")
	nodeLocal := serveStandIn(t, n.gw, nodeLocalDNS)
	// kube-proxy starts (or resyncs) after fqdngate: at the same priority
	// the hook registered last runs first.
	kubeProxy(t, n.gw)

	// The control: without intercept_dns the service proxy's DNAT binds
	// first, and the backend answers the client for any name.
	r, err := f.a.exchange("udp", clusterDNS+":53", "evil.example.com", dns.TypeA, reachWait)
	if err != nil {
		t.Fatalf("query to the Service address without intercept_dns: %v\n%s", err, f.gate.logs())
	}
	if got, _ := answerAddrs(r); len(got) != 1 || got[0].String() != strayAnswer || len(backend.queries()) != 1 {
		t.Errorf("control: without intercept_dns the client got %v and the backend saw %v, want the backend's answer: this kernel ran fqdngate's steering first, so what follows proves nothing about the priority", got, backend.queries())
	}

	// With intercept_dns the redirect happens before any dstnat.
	settings(true)(&f.settings)
	f.gate.writePolicy(f.settings.render(clusterRules))
	f.gate.waitMetric(`fqdngate_policy_generation`, 2)
	// kube-proxy resyncs after fqdngate's reload: intercept_dns must win
	// by priority, not by when its chain was made.
	kubeProxy(t, n.gw)
	serviceBefore, backendBefore := len(service.queries()), len(backend.queries())

	for _, network := range []string{"udp", "tcp"} {
		// An allowed name: fqdngate's answer, from the authority, at the
		// Service address and at NodeLocal DNSCache's.
		for _, server := range []string{clusterDNS, nodeLocalDNS} {
			r, err := f.a.exchange(network, server+":53", "api.example.com", dns.TypeA, reachWait)
			if err != nil {
				t.Fatalf("%s query to %s: %v\n%s", network, server, err, f.gate.logs())
			}
			if got, _ := answerAddrs(r); len(got) != 1 || got[0].String() != "203.0.113.10" {
				t.Errorf("%s: api.example.com via %s: %v, want fqdngate's 203.0.113.10", network, server, got)
			}
		}
		r, err := f.a.exchange(network, nodeLocalDNS+":53", "evil.example.com", dns.TypeA, reachWait)
		if err != nil || r.Rcode != dns.RcodeNameError {
			t.Errorf("%s: evil.example.com via NodeLocal DNSCache's address: %v %v, want fqdngate's NXDOMAIN", network, r, err)
		}
		// A name no rule allows: fqdngate's NXDOMAIN, not the stand-ins'
		// answer.
		r, err = f.a.exchange(network, clusterDNS+":53", "evil.example.com", dns.TypeA, reachWait)
		if err != nil || r.Rcode != dns.RcodeNameError {
			t.Errorf("%s: evil.example.com via the Service address: %v %v, want fqdngate's NXDOMAIN", network, r, err)
		}
		// A cluster name, for a client with no rule for it (b): forwarded
		// to the cluster DNS by fqdngate.
		for _, c := range []*client{f.a, f.b} {
			r, err = c.exchange(network, clusterDNS+":53", clusterName, dns.TypeA, reachWait)
			if got, _ := answerAddrs(r); err != nil || len(got) != 1 || got[0].String() != clusterPod {
				t.Errorf("%s from %s: %s: %v %v, want the cluster DNS's %s", network, c.src4, clusterName, r, err, clusterPod)
			}
		}
		// A search-path form is the cluster's (NXDOMAIN from it); the
		// same name without the suffix is the rules'.
		r, err = f.b.exchange(network, gatewayDNS, "api.example.com.default.svc.cluster.local", dns.TypeA, reachWait)
		if err != nil || r.Rcode != dns.RcodeNameError {
			t.Errorf("%s: search-path form: %v %v, want the cluster's NXDOMAIN", network, r, err)
		}
		if r, err = f.b.exchange(network, gatewayDNS, "api.example.com", dns.TypeA, reachWait); err != nil || r.Rcode != dns.RcodeNameError {
			t.Errorf("%s: api.example.com for b: %v %v, want the rules' NXDOMAIN", network, r, err)
		}
	}
	// The Service's stand-in heard only fqdngate's forwards of cluster
	// names (from the gateway's own address); the backend nothing.
	for _, q := range service.queries()[serviceBefore:] {
		if !strings.HasPrefix(q, gwInet4+" ") || !strings.HasSuffix(q, ".cluster.local") {
			t.Errorf("the Service's stand-in heard %q, want only the gateway's forwards of cluster names", q)
		}
	}
	if got := backend.queries()[backendBefore:]; len(got) != 0 {
		t.Errorf("the backend heard %v after intercept_dns, want nothing", got)
	}
	if got := nodeLocal.queries(); len(got) != 0 {
		t.Errorf("NodeLocal DNSCache's stand-in heard %v, want nothing", got)
	}

	// Forwarded addresses are never learned: the cluster name's address
	// stays closed, and no set holds it.
	mustDrop(t, f.a, ap(clusterPod, allowedPort))
	if out, err := f.gate.nft("list", "table", "inet", f.gate.table); err != nil || strings.Contains(out, clusterPod) {
		t.Errorf("the table holds %s (or cannot be listed: %v):\n%s", clusterPod, err, out)
	}
	// The learned path works beside it.
	if _, err := f.a.resolveAndGet("api.example.com", dns.TypeA, allowedPort); err != nil {
		t.Errorf("api.example.com: %v", err)
	}

	// Unfiltered: from 192.0.2.0/25 to 198.51.100.0/25 without a rule,
	// on any port, for either group; beyond the range still dropped.
	mustReach(t, f.a, "api.example.com", ap("198.51.100.5", otherPort))
	mustReach(t, f.b, "api.example.com", ap("198.51.100.5", allowedPort))
	mustDrop(t, f.a, ap("198.51.100.200", allowedPort))
	mustDrop(t, f.b, ap("203.0.113.10", allowedPort))

	// The audit log says why cluster names were answered.
	if log := f.gate.stdout.String(); !strings.Contains(log, `"reason":"forwarded zone"`) || !strings.Contains(log, `"zone":"cluster.local"`) {
		t.Errorf("no audit line with reason forwarded zone and zone cluster.local\n%s", f.gate.logs())
	}
	if t.Failed() {
		t.Log(f.gate.logs())
	}
}

// TestClusterDNSOutputHook: on the output hook the host's own processes
// are the clients. A query to the cluster DNS Service address is
// fqdngate's to answer even with a service proxy's DNAT in the nat output
// chain; fqdngate's own forwards of cluster names to that same address are
// not intercepted (they would go round in circles) and reach the cluster
// DNS through the service proxy, as in a cluster; unfiltered ranges pass
// for the host's address in them.
func TestClusterDNSOutputHook(t *testing.T) {
	o := startOutput(t, "  - name: api\n    to: [api.example.com]\n", func(s *policySettings) {
		s.dns = "  forward: [{zone: cluster.local, to: [" + clusterDNS + "]}]\n"
		s.firewall = []string{"intercept_dns: [" + clusterDNS + "]", "unfiltered: [192.0.2.128/25, 198.51.100.0/25]"}
	})
	o.inet.auth.Set("api.example.com", dnstest.A("api.example.com", 300, "203.0.113.10"))
	service := serveStandIn(t, o.inet.ns, clusterDNS)
	backend := serveStandIn(t, o.inet.ns, clusterBackend)
	kubeProxyAt(t, o.host, "output")
	c := &client{ns: o.host, dns: "127.0.0.1:53", roots: o.inet.ca.Pool()}

	for _, network := range []string{"udp", "tcp"} {
		r, err := c.exchange(network, clusterDNS+":53", "evil.example.com", dns.TypeA, reachWait)
		if err != nil || r.Rcode != dns.RcodeNameError {
			t.Errorf("%s: evil.example.com via the Service address: %v %v, want fqdngate's NXDOMAIN\n%s", network, r, err, o.gate.logs())
		}
		r, err = c.exchange(network, clusterDNS+":53", "api.example.com", dns.TypeA, reachWait)
		if got, _ := answerAddrs(r); err != nil || len(got) != 1 || got[0].String() != "203.0.113.10" {
			t.Errorf("%s: api.example.com via the Service address: %v %v, want fqdngate's 203.0.113.10", network, r, err)
		}
		r, err = c.exchange(network, clusterDNS+":53", clusterName, dns.TypeA, reachWait)
		if got, _ := answerAddrs(r); err != nil || len(got) != 1 || got[0].String() != clusterPod {
			t.Errorf("%s: %s: %v %v, want the cluster DNS's %s (fqdngate's forward must not be intercepted)", network, clusterName, r, err, clusterPod)
		}
	}
	heard := append(service.queries(), backend.queries()...)
	if len(heard) == 0 {
		t.Error("the cluster DNS heard no forward of a cluster name")
	}
	for _, q := range heard {
		if !strings.HasSuffix(q, ".cluster.local") {
			t.Errorf("the cluster DNS heard %q, want only fqdngate's forwards of cluster names", q)
		}
	}
	mustDrop(t, c, ap(clusterPod, allowedPort))
	mustReach(t, c, "api.example.com", ap("198.51.100.5", otherPort))
	mustDrop(t, c, ap("198.51.100.200", allowedPort))
	if t.Failed() {
		t.Log(o.gate.logs())
	}
}
