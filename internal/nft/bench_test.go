package nft

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// Every entry is for one name, so the per-name cap is raised out of the
// way: the benchmarks measure programming, not eviction.
const benchPolicy = `
firewall: {backend: nftables, hook: forward, table: fqdngate}
inside: {ranges: [198.51.100.0/24]}
dns: {max_learned_per_name: 1000000}
rules:
  - name: web
    to: ["*.cdn.example"]
    ports: [443]
`

// benchAddrs hands out distinct addresses in 2001:db8::/32, so every
// Publish programs a new element.
type benchAddrs struct{ n atomic.Uint64 }

func (a *benchAddrs) next() netip.Addr {
	i := a.n.Add(1)
	b := [16]byte{0x20, 0x01, 0x0d, 0xb8}
	for k := 15; k >= 8; k-- {
		b[k] = byte(i)
		i >>= 8
	}
	return netip.AddrFrom16(b)
}

func benchBackend(b *testing.B) *Backend {
	ns := netns.New(b)
	p, err := policy.Parse("bench.yaml", []byte(benchPolicy))
	if err != nil {
		b.Fatal(err)
	}
	be, err := New(Config{Table: "fqdngate", Hook: policy.HookForward, NetNSFd: ns.Fd()})
	if err != nil {
		b.Fatal(err)
	}
	if err := be.Apply(context.Background(), p); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { be.Run(ctx); close(done) }()
	b.Cleanup(func() { cancel(); <-done; be.Close() })
	return be
}

func entry(a netip.Addr) learn.Entry {
	return learn.Entry{Name: "x.example", Rule: "web", Addr: a, Expires: time.Now().Add(time.Hour)}
}

// reportLatency adds p50 and p99 of the per-call hold to the results.
func reportLatency(b *testing.B, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	b.ReportMetric(float64(d[len(d)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(d[len(d)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkPublishSingle: one new address per call, one caller: the hold a
// lone DNS answer sees.
func BenchmarkPublishSingle(b *testing.B) {
	be := benchBackend(b)
	var addrs benchAddrs
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if err := be.Publish(ctx, []learn.Entry{entry(addrs.next())}); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "elems/s")
	reportLatency(b, lat)
}

// BenchmarkPublishBatched: 100 new addresses per call (a big answer, or a
// restore).
func BenchmarkPublishBatched(b *testing.B) {
	be := benchBackend(b)
	var addrs benchAddrs
	ctx := context.Background()
	batch := make([]learn.Entry, 100)
	b.ResetTimer()
	for range b.N {
		for i := range batch {
			batch[i] = entry(addrs.next())
		}
		if err := be.Publish(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "elems/s")
}

// BenchmarkPublishConcurrent: many callers, one new address each; the
// flusher coalesces them into shared transactions.
func BenchmarkPublishConcurrent(b *testing.B) {
	be := benchBackend(b)
	var addrs benchAddrs
	ctx := context.Background()
	var mu sync.Mutex
	var lat []time.Duration
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var mine []time.Duration
		for pb.Next() {
			start := time.Now()
			if err := be.Publish(ctx, []learn.Entry{entry(addrs.next())}); err != nil {
				b.Error(err)
				return
			}
			mine = append(mine, time.Since(start))
		}
		mu.Lock()
		lat = append(lat, mine...)
		mu.Unlock()
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "elems/s")
	reportLatency(b, lat)
}

// BenchmarkPublishKnown: re-learning an address the kernel already holds
// long enough costs no netlink at all.
func BenchmarkPublishKnown(b *testing.B) {
	be := benchBackend(b)
	ctx := context.Background()
	e := []learn.Entry{entry(netip.MustParseAddr("2001:db8::1"))}
	if err := be.Publish(ctx, e); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		if err := be.Publish(ctx, e); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPublishAt10k paces new addresses at the target rate, 10,000 a
// second, each from its own goroutine as concurrent DNS answers would be,
// and reports the hold each saw.
func BenchmarkPublishAt10k(b *testing.B) {
	be := benchBackend(b)
	var addrs benchAddrs
	ctx := context.Background()
	const interval = 100 * time.Microsecond
	lat := make([]time.Duration, b.N)
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			if err := be.Publish(ctx, []learn.Entry{entry(addrs.next())}); err != nil {
				b.Error(err)
			}
			lat[i] = time.Since(t0)
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "elems/s")
	reportLatency(b, lat)
}
