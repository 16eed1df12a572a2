package dnssectest

import "github.com/miekg/dns"

// Faults of an upstream, as Iterator filters.

// StripRRSIGs removes every RRSIG from m's answer and authority sections,
// as an upstream that does not pass DNSSEC records on does.
func StripRRSIGs(m *dns.Msg) {
	strip := func(rrs []dns.RR) []dns.RR {
		var out []dns.RR
		for _, r := range rrs {
			if r.Header().Rrtype != dns.TypeRRSIG {
				out = append(out, r)
			}
		}
		return out
	}
	m.Answer, m.Ns = strip(m.Answer), strip(m.Ns)
}

// StripDenial removes the NSEC, NSEC3 and RRSIG records of m's authority
// section: a denial without its proof.
func StripDenial(m *dns.Msg) {
	var out []dns.RR
	for _, r := range m.Ns {
		switch r.Header().Rrtype {
		case dns.TypeNSEC, dns.TypeNSEC3, dns.TypeRRSIG:
		default:
			out = append(out, r)
		}
	}
	m.Ns = out
}
