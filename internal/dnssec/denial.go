package dnssec

import (
	"context"
	"math"
	"time"

	"github.com/miekg/dns"
)

// maxNSEC3Iterations: RFC 9276 section 3.2 lets validators treat NSEC3
// records with more iterations as insecure; 150 is what the major
// resolvers used before lowering it further.
const maxNSEC3Iterations = 150

// proof holds the NSEC and NSEC3 records of an authority section whose
// signatures z's keys verify.
type proof struct {
	zone      string
	nsec      []*dns.NSEC
	nsec3     []*dns.NSEC3
	unusable3 bool   // NSEC3 records we cannot use (hash algorithm, iterations)
	maxTTL    uint32 // the smallest MaxTTL of the records verified
}

func (v *Validator) collect(z *node, authority []dns.RR, now time.Time) proof {
	p := proof{zone: z.zone, maxTTL: math.MaxUint32}
	sets, sigs, bad := group(authority)
	if bad != "" {
		return p
	}
	n := 0
	for _, k := range sets.order {
		if k.rtype != dns.TypeNSEC && k.rtype != dns.TypeNSEC3 {
			continue
		}
		if n++; n > maxRRsets || !isSub(z.zone, k.name) {
			continue
		}
		rrs := sets.m[k]
		if len(rrs) != 1 {
			continue // one NSEC or NSEC3 per owner name
		}
		if k.rtype == dns.TypeNSEC3 {
			r := rrs[0].(*dns.NSEC3)
			if parent(k.name) != z.zone {
				continue
			}
			if r.Hash != dns.SHA1 || r.Iterations > maxNSEC3Iterations {
				p.unusable3 = true
				continue
			}
		}
		r, _ := v.verifyRRset(z, rrs, sigs[k], now)
		if r.State != Secure || r.wildcard {
			continue
		}
		p.maxTTL = min(p.maxTTL, r.MaxTTL)
		switch x := rrs[0].(type) {
		case *dns.NSEC:
			p.nsec = append(p.nsec, x)
		case *dns.NSEC3:
			p.nsec3 = append(p.nsec3, x)
		}
	}
	return p
}

func hasType(bitmap []uint16, t uint16) bool {
	for _, b := range bitmap {
		if b == t {
			return true
		}
	}
	return false
}

// delegation reports whether a record's type bitmap marks a zone cut seen
// from the parent side: NS without SOA.
func delegation(bitmap []uint16) bool {
	return hasType(bitmap, dns.TypeNS) && !hasType(bitmap, dns.TypeSOA)
}

// nsecMatch returns the NSEC owned by name.
func (p proof) nsecMatch(name string) *dns.NSEC {
	for _, n := range p.nsec {
		if c, ok := canonicalCompare(n.Hdr.Name, name); ok && c == 0 {
			return n
		}
	}
	return nil
}

// nsecCover returns the NSEC that proves name does not exist: name lies
// strictly between its owner and next name (the last NSEC wraps to the
// apex), the owner is not a delegation or DNAME above name (whose NSEC
// says nothing about the child zone), and name is not an empty
// non-terminal (next name below it).
func (p proof) nsecCover(name string) *dns.NSEC {
	for _, n := range p.nsec {
		owner := dns.CanonicalName(n.Hdr.Name)
		next := dns.CanonicalName(n.NextDomain)
		if isSub(owner, name) && (delegation(n.TypeBitMap) || hasType(n.TypeBitMap, dns.TypeDNAME)) {
			continue
		}
		if isSub(name, next) {
			continue
		}
		a, ok1 := canonicalCompare(owner, name)
		b, ok2 := canonicalCompare(name, next)
		w, ok3 := canonicalCompare(owner, next)
		if !ok1 || !ok2 || !ok3 {
			continue
		}
		if w < 0 && a < 0 && b < 0 {
			return n
		}
		if w >= 0 && a < 0 && isSub(p.zone, name) { // the last NSEC: wraps to the apex
			return n
		}
	}
	return nil
}

// nsecENT reports whether an NSEC shows name to be an empty non-terminal:
// name lies between owner and next, and next is below name.
func (p proof) nsecENT(name string) bool {
	for _, n := range p.nsec {
		owner := dns.CanonicalName(n.Hdr.Name)
		next := dns.CanonicalName(n.NextDomain)
		if name == next || !isSub(name, next) {
			continue
		}
		if a, ok := canonicalCompare(owner, name); ok && a < 0 {
			return true
		}
	}
	return false
}

