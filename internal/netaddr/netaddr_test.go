package netaddr

import (
	"net/netip"
	"testing"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		addr string
		want Class
	}{
		{"public v4", "8.8.8.8", Public},
		{"public v6", "2606:4700:4700::1111", Public},
		{"documentation TEST-NET-1", "192.0.2.1", Public},
		{"documentation TEST-NET-2", "198.51.100.7", Public},
		{"documentation TEST-NET-3", "203.0.113.9", Public},
		{"documentation v6", "2001:db8::1", Public},
		{"rfc1918 10/8", "10.1.2.3", Private},
		{"rfc1918 172.16/12 low", "172.16.0.1", Private},
		{"rfc1918 172.16/12 high", "172.31.255.255", Private},
		{"just outside 172.16/12", "172.32.0.1", Public},
		{"rfc1918 192.168/16", "192.168.1.1", Private},
		{"unique local v6", "fd12:3456::1", Private},
		{"aws metadata v6 (unique local)", "fd00:ec2::254", Private},
		{"loopback v4", "127.0.0.1", Loopback},
		{"loopback v4 whole /8", "127.255.255.254", Loopback},
		{"loopback v6", "::1", Loopback},
		{"mapped loopback", "::ffff:127.0.0.1", Loopback},
		{"mapped private", "::ffff:10.0.0.1", Private},
		{"mapped public", "::ffff:8.8.8.8", Public},
		{"nat64 private", "64:ff9b::a00:1", Private},
		{"nat64 loopback", "64:ff9b::7f00:1", Loopback},
		{"nat64 metadata", "64:ff9b::a9fe:a9fe", LinkLocal},
		{"nat64 public", "64:ff9b::808:808", Public},
		{"local-use nat64", "64:ff9b:1::a00:1", Reserved},
		{"cloud metadata", "169.254.169.254", LinkLocal},
		{"mapped cloud metadata", "::ffff:169.254.169.254", LinkLocal},
		{"link-local v6", "fe80::1", LinkLocal},
		{"link-local v6 with zone", "fe80::1%eth0", LinkLocal},
		{"cgnat", "100.64.0.1", CGNAT},
		{"cgnat high", "100.127.255.255", CGNAT},
		{"just outside cgnat", "100.128.0.1", Public},
		{"unspecified v4", "0.0.0.0", Unspecified},
		{"unspecified v6", "::", Unspecified},
		{"mapped unspecified", "::ffff:0.0.0.0", Unspecified},
		{"this network", "0.1.2.3", Reserved},
		{"multicast v4", "224.0.0.1", Multicast},
		{"multicast v6", "ff02::1", Multicast},
		{"broadcast", "255.255.255.255", Reserved},
		{"class e", "240.0.0.1", Reserved},
		{"benchmarking", "198.18.0.1", Reserved},
		{"ietf protocol assignments", "192.0.0.8", Reserved},
		{"6to4 relay anycast", "192.88.99.1", Reserved},
		{"discard-only v6", "100::1", Reserved},
		{"teredo", "2001::1", Reserved},
		{"6to4", "2002:a00:1::1", Reserved},
		{"site-local", "fec0::1", Reserved},
		{"outside global unicast", "4000::1", Reserved},
		{"ipv4-compatible (deprecated)", "::a00:1", Reserved},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Classify(netip.MustParseAddr(tt.addr))
			if got != tt.want {
				t.Errorf("Classify(%s) = %v, want %v", tt.addr, got, tt.want)
			}
			if got.IsPublic() != (tt.want == Public) {
				t.Errorf("Classify(%s).IsPublic() = %v, want %v", tt.addr, got.IsPublic(), tt.want == Public)
			}
		})
	}
}

func TestClassifyInvalid(t *testing.T) {
	if got := Classify(netip.Addr{}); got != Reserved {
		t.Errorf("Classify(zero Addr) = %v, want %v", got, Reserved)
	}
}

func TestClassString(t *testing.T) {
	tests := []struct {
		c    Class
		want string
	}{
		{Public, "public"},
		{Private, "private"},
		{Loopback, "loopback"},
		{LinkLocal, "link-local"},
		{CGNAT, "cgnat"},
		{Unspecified, "unspecified"},
		{Multicast, "multicast"},
		{Reserved, "reserved"},
		{Class(200), "unknown"},
	}
	for _, tt := range tests {
		if got := tt.c.String(); got != tt.want {
			t.Errorf("Class(%d).String() = %q, want %q", tt.c, got, tt.want)
		}
	}
}

func TestUnmap(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"v4 unchanged", "203.0.113.1", "203.0.113.1"},
		{"v6 unchanged", "2001:db8::1", "2001:db8::1"},
		{"mapped", "::ffff:203.0.113.1", "203.0.113.1"},
		{"nat64", "64:ff9b::cb00:7101", "203.0.113.1"},
		{"zone dropped", "fe80::1%eth0", "fe80::1"},
		{"local-use nat64 kept", "64:ff9b:1::a00:1", "64:ff9b:1::a00:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Unmap(netip.MustParseAddr(tt.in))
			if want := netip.MustParseAddr(tt.want); got != want {
				t.Errorf("Unmap(%s) = %s, want %s", tt.in, got, want)
			}
		})
	}
}

func TestClassifierLocal(t *testing.T) {
	host := HostList{
		netip.MustParseAddr("192.0.2.1"),   // a public (documentation) address of the host
		netip.MustParseAddr("10.0.0.1"),    // a private one
		netip.MustParseAddr("2001:db8::1"), // IPv6
		netip.MustParseAddr("fe80::1"),     // link-local
		netip.MustParseAddr("127.0.0.1"),
	}
	c := Classifier{Host: host}
	tests := []struct {
		addr string
		want Class
	}{
		{"192.0.2.1", Local},
		{"::ffff:192.0.2.1", Local},
		{"64:ff9b::c000:201", Local}, // NAT64 spelling of 192.0.2.1
		{"10.0.0.1", Local},
		{"2001:db8::1", Local},
		{"fe80::1%eth0", Local},
		{"127.0.0.1", Loopback},
		{"192.0.2.2", Public},
		{"10.0.0.2", Private},
		{"0.0.0.0", Unspecified},
	}
	for _, tt := range tests {
		a := netip.MustParseAddr(tt.addr)
		if got := c.Classify(a); got != tt.want {
			t.Errorf("Classify(%s) = %v, want %v", tt.addr, got, tt.want)
		}
		if got := c.Classify(a).IsPublic(); got != (tt.want == Public) {
			t.Errorf("Classify(%s).IsPublic() = %v", tt.addr, got)
		}
	}
	// The zero Classifier knows no host.
	if got := (Classifier{}).Classify(netip.MustParseAddr("192.0.2.1")); got != Public {
		t.Errorf("zero Classifier: Classify(192.0.2.1) = %v, want public", got)
	}
	if Local.String() != "local" {
		t.Errorf("Local.String() = %q", Local.String())
	}
}
