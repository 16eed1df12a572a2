package dnsfw

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

func TestCNAMEChain(t *testing.T) {
	chain := []dns.RR{
		dnstest.CNAME("x.edge.bank.example", 300, "lb.cdn.example"),
		dnstest.CNAME("lb.cdn.example", 300, "pop7.cdn.example"),
		dnstest.A("pop7.cdn.example", 300, "198.51.100.7"),
		// Not on the chain: must neither reach the client nor be learned.
		dnstest.A("unrelated.example", 300, "198.51.100.99"),
	}
	tests := []struct {
		name      string
		dns       string
		rules     string
		wantRcode int
		wantAddrs []string
	}{
		{"inspect_cname off: chain followed", "  inspect_cname: false", "", dns.RcodeSuccess, []string{"198.51.100.7"}},
		{"inspect_cname (the default) denies a chain leaving the policy", "", "", dns.RcodeNameError, nil},
		{"inspect_cname allows a chain inside the policy", "  inspect_cname: true",
			"  - name: cdn\n    from: [payments]\n    to: [\"*.cdn.example\"]\n    ports: [443]",
			dns.RcodeSuccess, []string{"198.51.100.7"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := dnstest.Answer(chain...)
			e := newEnv(t, h, opts{dns: tt.dns, rules: tt.rules})
			r := e.ask(payments, "x.edge.bank.example", dns.TypeA)
			if r.Rcode != tt.wantRcode {
				t.Fatalf("rcode: got %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.wantRcode])
			}
			if got := answerAddrs(r); !slices.Equal(got, tt.wantAddrs) {
				t.Errorf("answer: got %v, want %v", got, tt.wantAddrs)
			}
			if tt.wantRcode != dns.RcodeSuccess {
				if got := e.fw.Learned().List(); len(got) != 0 {
					t.Errorf("learned: got %v, want nothing", got)
				}
				return
			}
			if n := len(r.Answer); n != 3 {
				t.Errorf("answer records: got %d, want 3 (two CNAMEs, one A)", n)
			}
			got := e.fw.Learned().List()
			if len(got) != 1 {
				t.Fatalf("learned: got %v, want one entry", got)
			}
			want := learn.Entry{Name: "x.edge.bank.example", Rule: "bank", Group: "payments",
				Addr: netip.MustParseAddr("198.51.100.7"), Expires: e.clock.Now().Add(300*time.Second + 10*time.Minute)}
			if got[0] != want {
				t.Errorf("learned: got %+v, want %+v", got[0], want)
			}
		})
	}
}

func TestHTTPSHintsAndECH(t *testing.T) {
	ech := []byte{0, 4, 1, 2, 3, 4}
	rec := dnstest.HTTPS("api.bank.example", 300, 1, ".",
		dnstest.ALPN("h2"), dnstest.IPv4Hint("192.0.2.40", "10.1.2.3"), dnstest.ECH(ech), dnstest.IPv6Hint("2001:db8::40"))
	tests := []struct {
		name    string
		dns     string
		wantECH bool
	}{
		{"strip_ech on (default)", "", false},
		{"strip_ech off", "  strip_ech: false", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, dnstest.Answer(rec), opts{dns: tt.dns})
			r := e.ask(payments, "api.bank.example", dns.TypeHTTPS)
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
				t.Fatalf("got %s with %d records, want NOERROR with 1", dns.RcodeToString[r.Rcode], len(r.Answer))
			}
			h := r.Answer[0].(*dns.HTTPS)
			var gotECH bool
			var hints []string
			for _, kv := range h.Value {
				switch v := kv.(type) {
				case *dns.SVCBECHConfig:
					gotECH = true
				case *dns.SVCBIPv4Hint:
					for _, ip := range v.Hint {
						hints = append(hints, ip.String())
					}
				case *dns.SVCBIPv6Hint:
					for _, ip := range v.Hint {
						hints = append(hints, ip.String())
					}
				}
			}
			if gotECH != tt.wantECH {
				t.Errorf("ech present: got %v, want %v", gotECH, tt.wantECH)
			}
			// 10.1.2.3 is private: rebinding protection removes it.
			if want := []string{"192.0.2.40", "2001:db8::40"}; !slices.Equal(hints, want) {
				t.Errorf("hints: got %v, want %v", hints, want)
			}
			var learned []string
			for _, en := range e.learned("api.bank.example") {
				learned = append(learned, en.Addr.String())
			}
			slices.Sort(learned)
			if want := []string{"192.0.2.40", "2001:db8::40"}; !slices.Equal(learned, want) {
				t.Errorf("learned: got %v, want %v", learned, want)
			}
		})
	}
}

