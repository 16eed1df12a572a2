package kube

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"

	"github.com/fqdngate/fqdngate/internal/policy"
)

const testPolicy = `dns: {upstreams: [192.0.2.53]}
kubernetes: {node: node-a, cluster_cidrs: [10.244.0.0/16], dns: {address: 10.244.0.10}}
sources:
  checkout: {kubernetes: {namespaces: [payments], pod_selector: {matchLabels: {app: checkout}}}}
  web: {kubernetes: {namespaces: [payments], pod_selector: {matchLabels: {app: web}}}}
  team-pay: {kubernetes: {namespace_selector: {matchLabels: {team: pay}}}}
rules:
  - name: r
    from: [checkout, web, team-pay]
    to: [example.com]
`

func mustPolicy(t *testing.T, y string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse("p.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func ns(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func mkPod(namespace, name, node, app string, ips ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{"app": app}},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	return p
}

// harness runs a Watcher and keeps the snapshots it publishes.
type harness struct {
	t      *testing.T
	w      *Watcher
	client kubernetes.Interface
	mu     sync.Mutex
	snaps  []*policy.Members
	change chan struct{}
}

func start(t *testing.T, p *policy.Policy, node string, client kubernetes.Interface) *harness {
	t.Helper()
	h := &harness{t: t, client: client, change: make(chan struct{}, 1)}
	w, err := New(Config{Client: client, Node: node, Policy: p, OnMembers: func(m *policy.Members) {
		h.mu.Lock()
		h.snaps = append(h.snaps, m)
		h.mu.Unlock()
		select {
		case h.change <- struct{}{}:
		default:
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	h.w = w
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return h
}

func (h *harness) last() *policy.Members {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.snaps) == 0 {
		return nil
	}
	return h.snaps[len(h.snaps)-1]
}

// waitFor waits until the latest snapshot satisfies cond.
func (h *harness) waitFor(what string, cond func(*policy.Members) bool) *policy.Members {
	h.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		if m := h.last(); m != nil && cond(m) {
			return m
		}
		select {
		case <-h.change:
		case <-deadline:
			h.t.Fatalf("no snapshot with %s within 10s; last: %s", what, describe(h.last()))
			return nil
		}
	}
}

// groupsOf is the groups of address a in m ("-" when a is no member).
func groupsOf(m *policy.Members, a string) []string {
	mb, ok := m.Lookup(netip.MustParseAddr(a))
	if !ok {
		return []string{"-"}
	}
	return mb.Groups
}

func describe(m *policy.Members) string {
	if m == nil {
		return "none"
	}
	s := ""
	if !m.Synced() {
		s = "(not synced) "
	}
	m.Each(func(a netip.Addr, mb policy.Member) {
		s += a.String() + "=" + mb.Pod.String() + "[" + strings.Join(mb.Groups, ",") + "] "
	})
	return s
}

func has(a string, groups ...string) func(*policy.Members) bool {
	return func(m *policy.Members) bool {
		if len(groups) == 0 {
			_, ok := m.Lookup(netip.MustParseAddr(a))
			return m.Synced() && !ok
		}
		return m.Synced() && slices.Equal(groupsOf(m, a), groups)
	}
}

func TestNotSyncedHasNoMembers(t *testing.T) {
	p := mustPolicy(t, testPolicy)
	client := fake.NewClientset(ns("payments", nil), mkPod("payments", "c1", "node-a", "checkout", "10.244.1.5"))
	// The namespaces cannot be listed: the informers never sync.
	client.PrependReactor("list", "namespaces", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	h := start(t, p, "node-a", client)
	deadline := time.Now().Add(10 * time.Second)
	for h.w.Status().APIError == "" {
		if time.Now().After(deadline) {
			t.Fatal("no API error reported within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	st := h.w.Status()
	if st.Synced || h.w.Synced() {
		t.Error("synced without namespaces")
	}
	m := h.last()
	if m == nil || m.Synced() || m.Len() != 0 {
		t.Errorf("snapshot %s, want one not synced without members", describe(m))
	}
	// Applied to the policy, the pod's address is in no group.
	if err := p.SetMembers(m); err != nil {
		t.Fatal(err)
	}
	if d := p.Decide(policy.Query{Source: netip.MustParseAddr("10.244.1.5"), Name: "example.com", Port: 443}); d.Action != policy.Deny {
		t.Errorf("before sync: %v, want deny", d.Action)
	}
}

func TestMembership(t *testing.T) {
	p := mustPolicy(t, testPolicy)
	client := fake.NewClientset(
		ns("payments", nil), ns("ledger", map[string]string{"team": "pay"}),
		mkPod("payments", "c1", "node-a", "checkout", "10.244.1.5", "fd00::5"),
		mkPod("payments", "w1", "node-a", "web", "10.244.1.6"),
		mkPod("payments", "elsewhere", "node-b", "checkout", "10.244.2.5"),
		mkPod("ledger", "l1", "node-a", "books", "10.244.1.7"),
	)
	hostNet := mkPod("payments", "host", "node-a", "checkout", "192.0.2.10")
	hostNet.Spec.HostNetwork = true
	if _, err := client.CoreV1().Pods("payments").Create(context.Background(), hostNet, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h := start(t, p, "node-a", client)
	m := h.waitFor("the first synced view", has("10.244.1.5", "checkout"))
	for a, want := range map[string][]string{
		"fd00::5":    {"checkout"},
		"10.244.1.6": {"web"},
		"10.244.1.7": {"team-pay"},
		"10.244.2.5": {"-"}, // another node's pod
		"192.0.2.10": {"-"}, // on the host's network: the node's address
	} {
		if got := groupsOf(m, a); !slices.Equal(got, want) {
			t.Errorf("%s in %v, want %v", a, got, want)
		}
	}
	if mb, _ := m.Lookup(netip.MustParseAddr("10.244.1.5")); mb.Pod.String() != "payments/c1" {
		t.Errorf("10.244.1.5 is %s, want payments/c1", mb.Pod)
	}
	if !h.w.Synced() || h.w.Status().APIError != "" {
		t.Errorf("status %+v, want synced without error", h.w.Status())
	}
	pods := client.CoreV1().Pods("payments")
	ctx := context.Background()

	t.Run("label change moves a pod between groups", func(t *testing.T) {
		c1 := mkPod("payments", "c1", "node-a", "web", "10.244.1.5", "fd00::5")
		if _, err := pods.Update(ctx, c1, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		h.waitFor("c1 in web", has("10.244.1.5", "web"))
	})
	t.Run("namespace label change", func(t *testing.T) {
		if _, err := client.CoreV1().Namespaces().Update(ctx, ns("ledger", map[string]string{"team": "books"}), metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		h.waitFor("l1 in no group", func(m *policy.Members) bool {
			return m.Synced() && slices.Equal(groupsOf(m, "10.244.1.7"), nil)
		})
		if _, err := client.CoreV1().Namespaces().Update(ctx, ns("payments", map[string]string{"team": "pay"}), metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		h.waitFor("w1 in team-pay and web", has("10.244.1.6", "team-pay", "web"))
	})
	t.Run("deleted pod's address leaves", func(t *testing.T) {
		if err := pods.Delete(ctx, "w1", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		h.waitFor("10.244.1.6 gone", has("10.244.1.6"))
	})
	t.Run("address reused by a new pod gets only its groups", func(t *testing.T) {
		if err := pods.Delete(ctx, "c1", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := pods.Create(ctx, mkPod("payments", "c2", "node-a", "checkout", "10.244.1.5"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		m := h.waitFor("10.244.1.5 as c2", func(m *policy.Members) bool {
			mb, ok := m.Lookup(netip.MustParseAddr("10.244.1.5"))
			return ok && mb.Pod.Name == "c2"
		})
		if got := groupsOf(m, "10.244.1.5"); !slices.Equal(got, []string{"checkout", "team-pay"}) {
			t.Errorf("c2 in %v, want [checkout team-pay]", got)
		}
		if got := groupsOf(m, "fd00::5"); !slices.Equal(got, []string{"-"}) {
			t.Errorf("c1's other address in %v, want no group", got)
		}
	})
	t.Run("finished pod gives its address back", func(t *testing.T) {
		c2 := mkPod("payments", "c2", "node-a", "checkout", "10.244.1.5")
		c2.Status.Phase = corev1.PodSucceeded
		if _, err := pods.UpdateStatus(ctx, c2, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		h.waitFor("10.244.1.5 gone", has("10.244.1.5"))
	})
	t.Run("reload: prepare, then set the policy", func(t *testing.T) {
		if _, err := pods.Create(ctx, mkPod("payments", "w3", "node-a", "web", "10.244.1.9"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		h.waitFor("w3 in team-pay and web", has("10.244.1.9", "team-pay", "web"))
		// The new policy has only the web group.
		np := mustPolicy(t, `dns: {upstreams: [192.0.2.53]}
kubernetes: {node: node-a, cluster_cidrs: [10.244.0.0/16], dns: {address: 10.244.0.10}}
sources:
  web: {kubernetes: {namespaces: [payments], pod_selector: {matchLabels: {app: web}}}}
rules: [{name: r, from: [web], to: [example.com]}]
`)
		pm := h.w.Prepare(np)
		if !pm.For(np) || !slices.Equal(groupsOf(pm, "10.244.1.9"), []string{"web"}) {
			t.Fatalf("prepared snapshot %s", describe(pm))
		}
		if err := np.SetMembers(pm); err != nil {
			t.Fatal(err)
		}
		h.w.SetPolicy(np)
		h.waitFor("a snapshot of the new policy", func(m *policy.Members) bool { return m.For(np) })
	})
}

// TestStrip: the pod cache holds slimPods, the watcher sees in a stripped
// pod what the full one says, and a deletion whose final state is unknown
// (a stripped pod from the cache) still removes the pod's address.
func TestStrip(t *testing.T) {
	full := apiPod(7, 3)
	a := netip.MustParseAddr(full.Status.PodIP)
	want := policy.Pod{Namespace: "shop", Name: "p00007", Labels: map[string]string{"app": "g1"}, Addrs: []netip.Addr{a}}
	for _, tc := range []struct {
		name   string
		mod    func(*corev1.Pod)
		follow bool
	}{
		{"running", func(*corev1.Pod) {}, true},
		{"podIP without podIPs", func(p *corev1.Pod) { p.Status.PodIPs = nil }, true},
		{"host network", func(p *corev1.Pod) { p.Spec.HostNetwork = true }, false},
		{"succeeded", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }, false},
		{"failed", func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }, false},
		{"other node", func(p *corev1.Pod) { p.Spec.NodeName = "node-b" }, false},
		{"no address", func(p *corev1.Pod) { p.Status.PodIPs, p.Status.PodIP = nil, "" }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := full.DeepCopy()
			tc.mod(p)
			s, err := strip(p)
			if err != nil {
				t.Fatal(err)
			}
			sp := s.(*slimPod)
			got, follow := podOf(sp, "node-a")
			if follow != tc.follow || (follow && !equalPod(got, want)) {
				t.Errorf("podOf = %+v, %v; want %+v, %v", got, follow, want, tc.follow)
			}
			if sp.ResourceVersion != full.ResourceVersion || sp.UID != full.UID || sp.ManagedFields != nil {
				t.Errorf("stripped pod %+v", sp)
			}
			if again, _ := strip(sp); again != s {
				t.Errorf("stripping twice changed the pod: %+v, then %+v", sp, again)
			}
			if c := sp.DeepCopyObject(); !reflect.DeepEqual(c, sp) {
				t.Errorf("DeepCopyObject = %+v, want %+v", c, sp)
			}
		})
	}
	d := cache.DeletedFinalStateUnknown{Key: "shop/p00007", Obj: apiPod(7, 3)}
	if got, _ := strip(d); got != any(d) {
		t.Errorf("strip(DeletedFinalStateUnknown) = %#v, want it unchanged", got)
	}

	p := mustPolicy(t, testPolicy)
	client := fake.NewClientset(ns("payments", nil))
	pod := apiPod(1, 1)
	pod.Namespace, pod.Labels = "payments", map[string]string{"app": "checkout"}
	if _, err := client.CoreV1().Pods("payments").Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h := start(t, p, "node-a", client)
	addr := pod.Status.PodIP
	h.waitFor("the pod in checkout", has(addr, "checkout"))
	objs := h.w.podIn.GetStore().List()
	if len(objs) != 1 {
		t.Fatalf("the pod cache holds %d objects, want 1", len(objs))
	}
	cached, ok := objs[0].(*slimPod)
	if !ok || cached.NodeName != "node-a" {
		t.Fatalf("the cache holds %#v, want a slimPod on node-a", objs[0])
	}
	h.w.podDeleted(cache.DeletedFinalStateUnknown{Key: "payments/" + pod.Name, Obj: cached})
	h.waitFor("the address gone after a deletion of unknown final state", has(addr))
}

func equalPod(a, b policy.Pod) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && maps.Equal(a.Labels, b.Labels) && slices.Equal(a.Addrs, b.Addrs)
}
