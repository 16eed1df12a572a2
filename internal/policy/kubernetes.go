package policy

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/fqdngate/fqdngate/internal/dnsname"
)

// Kubernetes is the kubernetes section: how this agent follows a cluster's
// pods, which source groups select by label (PodSelector), and what of
// the cluster's traffic is not egress. It is node-local: in a fleet it is
// in each gateway's local file. nil when the policy has none.
type Kubernetes struct {
	// Kubeconfig is the file to reach the API server with; empty: the
	// in-cluster service account.
	Kubeconfig string
	// Node is the node whose pods this agent follows (mode node); empty
	// in gateway mode without a node: every node's pods.
	Node string
	Mode KubeMode
	// ClusterCIDRs are the pod and service ranges: traffic between them
	// is not egress and is not filtered. Pod addresses lie within them.
	ClusterCIDRs []netip.Prefix
	DNS          KubeDNS
	// At is where the kubernetes key is, for problems found later (the
	// API server cannot be reached with these settings).
	At Pos
}

// KubeMode is where the agent runs.
type KubeMode uint8

const (
	KubeNode    KubeMode = iota // a DaemonSet agent filtering its node's pods (hook forward)
	KubeGateway                 // a central gateway that sees pod addresses
)

func (m KubeMode) String() string { return [...]string{"node", "gateway"}[m] }

// KubeDNS is the cluster's own DNS.
type KubeDNS struct {
	// Addresses are the cluster DNS addresses pods send their queries to
	// (the kubelet's clusterDNS), inside ClusterCIDRs: intercepted, and
	// the servers Domain is forwarded to.
	Addresses []netip.Addr
	// Domain is the cluster domain: names under it, and the search-path
	// forms pods send, are forwarded to Addresses and never learned.
	Domain dnsname.Name
	// NodeLocal is NodeLocal DNSCache's address, also intercepted; the
	// zero Addr if there is none.
	NodeLocal netip.Addr
}

// PodSelector is a source group's kubernetes key: the pods it selects. A
// pod is selected when every part that is set matches: its namespace is
// one of Namespaces, its namespace's labels match NamespaceSelector, and
// its labels match Selector (Kubernetes label-selector semantics).
type PodSelector struct {
	// Namespaces, when not nil, are the only namespaces selected, sorted.
	Namespaces []string
	// NamespaceSelector, when not nil, must match the namespace's labels.
	NamespaceSelector labels.Selector
	// Selector must match the pod's labels; labels.Everything() when the
	// group has no pod_selector.
	Selector labels.Selector
}

// Matches reports whether the selector selects pod.
func (s *PodSelector) Matches(pod *Pod) bool {
	if s.Namespaces != nil {
		if _, ok := slices.BinarySearch(s.Namespaces, pod.Namespace); !ok {
			return false
		}
	}
	if s.NamespaceSelector != nil && !s.NamespaceSelector.Matches(labels.Set(pod.NamespaceLabels)) {
		return false
	}
	return s.Selector.Matches(labels.Set(pod.Labels))
}

// String writes the selector for explain and the admin API.
func (s *PodSelector) String() string {
	var parts []string
	if s.Namespaces != nil {
		parts = append(parts, "namespaces "+strings.Join(s.Namespaces, ","))
	}
	if s.NamespaceSelector != nil {
		parts = append(parts, "namespace labels {"+s.NamespaceSelector.String()+"}")
	}
	parts = append(parts, "pod labels {"+s.Selector.String()+"}")
	return strings.Join(parts, ", ")
}

// Dynamic reports whether group g selects pods: its members come and go
// with the cluster (see Members), not with the policy.
func (p *Policy) Dynamic(g string) bool {
	_, ok := p.Pods[g]
	return ok
}

// DynamicGroups returns the groups that select pods, sorted.
func (p *Policy) DynamicGroups() []string { return sortedKeys(p.Pods) }

// nodeNameEnv is where node defaults from, as the Downward API sets it in
// the DaemonSet.
const nodeNameEnv = "NODE_NAME"

// getenv is os.Getenv, replaced by tests.
var getenv = os.Getenv

