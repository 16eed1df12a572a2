package policy

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/fqdngate/fqdngate/internal/netaddr"
)

// TestInside decides, for policies with and without an inside key, which
// sources fqdngate serves.
func TestInside(t *testing.T) {
	const groups = upstreams + `firewall: {backend: nftables, hook: forward}
sources:
  payments: {cidrs: [10.1.0.0/24, "2001:db8:1::/64"], interfaces: [eth1]}
  office: [10.2.0.0/16]
  ci: 10.3.0.5
`
	tests := []struct {
		name   string
		policy string
		parts  string // the inside's parts, as %+v prints them
		in     []string
		out    []string
	}{
		{
			name:   "source groups",
			policy: groups,
			parts:  "[{Name: Prefixes:[10.3.0.5/32 10.2.0.0/16] Interfaces:[]} {Name:payments Prefixes:[10.1.0.0/24 2001:db8:1::/64] Interfaces:[eth1]}]",
			in:     []string{"10.1.0.7", "2001:db8:1::9", "10.2.255.255", "10.3.0.5", "::ffff:10.2.0.1", "127.0.0.1", "::1"},
			out:    []string{"10.3.0.6", "10.4.0.1", "192.0.2.1", "2001:db8:2::1", "64:ff9b::a02:1", "0.0.0.0", "::", "fe80::1%eth0"},
		},
		{
			name:   "explicit ranges",
			policy: groups + "inside: {ranges: [10.0.0.0/8, \"2001:db8::/32\"]}\n",
			parts:  "[{Name: Prefixes:[10.0.0.0/8 2001:db8::/32] Interfaces:[]}]",
			in:     []string{"10.1.0.7", "10.200.0.1", "2001:db8:ff::1", "::ffff:10.9.9.9", "127.0.0.2"},
			out:    []string{"192.0.2.1", "11.0.0.1", "2001:db9::1"},
		},
		{
			// Only the kernel sees interfaces: by address, everyone is in.
			name:   "explicit interfaces",
			policy: upstreams + "firewall: {backend: nftables, hook: forward}\ninside: {interfaces: [eth1, eth0, eth1]}\n",
			parts:  "[{Name: Prefixes:[] Interfaces:[eth0 eth1]}]",
			in:     []string{"10.1.0.7", "192.0.2.1", "2001:db8::1"},
		},
		{
			name:   "nothing: this host only",
			policy: upstreams,
			parts:  "[]",
			in:     []string{"127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"},
			out:    []string{"10.0.0.1", "192.0.2.1", "::"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("p.yaml", []byte(tt.policy))
			if err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprintf("%+v", p.InsideSpec.Parts); got != tt.parts {
				t.Errorf("parts = %s, want %s", got, tt.parts)
			}
			for _, s := range tt.in {
				if !p.Inside(netip.MustParseAddr(s)) {
					t.Errorf("Inside(%s) = false, want true", s)
				}
			}
			for _, s := range tt.out {
				if p.Inside(netip.MustParseAddr(s)) {
					t.Errorf("Inside(%s) = true, want false", s)
				}
			}
		})
	}
}

