package resolver

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// hangLimit proves "does not hang"; it is no performance bound.
const hangLimit = 10 * time.Second

func newResolver(t testing.TB, cfg Config) *Resolver {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = time.Second // long enough for a loaded machine, short enough for Drop tests
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func query(name string, qtype uint16) *dns.Msg {
	q := new(dns.Msg).SetQuestion(dns.Fqdn(name), qtype)
	q.Id = 4242
	return q
}

func zone() dns.HandlerFunc {
	return dnstest.Zone(
		dnstest.A("www.example.com", 300, "192.0.2.1"),
		dnstest.AAAA("www.example.com", 300, "2001:db8::1"),
		dnstest.SOA("example.com", 3600, 60),
	)
}

func exchange(t *testing.T, r *Resolver, q *dns.Msg) (*dns.Msg, policy.Upstream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hangLimit)
	defer cancel()
	m, up, err := r.Exchange(ctx, q)
	if err != nil {
		t.Fatalf("Exchange(%s): %v", q.Question[0].Name, err)
	}
	return m, up
}

func TestExchangeUDP(t *testing.T) {
	srv := dnstest.NewServer(t, zone())
	r := newResolver(t, Config{Upstreams: []policy.Upstream{srv.Upstream()}})
	q := query("WWW.example.com", dns.TypeA)
	before, _ := q.Pack()

	m, up := exchange(t, r, q)
	if up != srv.Upstream() {
		t.Errorf("got upstream %v, want %v", up, srv.Upstream())
	}
	if m.Id != q.Id {
		t.Errorf("got ID %d, want the query's %d", m.Id, q.Id)
	}
	if len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "192.0.2.1" {
		t.Errorf("got answer %v, want www.example.com A 192.0.2.1", m.Answer)
	}
	if after, _ := q.Pack(); string(after) != string(before) {
		t.Error("Exchange modified the query")
	}
	qs := srv.Queries()
	if len(qs) != 1 || qs[0].Net != "udp" {
		t.Fatalf("got queries %+v, want one over udp", qs)
	}
	if qs[0].Msg.Id == q.Id {
		t.Errorf("upstream saw the client's ID %d; want a fresh random one", q.Id)
	}
}

func TestExchangeRandomizesIDsAndPorts(t *testing.T) {
	srv := dnstest.NewServer(t, zone())
	r := newResolver(t, Config{Upstreams: []policy.Upstream{srv.Upstream()}})
	const n = 2*udpMaxUses + 1 // at least 3 sockets, one after another
	for range n {
		exchange(t, r, query("www.example.com", dns.TypeA))
	}
	ids := map[uint16]bool{}
	ports := map[uint16]bool{}
	for _, q := range srv.Queries() {
		ids[q.Msg.Id] = true
		ports[q.From.Port()] = true
	}
	// 513 draws from 65536 IDs: a few collisions at most.
	if len(ids) < n-20 {
		t.Errorf("got %d distinct IDs in %d queries, want nearly all distinct", len(ids), n)
	}
	// Sockets are retired after udpMaxUses queries.
	if want := n/udpMaxUses + 1; len(ports) < want {
		t.Errorf("got %d source ports in %d queries, want at least %d", len(ports), n, want)
	}
}

func TestTruncatedRetriesOverTCP(t *testing.T) {
	srv := dnstest.NewServer(t, zone())
	srv.SetFault(dnstest.Fault{TruncateUDP: true})
	r := newResolver(t, Config{Upstreams: []policy.Upstream{srv.Upstream()}})

	m, _ := exchange(t, r, query("www.example.com", dns.TypeAAAA))
	if m.Truncated || len(m.Answer) != 1 {
		t.Errorf("got TC=%v and %d answers, want the full answer over TCP", m.Truncated, len(m.Answer))
	}
	var nets []string
	for _, q := range srv.Queries() {
		nets = append(nets, q.Net)
	}
	if got, want := strings.Join(nets, ","), "udp,tcp"; got != want {
		t.Errorf("got queries over %s, want %s", got, want)
	}
}

