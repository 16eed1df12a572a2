package importer

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// document is one Kubernetes object read from a file: a YAML document, or
// an item of a List.
type document struct {
	file string
	root *yaml.Node // a mapping
}

// object is the identity of a document: what problems and comments call it.
type object struct {
	doc        *document
	apiVersion string
	kind       string
	namespace  string // empty for cluster-scoped objects
	name       string
}

// label names the object as kubectl would: Kind namespace/name.
func (o *object) label() string {
	if o.namespace == "" {
		return o.kind + " " + o.name
	}
	return o.kind + " " + o.namespace + "/" + o.name
}

// read splits an input into documents, expanding Lists. A document that
// is not valid YAML, or uses aliases or merge keys, is reported and left
// out: anchors let one value stand for another in ways kubectl's output
// never has, and are where a translation would be easiest to fool.
func (t *translator) read(in Input) []*document {
	var docs []*document
	dec := yaml.NewDecoder(bytes.NewReader(in.Data))
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			line, msg := yamlMessage(err)
			t.problems = append(t.problems, Problem{File: in.Name, Line: line, Col: 1, Msg: msg + "; fix the YAML (nothing after this point in the file was read)"})
			break
		}
		if n.Kind != yaml.DocumentNode || len(n.Content) == 0 {
			continue
		}
		root := n.Content[0]
		if isNull(root) {
			continue // an empty document, as between two "---"
		}
		if bad := t.checkPlain(in.Name, root); bad {
			continue
		}
		docs = append(docs, t.items(in.Name, root)...)
	}
	return docs
}

// items returns root as a document, or the items of a List.
func (t *translator) items(file string, root *yaml.Node) []*document {
	if root.Kind != yaml.MappingNode {
		t.problemf(file, root, "a document must be a Kubernetes object (a mapping with apiVersion, kind, metadata, spec); skipped")
		return nil
	}
	kind := str(get(root, "kind"))
	if items := get(root, "items"); items != nil && strings.HasSuffix(kind, "List") {
		if items.Kind != yaml.SequenceNode {
			t.problemf(file, items, "%s: items must be a list of objects; skipped", kind)
			return nil
		}
		var docs []*document
		for _, it := range items.Content {
			docs = append(docs, t.items(file, it)...)
		}
		return docs
	}
	return []*document{{file: file, root: root}}
}

// checkPlain reports aliases, merge keys and repeated keys under n, and
// whether it found any.
func (t *translator) checkPlain(file string, n *yaml.Node) bool {
	bad := false
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		switch n.Kind {
		case yaml.AliasNode:
			t.problemf(file, n, "YAML alias *%s: imported manifests must spell every value out (as kubectl get -o yaml does); document skipped", n.Value)
			bad = true
			return
		case yaml.MappingNode:
			seen := map[string]bool{}
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i]
				if k.Kind == yaml.ScalarNode {
					if k.Value == "<<" && k.Tag == "!!merge" {
						t.problemf(file, k, "YAML merge key <<: write the keys out; document skipped")
						bad = true
					} else if seen[k.Value] {
						t.problemf(file, k, "key %q is repeated; keep one (which one Kubernetes keeps is not what a reader sees); document skipped", k.Value)
						bad = true
					}
					seen[k.Value] = true
				}
			}
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(n)
	return bad
}

// yamlLine matches the line yaml.v3 puts in its syntax errors.
var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// yamlMessage splits a yaml.v3 error into its line (0 if none) and message.
func yamlMessage(err error) (int, string) {
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		if n, err := strconv.Atoi(m[1]); err == nil {
			return n, m[2]
		}
	}
	return 0, strings.TrimPrefix(msg, "yaml: ")
}

// problemf records a problem at n (nil: the file as a whole).
func (t *translator) problemf(file string, n *yaml.Node, format string, args ...any) {
	p := Problem{File: file, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		p.Line, p.Col = n.Line, n.Column
	}
	t.problems = append(t.problems, p)
}

// problem records a problem at n in o, prefixed with o's label.
func (t *translator) problem(o *object, n *yaml.Node, format string, args ...any) {
	if n == nil {
		n = o.doc.root
	}
	t.problemf(o.doc.file, n, "%s: %s", o.label(), fmt.Sprintf(format, args...))
}

// problemAt records a problem at a byte offset within scalar n, so a
// report can point at the '*' inside a name rather than at its start.
func (t *translator) problemAt(o *object, n *yaml.Node, off int, format string, args ...any) {
	p := *n
	if !strings.Contains(n.Value, "\n") {
		p.Column += off
		if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 {
			p.Column++
		}
	}
	t.problem(o, &p, format, args...)
}

// get returns the value of key in mapping n, or nil.
func get(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// keyNode returns the key node of key in mapping n, or nil: problems about
// a key point at the key.
func keyNode(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i]
		}
	}
	return nil
}

// pairs calls f for each key and value of mapping n, in order.
func pairs(n *yaml.Node, f func(k, v *yaml.Node)) {
	if n == nil || n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		f(n.Content[i], n.Content[i+1])
	}
}

