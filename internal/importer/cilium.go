package importer

import (
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// cilium translates a CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy.
func (t *translator) cilium(doc *document) {
	var namespaced bool
	switch kind := str(get(doc.root, "kind")); kind {
	case "CiliumNetworkPolicy":
		namespaced = true
	case "CiliumClusterwideNetworkPolicy":
	default:
		t.otherKind(doc, kind, "CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy")
		return
	}
	o, ok := t.identify(doc, namespaced)
	if !ok {
		return
	}
	spec, specs := get(doc.root, "spec"), get(doc.root, "specs")
	if !absent(spec) {
		t.ciliumSpec(o, spec, "spec", o.baseName())
	}
	items, isList := list(specs)
	if !isList {
		t.problem(o, specs, "specs must be a list of rules; not translated")
	}
	for i, s := range items {
		t.ciliumSpec(o, s, fmt.Sprintf("specs[%d]", i), fmt.Sprintf("%s-%d", o.baseName(), i))
	}
	if absent(spec) && absent(specs) {
		t.problem(o, nil, "has neither spec nor specs; nothing to translate")
	}
}

// ciliumRuleKeys are the keys of a Cilium rule (spec) import knows.
var ciliumRuleKeys = []string{"endpointSelector", "nodeSelector", "egress", "egressDeny", "ingress", "ingressDeny", "description", "labels", "enableDefaultDeny", "log"}

func (t *translator) ciliumSpec(o *object, spec *yaml.Node, path, ruleBase string) {
	if spec.Kind != yaml.MappingNode {
		t.problem(o, spec, "%s must be a mapping; not translated", path)
		return
	}
	if bad := unknownKeys(spec, ciliumRuleKeys...); len(bad) > 0 {
		for _, k := range bad {
			t.problem(o, k, "%s.%s is not a key import knows, so it cannot tell what it changes; %s not translated", path, k.Value, path)
		}
		return
	}
	for _, key := range []string{"ingress", "ingressDeny"} {
		if k := keyNode(spec, key); k != nil {
			t.problem(o, k, "%s.%s: fqdngate controls egress only; not translated", path, key)
		}
	}
	if k := keyNode(spec, "egressDeny"); k != nil {
		t.problem(o, k, "%s.egressDeny: fqdngate has no deny rules (everything not allowed is denied); if this denies part of what the egress rules allow, the imported rules allow it; not translated", path)
	}
	if k := keyNode(spec, "nodeSelector"); k != nil {
		t.problem(o, k, "%s.nodeSelector: a host policy selects nodes, not pods; not translated", path)
		return
	}
	egress, ok := list(get(spec, "egress"))
	if !ok {
		t.problem(o, get(spec, "egress"), "%s.egress must be a list; not translated", path)
		return
	}
	if len(egress) == 0 {
		return
	}
	sel := get(spec, "endpointSelector")
	if sel == nil {
		t.problem(o, spec, "%s has no endpointSelector; not translated", path)
		return
	}
	g, ok := t.ciliumGroup(o, sel, path+".endpointSelector")
	if !ok {
		return // reported; the rules of a selector read in part are not translated
	}
	g = t.frag.group(o.owner(), o.baseName(), g)
	for i, e := range egress {
		t.ciliumEgress(o, g, e, fmt.Sprintf("%s.egress[%d]", path, i), fmt.Sprintf("%s-egress%d", ruleBase, i))
	}
}

// ciliumGroup translates an endpointSelector to a source group. Cilium
// label keys carry a source prefix (k8s:, any:); the namespace of a pod is
// the label io.kubernetes.pod.namespace and the labels of its namespace
// io.cilium.k8s.namespace.labels.*.
func (t *translator) ciliumGroup(o *object, n *yaml.Node, path string) (*group, bool) {
	raw, ok := t.labelSelector(o, n, path)
	if !ok {
		return nil, false
	}
	g := &group{podSel: &selector{}, origin: t.origin(o, n, path)}
	if o.namespace != "" {
		g.namespaces = []string{o.namespace}
	}
	var nsSel selector
	toNS := func(at *yaml.Node, key string, values []string) bool {
		if o.namespace != "" {
			// A namespaced policy selects in its own namespace only.
			if len(values) == 1 && values[0] == o.namespace {
				return true
			}
			t.problem(o, at, "%s: %s selects another namespace than the policy's own (%s), which selects nothing; not translated", path, key, o.namespace)
			return false
		}
		for _, v := range values {
			if !validNamespace(v) {
				t.problem(o, at, "%s: %q is not a namespace name; not translated", path, v)
				return false
			}
		}
		g.namespaces = intersect(g.namespaces, values)
		return true
	}
	for _, l := range raw.labels {
		key, where, msg := ciliumKey(l.key)
		switch where {
		case "":
			t.problem(o, l.at, "%s: %s; not translated", path, msg)
			ok = false
		case "namespace":
			ok = toNS(l.at, l.key, []string{l.value}) && ok
		case "nslabel":
			l.key = key
			nsSel.addLabel(l)
		default:
			l.key = key
			g.podSel.addLabel(l)
		}
	}
	for _, x := range raw.exprs {
		key, where, msg := ciliumKey(x.key)
		switch where {
		case "":
			t.problem(o, x.at, "%s: %s; not translated", path, msg)
			ok = false
		case "namespace":
			if x.op != "In" {
				t.problem(o, x.at, "%s: %s %s: only In (or matchLabels) translates to a list of namespaces; not translated", path, x.key, x.op)
				ok = false
				continue
			}
			ok = toNS(x.at, x.key, x.values) && ok
		case "nslabel":
			x.key = key
			nsSel.exprs = append(nsSel.exprs, x)
		default:
			x.key = key
			g.podSel.exprs = append(g.podSel.exprs, x)
		}
	}
	if len(nsSel.labels)+len(nsSel.exprs) > 0 {
		g.nsSel = &nsSel
		ok = t.checkSelector(o, g.nsSel, path) && ok
	}
	ok = t.checkSelector(o, g.podSel, path) && ok
	if g.namespaces != nil && len(g.namespaces) == 0 {
		t.problem(o, n, "%s selects no namespace (its namespace requirements contradict each other); not translated", path)
		ok = false
	}
	return g, ok
}

// ciliumKey maps a Cilium selector key to where it belongs: "pod" (a pod
// label), "namespace" (the pod's namespace), "nslabel" (a label of the
// pod's namespace), or "" with why it cannot be translated.
func ciliumKey(k string) (key, where, msg string) {
	if src, rest, ok := strings.Cut(k, ":"); ok && !strings.Contains(src, "/") {
		if src != "k8s" && src != "any" {
			return "", "", fmt.Sprintf("%q: labels of source %q are not Kubernetes pod labels", k, src)
		}
		k = rest
	}
	switch {
	case k == "io.kubernetes.pod.namespace":
		return k, "namespace", ""
	case strings.HasPrefix(k, "io.cilium.k8s.namespace.labels."):
		return strings.TrimPrefix(k, "io.cilium.k8s.namespace.labels."), "nslabel", ""
	case strings.HasPrefix(k, "io.cilium.k8s.policy.") || strings.HasPrefix(k, "io.cilium."):
		return "", "", fmt.Sprintf("%q is a Cilium identity label (service account, cluster), not a pod label", k)
	}
	return k, "pod", ""
}

// intersect returns the values in both lists; a nil have means any.
func intersect(have, values []string) []string {
	if have == nil {
		return append([]string(nil), values...)
	}
	out := []string{}
	for _, h := range have {
		for _, v := range values {
			if h == v {
				out = append(out, h)
				break
			}
		}
	}
	return out
}

// ciliumEgressKeys are the keys of an egress rule: the peers other than
// toFQDNs add destinations (left out, reported); the rest narrow what the
// rule allows, so a rule with them is not translated at all.
var (
	ciliumPeers = map[string]string{
		"toEndpoints": "in-cluster pods, which fqdngate does not filter (kubernetes.cluster_cidrs)",
		"toServices":  "in-cluster services, which fqdngate does not filter (kubernetes.cluster_cidrs)",
		"toNodes":     "nodes, not names",
		"toCIDR":      "addresses, not names; add them as CIDR targets (to: [203.0.113.0/24]) if you need them",
		"toCIDRSet":   "addresses, not names; add them as CIDR targets (to: [203.0.113.0/24]) if you need them",
		"toEntities":  "address classes (world, cluster, ...), not names",
		"toGroups":    "cloud provider groups, not names",
		"toRequires":  "requirements on other peers",
	}
	ciliumNarrowing = map[string]string{
		"icmps":          "ICMP types",
		"authentication": "mutual authentication",
	}
)

func (t *translator) ciliumEgress(o *object, g *group, e *yaml.Node, path, name string) {
	if e.Kind != yaml.MappingNode {
		t.problem(o, e, "%s must be a mapping; not translated", path)
		return
	}
	fqdns := get(e, "toFQDNs")
	ok := true
	pairs(e, func(k, v *yaml.Node) {
		switch {
		case k.Value == "toFQDNs" || k.Value == "toPorts":
		case ciliumPeers[k.Value] != "":
			if k.Value == "toEndpoints" && dnsRule(e) {
				t.problem(o, k, "%s.%s: the DNS rule for the pods' resolver: fqdngate answers pods' DNS itself and forwards cluster names (kubernetes.dns); nothing to translate", path, k.Value)
				return
			}
			t.problem(o, k, "%s.%s: %s; not translated (only toFQDNs is)", path, k.Value, ciliumPeers[k.Value])
		case ciliumNarrowing[k.Value] != "":
			t.problem(o, k, "%s.%s: fqdngate rules cannot require %s; the rule is not translated (without it, it would allow more)", path, k.Value, ciliumNarrowing[k.Value])
			ok = false
		default:
			t.problem(o, k, "%s.%s is not a key import knows; the rule is not translated", path, k.Value)
			ok = false
		}
	})
	if !ok {
		return
	}
	if fqdns == nil {
		peer := false
		pairs(e, func(k, _ *yaml.Node) { peer = peer || ciliumPeers[k.Value] != "" })
		if !peer {
			t.problem(o, e, "%s names no destination, so it allows every one (on its ports); fqdngate allows listed names only; not translated", path)
		}
		return
	}
	r := &rule{from: g, origin: t.origin(o, e, path)}
	ports, ok := t.ciliumPorts(o, get(e, "toPorts"), path+".toPorts")
	if !ok {
		return
	}
	r.ports = ports
	items, isList := list(fqdns)
	if !isList {
		t.problem(o, fqdns, "%s.toFQDNs must be a list; not translated", path)
		return
	}
	for i, f := range items {
		p := fmt.Sprintf("%s.toFQDNs[%d]", path, i)
		if f.Kind != yaml.MappingNode {
			t.problem(o, f, "%s must be {matchName} or {matchPattern}; not translated", p)
			continue
		}
		for _, k := range unknownKeys(f, "matchName", "matchPattern") {
			t.problem(o, k, "%s.%s is not a key import knows; not translated", p, k.Value)
		}
		if n := get(f, "matchName"); n != nil {
			if strings.Contains(n.Value, "*") {
				t.problemAt(o, n, strings.IndexByte(n.Value, '*'), "%s.matchName %q: a matchName holds no wildcards (use matchPattern); not translated", p, n.Value)
			} else {
				t.addPattern(o, r, n, p+".matchName")
			}
		}
		if n := get(f, "matchPattern"); n != nil {
			t.addPattern(o, r, n, p+".matchPattern")
		}
	}
	if len(r.to) == 0 {
		t.problem(o, e, "%s: no name was translated, so neither is the rule", path)
		return
	}
	t.frag.addRule(name, r)
}

// dnsRule reports whether egress rule e carries Cilium's DNS proxy rules
// (toPorts[].rules.dns), the usual companion of toFQDNs.
func dnsRule(e *yaml.Node) bool {
	tp, _ := list(get(e, "toPorts"))
	for _, p := range tp {
		if get(get(p, "rules"), "dns") != nil {
			return true
		}
	}
	return false
}

// addPattern translates the name or pattern in scalar n and adds it to r,
// or reports why it cannot.
func (t *translator) addPattern(o *object, r *rule, n *yaml.Node, path string) {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		t.problem(o, n, "%s must be a string; not translated", path)
		return
	}
	p, err := translatePattern(t.dialect, n.Value)
	if err != nil {
		pe := err.(*patternError)
		t.problemAt(o, n, pe.off, "%s: %s; not translated", path, pe.msg)
		return
	}
	r.addName(p)
}

