package origdst

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

func requireNft(t *testing.T) {
	t.Helper()
	netns.RequireRoot(t)
	for _, tool := range []string{"nft", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("needs %s, and CI=true forbids skipping", tool)
			}
			t.Skipf("needs root and %s: %v", tool, err)
		}
	}
}

// accept dials to from inside ns and returns the connection ln accepted.
func accept(t *testing.T, ns *netns.NS, ln net.Listener, to string) *net.TCPConn {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	c, err := ns.Dial("tcp", "", to, 3*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", to, err)
	}
	t.Cleanup(func() { c.Close() })
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("accept: %v", r.err)
		}
		t.Cleanup(func() { r.c.Close() })
		return r.c.(*net.TCPConn)
	case <-time.After(3 * time.Second):
		ln.Close() // unblocks Accept
		t.Fatalf("dial %s reached %s, but the listener accepted nothing", to, c.RemoteAddr())
		return nil
	}
}

func port(ln net.Listener) uint16 { return ln.Addr().(*net.TCPAddr).AddrPort().Port() }

// TestGetLocal redirects connections made inside one namespace, in the nat
// output hook, to listeners on loopback.
func TestGetLocal(t *testing.T) {
	requireNft(t)
	ns := netns.New(t)
	// Routes for the dialled addresses; the redirect then sends the
	// connections to loopback.
	ns.Addr("lo", "192.0.2.1/32")
	ns.Addr("lo", "198.51.100.1/32")
	ns.Addr("lo", "2001:db8::1/128")

	ln4 := ns.Listen("tcp4", "127.0.0.1:0")
	ln6 := ns.Listen("tcp6", "[::1]:0")
	// A dual-stack wildcard listener, as a daemon might open; harmless in a
	// namespace nothing else can reach.
	lnDual := ns.Listen("tcp", "[::]:0")

	rules := fmt.Sprintf(`table inet fqdngate_origdst {
	chain output {
		type nat hook output priority -100; policy accept;
		ip daddr 192.0.2.1 tcp dport 4443 redirect to :%d
		ip daddr 198.51.100.1 tcp dport 4443 redirect to :%d
		ip6 daddr 2001:db8::1 tcp dport 4443 redirect to :%d
	}
}`, port(ln4), port(lnDual), port(ln6))
	nft(t, ns, rules)

	for _, tc := range []struct {
		name string
		ln   net.Listener
		to   string
	}{
		{"IPv4", ln4, "192.0.2.1:4443"},
		{"IPv6", ln6, "[2001:db8::1]:4443"},
		{"IPv4 on a dual-stack socket", lnDual, "198.51.100.1:4443"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := accept(t, ns, tc.ln, tc.to)
			got, err := Get(c)
			if want := netip.MustParseAddrPort(tc.to); err != nil || got != want {
				t.Errorf("got %v, %v, want %v, nil (accepted on %v)", got, err, want, c.LocalAddr())
			}
		})
	}

	// A connection straight to the listener is tracked (the nat table
	// exists) but not rewritten.
	t.Run("not redirected", func(t *testing.T) {
		c := accept(t, ns, ln4, ln4.Addr().String())
		if got, err := Get(c); !errors.Is(err, ErrNotRedirected) {
			t.Errorf("got %v, %v, want error %v", got, err, ErrNotRedirected)
		}
	})
}

// TestGetRouted is the deployment shape: a client namespace routes through
// the proxy's namespace, whose prerouting hook redirects forwarded traffic
// to a listener on the proxy's own address.
func TestGetRouted(t *testing.T) {
	requireNft(t)
	client, proxy := netns.New(t), netns.New(t)
	netns.Veth(t, client, "c0", proxy, "p0")
	client.Addr("c0", "198.51.100.2/24")
	proxy.Addr("p0", "198.51.100.1/24")
	client.Addr("c0", "2001:db8:1::2/64")
	proxy.Addr("p0", "2001:db8:1::1/64")
	client.Route("default", "198.51.100.1")
	client.Route("default", "2001:db8:1::1")

	ln4 := proxy.Listen("tcp4", "198.51.100.1:0")
	ln6 := proxy.Listen("tcp6", "[2001:db8:1::1]:0")
	nft(t, proxy, fmt.Sprintf(`table inet fqdngate_origdst {
	chain prerouting {
		type nat hook prerouting priority -100; policy accept;
		iifname "p0" meta nfproto ipv4 tcp dport 443 redirect to :%d
		iifname "p0" meta nfproto ipv6 tcp dport 443 redirect to :%d
	}
}`, port(ln4), port(ln6)))

	for _, tc := range []struct {
		name string
		ln   net.Listener
		to   string
	}{
		{"IPv4", ln4, "203.0.113.10:443"},
		{"IPv6", ln6, "[2001:db8:2::10]:443"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := accept(t, client, tc.ln, tc.to)
			got, err := Get(c)
			if want := netip.MustParseAddrPort(tc.to); err != nil || got != want {
				t.Errorf("got %v, %v, want %v, nil (accepted on %v)", got, err, want, c.LocalAddr())
			}
		})
	}
}

// nft loads a ruleset into ns. The namespace, and the ruleset with it, is
// deleted when the test ends.
func nft(t *testing.T, ns *netns.NS, ruleset string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns.Name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f in %s: %v\n%s\n%s", ns.Name, err, out, ruleset)
	}
}
