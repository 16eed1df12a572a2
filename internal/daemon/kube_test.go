package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/fqdngate/fqdngate/internal/admin"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// podAddr is the address the test's pod has: the namespace's outside
// address, from which the test sends its queries.
const podAddr = "192.0.2.1"

var kubeAddrs = addrs{dns: "127.0.0.1:5311", admin: "127.0.0.1:9111"}

// kubePolicy allows old.example to the pods labelled app=<app> in
// namespace payments.
func kubePolicy(w *world, table, app string) string {
	// DNS listens on every IPv4 address: the kubernetes section makes the
	// kernel redirect pods' queries to the cluster DNS address to it.
	return fmt.Sprintf(`listen: {dns: %q, proxy: "", admin: %q}
dns: {upstreams: [%q], cache: false}
firewall: {backend: nftables, hook: forward, table: %s, state_file: %q}
log: {file: %q}
kubernetes: {node: node-a, cluster_cidrs: [192.0.2.0/24], dns: {address: 192.0.2.10}}
sources:
  checkout: {kubernetes: {namespaces: [payments], pod_selector: {matchLabels: {app: %s}}}}
rules:
  - name: old
    from: [checkout]
    to: [old.example]
`, strings.Replace(kubeAddrs.dns, "127.0.0.1", "0.0.0.0", 1), kubeAddrs.admin, w.up1.Addr, table, filepath.Join(w.dir, "state.json"), filepath.Join(w.dir, "audit.log"), app)
}

// startKube runs a daemon whose kubernetes watcher reads client.
func (w *world) startKube(policy string, client *fake.Clientset) *Daemon {
	w.t.Helper()
	if err := os.WriteFile(w.path, []byte(policy), 0o644); err != nil {
		w.t.Fatal(err)
	}
	d := newDaemon(Options{PolicyPath: w.path, Logger: slog.New(slog.NewTextHandler(&w.log, nil)), KubeClient: client})
	ctx, cancel := context.WithCancel(context.Background())
	if err := w.ns.Do(func() error { return d.start(ctx) }); err != nil {
		cancel()
		w.t.Fatalf("starting the daemon: %v\n%s", err, w.log.String())
	}
	w.t.Cleanup(func() {
		d.stopAll()
		cancel()
		d.close()
	})
	return d
}

// fromPod asks fqdngate for name's A record from the pod's address and
// returns the answer's addresses, or the rcode when there are none.
func (w *world) fromPod(name string) string {
	conn, err := w.ns.Dial("udp", podAddr, kubeAddrs.dns, wait)
	if err != nil {
		return err.Error()
	}
	defer conn.Close()
	cl := &dns.Client{Net: "udp", Timeout: wait}
	r, _, err := cl.ExchangeWithConn(new(dns.Msg).SetQuestion(dns.Fqdn(name), dns.TypeA), &dns.Conn{Conn: conn})
	if err != nil {
		return err.Error()
	}
	var got []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			got = append(got, a.A.String())
		}
	}
	if len(got) == 0 {
		return dns.RcodeToString[r.Rcode]
	}
	return strings.Join(got, ",")
}

// eventually waits up to 10s for f to return want.
func (w *world) eventually(what, want string, f func() string) {
	w.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	got := f()
	for got != want {
		if time.Now().After(deadline) {
			w.t.Fatalf("%s: got %q, want %q within 10s\n%s", what, got, want, w.log.String())
		}
		time.Sleep(20 * time.Millisecond)
		got = f()
	}
}

func checkoutPod(name, app string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "payments", Name: name, Labels: map[string]string{"app": app}},
		Spec:       corev1.PodSpec{NodeName: "node-a"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: podAddr, PodIPs: []corev1.PodIP{{IP: podAddr}}},
	}
}

