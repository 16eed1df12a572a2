package policy

import (
	"bytes"
	"errors"
	"io"

	"github.com/fqdngate/fqdngate/internal/fastyaml"
	"gopkg.in/yaml.v3"
)

// Source is one policy document: its bytes and the name its errors carry
// (a file path, or a shared revision such as "shared revision 7").
type Source struct {
	Name string
	Data []byte
}

// Compose compiles a fleet gateway's policy from its two halves: local, the
// gateway's own file, which has the cluster section and the node-local keys
// (listen, firewall, log, cluster, kubernetes), and shared, the revision of the fleet's
// policy in etcd, with the keys every gateway shares (mode, dns, proxy,
// sources, inside, users, rules). A key in the wrong half is an error that
// says where it belongs. Errors are positioned in the half they are in.
//
// If shared is nil the gateway has no shared revision yet: the policy has
// the local settings and no rules, so it allows nothing.
func Compose(local Source, shared *Source) (*Policy, error) {
	return parse(local, shared, true)
}

// parse compiles local, with shared when it is a fleet gateway's policy
// (fleet). A standalone file (fleet false) may hold every key but cluster.
func parse(local Source, shared *Source, fleet bool) (*Policy, error) {
	p, err := parseWith(local, shared, fleet, true)
	if errors.Is(err, errOutside) {
		// fastyaml took the file but met YAML it does not read part-way
		// through the rules: start again, all in yaml.v3.
		p, err = parseWith(local, shared, fleet, false)
	}
	return p, err
}

// errOutside says a parse with fastyaml met YAML outside its subset after
// it had begun compiling; parse starts again with yaml.v3.
var errOutside = errors.New("policy: outside fastyaml's subset")

// parseWith is parse, reading the sources with fastyaml where it can (fast)
// or with yaml.v3 alone.
func parseWith(local Source, shared *Source, fleet, fast bool) (*Policy, error) {
	d := &decoder{file: local.Name, files: []string{local.Name}, noShared: fleet && shared == nil}
	if shared != nil {
		d.files = append(d.files, shared.Name)
		d.origin = map[*yaml.Node]string{}
	}
	top := &yaml.Node{Kind: yaml.MappingNode}
	var errs ErrorList
	localTop, lerr := d.document(local, fast)
	if lerr != nil {
		errs = append(errs, lerr)
	}
	var sharedTop *yaml.Node
	if shared != nil {
		var serr *Error
		if sharedTop, serr = d.document(*shared, fast); serr != nil {
			errs = append(errs, serr)
		}
	}
	if errs != nil {
		return nil, errs
	}
	if localTop == nil && !fleet {
		return nil, ErrorList{{File: local.Name, Msg: "the policy is empty; start from examples/quickstart.yaml"}}
	}
	if shared != nil && sharedTop == nil {
		return nil, ErrorList{{File: shared.Name, Msg: "the shared policy is empty; it needs at least rules (start from examples/quickstart.yaml, without listen, firewall and log)"}}
	}
	hasCluster := false
	d.take(top, localTop, local.Name, "the policy", func(k *yaml.Node) bool {
		switch {
		case k.Value == "cluster" && !fleet:
			d.errorf(k, "this file has a cluster section, so it is the local half of a fleet gateway's policy and its shared half (rules, sources, dns, ...) is in etcd; check the two together with fqdngate check -c %s", local.Name)
			return false
		case k.Value == "cluster":
			hasCluster = true
			d.clusterKey = k
		case fleet && isSharedKey(k.Value):
			d.errorf(k, "%s is shared by the fleet, so it belongs in the shared policy (pushed with fqdngate policy push), not in this gateway's local file", k.Value)
			return false
		}
		return true
	})
	if fleet && !hasCluster {
		return nil, ErrorList{{File: local.Name, Msg: "this file has no cluster section, so it is a standalone policy, not the local half of a fleet gateway's; add cluster: {etcd: {endpoints: [...]}} or load it on its own"}}
	}
	if shared != nil {
		d.take(top, sharedTop, shared.Name, "the shared policy", func(k *yaml.Node) bool {
			if IsLocalKey(k.Value) {
				d.errorf(k, "%s is set on each gateway, so it belongs in the gateway's local file (next to cluster), not in the shared policy", k.Value)
				return false
			}
			return true
		})
	}
	p, err := d.compile(local.Name, top)
	if err != nil {
		return nil, err
	}
	if shared != nil {
		p.SharedName = shared.Name
	}
	return p, nil
}

