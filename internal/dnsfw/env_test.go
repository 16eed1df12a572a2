package dnsfw

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/resolver"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
	"github.com/fqdngate/fqdngate/internal/testutil/syncbuf"
)

// Client source addresses: the policy puts each in its own group.
const (
	payments = "127.0.0.2" // group payments: rule bank
	web      = "127.0.0.3" // group web: rule web
	stranger = "127.0.0.4" // no group: only rules without from
)

// testPolicy is the policy the tests start from (with the defaults min_ttl
// 30s, max_ttl 1h, grace 10m, cache on, rate_limit 1000/s with bursts of
// 2000); UPSTREAM becomes the fake
// upstream's address, DNS and RULES extra lines under dns: and rules:.
const testPolicy = `
mode: MODE
dns:
  upstreams: [UPSTREAM]
DNS
sources:
  payments: [127.0.0.2/32]
  web: [127.0.0.3/32]
rules:
  - name: bank
    from: [payments]
    to: [api.bank.example, "*.edge.bank.example"]
    ports: [443]
  - name: web
    from: [web]
    to: [www.example.com]
    ports: [443]
  - name: everyone
    to: [public.example]
    ports: [443]
RULES
`

// opts change an env before it starts.
type opts struct {
	mode  string // enforce (default) or audit
	dns   string // extra lines under dns:, indented two spaces
	rules string // extra rules, indented two spaces
	cfg   func(*Config)
	// packetConn serves UDP through the generic net.PacketConn path
	// (dns.Server, a goroutine per datagram) rather than the worker pool
	// a *net.UDPConn gets.
	packetConn bool
	// udpSessions serves UDP as on a wildcard address (IP_PKTINFO).
	udpSessions bool
	// noBatch serves UDP one datagram per system call, as on a wildcard
	// address but without IP_PKTINFO.
	noBatch bool
	// noFast sends every UDP query the ordinary way.
	noFast bool
}

// env is a firewall serving UDP and TCP on 127.0.0.1 in front of a fake
// upstream, with a fake clock and a captured audit log.
type env struct {
	t     testing.TB
	fw    *Firewall
	up    *dnstest.Server
	pol   atomic.Pointer[policy.Policy]
	clock *fakeClock
	log   *syncBuffer
	udp   netip.AddrPort
	tcp   netip.AddrPort
}

func newEnv(t testing.TB, h dns.HandlerFunc, o opts) *env {
	t.Helper()
	e := &env{t: t, clock: &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}, log: &syncBuffer{}}
	e.up = dnstest.NewServer(t, h)
	p := e.policy(o)
	e.pol.Store(p)
	res, err := resolver.New(resolver.Config{Upstreams: p.DNS.Upstreams, Timeout: p.DNS.Timeout, MaxInFlight: p.DNS.MaxInFlight})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Close() })
	cfg := Config{
		Policy:    e.pol.Load,
		Exchanger: res,
		Audit:     audit.New(e.log, "json", nil),
		Now:       e.clock.Now,
	}
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	e.fw, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.fw.udpSessions = o.udpSessions
	e.fw.noBatch = o.noBatch
	e.fw.noFast = o.noFast
	e.serve(o.packetConn)
	return e
}

// policy returns testPolicy with o's changes and e's upstream; storing it
// in e.pol is a reload.
func (e *env) policy(o opts) *policy.Policy {
	e.t.Helper()
	if o.mode == "" {
		o.mode = "enforce"
	}
	y := strings.NewReplacer("MODE", o.mode, "UPSTREAM", e.up.Addr.String(), "DNS", o.dns, "RULES", o.rules).Replace(testPolicy)
	p, err := policy.Parse("test.yaml", []byte(y))
	if err != nil {
		e.t.Fatalf("policy: %v\n%s", err, y)
	}
	return p
}

func (e *env) serve(packetConn bool) {
	e.t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	e.udp = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	e.tcp = l.Addr().(*net.TCPAddr).AddrPort()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	if packetConn {
		pc = struct{ net.PacketConn }{pc} // no longer a *net.UDPConn
	}
	go func() { done <- e.fw.ServeUDP(ctx, pc) }()
	go func() { done <- e.fw.ServeTCP(ctx, l) }()
	e.t.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				e.t.Errorf("serve: %v", err)
			}
		}
	})
}

