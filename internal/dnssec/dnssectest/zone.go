package dnssectest

// A signed test hierarchy built with miekg/dns: zones with their keys,
// signed RRsets, NSEC or NSEC3 chains, and the authoritative answering
// logic the servers (hierarchy.go) run.

import (
	"crypto"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Key is a zone's key pair.
type Key struct {
	Pub  *dns.DNSKEY
	Priv crypto.Signer
}

func newKey(zone string, alg uint8) Key {
	k := &dns.DNSKEY{Hdr: dns.RR_Header{Name: zone, Rrtype: dns.TypeDNSKEY, Class: dns.ClassINET, Ttl: 3600}, Flags: 257, Protocol: 3, Algorithm: alg}
	bits := map[uint8]int{dns.RSASHA256: 1024, dns.RSASHA512: 1024, dns.ECDSAP256SHA256: 256, dns.ECDSAP384SHA384: 384, dns.ED25519: 256}[alg]
	priv, err := k.Generate(bits)
	if err != nil {
		failf("generating %s key for %s: %v", dns.AlgorithmToString[alg], zone, err)
	}
	return Key{Pub: k, Priv: priv.(crypto.Signer)}
}

type window struct{ inception, expiration time.Time }

// Zone is one zone of the hierarchy.
type Zone struct {
	name   string
	Keys   []Key // all sign the DNSKEY set
	zsk    int   // index of the key that signs the other RRsets
	nsec3  bool
	optOut bool
	signed bool
	data   []dns.RR // unsigned zone content: apex SOA and NS, delegations' NS, DS and glue, data

	Sets  map[RRKey][]dns.RR
	Sigs  map[RRKey][]*dns.RRSIG
	nsecs []*dns.NSEC  // canonical order
	n3    []*dns.NSEC3 // hash order
	names map[string]bool
	cuts  map[string]bool
	types map[string][]uint16 // typesAt's index of Sets, made before the denial records
}

func rr(s string) dns.RR {
	r, err := dns.NewRR(s)
	if err != nil {
		panic(fmt.Sprintf("test record %q: %v", s, err))
	}
	return r
}

func (z *Zone) add(rrs ...string) {
	for _, s := range rrs {
		z.data = append(z.data, rr(s))
	}
}

// build groups the data, adds DNSKEY and the denial chain, and signs it
// all with a validity window around now.
func (z *Zone) build(now time.Time) {
	z.Sets = map[RRKey][]dns.RR{}
	z.Sigs = map[RRKey][]*dns.RRSIG{}
	z.names = map[string]bool{}
	z.cuts = map[string]bool{}
	all := append([]dns.RR(nil), z.data...)
	if z.signed {
		for _, k := range z.Keys {
			all = append(all, k.Pub)
		}
		if z.nsec3 {
			var flags uint8
			if z.optOut {
				flags = 0 // NSEC3PARAM flags are always zero
			}
			all = append(all, &dns.NSEC3PARAM{Hdr: dns.RR_Header{Name: z.name, Rrtype: dns.TypeNSEC3PARAM, Class: dns.ClassINET}, Hash: dns.SHA1, Flags: flags})
		}
	}
	for _, r := range all {
		h := r.Header()
		h.Name = dns.CanonicalName(h.Name)
		if h.Ttl == 0 {
			h.Ttl = 300
		}
		k := RRKey{h.Name, h.Rrtype}
		z.Sets[k] = append(z.Sets[k], r)
		if h.Rrtype == dns.TypeNS && h.Name != z.name {
			z.cuts[h.Name] = true
		}
	}
	for k := range z.Sets {
		if z.below(k.Name) == "" || z.cuts[k.Name] {
			z.names[k.Name] = true // glue is not part of the zone
		}
	}
	if !z.signed {
		return
	}
	if z.nsec3 {
		z.buildNSEC3()
	} else {
		z.buildNSEC()
	}
	w := window{now.Add(-time.Hour), now.Add(24 * time.Hour)}
	for k, set := range z.Sets {
		if z.below(k.Name) != "" && !z.cuts[k.Name] {
			continue // glue
		}
		if z.cuts[k.Name] && k.Type != dns.TypeDS && k.Type != dns.TypeNSEC && k.Type != dns.TypeNSEC3 {
			continue // the parent side of a cut is not signed, except DS and the denial record
		}
		z.sign(k, set, w)
	}
}

// sign (re)signs one RRset within w: the DNSKEY set by every key, the
// rest by the zone signing key.
func (z *Zone) sign(k RRKey, set []dns.RR, w window) {
	keys := []Key{z.Keys[z.zsk]}
	if k.Type == dns.TypeDNSKEY {
		keys = z.Keys
	}
	z.Sigs[k] = nil
	for _, key := range keys {
		s := &dns.RRSIG{
			Algorithm:  key.Pub.Algorithm,
			Inception:  uint32(w.inception.Unix()),
			Expiration: uint32(w.expiration.Unix()),
			KeyTag:     key.Pub.KeyTag(),
			SignerName: z.name,
		}
		s.Hdr.Ttl = set[0].Header().Ttl
		if err := s.Sign(key.Priv, set); err != nil {
			failf("signing %s/%s: %v", k.Name, dns.TypeToString[k.Type], err)
		}
		z.Sigs[k] = append(z.Sigs[k], s)
	}
}

// below returns the delegation at or above name (below the apex), or "".
func (z *Zone) below(name string) string {
	for _, a := range ancestors(name) {
		if a == z.name || !isSub(z.name, a) {
			return ""
		}
		if z.cuts[a] {
			return a
		}
	}
	return ""
}

func (z *Zone) typesAt(name string) []uint16 {
	if z.types == nil {
		// Indexed once: a zone of many names would otherwise scan every
		// RRset per name.
		z.types = map[string][]uint16{}
		for k := range z.Sets {
			z.types[k.Name] = append(z.types[k.Name], k.Type)
		}
	}
	return append([]uint16(nil), z.types[name]...)
}

func (z *Zone) sortedNames() []string {
	var names []string
	for n := range z.names {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { c, _ := canonicalCompare(names[i], names[j]); return c < 0 })
	return names
}

func (z *Zone) buildNSEC() {
	names := z.sortedNames()
	for i, n := range names {
		types := append(z.typesAt(n), dns.TypeNSEC, dns.TypeRRSIG)
		sort.Slice(types, func(a, b int) bool { return types[a] < types[b] })
		nsec := &dns.NSEC{Hdr: dns.RR_Header{Name: n, Rrtype: dns.TypeNSEC, Class: dns.ClassINET, Ttl: 300}, NextDomain: names[(i+1)%len(names)], TypeBitMap: types}
		z.Sets[RRKey{n, dns.TypeNSEC}] = []dns.RR{nsec}
		z.nsecs = append(z.nsecs, nsec)
	}
}

func (z *Zone) buildNSEC3() {
	owners := map[string]bool{}
	for n := range z.names {
		if z.optOut && z.cuts[n] && len(z.Sets[RRKey{n, dns.TypeDS}]) == 0 {
			continue // opt-out: no NSEC3 for an insecure delegation
		}
		for _, a := range ancestors(n) { // the name and its empty non-terminals
			if !isSub(z.name, a) {
				break
			}
			owners[a] = true
		}
	}
	type h struct{ hash, name string }
	var hs []h
	for n := range owners {
		hs = append(hs, h{dns.HashName(n, dns.SHA1, 0, ""), n})
	}
	sort.Slice(hs, func(i, j int) bool { return hs[i].hash < hs[j].hash })
	var flags uint8
	if z.optOut {
		flags = 1
	}
	for i, x := range hs {
		types := z.typesAt(x.name)
		if len(types) > 0 && !(z.cuts[x.name] && len(z.Sets[RRKey{x.name, dns.TypeDS}]) == 0) {
			types = append(types, dns.TypeRRSIG)
		}
		sort.Slice(types, func(a, b int) bool { return types[a] < types[b] })
		owner := strings.ToLower(x.hash) + "." + z.name
		n := &dns.NSEC3{Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeNSEC3, Class: dns.ClassINET, Ttl: 300},
			Hash: dns.SHA1, Flags: flags, Iterations: 0, SaltLength: 0, Salt: "",
			HashLength: 20, NextDomain: hs[(i+1)%len(hs)].hash, TypeBitMap: types}
		z.Sets[RRKey{owner, dns.TypeNSEC3}] = []dns.RR{n}
		z.n3 = append(z.n3, n)
	}
}

