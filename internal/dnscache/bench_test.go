package dnscache

import (
	"fmt"
	"testing"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
	"github.com/fqdngate/fqdngate/internal/testutil/memtest"
)

func benchEntries(b *testing.B, c *Cache, n int) []Key {
	keys := make([]Key, n)
	for i := range keys {
		q := query(fmt.Sprintf("host%d.example.com", i), dns.TypeA)
		q.SetEdns0(1232, false)
		keys[i] = key(b, q)
		r := reply(q, dns.RcodeSuccess, []dns.RR{
			dnstest.CNAME(q.Question[0].Name, 300, "cdn.example.net"),
			dnstest.A("cdn.example.net", 300, "192.0.2.1"),
			dnstest.A("cdn.example.net", 300, "192.0.2.2"),
		})
		r.SetEdns0(1232, false)
		c.Put(keys[i], r)
	}
	return keys
}

func BenchmarkGet(b *testing.B) {
	c := New(Config{})
	keys := benchEntries(b, c, 1000)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, ok := c.Get(keys[i%len(keys)]); !ok {
			b.Fatal("miss")
		}
		i++
	}
}

func BenchmarkGetParallel(b *testing.B) {
	c := New(Config{})
	keys := benchEntries(b, c, 1000)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, ok := c.Get(keys[i%len(keys)]); !ok {
				b.Fatal("miss")
			}
			i++
		}
	})
}

func BenchmarkPut(b *testing.B) {
	c := New(Config{MaxEntries: 1000})
	q := query("www.example.com", dns.TypeA)
	r := reply(q, dns.RcodeSuccess, []dns.RR{dnstest.A("www.example.com", 300, "192.0.2.1")})
	keys := make([]Key, 4000) // four times the bound: Put evicts
	for i := range keys {
		keys[i] = Key{name: fmt.Sprintf("host%d.example.com.", i), qtype: dns.TypeA, qclass: dns.ClassINET}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		k := keys[i%len(keys)]
		r.Question[0].Name = k.name
		c.Put(k, r)
		i++
	}
}

func BenchmarkKeyOf(b *testing.B) {
	q := query("www.example.com", dns.TypeA)
	q.SetEdns0(1232, true)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := KeyOf(q); !ok {
			b.Fatal("no key")
		}
	}
}

// BenchmarkEntryMemory caches N answers shaped as bench/scale's upstream
// gives them to the DNS firewall (an OPT record; for each name n<i>.z<k>.
// bench.example, 2 A records for A and 9 AAAA for AAAA) and reports the
// live heap they hold, per answer: after the fill less after a Flush, two
// GCs each. The DNS firewall's ready replies come on top
// (dnsfw.BenchmarkCachedAnswerMemory).
func BenchmarkEntryMemory(b *testing.B) {
	const n = 10_000
	for range b.N {
		c := New(Config{MaxEntries: 2 * n})
		for i := range n {
			name := fmt.Sprintf("n%d.z%d.bench.example.", i, i%4)
			for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
				q := query(name, qtype)
				q.SetEdns0(1232, false)
				var rrs []dns.RR
				if qtype == dns.TypeA {
					rrs = []dns.RR{dnstest.A(name, 300, fmt.Sprintf("198.18.%d.%d", i>>8&0xff, i&0xff)), dnstest.A(name, 300, fmt.Sprintf("198.19.%d.%d", i>>8&0xff, i&0xff))}
				} else {
					for j := range 9 {
						rrs = append(rrs, dnstest.AAAA(name, 300, fmt.Sprintf("2001:db8::%x:%x", j, i)))
					}
				}
				r := reply(q, dns.RcodeSuccess, rrs)
				r.SetEdns0(1232, false)
				if !c.Put(key(b, q), r) {
					b.Fatalf("%s was not cached", name)
				}
			}
		}
		filled := float64(memtest.SettledHeap())
		c.Flush()
		flushed := float64(memtest.SettledHeap())
		b.ReportMetric((filled-flushed)/(2*n), "heap-B/answer")
	}
}
