package resolver

import (
	"context"
	"net"
	"testing"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// The benchmarks ask a loopback dnstest server, so their ns/op include the
// server's work; compare BenchmarkExchange* with BenchmarkDirectUDP, a bare
// client on one socket, for what the resolver adds.

func benchServer(b *testing.B) *dnstest.Server {
	return dnstest.NewServer(b, dnstest.Answer(dnstest.A("www.example.com", 300, "192.0.2.1")))
}

func BenchmarkDirectUDP(b *testing.B) {
	srv := benchServer(b)
	c, err := net.Dial("udp", srv.Addr.String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	dc := &dns.Conn{Conn: c}
	q := query("www.example.com", dns.TypeA)
	b.ReportAllocs()
	for b.Loop() {
		if err := dc.WriteMsg(q); err != nil {
			b.Fatal(err)
		}
		if _, err := dc.ReadMsg(); err != nil {
			b.Fatal(err)
		}
	}
}

func benchExchange(b *testing.B, up policy.Upstream, tune func(*Resolver), parallel bool) {
	r, err := New(Config{Upstreams: []policy.Upstream{up}})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	if tune != nil {
		tune(r)
	}
	ctx := context.Background()
	run := func(q *dns.Msg) {
		if _, _, err := r.Exchange(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	if parallel {
		b.RunParallel(func(pb *testing.PB) {
			q := query("www.example.com", dns.TypeA)
			for pb.Next() {
				run(q)
			}
		})
		return
	}
	q := query("www.example.com", dns.TypeA)
	for b.Loop() {
		run(q)
	}
}

func BenchmarkExchangeUDP(b *testing.B) {
	benchExchange(b, benchServer(b).Upstream(), nil, false)
}

// BenchmarkExchangeUDPSocketPerQuery is what pooling saves.
func BenchmarkExchangeUDPSocketPerQuery(b *testing.B) {
	benchExchange(b, benchServer(b).Upstream(), func(r *Resolver) { r.ups[0].udp.maxUses = 1 }, false)
}

func BenchmarkExchangeUDPParallel(b *testing.B) {
	benchExchange(b, benchServer(b).Upstream(), nil, true)
}

func BenchmarkExchangeDoT(b *testing.B) {
	srv := dnstest.NewTLSServer(b, dnstest.Answer(dnstest.A("www.example.com", 300, "192.0.2.1")))
	benchExchange(b, srv.Upstream(), nil, false)
}

func BenchmarkExchangeDoTParallel(b *testing.B) {
	srv := dnstest.NewTLSServer(b, dnstest.Answer(dnstest.A("www.example.com", 300, "192.0.2.1")))
	benchExchange(b, srv.Upstream(), nil, true)
}
