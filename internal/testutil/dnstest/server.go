// Package dnstest runs loopback DNS servers for tests, the way httptest runs
// HTTP servers.
//
// A typical test:
//
//	srv := dnstest.NewServer(t, dnstest.Zone(
//		dnstest.A("api.example.com", 300, "192.0.2.10"),
//		dnstest.SOA("example.com", 3600, 60),
//	))
//	up := srv.Upstream() // a policy.Upstream for the resolver
//	...
//	srv.SetFault(dnstest.Fault{Rcode: dns.RcodeServerFailure}) // now it fails
//	for _, q := range srv.Queries() { ... }                    // what it saw
//
// NewTLSServer speaks DNS-over-TLS, NewDoHServer DNS-over-HTTPS (over
// HTTP/2 or HTTP/1.1, with faults of its own: DoHFault). Servers bind
// 127.0.0.1 only and shut down through t.Cleanup.
package dnstest

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/certs"
)

// ServerName is the name in a TLS server's certificate.
const ServerName = "dns.test"

// maxLogged bounds the query log so benchmarks that send millions of
// queries do not grow memory without limit; QueryCount keeps counting.
const maxLogged = 4096

// Query is one query the server received.
type Query struct {
	Msg  *dns.Msg // a copy; the handler cannot change it
	Net  string   // "udp", "tcp" or "tcp-tls"
	From netip.AddrPort
}

// Fault makes a server misbehave. The zero Fault is a well-behaved server.
type Fault struct {
	// Delay holds every answer back this long. Close cuts it short.
	Delay time.Duration
	// Drop never answers; over TCP the connection stays open and silent.
	Drop bool
	// Rcode, if not zero (NOERROR), answers every query with this rcode and
	// no records instead of asking the handler, e.g. dns.RcodeServerFailure.
	Rcode int
	// TruncateUDP answers queries over UDP with TC set and no records, so
	// clients retry over TCP, where the handler answers normally.
	TruncateUDP bool
}

// Server is a DNS server on loopback. Its methods are safe for concurrent
// use.
type Server struct {
	// Addr is where the server listens: UDP and TCP on the same port for
	// NewServer, DNS-over-TLS for NewTLSServer.
	Addr netip.AddrPort
	// CA signed the server certificate; nil unless the server speaks TLS.
	CA *certs.CA
	// CAFile is CA written as a PEM file; empty unless the server speaks TLS.
	CAFile string

	handler dns.HandlerFunc
	tls     bool
	count   atomic.Int64
	done    chan struct{} // closed by Close; releases delayed answers

	mu      sync.Mutex // guards following
	queries []Query
	fault   Fault
	servers []*dns.Server
	served  chan error // one value per server when ActivateAndServe returns
	closed  bool
}

// NewServer starts a server answering over UDP and TCP on one port of
// 127.0.0.1 with h; if h is nil, every name is NXDOMAIN. It is closed when
// the test ends.
func NewServer(t testing.TB, h dns.HandlerFunc) *Server {
	t.Helper()
	s := newServer(h)
	pc, l, err := listenUDPAndTCP()
	if err != nil {
		t.Fatalf("dnstest: %v", err)
	}
	s.Addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	s.start(t,
		&dns.Server{PacketConn: pc, Net: "udp"},
		&dns.Server{Listener: l, Net: "tcp"})
	return s
}

// NewTLSServer starts a DNS-over-TLS server on 127.0.0.1 answering with h.
// Its certificate names ServerName and 127.0.0.1 and is signed by s.CA. It is
// closed when the test ends.
func NewTLSServer(t testing.TB, h dns.HandlerFunc) *Server {
	t.Helper()
	s := newServer(h)
	s.tls = true
	s.CA = certs.NewCA(t)
	s.CAFile = s.CA.WriteFile(t)
	cfg := &tls.Config{
		Certificates: []tls.Certificate{s.CA.Leaf(t, ServerName, "127.0.0.1")},
		MinVersion:   tls.VersionTLS12,
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatalf("dnstest: listening for TLS: %v", err)
	}
	s.Addr = l.Addr().(*net.TCPAddr).AddrPort()
	s.start(t, &dns.Server{Listener: l, Net: "tcp-tls"})
	return s
}

