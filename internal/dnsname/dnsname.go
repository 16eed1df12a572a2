// Package dnsname holds the canonical form of a DNS host name: lower-case
// ASCII (IDNs in punycode), no trailing dot, validated once.
package dnsname

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/net/idna"
)

// MaxLen is the longest host name in presentation form without the trailing
// dot (RFC 1035: 255 octets on the wire).
const MaxLen = 253

// Name is a validated, canonical host name. The zero value is not a valid
// name; obtain one from Parse.
type Name string

func (n Name) String() string { return string(n) }

// Labels returns the number of labels in n.
func (n Name) Labels() int { return strings.Count(string(n), ".") + 1 }

var profile = idna.New(idna.MapForLookup(), idna.Transitional(false), idna.StrictDomainName(false))

// Parse validates s as a host name and returns its canonical form. Case is
// folded, one trailing dot is ignored, and Unicode names are converted to
// their ASCII (punycode) form. Underscores are allowed because service
// names (_acme-challenge, _dmarc) use them.
func Parse(s string) (Name, error) {
	s = strings.TrimSuffix(s, ".")
	if s == "" {
		return "", errors.New("empty name")
	}
	if !isASCII(s) {
		a, err := profile.ToASCII(s)
		if err != nil {
			return "", fmt.Errorf("invalid internationalized name %q: %v", s, err)
		}
		s = a
	}
	s = strings.ToLower(s)
	if err := Check(s); err != nil {
		return "", err
	}
	return Name(s), nil
}

// Check reports whether s, already lower-case ASCII without a trailing dot,
// is a syntactically valid host name.
func Check(s string) error {
	if len(s) > MaxLen {
		return fmt.Errorf("name is %d characters long; the limit is %d", len(s), MaxLen)
	}
	start := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) && s[i] != '.' {
			c := s[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("invalid character %q in name %q", c, s)
			}
			continue
		}
		l := i - start
		if l == 0 {
			return fmt.Errorf("empty label in name %q", s)
		}
		if l > 63 {
			return fmt.Errorf("label %q is %d characters long; the limit is 63", s[start:i], l)
		}
		if s[start] == '-' || s[i-1] == '-' {
			return fmt.Errorf("label %q starts or ends with a hyphen", s[start:i])
		}
		start = i + 1
	}
	return nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// EqualFold compares names the way DNS does: ASCII letters in any case,
// every other byte exactly (strings.EqualFold would also fold Unicode).
func EqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
