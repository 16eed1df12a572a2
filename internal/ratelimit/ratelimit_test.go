package ratelimit

import (
	"net/netip"
	"testing"
	"time"
)

func TestBounded(t *testing.T) {
	l := New(64)
	now := time.Now()
	allow := func(a netip.Addr) bool { return l.Bucket(a, 1, 1).AllowN(now, 1) }
	for i := range 10_000 {
		allow(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
		if n := l.Len(); n > 64 {
			t.Fatalf("after %d sources: %d buckets, want at most 64", i+1, n)
		}
	}
	// A client seen recently keeps its (empty) bucket across a rotation.
	c := netip.MustParseAddr("192.0.2.1")
	if !allow(c) {
		t.Fatal("first token: refused, want allowed")
	}
	for i := range 20 {
		allow(netip.AddrFrom4([4]byte{10, 9, 9, byte(i)}))
	}
	if allow(c) {
		t.Error("second token in the same instant: allowed, want refused")
	}
	// IPv6 clients share a bucket per /64; an IPv4-mapped address is
	// its IPv4 address.
	if !allow(netip.MustParseAddr("2001:db8::1")) || allow(netip.MustParseAddr("2001:db8::2")) {
		t.Error("two addresses of one /64: want one bucket between them")
	}
	if allow(netip.MustParseAddr("::ffff:192.0.2.1")) {
		t.Error("192.0.2.1 mapped into IPv6: got a bucket of its own, want 192.0.2.1's")
	}
	// A new limit starts every client afresh.
	if !l.Bucket(c, 2, 1).AllowN(now, 1) {
		t.Error("after a change of limit: refused, want a fresh bucket")
	}
}
