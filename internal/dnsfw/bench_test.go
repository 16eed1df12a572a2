package dnsfw

import (
	"context"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/proxy"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// BenchmarkQueryUDP sends allowed A queries through the UDP server to a
// loopback upstream, from parallel clients, and reports the median round
// trip. "direct" asks the upstream itself, the baseline the firewall's
// added latency is measured against. "10xAAAA-no-EDNS" asks, without
// EDNS as glibc's stub resolver does, for a name with 10 AAAA records:
// 540 bytes uncompressed, so the reply must go out compressed.
func BenchmarkQueryUDP(b *testing.B) {
	for _, bc := range []struct {
		name       string
		dns        string
		proxy      bool
		packetConn bool
		big        bool
	}{
		{"direct", "  cache: false", false, false, false},
		{"cache=off", "  cache: false", true, false, false},
		{"cache=on", "  cache: true", true, false, false},
		// dns.Server's goroutine per datagram, for comparison.
		{"cache=off/goroutine-per-query", "  cache: false", true, true, false},
		{"cache=on/goroutine-per-query", "  cache: true", true, true, false},
		{"cache=on/10xAAAA-no-EDNS", "  cache: true", true, false, true},
		// One query in flight: the latency of a lone client.
		{"direct/one", "  cache: false", false, false, false},
		{"cache=off/one", "  cache: false", true, false, false},
		{"cache=on/one", "  cache: true", true, false, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			rrs := append([]dns.RR{dnstest.A("api.bank.example", 300, "192.0.2.10")}, manyAddrs("many.edge.bank.example", 10, false)...)
			e := newEnv(b, dnstest.Zone(rrs...), opts{
				packetConn: bc.packetConn,
				dns:        bc.dns + "\n  rate_limit: 0\n  max_inflight: 100000",
				cfg: func(c *Config) {
					c.Now = time.Now
					c.Audit = audit.New(io.Discard, "json", nil)
				},
			})
			target := e.udp
			if !bc.proxy {
				target = e.up.Addr
			}
			if bc.big {
				benchUDPQuery(b, target, new(dns.Msg).SetQuestion("many.edge.bank.example.", dns.TypeAAAA), 0)
				return
			}
			clients := 0
			if strings.HasSuffix(bc.name, "/one") {
				clients = 1
			}
			benchUDP(b, target, "api.bank.example.", clients)
		})
	}
}

// BenchmarkVerifiedAnswer measures what tls.verify costs an answer with the
// Verify hook set to a real proxy.Verifier and a TLS server on loopback:
// "cached" verifies from the Verifier's cache, "handshake" makes the
// Verifier forget at once, so every answer costs a full TLS handshake (what
// a first answer pays). "off" is the same rule without a hook. The DNS
// cache is on, so the upstream is not what is measured. One client asks at
// a time, so p50 is one answer's latency.
func BenchmarkVerifiedAnswer(b *testing.B) {
	for _, bc := range []struct {
		name   string
		verify func() *proxy.Verifier
	}{
		{"off", nil},
		{"cached", func() *proxy.Verifier { return proxy.NewVerifier(proxy.VerifierConfig{}) }},
		{"handshake", func() *proxy.Verifier { return proxy.NewVerifier(proxy.VerifierConfig{TTL: time.Nanosecond}) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			hosts := newTLSHosts(b, map[string]string{goodHost: "api.verified.example"})
			e := newEnv(b, dnstest.Zone(dnstest.A("api.verified.example", 300, goodHost)), opts{
				dns:   "  cache: true\n  rate_limit: 0\n  rebinding_protection: false",
				rules: hosts.rule("", ""),
				cfg: func(c *Config) {
					c.Now = time.Now
					c.Audit = audit.New(io.Discard, "json", nil)
					if bc.verify != nil {
						c.Verify = bc.verify().Verify
					}
				},
			})
			benchUDP(b, e.udp, "api.verified.example.", 1)
			// The server counts a handshake after the client's ends.
			for deadline := time.Now().Add(2 * time.Second); bc.verify != nil && hosts.handshakes.Load() == 0; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					b.Fatal("no handshake reached the TLS server")
				}
			}
		})
	}
}

// benchUDP sends A queries for qname with EDNS (1232) to target from one
// client (clients 1) or GOMAXPROCS concurrent ones (0), and reports the
// median and 99th percentile round trip.
func benchUDP(b *testing.B, target netip.AddrPort, qname string, clients int) {
	m := new(dns.Msg).SetQuestion(qname, dns.TypeA)
	m.SetEdns0(1232, false)
	benchUDPQuery(b, target, m, clients)
}

