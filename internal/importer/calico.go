package importer

import (
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// netSet is a Calico NetworkSet or GlobalNetworkSet: labels a policy rule's
// destination selector matches, and the domains it then allows.
type netSet struct {
	o       *object
	labels  map[string]string
	domains []string   // translated
	nets    *yaml.Node // the nets key, if any: addresses, not translated
	keyNode *yaml.Node // allowedEgressDomains, for "used by no rule"
	used    bool
}

// calico translates Calico policies. Network sets come first, from every
// input, so a rule may use a set defined in another file.
func (t *translator) calico(docs []*document) {
	var sets []*netSet
	var policies []*document
	for _, doc := range docs {
		switch kind := str(get(doc.root, "kind")); {
		case kind == "NetworkSet" || kind == "GlobalNetworkSet":
			if s := t.calicoSet(doc, kind == "NetworkSet"); s != nil {
				sets = append(sets, s)
			}
		case kind == "GlobalNetworkPolicy" || kind == "NetworkPolicy" && calicoAPI(doc):
			policies = append(policies, doc)
		case kind == "NetworkPolicy":
			t.problemf(doc.file, get(doc.root, "kind"), "a Kubernetes NetworkPolicy (%s) has no domain names; use its peers as they are; skipped", str(get(doc.root, "apiVersion")))
		default:
			t.otherKind(doc, kind, "GlobalNetworkPolicy, NetworkPolicy of projectcalico.org, NetworkSet, GlobalNetworkSet")
		}
	}
	for _, doc := range policies {
		t.calicoPolicy(doc, sets)
	}
	for _, s := range sets {
		if !s.used && s.keyNode != nil {
			t.problem(s.o, s.keyNode, "allowedEgressDomains: no egress Allow rule among the inputs selects this set; give the file of the policy that does; not translated")
		}
	}
}

func calicoAPI(doc *document) bool {
	v := str(get(doc.root, "apiVersion"))
	return strings.HasPrefix(v, "projectcalico.org/") || strings.HasPrefix(v, "crd.projectcalico.org/")
}

func (t *translator) calicoSet(doc *document, namespaced bool) *netSet {
	o, ok := t.identify(doc, namespaced)
	if !ok {
		return nil
	}
	s := &netSet{o: o, labels: map[string]string{}}
	pairs(get(get(doc.root, "metadata"), "labels"), func(k, v *yaml.Node) { s.labels[k.Value] = str(v) })
	spec := get(doc.root, "spec")
	for _, k := range unknownKeys(spec, "nets", "allowedEgressDomains") {
		t.problem(o, k, "spec.%s is not a key import knows; not translated", k.Value)
	}
	if k := keyNode(spec, "nets"); k != nil {
		s.nets = k
	}
	s.keyNode = keyNode(spec, "allowedEgressDomains")
	items, isList := list(get(spec, "allowedEgressDomains"))
	if !isList {
		t.problem(o, get(spec, "allowedEgressDomains"), "spec.allowedEgressDomains must be a list; not translated")
	}
	r := &rule{}
	for i, n := range items {
		t.addPattern(o, r, n, fmt.Sprintf("spec.allowedEgressDomains[%d]", i))
	}
	s.domains = r.to
	return s
}

var calicoSpecKeys = []string{"order", "tier", "selector", "types", "ingress", "egress", "serviceAccountSelector", "namespaceSelector", "performanceHints", "doNotTrack", "preDNAT", "applyOnForward"}

func (t *translator) calicoPolicy(doc *document, sets []*netSet) {
	global := str(get(doc.root, "kind")) == "GlobalNetworkPolicy"
	o, ok := t.identify(doc, !global)
	if !ok {
		return
	}
	spec, ok := t.spec(o)
	if !ok {
		return
	}
	stop := false
	for _, k := range unknownKeys(spec, calicoSpecKeys...) {
		t.problem(o, k, "spec.%s is not a key import knows, so it cannot tell what it changes; not translated", k.Value)
		stop = true
	}
	for _, key := range []string{"doNotTrack", "preDNAT"} {
		if str(get(spec, key)) == "true" {
			t.problem(o, keyNode(spec, key), "spec.%s: the policy applies to host endpoints, not pods; not translated", key)
			stop = true
		}
	}
	if n := get(spec, "serviceAccountSelector"); str(n) != "" {
		t.problem(o, n, "spec.serviceAccountSelector: a pod's service account is not a label fqdngate selects by; not translated")
		stop = true
	}
	if k := keyNode(spec, "ingress"); k != nil {
		t.problem(o, k, "spec.ingress: fqdngate controls egress only; not translated")
	}
	if stop {
		return
	}
	egress, isList := list(get(spec, "egress"))
	if !isList {
		t.problem(o, get(spec, "egress"), "spec.egress must be a list; not translated")
		return
	}
	if types, _ := list(get(spec, "types")); len(types) > 0 {
		hasEgress := false
		for _, ty := range types {
			hasEgress = hasEgress || str(ty) == "Egress"
		}
		if !hasEgress {
			return // its egress rules do not apply
		}
	}
	if len(egress) == 0 {
		return
	}
	g, ok := t.calicoGroup(o, spec, global)
	if !ok {
		return
	}
	g = t.frag.group(o.owner(), o.baseName(), g)
	for i, e := range egress {
		t.calicoEgress(o, g, e, fmt.Sprintf("spec.egress[%d]", i), fmt.Sprintf("%s-egress%d", o.baseName(), i), global, sets)
	}
}

// calicoSelector parses the Calico selector in scalar n, reporting where
// it is not a form import translates.
func (t *translator) calicoSelector(o *object, n *yaml.Node, path string) ([]calicoReq, bool) {
	if absent(n) {
		return nil, true
	}
	if n.Kind != yaml.ScalarNode {
		t.problem(o, n, "%s must be a selector string; not translated", path)
		return nil, false
	}
	reqs, err := parseCalicoSelector(n.Value)
	if err != nil {
		se := err.(*selError)
		t.problemAt(o, n, se.off, "%s: %s; not translated", path, se.msg)
		return nil, false
	}
	return reqs, true
}

// calicoGroup translates spec.selector (and a global policy's
// spec.namespaceSelector) to a source group.
func (t *translator) calicoGroup(o *object, spec *yaml.Node, global bool) (*group, bool) {
	selNode := get(spec, "selector")
	at := selNode
	if at == nil {
		at = spec
	}
	g := &group{podSel: &selector{}, origin: t.origin(o, at, "spec.selector")}
	if !global {
		g.namespaces = []string{o.namespace}
	}
	reqs, ok := t.calicoSelector(o, selNode, "spec.selector")
	if !ok {
		return nil, false
	}
	for _, r := range reqs {
		if r.key == "projectcalico.org/namespace" {
			if !t.calicoNamespaces(o, g, selNode, r, "spec.selector") {
				return nil, false
			}
			continue
		}
		if strings.HasPrefix(r.key, "projectcalico.org/") {
			t.problemAt(o, selNode, r.off, "spec.selector: %s is a Calico identity label (service account, orchestrator, ...), not a pod label; not translated", r.key)
			return nil, false
		}
		addReq(g.podSel, r, selNode)
	}
	if global {
		nsNode := get(spec, "namespaceSelector")
		nsReqs, ok := t.calicoSelector(o, nsNode, "spec.namespaceSelector")
		if !ok {
			return nil, false
		}
		var ns selector
		for _, r := range nsReqs {
			if r.key == "projectcalico.org/name" {
				if !t.calicoNamespaces(o, g, nsNode, r, "spec.namespaceSelector") {
					return nil, false
				}
				continue
			}
			addReq(&ns, r, nsNode)
		}
		if len(ns.labels)+len(ns.exprs) > 0 {
			g.nsSel = &ns
			if !t.checkSelector(o, g.nsSel, "spec.namespaceSelector") {
				return nil, false
			}
		}
	}
	if !t.checkSelector(o, g.podSel, "spec.selector") {
		return nil, false
	}
	return g, true
}

// calicoNamespaces narrows g to the namespaces requirement r names.
func (t *translator) calicoNamespaces(o *object, g *group, n *yaml.Node, r calicoReq, path string) bool {
	if r.op == "has" {
		return true // every pod has a namespace
	}
	for _, v := range r.values {
		if !validNamespace(v) {
			t.problemAt(o, n, r.off, "%s: %q is not a namespace name; not translated", path, v)
			return false
		}
	}
	g.namespaces = intersect(g.namespaces, r.values)
	if len(g.namespaces) == 0 {
		t.problemAt(o, n, r.off, "%s: %s selects no namespace this policy applies to; not translated", path, r.key)
		return false
	}
	return true
}

func addReq(s *selector, r calicoReq, at *yaml.Node) {
	switch r.op {
	case "==":
		s.addLabel(label{key: r.key, value: r.values[0], at: at})
	case "has":
		s.exprs = append(s.exprs, expr{key: r.key, op: "Exists", at: at})
	case "in":
		s.exprs = append(s.exprs, expr{key: r.key, op: "In", values: r.values, at: at})
	}
}

// Keys of a Calico rule and its destination that narrow what the rule
// allows in ways fqdngate cannot say: a rule with them is not translated.
var (
	calicoNarrowing = map[string]string{
		"notProtocol": "a negated protocol",
		"ipVersion":   "one IP version",
		"icmp":        "ICMP types",
		"notICMP":     "negated ICMP types",
		"http":        "HTTP methods and paths",
		"source":      "a source match beside the policy's selector",
	}
	calicoDestNarrowing = map[string]string{
		"notNets":         "negated networks",
		"notSelector":     "a negated selector",
		"notPorts":        "negated ports",
		"serviceAccounts": "service accounts",
		"services":        "Kubernetes services",
	}
)

func (t *translator) calicoEgress(o *object, g *group, e *yaml.Node, path, name string, global bool, sets []*netSet) {
	if e.Kind != yaml.MappingNode {
		t.problem(o, e, "%s must be a mapping; not translated", path)
		return
	}
	action := get(e, "action")
	if a := str(action); a != "Allow" {
		if action == nil {
			action = e
		}
		switch a {
		case "Deny":
			t.problem(o, action, "%s: action Deny: fqdngate has no deny rules (everything not allowed is denied); if it precedes an Allow rule that covers the same traffic, the imported rules allow that traffic; not translated", path)
		case "Pass", "Log":
			t.problem(o, action, "%s: action %s has no fqdngate equivalent; not translated", path, a)
		default:
			t.problem(o, action, "%s: action %q is not Allow, Deny, Pass or Log; not translated", path, a)
		}
		return
	}
	ok := true
	pairs(e, func(k, v *yaml.Node) {
		switch {
		case k.Value == "action" || k.Value == "protocol" || k.Value == "destination" || k.Value == "metadata":
		case calicoNarrowing[k.Value] != "":
			if absent(v) || v.Kind == yaml.MappingNode && len(v.Content) == 0 {
				return // present but empty: requires nothing
			}
			t.problem(o, k, "%s.%s: fqdngate rules cannot require %s; the rule is not translated (without it, it would allow more)", path, k.Value, calicoNarrowing[k.Value])
			ok = false
		default:
			t.problem(o, k, "%s.%s is not a key import knows; the rule is not translated", path, k.Value)
			ok = false
		}
	})
	dest := get(e, "destination")
	pairs(dest, func(k, _ *yaml.Node) {
		switch {
		case k.Value == "domains" || k.Value == "selector" || k.Value == "namespaceSelector" || k.Value == "ports" || k.Value == "nets":
		case calicoDestNarrowing[k.Value] != "":
			t.problem(o, k, "%s.destination.%s: fqdngate rules cannot require %s; the rule is not translated (without it, it would allow more)", path, k.Value, calicoDestNarrowing[k.Value])
			ok = false
		default:
			t.problem(o, k, "%s.destination.%s is not a key import knows; the rule is not translated", path, k.Value)
			ok = false
		}
	})
	if !ok {
		return
	}
	domains, selNode, nets := keyNode(dest, "domains"), get(dest, "selector"), keyNode(dest, "nets")
	switch {
	case domains == nil && selNode == nil && nets == nil:
		t.problem(o, e, "%s allows every destination; fqdngate allows listed names only; not translated", path)
		return
	case nets != nil && (domains != nil || selNode != nil):
		t.problem(o, nets, "%s.destination.nets beside domains or a selector: both must match, which fqdngate rules cannot require; the rule is not translated", path)
		return
	case nets != nil:
		t.problem(o, nets, "%s.destination.nets: addresses, not names; add them as CIDR targets (to: [203.0.113.0/24]) if you need them; not translated", path)
		return
	case domains != nil && selNode != nil:
		t.problem(o, selNode, "%s.destination.selector beside domains: both must match, which fqdngate rules cannot require; the rule is not translated", path)
		return
	}
	r := &rule{from: g, origin: t.origin(o, e, path)}
	ports, ok := t.calicoPorts(o, e, path)
	if !ok {
		return
	}
	r.ports = ports
	if domains != nil {
		items, isList := list(get(dest, "domains"))
		if !isList {
			t.problem(o, domains, "%s.destination.domains must be a list; not translated", path)
			return
		}
		for i, n := range items {
			t.addPattern(o, r, n, fmt.Sprintf("%s.destination.domains[%d]", path, i))
		}
	} else if !t.calicoSetDomains(o, r, dest, path, global, sets) {
		return
	}
	if len(r.to) == 0 {
		t.problem(o, e, "%s: no name was translated, so neither is the rule", path)
		return
	}
	t.frag.addRule(name, r)
}

// calicoSetDomains adds the domains of the network sets a rule's
// destination selector matches: for a NetworkPolicy the NetworkSets of
// its namespace, or with namespaceSelector global() the
// GlobalNetworkSets; for a GlobalNetworkPolicy every set.
func (t *translator) calicoSetDomains(o *object, r *rule, dest *yaml.Node, path string, global bool, sets []*netSet) bool {
	selNode := get(dest, "selector")
	reqs, ok := t.calicoSelector(o, selNode, path+".destination.selector")
	if !ok {
		return false
	}
	scope := "namespace"
	if ns := get(dest, "namespaceSelector"); ns != nil {
		if strings.TrimSpace(str(ns)) != "global()" {
			t.problem(o, ns, "%s.destination.namespaceSelector: only global() (the GlobalNetworkSets) is translated; the rule is not translated", path)
			return false
		}
		scope = "global"
	} else if global {
		scope = "all"
	}
	matched := 0
	for _, s := range sets {
		switch {
		case scope == "global" && s.o.namespace != "":
		case scope == "namespace" && s.o.namespace != o.namespace:
		case !matchesLabels(reqs, s.labels):
		default:
			matched++
			s.used = true
			for _, d := range s.domains {
				r.addName(d)
			}
			if s.nets != nil {
				t.problem(o, selNode, "%s.destination.selector matches %s, whose nets (addresses) are not translated", path, s.o.label())
			}
		}
	}
	if matched == 0 {
		t.problem(o, selNode, "%s.destination.selector matches no network set among the inputs (in-cluster pods are not fqdngate's to filter); give the file that defines the set; not translated", path)
		return false
	}
	return true
}

// calicoPorts translates a rule's protocol and destination.ports.
func (t *translator) calicoPorts(o *object, e *yaml.Node, path string) ([]policy.PortRange, bool) {
	protoNode := get(e, "protocol")
	proto := strings.ToUpper(str(protoNode))
	switch proto {
	case "6":
		proto = "TCP"
	case "17":
		proto = "UDP"
	}
	portsNode := get(get(e, "destination"), "ports")
	items, isList := list(portsNode)
	if !isList {
		t.problem(o, portsNode, "%s.destination.ports must be a list; the rule is not translated", path)
		return nil, false
	}
	if proto == "" {
		if len(items) > 0 {
			t.problem(o, portsNode, "%s.destination.ports without a protocol (Calico requires one); the rule is not translated", path)
			return nil, false
		}
		return allPorts(), true
	}
	if proto != "TCP" && proto != "UDP" {
		t.problem(o, protoNode, "%s.protocol %s: fqdngate rules cover TCP and UDP only; the rule is not translated", path, str(protoNode))
		return nil, false
	}
	if len(items) == 0 {
		rs, _ := portRanges(proto, 1, 65535)
		return rs, true
	}
	var out []policy.PortRange
	for i, n := range items {
		s := str(n)
		lo, hi, isRange := strings.Cut(s, ":")
		a, named, err := portNumber(lo)
		b := a
		if err == nil && isRange {
			b, err = strconv.Atoi(hi)
		}
		if err != nil {
			if named {
				t.problem(o, n, "%s.destination.ports[%d]: %v; the rule is not translated", path, i, err)
			} else {
				t.problem(o, n, "%s.destination.ports[%d]: %q is not a port or a range like 8000:8100; the rule is not translated", path, i, s)
			}
			return nil, false
		}
		rs, err := portRanges(proto, a, b)
		if err != nil {
			t.problem(o, n, "%s.destination.ports[%d]: %v; the rule is not translated", path, i, err)
			return nil, false
		}
		out = append(out, rs...)
	}
	return out, true
}