// wireKube is the kubernetes section as written.
type wireKube struct {
	key, node                         *yaml.Node
	kubeconfig, nodeName, mode        string
	modeNode, nodeNameNode, cidrsNode *yaml.Node
	cidrs                             []positioned
	cidrsSet                          bool
	addrs                             []positioned
	addrsSet                          bool
	domain, nodelocal                 string
	addrsNode, domainNode, nlNode     *yaml.Node
}

func (d *decoder) kubernetes(k, n *yaml.Node) *wireKube {
	w := &wireKube{key: k, node: d.deref(n), domain: "cluster.local"}
	d.mapping(n, "kubernetes",
		field{"kubeconfig", d.str(&w.kubeconfig, "kubernetes.kubeconfig")},
		field{"node", func(v *yaml.Node) { w.nodeNameNode = v; d.str(&w.nodeName, "kubernetes.node")(v) }},
		field{"mode", func(v *yaml.Node) { w.modeNode = v; d.str(&w.mode, "kubernetes.mode")(v) }},
		field{"cluster_cidrs", func(v *yaml.Node) {
			w.cidrsNode = d.deref(v)
			d.positionedList(&w.cidrs, &w.cidrsSet, "kubernetes.cluster_cidrs")(v)
		}},
		field{"dns", func(v *yaml.Node) {
			d.mapping(v, "kubernetes.dns",
				field{"address", func(v *yaml.Node) {
					w.addrsNode = d.deref(v)
					d.positionedList(&w.addrs, &w.addrsSet, "kubernetes.dns.address")(v)
				}},
				field{"service", func(v *yaml.Node) {
					// The agent may not read Services (RBAC: pods and
					// namespaces only), so the address is written.
					d.errorf(v, "kubernetes.dns.service is replaced by kubernetes.dns.address: fqdngate may read only pods and namespaces, so it cannot look the Service up; write address: [<the Service's cluster IPs>] (%s)", findClusterDNS)
				}},
				field{"domain", func(v *yaml.Node) { w.domainNode = v; d.str(&w.domain, "kubernetes.dns.domain")(v) }},
				field{"nodelocal", func(v *yaml.Node) { w.nlNode = v; d.str(&w.nodelocal, "kubernetes.dns.nodelocal")(v) }},
			)
		}},
	)
	return w
}

