package e2e

import (
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
	"github.com/fqdngate/fqdngate/internal/testutil/kubetest"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// The node topology (documentation ranges only):
//
//	pod ns ─┐ (one veth each, point to point: the pod has 192.0.2.N/32,
//	pod ns ─┼─ node ns (fqdngate, kube-apiserver on its loopback) ── 192.0.2.128/25 ── internet ns
//	pod ns ─┘  the node 192.0.2.1/32 on every pod link, as the ptp CNI does)
//
// The pods' range 192.0.2.0/25 and the service range 198.51.100.0/25 are
// the cluster's (kubernetes.cluster_cidrs); the internet namespace is as in
// the forward topology. Pods query fqdngate's listener on the node
// directly: intercepting the cluster DNS Service is another test's.
const (
	nodeName  = "node-1"
	podGW     = "192.0.2.1"
	nodeDNS   = podGW + ":53"
	podNS     = "shop"
	apiAddr   = "203.0.113.10" // api.example.com: group web
	dataAddr  = "203.0.113.20" // data.example.com: group batch
	kubeRules = `  - name: web-api
    from: [web]
    to: [api.example.com]
    ports: [443]
  - name: batch-data
    from: [batch]
    to: [data.example.com]
    ports: [443]
`
)

// kubeSources are two groups that select pods of namespace shop by label.
const kubeSources = `  web:
    kubernetes: {namespaces: [shop], pod_selector: {matchLabels: {app: web}}}
  batch:
    kubernetes: {namespaces: [shop], pod_selector: {matchLabels: {app: batch}}}
`

// manifest is the node agent's shipped manifest: its ClusterRole's rules
// are all the agent gets in these tests.
const manifest = "../../deploy/kubernetes/fqdngate.yaml"

// agentRules returns the rules of the ClusterRole in manifest.
func agentRules(t testing.TB) []rbacv1.PolicyRule {
	return kubetest.ShippedAgentRules(t, manifest)
}

// kubeNode is a node with fqdngate as its agent, a real API server, and
// pod slots: network namespaces behind the node with fixed addresses. A
// slot is only a place for traffic; which Pod object has its address is
// up to the test.
type kubeNode struct {
	t    *testing.T // nil in benchmarks, which have no pod slots
	node *netns.NS
	inet *internet
	api  *kubetest.Server
	gate *gate
	pods []*client // slot i has address 192.0.2.(10+i)
}

func (k *kubeNode) slotAddr(i int) string { return fmt.Sprintf("192.0.2.%d", 10+i) }

// startKubeNode builds the topology with slots pod slots and starts the
// API server and the agent (startAgent).
func startKubeNode(t *testing.T, slots int) *kubeNode {
	t.Helper()
	k := &kubeNode{t: t, node: netns.New(t)}
	k.inet = newInternet(t, k.node, "g1")
	k.node.Route("default", inet4)
	k.node.Forwarding()
	for i := range slots {
		k.pods = append(k.pods, k.addSlot(i))
	}
	k.startAgent(t, nodeDNS, kubeSources, kubeRules)
	return k
}

// startAgent starts the API server inside the node, with namespace shop,
// and fqdngate on the node with sources and rules, reaching the API with
// a kubeconfig of a ServiceAccount that has only the shipped rules; it
// returns once the agent has listed the cluster.
func (k *kubeNode) startAgent(t testing.TB, dnsListen, sources, rules string) {
	t.Helper()
	k.api = kubetest.Start(t, kubetest.InNetns(k.node, netip.MustParseAddr("127.0.0.1")))
	k.api.CreateNamespace(t, podNS, nil)
	kubeconfig := kubetest.WriteKubeconfig(t, k.api.ServiceAccountConfig(t, "fqdngate", "fqdngate", agentRules(t)...))

	k.gate = newGate(t, k.node)
	s := policySettings{hook: "forward", dnsListen: dnsListen, grace: 2 * time.Second,
		table: k.gate.table, stateFile: k.gate.stateFile(), sources: sources}
	// Pods ask the node's listener directly here; the cluster DNS address
	// is required, inside cluster_cidrs, and never queried.
	body := s.render(rules) + `kubernetes:
  kubeconfig: ` + kubeconfig + `
  mode: node
  node: ` + nodeName + `
  cluster_cidrs: [192.0.2.0/25, 198.51.100.0/25, "2001:db8:4b::/48"]
  dns: {address: [198.51.100.10]}
`
	k.gate.writePolicy(body)
	k.gate.start()
	k.waitReady(t, time.Minute, "synced", func(body string) bool { return strings.HasPrefix(body, "ready") && !strings.Contains(body, "degraded") })
}

// addSlot makes pod slot i: a namespace with 192.0.2.(10+i)/32 on eth0,
// routed through the node, as the ptp CNI plugin wires a pod.
func (k *kubeNode) addSlot(i int) *client {
	p := netns.New(k.t)
	dev := fmt.Sprintf("p%d", i)
	netns.Veth(k.t, p, "eth0", k.node, dev)
	addr := k.slotAddr(i)
	p.Addr("eth0", addr+"/32")
	p.IP("route", "add", podGW, "dev", "eth0")
	p.Route("default", podGW)
	k.node.Addr(dev, podGW+"/32")
	k.node.IP("route", "add", addr+"/32", "dev", dev)
	return &client{ns: p, src4: addr, dns: nodeDNS, roots: k.inet.ca.Pool()}
}

// createPod registers the pod of slot i as shop/name on node.
func (k *kubeNode) createPod(t testing.TB, name, node string, slot int, labels map[string]string) {
	t.Helper()
	k.api.CreatePod(t, kubetest.Pod{Namespace: podNS, Name: name, Node: node, Labels: labels,
		IPs: []netip.Addr{netip.MustParseAddr(k.slotAddr(slot))}})
}

// setHas reports whether the kernel's set (in the gate's table) holds addr.
func (k *kubeNode) setHas(t testing.TB, set, addr string) bool {
	t.Helper()
	out, err := k.gate.nft("list", "set", "inet", k.gate.table, set)
	if err != nil {
		t.Fatalf("listing set %s: %v\n%s", set, err, out)
	}
	_, elems, _ := strings.Cut(out, "elements = {")
	elems, _, _ = strings.Cut(elems, "}")
	for _, e := range strings.FieldsFunc(elems, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\t' }) {
		if e == addr {
			return true
		}
	}
	return false
}

// kernelLimit bounds every wait for the kernel to follow the API: far
// above the 1 s the agent is meant to take, for a loaded machine.
const kernelLimit = 15 * time.Second

// waitSet waits until set holds addr (want) or not, and returns how long
// it took.
func (k *kubeNode) waitSet(t testing.TB, set, addr string, want bool) time.Duration {
	t.Helper()
	return k.waitSetWithin(t, set, addr, want, kernelLimit)
}

// waitSetWithin is waitSet with its own bound.
func (k *kubeNode) waitSetWithin(t testing.TB, set, addr string, want bool, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for k.setHas(t, set, addr) != want {
		if time.Since(start) > limit {
			t.Fatalf("set %s: %s present=%v after %v, want %v\n%s", set, addr, !want, limit, want, k.gate.logs())
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// waitReady polls /readyz until ok says its body is what is waited for.
func (k *kubeNode) waitReady(t testing.TB, limit time.Duration, what string, ok func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(limit)
	var body string
	for time.Now().Before(deadline) {
		var err error
		if body, err = k.gate.get("/readyz"); err == nil && ok(body) {
			return body
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("/readyz never said %s within %v; last: %q\n%s", what, limit, body, k.gate.logs())
	return ""
}

// refused fails t unless name has no addresses for c.
func refused(t *testing.T, c *client, name string) {
	t.Helper()
	r, err := c.exchange("udp", c.dns, name, dns.TypeA, reachWait)
	if err != nil {
		t.Errorf("from %s: %s: %v, want a refusal", c.src4, name, err)
		return
	}
	if got, _ := answerAddrs(r); len(got) > 0 {
		t.Errorf("from %s: %s answered %v, want no addresses", c.src4, name, got)
	}
}

// TestKubeNodeAgent: fqdngate as a node agent (hook forward, mode node)
// against a real kube-apiserver, with pods as network namespaces behind the
// node. Every step checks real traffic through the node; membership changes
// are also watched in the kernel's pod sets, and how long the kernel took
// is logged.
func TestKubeNodeAgent(t *testing.T) {
	k := startKubeNode(t, 5)
	k.inet.auth.Set("api.example.com", dnstest.A("api.example.com", 300, apiAddr))
	k.inet.auth.Set("data.example.com", dnstest.A("data.example.com", 300, dataAddr))
	web, other, reuse, foreign, steady := k.pods[0], k.pods[1], k.pods[0], k.pods[2], k.pods[3]
	api, data := ap(apiAddr, allowedPort), ap(dataAddr, allowedPort)

	k.createPod(t, "web-1", nodeName, 0, map[string]string{"app": "web"})
	k.createPod(t, "other-1", nodeName, 1, map[string]string{"app": "other"})
	k.createPod(t, "web-2", nodeName, 3, map[string]string{"app": "web"})
	k.waitSet(t, "pod4.web", k.slotAddr(0), true)
	k.waitSet(t, "pod4.web", k.slotAddr(3), true)

	t.Run("selected pod resolves and connects", func(t *testing.T) {
		if _, err := web.resolveAndGet("api.example.com", dns.TypeA, allowedPort); err != nil {
			t.Fatalf("%v\n%s", err, k.gate.logs())
		}
		// The audit log is written a moment after the decision.
		deadline := time.Now().Add(reachWait)
		for !strings.Contains(k.gate.stdout.String(), `"pod":"shop/web-1"`) {
			if time.Now().After(deadline) {
				t.Errorf("no audit line names pod shop/web-1\n%s", k.gate.logs())
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		mustDrop(t, web, ap(apiAddr, otherPort))
		mustDrop(t, web, data)
	})

	t.Run("explain --from-pod asks the agent", func(t *testing.T) {
		k.gate.mu.Lock()
		admin := "http://" + k.gate.admin
		k.gate.mu.Unlock()
		explain := func(pod string) (string, int) {
			out, err := exec.Command("ip", "netns", "exec", k.node.Name, binary, "explain",
				"--from-pod", pod, "--admin", admin, "--to", fmt.Sprintf("api.example.com:%d", allowedPort)).CombinedOutput()
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				return string(out), exit.ExitCode()
			} else if err != nil {
				t.Fatalf("fqdngate explain: %v", err)
			}
			return string(out), 0
		}
		for _, c := range []struct {
			pod  string
			code int
			want []string
		}{
			{"shop/web-1", 0, []string{"ALLOW: " + k.slotAddr(0) + " -> api.example.com", "pod:     shop/web-1", "source groups: web"}},
			{"shop/other-1", 1, []string{"DENY: " + k.slotAddr(1) + " -> api.example.com", "pod:     shop/other-1"}},
			{"shop/no-such-pod", 2, []string{"unknown pod shop/no-such-pod"}},
		} {
			out, code := explain(c.pod)
			if code != c.code {
				t.Errorf("explain --from-pod %s: exit %d, want %d:\n%s", c.pod, code, c.code, out)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("explain --from-pod %s: output lacks %q:\n%s", c.pod, w, out)
				}
			}
		}
	})

	t.Run("unselected pod gets nothing", func(t *testing.T) {
		refused(t, other, "api.example.com")
		mustDrop(t, other, api)
		mustDrop(t, other, data)
	})

	t.Run("label change moves a pod between groups", func(t *testing.T) {
		k.api.SetPodLabels(t, podNS, "other-1", map[string]string{"app": "web"})
		took := k.waitSet(t, "pod4.web", k.slotAddr(1), true)
		t.Logf("label change (into web): the kernel's pod set followed in %v (loaded machine)", took)
		mustReach(t, other, "api.example.com", api)

		k.api.SetPodLabels(t, podNS, "other-1", map[string]string{"app": "batch"})
		took = k.waitSet(t, "pod4.web", k.slotAddr(1), false)
		took2 := k.waitSet(t, "pod4.batch", k.slotAddr(1), true)
		t.Logf("label change (web to batch): out of web in %v, in batch in %v (loaded machine)", took, took2)
		mustDrop(t, other, api)
		if _, err := other.resolveAndGet("data.example.com", dns.TypeA, allowedPort); err != nil {
			t.Errorf("other-1 now in batch: %v", err)
		}
		refused(t, other, "api.example.com")
	})

	t.Run("deleted pod loses access; a new pod on its address gets only its own groups", func(t *testing.T) {
		mustReach(t, web, "api.example.com", api)
		k.api.DeletePod(t, podNS, "web-1")
		took := k.waitSet(t, "pod4.web", k.slotAddr(0), false)
		t.Logf("pod deleted: out of the kernel's set in %v (loaded machine)", took)
		mustDrop(t, web, api)
		refused(t, web, "api.example.com")

		k.createPod(t, "batch-1", nodeName, 0, map[string]string{"app": "batch"})
		took = k.waitSet(t, "pod4.batch", k.slotAddr(0), true)
		t.Logf("pod created: in the kernel's set in %v (loaded machine)", took)
		if k.setHas(t, "pod4.web", k.slotAddr(0)) {
			t.Errorf("%s is in pod4.web again, want only batch's set", k.slotAddr(0))
		}
		mustDrop(t, reuse, api)
		refused(t, reuse, "api.example.com")
		if _, err := reuse.resolveAndGet("data.example.com", dns.TypeA, allowedPort); err != nil {
			t.Errorf("batch-1 on the reused address: %v", err)
		}
	})

	t.Run("pod of another node gets nothing", func(t *testing.T) {
		k.createPod(t, "web-elsewhere", "node-2", 2, map[string]string{"app": "web"})
		// A pod of this node created after it: once the agent has it,
		// it has seen (and left out) the other node's pod, had it been
		// sent.
		k.createPod(t, "marker", nodeName, 4, map[string]string{"app": "batch"})
		k.waitSet(t, "pod4.batch", k.slotAddr(4), true)
		if k.setHas(t, "pod4.web", k.slotAddr(2)) {
			t.Errorf("node-2's pod %s is in pod4.web", k.slotAddr(2))
		}
		refused(t, foreign, "api.example.com")
		mustDrop(t, foreign, api)
	})

	t.Run("traffic inside cluster_cidrs is untouched", func(t *testing.T) {
		// Pod to an address inside cluster_cidrs: not egress, no rule
		// needed, any port; just outside the ranges, the policy holds.
		mustReach(t, steady, "api.example.com", ap("198.51.100.5", otherPort))
		mustDrop(t, steady, ap("198.51.100.200", allowedPort))
	})

	t.Run("agent restart drops nothing", func(t *testing.T) {
		mustReach(t, steady, "api.example.com", api)
		for _, how := range []string{"SIGTERM", "SIGKILL"} {
			stream := k.watchFlow(t, steady, api)
			time.Sleep(300 * time.Millisecond)
			if how == "SIGTERM" {
				k.gate.stop()
			} else {
				k.gate.kill9()
			}
			time.Sleep(500 * time.Millisecond) // the window with no agent
			k.gate.start()
			k.waitReady(t, time.Minute, "synced after the restart", func(body string) bool { return strings.HasPrefix(body, "ready") })
			time.Sleep(500 * time.Millisecond)
			failed, ok := stream()
			t.Logf("%s and start: %d requests on the established connection and new connections succeeded", how, ok)
			if len(failed) > 0 {
				t.Errorf("%s and start: %d of %d failed, want none:\n%s\n%s", how, len(failed), len(failed)+ok, strings.Join(failed, "\n"), k.gate.logs())
			}
			if ok < 10 {
				t.Errorf("%s and start: only %d attempts succeeded; the check means little", how, ok)
			}
			if !k.setHas(t, "pod4.web", k.slotAddr(3)) {
				t.Errorf("after %s and start: web-2 is not in pod4.web", how)
			}
			mustDrop(t, other, api)
		}
	})

	t.Run("API server stopped: state kept, readyz degraded, restored", func(t *testing.T) {
		k.api.Stop()
		// client-go's reflector retries a refused watch by itself, so
		// this is the case where an outage is easiest to miss.
		deadline := time.Now().Add(time.Minute)
		for {
			body, err := k.gate.get("/readyz")
			if err == nil && strings.HasPrefix(body, "ready; degraded: kubernetes API unreachable since ") && strings.Contains(body, "keeping the last known state") {
				t.Logf("/readyz with the API down: %q", body)
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("/readyz with the API down (connections refused) for a minute: %q %v, want ready; degraded: kubernetes API unreachable since ..., keeping the last known state", body, err)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if v := k.gate.metric("fqdngate_kubernetes_api_failing"); v != 1 {
			t.Errorf("fqdngate_kubernetes_api_failing = %v with the API down, want 1", v)
		}
		mustReach(t, steady, "api.example.com", api)
		if _, err := steady.resolveAndGet("api.example.com", dns.TypeA, allowedPort); err != nil {
			t.Errorf("web-2 with the API down: %v", err)
		}
		mustDrop(t, other, api)

		k.api.Restart(t)
		back := time.Now()
		// Nothing changed in the cluster: /readyz clears when the
		// informers list and watch again, and the agent retries its
		// dials at most 2 s apart (plus jitter), not after client-go's
		// backoff of up to a minute. 20 s leaves room for a loaded
		// machine.
		k.waitReady(t, 20*time.Second, "ready again", func(b string) bool { return strings.HasPrefix(b, "ready") && !strings.Contains(b, "degraded") })
		t.Logf("/readyz ready again %v after the API server was (loaded machine)", time.Since(back).Round(time.Millisecond))
		if v := k.gate.metric("fqdngate_kubernetes_api_failing"); v != 0 {
			t.Errorf("fqdngate_kubernetes_api_failing = %v after the restart, want 0", v)
		}
		// The watch works again: a label change reaches the kernel.
		k.api.SetPodLabels(t, podNS, "marker", map[string]string{"app": "web"})
		took := k.waitSetWithin(t, "pod4.web", k.slotAddr(4), true, 20*time.Second)
		t.Logf("after the API came back, a label change reached the kernel in %v (loaded machine)", took)
		mustReach(t, k.pods[4], "api.example.com", api)
	})
	if t.Failed() {
		t.Log(k.gate.logs())
	}
}

// synWait bounds a probe's TCP connect: below Linux's initial SYN
// retransmission timeout (1 s), so a connection whose first SYN the
// kernel dropped fails instead of getting through on the retransmission.
const synWait = 900 * time.Millisecond

// watchFlow keeps, until the returned function is called, an established
// HTTPS connection from c to dst busy and opens new TCP connections to dst
// beside it (to the address already learned: DNS needs the agent, the
// kernel does not), each of which must complete without a retransmitted
// SYN. The function returns the failures and the count of successes.
func (k *kubeNode) watchFlow(t *testing.T, c *client, dst netip.AddrPort) func() (failed []string, ok int) {
	t.Helper()
	est, err := c.open("api.example.com", dst, reachWait)
	if err != nil {
		t.Fatalf("opening a connection from %s: %v", c.src4, err)
	}
	var (
		stop   atomic.Bool
		wg     sync.WaitGroup
		mu     sync.Mutex
		fails  []string
		nOK    int
		start  = time.Now()
		record = func(what string, err error) {
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				fails = append(fails, fmt.Sprintf("t=%.2fs %s: %v", time.Since(start).Seconds(), what, err))
			} else {
				nOK++
			}
		}
	)
	wg.Add(2)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			body, err := est.get(reachWait)
			if err == nil && body != "served "+dst.String() {
				err = fmt.Errorf("body %q", body)
			}
			record("established connection", err)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	go func() {
		defer wg.Done()
		for !stop.Load() {
			conn, err := c.ns.Dial("tcp", c.src4, dst.String(), synWait)
			if err == nil {
				conn.Close()
			}
			record("new connection", err)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return func() ([]string, int) {
		stop.Store(true)
		wg.Wait()
		est.Close()
		return fails, nOK
	}
}
