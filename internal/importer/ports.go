package importer

import (
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// portList translates a list of port items, each with item; a missing or
// empty list means every port, as it does in all three dialects. Every
// item is looked at, so every problem is reported; any problem fails the
// whole list, since a rule's ports read in part would be other ports.
func (t *translator) portList(o *object, n *yaml.Node, path string, item func(it *yaml.Node, path string) ([]policy.PortRange, bool)) ([]policy.PortRange, bool) {
	items, isList := list(n)
	if !isList {
		t.problem(o, n, "%s must be a list; the rule is not translated", path)
		return nil, false
	}
	if len(items) == 0 {
		return allPorts(), true
	}
	var out []policy.PortRange
	ok := true
	for i, it := range items {
		rs, good := item(it, fmt.Sprintf("%s[%d]", path, i))
		ok = ok && good
		out = append(out, rs...)
	}
	if !ok {
		return nil, false
	}
	return out, true
}

// oneOf returns the only key and value of mapping n, or reports that n
// must hold exactly one of what.
func (t *translator) oneOf(o *object, n *yaml.Node, path, what string) (k, v *yaml.Node, ok bool) {
	if n.Kind != yaml.MappingNode || len(n.Content) != 2 {
		t.problem(o, n, "%s must hold one of %s; the rule is not translated", path, what)
		return nil, nil, false
	}
	return n.Content[0], n.Content[1], true
}

// portRanges returns what protocol proto (TCP, UDP, or ANY for both) on
// ports lo..hi is in fqdngate terms, or why it cannot be said.
func portRanges(proto string, lo, hi int) ([]policy.PortRange, error) {
	if lo < 1 || hi > 65535 || lo > hi {
		return nil, fmt.Errorf("port range %d-%d is not within 1-65535", lo, hi)
	}
	r := policy.PortRange{Lo: uint16(lo), Hi: uint16(hi)}
	switch strings.ToUpper(proto) {
	case "TCP":
		r.Proto = policy.TCP
		return []policy.PortRange{r}, nil
	case "UDP":
		r.Proto = policy.UDP
		return []policy.PortRange{r}, nil
	case "ANY":
		u := r
		r.Proto, u.Proto = policy.TCP, policy.UDP
		return []policy.PortRange{r, u}, nil
	}
	return nil, fmt.Errorf("protocol %q: fqdngate rules cover TCP and UDP only", proto)
}

// portNumber parses a port given as a number or a numeric string. named
// is true for a named port (a container port's name), which has no
// meaning outside the cluster.
func portNumber(s string) (n int, named bool, err error) {
	n, err = strconv.Atoi(s)
	if err != nil {
		if s != "" && strings.IndexFunc(s, func(r rune) bool { return r >= '0' && r <= '9' }) != 0 {
			return 0, true, fmt.Errorf("named port %q: a name means a container port, which external destinations do not have", s)
		}
		return 0, false, fmt.Errorf("port %q is not a number", s)
	}
	return n, false, nil
}
