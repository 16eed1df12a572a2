package policy

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// decoder walks yaml.v3 nodes so every value keeps its position, and
// collects every problem instead of stopping at the first.
type decoder struct {
	file string // the file errors name when their node has no origin
	// files are the sources being decoded, in the order their errors
	// are listed; origin maps each node of a composed policy to its
	// source (nil for one file).
	files      []string
	origin     map[*yaml.Node]string
	clusterKey *yaml.Node // the local file's cluster key, when composing
	noShared   bool       // a fleet gateway's local file without a shared half
	errs       ErrorList
	// aliasBudget bounds the work YAML aliases can cause: each expansion
	// costs the size of what it expands, so a small file of aliases of
	// aliases cannot make the loader walk billions of nodes.
	aliasBudget int
	truncated   bool // more than maxErrors problems were found
	// ruleFields decode a rule's keys into rw, the rule being decoded.
	ruleFields []field
	rw         *wireRule
	// lazy holds the rules sequences fastyaml left unread, by their node.
	lazy map[*yaml.Node]lazyRules
	// outside is set when a lazy sequence turned out to be beyond
	// fastyaml: the parse is thrown away and done again with yaml.v3.
	outside bool
}

// maxErrors bounds an ErrorList: past a hundred, more messages help nobody
// and a generated or hostile file could otherwise produce millions.
const maxErrors = 100

const maxAliasWork = 1_000_000

// deref follows an alias (*name) to the node its anchor (&name) labels.
// On an exhausted budget it reports once and returns a null node, which
// every decoder treats as absent.
func (d *decoder) deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		d.aliasBudget += 1 + len(n.Alias.Content)
		if d.aliasBudget > maxAliasWork {
			if d.aliasBudget-1-len(n.Alias.Content) <= maxAliasWork {
				d.errorf(n, "YAML aliases expand to too much; write the values out")
			}
			return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null"}
		}
		n = n.Alias
	}
	return n
}

func (d *decoder) errorf(n *yaml.Node, format string, args ...any) {
	if len(d.errs) >= maxErrors {
		d.truncated = true
		return
	}
	e := &Error{File: d.fileOf(n), Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Col = n.Line, n.Column
	}
	d.errs = append(d.errs, e)
}

// field is one key of a mapping with the function that decodes its value.
type field struct {
	key    string
	decode func(v *yaml.Node)
}

// mapping decodes n as a mapping with exactly the given keys: unknown and
// repeated keys are errors; path names the mapping in messages.
func (d *decoder) mapping(n *yaml.Node, path string, fields ...field) {
	n = d.deref(n)
	if n.Kind != yaml.MappingNode {
		if isNull(n) {
			return
		}
		d.errorf(n, "%s must be a mapping of keys to values", pathOr(path))
		return
	}
	var seen uint64 // bit j: fields[j] was set (no mapping has 64 keys)
	if len(fields) > 64 {
		panic("policy: decoder.mapping takes at most 64 fields")
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		var f *field
		var bit uint64
		for j := range fields {
			if fields[j].key == k.Value {
				f, bit = &fields[j], 1<<j
				break
			}
		}
		if f == nil {
			known := make([]string, len(fields))
			for j, f := range fields {
				known[j] = f.key
			}
			msg := fmt.Sprintf("unknown key %q in %s", k.Value, pathOr(path))
			if k.Value == "<<" {
				msg = "YAML merge keys (<<) are not supported in " + pathOr(path) + "; write the keys out"
			} else if s := suggest(k.Value, known); s != "" {
				msg += fmt.Sprintf("; did you mean %q?", s)
			} else {
				msg += "; valid keys are " + strings.Join(known, ", ")
			}
			d.errorf(k, "%s", msg)
			continue
		}
		if seen&bit != 0 {
			d.errorf(k, "%s is set twice in %s; keep one", k.Value, pathOr(path))
			continue
		}
		seen |= bit
		f.decode(v)
	}
}

// result returns the problems found, in file order, or nil.
func (d *decoder) result() ErrorList {
	if len(d.errs) == 0 {
		return nil
	}
	d.errs.sort(d.files)
	if d.truncated {
		d.errs = append(d.errs, &Error{File: d.file, Msg: fmt.Sprintf("too many errors; fix these %d and run fqdngate check again", maxErrors)})
	}
	return d.errs
}

