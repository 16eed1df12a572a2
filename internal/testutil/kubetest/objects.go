package kubetest

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/retry"
)

// ctx returns a context for one API call, ended with the test.
func ctx(t testing.TB) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), opTimeout)
}

// CreateNamespace creates namespace name with labels.
func (s *Server) CreateNamespace(t testing.TB, name string, labels map[string]string) *corev1.Namespace {
	t.Helper()
	c, cancel := ctx(t)
	defer cancel()
	ns, err := s.client.CoreV1().Namespaces().Create(c, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: creating namespace %s: %v", name, err)
	}
	return ns
}

// SetNamespaceLabels replaces the labels of namespace name.
func (s *Server) SetNamespaceLabels(t testing.TB, name string, labels map[string]string) *corev1.Namespace {
	t.Helper()
	c, cancel := ctx(t)
	defer cancel()
	var ns *corev1.Namespace
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := s.client.CoreV1().Namespaces().Get(c, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Labels = labels
		ns, err = s.client.CoreV1().Namespaces().Update(c, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("kubetest: labelling namespace %s: %v", name, err)
	}
	return ns
}

// Pod is what CreatePod makes: a pod as the scheduler and a kubelet would
// have left it.
type Pod struct {
	Namespace, Name string
	Labels          map[string]string
	// Node is spec.nodeName, what a node agent's field selector matches.
	Node string
	// HostNetwork is spec.hostNetwork: the pod uses its node's addresses.
	HostNetwork bool
	// IPs are status.podIPs (the first is also status.podIP): one address,
	// or one of each family. None leaves the pod without addresses, as a
	// kubelet does until the pod's sandbox runs.
	IPs []netip.Addr
	// Phase is status.phase. If empty, Running when IPs are set, else
	// Pending.
	Phase corev1.PodPhase
}

// CreatePod creates p: the Pod object, then its status through the status
// subresource, as a kubelet writes it. It returns the pod as stored, status
// included.
func (s *Server) CreatePod(t testing.TB, p Pod) *corev1.Pod {
	t.Helper()
	c, cancel := ctx(t)
	defer cancel()
	pods := s.client.CoreV1().Pods(p.Namespace)
	pod, err := pods.Create(c, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, Labels: p.Labels},
		Spec: corev1.PodSpec{
			NodeName:    p.Node,
			HostNetwork: p.HostNetwork,
			// Never pulled: there are no kubelets. .example is reserved.
			Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: creating pod %s/%s: %v", p.Namespace, p.Name, err)
	}
	pod.Status.Phase = p.Phase
	if pod.Status.Phase == "" {
		pod.Status.Phase = corev1.PodPending
		if len(p.IPs) > 0 {
			pod.Status.Phase = corev1.PodRunning
		}
	}
	for _, ip := range p.IPs {
		pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: ip.String()})
	}
	if len(p.IPs) > 0 {
		pod.Status.PodIP = p.IPs[0].String()
	}
	pod, err = pods.UpdateStatus(c, pod, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("kubetest: writing the status of pod %s/%s (podIPs %v): %v", p.Namespace, p.Name, p.IPs, err)
	}
	return pod
}

