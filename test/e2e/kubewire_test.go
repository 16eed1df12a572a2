package e2e

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
	"github.com/fqdngate/fqdngate/internal/testutil/kubetest"
)

// kubeAPIAddr is where the API server listens, in the internet namespace:
// the gateway reaches it by its default route.
const kubeAPIAddr = "203.0.113.250"

// TestClusterKubernetesSection is TestClusterDNSAndRanges with the
// cluster written as a kubernetes section instead of the three general
// settings, on the gateway topology with the real binary following a real
// API server (mode gateway, with the agent's RBAC: pods and namespaces
// only). Client a is a pod selected by group a; b stays a CIDR group.
// The section alone must make fqdngate intercept the cluster DNS address
// before the service proxy's DNAT, forward cluster names to it for every
// client, decide other names by the rules, and let traffic between the
// cluster ranges pass.
func TestClusterKubernetesSection(t *testing.T) {
	n := newForwardNet(t)
	n.inet.ns.Addr("lo", kubeAPIAddr+"/32")
	api := kubetest.Start(t, kubetest.InNetns(n.inet.ns, netip.MustParseAddr(kubeAPIAddr)))
	api.CreateNamespace(t, "web", nil)
	api.CreatePod(t, kubetest.Pod{Namespace: "web", Name: "a-1", Node: "node-a", Labels: map[string]string{"app": "a"}, IPs: []netip.Addr{netip.MustParseAddr(srcA)}})
	agent := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods", "namespaces"}, Verbs: []string{"get", "list", "watch"}}}
	kubeconfig := kubetest.WriteKubeconfig(t, api.ServiceAccountConfig(t, "fqdngate", "fqdngate", agent...))

	g := newGate(t, n.gw)
	f := &forward{
		net:  n,
		gate: g,
		settings: policySettings{
			hook:      "forward",
			dnsListen: gatewayDNS,
			grace:     2 * time.Second,
			table:     g.table,
			stateFile: g.stateFile(),
			sources: `  a: {kubernetes: {namespaces: [web], pod_selector: {matchLabels: {app: a}}}}
  b: [192.0.2.20/32]
`,
		},
		a: &client{ns: n.client, src4: srcA, dns: gatewayDNS, roots: n.inet.ca.Pool()},
		b: &client{ns: n.client, src4: srcB, dns: gatewayDNS, roots: n.inet.ca.Pool()},
	}
	policy := "kubernetes:\n" +
		"  kubeconfig: " + kubeconfig + "\n" +
		"  mode: gateway\n" +
		"  cluster_cidrs: [192.0.2.0/25, 198.51.100.0/25]\n" +
		"  dns: {address: [" + clusterDNS + "], nodelocal: " + nodeLocalDNS + "}\n" +
		f.settings.render(clusterRules)
	g.writePolicy(policy)
	g.start()
	g.waitMetric("fqdngate_kubernetes_synced", 1)

	n.inet.auth.Set("api.example.com", dnstest.A("api.example.com", 300, "203.0.113.10"))
	service := serveStandIn(t, n.inet.ns, clusterDNS)
	backend := serveStandIn(t, n.inet.ns, clusterBackend)
	n.gw.Addr("lo", nodeLocalDNS+"/32")
	nodeLocal := serveStandIn(t, n.gw, nodeLocalDNS)
	// kube-proxy (re)starts after fqdngate: the intercept must win by
	// priority.
	kubeProxy(t, n.gw)

	for _, network := range []string{"udp", "tcp"} {
		// The pod's allowed name, at the cluster DNS address and at
		// NodeLocal DNSCache's: fqdngate's answer, by the pod's group.
		for _, server := range []string{clusterDNS, nodeLocalDNS} {
			r, err := f.a.exchange(network, server+":53", "api.example.com", dns.TypeA, reachWait)
			if got := onlyA(r, err); got != "203.0.113.10" {
				t.Errorf("%s: api.example.com via %s: %v %v, want fqdngate's 203.0.113.10", network, server, r, err)
			}
		}
		// A name no rule allows: fqdngate's NXDOMAIN, not the stand-ins'.
		r, err := f.a.exchange(network, clusterDNS+":53", "evil.example.com", dns.TypeA, reachWait)
		if err != nil || r.Rcode != dns.RcodeNameError {
			t.Errorf("%s: evil.example.com via the cluster DNS address: %v %v, want fqdngate's NXDOMAIN", network, r, err)
		}
		// A cluster name, for the pod and for b (no rule names it):
		// forwarded by fqdngate to the cluster DNS.
		for _, c := range []*client{f.a, f.b} {
			r, err = c.exchange(network, clusterDNS+":53", clusterName, dns.TypeA, reachWait)
			if got := onlyA(r, err); got != clusterPod {
				t.Errorf("%s from %s: %s: %v %v, want the cluster DNS's %s", network, c.src4, clusterName, r, err, clusterPod)
			}
		}
		// A search-path form is the cluster's; without the suffix, the
		// rules' (b has no rule for api.example.com).
		r, err = f.b.exchange(network, gatewayDNS, "api.example.com.default.svc.cluster.local", dns.TypeA, reachWait)
		if err != nil || r.Rcode != dns.RcodeNameError {
			t.Errorf("%s: search-path form: %v %v, want the cluster's NXDOMAIN", network, r, err)
		}
		if r, err = f.b.exchange(network, gatewayDNS, "api.example.com", dns.TypeA, reachWait); err != nil || r.Rcode != dns.RcodeNameError {
			t.Errorf("%s: api.example.com for b: %v %v, want the rules' NXDOMAIN", network, r, err)
		}
	}
	// Only fqdngate's forwards of cluster names reached the cluster DNS.
	for _, q := range service.queries() {
		if !strings.HasPrefix(q, gwInet4+" ") || !strings.HasSuffix(q, ".cluster.local") {
			t.Errorf("the cluster DNS stand-in heard %q, want only the gateway's forwards of cluster names", q)
		}
	}
	if len(service.queries()) == 0 {
		t.Error("the cluster DNS stand-in heard no forward")
	}
	if got := backend.queries(); len(got) != 0 {
		t.Errorf("the backend heard %v, want nothing (the intercept comes before the service proxy)", got)
	}
	if got := nodeLocal.queries(); len(got) != 0 {
		t.Errorf("NodeLocal DNSCache's stand-in heard %v, want nothing", got)
	}
	// Forwarded addresses are never learned; the pod's learned name works.
	mustDrop(t, f.a, ap(clusterPod, allowedPort))
	if _, err := f.a.resolveAndGet("api.example.com", dns.TypeA, allowedPort); err != nil {
		t.Errorf("api.example.com from the pod: %v", err)
	}
	// Inside the cluster ranges, any port, either group; beyond, dropped.
	mustReach(t, f.a, "api.example.com", ap("198.51.100.5", otherPort))
	mustReach(t, f.b, "api.example.com", ap("198.51.100.5", allowedPort))
	mustDrop(t, f.a, ap("198.51.100.200", allowedPort))
	if log := g.stdout.String(); !strings.Contains(log, `"reason":"forwarded zone"`) || !strings.Contains(log, `"zone":"cluster.local"`) {
		t.Errorf("no audit line with reason forwarded zone and zone cluster.local")
	}
	if t.Failed() {
		t.Log(g.logs())
	}
}

// onlyA returns the one address a successful answer holds, or "".
func onlyA(r *dns.Msg, err error) string {
	if err != nil || r == nil {
		return ""
	}
	if got, _ := answerAddrs(r); len(got) == 1 {
		return got[0].String()
	}
	return ""
}