// compileKube sets p.Kubernetes from w, and checks the pod-selecting
// groups against it: they need the section, which says how to follow the
// pods they select.
func (d *decoder) compileKube(p *Policy, w *wireKube, groupNodes map[string]*yaml.Node) {
	if w == nil {
		for _, g := range sortedKeys(p.Pods) {
			d.errorf(groupNodes[g], "source group %q selects pods, and the policy has no kubernetes section saying how to follow them; add kubernetes: {cluster_cidrs: [10.244.0.0/16, 10.96.0.0/12]} (with node: or $%s on a node agent)", g, nodeNameEnv)
		}
		return
	}
	k := &Kubernetes{Kubeconfig: w.kubeconfig, Node: w.nodeName, At: Pos{w.key.Line, w.key.Column}}
	switch w.mode {
	case "", "node":
	case "gateway":
		k.Mode = KubeGateway
	default:
		d.errorf(w.modeNode, "kubernetes.mode must be node (an agent on each node, following that node's pods) or gateway (a central gateway following every node's pods), not %q", w.mode)
	}
	// A node agent's node defaults from the environment; a gateway's
	// empty node means every node, whatever the environment says.
	if k.Node == "" && k.Mode == KubeNode {
		k.Node = getenv(nodeNameEnv)
	}
	if k.Node != "" {
		if errs := validation.IsDNS1123Subdomain(k.Node); len(errs) > 0 {
			at := w.nodeNameNode
			if at == nil {
				at = w.key
			}
			d.errorf(at, "kubernetes.node %q is not a node name (%s); write the name kubectl get nodes shows", k.Node, errs[0])
		}
	}
	if k.Mode == KubeNode && k.Node == "" {
		at := w.nodeNameNode
		if at == nil {
			at = w.key
		}
		d.errorf(at, "kubernetes.node is empty and $%s is not set, so this node agent would not know whose pods to follow; set it from the Downward API (fieldRef: spec.nodeName), write node: <name>, or use mode: gateway to follow every node's pods", nodeNameEnv)
	}
	for _, c := range w.cidrs {
		pfx, err := parsePrefix(c.v)
		if err != nil {
			d.errorf(c.n, "kubernetes.cluster_cidrs: %v", err)
			continue
		}
		k.ClusterCIDRs = append(k.ClusterCIDRs, pfx)
	}
	if len(w.cidrs) == 0 {
		at := w.cidrsNode
		if at == nil {
			at = w.key
		}
		d.errorf(at, "kubernetes.cluster_cidrs is empty; list the cluster's pod and service ranges, like [10.244.0.0/16, 10.96.0.0/12] (kubectl cluster-info dump | grep -m1 cluster-cidr shows the pod range)")
	}
	k.DNS.Addresses = d.kubeDNSAddresses(w, k.ClusterCIDRs)
	if dn, err := dnsname.Parse(w.domain); err != nil || dn.Labels() < 1 {
		d.errorf(w.domainNode, "kubernetes.dns.domain %q is not a domain name; write the cluster domain, like cluster.local", w.domain)
	} else {
		k.DNS.Domain = dn
	}
	if w.nodelocal != "" {
		a, err := netip.ParseAddr(w.nodelocal)
		if err != nil || a.Zone() != "" {
			d.errorf(w.nlNode, "kubernetes.dns.nodelocal %q is not an IP address; write NodeLocal DNSCache's address, like 169.254.20.10", w.nodelocal)
		} else {
			k.DNS.NodeLocal = a.Unmap()
		}
	}
	if p.Firewall.Backend == BackendNftables && p.Firewall.Hook == HookOutput {
		// Pods' packets are routed through the node (or the gateway):
		// the output hook never sees them.
		d.errorf(w.key, "kubernetes: pods' traffic is routed through this host, which firewall.hook: output does not filter, so the kernel would let every pod out; set firewall.hook: forward")
	}
	p.Kubernetes = k
}

// podSelector decodes and compiles a source group's kubernetes key. It
// returns nil if the key has problems (reported).
func (d *decoder) podSelector(n *yaml.Node, path string) *PodSelector {
	s := &PodSelector{Selector: labels.Everything()}
	ok := true
	var nsItems []positioned
	var nsSet, any bool
	var nsNode *yaml.Node
	d.mapping(n, path,
		field{"namespaces", func(v *yaml.Node) {
			nsNode, any = d.deref(v), true
			d.positionedList(&nsItems, &nsSet, path+".namespaces")(v)
		}},
		field{"namespace_selector", func(v *yaml.Node) {
			any = true
			if sel := d.labelSelector(v, path+".namespace_selector"); sel != nil {
				s.NamespaceSelector = sel
			} else {
				ok = false
			}
		}},
		field{"pod_selector", func(v *yaml.Node) {
			any = true
			if sel := d.labelSelector(v, path+".pod_selector"); sel != nil {
				s.Selector = sel
			} else {
				ok = false
			}
		}},
	)
	dn := d.deref(n)
	if dn.Kind != yaml.MappingNode && !isNull(dn) {
		return nil // reported by mapping
	}
	if !any && len(dn.Content) == 0 {
		d.errorf(dn, "%s selects nothing in particular, which would be every pod of every namespace; name namespaces, a namespace_selector or a pod_selector (write namespace_selector: {} if you mean every namespace)", path)
		return nil
	}
	if nsSet {
		if len(nsItems) == 0 {
			d.errorf(nsNode, "%s.namespaces is empty, so the group would select no pod; list namespaces, or remove the key for every namespace", path)
			ok = false
		}
		s.Namespaces = []string{}
		for _, it := range nsItems {
			if errs := validation.IsDNS1123Label(it.v); len(errs) > 0 {
				d.errorf(it.n, "%s.namespaces: %q is not a namespace name (%s)", path, it.v, errs[0])
				ok = false
				continue
			}
			s.Namespaces = append(s.Namespaces, it.v)
		}
		slices.Sort(s.Namespaces)
		s.Namespaces = slices.Compact(s.Namespaces)
	}
	if !ok {
		return nil
	}
	return s
}