func TestRebindingProtection(t *testing.T) {
	tests := []struct {
		name      string
		answer    []string
		dns       string
		rules     string
		wantRcode int
		wantAddrs []string
	}{
		{"private only", []string{"10.0.0.1"}, "", "", dns.RcodeServerFailure, nil},
		{"loopback only", []string{"127.0.0.1"}, "", "", dns.RcodeServerFailure, nil},
		{"link-local (metadata)", []string{"169.254.169.254"}, "", "", dns.RcodeServerFailure, nil},
		{"IPv4-mapped loopback", []string{"::ffff:127.0.0.1"}, "", "", dns.RcodeServerFailure, nil},
		{"ULA", []string{"fd00::1"}, "", "", dns.RcodeServerFailure, nil},
		{"mixed: private removed", []string{"10.0.0.1", "192.0.2.10"}, "", "", dns.RcodeSuccess, []string{"192.0.2.10"}},
		{"a CIDR rule names the private range", []string{"10.0.0.1"}, "",
			"  - name: intranet\n    to: [10.0.0.0/8]\n    ports: [443]", dns.RcodeSuccess, []string{"10.0.0.1"}},
		{"protection off", []string{"127.0.0.1"}, "  rebinding_protection: false", "", dns.RcodeSuccess, []string{"127.0.0.1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rrs []dns.RR
			for _, a := range tt.answer {
				switch ip := netip.MustParseAddr(a); {
				case ip.Is4():
					rrs = append(rrs, dnstest.A("api.bank.example", 300, a))
				case ip.Is4In6(): // dnstest refuses these, rightly for most tests
					rrs = append(rrs, &dns.AAAA{Hdr: dns.RR_Header{Name: "api.bank.example.", Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 300}, AAAA: ip.AsSlice()})
				default:
					rrs = append(rrs, dnstest.AAAA("api.bank.example", 300, a))
				}
			}
			e := newEnv(t, dnstest.Answer(rrs...), opts{dns: tt.dns, rules: tt.rules})
			r := e.ask(payments, "api.bank.example", dns.TypeA)
			if r.Rcode != tt.wantRcode {
				t.Errorf("rcode: got %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.wantRcode])
			}
			if got := answerAddrs(r); !slices.Equal(got, tt.wantAddrs) {
				t.Errorf("answer: got %v, want %v", got, tt.wantAddrs)
			}
			var learned []string
			for _, en := range e.learned("api.bank.example") {
				learned = append(learned, en.Addr.String())
			}
			if !slices.Equal(learned, tt.wantAddrs) {
				t.Errorf("learned: got %v, want %v", learned, tt.wantAddrs)
			}
		})
	}
}

func TestTTLClamping(t *testing.T) {
	tests := []struct {
		name        string
		ttl         uint32
		wantTTL     uint32        // to the client: at most max_ttl (1h)
		wantLearned time.Duration // from now: clamp(ttl, 30s, 1h) + 10m grace
	}{
		{"short TTL raised for learning only", 5, 5, 30*time.Second + 10*time.Minute},
		{"ordinary TTL", 300, 300, 300*time.Second + 10*time.Minute},
		{"long TTL capped", 86400, 3600, time.Hour + 10*time.Minute},
		{"zero TTL", 0, 0, 30*time.Second + 10*time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, dnstest.Answer(dnstest.A("api.bank.example", tt.ttl, "192.0.2.10")), opts{})
			r := e.ask(payments, "api.bank.example", dns.TypeA)
			if len(r.Answer) != 1 {
				t.Fatalf("answer: got %v, want one record", r.Answer)
			}
			if got := r.Answer[0].Header().Ttl; got != tt.wantTTL {
				t.Errorf("TTL to client: got %d, want %d", got, tt.wantTTL)
			}
			l := e.learned("api.bank.example")
			if len(l) != 1 {
				t.Fatalf("learned: got %v, want one entry", l)
			}
			if got := l[0].Expires.Sub(e.clock.Now()); got != tt.wantLearned {
				t.Errorf("learned for: got %v, want %v", got, tt.wantLearned)
			}
		})
	}
}

func TestNegativeAnswers(t *testing.T) {
	e := newEnv(t, dnstest.Zone(
		dnstest.A("v4only.edge.bank.example", 300, "192.0.2.50"),
		dnstest.SOA("bank.example", 7200, 7200),
	), opts{dns: "  max_ttl: 5m"})
	tests := []struct {
		name      string
		qname     string
		qtype     uint16
		wantRcode int
	}{
		{"NXDOMAIN", "nope.edge.bank.example", dns.TypeA, dns.RcodeNameError},
		{"NODATA", "v4only.edge.bank.example", dns.TypeAAAA, dns.RcodeSuccess},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.ask(payments, tt.qname, tt.qtype)
			if r.Rcode != tt.wantRcode || len(r.Answer) != 0 {
				t.Fatalf("got %s with %d answers, want %s with none", dns.RcodeToString[r.Rcode], len(r.Answer), dns.RcodeToString[tt.wantRcode])
			}
			if len(r.Ns) == 0 {
				t.Fatalf("authority: got nothing, want the SOA")
			}
			soa, ok := r.Ns[0].(*dns.SOA)
			if !ok {
				t.Fatalf("authority: got %v, want a SOA", r.Ns[0])
			}
			if soa.Hdr.Ttl > 300 || soa.Minttl > 300 {
				t.Errorf("SOA TTL/minimum: got %d/%d, want at most max_ttl 300", soa.Hdr.Ttl, soa.Minttl)
			}
		})
	}
}

