package dnstest_test

import (
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

func exchange(t *testing.T, network, addr string, q *dns.Msg) (*dns.Msg, error) {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(q, addr)
	return r, err
}

func query(name string, qtype uint16) *dns.Msg {
	return new(dns.Msg).SetQuestion(dns.Fqdn(name), qtype)
}

func TestZone(t *testing.T) {
	srv := dnstest.NewServer(t, dnstest.Zone(
		dnstest.A("api.example.com", 300, "192.0.2.10"),
		dnstest.A("api.example.com", 300, "192.0.2.11"),
		dnstest.CNAME("www.example.com", 60, "api.example.com"),
		dnstest.AAAA("v6.example.com", 30, "2001:db8::1"),
		dnstest.SOA("example.com", 3600, 120),
	))
	tests := []struct {
		name       string
		qname      string
		qtype      uint16
		wantRcode  int
		wantAnswer int
		wantSOA    bool
	}{
		{"exact A", "api.example.com", dns.TypeA, dns.RcodeSuccess, 2, false},
		{"any case", "API.Example.COM", dns.TypeA, dns.RcodeSuccess, 2, false},
		{"CNAME chased", "www.example.com", dns.TypeA, dns.RcodeSuccess, 3, false},
		{"CNAME asked for", "www.example.com", dns.TypeCNAME, dns.RcodeSuccess, 1, false},
		{"NODATA", "v6.example.com", dns.TypeA, dns.RcodeSuccess, 0, true},
		{"NXDOMAIN", "nope.example.com", dns.TypeA, dns.RcodeNameError, 0, true},
		{"NXDOMAIN outside zone", "example.org", dns.TypeA, dns.RcodeNameError, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := exchange(t, "udp", srv.Addr.String(), query(tt.qname, tt.qtype))
			if err != nil {
				t.Fatal(err)
			}
			if r.Rcode != tt.wantRcode {
				t.Errorf("got rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.wantRcode])
			}
			if len(r.Answer) != tt.wantAnswer {
				t.Errorf("got %d answers, want %d: %v", len(r.Answer), tt.wantAnswer, r.Answer)
			}
			gotSOA := len(r.Ns) == 1 && r.Ns[0].Header().Rrtype == dns.TypeSOA
			if gotSOA != tt.wantSOA {
				t.Errorf("got SOA in authority %v, want %v", gotSOA, tt.wantSOA)
			}
			if r.Question[0].Name != dns.Fqdn(tt.qname) {
				t.Errorf("got question %q, want the case asked %q", r.Question[0].Name, dns.Fqdn(tt.qname))
			}
		})
	}
}

func TestUDPAndTCPSharePortAndAreRecorded(t *testing.T) {
	srv := dnstest.NewServer(t, dnstest.Answer(dnstest.A("x.test", 5, "192.0.2.1")))
	for _, network := range []string{"udp", "tcp"} {
		if _, err := exchange(t, network, srv.Addr.String(), query("x.test", dns.TypeA)); err != nil {
			t.Fatalf("%s: %v", network, err)
		}
	}
	qs := srv.Queries()
	if len(qs) != 2 {
		t.Fatalf("got %d queries, want 2", len(qs))
	}
	for i, want := range []string{"udp", "tcp"} {
		if qs[i].Net != want {
			t.Errorf("query %d: got net %q, want %q", i, qs[i].Net, want)
		}
		if !qs[i].From.Addr().IsLoopback() {
			t.Errorf("query %d: got source %v, want loopback", i, qs[i].From)
		}
		if got := qs[i].Msg.Question[0].Name; got != "x.test." {
			t.Errorf("query %d: got name %q, want x.test.", i, got)
		}
	}
	if got := srv.QueryCount(); got != 2 {
		t.Errorf("got QueryCount %d, want 2", got)
	}
	srv.Reset()
	if got := len(srv.Queries()); got != 0 {
		t.Errorf("after Reset: got %d queries, want 0", got)
	}
}

func TestFaults(t *testing.T) {
	srv := dnstest.NewServer(t, dnstest.Answer(dnstest.A("x.test", 5, "192.0.2.1")))
	addr := srv.Addr.String()

	srv.SetFault(dnstest.Fault{Rcode: dns.RcodeServerFailure})
	r, err := exchange(t, "udp", addr, query("x.test", dns.TypeA))
	if err != nil || r.Rcode != dns.RcodeServerFailure {
		t.Errorf("SERVFAIL fault: got %v, %v; want a SERVFAIL response", r, err)
	}

	srv.SetFault(dnstest.Fault{TruncateUDP: true})
	r, err = exchange(t, "udp", addr, query("x.test", dns.TypeA))
	if err != nil || !r.Truncated || len(r.Answer) != 0 {
		t.Errorf("truncation over UDP: got %v, %v; want TC and no answers", r, err)
	}
	r, err = exchange(t, "tcp", addr, query("x.test", dns.TypeA))
	if err != nil || r.Truncated || len(r.Answer) != 1 {
		t.Errorf("truncation over TCP: got %v, %v; want the full answer", r, err)
	}

	srv.SetFault(dnstest.Fault{Drop: true})
	c := &dns.Client{Net: "udp", Timeout: 200 * time.Millisecond}
	_, _, err = c.Exchange(query("x.test", dns.TypeA), addr)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("drop: got error %v, want a timeout", err)
	}

	srv.SetFault(dnstest.Fault{})
	if _, err := exchange(t, "udp", addr, query("x.test", dns.TypeA)); err != nil {
		t.Errorf("after clearing the fault: %v", err)
	}
}

