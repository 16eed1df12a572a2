package resolver

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/certs"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// dohName is the name in a test DoH server's certificate.
const dohName = "doh.test"

// dohFault makes a test DoH server misbehave.
type dohFault int

const (
	dohOK            dohFault = iota
	doh500                    // HTTP 500
	dohGarbage                // 200, application/dns-message, not a DNS message
	dohHTML                   // 200, text/html, a valid DNS answer
	dohStall                  // never answers
	dohOtherQuestion          // a DNS answer to another question
	dohTooBig                 // a body over 65,535 bytes
	dohRedirect               // 302 elsewhere
	dohReplyID                // the answer carries another ID than the query's 0
	dohCloseSecond            // HTTP/1.1: closes a connection at its second request, unanswered
)

// dohRequest is what a test DoH server saw of one request.
type dohRequest struct {
	Method string
	Proto  int // HTTP major version
	Host   string
	ID     uint16 // the DNS message ID on the wire
	UA     string
}

// dohServer is an RFC 8484 server on loopback, over HTTP/2 or, if h1,
// HTTP/1.1 only, with a certificate for dohName and 127.0.0.1 from its
// own CA. It answers A queries for www.example.com with 192.0.2.1 (TTL
// 300), others with NXDOMAIN.
type dohServer struct {
	srv      *httptest.Server
	ca       *certs.CA
	caFile   string
	accepted atomic.Int32 // TCP connections accepted
	closed   atomic.Int32 // connections closed
	perConn  sync.Map     // remote address → *atomic.Int32, requests seen
	fault    atomic.Int32 // a dohFault
	age      atomic.Value // string, the Age header to send
	done     chan struct{}

	mu   sync.Mutex // guards following
	reqs []dohRequest
}

func newDoHServer(t testing.TB, h1 bool) *dohServer {
	t.Helper()
	s := &dohServer{ca: certs.NewCA(t), done: make(chan struct{})}
	s.caFile = s.ca.WriteFile(t)
	s.age.Store("")
	hs := httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	hs.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	hs.Listener = &countingListener{Listener: hs.Listener, n: &s.accepted}
	hs.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateClosed || st == http.StateHijacked {
			s.closed.Add(1)
		}
	}
	hs.TLS = &tls.Config{Certificates: []tls.Certificate{s.ca.Leaf(t, dohName, "127.0.0.1")}}
	if h1 {
		hs.TLS.NextProtos = []string{"http/1.1"}
	} else {
		hs.EnableHTTP2 = true
	}
	hs.StartTLS()
	s.srv = hs
	t.Cleanup(hs.Close)
	t.Cleanup(func() { close(s.done) }) // before Close: ends stalled handlers
	return s
}

// upstream returns the policy upstream for s, asking with GET if get.
func (s *dohServer) upstream(get bool) policy.Upstream {
	return policy.Upstream{
		Addr:       netip.MustParseAddrPort(s.srv.Listener.Addr().String()),
		HTTPS:      true,
		ServerName: dohName,
		CAFile:     s.caFile,
		Path:       "/dns-query",
		GET:        get,
	}
}

func (s *dohServer) requests() []dohRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]dohRequest(nil), s.reqs...)
}

