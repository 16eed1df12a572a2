// Package kube follows a cluster's pods and namespaces with client-go
// shared informers and turns them into the policy's pod snapshots
// (policy.Members): which address is which pod, in which source groups.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// Config is what a Watcher needs.
type Config struct {
	// Client reaches the API server. Required.
	Client kubernetes.Interface
	// Node, if not empty, limits the pods followed to those scheduled on
	// it (a node agent); empty follows every node's pods (a gateway).
	Node string
	// Policy is the policy whose groups the first snapshots place pods
	// in. Required; SetPolicy changes it.
	Policy *policy.Policy
	// OnMembers is called with every new snapshot, from Run's goroutine,
	// one at a time. Until the informers have synced, snapshots are not
	// synced and hold no members. Required.
	OnMembers func(*policy.Members)
	// Resync is the informers' resync period; 0 disables resyncs (the
	// informers relist after any watch failure anyway).
	Resync time.Duration
	// Logger, if nil, discards.
	Logger *slog.Logger
}

// NewClient connects to the API server with the kubeconfig file, or with
// the in-cluster service account if kubeconfig is empty.
func NewClient(kubeconfig string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("kubernetes: using the in-cluster service account: %w; run fqdngate in a pod with a service account, or set kubernetes.kubeconfig", err)
		}
	} else if cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig); err != nil {
		return nil, fmt.Errorf("kubernetes: reading kubernetes.kubeconfig: %w", err)
	}
	cfg.UserAgent = "fqdngate"
	return kubernetes.NewForConfig(cfg)
}

// Status is the condition of the watcher's view of the cluster.
type Status struct {
	// Synced: the informers have listed every pod and namespace once.
	// Until then, snapshots hold no members.
	Synced bool
	// APIError is the last failure to list or watch, from the first
	// failure until every informer has listed or watched successfully
	// again (the last known state stays in force meanwhile); "" if none.
	// Since is when the failures began. Unreachable: the last failure
	// was that the API server could not be reached at all.
	APIError    string
	Since       time.Time
	Unreachable bool
}

// Watcher follows the pods and namespaces and publishes snapshots.
type Watcher struct {
	cfg   Config
	log   *slog.Logger
	podIn cache.SharedIndexInformer
	nsIn  cache.SharedIndexInformer
	kick  chan struct{}

	mu sync.Mutex // guards following
	// pol is the policy the published snapshots are of; pods, each
	// followed pod and its placement in pol's groups; byNS, the pods of
	// each namespace (to place again when its labels change); nsLabels,
	// each namespace's labels.
	pol      *policy.Policy
	pods     map[podKey]*podState
	byNS     map[string]map[podKey]bool
	nsLabels map[string]map[string]string
	synced   bool

	health health
}

type podKey struct{ ns, name string }

type podState struct {
	pod    policy.Pod
	placed policy.Placed
}

// New makes a Watcher; Run starts it.
func New(cfg Config) (*Watcher, error) {
	if cfg.Client == nil || cfg.Policy == nil || cfg.OnMembers == nil {
		return nil, errors.New("kube: Config needs Client, Policy and OnMembers")
	}
	w := &Watcher{
		cfg:      cfg,
		log:      cfg.Logger,
		kick:     make(chan struct{}, 1),
		pol:      cfg.Policy,
		pods:     map[podKey]*podState{},
		byNS:     map[string]map[podKey]bool{},
		nsLabels: map[string]map[string]string{},
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	tweak := func(o metav1.ListOptions) metav1.ListOptions {
		if cfg.Node != "" {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", cfg.Node).String()
		}
		return o
	}
	pods, nss := cfg.Client.CoreV1().Pods(metav1.NamespaceAll), cfg.Client.CoreV1().Namespaces()
	// The informers as client-go's NewFilteredPodInformer and
	// NewNamespaceInformer make them, with listWatch's retries.
	podLW := w.listWatch(0,
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return pods.List(ctx, tweak(o))
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return pods.Watch(ctx, tweak(o))
		})
	nsLW := w.listWatch(1,
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return nss.List(ctx, o) },
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) { return nss.Watch(ctx, o) })
	opts := cache.SharedIndexInformerOptions{ResyncPeriod: cfg.Resync, Indexers: cache.Indexers{}}
	w.podIn = cache.NewSharedIndexInformerWithOptions(cache.ToListWatcherWithWatchListSemantics(podLW, cfg.Client), &corev1.Pod{}, opts)
	w.nsIn = cache.NewSharedIndexInformerWithOptions(cache.ToListWatcherWithWatchListSemantics(nsLW, cfg.Client), &corev1.Namespace{}, opts)
	for i, inf := range w.informers() {
		// The caches keep only what the watcher reads (see strip).
		if err := inf.SetTransform(strip); err != nil {
			return nil, err
		}
		// Errors of a watch the server ended (an expired resource
		// version, a broken stream): the reflector lists or watches
		// again, and listWatch notes whether that worked.
		if err := inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) { w.noteFailure(i, err) }); err != nil {
			return nil, err
		}
	}
	if _, err := w.podIn.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    w.podChanged,
		UpdateFunc: func(_, obj any) { w.podChanged(obj) },
		DeleteFunc: w.podDeleted,
	}); err != nil {
		return nil, err
	}
	if _, err := w.nsIn.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    w.nsChanged,
		UpdateFunc: func(_, obj any) { w.nsChanged(obj) },
		DeleteFunc: w.nsDeleted,
	}); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *Watcher) informers() [2]cache.SharedIndexInformer {
	return [2]cache.SharedIndexInformer{w.podIn, w.nsIn}
}