func TestCloseCutsDelayShort(t *testing.T) {
	srv := dnstest.NewServer(t, dnstest.Answer())
	srv.SetFault(dnstest.Fault{Delay: time.Hour})
	go func() {
		c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
		_, _, _ = c.Exchange(query("x.test", dns.TypeA), srv.Addr.String())
	}()
	for srv.QueryCount() == 0 {
		time.Sleep(time.Millisecond)
	}
	closed := make(chan struct{})
	go func() { srv.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung on a delayed answer")
	}
	srv.Close() // idempotent
}

func TestTLSServer(t *testing.T) {
	srv := dnstest.NewTLSServer(t, dnstest.Zone(
		dnstest.HTTPS("svc.test", 60, 1, ".", dnstest.ALPN("h2"), dnstest.IPv4Hint("192.0.2.7"), dnstest.ECH([]byte{0, 1, 2})),
	))
	up := srv.Upstream()
	if !up.TLS || up.ServerName != dnstest.ServerName || up.CAFile == "" || up.Addr != srv.Addr {
		t.Errorf("got upstream %+v, want TLS to %v named %s with a CA file", up, srv.Addr, dnstest.ServerName)
	}
	c := &dns.Client{Net: "tcp-tls", Timeout: 5 * time.Second,
		TLSConfig: &tls.Config{ServerName: dnstest.ServerName, RootCAs: srv.CA.Pool()}}
	r, _, err := c.Exchange(query("svc.test", dns.TypeHTTPS), srv.Addr.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Answer) != 1 {
		t.Fatalf("got %d answers, want 1", len(r.Answer))
	}
	h, ok := r.Answer[0].(*dns.HTTPS)
	if !ok || len(h.Value) != 3 || h.Value[2].Key() != dns.SVCB_ECHCONFIG {
		t.Errorf("got %v, want an HTTPS record with alpn, ipv4hint and ech", r.Answer[0])
	}
	if qs := srv.Queries(); len(qs) != 1 || qs[0].Net != "tcp-tls" {
		t.Errorf("got queries %+v, want one over tcp-tls", qs)
	}
}

func TestRecordConstructors(t *testing.T) {
	tests := []struct {
		rr   dns.RR
		want string
	}{
		{dnstest.A("a.test", 10, "192.0.2.1"), "a.test.\t10\tIN\tA\t192.0.2.1"},
		{dnstest.AAAA("a.test.", 20, "2001:db8::1"), "a.test.\t20\tIN\tAAAA\t2001:db8::1"},
		{dnstest.CNAME("b.test", 30, "a.test"), "b.test.\t30\tIN\tCNAME\ta.test."},
		{dnstest.HTTPS("c.test", 40, 1, ".", dnstest.ALPN("h3", "h2")), "c.test.\t40\tIN\tHTTPS\t1 . alpn=\"h3,h2\""},
	}
	for _, tt := range tests {
		if got := tt.rr.String(); got != tt.want {
			t.Errorf("got %q, want %q", got, tt.want)
		}
	}
}
