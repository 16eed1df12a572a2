package dnsfw

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

func TestTCPSeveralQueriesPerConnection(t *testing.T) {
	e := newEnv(t, zone(), opts{})
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(payments)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", e.tcp.String())
	if err != nil {
		t.Fatal(err)
	}
	conn := &dns.Conn{Conn: c}
	defer conn.Close()
	names := []string{"api.bank.example.", "x.edge.bank.example.", "evil.example.", "public.example."}
	wantRcodes := []int{dns.RcodeSuccess, dns.RcodeSuccess, dns.RcodeNameError, dns.RcodeSuccess}
	for i, name := range names {
		m := new(dns.Msg).SetQuestion(name, dns.TypeA)
		m.Id = uint16(100 + i)
		if err := conn.WriteMsg(m); err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		r, err := conn.ReadMsg()
		if err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		if r.Id != m.Id || r.Rcode != wantRcodes[i] {
			t.Errorf("reply %d: got ID %d %s, want ID %d %s", i, r.Id, dns.RcodeToString[r.Rcode], m.Id, dns.RcodeToString[wantRcodes[i]])
		}
	}
}

func TestRateLimit(t *testing.T) {
	// The fake clock stands still, so no token is refilled during the test.
	e := newEnv(t, zone(), opts{dns: "  rate_limit: 1\n  rate_burst: 3"})
	var got []int
	for range 5 {
		got = append(got, e.ask(payments, "api.bank.example", dns.TypeA).Rcode)
	}
	want := []int{dns.RcodeSuccess, dns.RcodeSuccess, dns.RcodeSuccess, dns.RcodeRefused, dns.RcodeRefused}
	if !slices.Equal(got, want) {
		t.Errorf("rcodes from one client: got %v, want %v", got, want)
	}
	if r := e.ask(web, "www.example.com", dns.TypeA); r.Rcode != dns.RcodeSuccess {
		t.Errorf("another client: got %s, want NOERROR", dns.RcodeToString[r.Rcode])
	}
	if got := testCounter(t, e.fw.metrics.refused.WithLabelValues("rate_limit")); got != 2 {
		t.Errorf("rate-limited count: got %v, want 2", got)
	}
	// A refusal for load is a failure, not a denial; counted, not audited.
	if got := waitCounter(t, e.fw.metrics.queries.WithLabelValues("fail", "A", "REFUSED"), 2); got != 2 {
		t.Errorf("rate-limited queries counted as fail: got %v, want 2", got)
	}
	if lines := e.auditLines(4); len(lines) != 4 {
		t.Errorf("audit lines: got %d, want 4 (the answered queries only)", len(lines))
	}
	e.clock.Advance(time.Second)
	if r := e.ask(payments, "api.bank.example", dns.TypeA); r.Rcode != dns.RcodeSuccess {
		t.Errorf("a second later: got %s, want NOERROR", dns.RcodeToString[r.Rcode])
	}
}