// TestKubernetesMembers runs the daemon with a kubernetes section: a pod
// gets what its group allows once it exists, in the DNS firewall and in
// the kernel's pod set; a label change and a reload move it out of the
// group, and back.
func TestKubernetesMembers(t *testing.T) {
	netns.RequireRoot(t)
	w := newWorld(t)
	tableSeq++
	table := fmt.Sprintf("kube_%d_%d", os.Getpid(), tableSeq)
	client := fake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "payments"}})
	d := w.startKube(kubePolicy(w, table, "checkout"), client)
	ready := func() string { s, _ := w.get(kubeAddrs.admin, "/readyz"); return s }
	podSet := func() string {
		out, _ := w.ns.Exec("nft", "list", "set", "inet", table, "pod4.checkout")
		if i := strings.Index(out, "elements = { "); i >= 0 {
			return strings.TrimSpace(out[i+len("elements = { ") : i+strings.Index(out[i:], "}")])
		}
		return "empty"
	}
	w.eventually("readiness", "ready\n", ready)
	if got := w.fromPod("old.example"); got != "NXDOMAIN" {
		t.Errorf("before the pod exists: %s, want NXDOMAIN", got)
	}

	pods := client.CoreV1().Pods("payments")
	ctx := context.Background()
	if _, err := pods.Create(ctx, checkoutPod("c1", "checkout"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	w.eventually("the pod's query", "192.0.2.10", func() string { return w.fromPod("old.example") })
	if got := podSet(); got != podAddr {
		t.Errorf("pod4.checkout holds %s, want %s", got, podAddr)
	}
	if ref, ok := d.Policy().PodOf(netip.MustParseAddr(podAddr)); !ok || ref.String() != "payments/c1" {
		t.Errorf("PodOf(%s) = %v, %v", podAddr, ref, ok)
	}
	body, err := w.get(kubeAddrs.admin, "/v1/policy")
	var sum admin.Summary
	if err == nil {
		err = json.Unmarshal([]byte(body), &sum)
	}
	want := admin.PodsSummary{Selector: "namespaces payments, pod labels {app=checkout}", Synced: true, Addresses: 1}
	if got := sum.SourcePods["checkout"]; err != nil || got != want {
		t.Errorf("/v1/policy source_pods: %+v (%v), want checkout: %+v", sum.SourcePods, err, want)
	}
	// So does explain, served by the daemon.
	var ex struct {
		Pod    string   `json:"pod"`
		Action string   `json:"action"`
		Groups []string `json:"source_groups"`
	}
	body, err = w.get(kubeAddrs.admin, "/v1/explain?from="+podAddr+"&to=old.example:443")
	if err == nil {
		err = json.Unmarshal([]byte(body), &ex)
	}
	if err != nil || ex.Pod != "payments/c1" || ex.Action != "allow" || len(ex.Groups) != 1 {
		t.Errorf("/v1/explain: %+v (%v), want an allow for pod payments/c1 in checkout\n%s", ex, err, body)
	}
	// The audit line names the pod.
	lines := auditLines(t, d, filepath.Join(w.dir, "audit.log"))
	if l := lines[len(lines)-1]; l["pod"] != "payments/c1" || l["action"] != "allow" {
		t.Errorf("last audit line %v, want an allow naming pod payments/c1", l)
	}

	// The label changes: the pod leaves the group, in the kernel first.
	if _, err := pods.Update(ctx, checkoutPod("c1", "web"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	w.eventually("the relabelled pod's query", "NXDOMAIN", func() string { return w.fromPod("old.example") })
	if got := podSet(); got != "empty" {
		t.Errorf("pod4.checkout holds %s, want nothing", got)
	}

	// A reload that selects app=web takes the pod back in: its snapshot
	// is prepared from the informers and applied with the ruleset.
	if err := os.WriteFile(w.path, []byte(kubePolicy(w, table, "web")), 0o644); err != nil {
		t.Fatal(err)
	}
	// Prepare gives the new policy its members from the informers, before
	// anything is committed.
	np, err := policy.Parse(w.path, []byte(kubePolicy(w, table, "web")))
	if err != nil {
		t.Fatal(err)
	}
	d.reloadMu.Lock()
	ch, err := d.prepare(np)
	if err != nil {
		d.reloadMu.Unlock()
		t.Fatal(err)
	}
	m := np.Members()
	ch.abort()
	d.reloadMu.Unlock()
	if mb, ok := m.Lookup(netip.MustParseAddr(podAddr)); !m.Synced() || !ok || len(mb.Groups) != 1 {
		t.Errorf("prepared snapshot: synced %v, %s in %v (%v); want synced, in checkout", m.Synced(), podAddr, mb.Groups, ok)
	}
	w.reload(d)
	if got := w.fromPod("old.example"); got != "192.0.2.10" {
		t.Errorf("after the reload: %s, want 192.0.2.10\n%s", got, w.log.String())
	}
	if got := podSet(); got != podAddr {
		t.Errorf("after the reload pod4.checkout holds %s, want %s", got, podAddr)
	}
	if v := w.metric(kubeAddrs.admin, "fqdngate_kubernetes_synced"); v != 1 {
		t.Errorf("fqdngate_kubernetes_synced = %v, want 1", v)
	}
}

// TestKubernetesNotSynced: an API that cannot be listed keeps the daemon
// unready, and the pods' groups empty.
func TestKubernetesNotSynced(t *testing.T) {
	netns.RequireRoot(t)
	w := newWorld(t)
	tableSeq++
	table := fmt.Sprintf("kube_%d_%d", os.Getpid(), tableSeq)
	client := fake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "payments"}}, checkoutPod("c1", "checkout"))
	client.PrependReactor("list", "namespaces", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	w.startKube(kubePolicy(w, table, "checkout"), client)
	w.eventually("readiness", "not ready: kubernetes not synced: the groups that select pods have no members yet\n", func() string {
		s, _ := w.get(kubeAddrs.admin, "/readyz")
		return s
	})
	if got := w.fromPod("old.example"); got != "NXDOMAIN" {
		t.Errorf("before sync: %s, want NXDOMAIN", got)
	}
}
