package learn

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/testutil/memtest"
)

// benchNames is how many names the benchmarks learn, each with two
// addresses (an A and an AAAA, say): 200,000 entries.
const benchNames = 100_000

// benchBatch returns the batch a client's answer for the i-th name
// publishes: its two addresses for one rule and group. The name is a fresh
// string, as dnsname.Parse makes one per query.
func benchBatch(i int, expires time.Time) []Entry {
	name := dnsname.Name(fmt.Sprintf("api%d.service.example.com", i))
	return []Entry{
		{Name: name, Rule: "web", Group: "office", Addr: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), Expires: expires},
		{Name: name, Rule: "web", Group: "office", Addr: netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 12: byte(i >> 24), 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)}), Expires: expires},
	}
}

// fillStore publishes benchNames names of two addresses each.
func fillStore(tb testing.TB, s *Store, expires time.Time) {
	for i := range benchNames {
		if err := s.Publish(context.Background(), benchBatch(i, expires)); err != nil {
			tb.Fatal(err)
		}
	}
}

func heapAlloc() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkStoreMemory reports the live heap a store of benchNames names
// with two addresses each holds, per entry (B/entry), name strings
// included, and of it the heap the collector has to scan
// (scan-B/entry). B/op and allocs/op are those of filling it.
func BenchmarkStoreMemory(b *testing.B) {
	expires := time.Now().Add(time.Hour)
	var perEntry, scanPerEntry float64
	for range b.N {
		b.StopTimer()
		before := heapAlloc()
		scanBefore := memtest.ScannableHeap()
		b.StartTimer()
		s := NewStore(StoreConfig{})
		fillStore(b, s, expires)
		b.StopTimer()
		after := heapAlloc()
		scanAfter := memtest.ScannableHeap()
		if n := s.Len(); n != 2*benchNames {
			b.Fatalf("Len: got %d, want %d", n, 2*benchNames)
		}
		runtime.KeepAlive(s)
		perEntry = float64(int64(after)-int64(before)) / (2 * benchNames)
		scanPerEntry = float64(int64(scanAfter)-int64(scanBefore)) / (2 * benchNames)
		b.StartTimer()
	}
	b.ReportMetric(perEntry, "B/entry")
	b.ReportMetric(scanPerEntry, "scan-B/entry")
}

// BenchmarkStorePublishUnchanged publishes, from every P, answers whose
// addresses the store already holds: the common case, an answer served
// again (often from the firewall's cache). "same" republishes the held
// expiry; "later" an expiry computed from the clock on each call, as the
// firewall does (so it moves later by microseconds). "hot" is one name
// asked by every client; "spread" picks among benchNames names.
func BenchmarkStorePublishUnchanged(b *testing.B) {
	for _, names := range []struct {
		name string
		n    int
	}{{"hot", 1}, {"spread", benchNames}} {
		for _, later := range []bool{false, true} {
			mode := "same"
			if later {
				mode = "later"
			}
			b.Run(names.name+"/"+mode, func(b *testing.B) {
				held := time.Now().Add(5 * time.Minute)
				s := NewStore(StoreConfig{})
				fillStore(b, s, held)
				batches := make([][]Entry, names.n)
				for i := range batches {
					batches[i] = benchBatch(i, held)
				}
				var next atomic.Uint64
				b.ReportAllocs()
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					// Each goroutine owns its batch, as each query does.
					batch := make([]Entry, 2)
					i := int(next.Add(7919)) // a different walk per goroutine
					for pb.Next() {
						i = (i + 7919) % names.n
						copy(batch, batches[i])
						if later {
							exp := time.Now().Add(5 * time.Minute)
							batch[0].Expires, batch[1].Expires = exp, exp
						}
						if err := s.Publish(context.Background(), batch); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}
