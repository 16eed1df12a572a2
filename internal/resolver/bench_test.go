package resolver

import (
	"context"
	"hash/crc32"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
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

// benchOpts shapes a benchExchange run.
type benchOpts struct {
	// parallel runs the queries from RunParallel's goroutines.
	parallel bool
	// inFlight, if not zero, runs each query in a goroutine of its own,
	// with at most inFlight at once, started burst at a time.
	inFlight int
	burst    int
	// deadline gives each query its own context.WithTimeout, as the DNS
	// firewall does, instead of context.Background.
	deadline bool
	// work, if not zero, is CPU work done around each query, in units of
	// about 1 µs, standing in for the DNS firewall's own: with it, queries
	// wait for a CPU as well as for the upstream, so how many are at the
	// upstream at once varies, as it does in the daemon at capacity.
	work int
}

var (
	workBuf  = make([]byte, 32<<10)
	workSink uint32
)

// cpuWork burns about units µs of CPU.
func cpuWork(units int) {
	h := workSink
	for range units {
		h = crc32.Update(h, crc32.IEEETable, workBuf)
	}
	workSink = h
}

func benchExchange(b *testing.B, up policy.Upstream, tune func(*Resolver), o benchOpts) {
	r, err := New(Config{Upstreams: []policy.Upstream{up}})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	// Count the UDP sockets opened, which pooling is to keep rare.
	var dials atomic.Int64
	if p := r.ups[0].udp; p != nil {
		p.dialer = &net.Dialer{Control: func(string, string, syscall.RawConn) error { dials.Add(1); return nil }}
	}
	if tune != nil {
		tune(r)
	}
	// Error, not Fatal: RunParallel's goroutines must not call FailNow.
	run := func(q *dns.Msg) {
		ctx, cancel := context.Background(), context.CancelFunc(func() {})
		if o.deadline {
			ctx, cancel = context.WithTimeout(ctx, 3*r.timeout)
		}
		cpuWork(o.work / 2)
		if _, _, err := r.Exchange(ctx, q); err != nil {
			b.Error(err)
		}
		cancel()
		cpuWork(o.work - o.work/2)
	}
	b.ReportAllocs()
	defer func() {
		if r.ups[0].udp != nil {
			b.ReportMetric(float64(dials.Load())/float64(b.N), "dials/op")
		}
	}()
	if o.inFlight > 0 {
		// A goroutine per query, as the DNS server runs them, at most
		// inFlight at once, as dnsperf sends them.
		sem := make(chan struct{}, o.inFlight)
		var wg sync.WaitGroup
		q := query("www.example.com", dns.TypeA)
		burst := max(o.burst, 1)
		for i := 0; b.Loop(); i++ {
			if i%burst == 0 {
				for range burst {
					sem <- struct{}{}
				}
			}
			wg.Go(func() {
				run(q)
				<-sem
			})
		}
		wg.Wait()
		return
	}
	if o.parallel {
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
	benchExchange(b, benchServer(b).Upstream(), nil, benchOpts{})
}

// BenchmarkExchangeUDPSocketPerQuery is what pooling saves.
func BenchmarkExchangeUDPSocketPerQuery(b *testing.B) {
	benchExchange(b, benchServer(b).Upstream(), func(r *Resolver) { r.ups[0].udp.maxUses = 1 }, benchOpts{})
}

func BenchmarkExchangeUDPParallel(b *testing.B) {
	benchExchange(b, benchServer(b).Upstream(), nil, benchOpts{parallel: true})
}

func BenchmarkExchangeDoT(b *testing.B) {
	srv := dnstest.NewTLSServer(b, dnstest.Answer(dnstest.A("www.example.com", 300, "192.0.2.1")))
	benchExchange(b, srv.Upstream(), nil, benchOpts{})
}

func BenchmarkExchangeDoTParallel(b *testing.B) {
	srv := dnstest.NewTLSServer(b, dnstest.Answer(dnstest.A("www.example.com", 300, "192.0.2.1")))
	benchExchange(b, srv.Upstream(), nil, benchOpts{parallel: true})
}

// DNS-over-HTTPS over one HTTP/2 connection: sequential, and with many
// queries multiplexed at once.
func BenchmarkExchangeDoH(b *testing.B) {
	benchExchange(b, dnstest.NewDoHServer(b, dnstest.Answer(dnstest.A("www.example.com", 300, "192.0.2.1")), false).Upstream(false), nil, benchOpts{})
}

func BenchmarkExchangeDoHParallel(b *testing.B) {
	benchExchange(b, dnstest.NewDoHServer(b, dnstest.Answer(dnstest.A("www.example.com", 300, "192.0.2.1")), false).Upstream(false), nil, benchOpts{parallel: true})
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
	// Room for a few hundred queries at once: the default buffer (208 KiB
	// on Linux) drops some of 200 arriving together, and each loss costs
	// a Timeout.
	if err := pc.(*net.UDPConn).SetReadBuffer(4 << 20); err != nil {
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
	benchExchange(b, rawServer(b), nil, benchOpts{})
}

// BenchmarkExchangeUDPRawServerDeadline gives each query a context with a
// deadline, as the DNS firewall does.
func BenchmarkExchangeUDPRawServerDeadline(b *testing.B) {
	benchExchange(b, rawServer(b), nil, benchOpts{deadline: true})
}

func BenchmarkExchangeUDPRawServerParallel(b *testing.B) {
	benchExchange(b, rawServer(b), nil, benchOpts{parallel: true})
}

// BenchmarkExchangeUDPRawServer200InFlight is the DNS firewall with its
// cache off under dnsperf: up to 200 queries in flight, each in its own
// goroutine with a deadline and about 10 µs of CPU work of its own, started
// 50 at a time as a server reads a backlog of queries. So the number at the
// upstream at once swings, as in the daemon at capacity, and the pool must
// keep sockets through the dips. dials/op is the share of queries that
// opened a socket; ns/op includes the work.
func BenchmarkExchangeUDPRawServer200InFlight(b *testing.B) {
	benchExchange(b, rawServer(b), nil, benchOpts{inFlight: 200, burst: 50, deadline: true, work: 10})
}