func TestDoTReusesConnection(t *testing.T) {
	srv := dnstest.NewTLSServer(t, zone())
	r := newResolver(t, Config{Upstreams: []policy.Upstream{srv.Upstream()}, Timeout: 5 * time.Second})
	for range 10 {
		m, up := exchange(t, r, query("www.example.com", dns.TypeA))
		if len(m.Answer) != 1 || !up.TLS {
			t.Fatalf("got %v from %v, want one A record from the TLS upstream", m.Answer, up)
		}
	}
	conns := map[netip.AddrPort]bool{}
	for _, q := range srv.Queries() {
		if q.Net != "tcp-tls" {
			t.Errorf("got a query over %s, want tcp-tls", q.Net)
		}
		conns[q.From] = true
	}
	if len(conns) != 1 {
		t.Errorf("got %d connections for 10 sequential queries, want 1", len(conns))
	}
}

// The server closes a connection after 128 queries (miekg/dns's default),
// as real ones do after a limit or an idle time: the pool must notice and
// redial without failing a query.
func TestDoTSurvivesServerClosingConnections(t *testing.T) {
	srv := dnstest.NewTLSServer(t, zone())
	r := newResolver(t, Config{Upstreams: []policy.Upstream{srv.Upstream()}, Timeout: 5 * time.Second})
	for i := range 300 {
		ctx, cancel := context.WithTimeout(context.Background(), hangLimit)
		_, _, err := r.Exchange(ctx, query("www.example.com", dns.TypeA))
		cancel()
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
	}
	conns := map[netip.AddrPort]bool{}
	for _, q := range srv.Queries() {
		conns[q.From] = true
	}
	if len(conns) < 3 {
		t.Errorf("got %d connections for 300 queries, want at least 3 as the server closes each after 128", len(conns))
	}
}

