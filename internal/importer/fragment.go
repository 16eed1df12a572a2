package importer

import (
	"fmt"
	"hash/fnv"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// selector is a Kubernetes label selector (matchLabels, matchExpressions).
// The zero value selects everything.
type selector struct {
	labels []label // sorted by key, keys unique
	exprs  []expr  // in input order
}

type label struct {
	key, value string
	at         *yaml.Node // where the input says it, for problems
}

type expr struct {
	key, op string // op: In, NotIn, Exists, DoesNotExist
	values  []string
	at      *yaml.Node
}

// addLabel adds an equality; a second one on the same key becomes an In
// requirement, so both must hold, as in the input.
func (s *selector) addLabel(l label) {
	for _, m := range s.labels {
		if m.key == l.key {
			if m.value != l.value {
				s.exprs = append(s.exprs, expr{key: l.key, op: "In", values: []string{l.value}, at: l.at})
			}
			return
		}
	}
	s.labels = append(s.labels, l)
	sort.Slice(s.labels, func(i, j int) bool { return s.labels[i].key < s.labels[j].key })
}

// group is a source group selecting pods: the agreed kubernetes source
// shape (namespaces, namespace_selector, pod_selector).
type group struct {
	name       string
	namespaces []string  // nil: any namespace
	nsSel      *selector // nil: absent
	podSel     *selector // nil: absent
	origin     string    // "file:line:col: what" for the comment
	used       bool
}

// canon is the group's content as one string, to share one group between
// the parts of one object that select the same pods.
func (g *group) canon() string {
	var b strings.Builder
	writeGroupBody(&b, g, "")
	return b.String()
}

// rule is one fqdngate rule.
type rule struct {
	name   string
	from   *group
	to     []string // fqdngate patterns, in input order, unique
	ports  []policy.PortRange
	origin string
}

func (r *rule) addName(p string) {
	for _, q := range r.to {
		if q == p {
			return
		}
	}
	r.to = append(r.to, p)
}

// fragment is the translation's output, built in input order.
type fragment struct {
	groups     []*group
	groupNames map[string]bool
	byOwner    map[string]*group // owner + canon → group
	rules      []*rule
	ruleNames  map[string]bool
}

func newFragment() *fragment {
	return &fragment{groupNames: map[string]bool{}, byOwner: map[string]*group{}, ruleNames: map[string]bool{}}
}

// group returns the group of owner (an input object) with g's content,
// adding g, named after base, if owner has none yet. Distinct groups with
// one base get -2, -3, ... so names stay unique and deterministic.
func (f *fragment) group(owner, base string, g *group) *group {
	key := owner + "\x00" + g.canon()
	if old := f.byOwner[key]; old != nil {
		return old
	}
	g.name = unique(sanitize(base), f.groupNames, 0)
	f.groups = append(f.groups, g)
	f.byOwner[key] = g
	return g
}

// addRule adds r, named after base, if it allows anything. It returns
// whether r was added.
func (f *fragment) addRule(base string, r *rule) bool {
	if len(r.to) == 0 || len(r.ports) == 0 {
		return false
	}
	r.name = unique(sanitize(base), f.ruleNames, maxRuleName)
	r.from.used = true
	r.ports = normalizePorts(r.ports)
	f.rules = append(f.rules, r)
	return true
}

func (f *fragment) usedGroups() []*group {
	var out []*group
	for _, g := range f.groups {
		if g.used {
			out = append(out, g)
		}
	}
	return out
}

// maxRuleName is the longest rule name the policy accepts.
const maxRuleName = 63

// sanitize turns a Kubernetes name into a group or rule name: letters,
// digits, '_', '.', '-', starting with a letter or digit.
func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			b[i] = '-'
		}
	}
	s = strings.TrimLeft(string(b), "_.-")
	if s == "" {
		s = "imported"
	}
	return s
}

// unique returns base, or base-2, base-3, ..., whichever is not in taken,
// and takes it. With max > 0 names longer than max are shortened, keeping
// a hash of the whole so two long names stay apart.
func unique(base string, taken map[string]bool, max int) string {
	for i := 1; ; i++ {
		suffix := ""
		if i > 1 {
			suffix = "-" + strconv.Itoa(i)
		}
		name := shorten(base, max-len(suffix)) + suffix
		if max <= 0 {
			name = base + suffix
		}
		if !taken[name] {
			taken[name] = true
			return name
		}
	}
}

func shorten(s string, max int) string {
	if max <= 0 || len(s) <= max {
		return s
	}
	h := fnv.New32a()
	h.Write([]byte(s))
	tag := fmt.Sprintf("-%08x", h.Sum32())
	return strings.TrimRight(s[:max-len(tag)], "_.-") + tag
}

// allPorts is what a rule without port restrictions allows: every TCP and
// UDP port (fqdngate rules cover no other protocol, which only narrows).
func allPorts() []policy.PortRange {
	return []policy.PortRange{{Proto: policy.TCP, Lo: 1, Hi: 65535}, {Proto: policy.UDP, Lo: 1, Hi: 65535}}
}

// normalizePorts sorts ports (TCP first, then by range) and drops
// duplicates and ranges another one covers.
func normalizePorts(ps []policy.PortRange) []policy.PortRange {
	sort.Slice(ps, func(i, j int) bool {
		a, b := ps[i], ps[j]
		if a.Proto != b.Proto {
			return a.Proto < b.Proto
		}
		if a.Lo != b.Lo {
			return a.Lo < b.Lo
		}
		return a.Hi > b.Hi
	})
	var out []policy.PortRange
	for _, p := range ps {
		if n := len(out); n > 0 && out[n-1].Proto == p.Proto && out[n-1].Lo <= p.Lo && out[n-1].Hi >= p.Hi {
			continue
		}
		out = append(out, p)
	}
	return out
}

func formatPort(p policy.PortRange) string {
	s := strconv.Itoa(int(p.Lo))
	if p.Hi != p.Lo {
		s += "-" + strconv.Itoa(int(p.Hi))
	}
	if p.Proto == policy.UDP {
		s += "/udp"
	}
	return s
}
