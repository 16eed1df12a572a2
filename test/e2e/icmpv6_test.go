package e2e

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv6"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// ICMPv6 message types of neighbour discovery (RFC 4861).
const (
	ndRouterSolicit   = 133
	ndRouterAdvert    = 134
	ndNeighborSolicit = 135
	ndNeighborAdvert  = 136
	ndRedirect        = 137
)

var ndTypes = []byte{ndRouterSolicit, ndRouterAdvert, ndNeighborSolicit, ndNeighborAdvert, ndRedirect}

// icmpWatch is a raw ICMPv6 socket that records every message it reads, to
// tell at the far side whether a message got through.
type icmpWatch struct {
	mu   sync.Mutex // guards msgs
	msgs [][]byte   // ICMPv6 messages, header included
}

// watchICMPv6 opens a raw ICMPv6 socket in ns; it reads until the test ends.
// A raw socket sees every ICMPv6 message delivered to the namespace, even
// neighbour discovery the kernel itself discards (hop limit below 255).
func watchICMPv6(t *testing.T, ns *netns.NS) *icmpWatch {
	t.Helper()
	c := ns.ListenPacket("ip6:ipv6-icmp", "::")
	w := &icmpWatch{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			w.mu.Lock()
			w.msgs = append(w.msgs, bytes.Clone(buf[:n]))
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		c.Close()
		<-done
	})
	return w
}

// seen returns the types of the messages that carried marker.
func (w *icmpWatch) seen(marker string) []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []byte
	for _, m := range w.msgs {
		if bytes.Contains(m, []byte(marker)) {
			out = append(out, m[0])
		}
	}
	return out
}