func TestInFlightBoundRefuses(t *testing.T) {
	e := newEnv(t, zone(), opts{dns: "  max_inflight: 1\n  cache: false"})
	e.up.SetFault(dnstest.Fault{Delay: 500 * time.Millisecond})
	first := make(chan *dns.Msg)
	go func() { first <- e.ask(payments, "api.bank.example", dns.TypeA) }()
	// Wait until the first query is upstream, holding the only slot.
	for deadline := time.Now().Add(2 * time.Second); e.up.QueryCount() == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if r := e.ask(payments, "x.edge.bank.example", dns.TypeA); r.Rcode != dns.RcodeRefused {
		t.Errorf("second query while the first is in flight: got %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}
	if r := <-first; r.Rcode != dns.RcodeSuccess {
		t.Errorf("first query: got %s, want NOERROR", dns.RcodeToString[r.Rcode])
	}
	if got := testCounter(t, e.fw.metrics.refused.WithLabelValues("busy")); got != 1 {
		t.Errorf("busy count: got %v, want 1", got)
	}
	if got := waitCounter(t, e.fw.metrics.queries.WithLabelValues("fail", "A", "REFUSED"), 1); got != 1 {
		t.Errorf("failed (busy) queries counted: got %v, want 1", got)
	}
	// Counted, not audited: only the first query has a line.
	time.Sleep(50 * time.Millisecond)
	if lines := e.auditLines(1); len(lines) != 1 || lines[0]["name"] != "api.bank.example" {
		t.Errorf("audit lines: got %v, want only the first query's", lines)
	}
}

// gatePublisher blocks every Publish until released, or fails it.
type gatePublisher struct {
	got     chan []learn.Entry
	release chan struct{}
	err     error
}

func (g *gatePublisher) Publish(ctx context.Context, batch []learn.Entry) error {
	if g.err != nil {
		return g.err
	}
	g.got <- slices.Clone(batch) // the caller reuses batch
	select {
	case <-g.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func TestPublishBeforeAnswer(t *testing.T) {
	pub := &gatePublisher{got: make(chan []learn.Entry, 1), release: make(chan struct{})}
	e := newEnv(t, zone(), opts{cfg: func(c *Config) { c.Publisher = pub }})
	answered := make(chan *dns.Msg, 1)
	go func() { answered <- e.ask(payments, "api.bank.example", dns.TypeA) }()

	var batch []learn.Entry
	select {
	case batch = <-pub.got:
	case <-time.After(3 * time.Second):
		t.Fatal("nothing was published")
	}
	want := learn.Entry{Name: "api.bank.example", Rule: "bank", Group: "payments",
		Addr: netip.MustParseAddr("192.0.2.10"), Expires: e.clock.Now().Add(300*time.Second + 10*time.Minute)}
	if len(batch) != 1 || batch[0] != want {
		t.Errorf("published: got %+v, want [%+v]", batch, want)
	}
	select {
	case r := <-answered:
		t.Fatalf("the client got an answer (%v) before Publish returned", answerAddrs(r))
	case <-time.After(200 * time.Millisecond):
	}
	close(pub.release)
	select {
	case r := <-answered:
		if got := answerAddrs(r); !slices.Equal(got, []string{"192.0.2.10"}) {
			t.Errorf("answer: got %v, want [192.0.2.10]", got)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no answer after Publish returned")
	}
}

func TestPublishFailureIsServfail(t *testing.T) {
	tests := []struct {
		name string
		pub  *gatePublisher
		cfg  func(*Config)
	}{
		{"error", &gatePublisher{err: errors.New("nftables: netlink: no buffer space")}, nil},
		{"timeout", &gatePublisher{got: make(chan []learn.Entry, 1), release: make(chan struct{})},
			func(c *Config) { c.PublishTimeout = 100 * time.Millisecond }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, zone(), opts{cfg: func(c *Config) {
				c.Publisher = tt.pub
				if tt.cfg != nil {
					tt.cfg(c)
				}
			}})
			r := e.ask(payments, "api.bank.example", dns.TypeA)
			if r.Rcode != dns.RcodeServerFailure || len(r.Answer) != 0 {
				t.Errorf("got %s with %d answers, want SERVFAIL with none", dns.RcodeToString[r.Rcode], len(r.Answer))
			}
			if got := testCounter(t, e.fw.metrics.publishFailures); got != 1 {
				t.Errorf("publish failures: got %v, want 1", got)
			}
		})
	}
}

// countingPublisher records every batch.
type countingPublisher struct {
	mu      sync.Mutex
	batches [][]learn.Entry
}

func (c *countingPublisher) Publish(_ context.Context, batch []learn.Entry) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.batches = append(c.batches, slices.Clone(batch)) // the caller reuses batch
	return nil
}

func (c *countingPublisher) last() []learn.Entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.batches) == 0 {
		return nil
	}
	return c.batches[len(c.batches)-1]
}

