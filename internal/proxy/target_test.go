package proxy

import (
	"bufio"
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

var targetCases = []struct {
	name, in string
	def      uint16
	wantName string // set for names
	wantAddr string // set for addresses
	wantPort uint16
	wantErr  bool
}{
	{"name", "api.example.com:443", 0, "api.example.com", "", 443, false},
	{"name upper case trailing dot", "API.Example.COM.:443", 0, "api.example.com", "", 443, false},
	{"name default port", "example.com", 80, "example.com", "", 80, false},
	{"name missing port", "example.com", 0, "", "", 0, true},
	{"dotted quad", "203.0.113.7:443", 0, "", "203.0.113.7", 443, false},
	{"decimal", "3405803783:443", 0, "", "203.0.113.7", 443, false},
	{"octal", "0313.0.0.1:443", 0, "", "203.0.0.1", 443, false},
	{"hex parts", "0xcb.0.0x71.7:443", 0, "", "203.0.113.7", 443, false},
	{"hex whole", "0xCB007107:443", 0, "", "203.0.113.7", 443, false},
	{"short form", "127.1:80", 0, "", "127.0.0.1", 80, false},
	{"three parts", "10.1.257:80", 0, "", "10.1.1.1", 80, false},
	{"trailing dot", "127.0.0.1.:80", 0, "", "127.0.0.1", 80, false},
	{"trailing dots", "127.1..:80", 0, "", "127.0.0.1", 80, false},
	{"bare 0x", "0x:80", 0, "", "0.0.0.0", 80, false},
	{"zero", "0:80", 0, "", "0.0.0.0", 80, false},
	{"leading zeros octal", "0177.0000.0000.0001:80", 0, "", "127.0.0.1", 80, false},
	{"bracketed v6", "[2001:db8::1]:443", 0, "", "2001:db8::1", 443, false},
	{"bracketed loopback", "[::1]:443", 0, "", "::1", 443, false},
	{"mapped v6", "[::ffff:127.0.0.1]:443", 0, "", "127.0.0.1", 443, false},
	{"mapped v6 hex", "[::ffff:7f00:1]:443", 0, "", "127.0.0.1", 443, false},
	{"nat64 stays v6", "[64:ff9b::7f00:1]:443", 0, "", "64:ff9b::7f00:1", 443, false},
	{"bracketed default port", "[::1]", 80, "", "::1", 80, false},
	{"unbracketed v6", "::1:443", 0, "", "", 0, true},
	{"zone", "[fe80::1%eth0]:443", 0, "", "", 0, true},
	{"v4 in brackets", "[127.0.0.1]:443", 0, "", "", 0, true},
	{"octet overflow", "256.0.0.1:80", 0, "", "", 0, true},
	{"whole overflow", "4294967296:80", 0, "", "", 0, true},
	{"bad octal digit", "08.0.0.1:80", 0, "", "", 0, true},
	{"five parts", "1.2.3.4.5:80", 0, "", "", 0, true},
	{"numeric last label", "example.123:80", 0, "", "", 0, true},
	{"hex last label", "example.0x7f:80", 0, "", "", 0, true},
	{"empty part", "127..1:80", 0, "", "", 0, true},
	{"numeric first label is a name", "1password.com:443", 0, "1password.com", "", 443, false},
	{"digits inside name", "123.example.com:443", 0, "123.example.com", "", 443, false},
	{"port zero", "example.com:0", 0, "", "", 0, true},
	{"port too big", "example.com:65536", 0, "", "", 0, true},
	{"port sign", "example.com:+443", 0, "", "", 0, true},
	{"port empty", "example.com:", 0, "", "", 0, true},
	{"empty", "", 0, "", "", 0, true},
	{"bad name", "exa mple.com:443", 0, "", "", 0, true},
	{"full-width digits", "１２７.０.０.１:80", 0, "", "127.0.0.1", 80, false},
	{"superscript digit", "⁹:80", 0, "", "0.0.0.9", 80, false},
	{"ideographic dots", "127。0。0。1:80", 0, "", "127.0.0.1", 80, false},
	{"unicode name", "bücher.example:443", 0, "xn--bcher-kva.example", "", 443, false},
	{"junk after bracket", "[::1]x:443", 0, "", "", 0, true},
}

func TestParseTarget(t *testing.T) {
	for _, tc := range targetCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseTarget(tc.in, tc.def)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("parseTarget(%q) = %+v, want an error", tc.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseTarget(%q): %v", tc.in, err)
			}
			if string(got.Name) != tc.wantName {
				t.Errorf("parseTarget(%q) name: got %q, want %q", tc.in, got.Name, tc.wantName)
			}
			var want netip.Addr
			if tc.wantAddr != "" {
				want = netip.MustParseAddr(tc.wantAddr)
			}
			if got.Addr != want {
				t.Errorf("parseTarget(%q) addr: got %v, want %v", tc.in, got.Addr, want)
			}
			if got.Port != tc.wantPort {
				t.Errorf("parseTarget(%q) port: got %d, want %d", tc.in, got.Port, tc.wantPort)
			}
		})
	}
}

