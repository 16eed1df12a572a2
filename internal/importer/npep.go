package importer

import (
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// npep translates a ClusterNetworkPolicy (policy.networking.k8s.io
// v1alpha2: action Accept, protocols) or an AdminNetworkPolicy or
// BaselineAdminNetworkPolicy (v1alpha1: action Allow, ports). Both name
// their wildcard "*.x", one or more labels: fqdngate's "**.x".
func (t *translator) npep(doc *document) {
	kind := str(get(doc.root, "kind"))
	var allow string
	switch kind {
	case "ClusterNetworkPolicy":
		allow = "Accept"
	case "AdminNetworkPolicy", "BaselineAdminNetworkPolicy":
		allow = "Allow"
	default:
		t.otherKind(doc, kind, "ClusterNetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy")
		return
	}
	o, ok := t.identify(doc, false)
	if !ok {
		return
	}
	spec, ok := t.spec(o)
	if !ok {
		return
	}
	for _, k := range unknownKeys(spec, "tier", "priority", "subject", "ingress", "egress") {
		t.problem(o, k, "spec.%s is not a key import knows, so it cannot tell what it changes; not translated", k.Value)
		return
	}
	if k := keyNode(spec, "ingress"); k != nil {
		t.problem(o, k, "spec.ingress: fqdngate controls egress only; not translated")
	}
	egress, isList := list(get(spec, "egress"))
	if !isList {
		t.problem(o, get(spec, "egress"), "spec.egress must be a list; not translated")
		return
	}
	if len(egress) == 0 {
		return
	}
	g, ok := t.npepGroup(o, get(spec, "subject"))
	if !ok {
		return
	}
	g = t.frag.group(o.owner(), o.baseName(), g)
	for i, e := range egress {
		path := fmt.Sprintf("spec.egress[%d]", i)
		name := fmt.Sprintf("%s-egress%d", o.baseName(), i)
		if n := str(get(e, "name")); n != "" {
			name = o.baseName() + "-" + n
		}
		t.npepEgress(o, g, e, path, name, allow)
	}
}

// npepGroup translates spec.subject: namespaces (a namespace selector) or
// pods (a namespace and a pod selector).
func (t *translator) npepGroup(o *object, subj *yaml.Node) (*group, bool) {
	if subj == nil || subj.Kind != yaml.MappingNode || len(subj.Content) != 2 {
		t.problem(o, subj, "spec.subject must hold exactly one of namespaces or pods; not translated")
		return nil, false
	}
	g := &group{origin: t.origin(o, subj, "spec.subject")}
	k, v := subj.Content[0], subj.Content[1]
	var ok bool
	switch k.Value {
	case "namespaces":
		g.nsSel, ok = t.labelSelector(o, v, "spec.subject.namespaces")
		ok = ok && t.checkSelector(o, g.nsSel, "spec.subject.namespaces")
	case "pods":
		for _, u := range unknownKeys(v, "namespaceSelector", "podSelector") {
			t.problem(o, u, "spec.subject.pods.%s is not a key import knows; not translated", u.Value)
			return nil, false
		}
		g.nsSel, ok = t.labelSelector(o, get(v, "namespaceSelector"), "spec.subject.pods.namespaceSelector")
		if !ok {
			return nil, false
		}
		g.podSel, ok = t.labelSelector(o, get(v, "podSelector"), "spec.subject.pods.podSelector")
		ok = ok && t.checkSelector(o, g.nsSel, "spec.subject.pods.namespaceSelector") && t.checkSelector(o, g.podSel, "spec.subject.pods.podSelector")
	default:
		t.problem(o, k, "spec.subject.%s is not namespaces or pods; not translated", k.Value)
	}
	return g, ok
}

var npepPeers = map[string]string{
	"namespaces": "in-cluster pods, which fqdngate does not filter (kubernetes.cluster_cidrs)",
	"pods":       "in-cluster pods, which fqdngate does not filter (kubernetes.cluster_cidrs)",
	"nodes":      "nodes, not names",
	"networks":   "addresses, not names; add them as CIDR targets (to: [203.0.113.0/24]) if you need them",
}

func (t *translator) npepEgress(o *object, g *group, e *yaml.Node, path, name, allow string) {
	if e.Kind != yaml.MappingNode {
		t.problem(o, e, "%s must be a mapping; not translated", path)
		return
	}
	for _, k := range unknownKeys(e, "name", "action", "to", "protocols", "ports") {
		t.problem(o, k, "%s.%s is not a key import knows; the rule is not translated", path, k.Value)
		return
	}
	actionNode := get(e, "action")
	if actionNode == nil {
		actionNode = e
	}
	switch a := str(actionNode); a {
	case allow:
	case "Deny":
		t.problem(o, actionNode, "%s: action Deny: fqdngate has no deny rules (everything not allowed is denied); if it takes precedence over an %s rule that covers the same traffic, the imported rules allow that traffic; not translated", path, allow)
		return
	case "Pass":
		t.problem(o, actionNode, "%s: action Pass has no fqdngate equivalent; not translated", path)
		return
	default:
		t.problem(o, actionNode, "%s: action %q is not %s, Deny or Pass; not translated", path, a, allow)
		return
	}
	peers, isList := list(get(e, "to"))
	if !isList {
		t.problem(o, get(e, "to"), "%s.to must be a list; not translated", path)
		return
	}
	r := &rule{from: g, origin: t.origin(o, e, path)}
	var domainPeers []*yaml.Node
	for i, p := range peers {
		pairs(p, func(k, v *yaml.Node) {
			switch {
			case k.Value == "domainNames":
				domainPeers = append(domainPeers, v)
			case npepPeers[k.Value] != "":
				t.problem(o, k, "%s.to[%d].%s: %s; not translated (only domainNames is)", path, i, k.Value, npepPeers[k.Value])
			default:
				t.problem(o, k, "%s.to[%d].%s is not a peer import knows; not translated", path, i, k.Value)
			}
		})
	}
	if len(peers) == 0 {
		t.problem(o, e, "%s has no destinations (to); not translated", path)
	}
	if len(domainPeers) == 0 {
		return
	}
	ports, ok := t.npepPorts(o, e, path)
	if !ok {
		return
	}
	r.ports = ports
	for _, dp := range domainPeers {
		items, isList := list(dp)
		if !isList {
			t.problem(o, dp, "%s: domainNames must be a list; not translated", path)
			continue
		}
		for j, n := range items {
			t.addPattern(o, r, n, fmt.Sprintf("%s.domainNames[%d]", path, j))
		}
	}
	if len(r.to) == 0 {
		t.problem(o, e, "%s: no name was translated, so neither is the rule", path)
		return
	}
	t.frag.addRule(name, r)
}

// npepPorts translates protocols (v1alpha2) or ports (v1alpha1); neither
// means every port.
func (t *translator) npepPorts(o *object, e *yaml.Node, path string) ([]policy.PortRange, bool) {
	if get(e, "protocols") != nil && get(e, "ports") != nil {
		t.problem(o, keyNode(e, "ports"), "%s has both protocols (v1alpha2) and ports (v1alpha1); the rule is not translated", path)
		return nil, false
	}
	if n := get(e, "protocols"); n != nil {
		return t.npepProtocols(o, n, path+".protocols")
	}
	return t.portList(o, get(e, "ports"), path+".ports", func(it *yaml.Node, p string) ([]policy.PortRange, bool) {
		k, v, ok := t.oneOf(o, it, p, "portNumber, portRange, namedPort")
		if !ok {
			return nil, false
		}
		proto := str(get(v, "protocol"))
		if proto == "" {
			proto = "TCP"
		}
		var lo, hi string
		switch k.Value {
		case "portNumber":
			lo = str(get(v, "port"))
			hi = lo
		case "portRange":
			lo, hi = str(get(v, "start")), str(get(v, "end"))
		case "namedPort":
			t.problem(o, k, "%s.namedPort: a name means a container port, which external destinations do not have; the rule is not translated", p)
			return nil, false
		default:
			t.problem(o, k, "%s.%s is not portNumber, portRange or namedPort; the rule is not translated", p, k.Value)
			return nil, false
		}
		return t.portSpec(o, v, p+"."+k.Value, proto, lo, hi)
	})
}

func (t *translator) npepProtocols(o *object, n *yaml.Node, path string) ([]policy.PortRange, bool) {
	return t.portList(o, n, path, func(it *yaml.Node, p string) ([]policy.PortRange, bool) {
		k, v, ok := t.oneOf(o, it, p, "tcp, udp, sctp, destinationNamedPort")
		if !ok {
			return nil, false
		}
		switch k.Value {
		case "tcp", "udp":
		case "sctp":
			// Dropping an SCTP match only narrows: the rest of the rule stands.
			t.problem(o, k, "%s.sctp: fqdngate rules cover TCP and UDP only; not translated", p)
			return nil, true
		case "destinationNamedPort":
			t.problem(o, k, "%s.destinationNamedPort: a name means a container port, which external destinations do not have; the rule is not translated", p)
			return nil, false
		default:
			t.problem(o, k, "%s.%s is not tcp, udp, sctp or destinationNamedPort; the rule is not translated", p, k.Value)
			return nil, false
		}
		dp := get(v, "destinationPort")
		var lo, hi string
		switch {
		case absent(dp):
			lo, hi = "1", "65535"
		case get(dp, "number") != nil:
			lo = str(get(dp, "number"))
			hi = lo
		case get(dp, "range") != nil:
			lo, hi = str(get(get(dp, "range"), "start")), str(get(get(dp, "range"), "end"))
		default:
			t.problem(o, dp, "%s.%s.destinationPort must hold number or range; the rule is not translated", p, k.Value)
			return nil, false
		}
		return t.portSpec(o, v, p+"."+k.Value, strings.ToUpper(k.Value), lo, hi)
	})
}

// portSpec translates one protocol's ports lo..hi given as strings.
func (t *translator) portSpec(o *object, n *yaml.Node, path, proto, lo, hi string) ([]policy.PortRange, bool) {
	a, named, err := portNumber(lo)
	b := a
	if err == nil {
		b, _, err = portNumber(hi)
	}
	if err != nil {
		if !named {
			err = fmt.Errorf("port %q to %q is not a port or range", lo, hi)
		}
		t.problem(o, n, "%s: %v; the rule is not translated", path, err)
		return nil, false
	}
	if strings.EqualFold(proto, "SCTP") {
		t.problem(o, n, "%s: protocol SCTP: fqdngate rules cover TCP and UDP only; not translated", path)
		return nil, true
	}
	rs, err := portRanges(proto, a, b)
	if err != nil {
		t.problem(o, n, "%s: %v; the rule is not translated", path, err)
		return nil, false
	}
	return rs, true
}