func (s *dohServer) serve(w http.ResponseWriter, r *http.Request) {
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
	if err != nil || r.URL.Path != "/dns-query" || len(q.Question) != 1 {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.reqs = append(s.reqs, dohRequest{Method: r.Method, Proto: r.ProtoMajor, Host: r.Host, ID: q.Id, UA: r.Header.Get("User-Agent")})
	s.mu.Unlock()

	if dohFault(s.fault.Load()) == dohCloseSecond {
		n, _ := s.perConn.LoadOrStore(r.RemoteAddr, new(atomic.Int32))
		if n.(*atomic.Int32).Add(1) == 2 {
			// As a server closing an idle connection just as the client
			// sends on it: no answer, the connection closed.
			c, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				c.Close()
			}
			return
		}
	}
	var m *dns.Msg
	if q.Question[0].Name == "www.example.com." && q.Question[0].Qtype == dns.TypeA {
		m = dnstest.Reply(q, dns.RcodeSuccess, dnstest.A("www.example.com", 300, "192.0.2.1"))
	} else {
		m = dnstest.Reply(q, dns.RcodeNameError)
	}
	ct := "application/dns-message"
	switch dohFault(s.fault.Load()) {
	case doh500:
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	case dohStall:
		select {
		case <-r.Context().Done():
		case <-s.done:
		}
		return
	case dohRedirect:
		http.Redirect(w, r, "https://doh.test/elsewhere", http.StatusFound)
		return
	case dohGarbage:
		w.Header().Set("Content-Type", ct)
		// A header that passes the ID and QR checks, then no DNS.
		_, _ = w.Write([]byte("\x00\x00\x81\x80<html>this is not DNS</html>"))
		return
	case dohTooBig:
		w.Header().Set("Content-Type", ct)
		b, _ := m.Pack()
		_, _ = w.Write(append(b, make([]byte, 70000)...))
		return
	case dohHTML:
		ct = "text/html; charset=utf-8"
	case dohOtherQuestion:
		m.Question[0].Name = "evil.example."
	case dohReplyID:
		m.Id = 4242
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

// Queries over HTTP/2 and HTTP/1.1, with POST and GET, are answered, with
// ID 0 on the wire and the client's ID restored, over one connection
// however many queries are sent (on HTTP/2 even at once), to the
// certificate's name at the configured address.
func TestDoH(t *testing.T) {
	for _, h1 := range []bool{false, true} {
		for _, get := range []bool{false, true} {
			name := map[bool]string{false: "h2", true: "http1.1"}[h1] + "/" + map[bool]string{false: "POST", true: "GET"}[get]
			t.Run(name, func(t *testing.T) {
				srv := newDoHServer(t, h1)
				up := srv.upstream(get)
				r := newResolver(t, Config{Upstreams: []policy.Upstream{up}, Timeout: hangLimit})
				for i := range 20 {
					q := query("www.example.com", dns.TypeA)
					q.Id = uint16(1000 + i)
					m, got := exchange(t, r, q)
					if m.Id != q.Id || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "192.0.2.1" {
						t.Fatalf("query %d: got ID %d %s %v, want ID %d NOERROR with 192.0.2.1", i, m.Id, dns.RcodeToString[m.Rcode], m.Answer, q.Id)
					}
					if got != up {
						t.Fatalf("got the answer from %v, want %v", got, up)
					}
				}
				m, _ := exchange(t, r, query("nx.example.com", dns.TypeA))
				if m.Rcode != dns.RcodeNameError || m.Id != 4242 {
					t.Errorf("got %s ID %d, want NXDOMAIN ID 4242", dns.RcodeToString[m.Rcode], m.Id)
				}
				if !h1 {
					// Many at once: one HTTP/2 connection multiplexes them.
					var wg sync.WaitGroup
					errs := make(chan error, 50)
					for range 50 {
						wg.Go(func() {
							ctx, cancel := context.WithTimeout(context.Background(), hangLimit)
							defer cancel()
							if _, _, err := r.Exchange(ctx, query("www.example.com", dns.TypeA)); err != nil {
								errs <- err
							}
						})
					}
					wg.Wait()
					close(errs)
					for err := range errs {
						t.Fatal(err)
					}
				}
				if got := srv.accepted.Load(); got != 1 {
					t.Errorf("server accepted %d connections, want 1 (one TLS handshake)", got)
				}
				reqs := srv.requests()
				wantMethod, wantProto := map[bool]string{false: "POST", true: "GET"}[get], map[bool]int{false: 2, true: 1}[h1]
				wantHost := dohName + ":" + srv.srv.URL[strings.LastIndexByte(srv.srv.URL, ':')+1:]
				for _, req := range reqs {
					if req.Method != wantMethod || req.Proto != wantProto || req.ID != 0 || req.Host != wantHost || req.UA != "" {
						t.Fatalf("server saw %+v, want %s over HTTP/%d to %s with DNS ID 0 and no User-Agent", req, wantMethod, wantProto, wantHost)
					}
				}
				if len(reqs) < 21 {
					t.Errorf("server saw %d requests, want at least 21", len(reqs))
				}
			})
		}
	}
}

// A DoH upstream that is dead or answers anything but a DNS answer to the
// query fails over to the next, is marked sick, and its failure is
// reported to the Observer.
func TestDoHFailover(t *testing.T) {
	dead := func(t *testing.T) policy.Upstream {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		return policy.Upstream{Addr: netip.MustParseAddrPort(addr), HTTPS: true, ServerName: dohName, Path: "/dns-query"}
	}
	tests := []struct {
		name  string
		fault dohFault
		want  string // in the error the Observer sees
	}{
		{"dead", -1, "connection refused"},
		{"500", doh500, "HTTP status 500"},
		{"redirect", dohRedirect, "HTTP status 302"},
		{"garbage", dohGarbage, "unpacking response"},
		{"html", dohHTML, "content type"},
		{"stall", dohStall, "deadline exceeded"},
		{"other question", dohOtherQuestion, errQuestion.Error()},
		{"reply ID", dohReplyID, errID.Error()},
		{"too big", dohTooBig, "larger than 65535 bytes"},
	}
	for _, tt := range tests {
		for _, h1 := range []bool{false, true} {
			t.Run(tt.name+map[bool]string{false: "/h2", true: "/http1.1"}[h1], func(t *testing.T) {
				var bad policy.Upstream
				if tt.fault < 0 {
					bad = dead(t)
				} else {
					srv := newDoHServer(t, h1)
					srv.fault.Store(int32(tt.fault))
					bad = srv.upstream(false)
				}
				good := newDoHServer(t, h1).upstream(false)
				obs := &recordingObserver{}
				r := newResolver(t, Config{Upstreams: []policy.Upstream{bad, good}, Observer: obs})
				r.minBackoff = time.Hour // no probes during the test
				for i := range 3 {
					m, up := exchange(t, r, query("www.example.com", dns.TypeA))
					if up != good || m.Rcode != dns.RcodeSuccess || m.Id != 4242 {
						t.Fatalf("query %d: got %s ID %d from %v, want NOERROR ID 4242 from %v", i, dns.RcodeToString[m.Rcode], m.Id, up, good)
					}
				}
				if st := r.Status()[0]; st.Healthy {
					t.Errorf("got the failing upstream healthy, want sick")
				}
				obs.mu.Lock()
				defer obs.mu.Unlock()
				errs := obs.errs[bad.String()]
				if len(errs) != 1 || errs[0] == nil || !strings.Contains(errs[0].Error(), tt.want) {
					t.Errorf("observer saw %v for the failing upstream, want one error containing %q", errs, tt.want)
				}
			})
		}
	}
}

// A pooled HTTP/1.1 connection the server closes as a query is sent on it
// fails no query: the query goes again on a fresh connection, as DNS
// queries are idempotent.
func TestDoHRetriesClosedPooledConn(t *testing.T) {
	for _, get := range []bool{false, true} {
		srv := newDoHServer(t, true)
		srv.fault.Store(int32(dohCloseSecond))
		r := newResolver(t, Config{Upstreams: []policy.Upstream{srv.upstream(get)}, Timeout: hangLimit})
		for i := range 3 {
			ctx, cancel := context.WithTimeout(context.Background(), hangLimit)
			_, _, err := r.Exchange(ctx, query("www.example.com", dns.TypeA))
			cancel()
			if err != nil {
				t.Fatalf("get=%v: query %d: %v", get, i, err)
			}
		}
		// Queries 2 and 3 each met a closing connection and went on a
		// new one.
		if got := srv.accepted.Load(); got != 3 {
			t.Errorf("get=%v: server accepted %d connections, want 3", get, got)
		}
	}
}

// With only a failing DoH upstream the query fails (the DNS firewall then
// answers SERVFAIL), within the timeout.
func TestDoHAllFailing(t *testing.T) {
	srv := newDoHServer(t, false)
	srv.fault.Store(int32(dohGarbage))
	r := newResolver(t, Config{Upstreams: []policy.Upstream{srv.upstream(false)}})
	_, _, err := r.Exchange(context.Background(), query("www.example.com", dns.TypeA))
	if err == nil || !strings.Contains(err.Error(), "no upstream answered") {
		t.Errorf("got %v, want no upstream answered", err)
	}
}

func TestDoHVerifiesCertificate(t *testing.T) {
	srv := newDoHServer(t, false)
	other := newDoHServer(t, false)
	tests := []struct {
		name string
		up   func(policy.Upstream) policy.Upstream
	}{
		{"certificate for another name", func(u policy.Upstream) policy.Upstream { u.ServerName = "evil.test"; return u }},
		{"unknown CA", func(u policy.Upstream) policy.Upstream { u.CAFile = other.caFile; return u }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newResolver(t, Config{Upstreams: []policy.Upstream{tt.up(srv.upstream(false))}, Timeout: hangLimit})
			_, _, err := r.Exchange(context.Background(), query("www.example.com", dns.TypeA))
			if err == nil || !strings.Contains(err.Error(), "certificate") {
				t.Errorf("got error %v, want one about the certificate", err)
			}
			if n := len(srv.requests()); n != 0 {
				t.Errorf("server saw %d requests, want none", n)
			}
		})
	}
}

// An Age header, from an HTTP cache on the way, is taken from the TTLs.
func TestDoHAge(t *testing.T) {
	tests := []struct {
		age  string
		want uint32
	}{
		{"", 300},
		{"100", 200},
		{"400", 0},
		{"-5", 300},
		{"soon", 300},
	}
	srv := newDoHServer(t, false)
	r := newResolver(t, Config{Upstreams: []policy.Upstream{srv.upstream(false)}, Timeout: hangLimit})
	for _, tt := range tests {
		srv.age.Store(tt.age)
		m, _ := exchange(t, r, query("www.example.com", dns.TypeA))
		if got := m.Answer[0].Header().Ttl; got != tt.want {
			t.Errorf("Age %q: got TTL %d, want %d", tt.age, got, tt.want)
		}
	}
}

// Close ends DoH connections: the server sees them closed.
func TestDoHClose(t *testing.T) {
	srv := newDoHServer(t, false)
	r, err := New(Config{Upstreams: []policy.Upstream{srv.upstream(false)}, Timeout: hangLimit})
	if err != nil {
		t.Fatal(err)
	}
	exchange(t, r, query("www.example.com", dns.TypeA))
	if n := srv.closed.Load(); n != 0 {
		t.Fatalf("server saw %d connections closed before Close, want 0", n)
	}
	r.Close()
	for end := time.Now().Add(hangLimit); srv.closed.Load() != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("server saw %d connections closed %v after Close, want 1", srv.closed.Load(), hangLimit)
		}
	}
	if _, _, err := r.Exchange(context.Background(), query("www.example.com", dns.TypeA)); !errors.Is(err, ErrClosed) {
		t.Errorf("got %v after Close, want ErrClosed", err)
	}
}