// ciliumPorts translates toPorts. No toPorts (or one without ports) means
// every port. L7 rules and TLS settings narrow the rule in ways fqdngate
// cannot say, so they stop the rule's translation.
func (t *translator) ciliumPorts(o *object, n *yaml.Node, path string) ([]policy.PortRange, bool) {
	return t.portList(o, n, path, func(it *yaml.Node, p string) ([]policy.PortRange, bool) {
		ok := true
		pairs(it, func(k, v *yaml.Node) {
			switch k.Value {
			case "ports":
			case "rules":
				t.problem(o, k, "%s.rules: L7 rules (%s) restrict what may be sent; fqdngate allows by name and port, so the rule would allow more; not translated", p, strings.Join(mapKeys(v), ", "))
				ok = false
			case "serverNames", "listener", "originatingTLS", "terminatingTLS":
				t.problem(o, k, "%s.%s: fqdngate has no equivalent; the rule is not translated (without it, it would allow more)", p, k.Value)
				ok = false
			default:
				t.problem(o, k, "%s.%s is not a key import knows; the rule is not translated", p, k.Value)
				ok = false
			}
		})
		rs, good := t.portList(o, get(it, "ports"), p+".ports", func(pp *yaml.Node, path string) ([]policy.PortRange, bool) {
			return t.ciliumPort(o, pp, path)
		})
		return rs, ok && good
	})
}

