package importer

import (
	"regexp"

	"gopkg.in/yaml.v3"
)

// labelSelector decodes a Kubernetes LabelSelector, checking its shape
// but not yet its keys and values (see checkSelector). A missing or null
// n is the empty selector (everything). On a problem it reports and
// returns ok false: a selector read in part would select more pods than
// meant.
func (t *translator) labelSelector(o *object, n *yaml.Node, path string) (*selector, bool) {
	s := &selector{}
	if absent(n) {
		return s, true
	}
	if n.Kind != yaml.MappingNode {
		t.problem(o, n, "%s must be a label selector (matchLabels, matchExpressions); not translated", path)
		return nil, false
	}
	ok := true
	for _, k := range unknownKeys(n, "matchLabels", "matchExpressions") {
		t.problem(o, k, "%s.%s is not part of a label selector; not translated", path, k.Value)
		ok = false
	}
	ml := get(n, "matchLabels")
	if !absent(ml) && ml.Kind != yaml.MappingNode {
		t.problem(o, ml, "%s.matchLabels must be a mapping of label keys to values; not translated", path)
		ok = false
	}
	pairs(ml, func(k, v *yaml.Node) {
		if v.Kind != yaml.ScalarNode {
			t.problem(o, v, "%s.matchLabels: the value of %s must be a string; not translated", path, k.Value)
			ok = false
			return
		}
		s.addLabel(label{key: k.Value, value: str(v), at: k})
	})
	exprs, isList := list(get(n, "matchExpressions"))
	if !isList {
		t.problem(o, get(n, "matchExpressions"), "%s.matchExpressions must be a list; not translated", path)
		ok = false
	}
	for _, e := range exprs {
		x, good := t.labelExpr(o, e, path+".matchExpressions")
		if !good {
			ok = false
			continue
		}
		s.exprs = append(s.exprs, x)
	}
	if !ok {
		return nil, false
	}
	return s, true
}

func (t *translator) labelExpr(o *object, e *yaml.Node, path string) (expr, bool) {
	if e.Kind != yaml.MappingNode {
		t.problem(o, e, "%s: an item must be {key, operator, values}; not translated", path)
		return expr{}, false
	}
	for _, k := range unknownKeys(e, "key", "operator", "values") {
		t.problem(o, k, "%s: %q is not part of a selector requirement; not translated", path, k.Value)
		return expr{}, false
	}
	x := expr{key: str(get(e, "key")), op: str(get(e, "operator")), at: e}
	vals, ok := list(get(e, "values"))
	if !ok {
		t.problem(o, get(e, "values"), "%s: values must be a list; not translated", path)
		return expr{}, false
	}
	for _, v := range vals {
		if v.Kind != yaml.ScalarNode {
			t.problem(o, v, "%s: a value must be a string; not translated", path)
			return expr{}, false
		}
		x.values = append(x.values, v.Value)
	}
	switch x.op {
	case "In", "NotIn":
		if len(x.values) == 0 {
			t.problem(o, e, "%s: operator %s needs values; not translated", path, x.op)
			return expr{}, false
		}
	case "Exists", "DoesNotExist":
		if len(x.values) != 0 {
			t.problem(o, e, "%s: operator %s takes no values; not translated", path, x.op)
			return expr{}, false
		}
	default:
		t.problem(o, e, "%s: operator %q is not In, NotIn, Exists or DoesNotExist; not translated", path, x.op)
		return expr{}, false
	}
	return x, true
}

// checkSelector reports the keys and values of s that are not valid
// Kubernetes label keys and values, and returns whether all are.
func (t *translator) checkSelector(o *object, s *selector, path string) bool {
	ok := true
	for _, l := range s.labels {
		if !validKey(l.key) {
			t.problem(o, l.at, "%s: %q is not a valid label key; not translated", path, l.key)
			ok = false
		} else if !validValue(l.value) {
			t.problem(o, l.at, "%s: %q is not a valid label value (of %s); not translated", path, l.value, l.key)
			ok = false
		}
	}
	for _, x := range s.exprs {
		if !validKey(x.key) {
			t.problem(o, x.at, "%s: %q is not a valid label key; not translated", path, x.key)
			ok = false
			continue
		}
		for _, v := range x.values {
			if !validValue(v) {
				t.problem(o, x.at, "%s: %q is not a valid label value (of %s); not translated", path, v, x.key)
				ok = false
			}
		}
	}
	return ok
}

var (
	labelName  = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
	labelValue = regexp.MustCompile(`^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$`)
	dnsSub     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	dnsLabel   = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

// validKey reports whether k is a Kubernetes label key: an optional DNS
// subdomain prefix and '/', then a name of at most 63 characters.
func validKey(k string) bool {
	name := k
	for i := len(k) - 1; i >= 0; i-- {
		if k[i] == '/' {
			prefix := k[:i]
			if len(prefix) == 0 || len(prefix) > 253 || !dnsSub.MatchString(prefix) {
				return false
			}
			name = k[i+1:]
			break
		}
	}
	return len(name) <= 63 && labelName.MatchString(name)
}

func validValue(v string) bool { return len(v) <= 63 && labelValue.MatchString(v) }

// validNamespace reports whether s is a namespace name (a DNS label).
func validNamespace(s string) bool { return len(s) <= 63 && dnsLabel.MatchString(s) }
