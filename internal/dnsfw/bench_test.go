package dnsfw

import (
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// BenchmarkQueryUDP sends allowed A queries through the UDP server to a
// loopback upstream, from parallel clients, and reports the median round
// trip. "direct" asks the upstream itself, the baseline the firewall's
// added latency is measured against.
func BenchmarkQueryUDP(b *testing.B) {
	for _, bc := range []struct {
		name  string
		dns   string
		proxy bool
	}{
		{"direct", "  cache: false", false},
		{"cache=off", "  cache: false", true},
		{"cache=on", "  cache: true", true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			e := newEnv(b, dnstest.Zone(dnstest.A("api.bank.example", 300, "192.0.2.10")), opts{
				dns: bc.dns + "\n  rate_limit: 0\n  max_inflight: 100000",
				cfg: func(c *Config) {
					c.Now = time.Now
					c.Audit = audit.New(io.Discard, "json", nil)
				},
			})
			target := e.udp
			if !bc.proxy {
				target = e.up.Addr
			}
			benchUDP(b, target)
		})
	}
}

func benchUDP(b *testing.B, target netip.AddrPort) {
	m := new(dns.Msg).SetQuestion("api.bank.example.", dns.TypeA)
	m.SetEdns0(1232, false)
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
	b.RunParallel(func(pb *testing.PB) {
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
		for pb.Next() {
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
					if rc := buf[3] & 0xf; rc != dns.RcodeSuccess {
						b.Errorf("query %d: rcode %s", id, dns.RcodeToString[int(rc)])
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
	})
	b.StopTimer()
	if len(lats) > 0 {
		slices.Sort(lats)
		b.ReportMetric(float64(lats[len(lats)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lats[len(lats)*99/100].Microseconds()), "p99-µs")
	}
}