func (t *translator) ciliumPort(o *object, n *yaml.Node, path string) ([]policy.PortRange, bool) {
	for _, k := range unknownKeys(n, "port", "endPort", "protocol") {
		t.problem(o, k, "%s.%s is not a key import knows; the rule is not translated", path, k.Value)
		return nil, false
	}
	proto := str(get(n, "protocol"))
	if proto == "" {
		proto = "ANY"
	}
	if strings.EqualFold(proto, "SCTP") {
		// Dropping an SCTP port only narrows: the rest of the rule stands.
		t.problem(o, n, "%s: protocol SCTP: fqdngate rules cover TCP and UDP only; this port is not translated", path)
		return nil, true
	}
	lo, hi := 1, 65535
	if s := str(get(n, "port")); s != "" && s != "0" {
		p, _, err := portNumber(s)
		if err != nil {
			t.problem(o, get(n, "port"), "%s: %v; the rule is not translated", path, err)
			return nil, false
		}
		lo, hi = p, p
		if e := str(get(n, "endPort")); e != "" && e != "0" {
			hi, err = strconv.Atoi(e)
			if err != nil {
				t.problem(o, get(n, "endPort"), "%s: endPort %q is not a number; the rule is not translated", path, e)
				return nil, false
			}
		}
	}
	rs, err := portRanges(proto, lo, hi)
	if err != nil {
		t.problem(o, n, "%s: %v; the rule is not translated", path, err)
		return nil, false
	}
	return rs, true
}

func mapKeys(n *yaml.Node) []string {
	var out []string
	pairs(n, func(k, _ *yaml.Node) { out = append(out, k.Value) })
	if len(out) == 0 {
		out = []string{"empty"}
	}
	return out
}