// document returns the top node of src, nil for an empty document. With
// fast, a document within fastyaml's subset is read by fastyaml, which
// leaves the rules to be read one at a time by compileRules (a tree of
// 100,000 rules is what made a reload slow and ten times the policy's
// size); anything else, and every error, is yaml.v3's.
func (d *decoder) document(src Source, fast bool) (*yaml.Node, *Error) {
	if fast {
		if doc, err := fastyaml.Parse(src.Data, "rules"); err == nil {
			if doc.Lazy != nil {
				if d.lazy == nil {
					d.lazy = map[*yaml.Node]lazyRules{}
				}
				d.lazy[doc.Lazy] = lazyRules{doc, src.Name, itemsHint(src.Data, doc.Lazy)}
			}
			if doc.Root == nil || isNull(doc.Root) {
				return nil, nil
			}
			return doc.Root, nil
		}
	}
	return document(src)
}

// lazyRules is a rules sequence fastyaml has not read yet, its file, and
// about how many items it has.
type lazyRules struct {
	doc  *fastyaml.Doc
	file string
	hint int
}

// itemsHint estimates how many items the block sequence seq has in data:
// the lines from its first on that start with its indentation and "- ".
// It sizes compileRules' slice and map once (grown one rule at a time,
// they were a tenth of a reload of 100,000 rules); it decides nothing, so
// a line it miscounts costs room, never meaning.
func itemsHint(data []byte, seq *yaml.Node) int {
	at := 0 // the start of seq's first line
	for line := 1; line < seq.Line; line++ {
		nl := bytes.IndexByte(data[at:], '\n')
		if nl < 0 {
			return 0
		}
		at += nl + 1
	}
	if at == 0 {
		return 0 // a sequence on the first line is no rules section
	}
	item := make([]byte, 0, seq.Column+2)
	item = append(item, '\n')
	item = append(item, bytes.Repeat([]byte{' '}, seq.Column-1)...)
	item = append(item, '-', ' ')
	// A hint sizes allocations before any rule is read: bound it, so a
	// file of a million "- " lines costs its parse, not more.
	return min(bytes.Count(data[at-1:], item), maxItemsHint)
}

// maxItemsHint bounds itemsHint: room for a million rules.
const maxItemsHint = 1 << 20

// document returns the top node of src as yaml.v3 reads it, nil for an
// empty document.
func document(src Source) (*yaml.Node, *Error) {
	var root yaml.Node
	// What yaml.Unmarshal does.
	err := yaml.NewDecoder(bytes.NewReader(src.Data)).Decode(&root)
	if errors.Is(err, io.EOF) { // no document at all
		return nil, nil
	}
	if err != nil {
		return nil, yamlError(src.Name, err)
	}
	if len(root.Content) == 0 || isNull(root.Content[0]) {
		return nil, nil
	}
	return root.Content[0], nil
}

// take appends to top the keys of the document doc that keep accepts,
// remembering which source each node came from. A document that is not a
// mapping is reported here, where its source is known.
func (d *decoder) take(top, doc *yaml.Node, file, what string, keep func(k *yaml.Node) bool) {
	if doc == nil {
		return
	}
	if d.origin != nil {
		d.mark(doc, file)
	}
	if doc.Kind != yaml.MappingNode {
		d.errorf(doc, "%s must be a mapping of keys to values", what)
		return
	}
	for i := 0; i+1 < len(doc.Content); i += 2 {
		if keep(doc.Content[i]) {
			top.Content = append(top.Content, doc.Content[i], doc.Content[i+1])
		}
	}
}

// mark records that n and everything under it came from file. Aliases
// are not followed: the nodes they point to are marked where they stand.
func (d *decoder) mark(n *yaml.Node, file string) {
	d.origin[n] = file
	for _, c := range n.Content {
		d.mark(c, file)
	}
}

// unmark forgets what mark recorded of n and everything under it.
func (d *decoder) unmark(n *yaml.Node) {
	delete(d.origin, n)
	for _, c := range n.Content {
		d.unmark(c)
	}
}

// fileOf names the source of n in messages.
func (d *decoder) fileOf(n *yaml.Node) string {
	if n != nil && d.origin != nil {
		if f, ok := d.origin[n]; ok {
			return f
		}
	}
	return d.file
}
