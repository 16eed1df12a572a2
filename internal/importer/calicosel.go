package importer

import (
	"fmt"
	"strings"
)

// A Calico selector, in the subset import translates:
//
//	all()   ""   has(k)   k == 'v'   k in {'a', 'b'}   joined by &&
//
// Anything else (||, !, !=, not in, starts with, ends with, contains,
// parentheses, global()) is refused with the offset it starts at: a
// selector read in part would select something else.
type calicoReq struct {
	key    string
	op     string // "==", "has", "in"
	values []string
	off    int // byte offset of the requirement in the selector
}

type selError struct {
	off int
	msg string
}

func (e *selError) Error() string { return e.msg }

// parseCalicoSelector parses s. An empty result selects everything.
func parseCalicoSelector(s string) ([]calicoReq, error) {
	p := &selParser{s: s}
	p.skip()
	if p.pos == len(s) {
		return nil, nil
	}
	var reqs []calicoReq
	for {
		r, all, err := p.term()
		if err != nil {
			return nil, err
		}
		if !all {
			reqs = append(reqs, r)
		}
		p.skip()
		if p.pos == len(s) {
			return reqs, nil
		}
		if !strings.HasPrefix(s[p.pos:], "&&") {
			return nil, p.unsupported()
		}
		p.pos += 2
		p.skip()
	}
}

type selParser struct {
	s   string
	pos int
}

func (p *selParser) skip() {
	for p.pos < len(p.s) && (p.s[p.pos] == ' ' || p.s[p.pos] == '\t' || p.s[p.pos] == '\n' || p.s[p.pos] == '\r') {
		p.pos++
	}
}

func (p *selParser) unsupported() error {
	rest := p.s[p.pos:]
	what := rest
	if len(what) > 20 {
		what = what[:20] + "..."
	}
	msg := fmt.Sprintf("selector %q: %q is not a form import translates (has(k), k == 'v', k in {...}, all(), joined by &&)", p.s, what)
	switch {
	case strings.HasPrefix(rest, "||"):
		msg += "; || selects the union of two sets, which one source group cannot; split the policy per alternative"
	case strings.HasPrefix(rest, "global()"):
		msg += "; global() selects non-namespaced resources, not pods"
	}
	return &selError{p.pos, msg}
}

func isKeyByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '/' || c == '-'
}

func (p *selParser) word() string {
	start := p.pos
	for p.pos < len(p.s) && isKeyByte(p.s[p.pos]) {
		p.pos++
	}
	return p.s[start:p.pos]
}

func (p *selParser) lit(l string) bool {
	p.skip()
	if strings.HasPrefix(p.s[p.pos:], l) {
		p.pos += len(l)
		return true
	}
	return false
}

func (p *selParser) str() (string, bool) {
	p.skip()
	if p.pos >= len(p.s) || (p.s[p.pos] != '\'' && p.s[p.pos] != '"') {
		return "", false
	}
	q := p.s[p.pos]
	end := strings.IndexByte(p.s[p.pos+1:], q)
	if end < 0 {
		return "", false
	}
	v := p.s[p.pos+1 : p.pos+1+end]
	p.pos += end + 2
	return v, true
}

// term parses one requirement; all is true for all().
func (p *selParser) term() (r calicoReq, all bool, err error) {
	start := p.pos
	w := p.word()
	r.off = start
	switch {
	case w == "all" && p.lit("(") && p.lit(")"):
		return r, true, nil
	case w == "has" && p.lit("("):
		p.skip()
		r.key, r.op = p.word(), "has"
		if r.key != "" && p.lit(")") {
			return r, false, nil
		}
	case w != "" && w != "has" && w != "all" && w != "global":
		r.key = w
		p.skip()
		switch {
		case p.lit("=="):
			r.op = "=="
			if v, ok := p.str(); ok {
				r.values = []string{v}
				return r, false, nil
			}
		case strings.HasPrefix(p.s[p.pos:], "in") && p.pos+2 < len(p.s) && !isKeyByte(p.s[p.pos+2]):
			p.pos += 2
			r.op = "in"
			if !p.lit("{") {
				break
			}
			for {
				v, ok := p.str()
				if !ok {
					break
				}
				r.values = append(r.values, v)
				if p.lit("}") {
					return r, false, nil
				}
				if !p.lit(",") {
					break
				}
			}
		}
	}
	p.pos = start
	return r, false, p.unsupported()
}

// matchesLabels reports whether labels satisfy every requirement.
func matchesLabels(reqs []calicoReq, labels map[string]string) bool {
	for _, r := range reqs {
		v, ok := labels[r.key]
		switch r.op {
		case "has":
			if !ok {
				return false
			}
		case "==", "in":
			if !ok || !contains(r.values, v) {
				return false
			}
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
