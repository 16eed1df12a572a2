package kubetest

import (
	"context"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// shippedManifest is the node agent's manifest, the chart rendered
// (deploy's tests keep the two equal).
const shippedManifest = "../../../deploy/kubernetes/fqdngate.yaml"

// agentRules are the RBAC rules of the ClusterRole the node agent ships
// with, so that these tests check what users install.
func agentRules(t *testing.T) []rbacv1.PolicyRule {
	return ShippedAgentRules(t, shippedManifest)
}

// TestServer starts one server (each start costs tens of seconds) and checks,
// through client-go, what fqdngate's Kubernetes tests rely on.
func TestServer(t *testing.T) {
	s := Start(t)
	t.Run("PodsListAndWatch", func(t *testing.T) { testPodsListAndWatch(t, s) })
	t.Run("AgentRBAC", func(t *testing.T) { testAgentRBAC(t, s) })
	t.Run("AgentInformers", func(t *testing.T) { testAgentInformers(t, s) })
	t.Run("Kubeconfig", func(t *testing.T) { testKubeconfig(t, s) })
	t.Run("Restart", func(t *testing.T) { testRestart(t, s) })
}

// testPodsListAndWatch: a pod made by CreatePod has its labels, node and
// addresses; a node's field selector lists only that node's pods; a watch
// from the list's revision sees a relabel and a deletion.
func testPodsListAndWatch(t *testing.T, s *Server) {
	cs := s.Client()
	s.CreateNamespace(t, "payments", map[string]string{"team": "pay"})
	s.CreateNamespace(t, "web", map[string]string{"team": "web"})
	ips := []netip.Addr{netip.MustParseAddr("203.0.113.10"), netip.MustParseAddr("2001:db8::10")}
	s.CreatePod(t, Pod{Namespace: "payments", Name: "checkout-1", Labels: map[string]string{"app": "checkout"}, Node: "node-a", IPs: ips})
	s.CreatePod(t, Pod{Namespace: "web", Name: "front-1", Labels: map[string]string{"app": "front"}, Node: "node-b", IPs: []netip.Addr{netip.MustParseAddr("203.0.113.20")}})
	s.CreatePod(t, Pod{Namespace: "payments", Name: "pending-1", Node: "node-a"})

	ctx := context.Background()
	onNodeA := metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", "node-a").String()}
	list, err := cs.CoreV1().Pods("").List(ctx, onNodeA)
	if err != nil {
		t.Fatalf("listing node-a's pods: %v", err)
	}
	var names []string
	for _, p := range list.Items {
		names = append(names, p.Namespace+"/"+p.Name)
	}
	slices.Sort(names)
	if want := []string{"payments/checkout-1", "payments/pending-1"}; !slices.Equal(names, want) {
		t.Fatalf("node-a's pods: got %v, want %v", names, want)
	}
	for _, p := range list.Items {
		switch p.Name {
		case "checkout-1":
			got := []string{p.Status.PodIP}
			for _, ip := range p.Status.PodIPs {
				got = append(got, ip.IP)
			}
			if want := []string{"203.0.113.10", "203.0.113.10", "2001:db8::10"}; !slices.Equal(got, want) {
				t.Errorf("checkout-1: podIP and podIPs: got %v, want %v", got, want)
			}
			if p.Status.Phase != corev1.PodRunning || p.Labels["app"] != "checkout" || p.Spec.NodeName != "node-a" {
				t.Errorf("checkout-1: got phase %s, labels %v, node %q; want Running, app=checkout, node-a", p.Status.Phase, p.Labels, p.Spec.NodeName)
			}
		case "pending-1":
			if p.Status.Phase != corev1.PodPending || len(p.Status.PodIPs) != 0 {
				t.Errorf("pending-1: got phase %s, podIPs %v; want Pending without addresses", p.Status.Phase, p.Status.PodIPs)
			}
		}
	}
	all, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("listing namespaces: %v", err)
	}
	for _, name := range append(systemNamespaces, "payments", "web") {
		if !slices.ContainsFunc(all.Items, func(ns corev1.Namespace) bool { return ns.Name == name }) {
			t.Errorf("namespace %s missing", name)
		}
	}
	nsList, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{LabelSelector: "team=pay"})
	if err != nil {
		t.Fatalf("listing namespaces: %v", err)
	}
	if len(nsList.Items) != 1 || nsList.Items[0].Name != "payments" {
		t.Errorf("namespaces with team=pay: got %d (%v), want payments", len(nsList.Items), nsList.Items)
	}

	onNodeA.ResourceVersion = list.ResourceVersion
	w, err := cs.CoreV1().Pods("").Watch(ctx, onNodeA)
	if err != nil {
		t.Fatalf("watching node-a's pods: %v", err)
	}
	defer w.Stop()
	s.SetPodLabels(t, "web", "front-1", map[string]string{"app": "front", "v": "2"}) // node-b: not seen
	s.SetPodLabels(t, "payments", "checkout-1", map[string]string{"app": "checkout", "tier": "web"})
	ev := nextEvent(t, w)
	if p, ok := ev.Object.(*corev1.Pod); ev.Type != watch.Modified || !ok || p.Name != "checkout-1" ||
		!reflect.DeepEqual(p.Labels, map[string]string{"app": "checkout", "tier": "web"}) {
		t.Fatalf("after relabelling checkout-1: got event %s %T %+v, want MODIFIED checkout-1 with app=checkout,tier=web", ev.Type, ev.Object, ev.Object)
	}
	s.DeletePod(t, "payments", "checkout-1")
	// A watcher sees the deletion timestamp set, then the pod gone.
	ev = nextEvent(t, w)
	if p, ok := ev.Object.(*corev1.Pod); ev.Type != watch.Modified || !ok || p.Name != "checkout-1" || p.DeletionTimestamp == nil {
		t.Fatalf("after deleting checkout-1: got event %s %+v, want MODIFIED checkout-1 with a deletionTimestamp", ev.Type, ev.Object)
	}
	ev = nextEvent(t, w)
	if p, ok := ev.Object.(*corev1.Pod); ev.Type != watch.Deleted || !ok || p.Name != "checkout-1" {
		t.Fatalf("after deleting checkout-1: got event %s %+v, want DELETED checkout-1", ev.Type, ev.Object)
	}
}

