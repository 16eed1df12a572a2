package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// client is a host that resolves through a DNS server and connects over
// HTTPS, as a program with a stub resolver would. Its sockets live in ns.
type client struct {
	ns         *netns.NS
	src4, src6 string // source addresses; "" lets the kernel choose
	dns        string // the resolver it is configured with, "ip:port"
	roots      *x509.CertPool
}

// src is the source address for connections to a.
func (c *client) src(a netip.Addr) string {
	if a.Unmap().Is4() {
		return c.src4
	}
	return c.src6
}

// exchange sends one query for name and qtype to server over network
// ("udp" or "tcp") and waits up to timeout for the reply.
func (c *client) exchange(network, server, name string, qtype uint16, timeout time.Duration) (*dns.Msg, error) {
	ap := netip.MustParseAddrPort(server)
	conn, err := c.ns.Dial(network, c.src(ap.Addr()), server, timeout)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	q := new(dns.Msg).SetQuestion(dns.Fqdn(name), qtype)
	cl := &dns.Client{Net: network, Timeout: timeout}
	r, _, err := cl.ExchangeWithConn(q, &dns.Conn{Conn: conn})
	return r, err
}

// lookup asks the client's resolver for name's addresses of qtype (A or
// AAAA) and returns them with the smallest TTL. An answer without
// addresses is an error naming its rcode.
func (c *client) lookup(name string, qtype uint16) ([]netip.Addr, uint32, error) {
	r, err := c.exchange("udp", c.dns, name, qtype, reachWait)
	if err != nil {
		return nil, 0, fmt.Errorf("resolving %s %s: %w", name, dns.TypeToString[qtype], err)
	}
	addrs, ttl := answerAddrs(r)
	if len(addrs) == 0 {
		return nil, 0, fmt.Errorf("resolving %s %s: %s with no addresses", name, dns.TypeToString[qtype], dns.RcodeToString[r.Rcode])
	}
	return addrs, ttl, nil
}

// answerAddrs returns the A and AAAA addresses of r and their smallest TTL.
func answerAddrs(r *dns.Msg) ([]netip.Addr, uint32) {
	var out []netip.Addr
	ttl := uint32(1<<32 - 1)
	for _, rr := range r.Answer {
		var a netip.Addr
		switch v := rr.(type) {
		case *dns.A:
			a, _ = netip.AddrFromSlice(v.A.To4())
		case *dns.AAAA:
			a, _ = netip.AddrFromSlice(v.AAAA)
		default:
			continue
		}
		out = append(out, a)
		ttl = min(ttl, rr.Header().Ttl)
	}
	return out, ttl
}

// session is one HTTPS connection that can carry several requests.
type session struct {
	name string
	conn *tls.Conn
	br   *bufio.Reader
}

// open connects to dst and completes a TLS handshake for name, within
// timeout.
func (c *client) open(name string, dst netip.AddrPort, timeout time.Duration) (*session, error) {
	raw, err := c.ns.Dial("tcp", c.src(dst.Addr()), dst.String(), timeout)
	if err != nil {
		return nil, err
	}
	conn := tls.Client(raw, &tls.Config{ServerName: name, RootCAs: c.roots, MinVersion: tls.VersionTLS12})
	conn.SetDeadline(time.Now().Add(timeout))
	if err := conn.Handshake(); err != nil {
		raw.Close()
		return nil, fmt.Errorf("TLS handshake with %s for %s: %w", dst, name, err)
	}
	conn.SetDeadline(time.Time{})
	return &session{name: name, conn: conn, br: bufio.NewReader(conn)}, nil
}

// get sends GET / on the session and returns the response body.
func (s *session) get(timeout time.Duration) (string, error) {
	s.conn.SetDeadline(time.Now().Add(timeout))
	defer s.conn.SetDeadline(time.Time{})
	if _, err := fmt.Fprintf(s.conn, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", s.name); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(s.br, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET https://%s/: %s", s.name, resp.Status)
	}
	return strings.TrimSpace(string(body)), nil
}

func (s *session) Close() { s.conn.Close() }

// get fetches https://name/ from dst over a fresh connection and checks
// that dst served it.
func (c *client) get(name string, dst netip.AddrPort, timeout time.Duration) error {
	s, err := c.open(name, dst, timeout)
	if err != nil {
		return err
	}
	defer s.Close()
	body, err := s.get(timeout)
	if err != nil {
		return err
	}
	if want := "served " + dst.String(); body != want {
		return fmt.Errorf("GET https://%s/ at %s: got %q, want %q", name, dst, body, want)
	}
	return nil
}

// dropped returns nil if a TCP connection to dst is silently dropped (the
// dial times out), else what happened instead.
func (c *client) dropped(dst netip.AddrPort) error {
	conn, err := c.ns.Dial("tcp", c.src(dst.Addr()), dst.String(), dropWait)
	if err == nil {
		conn.Close()
		return fmt.Errorf("connected to %s, want it dropped", dst)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	// Locally generated packets dropped in the output hook may fail the
	// connect at once instead.
	if errors.Is(err, syscall.EPERM) {
		return nil
	}
	return fmt.Errorf("dialling %s: %v; want a timeout (dropped by the firewall)", dst, err)
}

// resolveAndGet resolves name (A, or AAAA when v6) through the client's
// resolver and fetches https://name/ from the first address on port.
func (c *client) resolveAndGet(name string, qtype uint16, port uint16) (netip.Addr, error) {
	addrs, _, err := c.lookup(name, qtype)
	if err != nil {
		return netip.Addr{}, err
	}
	return addrs[0], c.get(name, netip.AddrPortFrom(addrs[0], port), reachWait)
}

// mustReach fails t unless https://name/ at dst answers.
func mustReach(t *testing.T, c *client, name string, dst netip.AddrPort) {
	t.Helper()
	if err := c.get(name, dst, reachWait); err != nil {
		t.Errorf("from %s: %s at %s: %v, want it reachable", c.src(dst.Addr()), name, dst, err)
	}
}

// mustDrop fails t unless a connection to dst is dropped.
func mustDrop(t *testing.T, c *client, dst netip.AddrPort) {
	t.Helper()
	if err := c.dropped(dst); err != nil {
		t.Errorf("from %s: %v", c.src(dst.Addr()), err)
	}
}

// ap parses "addr:port" or builds it from an address and a port.
func ap(addr string, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(addr), port)
}
