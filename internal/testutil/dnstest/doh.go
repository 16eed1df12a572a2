package dnstest

import (
	"crypto/tls"
	"encoding/base64"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/certs"
)

// DoHServerName is the name in a DoHServer's certificate.
const DoHServerName = "doh.test"

// DoHPath is the path a DoHServer answers on.
const DoHPath = "/dns-query"

// DoHFault makes a DoHServer misbehave.
type DoHFault int

const (
	DoHOK            DoHFault = iota
	DoH500                    // HTTP 500
	DoHGarbage                // 200, application/dns-message, a DNS header then no DNS
	DoHHTML                   // 200, text/html, a valid DNS answer
	DoHStall                  // never answers (until the client gives up or the server closes)
	DoHOtherQuestion          // a DNS answer to another question
	DoHTooBig                 // a body over 65,535 bytes
	DoHRedirect               // 302 elsewhere
	DoHReplyID                // the answer carries another ID than the query's
	DoHCloseSecond            // HTTP/1.1: closes a connection at its second request, unanswered
)

// DoHRequest is what a DoHServer saw of one request.
type DoHRequest struct {
	Method string
	Proto  int // HTTP major version
	Host   string
	ID     uint16 // the DNS message ID on the wire
	UA     string // User-Agent
}

// DoHServer is a DNS-over-HTTPS (RFC 8484) server on 127.0.0.1, POST and
// GET on DoHPath, over HTTP/2 or HTTP/1.1 only, with a certificate for
// DoHServerName and 127.0.0.1 from its own CA. Its methods are safe for
// concurrent use.
type DoHServer struct {
	Addr   netip.AddrPort
	CA     *certs.CA
	CAFile string
	// Accepted and Closed count the TCP connections accepted and closed.
	Accepted, Closed atomic.Int32

	handler dns.HandlerFunc
	fault   atomic.Int32 // a DoHFault
	age     atomic.Value // string, the Age header to send
	done    chan struct{}
	perConn sync.Map // remote address → *atomic.Int32, requests seen

	mu   sync.Mutex // guards following
	reqs []DoHRequest
}

// NewDoHServer starts a DoH server answering with h (if nil, every name is
// NXDOMAIN), over HTTP/1.1 only if http1, else HTTP/2. It is closed when
// the test ends.
func NewDoHServer(t testing.TB, h dns.HandlerFunc, http1 bool) *DoHServer {
	t.Helper()
	if h == nil {
		h = Zone()
	}
	s := &DoHServer{CA: certs.NewCA(t), handler: h, done: make(chan struct{})}
	s.CAFile = s.CA.WriteFile(t)
	s.age.Store("")
	hs := httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	hs.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	hs.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateClosed || st == http.StateHijacked {
			s.Closed.Add(1)
		}
	}
	hs.Listener = &countingListener{Listener: hs.Listener, n: &s.Accepted}
	hs.TLS = &tls.Config{Certificates: []tls.Certificate{s.CA.Leaf(t, DoHServerName, "127.0.0.1")}}
	if http1 {
		hs.TLS.NextProtos = []string{"http/1.1"}
	} else {
		hs.EnableHTTP2 = true
	}
	hs.StartTLS()
	s.Addr = netip.MustParseAddrPort(hs.Listener.Addr().String())
	t.Cleanup(hs.Close)
	t.Cleanup(func() { close(s.done) }) // before Close: ends stalled handlers
	return s
}

// DoHHandler returns an http.Handler answering DoH requests on DoHPath
// with h (if nil, every name is NXDOMAIN), as a DoHServer does, for
// servers a test runs itself (in a network namespace, say).
func DoHHandler(h dns.HandlerFunc) http.Handler {
	if h == nil {
		h = Zone()
	}
	s := &DoHServer{handler: h, done: make(chan struct{})}
	s.age.Store("")
	return http.HandlerFunc(s.serve)
}

// Upstream returns the policy upstream for s, asking with GET if get.
func (s *DoHServer) Upstream(get bool) policy.Upstream {
	return policy.Upstream{
		Addr:       s.Addr,
		HTTPS:      true,
		ServerName: DoHServerName,
		CAFile:     s.CAFile,
		Path:       DoHPath,
		GET:        get,
	}
}