// unknownKeys returns the keys of mapping n that are not in known.
func unknownKeys(n *yaml.Node, known ...string) []*yaml.Node {
	var out []*yaml.Node
	pairs(n, func(k, _ *yaml.Node) {
		for _, s := range known {
			if k.Value == s {
				return
			}
		}
		out = append(out, k)
	})
	return out
}

// str returns the value of scalar n, or "" for anything else.
func str(n *yaml.Node) string {
	if n == nil || n.Kind != yaml.ScalarNode || isNull(n) {
		return ""
	}
	return n.Value
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

// absent reports whether n is missing or null.
func absent(n *yaml.Node) bool { return n == nil || isNull(n) }

// list returns the items of sequence n; a missing or null n is empty. ok
// is false when n is something else.
func list(n *yaml.Node) (items []*yaml.Node, ok bool) {
	if absent(n) {
		return nil, true
	}
	if n.Kind != yaml.SequenceNode {
		return nil, false
	}
	return n.Content, true
}

// identify reads the object's kind and metadata; namespaced objects
// without a namespace get the default one. An object without a valid name
// is reported and not translated.
func (t *translator) identify(doc *document, namespaced bool) (*object, bool) {
	o := &object{doc: doc, apiVersion: str(get(doc.root, "apiVersion")), kind: str(get(doc.root, "kind"))}
	meta := get(doc.root, "metadata")
	o.name = str(get(meta, "name"))
	if !validName(o.name) {
		t.problemf(doc.file, doc.root, "%s: metadata.name %q is not a Kubernetes object name; not translated", o.kind, o.name)
		return nil, false
	}
	if namespaced {
		o.namespace = str(get(meta, "namespace"))
		if o.namespace == "" {
			o.namespace = t.opts.Namespace
		}
		if !validNamespace(o.namespace) {
			t.problemf(doc.file, doc.root, "%s %s: namespace %q is not a namespace name; not translated", o.kind, o.name, o.namespace)
			return nil, false
		}
	}
	// A cluster holds one object of a kind and name per namespace: the
	// same one given twice (a file and kubectl's output of it) would
	// otherwise become two groups and twice the rules.
	if first, dup := t.seen[o.label()]; dup {
		t.problem(o, doc.root, "read already at %s; this copy is not translated", first)
		return nil, false
	}
	t.seen[o.label()] = o.owner()
	return o, true
}

// spec returns the object's spec, or reports that it is not a mapping.
func (t *translator) spec(o *object) (*yaml.Node, bool) {
	spec := get(o.doc.root, "spec")
	if spec == nil || spec.Kind != yaml.MappingNode {
		t.problem(o, spec, "spec must be a mapping; not translated")
		return nil, false
	}
	return spec, true
}

// baseName is what the object's groups and rules are named after:
// namespace-name, or name for cluster-scoped objects.
func (o *object) baseName() string {
	if o.namespace == "" {
		return o.name
	}
	return o.namespace + "-" + o.name
}

// owner identifies the object among all inputs.
func (o *object) owner() string {
	return fmt.Sprintf("%s:%d:%d", o.doc.file, o.doc.root.Line, o.doc.root.Column)
}

// origin is the comment that says where a group or rule came from.
func (t *translator) origin(o *object, n *yaml.Node, path string) string {
	return fmt.Sprintf("%s:%d:%d: %s %s", o.doc.file, n.Line, n.Column, o.label(), path)
}

// kinds maps the kinds import reads to their dialect, so a file given to
// the wrong dialect gets a useful message.
var kinds = map[string]Dialect{
	"CiliumNetworkPolicy":            Cilium,
	"CiliumClusterwideNetworkPolicy": Cilium,
	"GlobalNetworkPolicy":            Calico,
	"NetworkSet":                     Calico,
	"GlobalNetworkSet":               Calico,
	"ClusterNetworkPolicy":           NPEP,
	"AdminNetworkPolicy":             NPEP,
	"BaselineAdminNetworkPolicy":     NPEP,
}

// otherKind reports a document that is not one of the dialect's kinds.
func (t *translator) otherKind(doc *document, kind, want string) {
	n := get(doc.root, "kind")
	if n == nil {
		n = doc.root
	}
	if d, ok := kinds[kind]; ok && d != t.dialect {
		t.problemf(doc.file, n, "kind %s is read by \"fqdngate import %s\", not %s; skipped", kind, d, t.dialect)
		return
	}
	if kind == "NetworkPolicy" && strings.HasPrefix(str(get(doc.root, "apiVersion")), "projectcalico.org/") && t.dialect != Calico {
		t.problemf(doc.file, n, "kind NetworkPolicy of projectcalico.org is read by \"fqdngate import calico\", not %s; skipped", t.dialect)
		return
	}
	if kind == "" {
		kind = "(none)"
	}
	t.problemf(doc.file, n, "kind %s is not one import %s reads (%s); skipped", kind, t.dialect, want)
}

// validName reports whether s is a Kubernetes object name (a DNS
// subdomain).
func validName(s string) bool { return len(s) <= 253 && dnsSub.MatchString(s) }
