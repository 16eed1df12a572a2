package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// Addresses of the two-armed gateway topology (documentation ranges only):
//
//	payments ns ── 192.0.2.0/26, 2001:db8:a::/64 ── pay0 ┐
//	                                                     gateway ns (fqdngate) ── g1: 192.0.2.128/25, 2001:db8:e::/64 ── internet ns
//	others ns ── 192.0.2.64/26, 2001:db8:b::/64 ── oth0 ┘
//
// Each client group has a link of its own, so the gateway can tell by the
// interface where a packet came from. The internet namespace is the one of
// the forward topology (newInternet): HTTPS on 443 and 8443 on every test
// address, the authority at 192.0.2.130:53. The gateway's kernel reverse
// path filter (the rp_filter sysctl) is off, as it was where the issue was
// found: only fqdngate's own checks stand between a forged source and the
// policy.
const (
	armPayGW4 = "192.0.2.1"
	armPayGW6 = "2001:db8:a::1"
	armPay4   = "192.0.2.10"
	armPay6   = "2001:db8:a::10"
	armOthGW4 = "192.0.2.65"
	armOthGW6 = "2001:db8:b::1"
	armOth4   = "192.0.2.70"
	armOth6   = "2001:db8:b::70"
	// armForged4 and armForged6 are payments addresses that no payments
	// host holds: the others namespace sends from them.
	armForged4 = "192.0.2.11"
	armForged6 = "2001:db8:a::11"

	// armPayIf and armOthIf are the gateway's interfaces towards each
	// group.
	armPayIf = "pay0"
	armOthIf = "oth0"
)

// armSources are the two groups, by address only.
const armSources = `sources:
  payments: [192.0.2.0/26, "2001:db8:a::/64"]
  others: [192.0.2.64/26, "2001:db8:b::/64"]
`

// twoArmNet is the gateway topology with a link per client group.
type twoArmNet struct {
	pay, oth, gw *netns.NS
	inet         *internet
	forging      sync.Once
}

func newTwoArmNet(t *testing.T) *twoArmNet {
	t.Helper()
	n := &twoArmNet{pay: netns.New(t), oth: netns.New(t), gw: netns.New(t)}
	n.gw.MustExec("sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
	netns.Veth(t, n.pay, "c0", n.gw, armPayIf)
	netns.Veth(t, n.oth, "c0", n.gw, armOthIf)
	n.pay.Addr("c0", armPay4+"/26")
	n.pay.Addr("c0", armPay6+"/64")
	n.pay.Route("default", armPayGW4)
	n.pay.Route("default", armPayGW6)
	n.oth.Addr("c0", armOth4+"/26")
	n.oth.Addr("c0", armOth6+"/64")
	n.oth.Route("default", armOthGW4)
	n.oth.Route("default", armOthGW6)
	n.gw.Addr(armPayIf, armPayGW4+"/26")
	n.gw.Addr(armPayIf, armPayGW6+"/64")
	n.gw.Addr(armOthIf, armOthGW4+"/26")
	n.gw.Addr(armOthIf, armOthGW6+"/64")
	n.inet = newInternet(t, n.gw, "g1")
	n.gw.Route("default", inet4)
	n.gw.Route("default", inet6)
	n.gw.Forwarding()
	for _, dev := range []string{armPayIf, armOthIf, "g1"} {
		n.gw.MustExec("sysctl", "-q", "-w", "net.ipv4.conf."+dev+".rp_filter=0")
	}
	return n
}

// forger gives the others namespace the payments addresses no payments
// host holds, so its sockets can send from them: the attacker of item 4.
func (n *twoArmNet) forger() *client {
	n.forging.Do(func() {
		n.oth.IP("addr", "add", armForged4+"/32", "dev", "c0")
		n.oth.IP("addr", "add", armForged6+"/128", "dev", "c0", "nodad")
	})
	return &client{ns: n.oth, src4: armForged4, src6: armForged6, roots: n.inet.ca.Pool()}
}

// clients returns a client on the payments link and one on the others
// link, both resolving through resolver.
func (n *twoArmNet) clients(resolver string) (pay, oth *client) {
	pay = &client{ns: n.pay, src4: armPay4, src6: armPay6, dns: resolver, roots: n.inet.ca.Pool()}
	oth = &client{ns: n.oth, src4: armOth4, src6: armOth6, dns: resolver, roots: n.inet.ca.Pool()}
	return pay, oth
}

// outsider is a client in the internet namespace.
func (n *twoArmNet) outsider() *client {
	return &client{ns: n.inet.ns, src4: inet4, src6: inet6, roots: n.inet.ca.Pool()}
}

// startGate starts fqdngate on the gateway with the policy body.
func (n *twoArmNet) startGate(t *testing.T, body func(g *gate) string) *gate {
	t.Helper()
	g := newGate(t, n.gw)
	g.writePolicy(body(g))
	g.start()
	return g
}

// datagram is one UDP payload a sink received, with its source address.
type datagram struct {
	from, payload string
}

// udpSink records every datagram sent to a port of the internet
// namespace, on any of its addresses: what reached the far side.
type udpSink struct {
	mu   sync.Mutex // guards got
	got  []datagram
	done chan struct{}
}

func newUDPSink(t *testing.T, ns *netns.NS, port int) *udpSink {
	t.Helper()
	pc := ns.ListenPacket("udp", fmt.Sprintf("[::]:%d", port))
	s := &udpSink{done: make(chan struct{})}
	go func() {
		defer close(s.done)
		buf := make([]byte, 1500)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			src := from.String()
			if ua, ok := from.(*net.UDPAddr); ok {
				src = ua.AddrPort().Addr().Unmap().String()
			}
			s.mu.Lock()
			s.got = append(s.got, datagram{src, string(buf[:k])})
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-s.done
	})
	return s
}

