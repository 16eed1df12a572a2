package dnssectest

// Name order and ancestry, as the zone builder needs them (the validator
// has its own; a test helper must not lean on the code it tests).

import (
	"bytes"

	"github.com/miekg/dns"
)

// ancestors returns name and its ancestors, longest first, ending with the
// root. name must be canonical (lower case, fully qualified).
func ancestors(name string) []string {
	idx := dns.Split(name)
	out := make([]string, 0, len(idx)+1)
	for _, i := range idx {
		out = append(out, name[i:])
	}
	return append(out, ".")
}

// parent returns the name one label up; the root's parent is "".
func parent(name string) string {
	if name == "." {
		return ""
	}
	i, end := dns.NextLabel(name, 0)
	if end {
		return "."
	}
	return name[i:]
}

// isSub reports whether child is parent or below it.
func isSub(parent, child string) bool { return dns.IsSubDomain(parent, child) }

// wireLabels returns the labels of name in wire form (escapes resolved,
// lower case), root-most last; ok is false for a name that does not pack.
func wireLabels(name string) ([][]byte, bool) {
	buf := make([]byte, 256)
	n, err := dns.PackDomainName(dns.CanonicalName(name), buf, 0, nil, false)
	if err != nil {
		return nil, false
	}
	buf = buf[:n]
	var out [][]byte
	for i := 0; i < len(buf) && buf[i] != 0; {
		l := int(buf[i])
		if i+1+l > len(buf) {
			return nil, false
		}
		out = append(out, bytes.ToLower(buf[i+1:i+1+l]))
		i += 1 + l
	}
	return out, true
}

// canonicalCompare orders names as RFC 4034 section 6.1 does: by labels
// from the root down, each compared as lower-case octets, a missing label
// sorting first. Names that do not pack compare equal to everything, which
// no caller treats as a proof.
func canonicalCompare(a, b string) (int, bool) {
	la, ok1 := wireLabels(a)
	lb, ok2 := wireLabels(b)
	if !ok1 || !ok2 {
		return 0, false
	}
	for i, j := len(la)-1, len(lb)-1; ; i, j = i-1, j-1 {
		switch {
		case i < 0 && j < 0:
			return 0, true
		case i < 0:
			return -1, true
		case j < 0:
			return 1, true
		}
		if c := bytes.Compare(la[i], lb[j]); c != 0 {
			return c, true
		}
	}
}

// commonAncestor returns the longest name that is an ancestor-or-self of
// both a and b.
func commonAncestor(a, b string) string {
	for _, x := range ancestors(a) {
		if isSub(x, b) {
			return x
		}
	}
	return "."
}
