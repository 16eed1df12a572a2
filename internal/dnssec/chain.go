package dnssec

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// nodeKind is what the walk learnt about one name.
type nodeKind int

const (
	kindZone     nodeKind = iota // a secure zone apex; keys validated
	kindNotCut                   // inside its parent's zone (or an empty non-terminal)
	kindAbsent                   // proven not to exist in its parent's zone
	kindInsecure                 // a proven unsigned (or unsupported) delegation at or above
	kindBogus                    // the chain is broken here
	kindUnknown                  // could not be fetched
)

type node struct {
	kind    nodeKind
	zone    string // kindZone: the apex; others: the zone that decided
	keys    []*dns.DNSKEY
	res     Result // verdict for kindInsecure, kindBogus, kindUnknown
	expires time.Time
}

// failTTL is how long a bogus or unreachable result is remembered, so a
// broken zone is not refetched on every query.
const failTTL = 30 * time.Second

// zoneOf walks from the closest trust anchor down to name and returns the
// node of the zone that holds name: a secure zone with its keys, or the
// insecure, bogus or unknown node that ended the walk.
func (v *Validator) zoneOf(ctx context.Context, name string) *node {
	anchor := v.anchors.closest(name)
	if anchor == "" {
		return &node{kind: kindUnknown, res: Result{State: Indeterminate, EDE: dns.ExtendedErrorCodeDNSSECIndeterminate, Reason: "no trust anchor covers " + name}}
	}
	cur := v.lookup(ctx, anchor, nil)
	if cur.kind != kindZone {
		return cur
	}
	below := ancestors(name)
	for i := len(below) - 1; i >= 0; i-- {
		c := below[i]
		if dns.CountLabel(c) <= dns.CountLabel(anchor) {
			continue
		}
		n := v.lookup(ctx, c, cur)
		switch n.kind {
		case kindZone:
			cur = n
		case kindNotCut:
		case kindAbsent:
			return cur
		default:
			return n
		}
	}
	return cur
}

// lookup returns the node of name, from the cache or fetched once for all
// concurrent callers. parent is the secure zone above name (nil for an
// anchor).
func (v *Validator) lookup(ctx context.Context, name string, parent *node) *node {
	now := v.now()
	if n := v.cache.get(name, now); n != nil {
		return n
	}
	ch := v.flight.DoChan(name, func() (any, error) {
		n := v.fetchNode(context.WithoutCancel(ctx), name, parent)
		v.cache.put(name, n, v.now())
		return n, nil
	})
	select {
	case r := <-ch:
		return r.Val.(*node)
	case <-ctx.Done():
		return &node{kind: kindUnknown, res: Result{State: Indeterminate, EDE: dns.ExtendedErrorCodeDNSSECIndeterminate, Reason: "fetching keys for " + name + ": " + ctx.Err().Error()}}
	}
}