// Run starts the informers, publishes a snapshot that is not synced, then
// one after the informers have synced and one after every change, until
// ctx ends. It returns nil when ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, inf := range w.informers() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			inf.RunWithContext(ctx)
		}()
	}
	defer wg.Wait()
	w.publish()
	synced := make(chan struct{})
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), w.podIn.HasSynced, w.nsIn.HasSynced) {
			close(synced)
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-synced:
			synced = nil
			w.mu.Lock()
			w.synced = true
			w.mu.Unlock()
			w.log.Info("kubernetes informers synced", "node", w.cfg.Node)
		case <-w.kick:
		}
		w.publish()
	}
}

// publish makes the snapshot of the current view and hands it on.
func (w *Watcher) publish() {
	w.mu.Lock()
	m := w.snapshotLocked(w.pol)
	w.mu.Unlock()
	w.cfg.OnMembers(m)
}

func (w *Watcher) snapshotLocked(p *policy.Policy) *policy.Members {
	placed := make([]policy.Placed, 0, len(w.pods))
	for _, st := range w.pods {
		if p == w.pol {
			placed = append(placed, st.placed)
		} else {
			placed = append(placed, p.Place(&st.pod))
		}
	}
	return p.MembersOf(placed, w.synced)
}

// Prepare computes p's snapshot from what the informers hold now, for a
// reload: the new policy gets its members before it is committed.
func (w *Watcher) Prepare(p *policy.Policy) *policy.Members {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.snapshotLocked(p)
}

// SetPolicy makes p the policy of the snapshots published from now on,
// after a reload committed it. The next snapshot follows at once.
func (w *Watcher) SetPolicy(p *policy.Policy) {
	w.mu.Lock()
	w.pol = p
	for _, st := range w.pods {
		st.placed = p.Place(&st.pod)
	}
	w.mu.Unlock()
	w.signal()
}

// Synced reports whether the informers have synced: until then, the
// groups that select pods have no members.
func (w *Watcher) Synced() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.synced
}

// Status reports the watcher's condition, for readiness and metrics.
func (w *Watcher) Status() Status {
	st := Status{Synced: w.Synced()}
	w.health.status(&st)
	return st
}

func (w *Watcher) signal() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// slimPod is what the pod cache holds of a pod: what podOf and the
// informers read (name, namespace, uid, resourceVersion, labels, deletion
// timestamp, node, host network, phase, addresses). The rest of a pod as
// the API server returns it (managedFields, containers, volumes,
// conditions) is most of its size, and even an emptied corev1.Pod is
// 1.2 KB; the cache would hold it for every pod followed.
type slimPod struct {
	metav1.ObjectMeta
	NodeName    string
	HostNetwork bool
	Phase       corev1.PodPhase
	IPs         []string // status.podIPs, or status.podIP without them
}

func (p *slimPod) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