// exchange sends m from src over network ("udp" or "tcp") and returns the
// reply.
func (e *env) exchange(src, network string, m *dns.Msg, timeout time.Duration) (*dns.Msg, error) {
	c := &dns.Client{Net: network, Timeout: timeout, Dialer: &net.Dialer{Timeout: timeout}}
	addr := e.udp.String()
	if network == "tcp" {
		c.Dialer.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
		addr = e.tcp.String()
	} else {
		c.Dialer.LocalAddr = &net.UDPAddr{IP: net.ParseIP(src)}
	}
	r, _, err := c.Exchange(m, addr)
	return r, err
}

// ask sends a query for name and qtype from src over UDP, with EDNS0 so
// answers are not truncated, and returns the reply.
func (e *env) ask(src, name string, qtype uint16) *dns.Msg {
	e.t.Helper()
	m := new(dns.Msg).SetQuestion(dns.Fqdn(name), qtype)
	m.SetEdns0(4096, false)
	r, err := e.exchange(src, "udp", m, 3*time.Second)
	if err != nil {
		e.t.Fatalf("query %s %s from %s: %v", name, dns.TypeToString[qtype], src, err)
	}
	return r
}

// auditLines waits for the audit log to hold n lines (it is written just
// after the reply is sent) and returns its lines, decoded.
func (e *env) auditLines(n int) []map[string]any {
	e.t.Helper()
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if strings.Count(e.log.String(), "\n") >= n {
			break
		}
	}
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(e.log.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			e.t.Fatalf("audit line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// learned returns the in-memory store's entries for name.
func (e *env) learned(name string) []learn.Entry {
	var out []learn.Entry
	for _, en := range e.fw.Learned().List() {
		if string(en.Name) == name {
			out = append(out, en)
		}
	}
	return out
}

// answerAddrs returns the addresses of the A and AAAA records in m.
func answerAddrs(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		switch v := rr.(type) {
		case *dns.A:
			out = append(out, v.A.String())
		case *dns.AAAA:
			out = append(out, v.AAAA.String())
		}
	}
	return out
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type syncBuffer = syncbuf.Buffer

// zone is the upstream's data for most tests.
func zone(extra ...dns.RR) dns.HandlerFunc {
	rrs := []dns.RR{
		dnstest.A("api.bank.example", 300, "192.0.2.10"),
		dnstest.AAAA("api.bank.example", 300, "2001:db8::10"),
		&dns.TXT{Hdr: dns.RR_Header{Name: "api.bank.example.", Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 300}, Txt: []string{"secret"}},
		&dns.MX{Hdr: dns.RR_Header{Name: "api.bank.example.", Rrtype: dns.TypeMX, Class: dns.ClassINET, Ttl: 300}, Preference: 10, Mx: "mx.bank.example."},
		dnstest.A("x.edge.bank.example", 300, "192.0.2.11"),
		dnstest.AAAA("x.edge.bank.example", 300, "2001:db8::11"),
		dnstest.A("a.b.edge.bank.example", 300, "192.0.2.12"),
		dnstest.A("www.example.com", 300, "192.0.2.20"),
		dnstest.A("public.example", 300, "192.0.2.30"),
		dnstest.A("evil.example", 300, "198.51.100.66"),
		dnstest.SOA("bank.example", 3600, 60),
	}
	return dnstest.Zone(append(rrs, extra...)...)
}

// testCounter returns the value of counter c.
func testCounter(t testing.TB, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// waitCounter waits until counter c reaches want, as a query is counted
// just after its reply is sent (with its audit line), and returns its value
// then, or after ten seconds.
func waitCounter(t testing.TB, c prometheus.Counter, want float64) float64 {
	t.Helper()
	got := testCounter(t, c)
	for deadline := time.Now().Add(10 * time.Second); got < want && time.Now().Before(deadline); got = testCounter(t, c) {
		time.Sleep(time.Millisecond)
	}
	return got
}
