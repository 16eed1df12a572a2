package resolver

import (
	"context"
	"net"
	"slices"
	"testing"
	"time"

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
	// Error, not Fatal: RunParallel's goroutines must not call FailNow.
	run := func(q *dns.Msg) {
		if _, _, err := r.Exchange(ctx, q); err != nil {
			b.Error(err)
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

// BenchmarkAddedLatency alternates a bare query on one socket with one
// through Exchange, to the same server, so background load hits both
// alike, and reports the medians and their difference: what the resolver
// adds to a query's latency.
func BenchmarkAddedLatency(b *testing.B) {
	srv := benchServer(b)
	c, err := net.Dial("udp", srv.Addr.String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	dc := &dns.Conn{Conn: c}
	r, err := New(Config{Upstreams: []policy.Upstream{srv.Upstream()}})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	q := query("www.example.com", dns.TypeA)
	ctx := context.Background()
	var direct, via []time.Duration
	for b.Loop() {
		start := time.Now()
		if err := dc.WriteMsg(q); err != nil {
			b.Fatal(err)
		}
		if _, err := dc.ReadMsg(); err != nil {
			b.Fatal(err)
		}
		mid := time.Now()
		if _, _, err := r.Exchange(ctx, q); err != nil {
			b.Fatal(err)
		}
		direct = append(direct, mid.Sub(start))
		via = append(via, time.Since(mid))
	}
	p50 := func(ds []time.Duration) time.Duration {
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	d, v := p50(direct), p50(via)
	b.ReportMetric(float64(d.Nanoseconds()), "direct-p50-ns")
	b.ReportMetric(float64(v.Nanoseconds()), "resolver-p50-ns")
	b.ReportMetric(float64((v - d).Nanoseconds()), "added-p50-ns")
}

// rawServer answers every query with one prepacked answer carrying the
// query's ID: a server that costs next to nothing, so allocs/op and most
// of ns/op are the client's own.
func rawServer(b *testing.B) policy.Upstream {
	b.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	q := query("www.example.com", dns.TypeA)
	answer, err := dnstest.Reply(q, dns.RcodeSuccess, dnstest.A("www.example.com", 300, "192.0.2.1")).Pack()
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	b.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n >= 2 {
				copy(answer, buf[:2])
				_, _ = pc.WriteTo(answer, from)
			}
		}
	}()
	return policy.Upstream{Addr: pc.LocalAddr().(*net.UDPAddr).AddrPort()}
}

func BenchmarkExchangeUDPRawServer(b *testing.B) {
	benchExchange(b, rawServer(b), nil, false)
}

func BenchmarkExchangeUDPRawServerParallel(b *testing.B) {
	benchExchange(b, rawServer(b), nil, true)
}