// saw reports whether a datagram with payload has arrived, and from where.
func (s *udpSink) saw(payload string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range s.got {
		if d.payload == payload {
			return d.from, true
		}
	}
	return "", false
}

// await waits up to timeout for a datagram with payload.
func (s *udpSink) await(payload string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if _, ok := s.saw(payload); ok {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// send sends one datagram from c's address of dst's family to dst.
func (c *client) send(t *testing.T, dst netip.AddrPort, payload string) {
	t.Helper()
	conn, err := c.ns.Dial("udp", c.src(dst.Addr()), dst.String(), reachWait)
	if err != nil {
		t.Fatalf("udp from %s to %s: %v", c.src(dst.Addr()), dst, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(payload)); err != nil {
		t.Fatalf("udp from %s to %s: %v", c.src(dst.Addr()), dst, err)
	}
}

// synProbe counts, in the internet namespace, the TCP SYNs that arrive
// from given source addresses: a forged SYN never completes a handshake
// (the answer goes to the real owner of the address), so only a counter on
// the far side can tell whether it got through.
type synProbe struct {
	ns *netns.NS
}

func newSYNProbe(t *testing.T, ns *netns.NS, srcs ...string) *synProbe {
	t.Helper()
	script := "table inet probe {\n\tchain pre {\n\t\ttype filter hook prerouting priority raw; policy accept;\n"
	for _, s := range srcs {
		fam := "ip"
		if strings.Contains(s, ":") {
			fam = "ip6"
		}
		script += fmt.Sprintf("\t\t%s saddr %s tcp flags & (syn|ack) == syn counter\n", fam, s)
	}
	script += "\t}\n}\n"
	if out, err := ns.Exec("sh", "-c", "nft -f - <<'EOF'\n"+script+"EOF\n"); err != nil {
		t.Fatalf("installing the SYN probe: %v\n%s", err, out)
	}
	return &synProbe{ns: ns}
}

// count returns the SYNs counted so far, from every probed source.
func (p *synProbe) count(t *testing.T) int {
	t.Helper()
	out := p.ns.MustExec("nft", "list", "chain", "inet", "probe", "pre")
	n := 0
	for _, line := range strings.Split(out, "\n") {
		if i := strings.Index(line, "counter packets "); i >= 0 {
			var pk, by int
			fmt.Sscanf(line[i:], "counter packets %d bytes %d", &pk, &by)
			n += pk
		}
	}
	return n
}
