package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/nft"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/certs"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// The transparent topology, as production has it:
//
//	client ns ── 198.51.100.0/24 ── gateway ns (fqdngate) ── 192.0.2.0/24 ── internet ns
//	198.51.100.10                   .1 | .1                                  .2, 203.0.113.10, 203.0.113.20
//
// nftables in the gateway (internal/nft, forward hook) redirects the
// client's forwarded TCP 80 and 443 to ServeTransparent listening in the
// gateway. 203.0.113.10 is web.test's server; 203.0.113.20 is another
// server, where a client claiming web.test would rather go.
const (
	nsClientAddr = "198.51.100.10"
	nsGatewayIn  = "198.51.100.1"
	nsWebAddr    = "203.0.113.10"
	nsOtherAddr  = "203.0.113.20"
	nsListen     = nsGatewayIn + ":3129"
)

type nsNet struct {
	client, gw, inet *netns.NS
	audit            *syncBuffer
	hits             map[string]*atomic.Int64 // connections each internet server accepted, by address:port
	reqs             map[string]*atomic.Int64 // requests each internet server answered
}

// auditOf is harness.auditOf for connections from the client namespace.
func (n *nsNet) auditOf(t testing.TB, c net.Conn) map[string]any {
	t.Helper()
	return (&harness{audit: n.audit}).auditOf(t, c)
}

func newNSNet(t *testing.T) *nsNet {
	t.Helper()
	n := &nsNet{client: netns.New(t), gw: netns.New(t), inet: netns.New(t), audit: &syncBuffer{}, hits: map[string]*atomic.Int64{}, reqs: map[string]*atomic.Int64{}}
	netns.Veth(t, n.client, "c0", n.gw, "g0")
	netns.Veth(t, n.gw, "g1", n.inet, "i0")
	n.client.Addr("c0", nsClientAddr+"/24")
	n.client.Route("default", nsGatewayIn)
	n.gw.Addr("g0", nsGatewayIn+"/24")
	n.gw.Addr("g1", "192.0.2.1/24")
	n.gw.Route("203.0.113.0/24", "192.0.2.2")
	n.gw.Forwarding()
	n.inet.Addr("i0", "192.0.2.2/24")
	n.inet.Addr("i0", nsWebAddr+"/24")
	n.inet.Addr("i0", nsOtherAddr+"/24")
	n.inet.Route("default", "192.0.2.1")
	return n
}

// serve runs h in the internet namespace on addr, over TLS when cert is
// not nil, counting the connections it accepts.
func (n *nsNet) serve(t *testing.T, addr string, cert *tls.Certificate, who string) {
	t.Helper()
	ln := n.inet.Listen("tcp", addr)
	hits, reqs := &atomic.Int64{}, &atomic.Int64{}
	n.hits[addr], n.reqs[addr] = hits, reqs
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			reqs.Add(1)
			fmt.Fprintf(w, "%s: %s %s", who, r.Host, r.URL.Path)
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				hits.Add(1)
			}
		},
		ErrorLog: log.New(io.Discard, "", 0), // refused handshakes are the point
	}
	if cert != nil {
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*cert}}
		go srv.ServeTLS(ln, "", "")
	} else {
		go srv.Serve(ln)
	}
	t.Cleanup(func() { srv.Close() })
}