// waitFor waits until a message of type typ carrying marker arrived.
func (w *icmpWatch) waitFor(t *testing.T, typ byte, marker string) {
	t.Helper()
	deadline := time.Now().Add(reachWait)
	for time.Now().Before(deadline) {
		for _, got := range w.seen(marker) {
			if got == typ {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("control message (type %d, %q) never arrived: the test cannot see what gets through", typ, marker)
}

// sendICMPv6 sends one ICMPv6 message of type typ from src (in ns) to dst
// with the given hop limit. The body is zeros, as long as the longest
// neighbour discovery header (redirect: 4 reserved bytes, target and
// destination), followed by marker: data riding in the message.
func sendICMPv6(t *testing.T, ns *netns.NS, src string, dst *net.IPAddr, typ byte, hops int, marker string) {
	t.Helper()
	msg := append([]byte{typ, 0, 0, 0}, make([]byte, 36)...)
	msg = append(msg, marker...)
	err := ns.Do(func() error {
		c, err := net.ListenPacket("ip6:ipv6-icmp", src)
		if err != nil {
			return err
		}
		defer c.Close()
		p := ipv6.NewPacketConn(c)
		if err := p.SetHopLimit(hops); err != nil {
			return err
		}
		if err := p.SetMulticastHopLimit(hops); err != nil {
			return err
		}
		// The kernel fills in the checksum of ICMPv6 raw sockets.
		_, err = c.WriteTo(msg, dst)
		return err
	})
	// A send the output hook drops fails with EPERM; that is a drop too.
	if err != nil && !strings.Contains(err.Error(), "operation not permitted") {
		t.Fatalf("sending ICMPv6 type %d from %s to %s: %v", typ, src, dst, err)
	}
}

func ip6(s string) *net.IPAddr {
	a := netip.MustParseAddr(s)
	return &net.IPAddr{IP: a.AsSlice(), Zone: a.Zone()}
}

// TestForwardNeighbourDiscovery: neighbour discovery is link-local and never
// forwarded. A client that hides data in neighbour discovery messages
// (types 133-137) gets none of it to the internet, not even to an address a
// rule opens; an unsolicited neighbour advertisement (or any other type)
// from the internet does not reach the client; IPv6 to allowed names still
// works, so neighbour discovery works on both links of the gateway.
func TestForwardNeighbourDiscovery(t *testing.T) {
	f := startForward(t, 2*time.Second, `  - name: api
    from: [a]
    to: [api.example.com]
    ports: [443]
  - name: probe
    from: [a]
    to: ["2001:db8:100:1::/64"]
    ports: [9-10/udp]
`)
	f.net.inet.auth.Set("api.example.com", dnstest.AAAA("api.example.com", 300, "2001:db8:100::10"))
	far := watchICMPv6(t, f.net.inet.ns)
	near := watchICMPv6(t, f.net.client)
	farUDP := f.net.inet.ns.ListenPacket("udp", "[::]:9")

	open := "2001:db8:100:1::5" // rule probe allows it (on UDP ports 9 and 10)
	closed := "2001:db8:100::99"
	for _, dst := range []string{open, closed} {
		for _, typ := range ndTypes {
			sendICMPv6(t, f.net.client, srcA6, ip6(dst), typ, 255, fmt.Sprintf("nd-out-%s-%d", dst, typ))
		}
	}
	for _, typ := range ndTypes {
		sendICMPv6(t, f.net.inet.ns, inet6, ip6(srcA6), typ, 255, fmt.Sprintf("nd-in-%d", typ))
	}
	// Controls, sent after: a datagram rule probe lets through, and one to
	// a closed port whose ICMPv6 error (related to the flow) comes back.
	sendUDP(t, f.net.client, srcA6, "["+open+"]:9", "control-out")
	sendUDP(t, f.net.client, srcA6, "["+open+"]:10", "control-back")
	waitUDP(t, farUDP, "control-out")
	near.waitFor(t, 1, "control-back") // destination unreachable

	for _, dst := range []string{open, closed} {
		for _, typ := range ndTypes {
			if got := far.seen(fmt.Sprintf("nd-out-%s-%d", dst, typ)); len(got) > 0 {
				t.Errorf("ICMPv6 type %d with data from the client reached %s, want it dropped at the gateway", typ, dst)
			}
		}
	}
	for _, typ := range ndTypes {
		if got := near.seen(fmt.Sprintf("nd-in-%d", typ)); len(got) > 0 {
			t.Errorf("unsolicited ICMPv6 type %d from the internet reached the client, want it dropped at the gateway", typ)
		}
	}

	if _, err := f.a.resolveAndGet("api.example.com", dns.TypeAAAA, allowedPort); err != nil {
		t.Errorf("allowed name over IPv6: %v", err)
	}
	if t.Failed() {
		t.Log(f.gate.logs())
	}
}

// sendUDP sends one datagram from src (in ns) to dst.
func sendUDP(t *testing.T, ns *netns.NS, src, dst, payload string) {
	t.Helper()
	c, err := ns.Dial("udp", src, dst, reachWait)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(payload)); err != nil {
		t.Fatalf("sending to %s: %v", dst, err)
	}
}

// waitUDP waits until pc receives payload.
func waitUDP(t *testing.T, pc net.PacketConn, payload string) {
	t.Helper()
	buf := make([]byte, 512)
	pc.SetReadDeadline(time.Now().Add(reachWait))
	defer pc.SetReadDeadline(time.Time{})
	for {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("control datagram %q never arrived (%v): the test cannot see what gets through", payload, err)
		}
		if string(buf[:n]) == payload {
			return
		}
	}
}

// TestOutputNeighbourDiscovery: on the output hook a process may send
// neighbour discovery only as RFC 4861 has it: hop limit 255 and a
// link-local or link-scope multicast destination. Messages with data to an
// internet address, with a lower hop limit, or to a global address do not
// leave the host; the kernel's own neighbour discovery still works both
// ways, including advertisements answering a neighbour that solicits from
// its global address; IPv6 to allowed names still works.
func TestOutputNeighbourDiscovery(t *testing.T) {
	o := startOutput(t, `  - name: api
    to: [api.example.com]
    ports: [443]
`, nil)
	host, inet, g := o.host, o.inet, o.gate
	const inetLL = "fe80::e2"
	inet.ns.Addr("i0", inetLL+"/64")
	c := &client{ns: host, dns: "127.0.0.1:53", roots: inet.ca.Pool()}
	inet.auth.Set("api.example.com", dnstest.AAAA("api.example.com", 300, "2001:db8:100::10"))
	far := watchICMPv6(t, inet.ns)

	// Dropped: data to an internet address (every type), a hop limit below
	// 255, and a process's own messages to a global address on the link.
	for _, typ := range ndTypes {
		sendICMPv6(t, host, gwInet6, ip6("2001:db8:100::99"), typ, 255, fmt.Sprintf("nd-internet-%d", typ))
	}
	sendICMPv6(t, host, "::", ip6(inetLL+"%h0"), ndNeighborSolicit, 64, "nd-hop64")
	sendICMPv6(t, host, gwInet6, ip6(inet6), ndNeighborSolicit, 255, "nd-global")
	// Passed, and sent last: link scope with hop limit 255.
	sendICMPv6(t, host, "::", ip6("ff02::1%h0"), ndNeighborSolicit, 255, "nd-multicast")
	sendICMPv6(t, host, "::", ip6(inetLL+"%h0"), ndNeighborAdvert, 255, "nd-linklocal")
	far.waitFor(t, ndNeighborSolicit, "nd-multicast")
	far.waitFor(t, ndNeighborAdvert, "nd-linklocal")

	for _, typ := range ndTypes {
		if got := far.seen(fmt.Sprintf("nd-internet-%d", typ)); len(got) > 0 {
			t.Errorf("ICMPv6 type %d with data from the host reached an internet address, want it dropped", typ)
		}
	}
	if got := far.seen("nd-hop64"); len(got) > 0 {
		t.Error("a neighbour solicitation with hop limit 64 left the host, want it dropped")
	}
	if got := far.seen("nd-global"); len(got) > 0 {
		t.Error("a neighbour solicitation a process wrote to a global address left the host, want it dropped")
	}

	// The kernel's neighbour discovery: the host resolves its router, and
	// answers the router soliciting from its global address (the answer
	// goes to that global address).
	host.IP("-6", "neigh", "flush", "dev", "h0")
	inet.ns.IP("-6", "neigh", "flush", "dev", "i0")
	if _, err := c.resolveAndGet("api.example.com", dns.TypeAAAA, allowedPort); err != nil {
		t.Errorf("allowed name over IPv6: %v", err)
	}
	inet.ns.IP("-6", "neigh", "flush", "dev", "i0")
	pc := host.ListenPacket("udp", "["+gwInet6+"]:7")
	conn, err := inet.ns.Dial("udp", inet6, "["+gwInet6+"]:7", reachWait)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	got := make(chan error, 1)
	go func() {
		buf := make([]byte, 16)
		pc.SetReadDeadline(time.Now().Add(reachWait))
		_, _, err := pc.ReadFrom(buf)
		got <- err
	}()
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Errorf("a datagram from the router's global address to the host: %v; want it delivered (the host's neighbour advertisement must reach the router)\n%s",
			err, inet.ns.IP("-6", "neigh", "show", "dev", "i0"))
	}
	if t.Failed() {
		t.Log(g.logs())
	}
}
