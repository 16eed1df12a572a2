package policy

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/fqdngate/fqdngate/internal/dnsname"
)

func TestParsePattern(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		wantKind PatternKind
		wantBase string
		wantErr  string
	}{
		{"exact", "example.com", Exact, "example.com", ""},
		{"exact folded", "Example.COM.", Exact, "example.com", ""},
		{"one label", "*.example.com", OneLabel, "example.com", ""},
		{"any labels", "**.example.com", AnyLabels, "example.com", ""},
		{"squid", ".example.com", ApexAndAny, "example.com", ""},
		{"idn", "*.bücher.example", OneLabel, "xn--bcher-kva.example", ""},
		{"single label base", "*.internal", OneLabel, "internal", ""},
		{"star in the middle", "a.*.example.com", 0, "", "'*' may only stand as the whole first label"},
		{"star in a label", "api*.example.com", 0, "", "'*' may only stand"},
		{"two stars", "*.*.example.com", 0, "", "'*' may only stand"},
		{"three stars", "***.example.com", 0, "", "'*' may only stand"},
		{"bare star", "*", 0, "", "'*' may only stand"},
		{"star with nothing after", "*.", 0, "", "empty name"},
		{"dot alone", ".", 0, "", "empty name"},
		{"empty label", "a..example.com", 0, "", "empty label"},
		{"two leading dots", "..example.com", 0, "", "empty label"},
		{"long label", strings.Repeat("a", 64) + ".com", 0, "", "limit is 63"},
		{"long name", strings.Repeat("abcdefghi.", 26) + "com", 0, "", "limit is 253"},
		{"port", "example.com:443", 0, "", "invalid character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePattern(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParsePattern(%q) = %+v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePattern(%q): %v", tt.in, err)
			}
			if got.Kind != tt.wantKind || string(got.Base) != tt.wantBase || got.Raw != tt.in {
				t.Errorf("ParsePattern(%q) = {%v %q %q}, want {%v %q %q}", tt.in, got.Kind, got.Base, got.Raw, tt.wantKind, tt.wantBase, tt.in)
			}
		})
	}
}

func TestPatternMatch(t *testing.T) {
	tests := []struct {
		pattern, name string
		want          bool
	}{
		{"example.com", "example.com", true},
		{"example.com", "www.example.com", false},
		{"example.com", "com", false},
		{"example.com", "xexample.com", false},
		{"*.example.com", "www.example.com", true},
		{"*.example.com", "example.com", false},
		{"*.example.com", "a.b.example.com", false},
		{"*.example.com", "wwwexample.com", false},
		{"*.example.com", "www.example.org", false},
		{"**.example.com", "www.example.com", true},
		{"**.example.com", "a.b.c.example.com", true},
		{"**.example.com", "example.com", false},
		{"**.example.com", "xexample.com", false},
		{".example.com", "example.com", true},
		{".example.com", "www.example.com", true},
		{".example.com", "a.b.example.com", true},
		{".example.com", "xexample.com", false},
		{".example.com", "com", false},
		{"*.bücher.example", "shop.xn--bcher-kva.example", true},
	}
	for _, tt := range tests {
		p, err := ParsePattern(tt.pattern)
		if err != nil {
			t.Fatalf("ParsePattern(%q): %v", tt.pattern, err)
		}
		n, err := dnsname.Parse(tt.name)
		if err != nil {
			t.Fatalf("dnsname.Parse(%q): %v", tt.name, err)
		}
		if got := p.Match(n); got != tt.want {
			t.Errorf("%q.Match(%q) = %v, want %v", tt.pattern, tt.name, got, tt.want)
		}
	}
}