func (p *slimPod) DeepCopyObject() runtime.Object {
	c := *p
	p.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	c.IPs = slices.Clone(p.IPs)
	return &c
}

// strip is the informers' transform (SetTransform, as Cilium does): a
// pod becomes a slimPod, a namespace keeps only its name, uid,
// resourceVersion, labels and deletion timestamp. Anything else
// (cache.DeletedFinalStateUnknown holds an object already stripped) is
// kept as it is, so stripping twice gives the same object.
func strip(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return slim(o), nil
	case *corev1.Namespace:
		return &corev1.Namespace{ObjectMeta: stripMeta(&o.ObjectMeta)}, nil
	}
	return obj, nil
}

func slim(p *corev1.Pod) *slimPod {
	s := &slimPod{ObjectMeta: stripMeta(&p.ObjectMeta), NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork, Phase: p.Status.Phase}
	for _, ip := range p.Status.PodIPs {
		s.IPs = append(s.IPs, ip.IP)
	}
	if len(s.IPs) == 0 && p.Status.PodIP != "" {
		s.IPs = []string{p.Status.PodIP}
	}
	return s
}

func stripMeta(m *metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
		Labels: m.Labels, DeletionTimestamp: m.DeletionTimestamp}
}

// asPod is the slimPod of an informer's object (stripped already, or a
// full pod), or nil if obj is no pod.
func asPod(obj any) *slimPod {
	switch p := obj.(type) {
	case *slimPod:
		return p
	case *corev1.Pod:
		return slim(p)
	}
	return nil
}

// podOf is what the policy needs of a pod, and whether its address is
// its own at all: pods on the host's network share the node's address,
// and pods that finished have given theirs back, so neither is followed.
func podOf(p *slimPod, node string) (policy.Pod, bool) {
	if p.HostNetwork || p.Phase == corev1.PodSucceeded || p.Phase == corev1.PodFailed {
		return policy.Pod{}, false
	}
	if node != "" && p.NodeName != node {
		return policy.Pod{}, false
	}
	out := policy.Pod{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels}
	for _, ip := range p.IPs {
		if a, err := netip.ParseAddr(ip); err == nil {
			out.Addrs = append(out.Addrs, a)
		}
	}
	return out, len(out.Addrs) > 0
}

func (w *Watcher) podChanged(obj any) {
	p := asPod(obj)
	if p == nil {
		return
	}
	k := podKey{p.Namespace, p.Name}
	pod, follow := podOf(p, w.cfg.Node)
	w.mu.Lock()
	if !follow {
		w.forgetLocked(k)
	} else {
		pod.NamespaceLabels = w.nsLabels[k.ns]
		w.pods[k] = &podState{pod: pod, placed: w.pol.Place(&pod)}
		if w.byNS[k.ns] == nil {
			w.byNS[k.ns] = map[podKey]bool{}
		}
		w.byNS[k.ns][k] = true
	}
	w.mu.Unlock()
	w.signal()
}

func (w *Watcher) podDeleted(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	p := asPod(obj)
	if p == nil {
		return
	}
	w.mu.Lock()
	w.forgetLocked(podKey{p.Namespace, p.Name})
	w.mu.Unlock()
	w.signal()
}

func (w *Watcher) forgetLocked(k podKey) {
	delete(w.pods, k)
	if ks := w.byNS[k.ns]; ks != nil {
		delete(ks, k)
		if len(ks) == 0 {
			delete(w.byNS, k.ns)
		}
	}
}

func (w *Watcher) nsChanged(obj any) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return
	}
	w.setNSLabels(ns.Name, ns.Labels)
}

func (w *Watcher) nsDeleted(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if ns, ok := obj.(*corev1.Namespace); ok {
		w.setNSLabels(ns.Name, nil)
	}
}

// setNSLabels records a namespace's labels and places its pods again.
func (w *Watcher) setNSLabels(ns string, labels map[string]string) {
	w.mu.Lock()
	if labels == nil {
		delete(w.nsLabels, ns)
	} else {
		w.nsLabels[ns] = labels
	}
	for k := range w.byNS[ns] {
		st := w.pods[k]
		st.pod.NamespaceLabels = labels
		st.placed = w.pol.Place(&st.pod)
	}
	w.mu.Unlock()
	w.signal()
}
