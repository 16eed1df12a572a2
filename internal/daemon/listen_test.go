package daemon

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestListenDNSFamily: a DNS listener on 0.0.0.0 receives IPv4 only, as
// the policy and the kernel's guard of the listeners take it (Go alone
// would bind both families, and IPv6 would reach it unguarded); one on
// [::] receives both.
func TestListenDNSFamily(t *testing.T) {
	if l, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	} else {
		l.Close()
	}
	for _, tt := range []struct {
		addr string
		v6   bool
	}{{"0.0.0.0:0", false}, {"[::]:0", true}} {
		pc, ln, err := listenDNS(tt.addr)
		if err != nil {
			t.Fatalf("listenDNS(%s): %v", tt.addr, err)
		}
		port := netip.MustParseAddrPort(ln.Addr().String()).Port()
		for _, to := range []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()} {
			want := to.Is4() || tt.v6
			dst := netip.AddrPortFrom(to, port).String()
			c, err := net.DialTimeout("tcp", dst, time.Second)
			if err == nil {
				c.Close()
			}
			if got := err == nil; got != want {
				t.Errorf("listener on %s: TCP to %s connected = %v (%v), want %v", tt.addr, dst, got, err, want)
			}
			u, err := net.Dial("udp", dst)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = u.Write([]byte("probe"))
			u.Close()
			_ = pc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			buf := make([]byte, 16)
			_, _, err = pc.ReadFrom(buf)
			if got := err == nil; got != want {
				t.Errorf("listener on %s: UDP to %s received = %v (%v), want %v", tt.addr, dst, got, err, want)
			}
		}
		pc.Close()
		ln.Close()
	}
}