// dial connects from the client namespace to dst (an address:port the
// gateway will redirect), optionally splitting the first write into
// TCP segments of the given sizes.
func (n *nsNet) dial(t testing.TB, dst string, split ...int) net.Conn {
	t.Helper()
	c, err := n.client.Dial("tcp", "", dst, 5*time.Second)
	if err != nil {
		t.Fatalf("dialling %s from the client namespace: %v", dst, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if len(split) > 0 {
		return &splitConn{Conn: c, sizes: split}
	}
	return c
}

// splitConn sends its first write as several TCP segments: the sizes,
// then the rest, pausing between them so the kernel cannot coalesce them
// (TCP_NODELAY is Go's default).
type splitConn struct {
	net.Conn
	sizes []int
	done  bool
}

func (c *splitConn) Write(b []byte) (int, error) {
	if c.done {
		return c.Conn.Write(b)
	}
	c.done = true
	n := 0
	for _, s := range c.sizes {
		s = min(s, len(b)-n)
		m, err := c.Conn.Write(b[n : n+s])
		n += m
		if err != nil {
			return n, err
		}
		time.Sleep(50 * time.Millisecond)
	}
	m, err := c.Conn.Write(b[n:])
	return n + m, err
}

// get sends one GET with host as Host over c (TLS or not) and returns the
// response body.
func get(c net.Conn, host string) (string, error) {
	if _, err := fmt.Fprintf(c, "GET /x HTTP/1.1\r\nHost: %s\r\n\r\n", host); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestTransparentNetns runs the transparent proxy as production does:
// clients' forwarded TCP 80 and 443 redirected by the nftables backend to
// ServeTransparent in a gateway namespace, the original destination read
// from conntrack, upstreams dialled from the gateway.
func TestTransparentNetns(t *testing.T) {
	n := newNSNet(t)
	ca := certs.NewCA(t)
	webCert := ca.Leaf(t, "web.test")
	n.serve(t, nsWebAddr+":443", &webCert, "web")
	n.serve(t, nsWebAddr+":80", nil, "web")
	// The other server holds a certificate for web.test too: only the
	// anti-spoofing check keeps clients from it.
	n.serve(t, nsOtherAddr+":443", &webCert, "other")
	n.serve(t, nsOtherAddr+":80", nil, "other")

	pol := mustParse(t, `
listen: {transparent: "`+nsListen+`"}
dns: {upstreams: [192.0.2.53]}
firewall: {backend: nftables, hook: forward, transparent_ports: [80, 443]}
inside: {ranges: [198.51.100.0/24]}
proxy: {deny_private: true}
rules:
  - name: web
    to: [web.test]
    ports: [80, 443]
`)
	// In production the DNS firewall programs what it resolves; the
	// transparent proxy needs only its own resolution.
	res := mapResolver{"web.test": addrs(nsWebAddr)}

	// The nftables backend in the gateway, configured from the policy as
	// the daemon does.
	ctx, cancel := context.WithCancel(context.Background())
	b, err := nft.New(nft.Config{
		Table:   "fqdngate",
		Hook:    pol.Firewall.Hook,
		NetNSFd: n.gw.Fd(),
	})
	if err != nil {
		t.Fatalf("nft.New: %v", err)
	}
	if err := b.Apply(ctx, pol); err != nil {
		t.Fatalf("nft Apply: %v", err)
	}
	nftDone := make(chan error, 1)
	go func() { nftDone <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-nftDone; err != nil {
			t.Errorf("nft Run: %v", err)
		}
		b.Close()
	})

	// The proxy, listening in the gateway and dialling from it.
	ln := n.gw.Listen("tcp", nsListen)
	p, err := New(Config{
		Policy:       func() *policy.Policy { return pol },
		Resolver:     res,
		Audit:        audit.New(n.audit, "json", nil),
		DrainTimeout: 2 * time.Second,
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = n.gw.Do(func() error {
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- p.ServeTransparent(pctx, ln) }()
	t.Cleanup(func() {
		pcancel()
		if err := <-served; err != nil {
			t.Errorf("ServeTransparent: %v", err)
		}
	})

	tlsTo := func(t *testing.T, c net.Conn, cfg *tls.Config) (*tls.Conn, error) {
		tc := tls.Client(c, cfg)
		return tc, tc.Handshake()
	}
	webTLS := &tls.Config{ServerName: "web.test", RootCAs: ca.Pool()}
	noRule := map[string]any{"action": "deny", "rule": "", "reason": policy.ReasonNoRule.String(), "refused": RefusedPolicy.String()}
	allowed := map[string]any{"action": "allow", "rule": "web", "reason": policy.ReasonMatched.String(), "refused": nil}

	t.Run("allowed SNI", func(t *testing.T) {
		c := n.dial(t, nsWebAddr+":443")
		tc, err := tlsTo(t, c, webTLS)
		if err != nil {
			t.Fatalf("TLS handshake with web.test through the gateway: %v", err)
		}
		got, err := get(tc, "web.test")
		if want := "web: web.test /x"; err != nil || got != want {
			t.Fatalf("GET over TLS: got %q, %v; want %q", got, err, want)
		}
		tc.Close()
		line := n.auditOf(t, c)
		checkAudit(t, line, allowed)
		checkAudit(t, line, map[string]any{"listener": "transparent", "sni": "web.test", "dialled": nsWebAddr + ":443", "source": nsClientAddr})
	})
	t.Run("ClientHello over several TCP segments", func(t *testing.T) {
		// 3 bytes cut the record header; 60 more cut the hello itself.
		c := n.dial(t, nsWebAddr+":443", 3, 60)
		tc, err := tlsTo(t, c, webTLS)
		if err != nil {
			t.Fatalf("TLS handshake with a segmented ClientHello: %v", err)
		}
		got, err := get(tc, "web.test")
		if want := "web: web.test /x"; err != nil || got != want {
			t.Fatalf("GET over TLS: got %q, %v; want %q", got, err, want)
		}
		tc.Close()
		checkAudit(t, n.auditOf(t, c), allowed)
	})
	t.Run("allowed SNI to another address", func(t *testing.T) {
		before := n.hits[nsOtherAddr+":443"].Load()
		c := n.dial(t, nsOtherAddr+":443")
		if _, err := tlsTo(t, c, webTLS); err == nil {
			t.Fatalf("TLS handshake claiming web.test at %s: got success, want refused", nsOtherAddr)
		}
		checkAudit(t, n.auditOf(t, c), refusedBy(RefusedSpoofed, policy.ReasonSpoofed, "web"))
		if got := n.hits[nsOtherAddr+":443"].Load(); got != before {
			t.Errorf("the other server accepted %d connections; want none", got-before)
		}
	})
	t.Run("no SNI", func(t *testing.T) {
		c := n.dial(t, nsWebAddr+":443")
		if _, err := tlsTo(t, c, &tls.Config{InsecureSkipVerify: true}); err == nil {
			t.Fatalf("TLS handshake without SNI: got success, want refused")
		}
		checkAudit(t, n.auditOf(t, c), refusedBy(RefusedNoSNI, policy.ReasonNoSNI, ""))
	})
	t.Run("SNI not allowed", func(t *testing.T) {
		c := n.dial(t, nsWebAddr+":443")
		if _, err := tlsTo(t, c, &tls.Config{ServerName: "other.test", RootCAs: ca.Pool()}); err == nil {
			t.Fatalf("TLS handshake with other.test: got success, want refused")
		}
		checkAudit(t, n.auditOf(t, c), noRule)
	})

	t.Run("HTTP Host allowed", func(t *testing.T) {
		for _, host := range []string{"web.test", "web.test:80"} {
			c := n.dial(t, nsWebAddr+":80")
			got, err := get(c, host)
			if want := "web: " + host + " /x"; err != nil || got != want {
				t.Fatalf("GET with Host %s: got %q, %v; want %q", host, got, err, want)
			}
			c.Close()
			checkAudit(t, n.auditOf(t, c), allowed)
		}
	})
	t.Run("HTTP Host segmented", func(t *testing.T) {
		c := n.dial(t, nsWebAddr+":80", 5, 12)
		got, err := get(c, "web.test")
		if want := "web: web.test /x"; err != nil || got != want {
			t.Fatalf("GET: got %q, %v; want %q", got, err, want)
		}
		c.Close()
		checkAudit(t, n.auditOf(t, c), allowed)
	})
	for _, tc := range []struct {
		name, dst, host string
		want            map[string]any
	}{
		{"HTTP Host not allowed", nsWebAddr + ":80", "other.test", noRule},
		{"HTTP Host to another address", nsOtherAddr + ":80", "web.test", refusedBy(RefusedSpoofed, policy.ReasonSpoofed, "web")},
		{"HTTP Host with another port", nsWebAddr + ":80", "web.test:443", refusedBy(RefusedSpoofed, policy.ReasonSpoofed, "")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := n.hits[tc.dst].Load()
			c := n.dial(t, tc.dst)
			if got, err := get(c, tc.host); err == nil {
				t.Fatalf("GET %s with Host %s: got %q, want refused", tc.dst, tc.host, got)
			}
			checkAudit(t, n.auditOf(t, c), tc.want)
			if got := n.hits[tc.dst].Load(); got != before {
				t.Errorf("the server at %s accepted %d connections; want none", tc.dst, got-before)
			}
		})
	}
	t.Run("second request on the connection", func(t *testing.T) {
		before := n.reqs[nsWebAddr+":80"].Load()
		c := n.dial(t, nsWebAddr+":80")
		br := bufio.NewReader(c)
		fmt.Fprintf(c, "GET /1 HTTP/1.1\r\nHost: web.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: other.test\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if want := "web: web.test /1"; string(body) != want {
			t.Errorf("first response: got %q, want %q", body, want)
		}
		if resp, err := http.ReadResponse(br, nil); err == nil {
			t.Errorf("second response: got %s, want the connection closed after the first", resp.Status)
		}
		if got := n.reqs[nsWebAddr+":80"].Load(); got != before+1 {
			t.Errorf("the server answered %d requests; want 1", got-before)
		}
	})
}