func TestQuestionPreserved(t *testing.T) {
	e := newEnv(t, zone(), opts{})
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			m := new(dns.Msg).SetQuestion("aPi.BaNk.ExAmPlE.", dns.TypeA)
			m.Id = 0xbeef
			r, err := e.exchange(payments, network, m, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if r.Id != 0xbeef {
				t.Errorf("ID: got %#x, want 0xbeef", r.Id)
			}
			if got := r.Question[0].Name; got != "aPi.BaNk.ExAmPlE." {
				t.Errorf("question: got %q, want the client's case aPi.BaNk.ExAmPlE.", got)
			}
			if got := answerAddrs(r); !slices.Equal(got, []string{"192.0.2.10"}) {
				t.Errorf("answer: got %v, want [192.0.2.10]", got)
			}
			if !r.RecursionAvailable || !r.RecursionDesired {
				t.Errorf("RA, RD: got %v, %v, want true, true", r.RecursionAvailable, r.RecursionDesired)
			}
		})
	}
}

func TestEDNS(t *testing.T) {
	e := newEnv(t, zone(), opts{dns: "  cache: false"})
	tests := []struct {
		name     string
		edns     bool
		size     uint16
		do       bool
		wantOPT  bool
		wantUpDO bool
	}{
		{"no EDNS", false, 0, false, false, false},
		{"EDNS 4096", true, 4096, false, true, false},
		{"EDNS 1232 DO", true, 1232, true, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.up.Reset()
			m := new(dns.Msg).SetQuestion("api.bank.example.", dns.TypeA)
			if tt.edns {
				m.SetEdns0(tt.size, tt.do)
			}
			r, err := e.exchange(payments, "udp", m, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			opt := r.IsEdns0()
			if (opt != nil) != tt.wantOPT {
				t.Fatalf("OPT in reply: got %v, want %v", opt != nil, tt.wantOPT)
			}
			if opt != nil {
				if opt.UDPSize() != tt.size || opt.Do() != tt.do {
					t.Errorf("OPT: got size %d DO %v, want size %d DO %v", opt.UDPSize(), opt.Do(), tt.size, tt.do)
				}
				if opt.Version() != 0 {
					t.Errorf("EDNS version: got %d, want 0", opt.Version())
				}
			}
			qs := e.up.Queries()
			if len(qs) != 1 {
				t.Fatalf("upstream queries: got %d, want 1", len(qs))
			}
			upOpt := qs[0].Msg.IsEdns0()
			if upOpt == nil || upOpt.Do() != tt.wantUpDO {
				t.Errorf("upstream DO: got %v, want %v", upOpt != nil && upOpt.Do(), tt.wantUpDO)
			}
		})
	}
}

func TestTruncation(t *testing.T) {
	var rrs []dns.RR
	for i := range 60 {
		rrs = append(rrs, dnstest.A("api.bank.example", 300, netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}).String()))
	}
	e := newEnv(t, dnstest.Answer(rrs...), opts{})
	m := new(dns.Msg).SetQuestion("api.bank.example.", dns.TypeA)

	r, err := e.exchange(payments, "udp", m, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Truncated {
		t.Errorf("TC over UDP without EDNS: got false, want true")
	}
	r.Compress = true // as it was on the wire
	if n := r.Len(); n > 512 {
		t.Errorf("UDP reply size: got %d, want at most 512", n)
	}

	r, err = e.exchange(payments, "tcp", m, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r.Truncated || len(r.Answer) != 60 {
		t.Errorf("over TCP: got TC %v with %d records, want all 60", r.Truncated, len(r.Answer))
	}

	big := m.Copy()
	big.SetEdns0(4096, false)
	r, err = e.exchange(payments, "udp", big, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r.Truncated || len(r.Answer) != 60 {
		t.Errorf("UDP with EDNS 4096: got TC %v with %d records, want all 60", r.Truncated, len(r.Answer))
	}
}

func TestPerNameCap(t *testing.T) {
	var rrs []dns.RR
	for i := range 5 {
		rrs = append(rrs, dnstest.A("api.bank.example", 300, netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}).String()))
	}
	e := newEnv(t, dnstest.Answer(rrs...), opts{dns: "  max_learned_per_name: 3"})
	r := e.ask(payments, "api.bank.example", dns.TypeA)
	if n := len(answerAddrs(r)); n != 3 {
		t.Errorf("answer addresses: got %d, want 3 (max_learned_per_name)", n)
	}
	if n := len(e.learned("api.bank.example")); n != 3 {
		t.Errorf("learned: got %d, want 3", n)
	}
	if got := testCounter(t, e.fw.metrics.capHits); got != 1 {
		t.Errorf("cap hits: got %v, want 1", got)
	}
}
