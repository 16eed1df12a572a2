package resolver

import (
	"testing"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// FuzzParseResponse feeds arbitrary bytes to the check every upstream
// answer goes through: it must never panic, and whatever it accepts must
// answer the question asked with the ID sent.
func FuzzParseResponse(f *testing.F) {
	q := new(dns.Msg).SetQuestion("www.example.com.", dns.TypeA)
	q.Id = 0x1234
	q.SetEdns0(1232, true)
	seeds := []*dns.Msg{
		dnstest.Reply(q, dns.RcodeSuccess, dnstest.A("www.example.com", 300, "192.0.2.1")),
		dnstest.Reply(q, dns.RcodeSuccess, dnstest.CNAME("WWW.example.com", 60, "a.example.net"), dnstest.A("a.example.net", 5, "192.0.2.2")),
		dnstest.Reply(q, dns.RcodeNameError),
		dnstest.Reply(q, dns.RcodeSuccess, dnstest.HTTPS("www.example.com", 60, 1, ".", dnstest.ALPN("h2"), dnstest.ECH([]byte{1, 2, 3}))),
		new(dns.Msg).SetRcode(q, dns.RcodeFormatError),
	}
	for _, m := range seeds {
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Add([]byte{0x12, 0x34, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		// checkHeader looks at the start of a datagram cut short: it must
		// not panic, and must accept no other ID than the query's.
		if checkHeader(b, q.Id, q.Question[0]) == nil && (len(b) < 12 || b[0] != 0x12 || b[1] != 0x34 || b[2]&0x80 == 0) {
			t.Fatalf("checkHeader accepted % x", b[:min(len(b), 12)])
		}
		m, err := parseResponse(b, q.Id, q.Question[0])
		if err != nil {
			return
		}
		if len(m.Question) == 1 && checkHeader(b, q.Id, q.Question[0]) != nil {
			t.Fatal("checkHeader rejected the start of a response parseResponse accepts")
		}
		if m.Id != q.Id || !m.Response {
			t.Fatalf("accepted ID %#x response=%v, want ID %#x and a response", m.Id, m.Response, q.Id)
		}
		if len(m.Question) == 1 {
			if got := m.Question[0]; got.Qtype != dns.TypeA || !dnsname.EqualFold(got.Name, "www.example.com.") {
				t.Fatalf("accepted an answer to %v, want one to %v", got, q.Question[0])
			}
		} else if len(m.Question) != 0 || m.Rcode == dns.RcodeSuccess || len(m.Answer) > 0 {
			t.Fatalf("accepted %d questions with rcode %d and %d answers", len(m.Question), m.Rcode, len(m.Answer))
		}
	})
}