func TestCacheRefreshesLearned(t *testing.T) {
	pub := &countingPublisher{}
	e := newEnv(t, zone(), opts{cfg: func(c *Config) { c.Publisher = pub }})
	start := e.clock.Now()
	e.ask(payments, "api.bank.example", dns.TypeA)
	if got := pub.last(); len(got) != 1 || got[0].Expires != start.Add(300*time.Second+10*time.Minute) {
		t.Fatalf("first publish: got %+v, want one entry expiring in 5m10m", got)
	}

	e.clock.Advance(100 * time.Second)
	r := e.ask(payments, "api.bank.example", dns.TypeA)
	if n := e.up.QueryCount(); n != 1 {
		t.Errorf("upstream queries: got %d, want 1 (the second from cache)", n)
	}
	if got := r.Answer[0].Header().Ttl; got != 200 {
		t.Errorf("cached TTL to client: got %d, want 200", got)
	}
	got := pub.last()
	if want := e.clock.Now().Add(200*time.Second + 10*time.Minute); len(got) != 1 || got[0].Expires != want {
		t.Errorf("refresh from cache: got %+v, want one entry expiring at %v", got, want)
	}
	if n := len(pub.batches); n != 2 {
		t.Errorf("publishes: got %d, want 2", n)
	}
	if hits := testCounter(t, e.fw.metrics.cacheHits); hits != 1 {
		t.Errorf("cache hits: got %v, want 1", hits)
	}

	// The policy is checked before the cache: another group is denied
	// although the answer is cached.
	if r := e.ask(web, "api.bank.example", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("other group, cached name: got %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
}

func TestAuditMode(t *testing.T) {
	e := newEnv(t, zone(dnstest.A("intranet.example", 300, "10.0.0.5")), opts{mode: "audit", dns: "  cache: false"})
	tests := []struct {
		src, name  string
		qtype      uint16
		wantAction string
	}{
		{payments, "api.bank.example", dns.TypeA, "allow"},
		{web, "api.bank.example", dns.TypeA, "would-deny"},
		{payments, "evil.example", dns.TypeA, "would-deny"},
		{payments, "api.bank.example", dns.TypeTXT, "would-deny"},
		{payments, "intranet.example", dns.TypeA, "would-deny"},
	}
	for i, tt := range tests {
		e.up.Reset()
		r := e.ask(tt.src, tt.name, tt.qtype)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
			t.Errorf("%s %s from %s: got %s with %d answers, want the upstream's answer",
				tt.name, dns.TypeToString[tt.qtype], tt.src, dns.RcodeToString[r.Rcode], len(r.Answer))
		}
		if n := e.up.QueryCount(); n != 1 {
			t.Errorf("%s from %s: upstream saw %d queries, want 1", tt.name, tt.src, n)
		}
		lines := e.auditLines(i + 1)
		if got := lines[i]["action"]; got != tt.wantAction {
			t.Errorf("%s %s from %s: audit action: got %v, want %s", tt.name, dns.TypeToString[tt.qtype], tt.src, got, tt.wantAction)
		}
	}
}

func TestAuditLine(t *testing.T) {
	e := newEnv(t, zone(), opts{dns: "  cache: false"})
	e.ask(payments, "API.bank.example", dns.TypeA)
	e.ask(payments, "api.bank.example", dns.TypeTXT)
	lines := e.auditLines(2)
	if len(lines) != 2 {
		t.Fatalf("audit lines: got %d, want 2", len(lines))
	}
	// A line is written after its reply, so the two may come in either
	// order.
	if lines[0]["qtype"] != "A" {
		lines[0], lines[1] = lines[1], lines[0]
	}
	want := map[string]any{
		"msg": "decision", "component": "dns", "source": payments, "name": "API.bank.example", "qtype": "A",
		"action": "allow", "rule": "bank", "reason": "matched", "transport": "udp", "rcode": "NOERROR",
		"answers": "192.0.2.10", "upstream": e.up.Addr.String(),
	}
	for k, v := range want {
		if got := lines[0][k]; got != v {
			t.Errorf("allowed query: %s: got %v, want %v", k, got, v)
		}
	}
	if _, ok := lines[0]["latency_ms"].(float64); !ok { // the test's clock stands still
		t.Errorf("allowed query: no latency_ms (a number of milliseconds) in %v", lines[0])
	}
	want = map[string]any{"qtype": "TXT", "action": "deny", "rule": "", "near_rule": "bank", "reason": "record type not allowed by dns.qtypes",
		"rcode": "REFUSED", "dns_reason": noteQType}
	for k, v := range want {
		if got := lines[1][k]; got != v {
			t.Errorf("TXT query: %s: got %v, want %v", k, got, v)
		}
	}
}

func TestLookupNetIP(t *testing.T) {
	e := newEnv(t, zone(
		dnstest.A("mixed.example", 300, "10.0.0.1"),
		dnstest.A("mixed.example", 300, "198.51.100.1"),
		dnstest.A("private.example", 300, "192.168.1.1"),
		dnstest.SOA("example", 3600, 60),
	), opts{})
	tests := []struct {
		host     string
		want     []string
		notFound bool
		errSub   string
	}{
		{"api.bank.example", []string{"192.0.2.10", "2001:db8::10"}, false, ""},
		// The rules do not matter: the caller decided.
		{"evil.example", []string{"198.51.100.66"}, false, ""},
		{"mixed.example", []string{"198.51.100.1"}, false, ""},
		{"private.example", nil, false, "rebinding"},
		{"nonexistent.example", nil, true, ""},
		{"192.0.2.99", []string{"192.0.2.99"}, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			addrs, err := e.fw.LookupNetIP(context.Background(), tt.host)
			var got []string
			for _, a := range addrs {
				got = append(got, a.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("addresses: got %v, want %v", got, tt.want)
			}
			if tt.want != nil {
				if err != nil {
					t.Errorf("error: got %v, want nil", err)
				}
				return
			}
			var de *net.DNSError
			if !errors.As(err, &de) {
				t.Fatalf("error: got %v, want a *net.DNSError", err)
			}
			if de.IsNotFound != tt.notFound {
				t.Errorf("IsNotFound: got %v, want %v (%v)", de.IsNotFound, tt.notFound, err)
			}
			if tt.errSub != "" && !contains(err.Error(), tt.errSub) {
				t.Errorf("error: got %q, want it to mention %q", err, tt.errSub)
			}
		})
	}
	if got := len(e.fw.Learned().List()); got != 0 {
		t.Errorf("learned by lookups: got %d entries, want none", got)
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func TestServeStopsGracefully(t *testing.T) {
	e := newEnv(t, zone(), opts{dns: "  cache: false"})
	e.up.SetFault(dnstest.Fault{Delay: 200 * time.Millisecond})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.fw.ServeUDP(ctx, pc) }()

	c := &dns.Client{Timeout: 3 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(payments)}}}
	answered := make(chan *dns.Msg, 1)
	go func() {
		r, _, err := c.Exchange(new(dns.Msg).SetQuestion("api.bank.example.", dns.TypeA), pc.LocalAddr().String())
		if err != nil {
			t.Errorf("query in flight at shutdown: %v", err)
		}
		answered <- r
	}()
	for deadline := time.Now().Add(2 * time.Second); e.up.QueryCount() == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeUDP: got %v, want nil", err)
		}
	case <-time.After(shutdownGrace + time.Second):
		t.Fatal("ServeUDP did not return after its context ended")
	}
	if r := <-answered; r == nil || r.Rcode != dns.RcodeSuccess {
		t.Errorf("query in flight at shutdown: got %v, want its answer", r)
	}
}

