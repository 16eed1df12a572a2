package dnsfw

import (
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/netaddr"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// maxChain bounds the CNAME chain followed from the question name. Real
// chains are two or three long; the bound stops loops in hostile answers.
const maxChain = 12

// inspection is what inspecting one upstream answer for one client found.
type inspection struct {
	// addrs are the addresses left in the answer, each once, with the
	// (capped) TTL of the record that carried it.
	addrs []learnedAddr
	// dropped counts addresses removed by rebinding protection, and
	// droppedLocal those of them that are this host's own; wouldDrop
	// those audit mode let through that enforce mode would not.
	dropped, droppedLocal, wouldDrop int
	// capped counts addresses removed because the answer held more than
	// dns.max_learned_per_name.
	capped int
	// chain is the CNAME chain from the question name: chain[0] is the
	// question name, chain[1:nchain] the targets, in order.
	chain  [maxChain]string
	nchain int
}

// targets returns the CNAME targets of the chain from the question name,
// for release.
func (in *inspection) targets() []string {
	if in.nchain == 0 {
		return nil
	}
	return in.chain[1:in.nchain]
}

type learnedAddr struct {
	addr netip.Addr
	ttl  uint32
}

func (in *inspection) reset() {
	*in = inspection{addrs: in.addrs[:0]}
}

// inspect rewrites m, an upstream's answer to a question for qname, into
// what a client may see: only records of the CNAME chain from qname,
// non-public addresses removed (rebinding protection), ech removed from
// HTTPS/SVCB, TTLs at most dns.max_ttl. It collects the chain and the
// addresses that remain into in. In audit mode nothing is removed for
// security reasons; in notes what would have been. m is owned by the
// caller and modified in place. Whether the client may follow the chain
// is release's to say.
//
// Addresses are classified by classes, which knows this host's own
// addresses (netaddr.Local): rebinding protection removes them as it
// removes loopback, so no answer points a client at the host fqdngate runs
// on.
func inspect(p *policy.Policy, classes netaddr.Classifier, qname string, m *dns.Msg, in *inspection) {
	enforce := p.Mode == policy.Enforce

	chain := &in.chain
	chain[0] = qname
	n := 1
	for n < maxChain {
		next := ""
		for _, rr := range m.Answer {
			if c, ok := rr.(*dns.CNAME); ok && dnsname.EqualFold(c.Hdr.Name, chain[n-1]) {
				next = c.Target
				break
			}
		}
		if next == "" {
			break
		}
		chain[n] = next
		n++
	}
	in.nchain = n

	maxTTL := durationTTL(p.DNS.MaxTTL)
	out := m.Answer[:0]
	for _, rr := range m.Answer {
		h := rr.Header()
		if !inChain(chain[:n], h.Name) {
			// Records about other names could only smuggle addresses the
			// client never asked for past the learned set.
			continue
		}
		if h.Ttl > maxTTL {
			h.Ttl = maxTTL
		}
		switch v := rr.(type) {
		case *dns.A:
			if !in.keep(p, classes, enforce, ipAddr(v.A), h.Ttl) {
				continue
			}
		case *dns.AAAA:
			if !in.keep(p, classes, enforce, ipAddr(v.AAAA), h.Ttl) {
				continue
			}
		case *dns.HTTPS:
			in.svcb(p, classes, enforce, &v.SVCB)
		case *dns.SVCB:
			in.svcb(p, classes, enforce, v)
		}
		out = append(out, rr)
	}
	clear(m.Answer[len(out):])
	m.Answer = out
	for _, rr := range m.Ns {
		h := rr.Header()
		if h.Ttl > maxTTL {
			h.Ttl = maxTTL
		}
		if soa, ok := rr.(*dns.SOA); ok && soa.Minttl > maxTTL {
			soa.Minttl = maxTTL // the negative TTL is min(TTL, Minttl)
		}
	}
	// Glue and other additional records carry addresses nobody learns;
	// the OPT record is the firewall's own, added when replying.
	m.Extra = nil
}

// keep decides whether address a, in a record with ttl, stays in the
// answer, and collects it if so.
func (in *inspection) keep(p *policy.Policy, classes netaddr.Classifier, enforce bool, a netip.Addr, ttl uint32) bool {
	if !a.IsValid() {
		return false
	}
	if p.DNS.RebindingProtection { // spares Classify when off
		if c := classes.Classify(a); p.RebindingRefuses(a, c) {
			if enforce {
				in.dropped++
				if c == netaddr.Local {
					in.droppedLocal++
				}
				return false
			}
			in.wouldDrop++
		}
	}
	for i := range in.addrs {
		if in.addrs[i].addr == a {
			in.addrs[i].ttl = max(in.addrs[i].ttl, ttl)
			return true
		}
	}
	if p.DNS.MaxLearnedPerName > 0 && len(in.addrs) >= p.DNS.MaxLearnedPerName {
		in.capped++
		return false
	}
	in.addrs = append(in.addrs, learnedAddr{a, ttl})
	return true
}

// svcb inspects the parameters of an HTTPS or SVCB record: its address
// hints are addresses the client may connect to, and ech hides from the
// proxy the name a client connects to.
func (in *inspection) svcb(p *policy.Policy, classes netaddr.Classifier, enforce bool, s *dns.SVCB) {
	vals := s.Value[:0]
	for _, kv := range s.Value {
		switch v := kv.(type) {
		case *dns.SVCBECHConfig:
			if p.DNS.StripECH {
				continue
			}
		case *dns.SVCBIPv4Hint:
			if v.Hint = in.hints(p, classes, enforce, v.Hint, s.Hdr.Ttl); len(v.Hint) == 0 {
				continue
			}
		case *dns.SVCBIPv6Hint:
			if v.Hint = in.hints(p, classes, enforce, v.Hint, s.Hdr.Ttl); len(v.Hint) == 0 {
				continue
			}
		}
		vals = append(vals, kv)
	}
	clear(s.Value[len(vals):])
	s.Value = vals
}

func (in *inspection) hints(p *policy.Policy, classes netaddr.Classifier, enforce bool, ips []net.IP, ttl uint32) []net.IP {
	out := ips[:0]
	for _, ip := range ips {
		if in.keep(p, classes, enforce, ipAddr(ip), ttl) {
			out = append(out, ip)
		}
	}
	return out
}

func ipAddr(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

func inChain(chain []string, name string) bool {
	for _, c := range chain {
		if dnsname.EqualFold(c, name) {
			return true
		}
	}
	return false
}

// durationTTL converts d to a TTL in seconds, saturating.
func durationTTL(d time.Duration) uint32 {
	s := d / time.Second
	if s < 0 {
		return 0
	}
	if s > 1<<31-1 {
		return 1<<31 - 1
	}
	return uint32(s)
}

// learnedExpiry is when an address seen with ttl stops being reachable:
// the TTL clamped to the policy's bounds, plus grace for connections a
// client opens just before its cached answer expires.
func learnedExpiry(p *policy.Policy, now time.Time, ttl uint32) time.Time {
	d := time.Duration(ttl) * time.Second
	d = min(max(d, p.DNS.MinTTL), p.DNS.MaxTTL)
	return now.Add(d + p.DNS.Grace)
}

// removeAddrs removes the addresses in bad from m's answer: A and AAAA
// records, and HTTPS/SVCB address hints (a hint list left empty is removed).
func removeAddrs(m *dns.Msg, bad []netip.Addr) {
	out := m.Answer[:0]
	for _, rr := range m.Answer {
		switch v := rr.(type) {
		case *dns.A:
			if slices.Contains(bad, ipAddr(v.A)) {
				continue
			}
		case *dns.AAAA:
			if slices.Contains(bad, ipAddr(v.AAAA)) {
				continue
			}
		case *dns.HTTPS:
			removeHints(&v.SVCB, bad)
		case *dns.SVCB:
			removeHints(v, bad)
		}
		out = append(out, rr)
	}
	clear(m.Answer[len(out):])
	m.Answer = out
}

func removeHints(s *dns.SVCB, bad []netip.Addr) {
	keep := func(ip net.IP) bool { return !slices.Contains(bad, ipAddr(ip)) }
	vals := s.Value[:0]
	for _, kv := range s.Value {
		switch v := kv.(type) {
		case *dns.SVCBIPv4Hint:
			if v.Hint = filterIPs(v.Hint, keep); len(v.Hint) == 0 {
				continue
			}
		case *dns.SVCBIPv6Hint:
			if v.Hint = filterIPs(v.Hint, keep); len(v.Hint) == 0 {
				continue
			}
		}
		vals = append(vals, kv)
	}
	clear(s.Value[len(vals):])
	s.Value = vals
}

func filterIPs(ips []net.IP, keep func(net.IP) bool) []net.IP {
	out := ips[:0]
	for _, ip := range ips {
		if keep(ip) {
			out = append(out, ip)
		}
	}
	return out
}

// dropLearned returns addrs without the addresses in bad, in place.
func dropLearned(addrs []learnedAddr, bad []netip.Addr) []learnedAddr {
	return slices.DeleteFunc(addrs, func(a learnedAddr) bool { return slices.Contains(bad, a.addr) })
}
