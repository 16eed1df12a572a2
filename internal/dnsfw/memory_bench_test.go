package dnsfw

import (
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/dnscache"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
	"github.com/fqdngate/fqdngate/internal/testutil/memtest"
)

// BenchmarkCachedAnswerMemory fills the DNS cache through the ordinary
// path, as bench/scale does: N names n<i>.z<i%4>.bench.example, each asked
// for A (answered with 2 A records from 198.18.0.0/15) and AAAA (9 AAAA
// from 2001:db8::/32), over UDP without EDNS, from a client a rule allows;
// asked=1 once, as bench/scale's fill, asked=2 twice, so that every answer
// is also kept ready for the fast path (makeReady, on the first cache
// hit). It reports what a cached answer holds: the live heap after the
// fill less the live heap after flushing the cache (two GCs each), per
// answer. Memory does not depend on the machine's load. With
// FQDNGATE_HEAPPROFILE set to a path, the heap profile after the fill is
// written there.
func BenchmarkCachedAnswerMemory(b *testing.B) {
	const n = 10_000
	for _, asked := range []int{1, 2} {
		b.Run(fmt.Sprintf("names=%d/asked=%d", n, asked), func(b *testing.B) {
			for range b.N {
				cachedAnswerMemory(b, n, asked)
			}
		})
	}
}

func cachedAnswerMemory(b *testing.B, n, asked int) {
	e := newEnv(b, benchUpstream, opts{
		dns:   "  rate_limit: 0\n  wildcard_budget: 0\n  rebinding_protection: false",
		rules: "  - name: scale\n    from: [payments]\n    to: [\"**.bench.example\"]\n    ports: [443]",
		cfg: func(c *Config) {
			c.Now = time.Now
			c.Audit = audit.New(io.Discard, "json", nil)
		},
	})
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("n%d.z%d.bench.example.", i, i%4)
	}
	conn, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(payments)}, net.UDPAddrFromAddrPort(e.udp))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 1232)
	var id uint16
	for range asked {
		for _, name := range names {
			for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
				id++
				q := new(dns.Msg).SetQuestion(name, qtype)
				q.Id = id
				wire, err := q.Pack()
				if err != nil {
					b.Fatal(err)
				}
				if _, err := conn.Write(wire); err != nil {
					b.Fatal(err)
				}
				for {
					_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
					k, err := conn.Read(buf)
					if err != nil {
						b.Fatalf("%s %s: %v", name, dns.TypeToString[qtype], err)
					}
					if k < 12 || buf[0] != byte(id>>8) || buf[1] != byte(id) {
						continue // a late reply to an earlier query
					}
					if rc := buf[3] & 0xf; rc != dns.RcodeSuccess || buf[2]&0x02 != 0 {
						b.Fatalf("%s %s: rcode %s, TC %v", name, dns.TypeToString[qtype], dns.RcodeToString[int(rc)], buf[2]&0x02 != 0)
					}
					break
				}
			}
		}
	}
	c := e.fw.wcache
	if got := c.Len(); got != 2*n {
		b.Fatalf("the cache holds %d answers, want %d", got, 2*n)
	}
	// Every answer asked for twice has its ready reply, those asked for
	// once none: the fill measured what it means to.
	for i := 0; i < n; i += max(1, n/100) {
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
			en := c.Lookup(dnscache.MakeKey(names[i], qtype, false, false), time.Now())
			if en == nil {
				b.Fatalf("%s %s is not cached", names[i], dns.TypeToString[qtype])
			}
			if _, ok := en.Derived().(*ready); ok != (asked > 1) {
				b.Fatalf("%s %s asked for %d times: ready reply kept %v", names[i], dns.TypeToString[qtype], asked, ok)
			}
		}
	}
	filled := float64(memtest.SettledHeap())
	memtest.WriteHeapProfile(b)
	c.Flush()
	flushed := float64(memtest.SettledHeap())
	runtime.KeepAlive(e)
	b.ReportMetric((filled-flushed)/float64(2*n), "heap-B/answer")
}

// benchUpstream answers as bench/dns/upstream does with -bench4 -a 2
// -aaaa 9: every name under bench.example with 2 A records from
// 198.18.0.0/15 and 9 AAAA from 2001:db8::/32, chosen by a hash of the
// name, TTL 300.
func benchUpstream(w dns.ResponseWriter, req *dns.Msg) {
	resp := new(dns.Msg).SetReply(req)
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(min(opt.UDPSize(), 1232), false)
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	h := uint32(2166136261) // FNV-1a
	for i := 0; i < len(name); i++ {
		h ^= uint32(name[i])
		h *= 16777619
	}
	hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: 300}
	switch {
	case !strings.HasSuffix(name, ".bench.example."):
		resp.Rcode = dns.RcodeNameError
	case q.Qtype == dns.TypeA:
		for i := range uint32(2) {
			x := (h + i) % (1 << 17)
			resp.Answer = append(resp.Answer, &dns.A{Hdr: hdr, A: net.IPv4(198, 18+byte(x>>16), byte(x>>8), byte(x))})
		}
	case q.Qtype == dns.TypeAAAA:
		for i := range 9 {
			ip := net.IP{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, byte(i), byte(h >> 24), byte(h >> 16), byte(h >> 8), byte(h)}
			resp.Answer = append(resp.Answer, &dns.AAAA{Hdr: hdr, AAAA: ip})
		}
	default:
		resp.Ns = append(resp.Ns, dnstest.SOA("bench.example", 300, 300))
	}
	_ = w.WriteMsg(resp)
}