// benchUDPQuery is benchUDP for query m, whose replies must fit 1232 bytes
// untruncated.
func benchUDPQuery(b *testing.B, target netip.AddrPort, m *dns.Msg, clients int) {
	wire, err := m.Pack()
	if err != nil {
		b.Fatal(err)
	}
	var (
		mu   sync.Mutex
		lats []time.Duration
	)
	b.ReportAllocs()
	b.ResetTimer()
	client := func(next func() bool) {
		conn, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(payments)}, net.UDPAddrFromAddrPort(target))
		if err != nil {
			b.Error(err)
			return
		}
		defer conn.Close()
		q := slices.Clone(wire)
		buf := make([]byte, 1232)
		var mine []time.Duration
		var id uint16
		for next() {
			id++
			q[0], q[1] = byte(id>>8), byte(id)
			start := time.Now()
			if _, err := conn.Write(q); err != nil {
				b.Error(err)
				return
			}
			for {
				_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
				n, err := conn.Read(buf)
				if err != nil {
					b.Errorf("query %d: %v", id, err)
					return
				}
				// A late reply to an earlier, timed-out query: keep reading.
				if n >= 12 && buf[0] == byte(id>>8) && buf[1] == byte(id) {
					if rc := buf[3] & 0xf; rc != dns.RcodeSuccess || buf[2]&0x02 != 0 {
						b.Errorf("query %d: rcode %s, TC %v", id, dns.RcodeToString[int(rc)], buf[2]&0x02 != 0)
						return
					}
					break
				}
			}
			mine = append(mine, time.Since(start))
		}
		mu.Lock()
		lats = append(lats, mine...)
		mu.Unlock()
	}
	cpu0 := processCPU()
	if clients == 1 {
		i := 0
		client(func() bool { i++; return i <= b.N })
	} else {
		b.RunParallel(func(pb *testing.PB) { client(pb.Next) })
	}
	b.StopTimer()
	// CPU time, unlike ns/op, is not inflated by other processes on a
	// busy machine. It counts the client, the firewall and the in-process
	// upstream alike.
	b.ReportMetric(float64((processCPU()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
	if len(lats) > 0 {
		slices.Sort(lats)
		b.ReportMetric(float64(lats[len(lats)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lats[len(lats)*99/100].Microseconds()), "p99-µs")
	}
}

// processCPU returns the user and system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkServeFast measures the fast path alone, without sockets: a
// repeated allowed A query with EDNS answered from the ready reply, the
// audit line formatted (to io.Discard) and counted.
// "10xAAAA-no-EDNS" is a query without EDNS whose reply (10 AAAA) is sent
// compressed.
func BenchmarkServeFast(b *testing.B) {
	b.Run("A-EDNS", func(b *testing.B) {
		q := new(dns.Msg).SetQuestion("api.bank.example.", dns.TypeA)
		q.SetEdns0(1232, false)
		benchServeFast(b, q)
	})
	b.Run("10xAAAA-no-EDNS", func(b *testing.B) {
		benchServeFast(b, new(dns.Msg).SetQuestion("many.edge.bank.example.", dns.TypeAAAA))
	})
}

func benchServeFast(b *testing.B, q *dns.Msg) {
	rrs := append([]dns.RR{dnstest.A("api.bank.example", 300, "192.0.2.10")}, manyAddrs("many.edge.bank.example", 10, false)...)
	e := newEnv(b, dnstest.Zone(rrs...), opts{
		dns: "  rate_limit: 0",
		cfg: func(c *Config) {
			c.Now = time.Now
			c.Audit = audit.New(io.Discard, "json", nil)
		},
	})
	name := strings.TrimSuffix(q.Question[0].Name, ".")
	e.ask(payments, name, q.Question[0].Qtype)
	e.ask(payments, name, q.Question[0].Qtype)
	wire, err := q.Pack()
	if err != nil {
		b.Fatal(err)
	}
	src := netip.MustParseAddrPort(payments + ":5353")
	var fq fastQuery
	w := discardWriter{}
	if !e.fw.serveFast(context.Background(), &fq, wire, src, w) {
		b.Fatal("the fast path did not answer")
	}
	b.ReportAllocs()
	cpu0 := processCPU()
	for b.Loop() {
		e.fw.serveFast(context.Background(), &fq, wire, src, w)
	}
	// CPU time, unlike ns/op, is not inflated by other processes on a
	// busy machine (the env's servers are idle meanwhile).
	b.ReportMetric(float64((processCPU()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
}

type discardWriter struct{}

func (discardWriter) Write(b []byte) (int, error) { return len(b), nil }
