package policy

import (
	"strings"

	"golang.org/x/net/publicsuffix"
)

// PublicSuffixWildcard reports whether p is a wildcard over a public
// suffix, which would open every tenant of a registry or hosting platform,
// and what kind of suffix its base is ("a public suffix", "a shared
// hosting suffix", "a top-level domain"). A rule needs
// allow_public_suffix: true for such a pattern.
func PublicSuffixWildcard(p Pattern) (kind string, ok bool) {
	if p.Kind == Exact {
		return "", false
	}
	ps, icann := publicsuffix.PublicSuffix(string(p.Base))
	if ps != string(p.Base) {
		return "", false
	}
	switch {
	case !icann && strings.Contains(ps, "."):
		return "a shared hosting suffix", true
	case !icann:
		return "a top-level domain", true
	}
	return "a public suffix", true
}