func TestParsePortRange(t *testing.T) {
	tests := []struct {
		in      string
		want    PortRange
		wantErr string
	}{
		{"443", PortRange{443, 443, TCP}, ""},
		{"443/tcp", PortRange{443, 443, TCP}, ""},
		{"443/TCP", PortRange{443, 443, TCP}, ""},
		{"443/udp", PortRange{443, 443, UDP}, ""},
		{"8000-8100", PortRange{8000, 8100, TCP}, ""},
		{"8000-8100/udp", PortRange{8000, 8100, UDP}, ""},
		{"1-65535", PortRange{1, 65535, TCP}, ""},
		{"1", PortRange{1, 1, TCP}, ""},
		{"65535", PortRange{65535, 65535, TCP}, ""},
		{"0", PortRange{}, "out of range"},
		{"65536", PortRange{}, "out of range"},
		{"70000", PortRange{}, "out of range"},
		{"8100-8000", PortRange{}, "write the low port first, like 8000-8100"},
		{"0-10", PortRange{}, "out of range"},
		{"443/sctp", PortRange{}, "tcp or udp"},
		{"https", PortRange{}, "is not a port"},
		{"-1", PortRange{}, "is not a port"},
		{"80-", PortRange{}, "is not a port"},
		{"", PortRange{}, "is not a port"},
		{"99999999999", PortRange{}, "is not a port"},
	}
	for _, tt := range tests {
		got, err := ParsePortRange(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParsePortRange(%q) = %+v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParsePortRange(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestPortRangeContains(t *testing.T) {
	r := PortRange{8000, 8100, TCP}
	tests := []struct {
		port  uint16
		proto Proto
		want  bool
	}{
		{7999, TCP, false}, {8000, TCP, true}, {8100, TCP, true}, {8101, TCP, false}, {8050, UDP, false},
	}
	for _, tt := range tests {
		if got := r.Contains(tt.port, tt.proto); got != tt.want {
			t.Errorf("%+v.Contains(%d, %v) = %v, want %v", r, tt.port, tt.proto, got, tt.want)
		}
	}
}

func TestParseUpstream(t *testing.T) {
	tests := []struct {
		in, want string
		wantTLS  bool
		wantErr  string
	}{
		{"192.0.2.53", "192.0.2.53:53", false, ""},
		{"192.0.2.53:5353", "192.0.2.53:5353", false, ""},
		{"2001:db8::53", "[2001:db8::53]:53", false, ""},
		{"[2001:db8::53]", "[2001:db8::53]:53", false, ""},
		{"[2001:db8::53]:54", "[2001:db8::53]:54", false, ""},
		{"tls://dns.example@192.0.2.53", "tls://dns.example@192.0.2.53:853", true, ""},
		{"tls://dns.example@192.0.2.53:8853", "tls://dns.example@192.0.2.53:8853", true, ""},
		{"tls://192.0.2.53", "tls://192.0.2.53@192.0.2.53:853", true, ""},
		{"https://dns.example@192.0.2.53", "https://dns.example@192.0.2.53:443/dns-query", false, ""},
		{"https://DNS.Example.@192.0.2.53:8443/resolve", "https://dns.example@192.0.2.53:8443/resolve", false, ""},
		{"https://dns.example@[2001:db8::53]/dns-query{?dns}", "https://dns.example@[2001:db8::53]:443/dns-query{?dns}", false, ""},
		{"https://192.0.2.53/dns-query", "https://192.0.2.53@192.0.2.53:443/dns-query", false, ""},
		{"https://[2001:db8::53]/dns-query", "https://2001:db8::53@[2001:db8::53]:443/dns-query", false, ""},
		{"https://2001:db8::53@[2001:db8::53]:443/dns-query", "https://2001:db8::53@[2001:db8::53]:443/dns-query", false, ""},
		{"https://dns.example/dns-query", "", false, "the resolver's address is missing"},
		{"https://@192.0.2.53/dns-query", "", false, "server name \"\": empty name"},
		{"https://dns example@192.0.2.53/dns-query", "", false, "server name"},
		{"https://dns.example@192.0.2.300/dns-query", "", false, "upstreams are IP addresses"},
		{"https://dns.example@192.0.2.53:0/dns-query", "", false, "port 0"},
		{"https://dns.example@192.0.2.53/dns-query?dns=x", "", false, "only {?dns} at the very end"},
		{"https://dns.example@192.0.2.53/dns query", "", false, "a URL path cannot hold"},
		{"https://dns.example@192.0.2.53/dns%zzquery", "", false, "a % not followed by two hex digits"},
		{"https://dns.example@192.0.2.53/dns%2Dquery", "https://dns.example@192.0.2.53:443/dns%2Dquery", false, ""},
		{"https://_dns.example@192.0.2.53/", "https://_dns.example@192.0.2.53:443/", false, ""},
		{"http://dns.example@192.0.2.53/dns-query", "", false, "plain http:// would send queries"},
		{"quic://dns.example@192.0.2.53", "", false, "only plain ip:port, tls://name@ip:853 and https://"},
		{"dns.example", "", false, "upstreams are IP addresses"},
		{"192.0.2.53:99999", "", false, "upstreams are IP addresses"},
		{"192.0.2.53:0", "", false, "port 0"},
		{"tls://dns.example@192.0.2.53:0", "", false, "port 0"},
	}
	for _, tt := range tests {
		got, err := ParseUpstream(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseUpstream(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got.String() != tt.want || got.TLS != tt.wantTLS {
			t.Errorf("ParseUpstream(%q) = %v (tls %v), %v; want %v (tls %v)", tt.in, got, got.TLS, err, tt.want, tt.wantTLS)
		}
	}
}

// FuzzParseUpstream: ParseUpstream never panics, and what it accepts
// String writes back in a form that parses to the same upstream (check and
// the admin API show String; the daemon keys its resolvers on it).
func FuzzParseUpstream(f *testing.F) {
	for _, s := range []string{"192.0.2.53", "[2001:db8::53]:54", "tls://dns.example@192.0.2.53", "tls://192.0.2.53",
		"https://dns.example@192.0.2.53", "https://192.0.2.53/dns-query", "https://[2001:db8::53]/dns-query{?dns}",
		"https://dns.example@192.0.2.53:8443/a%20b", "http://x@192.0.2.53", "https://dns.example/dns-query"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseUpstream(s)
		if err != nil {
			return
		}
		again, err := ParseUpstream(u.String())
		if err != nil || again != u {
			t.Fatalf("ParseUpstream(%q) = %+v, written %q, which parses to %+v, %v", s, u, u.String(), again, err)
		}
		if u.HTTPS && (u.TLS || u.ServerName == "" || !strings.HasPrefix(u.Path, "/") || !u.Addr.IsValid() || u.Addr.Port() == 0) {
			t.Fatalf("ParseUpstream(%q) = %+v", s, u)
		}
	})
}

func TestParsePrefix(t *testing.T) {
	tests := []struct {
		in, want, wantErr string
	}{
		{"203.0.113.0/24", "203.0.113.0/24", ""},
		{"203.0.113.7", "203.0.113.7/32", ""},
		{"2001:db8::/32", "2001:db8::/32", ""},
		{"2001:db8::1", "2001:db8::1/128", ""},
		{"::ffff:203.0.113.7", "203.0.113.7/32", ""},
		{"fe80::1%eth0", "fe80::1/128", ""},
		{"203.0.113.7/24", "", "write 203.0.113.0/24"},
		{"203.0.113.0/33", "", "is not a CIDR"},
		{"203.0.113", "", "is not an IP address"},
	}
	for _, tt := range tests {
		got, err := parsePrefix(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parsePrefix(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if want := netip.MustParsePrefix(tt.want); err != nil || got != want {
			t.Errorf("parsePrefix(%q) = %v, %v; want %v", tt.in, got, err, want)
		}
	}
}