func (v *Validator) fetchNode(ctx context.Context, name string, parent *node) *node {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	now := v.now()
	fail := func(kind nodeKind, st State, ede uint16, zone, reason string) *node {
		return &node{kind: kind, zone: zone, res: Result{State: st, EDE: ede, Zone: zone, Reason: reason}, expires: now.Add(failTTL)}
	}
	if parent == nil { // a trust anchor
		ds := v.anchors.ds[name]
		keys := v.anchors.keys[name]
		return v.fetchKeys(ctx, name, ds, keys, now, v.maxTTL)
	}

	resp, err := v.fetch(ctx, name, dns.TypeDS)
	if err != nil {
		return fail(kindUnknown, Indeterminate, dns.ExtendedErrorCodeNetworkError, parent.zone, "fetching DS "+name+": "+err.Error())
	}
	sets, sigs, bad := group(resp.Answer)
	if bad != "" {
		return fail(kindBogus, Bogus, dns.ExtendedErrorCodeDNSBogus, parent.zone, "DS response for "+name+": "+bad)
	}
	if ds := sets.m[rrKey{name, dns.TypeDS}]; len(ds) > 0 {
		r, ttl := v.verifyRRset(parent, ds, sigs[rrKey{name, dns.TypeDS}], now)
		if r.State != Secure {
			return fail(kindBogus, Bogus, r.EDE, parent.zone, "DS "+name+": "+r.Reason)
		}
		if r.wildcard {
			return fail(kindBogus, Bogus, dns.ExtendedErrorCodeDNSBogus, parent.zone, "DS "+name+" from a wildcard")
		}
		list := make([]*dns.DS, 0, len(ds))
		for _, rr := range ds {
			list = append(list, rr.(*dns.DS))
		}
		return v.fetchKeys(ctx, name, list, nil, now, ttl)
	}
	// A CNAME at name, signed by the parent, shows name is no zone cut
	// (a CNAME cannot sit beside NS).
	if cn := sets.m[rrKey{name, dns.TypeCNAME}]; len(cn) > 0 {
		r, ttl := v.verifyRRset(parent, cn, sigs[rrKey{name, dns.TypeCNAME}], now)
		if r.State != Secure || r.wildcard {
			return fail(kindBogus, Bogus, r.EDE, parent.zone, "CNAME "+name+" in the DS response: "+r.Reason)
		}
		return &node{kind: kindNotCut, zone: parent.zone, expires: now.Add(v.clampTTL(ttl, 0))}
	}
	// No DS: the parent must prove why.
	d := v.denyDS(parent, name, resp.Ns, now)
	d.expires = now.Add(v.clampTTL(negTTL(resp), 0))
	if d.kind == kindBogus || d.kind == kindUnknown {
		d.expires = now.Add(failTTL)
	}
	return d
}

// fetchKeys fetches the DNSKEY set of zone and accepts it when a key that
// a DS (or an anchored DNSKEY) vouches for signs it.
func (v *Validator) fetchKeys(ctx context.Context, zone string, ds []*dns.DS, anchored []*dns.DNSKEY, now time.Time, ttl time.Duration) *node {
	fail := func(st State, ede uint16, reason string) *node {
		kind := kindBogus
		if st == Indeterminate {
			kind = kindUnknown
		}
		return &node{kind: kind, zone: zone, res: Result{State: st, EDE: ede, Zone: zone, Reason: reason}, expires: now.Add(failTTL)}
	}
	// Which DS records can we use at all?
	var usable []*dns.DS
	strong := false
	for _, d := range ds {
		if supportedAlg(d.Algorithm) && supportedDigest(d.DigestType) {
			usable = append(usable, d)
			strong = strong || d.DigestType != dns.SHA1
		}
	}
	if strong {
		// RFC 4509 section 3: with SHA-256 (or stronger) DS records
		// present, SHA-1 ones are ignored, so a forged SHA-1 digest
		// cannot stand in for a failing strong one.
		usable = slices.DeleteFunc(usable, func(d *dns.DS) bool { return d.DigestType == dns.SHA1 })
	}
	if len(usable) == 0 && len(anchored) == 0 {
		// RFC 4035 section 5.2: a DS RRset of only unsupported
		// algorithms or digests makes the zone insecure. The EDE says
		// which, for information (RFC 8914 codes 1 and 2).
		ede := uint16(dns.ExtendedErrorCodeUnsupportedDSDigestType)
		for _, d := range ds {
			if !supportedAlg(d.Algorithm) {
				ede = dns.ExtendedErrorCodeUnsupportedDNSKEYAlgorithm
			}
		}
		return &node{kind: kindInsecure, zone: zone, res: Result{State: Insecure, EDE: ede, Zone: zone, Reason: "DS of " + zone + " uses only unsupported algorithms or digests"}, expires: now.Add(v.clampTTL(ttl, 0))}
	}
	resp, err := v.fetch(ctx, zone, dns.TypeDNSKEY)
	if err != nil {
		return fail(Indeterminate, dns.ExtendedErrorCodeNetworkError, "fetching DNSKEY "+zone+": "+err.Error())
	}
	sets, sigs, bad := group(resp.Answer)
	if bad != "" {
		return fail(Bogus, dns.ExtendedErrorCodeDNSBogus, "DNSKEY response for "+zone+": "+bad)
	}
	rrs := sets.m[rrKey{zone, dns.TypeDNSKEY}]
	if len(rrs) == 0 {
		return fail(Bogus, dns.ExtendedErrorCodeDNSKEYMissing, "no DNSKEY for "+zone+" although its DS is signed")
	}
	var all, trusted []*dns.DNSKEY
	for _, rr := range rrs {
		k := rr.(*dns.DNSKEY)
		all = append(all, k)
		if k.Flags&dns.ZONE == 0 || k.Protocol != 3 || k.Flags&dns.REVOKE != 0 {
			continue
		}
		if vouched(k, usable, anchored) {
			trusted = append(trusted, k)
		}
	}
	if len(trusted) == 0 {
		return fail(Bogus, dns.ExtendedErrorCodeDNSKEYMissing, "no DNSKEY of "+zone+" matches its DS")
	}
	tz := &node{kind: kindZone, zone: zone, keys: trusted}
	r, sigTTL := v.verifyRRset(tz, rrs, sigs[rrKey{zone, dns.TypeDNSKEY}], now)
	if r.State != Secure {
		return fail(Bogus, r.EDE, "DNSKEY "+zone+": "+r.Reason)
	}
	var keys []*dns.DNSKEY
	for _, k := range all {
		if k.Flags&dns.ZONE != 0 && k.Protocol == 3 && k.Flags&dns.REVOKE == 0 {
			keys = append(keys, k)
		}
	}
	return &node{kind: kindZone, zone: zone, keys: keys, expires: now.Add(v.clampTTL(ttl, sigTTL))}
}