func TestDoTVerifiesCertificate(t *testing.T) {
	srv := dnstest.NewTLSServer(t, zone())
	tests := []struct {
		name string
		up   func(policy.Upstream) policy.Upstream
		want string
	}{
		{"wrong name", func(u policy.Upstream) policy.Upstream { u.ServerName = "evil.test"; return u }, "certificate"},
		{"unknown CA", func(u policy.Upstream) policy.Upstream { u.CAFile = dnstest.NewTLSServer(t, nil).CAFile; return u }, "certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newResolver(t, Config{Upstreams: []policy.Upstream{tt.up(srv.Upstream())}, Timeout: 5 * time.Second})
			_, _, err := r.Exchange(context.Background(), query("www.example.com", dns.TypeA))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got error %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

func TestFailover(t *testing.T) {
	tests := []struct {
		name  string
		fault dnstest.Fault
		// sick: whether the first upstream is then skipped.
		sick bool
	}{
		{"timeout", dnstest.Fault{Drop: true}, true},
		{"SERVFAIL", dnstest.Fault{Rcode: dns.RcodeServerFailure}, false},
		{"REFUSED", dnstest.Fault{Rcode: dns.RcodeRefused}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := dnstest.NewServer(t, zone())
			bad.SetFault(tt.fault)
			good := dnstest.NewServer(t, zone())
			r := newResolver(t, Config{Upstreams: []policy.Upstream{bad.Upstream(), good.Upstream()}})
			r.minBackoff = time.Hour // no probes during the test

			for i := range 3 {
				m, up := exchange(t, r, query("www.example.com", dns.TypeA))
				if up != good.Upstream() || m.Rcode != dns.RcodeSuccess {
					t.Fatalf("query %d: got %s from %v, want NOERROR from %v", i, dns.RcodeToString[m.Rcode], up, good.Upstream())
				}
			}
			wantBad := 3
			if tt.sick {
				wantBad = 1
			}
			if got := bad.QueryCount(); got != wantBad {
				t.Errorf("failing upstream saw %d queries, want %d", got, wantBad)
			}
			if got := r.Status()[0].Healthy; got == tt.sick {
				t.Errorf("got failing upstream healthy=%v, want %v", got, !tt.sick)
			}
		})
	}
}

func TestAllServFailReturnsAnswer(t *testing.T) {
	a := dnstest.NewServer(t, zone())
	b := dnstest.NewServer(t, zone())
	a.SetFault(dnstest.Fault{Rcode: dns.RcodeServerFailure})
	b.SetFault(dnstest.Fault{Rcode: dns.RcodeServerFailure})
	r := newResolver(t, Config{Upstreams: []policy.Upstream{a.Upstream(), b.Upstream()}})
	m, up := exchange(t, r, query("www.example.com", dns.TypeA))
	if m.Rcode != dns.RcodeServerFailure || up != b.Upstream() {
		t.Errorf("got %s from %v, want SERVFAIL from the last upstream %v", dns.RcodeToString[m.Rcode], up, b.Upstream())
	}
}

func TestAllDeadFailsWithinTimeout(t *testing.T) {
	dropping := dnstest.NewServer(t, zone())
	dropping.SetFault(dnstest.Fault{Drop: true})
	closed := dnstest.NewServer(t, zone())
	closed.Close() // UDP: connection refused
	r := newResolver(t, Config{
		Upstreams: []policy.Upstream{dropping.Upstream(), closed.Upstream()},
		Timeout:   100 * time.Millisecond,
	})
	for i := range 5 {
		done := make(chan error, 1)
		go func() {
			_, _, err := r.Exchange(context.Background(), query("www.example.com", dns.TypeA))
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil {
				t.Fatalf("query %d: got no error with every upstream dead", i)
			}
		case <-time.After(hangLimit):
			t.Fatalf("query %d: Exchange hung with every upstream dead", i)
		}
	}
	for _, st := range r.Status() {
		if st.Healthy {
			t.Errorf("got %v healthy, want sick", st.Upstream)
		}
	}
	// After the first query found both dead, each query asks one upstream.
	if got := dropping.QueryCount(); got >= 5 {
		t.Errorf("dead upstream saw %d of 5 queries; want it skipped while another was due", got)
	}
}

func TestProbeRestoresPrimary(t *testing.T) {
	primary := dnstest.NewServer(t, zone())
	primary.SetFault(dnstest.Fault{Drop: true})
	secondary := dnstest.NewServer(t, zone())
	r := newResolver(t, Config{Upstreams: []policy.Upstream{primary.Upstream(), secondary.Upstream()}})
	r.minBackoff, r.maxBackoff = 10*time.Millisecond, 10*time.Millisecond

	exchange(t, r, query("www.example.com", dns.TypeA))
	if r.Status()[0].Healthy {
		t.Fatal("got primary healthy after it timed out, want sick")
	}
	primary.SetFault(dnstest.Fault{})
	deadline := time.Now().Add(hangLimit)
	for !r.Status()[0].Healthy {
		if time.Now().After(deadline) {
			t.Fatal("primary never probed back to health")
		}
		// Answers come from the secondary while the primary is probed.
		if _, up := exchange(t, r, query("www.example.com", dns.TypeA)); up != secondary.Upstream() && !r.Status()[0].Healthy {
			t.Fatalf("got answer from %v while primary sick, want secondary", up)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, up := exchange(t, r, query("www.example.com", dns.TypeA)); up != primary.Upstream() {
		t.Errorf("got answer from %v after recovery, want primary %v", up, primary.Upstream())
	}
}

func TestBusy(t *testing.T) {
	srv := dnstest.NewServer(t, zone())
	srv.SetFault(dnstest.Fault{Drop: true})
	r := newResolver(t, Config{Upstreams: []policy.Upstream{srv.Upstream()}, MaxInFlight: 1, Timeout: 5 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _, _, _ = r.Exchange(ctx, query("www.example.com", dns.TypeA)) })
	for srv.QueryCount() == 0 {
		time.Sleep(time.Millisecond)
	}
	_, _, err := r.Exchange(context.Background(), query("www.example.com", dns.TypeA))
	if !errors.Is(err, ErrBusy) {
		t.Errorf("got %v over MaxInFlight, want ErrBusy", err)
	}
	cancel()
	wg.Wait()
	srv.SetFault(dnstest.Fault{})
	if _, _, err := r.Exchange(context.Background(), query("www.example.com", dns.TypeA)); err != nil {
		t.Errorf("got %v once the slot was free, want an answer", err)
	}
}

func TestCallerCancelDoesNotMarkSick(t *testing.T) {
	for _, how := range []string{"cancel", "deadline"} {
		t.Run(how, func(t *testing.T) {
			srv := dnstest.NewServer(t, zone())
			srv.SetFault(dnstest.Fault{Drop: true})
			r := newResolver(t, Config{Upstreams: []policy.Upstream{srv.Upstream()}, Timeout: hangLimit})
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			if how == "cancel" {
				go func() {
					for srv.QueryCount() == 0 {
						time.Sleep(time.Millisecond)
					}
					cancel()
				}()
			}
			_, _, err := r.Exchange(ctx, query("www.example.com", dns.TypeA))
			if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("got %v, want the context's error", err)
			}
			if !r.Status()[0].Healthy {
				t.Error("got upstream sick after the caller gave up, want healthy")
			}
		})
	}
}

// spoofServer answers each query first with datagrams an off-path attacker
// might send, then with the real answer.
func spoofServer(t *testing.T) policy.Upstream {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := new(dns.Msg)
			if q.Unpack(buf[:n]) != nil {
				continue
			}
			send := func(m *dns.Msg) {
				b, _ := m.Pack()
				_, _ = pc.WriteTo(b, from)
			}
			wrongID := dnstest.Reply(q, dns.RcodeSuccess, dnstest.A(q.Question[0].Name, 300, "203.0.113.66"))
			wrongID.Id++
			send(wrongID)
			other := q.Copy()
			other.Question[0].Name = "evil.example."
			send(dnstest.Reply(other, dns.RcodeSuccess, dnstest.A("evil.example", 300, "203.0.113.66")))
			_, _ = pc.WriteTo([]byte("garbage that is not DNS"), from)
			// Too big for the read buffer, and not an answer to the
			// query: no reason to retry over TCP, which this server
			// does not serve.
			big := make([]byte, 2*udpReadSize)
			copy(big, buf[:n])
			big[0]++       // another ID
			big[2] |= 0x80 // QR
			_, _ = pc.WriteTo(big, from)
			send(dnstest.Reply(q, dns.RcodeSuccess, dnstest.A(q.Question[0].Name, 300, "192.0.2.1")))
		}
	}()
	return policy.Upstream{Addr: pc.LocalAddr().(*net.UDPAddr).AddrPort()}
}

func TestIgnoresSpoofedDatagrams(t *testing.T) {
	r := newResolver(t, Config{Upstreams: []policy.Upstream{spoofServer(t)}, Timeout: hangLimit})
	for range 3 {
		m, _ := exchange(t, r, query("www.example.com", dns.TypeA))
		if len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "192.0.2.1" {
			t.Fatalf("got %v, want the genuine answer 192.0.2.1", m.Answer)
		}
	}
}

// oneShotTCP answers one query per connection, then closes it, like a
// server whose idle timeout passed between two queries.
func oneShotTCP(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				dc := &dns.Conn{Conn: c}
				q, err := dc.ReadMsg()
				if err != nil {
					return
				}
				_ = dc.WriteMsg(dnstest.Reply(q, dns.RcodeSuccess, dnstest.A(q.Question[0].Name, 300, "192.0.2.1")))
			}()
		}
	}()
	return l.Addr().String()
}

