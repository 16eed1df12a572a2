package dnssec

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sync/singleflight"
)

// State is a validation verdict (RFC 4033 section 5).
type State int

const (
	// Indeterminate: nothing could be proven either way (no anchor covers
	// the name, or the records needed could not be fetched).
	Indeterminate State = iota
	// Insecure: a validated proof shows the name lies below an unsigned
	// delegation, or one whose algorithms this validator does not support.
	Insecure
	// Secure: every RRset of the answer, or the proof of non-existence,
	// is signed by keys chained to a trust anchor.
	Secure
	// Bogus: the chain should hold and does not: bad, missing, expired or
	// not-yet-valid signatures, a DS matching no key, a broken denial proof.
	Bogus
)

func (s State) String() string {
	switch s {
	case Secure:
		return "secure"
	case Insecure:
		return "insecure"
	case Bogus:
		return "bogus"
	default:
		return "indeterminate"
	}
}

// Result is the verdict on one answer and why.
type Result struct {
	State  State
	Reason string // what decided it, for the audit line and explain
	// EDE is the RFC 8914 Extended DNS Error code that says why the
	// answer is bogus or indeterminate (dns.ExtendedErrorCode*). For an
	// insecure answer it is, for information, 1 (Unsupported DNSKEY
	// Algorithm) or 2 (Unsupported DS Digest Type) when the zone is
	// insecure because its DS records name only what this validator does
	// not support; zero otherwise, and when secure.
	EDE uint16
	// Zone is the zone whose keys (or proven lack of them) decided the
	// verdict of the last RRset or proof examined.
	Zone string
	// MaxTTL, for a secure answer, is the longest TTL in seconds its
	// records may be cached or acted on: the smallest original TTL of the
	// RRSIGs relied on, and the time left to their expiration (RFC 4035
	// section 5.3.3; the TTLs in the message are not signed, and an
	// inflated one must not keep an address open). Zero for other states.
	MaxTTL uint32
}

func (r Result) String() string {
	return fmt.Sprintf("%s (%s)", r.State, r.Reason)
}

// Exchanger sends a query and returns the response. The resolver satisfies
// it.
type Exchanger interface {
	Exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error)
}

// ExchangerFunc adapts a function to an Exchanger, e.g. the resolver's
// three-value Exchange:
//
//	dnssec.ExchangerFunc(func(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
//		r, _, err := res.Exchange(ctx, q)
//		return r, err
//	})
type ExchangerFunc func(ctx context.Context, q *dns.Msg) (*dns.Msg, error)

// Exchange calls f.
func (f ExchangerFunc) Exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) { return f(ctx, q) }

// Config configures a Validator.
type Config struct {
	// Anchors are the trust anchors. If nil, DefaultAnchors().
	Anchors *Anchors
	// Exchanger fetches DS and DNSKEY records. Required.
	Exchanger Exchanger
	// Now is the clock used for RRSIG validity windows and cache expiry.
	// If nil, time.Now.
	Now func() time.Time
	// MaxEntries bounds the key cache (zones and zone cuts). If zero, 4096.
	// The cache of verified signatures holds four times as many.
	MaxEntries int
	// MaxTTL caps how long a validated key set or cut is cached. If zero,
	// one hour.
	MaxTTL time.Duration
}

// Validator validates answers. It is safe for concurrent use.
type Validator struct {
	anchors *Anchors
	ex      Exchanger
	now     func() time.Time
	maxTTL  time.Duration
	cache   *cache
	sigs    *sigCache
	flight  singleflight.Group
}

// New returns a Validator.
func New(cfg Config) (*Validator, error) {
	if cfg.Exchanger == nil {
		return nil, errors.New("dnssec: Config.Exchanger is nil; pass the resolver that fetches DS and DNSKEY records")
	}
	v := &Validator{anchors: cfg.Anchors, ex: cfg.Exchanger, now: cfg.Now, maxTTL: cfg.MaxTTL}
	if v.anchors == nil {
		v.anchors = DefaultAnchors()
	}
	if v.now == nil {
		v.now = time.Now
	}
	if v.maxTTL <= 0 {
		v.maxTTL = time.Hour
	}
	max := cfg.MaxEntries
	if max <= 0 {
		max = 4096
	}
	v.cache = newCache(max)
	v.sigs = newSigCache(4 * max)
	return v, nil
}

// maxHops bounds a CNAME chain; maxRRsets bounds the RRsets of one answer
// validated, so a crafted answer cannot make us verify without end.
const (
	maxHops   = 16
	maxRRsets = 32
)

// Validate judges answer, the response to question (whose first question
// is the one asked). Each RRset of the answer section is validated in its
// own zone; when the answer does not end in the asked type the last name
// of the CNAME chain needs a proof of non-existence (NXDOMAIN or NODATA).
func (v *Validator) Validate(ctx context.Context, question, answer *dns.Msg) Result {
	if question == nil || len(question.Question) != 1 {
		return Result{State: Indeterminate, Reason: "no question to validate against", EDE: dns.ExtendedErrorCodeDNSSECIndeterminate}
	}
	if answer == nil {
		return Result{State: Indeterminate, Reason: "no answer", EDE: dns.ExtendedErrorCodeDNSSECIndeterminate}
	}
	if answer.Rcode != dns.RcodeSuccess && answer.Rcode != dns.RcodeNameError {
		return Result{State: Indeterminate, Reason: "answer has rcode " + dns.RcodeToString[answer.Rcode] + "; nothing to validate", EDE: dns.ExtendedErrorCodeDNSSECIndeterminate}
	}
	q := question.Question[0]
	if q.Qclass != dns.ClassINET || q.Qtype == dns.TypeANY || q.Qtype == dns.TypeRRSIG {
		return Result{State: Indeterminate, Reason: "only class IN questions for one record type are validated", EDE: dns.ExtendedErrorCodeDNSSECIndeterminate}
	}

	sets, sigs, err := group(answer.Answer)
	if err != "" {
		return bogus(dns.ExtendedErrorCodeDNSBogus, "", err)
	}
	if len(sets.order) > maxRRsets {
		return bogus(dns.ExtendedErrorCodeDNSBogus, "", fmt.Sprintf("answer has %d RRsets, more than %d", len(sets.order), maxRRsets))
	}
	r := v.validate(ctx, q, answer, sets, sigs)
	if r.State != Secure {
		r.MaxTTL = 0
	}
	return r
}

