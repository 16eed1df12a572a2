package importer

import (
	"regexp"
	"strconv"
	"strings"
)

// emit writes the fragment as fqdngate policy YAML: sources, then rules,
// each after a comment naming where in the input it came from.
func (f *fragment) emit(d Dialect, files []string) string {
	var b strings.Builder
	b.WriteString("# Translated by \"fqdngate import " + d.String() + "\" from " + strings.Join(files, ", ") + ".\n")
	b.WriteString("# Review it, merge it into a policy with a kubernetes: section, and run \"fqdngate check\".\n")
	groups := f.usedGroups()
	if len(f.rules) == 0 {
		b.WriteString("# Nothing was translated.\n")
		return b.String()
	}
	b.WriteString("sources:\n")
	for _, g := range groups {
		b.WriteString("  # " + g.origin + "\n")
		b.WriteString("  " + quote(g.name) + ":\n")
		b.WriteString("    kubernetes:\n")
		writeGroupBody(&b, g, "      ")
	}
	b.WriteString("rules:\n")
	for _, r := range f.rules {
		b.WriteString("  # " + r.origin + "\n")
		b.WriteString("  - name: " + quote(r.name) + "\n")
		b.WriteString("    from: [" + quote(r.from.name) + "]\n")
		b.WriteString("    to: " + flowList(r.to) + "\n")
		ports := make([]string, len(r.ports))
		for i, p := range r.ports {
			ports[i] = formatPort(p)
		}
		b.WriteString("    ports: [" + strings.Join(ports, ", ") + "]\n")
	}
	return b.String()
}

// writeGroupBody writes the keys under a group's kubernetes: key, each
// line indented by indent.
func writeGroupBody(b *strings.Builder, g *group, indent string) {
	if g.namespaces != nil {
		b.WriteString(indent + "namespaces: " + flowList(g.namespaces) + "\n")
	}
	if g.nsSel != nil {
		writeSelector(b, "namespace_selector", g.nsSel, indent)
	}
	if g.podSel != nil {
		writeSelector(b, "pod_selector", g.podSel, indent)
	}
}

func writeSelector(b *strings.Builder, key string, s *selector, indent string) {
	if len(s.labels) == 0 && len(s.exprs) == 0 {
		b.WriteString(indent + key + ": {}\n")
		return
	}
	b.WriteString(indent + key + ":\n")
	if len(s.labels) > 0 {
		kvs := make([]string, len(s.labels))
		for i, l := range s.labels {
			kvs[i] = quote(l.key) + ": " + quote(l.value)
		}
		b.WriteString(indent + "  matchLabels: {" + strings.Join(kvs, ", ") + "}\n")
	}
	if len(s.exprs) > 0 {
		b.WriteString(indent + "  matchExpressions:\n")
		for _, e := range s.exprs {
			line := "{key: " + quote(e.key) + ", operator: " + e.op
			if e.op == "In" || e.op == "NotIn" {
				line += ", values: " + flowList(e.values)
			}
			b.WriteString(indent + "    - " + line + "}\n")
		}
	}
}

func flowList(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// plain matches the strings written without quotes: they cannot be read
// as anything but the same string.
var plain = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_./-]*$`)

// quote writes s as a YAML scalar that reads back as the string s.
func quote(s string) string {
	if plain.MatchString(s) && !special(s) {
		return s
	}
	// A Go quoted string is a valid YAML double-quoted scalar for the
	// escapes Go uses (\", \\, \n, \t, \xNN, \uNNNN, \UNNNNNNNN, ...).
	return strconv.Quote(s)
}

// special reports the plain words YAML 1.1 or 1.2 reads as booleans or
// null.
func special(s string) bool {
	switch strings.ToLower(s) {
	case "y", "n", "yes", "no", "on", "off", "true", "false", "null":
		return true
	}
	return false
}