func TestStreamRetriesClosedPooledConn(t *testing.T) {
	p := &streamPool{addr: oneShotTCP(t), dialer: &net.Dialer{}}
	defer p.close()
	q := query("www.example.com", dns.TypeA)
	wire, _ := q.Pack()
	for i := range 3 {
		setID(wire, uint16(i))
		// Let the server's close arrive before the pooled conn is reused.
		time.Sleep(10 * time.Millisecond)
		m, err := p.exchange(context.Background(), wire, uint16(i), q.Question[0], time.Now().Add(hangLimit))
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		if len(m.Answer) != 1 {
			t.Fatalf("query %d: got %d answers, want 1", i, len(m.Answer))
		}
	}
}

// Servers close idle connections together; a retry on another pooled
// connection would meet the same fate.
func TestStreamRetryDialsFresh(t *testing.T) {
	p := &streamPool{addr: oneShotTCP(t), dialer: &net.Dialer{}}
	defer p.close()
	q := query("www.example.com", dns.TypeA)
	wire, _ := q.Pack()
	deadline := time.Now().Add(hangLimit)
	var conns []*streamConn
	for range 3 {
		c, _, err := p.get(context.Background(), deadline, true)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := roundTrip(context.Background(), c, wire, q.Id, q.Question[0], deadline); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		p.put(c) // each already closed by the server
	}
	time.Sleep(10 * time.Millisecond)
	if _, err := p.exchange(context.Background(), wire, q.Id, q.Question[0], deadline); err != nil {
		t.Errorf("got %v with only stale connections pooled, want an answer over a fresh one", err)
	}
}