// withSigs appends the RRset k and its signatures to out.
func (z *Zone) WithSigs(out []dns.RR, k RRKey) []dns.RR {
	out = append(out, z.Sets[k]...)
	for _, s := range z.Sigs[k] {
		out = append(out, s)
	}
	return out
}

func (z *Zone) exists(name string) bool {
	for n := range z.names {
		if isSub(name, n) {
			return true // the name or an empty non-terminal above a name
		}
	}
	return false
}

// nsecCovering returns the NSEC whose interval holds name.
func (z *Zone) nsecCovering(name string) *dns.NSEC {
	var best *dns.NSEC
	for _, n := range z.nsecs {
		if c, _ := canonicalCompare(n.Hdr.Name, name); c <= 0 {
			best = n
		}
	}
	if best == nil {
		best = z.nsecs[len(z.nsecs)-1]
	}
	return best
}

// nsec3For returns the NSEC3 matching or covering name.
func (z *Zone) nsec3For(name string) *dns.NSEC3 {
	h := dns.HashName(name, dns.SHA1, 0, "")
	var best *dns.NSEC3
	for _, n := range z.n3 {
		if strings.ToUpper(strings.SplitN(n.Hdr.Name, ".", 2)[0]) <= h {
			best = n
		}
	}
	if best == nil {
		best = z.n3[len(z.n3)-1]
	}
	return best
}