// FuzzParseTarget checks the parser's invariants: exactly one of name and
// address, a non-zero port, and no name that some parser would read as an
// IPv4 address.
func FuzzParseTarget(f *testing.F) {
	for _, tc := range targetCases {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseTarget(s, 80)
		if err != nil {
			return
		}
		if (got.Name == "") == !got.Addr.IsValid() {
			t.Fatalf("parseTarget(%q) = %+v: want exactly one of name and address", s, got)
		}
		if got.Port == 0 {
			t.Fatalf("parseTarget(%q): port 0", s)
		}
		if got.Name != "" {
			if _, ok := parseIPv4Loose(string(got.Name)); ok {
				t.Fatalf("parseTarget(%q): name %q is an IPv4 spelling", s, got.Name)
			}
			if _, err := netip.ParseAddr(string(got.Name)); err == nil {
				t.Fatalf("parseTarget(%q): name %q is an address", s, got.Name)
			}
		}
		if got.Addr.Is4In6() || got.Addr.Zone() != "" {
			t.Fatalf("parseTarget(%q): address %v not canonical", s, got.Addr)
		}
	})
}

// FuzzParseIPv4Loose cross-checks the inet_aton parser against netip for
// dotted quads, which both must read the same.
func FuzzParseIPv4Loose(f *testing.F) {
	for _, tc := range targetCases {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, ok := parseIPv4Loose(s)
		if ok && !a.Is4() {
			t.Fatalf("parseIPv4Loose(%q) = %v, not IPv4", s, a)
		}
		if want, err := netip.ParseAddr(s); err == nil && want.Is4() {
			if !ok || a != want {
				t.Fatalf("parseIPv4Loose(%q) = %v, %v; want %v", s, a, ok, want)
			}
		}
	})
}

// FuzzRequestHead runs request heads through net/http's request parser and
// requestTarget, the path every explicit request takes before a decision.
func FuzzRequestHead(f *testing.F) {
	for _, tc := range targetCases {
		f.Add("CONNECT " + tc.in + " HTTP/1.1\r\nHost: " + tc.in + "\r\n\r\n")
		f.Add("GET http://" + tc.in + "/path HTTP/1.1\r\nHost: other.example\r\n\r\n")
	}
	f.Add("GET /relative HTTP/1.1\r\nHost: example.com\r\n\r\n")
	f.Add("GET https://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
	f.Add("CONNECT example.com:443 HTTP/1.0\r\n\r\n")
	f.Fuzz(func(t *testing.T, head string) {
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(head)))
		if err != nil {
			return
		}
		got, err := requestTarget(r)
		if err != nil {
			return
		}
		if (got.Name == "") == !got.Addr.IsValid() || got.Port == 0 {
			t.Fatalf("requestTarget(%q) = %+v: want one of name and address, and a port", head, got)
		}
		if r.Method != http.MethodConnect && r.URL.Scheme != "http" {
			t.Fatalf("requestTarget(%q) accepted scheme %q", head, r.URL.Scheme)
		}
	})
}