type recordingObserver struct {
	mu   sync.Mutex
	errs map[string][]error
}

func (o *recordingObserver) ObserveExchange(up string, d time.Duration, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.errs == nil {
		o.errs = map[string][]error{}
	}
	o.errs[up] = append(o.errs[up], err)
}

func TestObserver(t *testing.T) {
	bad := dnstest.NewServer(t, zone())
	bad.SetFault(dnstest.Fault{Rcode: dns.RcodeServerFailure})
	good := dnstest.NewServer(t, zone())
	obs := &recordingObserver{}
	r := newResolver(t, Config{Upstreams: []policy.Upstream{bad.Upstream(), good.Upstream()}, Observer: obs})
	exchange(t, r, query("www.example.com", dns.TypeA))

	obs.mu.Lock()
	defer obs.mu.Unlock()
	var rerr *RcodeError
	if errs := obs.errs[bad.Upstream().String()]; len(errs) != 1 || !errors.As(errs[0], &rerr) || rerr.Rcode != dns.RcodeServerFailure {
		t.Errorf("got %v for the failing upstream, want one *RcodeError SERVFAIL", errs)
	}
	if errs := obs.errs[good.Upstream().String()]; len(errs) != 1 || errs[0] != nil {
		t.Errorf("got %v for the good upstream, want one nil", errs)
	}
}

func TestClose(t *testing.T) {
	srv := dnstest.NewServer(t, zone())
	r, err := New(Config{Upstreams: []policy.Upstream{srv.Upstream()}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Exchange(context.Background(), query("www.example.com", dns.TypeA)); err != nil {
		t.Fatal(err)
	}
	r.Close()
	r.Close()
	if _, _, err := r.Exchange(context.Background(), query("www.example.com", dns.TypeA)); !errors.Is(err, ErrClosed) {
		t.Errorf("got %v after Close, want ErrClosed", err)
	}
}

func TestNewRejects(t *testing.T) {
	good := policy.Upstream{Addr: netip.MustParseAddrPort("127.0.0.1:53")}
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no upstreams", Config{}, "no upstreams"},
		{"no address", Config{Upstreams: []policy.Upstream{{}}}, "ip:port"},
		{"negative timeout", Config{Upstreams: []policy.Upstream{good}, Timeout: -1}, "negative"},
		{"negative in flight", Config{Upstreams: []policy.Upstream{good}, MaxInFlight: -1}, "negative"},
		{"missing CA file", Config{Upstreams: []policy.Upstream{{Addr: good.Addr, TLS: true, ServerName: "x", CAFile: "/nonexistent/ca.pem"}}}, "reading CA file"},
		{"CA file without PEM", Config{Upstreams: []policy.Upstream{{Addr: good.Addr, TLS: true, ServerName: "x", CAFile: "resolver.go"}}}, "no PEM certificate"},
		{"DoH without path", Config{Upstreams: []policy.Upstream{{Addr: good.Addr, HTTPS: true, ServerName: "x"}}}, "absolute path"},
		{"DoH bad path", Config{Upstreams: []policy.Upstream{{Addr: good.Addr, HTTPS: true, ServerName: "x", Path: "/%zz"}}}, "not a usable DoH URL"},
		{"DoH missing CA file", Config{Upstreams: []policy.Upstream{{Addr: good.Addr, HTTPS: true, ServerName: "x", Path: "/", CAFile: "/nonexistent/ca.pem"}}}, "reading CA file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got error %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

func TestRejectsMultipleQuestions(t *testing.T) {
	srv := dnstest.NewServer(t, zone())
	r := newResolver(t, Config{Upstreams: []policy.Upstream{srv.Upstream()}})
	q := query("www.example.com", dns.TypeA)
	q.Question = append(q.Question, q.Question[0])
	if _, _, err := r.Exchange(context.Background(), q); err == nil {
		t.Error("got no error for a query with two questions")
	}
	if srv.QueryCount() != 0 {
		t.Error("a query with two questions was sent upstream")
	}
}