// FuzzDoHResponse feeds arbitrary bodies, content types and Age headers to
// the check every DoH response goes through: it must never panic, and
// whatever it accepts must answer the question asked, with ID 0.
func FuzzDoHResponse(f *testing.F) {
	q := new(dns.Msg).SetQuestion("www.example.com.", dns.TypeA)
	q.Id = 0
	ok, _ := dnstest.Reply(q, dns.RcodeSuccess, dnstest.A("www.example.com", 300, "192.0.2.1")).Pack()
	f.Add(ok, "application/dns-message", "")
	f.Add(ok, "application/dns-message; charset=x", "10")
	f.Add(ok, "text/html", "")
	f.Add(ok[:len(ok)/2], "application/dns-message", "99999999999")
	f.Add([]byte("<html>"), "application/dns-message", "-1")
	f.Fuzz(func(t *testing.T, body []byte, ct, age string) {
		resp := &http.Response{
			StatusCode:    http.StatusOK,
			Header:        http.Header{"Content-Type": {ct}, "Age": {age}},
			Body:          io.NopCloser(strings.NewReader(string(body))),
			ContentLength: -1,
		}
		m, err := readDoHResponse(resp, q.Question[0])
		if err != nil {
			return
		}
		if m.Id != 0 || !m.Response || len(body) > dns.MaxMsgSize {
			t.Fatalf("accepted ID %d response=%v from %d bytes", m.Id, m.Response, len(body))
		}
		if len(m.Question) == 1 && m.Question[0].Qtype != dns.TypeA {
			t.Fatalf("accepted an answer to %v", m.Question[0])
		}
	})
}