// labelSelector decodes a Kubernetes label selector ({matchLabels,
// matchExpressions}), checks each part where it is written, and compiles
// it with apimachinery, so it means exactly what it means in Kubernetes:
// every label and every expression must hold; an empty selector matches
// everything. It returns nil if there were problems (reported).
func (d *decoder) labelSelector(n *yaml.Node, path string) labels.Selector {
	var ls metav1.LabelSelector
	ok := true
	d.mapping(n, path,
		field{"matchLabels", func(v *yaml.Node) {
			v = d.deref(v)
			if v.Kind != yaml.MappingNode {
				if !isNull(v) {
					d.errorf(v, "%s.matchLabels must map label keys to values, like {app: checkout}", path)
					ok = false
				}
				return
			}
			ls.MatchLabels = map[string]string{}
			for i := 0; i+1 < len(v.Content); i += 2 {
				kn, vn := d.deref(v.Content[i]), d.deref(v.Content[i+1])
				val, vok := d.scalar(vn, path+".matchLabels."+kn.Value)
				if isNull(vn) {
					val = ""
				}
				if !vok {
					ok = false
					continue
				}
				if _, dup := ls.MatchLabels[kn.Value]; dup {
					d.errorf(kn, "%s.matchLabels: label %q is set twice; keep one", path, kn.Value)
					ok = false
					continue
				}
				if msg := labelProblem(kn.Value, []string{val}); msg != "" {
					d.errorf(kn, "%s.matchLabels: %s", path, msg)
					ok = false
					continue
				}
				ls.MatchLabels[kn.Value] = val
			}
		}},
		field{"matchExpressions", func(v *yaml.Node) {
			d.list(v, path+".matchExpressions", func(it *yaml.Node) {
				if e, eok := d.labelExpression(it, path+".matchExpressions"); eok {
					ls.MatchExpressions = append(ls.MatchExpressions, e)
				} else {
					ok = false
				}
			})
		}},
	)
	if !ok {
		return nil
	}
	sel, err := metav1.LabelSelectorAsSelector(&ls)
	if err != nil {
		// Each part was checked above; this is a last line.
		d.errorf(d.deref(n), "%s: %v", path, err)
		return nil
	}
	return sel
}

// labelOperators are the operators of a label selector's expressions,
// as Kubernetes spells them.
var labelOperators = []metav1.LabelSelectorOperator{metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn, metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist}

func (d *decoder) labelExpression(n *yaml.Node, path string) (metav1.LabelSelectorRequirement, bool) {
	var r metav1.LabelSelectorRequirement
	var op string
	var vals []positioned
	var valsSet bool
	var opNode, valsNode *yaml.Node
	d.mapping(n, path+" item",
		field{"key", d.str(&r.Key, path+".key")},
		field{"operator", func(v *yaml.Node) { opNode = d.deref(v); d.str(&op, path+".operator")(v) }},
		field{"values", func(v *yaml.Node) { valsNode = d.deref(v); d.positionedList(&vals, &valsSet, path+".values")(v) }},
	)
	n = d.deref(n)
	if n.Kind != yaml.MappingNode {
		if isNull(n) {
			d.errorf(n, "%s has an empty item; remove the lone '-'", path)
		}
		return r, false
	}
	if r.Key == "" {
		d.errorf(n, "%s item has no key; write it like {key: tier, operator: In, values: [web]}", path)
		return r, false
	}
	r.Operator = metav1.LabelSelectorOperator(op)
	if !slices.Contains(labelOperators, r.Operator) {
		at := opNode
		if at == nil {
			at = n
		}
		msg := fmt.Sprintf("%s: operator %q is not one of In, NotIn, Exists, DoesNotExist", path, op)
		for _, o := range labelOperators {
			if strings.EqualFold(string(o), op) {
				msg += fmt.Sprintf("; write %s (operators are case-sensitive, as in Kubernetes)", o)
			}
		}
		if op == "" {
			msg = fmt.Sprintf("%s item for key %q has no operator; add operator: In, NotIn, Exists or DoesNotExist", path, r.Key)
		}
		d.errorf(at, "%s", msg)
		return r, false
	}
	for _, v := range vals {
		r.Values = append(r.Values, v.v)
	}
	switch r.Operator {
	case metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn:
		if len(r.Values) == 0 {
			at := valsNode
			if at == nil {
				at = n
			}
			d.errorf(at, "%s: %s on key %q needs values; list them, like values: [web]", path, r.Operator, r.Key)
			return r, false
		}
	default:
		if valsSet {
			d.errorf(valsNode, "%s: %s on key %q takes no values; remove values", path, r.Operator, r.Key)
			return r, false
		}
	}
	if msg := labelProblem(r.Key, r.Values); msg != "" {
		d.errorf(n, "%s: %s", path, msg)
		return r, false
	}
	return r, true
}