func newServer(h dns.HandlerFunc) *Server {
	if h == nil {
		h = Zone()
	}
	return &Server{handler: h, done: make(chan struct{})}
}

// listenUDPAndTCP binds UDP and TCP to the same free port of 127.0.0.1.
// The kernel picks the UDP port; the TCP port of that number may be taken,
// so it tries a few times.
func listenUDPAndTCP() (net.PacketConn, net.Listener, error) {
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, fmt.Errorf("listening on udp: %w", err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			return pc, l, nil
		}
		pc.Close()
		lastErr = err
	}
	return nil, nil, fmt.Errorf("finding a port free for both udp and tcp: %w", lastErr)
}

func (s *Server) start(t testing.TB, servers ...*dns.Server) {
	t.Helper()
	s.servers = servers
	s.served = make(chan error, len(servers))
	var started sync.WaitGroup
	for _, srv := range servers {
		srv.Handler = dns.HandlerFunc(s.serve)
		started.Add(1)
		// A server that fails to start never notifies; Done once either way.
		ready := sync.OnceFunc(started.Done)
		srv.NotifyStartedFunc = ready
		go func() {
			err := srv.ActivateAndServe()
			ready()
			s.served <- err
		}()
	}
	started.Wait()
	t.Cleanup(s.Close)
}

// Upstream returns the server as a resolver upstream.
func (s *Server) Upstream() policy.Upstream {
	if s.tls {
		return policy.Upstream{Addr: s.Addr, TLS: true, ServerName: ServerName, CAFile: s.CAFile}
	}
	return policy.Upstream{Addr: s.Addr}
}

// SetFault changes how the server misbehaves from the next query on.
func (s *Server) SetFault(f Fault) {
	s.mu.Lock()
	s.fault = f
	s.mu.Unlock()
}

// Queries returns the queries received so far, oldest first; at most the
// last 4096.
func (s *Server) Queries() []Query {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Query(nil), s.queries...)
}

// QueryCount returns how many queries the server has received.
func (s *Server) QueryCount() int { return int(s.count.Load()) }

// Reset forgets the queries received so far.
func (s *Server) Reset() {
	s.mu.Lock()
	s.queries = nil
	s.count.Store(0)
	s.mu.Unlock()
}

// Close shuts the server down and waits for it to stop. Clients then see
// connection refused (TCP) or silence (UDP). It is safe to call more than
// once; the test's cleanup calls it too.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	close(s.done)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, srv := range s.servers {
		_ = srv.ShutdownContext(ctx)
	}
	for range s.servers {
		<-s.served
	}
}

func (s *Server) serve(w dns.ResponseWriter, r *dns.Msg) {
	q := Query{Msg: r.Copy(), Net: w.LocalAddr().Network()}
	if s.tls {
		q.Net = "tcp-tls"
	}
	if ap, err := netip.ParseAddrPort(w.RemoteAddr().String()); err == nil {
		q.From = ap
	}
	s.count.Add(1)
	s.mu.Lock()
	if len(s.queries) == maxLogged {
		copy(s.queries, s.queries[1:])
		s.queries = s.queries[:maxLogged-1]
	}
	s.queries = append(s.queries, q)
	f := s.fault
	s.mu.Unlock()

	if f.Delay > 0 {
		timer := time.NewTimer(f.Delay)
		select {
		case <-timer.C:
		case <-s.done:
			timer.Stop()
			return
		}
	}
	switch {
	case f.Drop:
		return
	case f.Rcode != dns.RcodeSuccess:
		m := new(dns.Msg).SetRcode(r, f.Rcode)
		m.RecursionAvailable = true
		_ = w.WriteMsg(m)
	case f.TruncateUDP && q.Net == "udp":
		m := new(dns.Msg).SetReply(r)
		m.Truncated = true
		m.RecursionAvailable = true
		_ = w.WriteMsg(m)
	default:
		s.handler(w, r)
	}
}
