package dnsname

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	long63 := strings.Repeat("a", 63)
	// 4 labels of 63 plus 3 dots is 255; trim to exactly 253.
	max := long63 + "." + long63 + "." + long63 + "." + strings.Repeat("a", 61)
	tests := []struct {
		name, in, want string
		wantErr        string // substring; empty means success
	}{
		{"lower", "example.com", "example.com", ""},
		{"upper folded", "ExAmPlE.COM", "example.com", ""},
		{"trailing dot ignored", "example.com.", "example.com", ""},
		{"single label", "localhost", "localhost", ""},
		{"underscore service label", "_acme-challenge.example.com", "_acme-challenge.example.com", ""},
		{"digits", "1password.com", "1password.com", ""},
		{"idn unicode to punycode", "bücher.example", "xn--bcher-kva.example", ""},
		{"idn upper unicode folded", "BÜCHER.example", "xn--bcher-kva.example", ""},
		{"idn already punycode", "xn--bcher-kva.example", "xn--bcher-kva.example", ""},
		{"idn ideographic full stop", "bücher。example", "xn--bcher-kva.example", ""},
		{"63-byte label", long63 + ".com", long63 + ".com", ""},
		{"253 bytes", max, max, ""},
		{"253 bytes plus trailing dot", max + ".", max, ""},
		{"empty", "", "", "empty name"},
		{"only dot", ".", "", "empty name"},
		{"two trailing dots", "example.com..", "", "empty label"},
		{"leading dot", ".example.com", "", "empty label"},
		{"empty middle label", "a..com", "", "empty label"},
		{"64-byte label", strings.Repeat("a", 64) + ".com", "", "limit is 63"},
		{"254 bytes", max + "a", "", "limit is 253"},
		{"space", "exa mple.com", "", "invalid character"},
		{"star", "*.example.com", "", "invalid character"},
		{"colon", "example.com:443", "", "invalid character"},
		{"slash", "example.com/x", "", "invalid character"},
		{"leading hyphen", "-a.example.com", "", "hyphen"},
		{"trailing hyphen", "a-.example.com", "", "hyphen"},
		{"bad idn", "a\u0000b.example", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if tt.name == "bad idn" {
				if err == nil {
					t.Fatalf("Parse(%q) = %q, want an error", tt.in, got)
				}
				return
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse(%q) = %q, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if string(got) != tt.want {
				t.Errorf("Parse(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseIsIdempotent(t *testing.T) {
	for _, in := range []string{"Example.COM.", "bücher.example", "_dmarc.EXAMPLE.org"} {
		n, err := Parse(in)
		if err != nil {
			t.Fatalf("Parse(%q): %v", in, err)
		}
		again, err := Parse(string(n))
		if err != nil || again != n {
			t.Errorf("Parse(Parse(%q)) = %q, %v; want %q", in, again, err, n)
		}
	}
}

func TestLabels(t *testing.T) {
	tests := []struct {
		in   Name
		want int
	}{
		{"com", 1},
		{"example.com", 2},
		{"a.b.c.example.com", 5},
	}
	for _, tt := range tests {
		if got := tt.in.Labels(); got != tt.want {
			t.Errorf("Name(%q).Labels() = %d, want %d", tt.in, got, tt.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"example.com", "ExAmPlE.COM.", "bücher.example", "a..b", "-a.b", "xn--bcher-kva.example", "。"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := Parse(s)
		if err != nil {
			return
		}
		if err := Check(string(n)); err != nil {
			t.Fatalf("Parse(%q) = %q, which Check rejects: %v", s, n, err)
		}
		if again, err := Parse(string(n)); err != nil || again != n {
			t.Fatalf("Parse(%q) = %q, but Parse(%q) = %q, %v", s, n, n, again, err)
		}
	})
}

func TestEqualFold(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"www.Example.COM.", "www.example.com.", true},
		{"www.example.com.", "www.example.com", false},
		{"\\200.example.", "\\200.example.", true},
		{"k.example.", "\u212a.example.", false}, // Kelvin sign folds to k in Unicode, not in DNS
		{"a.", "b.", false},
	}
	for _, tt := range tests {
		if got := EqualFold(tt.a, tt.b); got != tt.want {
			t.Errorf("EqualFold(%q, %q): got %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}