// validate judges every RRset of the answer, then the chain. RRSIGs with
// no RRset of their own are ignored; an RRset with no RRSIG is judged by
// its zone (bogus if signed, insecure if not).
func (v *Validator) validate(ctx context.Context, q dns.Question, answer *dns.Msg, sets rrsets, sigs map[rrKey][]*dns.RRSIG) Result {
	qname := dns.CanonicalName(q.Name)
	acc := Result{State: Secure, MaxTTL: math.MaxUint32}
	for _, k := range sets.order {
		if k.rtype == dns.TypeCNAME && len(sigs[k]) == 0 && synthesized(sets, sets.m[k]) {
			continue // vouched for by its DNAME, validated as its own RRset
		}
		r := v.validateRRset(ctx, sets.m[k], sigs[k], answer.Ns)
		acc = weakest(acc, r)
		if acc.State == Bogus || acc.State == Indeterminate {
			return acc
		}
	}

	// Follow the chain from the question to its end.
	name := qname
	for hop := 0; ; hop++ {
		if hop > maxHops {
			return bogus(dns.ExtendedErrorCodeDNSBogus, "", "CNAME chain longer than 16")
		}
		if _, ok := sets.m[rrKey{name, q.Qtype}]; ok {
			if answer.Rcode != dns.RcodeSuccess {
				return bogus(dns.ExtendedErrorCodeDNSBogus, "", "NXDOMAIN with the answer in it")
			}
			return acc
		}
		if q.Qtype == dns.TypeCNAME {
			break
		}
		c, ok := sets.m[rrKey{name, dns.TypeCNAME}]
		if !ok {
			break
		}
		if len(c) != 1 {
			return bogus(dns.ExtendedErrorCodeDNSBogus, "", "CNAME RRset with more than one record at "+name)
		}
		name = dns.CanonicalName(c[0].(*dns.CNAME).Target)
	}
	return weakest(acc, v.validateDenial(ctx, name, q.Qtype, answer.Rcode, answer.Ns))
}

// synthesized reports whether an unsigned CNAME RRset is exactly what a
// DNAME RRset of the same answer synthesizes (RFC 6672 section 5.3.1):
// one record, owner below the DNAME owner, target the owner with the DNAME
// owner replaced by the DNAME target.
func synthesized(sets rrsets, cn []dns.RR) bool {
	if len(cn) != 1 {
		return false
	}
	owner := dns.CanonicalName(cn[0].Header().Name)
	target := dns.CanonicalName(cn[0].(*dns.CNAME).Target)
	for _, a := range ancestors(owner)[1:] {
		d := sets.m[rrKey{a, dns.TypeDNAME}]
		if len(d) != 1 {
			continue
		}
		prefix := owner[:len(owner)-len(a)]
		if a == "." {
			prefix = owner
		}
		to := dns.CanonicalName(d[0].(*dns.DNAME).Target)
		want := prefix + to
		if to == "." {
			want = prefix
		}
		return target == want
	}
	return false
}

// weakest combines verdicts: bogus beats indeterminate beats insecure
// beats secure.
func weakest(a, b Result) Result {
	rank := func(s State) int {
		switch s {
		case Secure:
			return 0
		case Insecure:
			return 1
		case Indeterminate:
			return 2
		default:
			return 3
		}
	}
	if a.State == Secure && b.State == Secure {
		b.MaxTTL = min(a.MaxTTL, b.MaxTTL)
		return b
	}
	if rank(b.State) > rank(a.State) {
		return b
	}
	return a
}

func bogus(ede uint16, zone, reason string) Result {
	return Result{State: Bogus, EDE: ede, Zone: zone, Reason: reason}
}

type rrKey struct {
	name  string
	rtype uint16
}

// rrsets keeps the RRsets of a section in the order they first appear.
type rrsets struct {
	m     map[rrKey][]dns.RR
	order []rrKey
}

// group splits a section into RRsets and the RRSIGs covering each. It
// refuses classes other than IN.
func group(rrs []dns.RR) (rrsets, map[rrKey][]*dns.RRSIG, string) {
	sets := rrsets{m: map[rrKey][]dns.RR{}}
	sigs := map[rrKey][]*dns.RRSIG{}
	for _, rr := range rrs {
		h := rr.Header()
		if h.Class != dns.ClassINET {
			return sets, nil, "record of class " + dns.ClassToString[h.Class] + " in the answer"
		}
		name := dns.CanonicalName(h.Name)
		if s, ok := rr.(*dns.RRSIG); ok {
			k := rrKey{name, s.TypeCovered}
			sigs[k] = append(sigs[k], s)
			continue
		}
		if h.Rrtype == dns.TypeOPT {
			return sets, nil, "OPT record in a data section"
		}
		k := rrKey{name, h.Rrtype}
		if _, ok := sets.m[k]; !ok {
			sets.order = append(sets.order, k)
		}
		sets.m[k] = append(sets.m[k], rr)
	}
	return sets, sigs, ""
}