func pathOr(p string) string {
	if p == "" {
		return "the policy"
	}
	return p
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

func (d *decoder) scalar(n *yaml.Node, path string) (string, bool) {
	return d.scalarAt(n, path, "")
}

// scalarAt is scalar for the value path+suffix names, joined only for a
// message: a list's items are "<path> item", and joining that for every
// item was a tenth of what a reload of 100,000 rules allocated.
func (d *decoder) scalarAt(n *yaml.Node, path, suffix string) (string, bool) {
	n = d.deref(n)
	if n.Kind != yaml.ScalarNode {
		d.errorf(n, "%s%s must be a single value, not a list or mapping", path, suffix)
		return "", false
	}
	return n.Value, true
}

func (d *decoder) str(dst *string, path string) func(*yaml.Node) {
	return func(n *yaml.Node) {
		if isNull(d.deref(n)) {
			*dst = ""
			return
		}
		if s, ok := d.scalar(n, path); ok {
			*dst = s
		}
	}
}

func (d *decoder) boolean(dst *bool, path string) func(*yaml.Node) {
	return func(n *yaml.Node) {
		s, ok := d.scalar(n, path)
		if !ok {
			return
		}
		switch strings.ToLower(s) {
		case "true", "yes", "on":
			*dst = true
		case "false", "no", "off":
			*dst = false
		default:
			d.errorf(n, "%s must be true or false, not %q", path, s)
		}
	}
}

func (d *decoder) duration(dst *time.Duration, path string) func(*yaml.Node) {
	return func(n *yaml.Node) {
		s, ok := d.scalar(n, path)
		if !ok {
			return
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			if _, nerr := strconv.Atoi(s); nerr == nil {
				d.errorf(n, "%s: %q has no unit; write it like %ss or %sm", path, s, s, s)
			} else {
				d.errorf(n, "%s: %q is not a duration; write it like 30s, 5m or 1h", path, s)
			}
			return
		}
		if v < 0 {
			d.errorf(n, "%s must not be negative", path)
			return
		}
		*dst = v
	}
}

func (d *decoder) integer(dst *int, path string, lo, hi int) func(*yaml.Node) {
	return func(n *yaml.Node) {
		s, ok := d.scalar(n, path)
		if !ok {
			return
		}
		v, err := strconv.Atoi(s)
		if err != nil || v < lo || v > hi {
			d.errorf(n, "%s must be a whole number from %d to %d, not %q", path, lo, hi, s)
			return
		}
		*dst = v
	}
}

func (d *decoder) float(dst *float64, path string) func(*yaml.Node) {
	return func(n *yaml.Node) {
		s, ok := d.scalar(n, path)
		if !ok {
			return
		}
		v, err := strconv.ParseFloat(s, 64)
		if err != nil || v < 0 {
			d.errorf(n, "%s must be a number of at least 0, not %q", path, s)
			return
		}
		*dst = v
	}
}

// list calls each for every item of a sequence; a single scalar is taken as
// a list of one, since that is what a person writing `to: example.com` means.
func (d *decoder) list(n *yaml.Node, path string, each func(*yaml.Node)) {
	n = d.deref(n)
	switch n.Kind {
	case yaml.SequenceNode:
		for _, it := range n.Content {
			each(it)
		}
	case yaml.ScalarNode:
		if !isNull(n) {
			each(n)
		}
	default:
		d.errorf(n, "%s must be a list", path)
	}
}

// positioned is a value with the node it came from, for errors found after
// decoding (undefined groups, refresh without an exact name).
type positioned struct {
	v string
	n *yaml.Node
}

func (d *decoder) positionedList(dst *[]positioned, set *bool, path string) func(*yaml.Node) {
	return func(n *yaml.Node) {
		*set = true
		*dst = (*dst)[:0] // a reused wire rule's room, or nil
		if n.Kind == yaml.SequenceNode && len(n.Content) > cap(*dst) {
			// Sized once (an alias is not followed here: deref counts
			// against the alias budget).
			*dst = make([]positioned, 0, len(n.Content))
		}
		d.list(n, path, func(it *yaml.Node) {
			if s, ok := d.scalarAt(it, path, " item"); ok {
				*dst = append(*dst, positioned{s, d.deref(it)})
			}
		})
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