// TestInsideConn: a query or connection that arrived at a loopback address
// came from this host, whatever its source (the kernel redirects this
// host's DNS to 127.0.0.1 from its own outside address); so did one from
// an address of this host, an IPv6 one only after a handshake or when the
// nftables backend's listeners chain vouches for it; elsewhere the inside
// decides.
func TestInsideConn(t *testing.T) {
	host := netaddr.HostList{netip.MustParseAddr("192.0.2.129"), netip.MustParseAddr("2001:db8:e::1")}
	const sources = "sources:\n  office: [10.2.0.0/16]\n"
	none, err := Parse("p.yaml", []byte(upstreams+sources))
	if err != nil {
		t.Fatal(err)
	}
	nft, err := Parse("p.yaml", []byte(upstreams+sources+"firewall: {backend: nftables, hook: output, state_file: \"\"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		p          *Policy
		src, local string
		host       netaddr.HostList
		handshake  bool
		want       bool
	}{
		{"sent to loopback", none, "192.0.2.7", "127.0.0.1", nil, false, true},
		{"sent to IPv6 loopback", none, "192.0.2.7", "::1", nil, false, true},
		{"sent to mapped loopback", none, "192.0.2.7", "::ffff:127.0.0.1", nil, false, true},
		{"outside, wildcard socket", none, "192.0.2.7", "0.0.0.0", host, false, false},
		{"outside, to an address", none, "192.0.2.7", "192.0.2.1", host, true, false},
		{"inside, wildcard socket", none, "10.2.0.1", "0.0.0.0", nil, false, true},
		{"inside, to an address", none, "10.2.0.1", "10.2.0.254", nil, false, true},
		{"from loopback", none, "127.0.0.1", "::", nil, false, true},
		{"this host, IPv4", none, "192.0.2.129", "0.0.0.0", host, false, true},
		{"this host, mapped IPv4", none, "::ffff:192.0.2.129", "::", host, false, true},
		{"this host's address, no host set", none, "192.0.2.129", "0.0.0.0", nil, true, false},
		{"this host, IPv4, nftables", nft, "192.0.2.129", "192.0.2.129", host, false, true},
		{"this host's IPv6 address, no handshake, no kernel guard", none, "2001:db8:e::1", "::", host, false, false},
		{"this host, IPv6, after a handshake", none, "2001:db8:e::1", "2001:db8:e::1", host, true, true},
		{"this host, IPv6, nftables", nft, "2001:db8:e::1", "::", host, false, true},
		{"another host, IPv6, nftables", nft, "2001:db8:e::2", "::", host, false, false},
		{"another host, IPv6, after a handshake", none, "2001:db8:e::2", "2001:db8:e::1", host, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h netaddr.Host
			if tt.host != nil {
				h = tt.host
			}
			if got := tt.p.InsideConn(netip.MustParseAddr(tt.src), netip.MustParseAddr(tt.local), h, tt.handshake); got != tt.want {
				t.Errorf("InsideConn(%s, %s, handshake %v) = %v, want %v", tt.src, tt.local, tt.handshake, got, tt.want)
			}
		})
	}
}

func TestDescribeInside(t *testing.T) {
	tests := []struct{ name, policy, want string }{
		{"source groups", upstreams + "sources: {office: [10.2.0.0/16], ci: [10.3.0.0/16]}\n", "source groups ci, office"},
		{"a group tied to interfaces", upstreams + `firewall: {backend: nftables, hook: forward}
sources:
  payments: {cidrs: [10.1.0.0/24], interfaces: [eth1, eth2]}
  office: [10.2.0.0/16]
`, "source groups office, payments (on eth1, eth2)"},
		{"ranges", upstreams + "inside: {ranges: [10.0.0.0/8, \"2001:db8::/32\"]}\n", "inside.ranges 10.0.0.0/8, 2001:db8::/32"},
		{"interfaces", upstreams + "firewall: {backend: nftables, hook: forward}\ninside: {interfaces: [eth1]}\n", "inside.interfaces eth1"},
		{"both", upstreams + "firewall: {backend: nftables, hook: forward}\ninside: {ranges: [10.0.0.0/8], interfaces: [eth1]}\n", "inside.ranges 10.0.0.0/8 arriving on inside.interfaces eth1"},
		{"none", upstreams + "listen: {dns: 127.0.0.1:53}\n", "none: the policy has no source groups and no inside key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("p.yaml", []byte(tt.policy))
			if err != nil {
				t.Fatal(err)
			}
			if got := p.DescribeInside(); got != tt.want {
				t.Errorf("DescribeInside() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestInsideDoesNotAllocate(t *testing.T) {
	p, err := Parse("p.yaml", []byte(upstreams+"sources:\n  office: [10.2.0.0/16, \"2001:db8:1::/64\"]\n  ci: [10.3.0.0/16]\n"))
	if err != nil {
		t.Fatal(err)
	}
	srcs := []netip.Addr{netip.MustParseAddr("10.3.0.1"), netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8:1::1")}
	if n := testing.AllocsPerRun(100, func() {
		for _, s := range srcs {
			p.Inside(s)
		}
	}); n != 0 {
		t.Errorf("Inside allocates %v times per run, want 0", n)
	}
}
