package policy

import (
	"regexp"
	"strings"
	"testing"
)

// namePattern is what validName implements by hand.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"bank-api", true},
		{"A", true},
		{"0", true},
		{"r1.v2_x-y", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{"", false},
		{"-a", false},
		{"_a", false},
		{".a", false},
		{"a b", false},
		{"a/b", false},
		{"é", false},
		{"a\n", false},
		{"a\x00", false},
	} {
		if got := validName(tc.name); got != tc.want {
			t.Errorf("validName(%q) = %v, want %v", tc.name, got, tc.want)
		}
		if got := namePattern.MatchString(tc.name); got != tc.want {
			t.Errorf("the regexp says %v for %q, the table %v", got, tc.name, tc.want)
		}
	}
}

// FuzzValidName holds validName to the regexp it replaced.
func FuzzValidName(f *testing.F) {
	for _, s := range []string{"bank-api", "-a", "", "a.b", strings.Repeat("z", 64)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := validName(s), namePattern.MatchString(s); got != want {
			t.Fatalf("validName(%q) = %v, the regexp says %v", s, got, want)
		}
	})
}