func nextEvent(t *testing.T, w watch.Interface) watch.Event {
	t.Helper()
	select {
	case ev, ok := <-w.ResultChan():
		if !ok {
			t.Fatal("the watch ended")
		}
		return ev
	case <-time.After(opTimeout):
		t.Fatalf("no watch event after %v", opTimeout)
	}
	return watch.Event{}
}

// testAgentRBAC: a ServiceAccount with the agent's rules can list and watch
// pods and namespaces, and is refused secrets, writes, and its own
// permissions' growth; a wrong token is refused outright.
func testAgentRBAC(t *testing.T, s *Server) {
	ctx := context.Background()
	admin := s.Client()
	s.CreateNamespace(t, "vault", nil)
	if _, err := admin.CoreV1().Secrets("vault").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "db"}, StringData: map[string]string{"password": "not-a-secret"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating a secret as admin: %v", err)
	}
	s.CreatePod(t, Pod{Namespace: "vault", Name: "db-1", Labels: map[string]string{"app": "db"}, Node: "node-a",
		IPs: []netip.Addr{netip.MustParseAddr("203.0.113.30")}})

	agent := kubernetes.NewForConfigOrDie(s.ServiceAccountConfig(t, "fqdngate", "fqdngate", agentRules(t)...))
	pods, err := agent.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("agent: listing pods: %v", err)
	}
	if len(pods.Items) == 0 {
		t.Fatal("agent: listing pods: got none, want db-1 at least")
	}
	if _, err := agent.CoreV1().Pods("vault").Get(ctx, "db-1", metav1.GetOptions{}); err != nil {
		t.Errorf("agent: getting a pod: %v", err)
	}
	if _, err := agent.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("agent: listing namespaces: %v", err)
	}
	nsWatch, err := agent.CoreV1().Namespaces().Watch(ctx, metav1.ListOptions{ResourceVersion: pods.ResourceVersion})
	if err != nil {
		t.Fatalf("agent: watching namespaces: %v", err)
	}
	defer nsWatch.Stop()
	podWatch, err := agent.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{ResourceVersion: pods.ResourceVersion})
	if err != nil {
		t.Fatalf("agent: watching pods: %v", err)
	}
	defer podWatch.Stop()
	s.SetNamespaceLabels(t, "vault", map[string]string{"team": "db"})
	if ev := nextEvent(t, nsWatch); ev.Type != watch.Modified {
		t.Errorf("agent: namespace watch after a relabel: got %s %+v, want MODIFIED", ev.Type, ev.Object)
	}
	s.SetPodLabels(t, "vault", "db-1", map[string]string{"app": "db", "tier": "data"})
	if ev := nextEvent(t, podWatch); ev.Type != watch.Modified {
		t.Errorf("agent: pod watch after a relabel: got %s %+v, want MODIFIED", ev.Type, ev.Object)
	}

	// The admin can read the secret, so a refusal below is RBAC's.
	if _, err := admin.CoreV1().Secrets("vault").Get(ctx, "db", metav1.GetOptions{}); err != nil {
		t.Fatalf("admin: getting the secret: %v", err)
	}
	refused := map[string]func() error{
		"get a secret": func() error {
			_, err := agent.CoreV1().Secrets("vault").Get(ctx, "db", metav1.GetOptions{})
			return err
		},
		"list secrets": func() error {
			_, err := agent.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
			return err
		},
		"list configmaps": func() error {
			_, err := agent.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{})
			return err
		},
		"relabel a pod": func() error {
			_, err := agent.CoreV1().Pods("vault").Patch(ctx, "db-1", "application/merge-patch+json",
				[]byte(`{"metadata":{"labels":{"app":"evil"}}}`), metav1.PatchOptions{})
			return err
		},
		"delete a pod": func() error {
			return agent.CoreV1().Pods("vault").Delete(ctx, "db-1", metav1.DeleteOptions{})
		},
		"create a namespace": func() error {
			_, err := agent.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "agent-made"}}, metav1.CreateOptions{})
			return err
		},
		"bind itself cluster-admin": func() error {
			_, err := agent.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: "agent-admin"},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "cluster-admin"},
				Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: "fqdngate", Name: "fqdngate"}},
			}, metav1.CreateOptions{})
			return err
		},
	}
	for what, do := range refused {
		if err := do(); !apierrors.IsForbidden(err) {
			t.Errorf("agent: %s: got %v, want Forbidden", what, err)
		}
	}

	cfg := s.Config()
	cfg.BearerToken = "not-a-token"
	stranger := kubernetes.NewForConfigOrDie(cfg)
	if _, err := stranger.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); !apierrors.IsUnauthorized(err) {
		t.Errorf("unknown token: listing pods: got %v, want Unauthorized", err)
	}
}

