package e2e

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// udpRefused sends a datagram from src to dst on a connected socket and
// returns the error the next read reports: the ICMP error the datagram
// brought back, or a timeout after wait if nothing came.
func udpRefused(t *testing.T, ns *netns.NS, src string, dst netip.AddrPort, wait time.Duration) error {
	t.Helper()
	c, err := ns.Dial("udp", src, dst.String(), wait)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("knock")); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(wait))
	_, err = c.Read(make([]byte, 16))
	return err
}

// TestDenyWithReject: with firewall.deny_with: reject a denied TCP connect
// fails at once with ECONNREFUSED (a TCP reset), and a denied UDP
// datagram brings back ICMP administratively prohibited (EHOSTUNREACH
// over IPv4, EACCES over IPv6), from the gateway.
func TestDenyWithReject(t *testing.T) {
	f := startForwardWith(t, 2*time.Second, basicRules, func(s *policySettings) {
		s.firewall = []string{"deny_with: reject"}
	})
	for _, dst := range []netip.AddrPort{ap("203.0.113.77", allowedPort), ap("2001:db8:100::77", allowedPort)} {
		c, err := f.net.client.Dial("tcp", f.a.src(dst.Addr()), dst.String(), reachWait)
		if err == nil {
			c.Close()
			t.Errorf("connected to %s, want it refused", dst)
		} else if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("connecting to %s: %v, want ECONNREFUSED (a TCP reset from the gateway)", dst, err)
		}
	}
	for _, tt := range []struct {
		dst  netip.AddrPort
		want syscall.Errno
	}{
		{ap("203.0.113.77", 5000), syscall.EHOSTUNREACH},
		{ap("2001:db8:100::77", 5000), syscall.EACCES},
	} {
		if err := udpRefused(t, f.net.client, f.a.src(tt.dst.Addr()), tt.dst, reachWait); !errors.Is(err, tt.want) {
			t.Errorf("datagram to %s: read reports %v, want %v (ICMP administratively prohibited)", tt.dst, err, tt.want)
		}
	}
	// What the policy allows still passes.
	mustReach(t, f.a, "api.example.com", ap("198.51.100.5", allowedPort))
	if t.Failed() {
		t.Log(f.gate.logs())
	}
}

// TestDenyWithDrop: by default a denial is a silent drop: the TCP connect
// times out, the datagram brings back nothing.
func TestDenyWithDrop(t *testing.T) {
	f := startForward(t, 2*time.Second, basicRules)
	mustDrop(t, f.a, ap("203.0.113.77", allowedPort))
	mustDrop(t, f.a, ap("2001:db8:100::77", allowedPort))
	for _, dst := range []netip.AddrPort{ap("203.0.113.77", 5000), ap("2001:db8:100::77", 5000)} {
		err := udpRefused(t, f.net.client, f.a.src(dst.Addr()), dst, dropWait)
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("datagram to %s: read reports %v, want a timeout (dropped)", dst, err)
		}
	}
}

// TestDenyWithRejectOutput: on the output hook the reset reaches the local
// socket at once too. (A datagram dropped or rejected on its way out fails
// its send with EPERM in either case.)
func TestDenyWithRejectOutput(t *testing.T) {
	o := startOutput(t, "  - name: api\n    to: [api.example.com]\n", func(s *policySettings) {
		s.firewall = []string{"deny_with: reject"}
	})
	host, g := o.host, o.gate
	for _, dst := range []string{"203.0.113.77:443", "[2001:db8:100::77]:443"} {
		c, err := host.Dial("tcp", "", dst, reachWait)
		if err == nil {
			c.Close()
			t.Errorf("connected to %s, want it refused", dst)
		} else if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("connecting to %s: %v, want ECONNREFUSED", dst, err)
		}
	}
	if t.Failed() {
		t.Log(g.logs())
	}
}
