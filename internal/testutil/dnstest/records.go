package dnstest

import (
	"net"
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// The record constructors take names with or without the trailing dot and
// panic on malformed addresses, like regexp.MustCompile: a typo in a test
// fixture should stop the test at once.

func hdr(name string, rtype uint16, ttl uint32) dns.RR_Header {
	return dns.RR_Header{Name: dns.Fqdn(name), Rrtype: rtype, Class: dns.ClassINET, Ttl: ttl}
}

// A returns an A record.
func A(name string, ttl uint32, addr string) *dns.A {
	a := netip.MustParseAddr(addr)
	if !a.Is4() {
		panic("dnstest: A record needs an IPv4 address, got " + addr)
	}
	return &dns.A{Hdr: hdr(name, dns.TypeA, ttl), A: a.AsSlice()}
}

// AAAA returns an AAAA record.
func AAAA(name string, ttl uint32, addr string) *dns.AAAA {
	a := netip.MustParseAddr(addr)
	if !a.Is6() || a.Is4In6() {
		panic("dnstest: AAAA record needs an IPv6 address, got " + addr)
	}
	return &dns.AAAA{Hdr: hdr(name, dns.TypeAAAA, ttl), AAAA: a.AsSlice()}
}

// CNAME returns a CNAME record from name to target.
func CNAME(name string, ttl uint32, target string) *dns.CNAME {
	return &dns.CNAME{Hdr: hdr(name, dns.TypeCNAME, ttl), Target: dns.Fqdn(target)}
}

// SOA returns the SOA record of zone. Negative answers are cached for
// min(ttl, minimum) seconds (RFC 2308).
func SOA(zone string, ttl, minimum uint32) *dns.SOA {
	zone = dns.Fqdn(zone)
	return &dns.SOA{
		Hdr:     hdr(zone, dns.TypeSOA, ttl),
		Ns:      "ns." + zone,
		Mbox:    "hostmaster." + zone,
		Serial:  1,
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  minimum,
	}
}

// HTTPS returns an HTTPS (RFC 9460) record. Target "." means the owner name
// itself; priority 0 makes it an alias record.
func HTTPS(name string, ttl uint32, priority uint16, target string, params ...dns.SVCBKeyValue) *dns.HTTPS {
	return &dns.HTTPS{SVCB: dns.SVCB{
		Hdr:      hdr(name, dns.TypeHTTPS, ttl),
		Priority: priority,
		Target:   dns.Fqdn(target),
		Value:    params,
	}}
}

// ALPN is the alpn parameter of an HTTPS record.
func ALPN(ids ...string) dns.SVCBKeyValue { return &dns.SVCBAlpn{Alpn: ids} }

// IPv4Hint is the ipv4hint parameter of an HTTPS record.
func IPv4Hint(addrs ...string) dns.SVCBKeyValue {
	return &dns.SVCBIPv4Hint{Hint: ips(addrs)}
}

// IPv6Hint is the ipv6hint parameter of an HTTPS record.
func IPv6Hint(addrs ...string) dns.SVCBKeyValue {
	return &dns.SVCBIPv6Hint{Hint: ips(addrs)}
}

// ECH is the ech parameter of an HTTPS record: an ECHConfigList, opaque here.
func ECH(configList []byte) dns.SVCBKeyValue { return &dns.SVCBECHConfig{ECH: configList} }

func ips(addrs []string) []net.IP {
	out := make([]net.IP, len(addrs))
	for i, s := range addrs {
		out[i] = netip.MustParseAddr(s).AsSlice()
	}
	return out
}

// Reply returns a response to req with rcode and answer records, echoing
// EDNS (buffer size and DO bit) when req has it, as a recursive resolver
// would.
func Reply(req *dns.Msg, rcode int, answer ...dns.RR) *dns.Msg {
	m := new(dns.Msg).SetRcode(req, rcode)
	m.RecursionAvailable = true
	m.Answer = answer
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(opt.UDPSize(), opt.Do())
	}
	return m
}

// Answer returns a handler that answers every query with rrs, whatever it
// asks: the quickest fixture when the question does not matter.
func Answer(rrs ...dns.RR) dns.HandlerFunc {
	return func(w dns.ResponseWriter, r *dns.Msg) {
		_ = w.WriteMsg(Reply(r, dns.RcodeSuccess, copyRRs(rrs)...))
	}
}

// Zone returns a handler that answers from rrs like a recursive resolver
// would: records whose owner name (in any case) and type match the
// question, following CNAMEs within rrs; NODATA when the name has other
// types; NXDOMAIN when it has none. Negative answers carry the SOA of the
// closest enclosing zone in rrs, if any, so they are cacheable.
func Zone(rrs ...dns.RR) dns.HandlerFunc {
	byName := make(map[string][]dns.RR)
	var soas []*dns.SOA
	for _, rr := range rrs {
		n := strings.ToLower(rr.Header().Name)
		byName[n] = append(byName[n], rr)
		if soa, ok := rr.(*dns.SOA); ok {
			soas = append(soas, soa)
		}
	}
	return func(w dns.ResponseWriter, r *dns.Msg) {
		if len(r.Question) != 1 {
			_ = w.WriteMsg(Reply(r, dns.RcodeFormatError))
			return
		}
		q := r.Question[0]
		name := strings.ToLower(q.Name)
		var answer []dns.RR
		// Eight hops is more than any sane chain and stops loops in fixtures.
		for range 8 {
			next := ""
			found := false
			for _, rr := range byName[name] {
				switch {
				case rr.Header().Rrtype == q.Qtype:
					answer = append(answer, dns.Copy(rr))
					found = true
				case rr.Header().Rrtype == dns.TypeCNAME:
					answer = append(answer, dns.Copy(rr))
					next = strings.ToLower(rr.(*dns.CNAME).Target)
				}
			}
			if found || next == "" {
				break
			}
			name = next
		}
		if len(answer) > 0 {
			_ = w.WriteMsg(Reply(r, dns.RcodeSuccess, answer...))
			return
		}
		rcode := dns.RcodeNameError
		if len(byName[name]) > 0 {
			rcode = dns.RcodeSuccess // NODATA
		}
		m := Reply(r, rcode)
		if soa := closestSOA(soas, name); soa != nil {
			m.Ns = []dns.RR{dns.Copy(soa)}
		}
		_ = w.WriteMsg(m)
	}
}

func closestSOA(soas []*dns.SOA, name string) *dns.SOA {
	var best *dns.SOA
	for _, soa := range soas {
		zone := strings.ToLower(soa.Hdr.Name)
		if dns.IsSubDomain(zone, name) && (best == nil || len(zone) > len(best.Hdr.Name)) {
			best = soa
		}
	}
	return best
}

func copyRRs(rrs []dns.RR) []dns.RR {
	out := make([]dns.RR, len(rrs))
	for i, rr := range rrs {
		out[i] = dns.Copy(rr)
	}
	return out
}