// labelProblem says what is wrong with a label key and its values, as
// Kubernetes validates them, or "".
func labelProblem(key string, values []string) string {
	if errs := validation.IsQualifiedName(key); len(errs) > 0 {
		return fmt.Sprintf("label key %q is not valid: %s", key, errs[0])
	}
	for _, v := range values {
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			return fmt.Sprintf("label value %q (of key %s) is not valid: %s", v, key, errs[0])
		}
	}
	return ""
}

// keyOf returns the key node of key in the mapping n, for positions of a
// section whose value alone is decoded.
func (d *decoder) keyOf(n *yaml.Node, key string) *yaml.Node {
	n = d.deref(n)
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i]
		}
	}
	return n
}

// sourceRanges returns the addresses group g's sources can have: its
// prefixes and, for a group that selects pods, the cluster's ranges, in
// which pod addresses lie.
func (p *Policy) sourceRanges(g string) []netip.Prefix {
	if !p.Dynamic(g) || p.Kubernetes == nil {
		return p.Sources[g]
	}
	return append(slices.Clone(p.Sources[g]), p.Kubernetes.ClusterCIDRs...)
}

// findClusterDNS says how to find the cluster DNS address, for errors.
const findClusterDNS = "kubectl -n kube-system get svc kube-dns -o jsonpath='{.spec.clusterIPs}' shows it (the kubelet's clusterDNS)"

// kubeDNSAddresses checks kubernetes.dns.address: one or more IP
// addresses, inside the cluster's ranges. (The agent may read pods and
// namespaces only, so it cannot look the Service up itself.)
func (d *decoder) kubeDNSAddresses(w *wireKube, cidrs []netip.Prefix) []netip.Addr {
	if !w.addrsSet || len(w.addrs) == 0 {
		at := w.addrsNode
		if at == nil {
			at = w.key
		}
		d.errorf(at, "kubernetes.dns.address is not set; write the cluster DNS address pods query, like dns: {address: [10.96.0.10]}; %s", findClusterDNS)
		return nil
	}
	var out []netip.Addr
	for _, it := range w.addrs {
		a, err := netip.ParseAddr(it.v)
		if err != nil || a.Zone() != "" {
			d.errorf(it.n, "kubernetes.dns.address: %q is not an IP address; write the cluster DNS Service's address, like 10.96.0.10; %s", it.v, findClusterDNS)
			continue
		}
		a = a.Unmap()
		if !slices.ContainsFunc(cidrs, func(p netip.Prefix) bool { return p.Contains(a) }) {
			if len(cidrs) > 0 { // else cluster_cidrs has its own error
				d.errorf(it.n, "kubernetes.dns.address: %s is not inside kubernetes.cluster_cidrs, so it is no cluster Service address; write the cluster DNS Service's address (%s), or add the service range to cluster_cidrs", a, findClusterDNS)
			}
			continue
		}
		if slices.Contains(out, a) {
			d.errorf(it.n, "kubernetes.dns.address: %s is listed twice; keep one", a)
			continue
		}
		out = append(out, a)
	}
	return out
}