// testAgentInformers: shared informers, as the node agent runs them with its
// limited account (client-go's streaming list included, which it uses by
// default), sync the pods of one node and the namespaces, and follow a new
// pod and a relabel.
func testAgentInformers(t *testing.T, s *Server) {
	s.CreateNamespace(t, "shop", map[string]string{"team": "shop"})
	s.CreatePod(t, Pod{Namespace: "shop", Name: "cart-1", Labels: map[string]string{"app": "cart"}, Node: "node-c",
		IPs: []netip.Addr{netip.MustParseAddr("203.0.113.40")}})
	s.CreatePod(t, Pod{Namespace: "shop", Name: "elsewhere", Node: "node-d", IPs: []netip.Addr{netip.MustParseAddr("203.0.113.41")}})

	agent := kubernetes.NewForConfigOrDie(s.ServiceAccountConfig(t, "informers", "agent", agentRules(t)...))
	factory := informers.NewSharedInformerFactoryWithOptions(agent, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", "node-c").String()
	}))
	nsFactory := informers.NewSharedInformerFactory(agent, 0)
	pods := factory.Core().V1().Pods()
	namespaces := nsFactory.Core().V1().Namespaces()
	podInformer, nsInformer := pods.Informer(), namespaces.Informer()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	factory.Start(ctx.Done())
	nsFactory.Start(ctx.Done())
	defer factory.Shutdown()
	defer nsFactory.Shutdown()
	defer cancel() // Shutdown waits for the informers, which stop with ctx
	if !cache.WaitForCacheSync(ctx.Done(), podInformer.HasSynced, nsInformer.HasSynced) {
		t.Fatal("the agent's informers did not sync")
	}
	if _, err := namespaces.Lister().Get("shop"); err != nil {
		t.Errorf("namespace lister: %v", err)
	}
	if got, _ := pods.Lister().List(labels.Everything()); len(got) != 1 || got[0].Name != "cart-1" {
		t.Fatalf("node-c's pods after sync: got %d (%v), want cart-1 alone", len(got), got)
	}

	s.CreatePod(t, Pod{Namespace: "shop", Name: "cart-2", Labels: map[string]string{"app": "cart"}, Node: "node-c",
		IPs: []netip.Addr{netip.MustParseAddr("203.0.113.42")}})
	s.SetPodLabels(t, "shop", "cart-1", map[string]string{"app": "cart", "tier": "web"})
	web, _ := labels.Parse("tier=web")
	for {
		all, _ := pods.Lister().List(labels.Everything())
		tiered, _ := pods.Lister().List(web)
		if len(all) == 2 && len(tiered) == 1 && tiered[0].Name == "cart-1" {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("node-c's pods: got %d, %d with tier=web; want cart-1 and cart-2, cart-1 with tier=web", len(all), len(tiered))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// testKubeconfig: a kubeconfig file from WriteKubeconfig reaches the server
// as the identity of its config.
func testKubeconfig(t *testing.T, s *Server) {
	path := WriteKubeconfig(t, s.Config())
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatalf("loading the kubeconfig: %v", err)
	}
	if _, err := kubernetes.NewForConfigOrDie(cfg).CoreV1().Namespaces().Get(context.Background(), "default", metav1.GetOptions{}); err != nil {
		t.Fatalf("getting namespace default through the kubeconfig: %v", err)
	}
}

// testRestart: a stopped server refuses connections; restarted, it has the
// objects of before and accepts the tokens issued before.
func testRestart(t *testing.T, s *Server) {
	ctx := context.Background()
	agentCfg := s.ServiceAccountConfig(t, "restart", "agent", agentRules(t)...)
	s.CreateNamespace(t, "kept", nil)
	s.Stop()
	_, err := s.Client().CoreV1().Namespaces().Get(ctx, "kept", metav1.GetOptions{})
	if err == nil || apierrors.ReasonForError(err) != metav1.StatusReasonUnknown {
		t.Fatalf("with kube-apiserver stopped: got %v, want a connection error", err)
	}
	s.Restart(t)
	if _, err := s.Client().CoreV1().Namespaces().Get(ctx, "kept", metav1.GetOptions{}); err != nil {
		t.Errorf("after the restart: getting namespace kept: %v", err)
	}
	if _, err := kubernetes.NewForConfigOrDie(rest.CopyConfig(agentCfg)).CoreV1().Pods("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("after the restart: the agent's token issued before: listing pods: %v", err)
	}
}

// TestInNetns: a server started in a namespace of its own is reached by a
// program in another namespace, as a node agent reaches the cluster's API,
// through a kubeconfig and a link the test made; the test's own helpers
// reach it from inside its namespace.
func TestInNetns(t *testing.T) {
	netns.RequireRoot(t)
	api, node := netns.New(t), netns.New(t)
	netns.Veth(t, api, "api0", node, "node0")
	api.Addr("api0", "192.0.2.1/24")
	node.Addr("node0", "192.0.2.2/24")
	s := Start(t, InNetns(api, netip.MustParseAddr("192.0.2.1")))
	if want := "https://192.0.2.1:"; !strings.HasPrefix(s.URL, want) {
		t.Fatalf("URL: got %s, want %s...", s.URL, want)
	}
	s.CreateNamespace(t, "payments", nil)
	s.CreatePod(t, Pod{Namespace: "payments", Name: "checkout-1", Node: "node-a", IPs: []netip.Addr{netip.MustParseAddr("203.0.113.10")}})

	// The agent's side: only a kubeconfig file, dialling from node's namespace.
	cfg, err := clientcmd.BuildConfigFromFlags("", WriteKubeconfig(t, s.ServiceAccountConfig(t, "fqdngate", "fqdngate", agentRules(t)...)))
	if err != nil {
		t.Fatalf("loading the kubeconfig: %v", err)
	}
	cfg.Dial = func(_ context.Context, network, addr string) (net.Conn, error) {
		return node.DialWith(&net.Dialer{Timeout: 10 * time.Second}, network, addr)
	}
	pods, err := kubernetes.NewForConfigOrDie(cfg).CoreV1().Pods("payments").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatalf("from the node's namespace: listing pods: %v", err)
	}
	if len(pods.Items) != 1 || pods.Items[0].Status.PodIP != "203.0.113.10" {
		t.Fatalf("from the node's namespace: got %v, want checkout-1 at 203.0.113.10", pods.Items)
	}
	// Nothing listens on the test's own loopback.
	if c, err := net.DialTimeout("tcp", "127.0.0.1:"+s.URL[strings.LastIndex(s.URL, ":")+1:], time.Second); err == nil {
		c.Close()
		t.Errorf("the API server's port answers on the test's own loopback; want it inside its namespace only")
	}
}