// nsecClosestEncloser is the closest encloser an NSEC covering name
// implies: the longer common ancestor of name with owner or next.
func nsecClosestEncloser(n *dns.NSEC, name string) string {
	a := commonAncestor(name, dns.CanonicalName(n.Hdr.Name))
	b := commonAncestor(name, dns.CanonicalName(n.NextDomain))
	if dns.CountLabel(b) > dns.CountLabel(a) {
		return b
	}
	return a
}

func (p proof) nsec3Match(name string) *dns.NSEC3 {
	for _, n := range p.nsec3 {
		if n.Match(name) {
			return n
		}
	}
	return nil
}

// nsec3Cover returns an NSEC3 whose hash interval holds name's hash
// strictly: miekg/dns's Cover also accepts the owner's own hash, which
// would let a name's own NSEC3 "prove" it absent.
func (p proof) nsec3Cover(name string) *dns.NSEC3 {
	for _, n := range p.nsec3 {
		if n.Cover(name) && !n.Match(name) {
			return n
		}
	}
	return nil
}

// closestEncloser finds, per RFC 5155 section 8.3, the closest encloser of
// name (the longest ancestor with a matching NSEC3, within the zone) and
// the NSEC3 covering the next closer name. ok is false without both.
func (p proof) closestEncloser(name string) (ce string, cover *dns.NSEC3, ok bool) {
	anc := ancestors(name)
	for i := 1; i < len(anc); i++ {
		if !isSub(p.zone, anc[i]) {
			break
		}
		m := p.nsec3Match(anc[i])
		if m == nil {
			continue
		}
		if anc[i] != p.zone && (delegation(m.TypeBitMap) || hasType(m.TypeBitMap, dns.TypeDNAME)) {
			// RFC 5155 section 8.3: the parent side of a cut or a
			// DNAME proves nothing about names below it
			return "", nil, false
		}
		c := p.nsec3Cover(anc[i-1])
		if c == nil {
			return "", nil, false
		}
		return anc[i], c, true
	}
	return "", nil, false
}

// denyDS judges a DS response without a DS RRset for name, one label below
// the secure zone parent: the parent's NSEC or NSEC3 must show that name
// is an unsigned delegation, not a cut at all, or absent.
func (v *Validator) denyDS(parent *node, name string, authority []dns.RR, now time.Time) *node {
	p := v.collect(parent, authority, now)
	bits := func(bm []uint16, owner string) *node {
		switch {
		case hasType(bm, dns.TypeDS):
			return &node{kind: kindBogus, zone: parent.zone, res: bogus(dns.ExtendedErrorCodeDNSBogus, parent.zone, "DS "+name+" denied although "+owner+" lists DS")}
		case hasType(bm, dns.TypeSOA):
			return &node{kind: kindBogus, zone: parent.zone, res: bogus(dns.ExtendedErrorCodeDNSBogus, parent.zone, "DS "+name+" denied by a record of the child apex")}
		case hasType(bm, dns.TypeNS):
			return &node{kind: kindInsecure, zone: name, res: Result{State: Insecure, Zone: name, Reason: "delegation " + name + " is unsigned (no DS, proven by " + parent.zone + ")"}}
		default:
			return &node{kind: kindNotCut, zone: parent.zone}
		}
	}
	if n := p.nsecMatch(name); n != nil {
		return bits(n.TypeBitMap, "NSEC "+n.Hdr.Name)
	}
	if p.nsecENT(name) {
		return &node{kind: kindNotCut, zone: parent.zone}
	}
	if n := p.nsecCover(name); n != nil {
		return &node{kind: kindAbsent, zone: parent.zone}
	}
	if n := p.nsec3Match(name); n != nil {
		return bits(n.TypeBitMap, "NSEC3 "+n.Hdr.Name)
	}
	if _, c, ok := p.closestEncloser(name); ok {
		if c.Flags&1 != 0 {
			return &node{kind: kindInsecure, zone: name, res: Result{State: Insecure, Zone: name, Reason: "delegation " + name + " is in an NSEC3 opt-out span of " + parent.zone}}
		}
		return &node{kind: kindAbsent, zone: parent.zone}
	}
	if p.unusable3 {
		return &node{kind: kindInsecure, zone: parent.zone, res: Result{State: Insecure, Zone: parent.zone, Reason: "NSEC3 of " + parent.zone + " uses an unsupported hash or too many iterations"}}
	}
	return &node{kind: kindBogus, zone: parent.zone, res: bogus(dns.ExtendedErrorCodeNSECMissing, parent.zone, "no valid proof that "+name+" has no DS")}
}

// validateDenial checks the proof that name has no record of type qtype
// (NODATA) or does not exist (NXDOMAIN).
func (v *Validator) validateDenial(ctx context.Context, name string, qtype uint16, rcode int, authority []dns.RR) Result {
	zname := name
	if qtype == dns.TypeDS && name != "." {
		zname = parent(name)
	}
	return v.inZone(ctx, zname, authority, func(z *node) Result {
		return v.denial(z, name, qtype, rcode, authority)
	})
}