// kubeWire compiles the kubernetes section into the general features,
// so that the cluster is handled by the one code path each has: the
// cluster ranges are added to firewall.unfiltered and the cluster DNS
// addresses (and NodeLocal DNSCache's) to firewall.intercept_dns (with
// the nftables backend, which applies them), and the cluster domain
// becomes a dns.forward zone to the cluster DNS. The values keep the
// positions of the kubernetes keys, so problems found by those features'
// checks point there. It runs after compileKube, before the features are
// compiled; in a fleet both halves are compiled together, so the zone
// joins the shared dns.forward.
func (d *decoder) kubeWire(p *Policy, w *wireKube, fw *wireFirewall, forward *[]*wireForward) {
	k := p.Kubernetes
	if k == nil || w == nil {
		return
	}
	if p.Firewall.Backend == BackendNftables {
		// An operator's empty list keeps its own error.
		if !fw.unfilteredSet || len(fw.unfiltered) > 0 {
			for _, c := range w.cidrs {
				if _, err := parsePrefix(c.v); err == nil {
					fw.unfiltered = append(fw.unfiltered, c)
				}
			}
			if !fw.unfilteredSet {
				fw.unfilteredSet, fw.unfilteredNode = len(fw.unfiltered) > 0, w.cidrsNode
			}
		}
		if !fw.interceptSet || len(fw.intercept) > 0 {
			for _, it := range w.addrs {
				if a, err := netip.ParseAddr(it.v); err == nil && slices.Contains(k.DNS.Addresses, a.Unmap()) {
					fw.intercept = append(fw.intercept, it)
				}
			}
			if k.DNS.NodeLocal.IsValid() {
				fw.intercept = append(fw.intercept, positioned{w.nodelocal, w.nlNode})
			}
			if !fw.interceptSet {
				fw.interceptSet, fw.interceptNode = len(fw.intercept) > 0, w.addrsNode
			}
		}
	}
	if k.DNS.Domain == "" || len(k.DNS.Addresses) == 0 {
		return // reported
	}
	at := w.key
	if w.domainNode != nil {
		at = d.deref(w.domainNode)
	}
	for _, f := range *forward {
		if f == nil || !f.zoneSet {
			continue
		}
		if z, err := dnsname.Parse(strings.TrimSuffix(f.zone.v, ".")); err == nil && z == k.DNS.Domain {
			d.errorf(at, "kubernetes.dns.domain %s is forwarded to kubernetes.dns.address, and dns.forward (%s:%d:%d) forwards it too; remove that dns.forward item, or list its servers under kubernetes.dns.address", z, d.fileOf(f.zone.n), f.zone.n.Line, f.zone.n.Column)
			return
		}
	}
	var to []positioned
	for _, it := range w.addrs {
		if a, err := netip.ParseAddr(it.v); err == nil && slices.Contains(k.DNS.Addresses, a.Unmap()) {
			to = append(to, it)
		}
	}
	*forward = append(*forward, &wireForward{node: at, zone: positioned{string(k.DNS.Domain), at}, zoneSet: true, to: to, toSet: true, toNode: w.addrsNode})
	// The reverse names of pod and service addresses (PTR lookups of
	// 10.244.1.5, as tools and service meshes make) are the cluster
	// DNS's to answer, like its domain: each cluster range becomes a
	// dns.forward reverse item.
	for _, c := range w.cidrs {
		pfx, err := parsePrefix(c.v)
		if err != nil {
			continue // reported
		}
		if clash := reverseItem(*forward, pfx); clash != nil {
			d.errorf(c.n, "kubernetes.cluster_cidrs %s: its reverse names are forwarded to kubernetes.dns.address, and dns.forward (%s:%d:%d) forwards them too; remove that dns.forward item, or list its servers under kubernetes.dns.address", pfx, d.fileOf(clash.reverse.n), clash.reverse.n.Line, clash.reverse.n.Column)
			continue
		}
		*forward = append(*forward, &wireForward{node: c.n, reverse: c, reverseSet: true, to: to, toSet: true, toNode: w.addrsNode})
	}
}

// reverseItem returns the dns.forward item that forwards the reverse
// names of exactly pfx, or nil.
func reverseItem(forward []*wireForward, pfx netip.Prefix) *wireForward {
	for _, f := range forward {
		if f == nil || !f.reverseSet {
			continue
		}
		if q, err := parsePrefix(f.reverse.v); err == nil && q == pfx {
			return f
		}
	}
	return nil
}