// authority collects denial records (deduplicated) with their signatures.
type authority struct {
	z    *Zone
	seen map[string]bool
	rrs  []dns.RR
}

func (a *authority) add(r dns.RR) {
	if r == nil || a.seen[r.Header().Name] {
		return
	}
	a.seen[r.Header().Name] = true
	a.rrs = a.z.WithSigs(a.rrs, RRKey{r.Header().Name, r.Header().Rrtype})
}

func (z *Zone) denial() *authority { return &authority{z: z, seen: map[string]bool{}} }

// proveName adds the record matching name (NSEC or NSEC3).
func (a *authority) proveName(name string) {
	if !a.z.signed {
		return
	}
	if a.z.nsec3 {
		a.add(a.z.nsec3For(name))
	} else if n := a.z.Sets[RRKey{name, dns.TypeNSEC}]; len(n) > 0 {
		a.add(n[0])
	} else {
		a.add(a.z.nsecCovering(name))
	}
}

// proveAbsent adds the records proving name absent: the covering NSEC, or
// the NSEC3 closest encloser proof; wildcard adds the wildcard's denial.
func (a *authority) proveAbsent(name, ce string, wildcard bool) {
	if !a.z.signed {
		return
	}
	if !a.z.nsec3 {
		a.add(a.z.nsecCovering(name))
		if wildcard {
			a.add(a.z.nsecCovering("*." + ce))
		}
		return
	}
	idx := dns.Split(name)
	nc := name[idx[len(idx)-dns.CountLabel(ce)-1]:]
	a.add(a.z.nsec3For(ce))
	a.add(a.z.nsec3For(nc))
	if wildcard {
		a.add(a.z.nsec3For("*." + ce))
	}
}

func (z *Zone) SOA(out []dns.RR) []dns.RR {
	return z.WithSigs(out, RRKey{z.name, dns.TypeSOA})
}