func TestTCPConnectionsBounded(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &limitListener{Listener: inner, sem: make(chan struct{}, 2)}
	defer l.Close()
	accepted := make(chan net.Conn, 3)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	var clients []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	var served []net.Conn
	for range 2 {
		served = append(served, <-accepted)
	}
	// The third was accepted and closed at once: its read sees EOF.
	_ = clients[2].SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := clients[2].Read(make([]byte, 1)); err == nil {
		t.Error("third connection: read succeeded, want it closed")
	}
	select {
	case <-accepted:
		t.Error("third connection was served beyond the bound of 2")
	default:
	}
	// Closing a served connection frees its slot.
	served[0].Close()
	c, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case s := <-accepted:
		s.Close()
	case <-time.After(2 * time.Second):
		t.Error("a connection after one closed was not served")
	}
	served[1].Close()
}

// TestUDPSessions runs queries through the UDP path of wildcard sockets,
// which replies from the address each query came to (IP_PKTINFO).
func TestUDPSessions(t *testing.T) {
	e := newEnv(t, zone(), opts{udpSessions: true})
	tests := []struct {
		msg  *dns.Msg
		want int
	}{
		{new(dns.Msg).SetQuestion("api.bank.example.", dns.TypeA), dns.RcodeSuccess},
		{new(dns.Msg).SetQuestion("evil.example.", dns.TypeA), dns.RcodeNameError},
		{func() *dns.Msg {
			m := new(dns.Msg).SetQuestion("api.bank.example.", dns.TypeA)
			m.Opcode = dns.OpcodeNotify
			return m
		}(), dns.RcodeNotImplemented},
		{func() *dns.Msg {
			m := new(dns.Msg).SetQuestion("api.bank.example.", dns.TypeA)
			m.Question = append(m.Question, m.Question[0])
			return m
		}(), dns.RcodeFormatError},
	}
	for _, tt := range tests {
		r, err := e.exchange(payments, "udp", tt.msg, 2*time.Second)
		if err != nil {
			t.Errorf("%s: %v", tt.msg.Question[0].Name, err)
			continue
		}
		if r.Rcode != tt.want || r.Id != tt.msg.Id {
			t.Errorf("%s: got ID %d %s, want ID %d %s", tt.msg.Question[0].Name, r.Id, dns.RcodeToString[r.Rcode], tt.msg.Id, dns.RcodeToString[tt.want])
		}
	}
}