func (v *Validator) denial(z *node, name string, qtype uint16, rcode int, authority []dns.RR) Result {
	now := v.now()
	p := v.collect(z, authority, now)
	secure := func(how string) Result {
		return Result{State: Secure, Zone: z.zone, Reason: how + " proven by " + z.zone, MaxTTL: p.maxTTL}
	}
	insecure := func(how string) Result {
		return Result{State: Insecure, Zone: z.zone, Reason: how}
	}
	what := name + "/" + dns.TypeToString[qtype]
	noData := func(bm []uint16) bool {
		if hasType(bm, qtype) || hasType(bm, dns.TypeCNAME) {
			return false
		}
		// the parent side of a cut says nothing of the child's types
		return qtype == dns.TypeDS || !delegation(bm)
	}

	if rcode == dns.RcodeNameError {
		if n := p.nsecCover(name); n != nil {
			ce := nsecClosestEncloser(n, name)
			if isSub(z.zone, ce) && p.nsecMatch("*."+ce) == nil && p.nsecCover("*."+ce) != nil {
				return secure("NXDOMAIN " + name + " (NSEC)")
			}
		}
		if ce, c, ok := p.closestEncloser(name); ok {
			if p.nsec3Cover("*."+ce) != nil {
				if c.Flags&1 != 0 {
					return insecure("NXDOMAIN " + name + " in an NSEC3 opt-out span of " + z.zone)
				}
				return secure("NXDOMAIN " + name + " (NSEC3)")
			}
		}
	} else {
		if n := p.nsecMatch(name); n != nil {
			if noData(n.TypeBitMap) {
				return secure("NODATA " + what + " (NSEC)")
			}
		} else if p.nsecENT(name) {
			return secure("NODATA " + what + " at an empty non-terminal (NSEC)")
		} else if n := p.nsecCover(name); n != nil {
			ce := nsecClosestEncloser(n, name)
			if w := p.nsecMatch("*." + ce); w != nil && isSub(z.zone, ce) && noData(w.TypeBitMap) {
				return secure("NODATA " + what + " at wildcard *." + ce + " (NSEC)")
			}
		}
		if n := p.nsec3Match(name); n != nil {
			if noData(n.TypeBitMap) {
				return secure("NODATA " + what + " (NSEC3)")
			}
		} else if ce, c, ok := p.closestEncloser(name); ok {
			if qtype == dns.TypeDS && c.Flags&1 != 0 {
				return insecure("no DS for " + name + ": NSEC3 opt-out span of " + z.zone)
			}
			if w := p.nsec3Match("*." + ce); w != nil && noData(w.TypeBitMap) {
				return secure("NODATA " + what + " at wildcard *." + ce + " (NSEC3)")
			}
		}
	}
	if len(p.nsec) == 0 && len(p.nsec3) == 0 && p.unusable3 {
		return insecure("NSEC3 of " + z.zone + " uses an unsupported hash or too many iterations")
	}
	kind := "NODATA"
	if rcode == dns.RcodeNameError {
		kind = "NXDOMAIN"
	}
	return bogus(dns.ExtendedErrorCodeNSECMissing, z.zone, "no valid "+kind+" proof for "+what+" in signed zone "+z.zone)
}

// provesWildcard accepts a wildcard expansion (RRSIG labels below the
// owner's) only with the proof that the owner name itself does not exist.
func (v *Validator) provesWildcard(z *node, owner string, labels uint8, authority []dns.RR, now time.Time, ok Result) Result {
	p := v.collect(z, authority, now)
	idx := dns.Split(owner)
	nl := len(idx)
	// next closer: the wildcard's closest encloser plus one label
	nc := owner[idx[nl-int(labels)-1]:]
	if n := p.nsecCover(owner); n != nil {
		ok.Reason += " (wildcard expansion, NSEC proof)"
		ok.MaxTTL = min(ok.MaxTTL, p.maxTTL)
		return ok
	}
	if c := p.nsec3Cover(nc); c != nil {
		if c.Flags&1 != 0 {
			return Result{State: Insecure, Zone: z.zone, Reason: "wildcard expansion for " + owner + " in an NSEC3 opt-out span"}
		}
		ok.Reason += " (wildcard expansion, NSEC3 proof)"
		ok.MaxTTL = min(ok.MaxTTL, p.maxTTL)
		return ok
	}
	return bogus(dns.ExtendedErrorCodeNSECMissing, z.zone, "wildcard expansion for "+owner+" without proof that the name does not exist")
}
