package policy

import (
	"net/netip"
	"strings"
)

// index answers Decide in time proportional to the number of labels in the
// query name, not the number of rules: a trie over reversed labels whose
// nodes list the rules (by index, ascending) that match at that depth.
type index struct {
	// nodes are the trie's nodes by the name suffix each stands for
	// ("com", "example.com", "api.example.com"); every suffix of a
	// node's is a node too, so a walk may stop at the first missing.
	// One map sized once, not a map of children per node: building
	// 100,000 rules' maps of children, growing one entry at a time, was
	// a quarter of a reload.
	nodes map[string]*node
	cidrs []cidrRule          // sorted by rule index
	names map[string]ruleSeen // every rule's, by name
}

type node struct {
	exact []ref // rules naming this node exactly (or apex of ".x")
	one   []ref // rules with *.this
	many  []ref // rules with **.this or .this
}

// ref points at one pattern of one rule.
type ref struct {
	rule, pat int32
}

type cidrRule struct {
	prefix netip.Prefix
	raw    string // prefix.String(), kept so Decide need not allocate it
	rule   int32
}

// nodeSlab hands out an index's nodes a chunk at a time: one allocation
// for many, and neighbours in memory. The nodes of an index live and die
// together, so a chunk holds nothing longer than its index does.
type nodeSlab []node

func (s *nodeSlab) new() *node {
	if len(*s) == cap(*s) {
		*s = make([]node, 0, 1024)
	}
	*s = (*s)[:len(*s)+1]
	return &(*s)[len(*s)-1]
}

// buildIndex indexes rules. names are their names as compileRules
// collected them; nil has buildIndex collect them.
func buildIndex(rules []*Rule, names map[string]ruleSeen) *index {
	if names == nil {
		names = make(map[string]ruleSeen, len(rules))
		for _, r := range rules {
			names[r.Name] = ruleSeen{index: int32(r.Index)}
		}
	}
	patterns := 0
	for _, r := range rules {
		patterns += len(r.Names)
	}
	// A pattern's base is a node of its own, most of the time, and names
	// share the suffixes above: a quarter more is room for those.
	ix := &index{nodes: make(map[string]*node, patterns+patterns/4), names: names}
	var slab nodeSlab
	for _, r := range rules {
		ri := int32(r.Index)
		for pi, p := range r.Names {
			rf := ref{ri, int32(pi)}
			base := string(p.Base)
			n := ix.nodes[base]
			if n == nil {
				n = slab.new()
				ix.nodes[base] = n
				// And the suffixes above it, up to the first that
				// is a node already (then so are all above that),
				// as substrings of Base: no allocation per label.
				for rest := base; ; {
					dot := strings.IndexByte(rest, '.')
					if dot < 0 {
						break
					}
					rest = rest[dot+1:]
					if ix.nodes[rest] != nil {
						break
					}
					ix.nodes[rest] = slab.new()
				}
			}
			switch p.Kind {
			case Exact:
				n.exact = appendOnce(n.exact, rf)
			case OneLabel:
				n.one = appendOnce(n.one, rf)
			case AnyLabels:
				n.many = appendOnce(n.many, rf)
			case ApexAndAny:
				n.exact = appendOnce(n.exact, rf)
				n.many = appendOnce(n.many, rf)
			}
		}
		for _, p := range r.Prefixes {
			ix.cidrs = append(ix.cidrs, cidrRule{p, p.String(), ri})
		}
	}
	return ix
}

// appendOnce keeps lists ascending and free of duplicates; rules are added
// in index order, so checking the last element suffices.
func appendOnce(s []ref, v ref) []ref {
	if len(s) > 0 && s[len(s)-1].rule == v.rule {
		return s
	}
	return append(s, v)
}

// nameBuf holds a lower-cased query name on the stack.
type nameBuf [256]byte

// canonical lower-cases name into buf, dropping one trailing dot. It reports
// false for names that cannot be valid (too long, empty label, bad byte), so
// the hot path needs no separate validation pass. Unicode names are not
// accepted here: DNS carries punycode, and the proxy converts first.
func canonical(buf *nameBuf, name string) ([]byte, bool) {
	if len(name) > 0 && name[len(name)-1] == '.' {
		name = name[:len(name)-1]
	}
	if len(name) == 0 || len(name) > 253 {
		return nil, false
	}
	prevDot, labelLen := true, 0
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '_':
		case c == '-':
			// dnsname.Check refuses hyphens at either end of a label; so
			// must the hot path, or a name Parse rejects could match.
			if prevDot || i+1 == len(name) || name[i+1] == '.' {
				return nil, false
			}
		case c == '.':
			if prevDot {
				return nil, false
			}
			labelLen = -1
		default:
			return nil, false
		}
		labelLen++
		if labelLen > 63 {
			return nil, false
		}
		prevDot = c == '.'
		buf[i] = c
	}
	if prevDot {
		return nil, false
	}
	return buf[:len(name)], true
}