// SetPodLabels replaces the labels of pod namespace/name.
func (s *Server) SetPodLabels(t testing.TB, namespace, name string, labels map[string]string) *corev1.Pod {
	t.Helper()
	c, cancel := ctx(t)
	defer cancel()
	pods := s.client.CoreV1().Pods(namespace)
	var pod *corev1.Pod
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := pods.Get(c, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Labels = labels
		pod, err = pods.Update(c, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("kubetest: labelling pod %s/%s: %v", namespace, name, err)
	}
	return pod
}

// DeletePod deletes pod namespace/name at once (grace period 0): watchers see
// its deletionTimestamp set (MODIFIED), then the pod gone (DELETED). A
// graceful deletion of a pod on a node would only set the deletionTimestamp:
// the kubelet that ends it does not exist here.
func (s *Server) DeletePod(t testing.TB, namespace, name string) {
	t.Helper()
	c, cancel := ctx(t)
	defer cancel()
	now := int64(0)
	if err := s.client.CoreV1().Pods(namespace).Delete(c, name, metav1.DeleteOptions{GracePeriodSeconds: &now}); err != nil {
		t.Fatalf("kubetest: deleting pod %s/%s: %v", namespace, name, err)
	}
}

// ServiceAccountConfig returns a client configuration that authenticates as
// ServiceAccount namespace/name, as an in-cluster agent does, allowed what
// rules allow and nothing else. It creates the namespace if it is missing,
// the account, a ClusterRole with rules and its ClusterRoleBinding to the
// account, and a token from the TokenRequest API (valid for an hour). It
// returns once the server authorizes the account for every verb and resource
// of rules, so the test sees the role in force from its first request.
func (s *Server) ServiceAccountConfig(t testing.TB, namespace, name string, rules ...rbacv1.PolicyRule) *rest.Config {
	t.Helper()
	c, cancel := ctx(t)
	defer cancel()
	core, rbac := s.client.CoreV1(), s.client.RbacV1()
	_, err := core.Namespaces().Create(c, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("kubetest: creating namespace %s: %v", namespace, err)
	}
	if _, err := core.ServiceAccounts(namespace).Create(c, &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("kubetest: creating ServiceAccount %s/%s: %v", namespace, name, err)
	}
	role := "kubetest:" + namespace + ":" + name
	if _, err := rbac.ClusterRoles().Create(c, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: role},
		Rules:      rules,
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("kubetest: creating ClusterRole %s: %v", role, err)
	}
	if _, err := rbac.ClusterRoleBindings().Create(c, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: namespace, Name: name}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("kubetest: creating ClusterRoleBinding %s: %v", role, err)
	}
	hour := int64(3600)
	tr, err := core.ServiceAccounts(namespace).CreateToken(c, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &hour},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: requesting a token for ServiceAccount %s/%s: %v", namespace, name, err)
	}
	cfg := s.configWithToken(tr.Status.Token)
	s.waitAuthorized(t, cfg, rules)
	return cfg
}

// waitAuthorized waits until cfg's identity is allowed every verb on every
// resource of rules: RBAC reaches the authorizer through its informers a
// moment after the binding is stored.
func (s *Server) waitAuthorized(t testing.TB, cfg *rest.Config, rules []rbacv1.PolicyRule) {
	t.Helper()
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	for _, r := range rules {
		for _, group := range orAll(r.APIGroups) {
			for _, resource := range orAll(r.Resources) {
				for _, verb := range r.Verbs {
					attrs := &authorizationv1.ResourceAttributes{Group: group, Resource: resource, Verb: verb}
					s.waitAllowed(t, client, attrs)
				}
			}
		}
	}
}

func orAll(s []string) []string {
	if len(s) == 0 {
		return []string{""}
	}
	return s
}

func (s *Server) waitAllowed(t testing.TB, client kubernetes.Interface, attrs *authorizationv1.ResourceAttributes) {
	t.Helper()
	deadline := time.Now().Add(opTimeout)
	var last string
	for time.Now().Before(deadline) {
		c, cancel := ctx(t)
		review, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(c, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: attrs},
		}, metav1.CreateOptions{})
		cancel()
		switch {
		case err != nil:
			last = err.Error()
		case review.Status.Allowed:
			return
		default:
			last = fmt.Sprintf("not allowed: %q", review.Status.Reason)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("kubetest: %s %s.%s still refused after %v: %s", attrs.Verb, attrs.Resource, attrs.Group, opTimeout, last)
}

// WriteKubeconfig writes cfg (its server, CA and token) as a kubeconfig file
// into a temporary directory and returns its path, for a program that takes
// one (the policy's kubernetes.kubeconfig). The file holds a token: it is
// written mode 0600 and removed with the test.
func WriteKubeconfig(t testing.TB, cfg *rest.Config) string {
	t.Helper()
	kc := clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"kubetest": {Server: cfg.Host, CertificateAuthorityData: cfg.CAData}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"kubetest": {Token: cfg.BearerToken}},
		Contexts:       map[string]*clientcmdapi.Context{"kubetest": {Cluster: "kubetest", AuthInfo: "kubetest"}},
		CurrentContext: "kubetest",
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(kc, path); err != nil {
		t.Fatalf("kubetest: writing a kubeconfig: %v", err)
	}
	return path
}
