package dnscache

import (
	"bytes"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// FuzzPutGet caches whatever an upstream might send: nothing may panic, a
// hit must never carry a TTL of 0 or one above 2^31-1 (RFC 2181), and it
// must be the message Put was given (with its ID 0, SOA TTLs at most
// their MINIMUM, no EDNS options, TTLs lowered by the time in cache),
// whatever packing and unpacking it went through.
func FuzzPutGet(f *testing.F) {
	q := query("www.example.com", dns.TypeA)
	for _, m := range []*dns.Msg{
		reply(q, dns.RcodeSuccess, []dns.RR{dnstest.A("www.example.com", 300, "192.0.2.1")}),
		reply(q, dns.RcodeSuccess, []dns.RR{dnstest.CNAME("www.example.com", 5, "a.example.net"), dnstest.A("a.example.net", 300, "192.0.2.1")}),
		reply(q, dns.RcodeNameError, nil, dnstest.SOA("example.com", 3600, 60)),
		reply(q, dns.RcodeSuccess, nil, dnstest.SOA("example.com", 1, 600)),
	} {
		m.SetEdns0(1232, true)
		m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint16(10))
		// A second OPT record (malformed, but unpacked): the last is the
		// one that counts.
		m.Extra = append([]dns.RR{&dns.OPT{
			Hdr:    dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT, Class: 512},
			Option: []dns.EDNS0{&dns.EDNS0_NSID{Code: dns.EDNS0NSID, Nsid: "0102"}},
		}}, m.Extra...)
		b, err = m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint16(10))
	}
	f.Fuzz(func(t *testing.T, b []byte, after uint16) {
		m := new(dns.Msg)
		if m.Unpack(b) != nil {
			return
		}
		clk := &fakeClock{t: t0}
		c := New(Config{Now: clk.now})
		k, ok := KeyOf(m)
		if !ok {
			return
		}
		e := c.PutEntry(k, m)
		if e == nil {
			return
		}
		ttl, _ := cacheTTL(m)
		want := m.Copy()
		clk.set(t0.Add(time.Duration(after) * time.Second))
		got, hit := c.Get(k)
		if !hit {
			// A miss before the TTL is right only for an entry whose
			// bytes do not unpack (miekg/dns packs some records it does
			// not unpack, a TSIG without RDATA in the answer section):
			// the cache fails closed.
			if uint32(after) < ttl && time.Duration(after)*time.Second < time.Hour && new(dns.Msg).Unpack(e.wire) == nil {
				t.Fatalf("got a miss after %ds, want a hit for TTL %d", after, ttl)
			}
			if c.Len() != 0 {
				t.Fatalf("the cache holds %d entries after a miss, want the entry dropped", c.Len())
			}
			return
		}
		for _, sec := range [][]dns.RR{got.Answer, got.Ns, got.Extra} {
			for _, rr := range sec {
				if h := rr.Header(); h.Rrtype != dns.TypeOPT && (h.Ttl == 0 || h.Ttl > maxTTL) {
					t.Fatalf("got TTL %d after %ds in cache", h.Ttl, after)
				}
			}
		}
		want.Id = 0
		for i, rr := range want.Ns {
			if soa, ok := rr.(*dns.SOA); ok && soa.Minttl < soa.Hdr.Ttl {
				want.Ns[i].Header().Ttl = soa.Minttl
			}
		}
		if opt := want.IsEdns0(); opt != nil {
			opt.Option = nil
		}
		for _, sec := range [][]dns.RR{want.Answer, want.Ns, want.Extra} {
			for _, rr := range sec {
				if h := rr.Header(); h.Rrtype != dns.TypeOPT {
					h.Ttl -= uint32(after)
				}
			}
		}
		if got.Compress != want.Compress {
			t.Fatalf("got Compress %v, want %v", got.Compress, want.Compress)
		}
		// Packed both ways, as the DNS firewall sends replies.
		for _, compress := range []bool{false, true} {
			want.Compress, got.Compress = compress, compress
			wb, werr := want.Pack()
			gb, gerr := got.Pack()
			if werr != nil || gerr != nil || !bytes.Equal(gb, wb) {
				t.Fatalf("compress %v: got\n%v\n(%x, %v), want\n%v\n(%x, %v)", compress, got, gb, gerr, want, wb, werr)
			}
		}
	})
}