// SetFault makes s misbehave from now on; DoHOK ends it.
func (s *DoHServer) SetFault(f DoHFault) { s.fault.Store(int32(f)) }

// SetAge makes s send an Age header with its answers; "" sends none.
func (s *DoHServer) SetAge(age string) { s.age.Store(age) }

// Requests returns the requests s saw, in order.
func (s *DoHServer) Requests() []DoHRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]DoHRequest(nil), s.reqs...)
}

func (s *DoHServer) serve(w http.ResponseWriter, r *http.Request) {
	var wire []byte
	var err error
	switch r.Method {
	case http.MethodPost:
		if r.Header.Get("Content-Type") != "application/dns-message" {
			http.Error(w, "want application/dns-message", http.StatusUnsupportedMediaType)
			return
		}
		wire, err = io.ReadAll(io.LimitReader(r.Body, 65536))
	case http.MethodGet:
		wire, err = base64.RawURLEncoding.DecodeString(r.URL.Query().Get("dns"))
	default:
		http.Error(w, "", http.StatusMethodNotAllowed)
		return
	}
	q := new(dns.Msg)
	if err == nil {
		err = q.Unpack(wire)
	}
	if err != nil || r.URL.Path != DoHPath || len(q.Question) != 1 {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.reqs = append(s.reqs, DoHRequest{Method: r.Method, Proto: r.ProtoMajor, Host: r.Host, ID: q.Id, UA: r.Header.Get("User-Agent")})
	s.mu.Unlock()

	fault := DoHFault(s.fault.Load())
	if fault == DoHCloseSecond {
		n, _ := s.perConn.LoadOrStore(r.RemoteAddr, new(atomic.Int32))
		if n.(*atomic.Int32).Add(1) == 2 {
			// As a server closing an idle connection just as the client
			// sends on it: no answer, the connection closed.
			if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
				c.Close()
			}
			return
		}
	}
	rw := &capture{remote: r.RemoteAddr}
	s.handler(rw, q)
	m := rw.msg
	if m == nil {
		http.Error(w, "no answer", http.StatusInternalServerError)
		return
	}
	ct := "application/dns-message"
	switch fault {
	case DoH500:
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	case DoHStall:
		select {
		case <-r.Context().Done():
		case <-s.done:
		}
		return
	case DoHRedirect:
		http.Redirect(w, r, "https://"+DoHServerName+"/elsewhere", http.StatusFound)
		return
	case DoHGarbage:
		// A header that passes the ID and QR checks, then no DNS.
		w.Header().Set("Content-Type", ct)
		_, _ = w.Write([]byte("\x00\x00\x81\x80<html>this is not DNS</html>"))
		return
	case DoHTooBig:
		w.Header().Set("Content-Type", ct)
		b, _ := m.Pack()
		_, _ = w.Write(append(b, make([]byte, 70000)...))
		return
	case DoHHTML:
		ct = "text/html; charset=utf-8"
	case DoHOtherQuestion:
		if len(m.Question) == 1 {
			m.Question[0].Name = "evil.example."
		}
	case DoHReplyID:
		m.Id = q.Id + 1
	}
	b, err := m.Pack()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", ct)
	if age := s.age.Load().(string); age != "" {
		w.Header().Set("Age", age)
	}
	_, _ = w.Write(b)
}

// capture is the dns.ResponseWriter a DoHServer's handler writes to.
type capture struct {
	remote string
	msg    *dns.Msg
}

func (c *capture) LocalAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}
}

func (c *capture) RemoteAddr() net.Addr {
	if ap, err := netip.ParseAddrPort(c.remote); err == nil {
		return net.TCPAddrFromAddrPort(ap)
	}
	return &net.TCPAddr{}
}

func (c *capture) WriteMsg(m *dns.Msg) error { c.msg = m.Copy(); return nil }

func (c *capture) Write(b []byte) (int, error) {
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return 0, err
	}
	c.msg = m
	return len(b), nil
}

func (c *capture) Close() error        { return nil }
func (c *capture) TsigStatus() error   { return nil }
func (c *capture) TsigTimersOnly(bool) {}
func (c *capture) Hijack()             {}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	n *atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}