// answer is the authoritative server's logic for one question.
func (z *Zone) answer(q dns.Question) *dns.Msg {
	m := new(dns.Msg)
	m.Authoritative = true
	qn := dns.CanonicalName(q.Name)
	qt := q.Qtype
	if !isSub(z.name, qn) {
		m.Authoritative = false
		m.Rcode = dns.RcodeRefused
		return m
	}
	if cut := z.below(qn); cut != "" && !(cut == qn && qt == dns.TypeDS) {
		m.Authoritative = false
		m.Ns = append(m.Ns, z.Sets[RRKey{cut, dns.TypeNS}]...)
		if ds := z.Sets[RRKey{cut, dns.TypeDS}]; len(ds) > 0 {
			m.Ns = z.WithSigs(m.Ns, RRKey{cut, dns.TypeDS})
		} else {
			a := z.denial()
			if z.nsec3 && z.optOut {
				a.proveAbsent(cut, commonAncestor(cut, z.name), false)
			} else {
				a.proveName(cut)
			}
			m.Ns = append(m.Ns, a.rrs...)
		}
		for _, ns := range z.Sets[RRKey{cut, dns.TypeNS}] {
			m.Extra = append(m.Extra, z.Sets[RRKey{ns.(*dns.NS).Ns, dns.TypeA}]...)
		}
		return m
	}
	for _, a := range ancestors(qn)[1:] {
		if !isSub(z.name, a) {
			break
		}
		if d := z.Sets[RRKey{a, dns.TypeDNAME}]; len(d) == 1 {
			m.Answer = z.WithSigs(m.Answer, RRKey{a, dns.TypeDNAME})
			target := qn[:len(qn)-len(a)] + d[0].(*dns.DNAME).Target
			m.Answer = append(m.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: qn, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: d[0].Header().Ttl}, Target: target})
			return m
		}
	}
	if z.names[qn] {
		switch {
		case len(z.Sets[RRKey{qn, qt}]) > 0:
			m.Answer = z.WithSigs(m.Answer, RRKey{qn, qt})
		case len(z.Sets[RRKey{qn, dns.TypeCNAME}]) > 0:
			m.Answer = z.WithSigs(m.Answer, RRKey{qn, dns.TypeCNAME})
		default:
			m.Ns = z.SOA(m.Ns)
			a := z.denial()
			if z.nsec3 && z.optOut && z.cuts[qn] && len(z.Sets[RRKey{qn, dns.TypeDS}]) == 0 {
				a.proveAbsent(qn, parent(qn), false)
			} else {
				a.proveName(qn)
			}
			m.Ns = append(m.Ns, a.rrs...)
		}
		return m
	}
	if z.exists(qn) { // empty non-terminal
		m.Ns = z.SOA(m.Ns)
		a := z.denial()
		a.proveName(qn)
		m.Ns = append(m.Ns, a.rrs...)
		return m
	}
	ce := qn
	for !z.exists(ce) {
		ce = parent(ce)
	}
	wild := "*." + ce
	if z.names[wild] {
		if set := z.Sets[RRKey{wild, qt}]; len(set) > 0 {
			for _, r := range set {
				c := dns.Copy(r)
				c.Header().Name = qn
				m.Answer = append(m.Answer, c)
			}
			for _, s := range z.Sigs[RRKey{wild, qt}] {
				c := dns.Copy(s).(*dns.RRSIG)
				c.Hdr.Name = qn
				m.Answer = append(m.Answer, c)
			}
			a := z.denial()
			a.proveAbsent(qn, ce, false)
			m.Ns = append(m.Ns, a.rrs...)
			return m
		}
		m.Ns = z.SOA(m.Ns)
		a := z.denial()
		a.proveAbsent(qn, ce, false)
		a.proveName(wild)
		m.Ns = append(m.Ns, a.rrs...)
		return m
	}
	m.Rcode = dns.RcodeNameError
	m.Ns = z.SOA(m.Ns)
	a := z.denial()
	a.proveAbsent(qn, ce, true)
	m.Ns = append(m.Ns, a.rrs...)
	return m
}

// Cover returns, with their signatures and without repeats, the NSEC or
// NSEC3 records of the zone that match or cover each of names: material
// for forged denials.
func (z *Zone) Cover(names ...string) []dns.RR {
	a := z.denial()
	for _, n := range names {
		if z.nsec3 {
			a.add(z.nsec3For(n))
		} else {
			a.add(z.nsecCovering(n))
		}
	}
	return a.rrs
}
