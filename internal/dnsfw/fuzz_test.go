package dnsfw

import (
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// fuzzSeeds are wire-format messages from the table tests' cases and
// their mangled relatives.
func fuzzSeeds(t testing.TB) [][]byte {
	var out [][]byte
	add := func(m *dns.Msg) {
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
		out = append(out, b[:len(b)/2]) // cut short
		flipped := append([]byte(nil), b...)
		flipped[len(flipped)-1] ^= 0xff
		out = append(out, flipped)
	}
	q := func(name string, qtype uint16, mod func(*dns.Msg)) {
		m := new(dns.Msg).SetQuestion(name, qtype)
		if mod != nil {
			mod(m)
		}
		add(m)
	}
	q("api.bank.example.", dns.TypeA, nil)
	q("aPi.BaNk.ExAmPlE.", dns.TypeAAAA, func(m *dns.Msg) { m.SetEdns0(4096, true) })
	q("api.bank.example.", dns.TypeHTTPS, nil)
	q("api.bank.example.", dns.TypeTXT, nil)
	q("evil.example.", dns.TypeA, nil)
	q(".", dns.TypeANY, nil)
	q("api.bank.example.", dns.TypeA, func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS })
	q("api.bank.example.", dns.TypeA, func(m *dns.Msg) { m.Opcode = dns.OpcodeUpdate })
	q("api.bank.example.", dns.TypeA, func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) })
	q("api.bank.example.", dns.TypeA, func(m *dns.Msg) { m.SetEdns0(512, false); m.IsEdns0().SetVersion(1) })
	q("api.bank.example.", dns.TypeA, func(m *dns.Msg) { m.Response = true })
	q("api.bank.example.", dns.TypeA, func(m *dns.Msg) {
		m.SetEdns0(1232, false)
		o := m.IsEdns0()
		o.Option = append(o.Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"},
			&dns.EDNS0_PADDING{Padding: make([]byte, 7)})
	})
	q("api.bank.example.", dns.TypeA, func(m *dns.Msg) {
		m.SetEdns0(1232, false)
		o := m.IsEdns0()
		o.Option = append(o.Option, &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(192, 0, 2, 0)})
	})
	out = append(out, nil, []byte{0}, make([]byte, 12), []byte("\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"))
	return out
}

// FuzzHandler sends arbitrary bytes to a serving firewall over a real UDP
// socket, then a valid query, which must still be answered correctly.
func FuzzHandler(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	e := newEnv(f, dnstest.Zone(dnstest.A("api.bank.example", 300, "192.0.2.10")),
		opts{dns: "  rate_limit: 0", cfg: func(c *Config) { c.Audit = nil }})
	conn, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(payments)}, net.UDPAddrFromAddrPort(e.udp))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { conn.Close() })
	var id uint16
	buf := make([]byte, 65535)

	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = conn.Write(b) // too large for a datagram: nothing sent, fine

		id++
		m := new(dns.Msg).SetQuestion("api.bank.example.", dns.TypeA)
		m.Id = id
		wire, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write(wire); err != nil {
			t.Fatal(err)
		}
		// Replies to the fuzz input may come first; skip anything that is
		// not the reply to the valid query.
		_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		for {
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatalf("no reply to a valid query after %x: %v", b, err)
			}
			r := new(dns.Msg)
			if r.Unpack(buf[:n]) != nil || r.Id != id || len(r.Question) != 1 ||
				r.Question[0] != m.Question[0] || r.Opcode != dns.OpcodeQuery {
				continue
			}
			if r.Rcode != dns.RcodeSuccess || len(answerAddrs(r)) != 1 || answerAddrs(r)[0] != "192.0.2.10" {
				t.Fatalf("after %x: got %s %v, want NOERROR [192.0.2.10]", b, dns.RcodeToString[r.Rcode], answerAddrs(r))
			}
			return
		}
	})
}
