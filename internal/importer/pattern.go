package importer

import (
	"fmt"
	"strings"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// patternError says why a name pattern has no fqdngate equivalent; off is
// the byte offset in the input string the problem is at.
type patternError struct {
	off int
	msg string
}

func (e *patternError) Error() string { return e.msg }

// translatePattern maps a dialect's name or pattern to an fqdngate
// pattern, exactly or not at all:
//
//	input      Cilium                 Calico, NPEP
//	x.y        x.y                    x.y
//	*.x.y      *.x.y (one label)      **.x.y (one or more labels)
//	**.x.y     **.x.y                 (error)
//	*          (error: every name)    (error: every name)
//	a*.x, a.*.y (error: '*' inside a name; fqdngate has no equivalent)
//
// The result is validated as the policy validates it; a wildcard over a
// public suffix, which the policy refuses without allow_public_suffix, is
// not translated either.
func translatePattern(d Dialect, s string) (string, error) {
	if s == "*" {
		return "", &patternError{0, `"*" allows every name; fqdngate allows only what is listed, so name the domains (for example "**.example.com")`}
	}
	prefix, rest := "", s
	switch {
	case d == Cilium && strings.HasPrefix(s, "**."):
		prefix, rest = "**.", s[3:]
	case strings.HasPrefix(s, "*."):
		prefix, rest = "*.", s[2:]
		if d != Cilium {
			// Calico and the NetworkPolicy API: '*' is one or more labels.
			prefix = "**."
		}
	}
	if i := strings.IndexByte(rest, '*'); i >= 0 {
		off := len(s) - len(rest) + i
		what := "'*' inside a name"
		if labelAt(rest, i) == "*" {
			what = "'*' as a label other than the first"
		}
		return "", &patternError{off, fmt.Sprintf("%q: %s has no fqdngate equivalent (a '*' may only stand as the whole first label, as in %s); list the names, or use a leading wildcard over their common parent", s, what, wildcardForm(d))}
	}
	if strings.HasPrefix(rest, ".") || rest == "" {
		return "", &patternError{0, fmt.Sprintf("%q has no name after the wildcard", s)}
	}
	p, err := policy.ParsePattern(prefix + rest)
	if err != nil {
		return "", &patternError{0, err.Error()}
	}
	if kind, wide := policy.PublicSuffixWildcard(p); wide {
		return "", &patternError{0, fmt.Sprintf("%q opens every tenant of %s, %s, which fqdngate refuses unless the rule says allow_public_suffix: true; name the subdomains you need, or add the pattern by hand in a rule with allow_public_suffix: true if you mean it", s, p.Base, kind)}
	}
	return prefix + p.Base.String(), nil
}

// labelAt returns the label of s that holds byte i.
func labelAt(s string, i int) string {
	start := strings.LastIndexByte(s[:i], '.') + 1
	end := strings.IndexByte(s[i:], '.')
	if end < 0 {
		return s[start:]
	}
	return s[start : i+end]
}

func wildcardForm(d Dialect) string {
	if d == Cilium {
		return `"*.example.com" or "**.example.com"`
	}
	return `"*.example.com"`
}