func vouched(k *dns.DNSKEY, ds []*dns.DS, anchored []*dns.DNSKEY) bool {
	for _, a := range anchored {
		if a.Algorithm == k.Algorithm && a.PublicKey == k.PublicKey && a.Flags&^dns.SEP == k.Flags&^dns.SEP {
			return true
		}
	}
	tag := k.KeyTag()
	for _, d := range ds {
		if d.KeyTag != tag || d.Algorithm != k.Algorithm {
			continue
		}
		h := k.ToDS(d.DigestType)
		if h != nil && strings.EqualFold(h.Digest, d.Digest) {
			return true
		}
	}
	return false
}

func supportedAlg(a uint8) bool {
	switch a {
	case dns.RSASHA256, dns.RSASHA512, dns.ECDSAP256SHA256, dns.ECDSAP384SHA384, dns.ED25519:
		return true
	}
	return false
}

func supportedDigest(d uint8) bool {
	switch d {
	case dns.SHA1, dns.SHA256, dns.SHA384: // SHA-1 digests: RFC 8624 section 3.3, MUST for validation
		return true
	}
	return false
}

// fetch asks the upstream for name/type with DO and CD set: CD so that the
// upstream hands over bogus data for us to judge instead of a SERVFAIL.
func (v *Validator) fetch(ctx context.Context, name string, t uint16) (*dns.Msg, error) {
	q := new(dns.Msg)
	q.SetQuestion(name, t)
	q.RecursionDesired = true
	q.CheckingDisabled = true
	q.SetEdns0(4096, true)
	resp, err := v.ex.Exchange(ctx, q)
	if err != nil {
		return nil, err
	}
	if resp.Rcode != dns.RcodeSuccess && resp.Rcode != dns.RcodeNameError {
		return nil, &rcodeError{resp.Rcode}
	}
	return resp, nil
}

type rcodeError struct{ rcode int }

func (e *rcodeError) Error() string { return "upstream answered " + dns.RcodeToString[e.rcode] }

// clampTTL returns the smaller of ttl and sig (when sig > 0), at most
// MaxTTL and at least one second.
func (v *Validator) clampTTL(ttl, sig time.Duration) time.Duration {
	if sig > 0 && sig < ttl {
		ttl = sig
	}
	if ttl > v.maxTTL {
		ttl = v.maxTTL
	}
	if ttl < time.Second {
		ttl = time.Second
	}
	return ttl
}

// negTTL is the negative-caching TTL of a response (RFC 2308): the SOA's
// TTL capped by its minimum, or a minute without an SOA.
func negTTL(m *dns.Msg) time.Duration {
	for _, rr := range m.Ns {
		if s, ok := rr.(*dns.SOA); ok {
			t := min(s.Hdr.Ttl, s.Minttl)
			return time.Duration(t) * time.Second
		}
	}
	return time.Minute
}
