package dnscache

import (
	"fmt"
	"testing"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
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
