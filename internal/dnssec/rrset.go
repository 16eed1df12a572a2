package dnssec

import (
	"context"
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
			if err := s.Verify(k, rrs); err != nil {
				worse(dns.ExtendedErrorCodeDNSBogus, "RRSIG over "+what+" by key "+itoa(int(s.KeyTag))+" does not verify: "+err.Error())
				continue
			}
			ttl := time.Duration(min(h.Ttl, s.OrigTtl)) * time.Second
			if left := time.Duration(int32(s.Expiration-uint32(now.Unix()))) * time.Second; left < ttl {
				ttl = left
			}
			return sigResult{
				Result:   Result{State: Secure, Zone: z.zone, Reason: what + " signed by " + z.zone},
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
	z := v.zoneOf(ctx, zname)
	if z.kind != kindZone {
		return z.res
	}
	now := v.now()
	r, _ := v.verifyRRset(z, rrs, sigs, now)
	if r.State != Secure || !r.wildcard {
		return r.Result
	}
	return v.provesWildcard(z, owner, r.labels, authority, now, r.Result)
}
