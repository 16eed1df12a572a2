package dnssec

import (
	"context"
	"slices"
	"time"

	"github.com/miekg/dns"
)

// maxSigs bounds the signatures tried on one RRset, so a crafted answer
// cannot make us verify without end.
const maxSigs = 8

// sigResult is the outcome of verifying one RRset.
type sigResult struct {
	Result
	wildcard bool  // the covering RRSIG shows a wildcard expansion
	labels   uint8 // that RRSIG's Labels
}

// verifyRRset checks that one of sigs is a valid signature over rrs made
// by one of z's keys with z as signer, within its validity window at now.
// It returns the verdict and how long the RRset may be trusted.
func (v *Validator) verifyRRset(z *node, rrs []dns.RR, sigs []*dns.RRSIG, now time.Time) (sigResult, time.Duration) {
	h := rrs[0].Header()
	owner := dns.CanonicalName(h.Name)
	what := owner + "/" + dns.TypeToString[h.Rrtype]
	fail := func(ede uint16, reason string) (sigResult, time.Duration) {
		return sigResult{Result: bogus(ede, z.zone, reason)}, 0
	}
	if len(sigs) == 0 {
		return fail(dns.ExtendedErrorCodeRRSIGsMissing, "no RRSIG over "+what+" in signed zone "+z.zone)
	}
	ownerLabels := dns.CountLabel(owner)
	if len(owner) > 1 && owner[:2] == "*." {
		ownerLabels-- // RFC 4035 section 5.3.1: the wildcard label does not count
	}
	ede, reason := uint16(dns.ExtendedErrorCodeDNSBogus), "no valid RRSIG over "+what
	worse := func(e uint16, r string) {
		// keep the most specific reason: a bad signature over an
		// expired one over a missing key over a mismatch
		rank := map[uint16]int{dns.ExtendedErrorCodeDNSBogus: 0, dns.ExtendedErrorCodeDNSKEYMissing: 1, dns.ExtendedErrorCodeSignatureExpired: 2, dns.ExtendedErrorCodeSignatureNotYetValid: 2}
		if rank[e] >= rank[ede] {
			ede, reason = e, r
		}
	}
	tried := 0
	for _, s := range sigs {
		if tried == maxSigs {
			break
		}
		if dns.CanonicalName(s.SignerName) != z.zone {
			worse(dns.ExtendedErrorCodeDNSBogus, "RRSIG over "+what+" names signer "+s.SignerName+", not its zone "+z.zone)
			continue
		}
		if s.TypeCovered != h.Rrtype || int(s.Labels) > ownerLabels || !supportedAlg(s.Algorithm) {
			continue
		}
		if !s.ValidityPeriod(now) {
			if int32(uint32(now.Unix())-s.Inception) < 0 {
				worse(dns.ExtendedErrorCodeSignatureNotYetValid, "RRSIG over "+what+" is not valid yet (inception "+dns.TimeToString(s.Inception)+")")
			} else {
				worse(dns.ExtendedErrorCodeSignatureExpired, "RRSIG over "+what+" expired ("+dns.TimeToString(s.Expiration)+")")
			}
			continue
		}
		found := false
		for _, k := range z.keys {
			if k.KeyTag() != s.KeyTag || k.Algorithm != s.Algorithm {
				continue
			}
			found = true
			tried++
			if err := v.sigs.verify(s, k, rrs); err != nil {
				worse(dns.ExtendedErrorCodeDNSBogus, "RRSIG over "+what+" by key "+itoa(int(s.KeyTag))+" does not verify: "+err.Error())
				continue
			}
			ttl := time.Duration(min(h.Ttl, s.OrigTtl)) * time.Second
			if left := time.Duration(int32(s.Expiration-uint32(now.Unix()))) * time.Second; left < ttl {
				ttl = left
			}
			// RFC 4035 section 5.3.3: the TTL received is not signed; the
			// original TTL and the signature's expiry bound it.
			maxTTL := s.OrigTtl
			if left := int32(s.Expiration - uint32(now.Unix())); left >= 0 && uint32(left) < maxTTL {
				maxTTL = uint32(left)
			}
			return sigResult{
				Result:   Result{State: Secure, Zone: z.zone, Reason: what + " signed by " + z.zone, MaxTTL: maxTTL},
				wildcard: int(s.Labels) < ownerLabels,
				labels:   s.Labels,
			}, ttl
		}
		if !found {
			worse(dns.ExtendedErrorCodeDNSKEYMissing, "RRSIG over "+what+" by key "+itoa(int(s.KeyTag))+", not a key of "+z.zone)
		}
	}
	return fail(ede, reason)
}

// validateRRset validates one RRset of an answer in its own zone.
func (v *Validator) validateRRset(ctx context.Context, rrs []dns.RR, sigs []*dns.RRSIG, authority []dns.RR) Result {
	h := rrs[0].Header()
	owner := dns.CanonicalName(h.Name)
	zname := owner
	if h.Rrtype == dns.TypeDS {
		if zname = parent(owner); zname == "" {
			return bogus(dns.ExtendedErrorCodeDNSBogus, "", "DS for the root")
		}
	}
	var hint []dns.RR
	for _, s := range sigs {
		hint = append(hint, s)
	}
	return v.inZone(ctx, zname, hint, func(z *node) Result {
		now := v.now()
		r, _ := v.verifyRRset(z, rrs, sigs, now)
		if r.State != Secure || !r.wildcard {
			return r.Result
		}
		return v.provesWildcard(z, owner, r.labels, authority, now, r.Result)
	})
}

// maxHints bounds the signer names tried for one RRset or proof.
const maxHints = 3

// inZone finds the zone that should hold name and runs check with its
// keys. The signer names of the RRSIGs in hints that are name or its
// ancestors say where to look, deepest first, so the walk stops at the
// signing zone; without such a hint the walk goes down to name itself.
// A walk that ends on a proven unsigned delegation makes name insecure
// whichever hint led there: everything below such a cut is unsigned.
func (v *Validator) inZone(ctx context.Context, name string, hints []dns.RR, check func(z *node) Result) Result {
	var signers []string
	for _, h := range hints {
		s, ok := h.(*dns.RRSIG)
		if !ok {
			continue
		}
		sn := dns.CanonicalName(s.SignerName)
		if !isSub(sn, name) || slices.Contains(signers, sn) {
			continue
		}
		signers = append(signers, sn)
	}
	slices.SortFunc(signers, func(a, b string) int { return dns.CountLabel(b) - dns.CountLabel(a) })
	if len(signers) > maxHints {
		signers = signers[:maxHints]
	}
	if len(signers) == 0 {
		signers = []string{name}
	}
	var first Result
	for i, s := range signers {
		z := v.zoneOf(ctx, s)
		r := z.res
		if z.kind == kindZone {
			r = check(z)
		}
		if r.State == Secure || r.State == Insecure {
			return r
		}
		if i == 0 {
			first = r
		}
	}
	return first
}
