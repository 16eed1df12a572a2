package learn

import (
	"net/netip"
	"testing"
)

// TestAddr: a record's address without pointers gives back the entry's
// address, tells IPv4 from IPv4-mapped IPv6 as netip.Addr does, and
// orders as netip.Addr.Less does (the records of a name are sorted by it).
func TestAddr(t *testing.T) {
	addrs := []netip.Addr{
		{},
		netip.MustParseAddr("0.0.0.0"),
		netip.MustParseAddr("192.0.2.1"),
		netip.MustParseAddr("192.0.2.2"),
		netip.MustParseAddr("203.0.113.255"),
		netip.MustParseAddr("::"),
		netip.MustParseAddr("::c000:201"),
		netip.MustParseAddr("::ffff:192.0.2.1"),
		netip.MustParseAddr("2001:db8::1"),
		netip.MustParseAddr("2001:db8::2"),
		netip.MustParseAddr("ff02::1"),
	}
	for _, a := range addrs {
		if got := addrOf(a).Addr(); got != a {
			t.Errorf("%v: got %v back", a, got)
		}
		for _, b := range addrs {
			if got, want := addrOf(a).Less(addrOf(b)), a.Less(b); got != want {
				t.Errorf("%v < %v: got %v, want %v", a, b, got, want)
			}
			if got, want := addrOf(a) == addrOf(b), a == b; got != want {
				t.Errorf("%v == %v: got %v, want %v", a, b, got, want)
			}
		}
	}
}
