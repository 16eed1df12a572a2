package dnsfw

import (
	"context"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/dnscache"
	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/dnssec"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// DNSSEC validation (dns.dnssec: validate). Where each part lives:
//
//   - resolve validates every answer it gets from the upstreams (asked
//     with DO and CD, whatever the client sent) before the answer is
//     cached or returned, and keeps the verdict with the cache entry. A
//     bogus or indeterminate answer is not an answer: resolve returns a
//     *dnssecError instead, as it does for an upstream that failed, so no
//     caller (a client's query, a refresh, the proxy's LookupNetIP) can
//     learn, cache or release it.
//   - release (admit.go) decides whether a secure or insecure answer may
//     go to a client: a rule with dnssec: required takes only secure ones.
//     The fast path and refreshes ask the same function (dnssecAllows).
//
// The client's CD bit changes none of this: it only comes back in the
// reply's header.

// validation is an answer's DNSSEC state, as the cache entry, the audit
// line and the learned entries keep it. The zero value is "not validated".
type validation uint8

const (
	validationOff validation = iota // not validated: dns.dnssec off, forward zones, failures
	validationSecure
	validationInsecure
	validationBogus
	validationIndeterminate
)

func (v validation) String() string {
	switch v {
	case validationSecure:
		return "secure"
	case validationInsecure:
		return "insecure"
	case validationBogus:
		return "bogus"
	case validationIndeterminate:
		return "indeterminate"
	}
	return "off"
}

func validationOf(s dnssec.State) validation {
	switch s {
	case dnssec.Secure:
		return validationSecure
	case dnssec.Insecure:
		return validationInsecure
	case dnssec.Bogus:
		return validationBogus
	}
	return validationIndeterminate
}

// dnssecAllows reports whether an answer in state may be released for
// rule: a rule with dnssec: required takes only secure answers. It is the
// one place that says so.
func dnssecAllows(rule *policy.Rule, state validation) bool {
	return rule == nil || !rule.DNSSECRequired || state == validationSecure
}

// requiringRule returns a rule of p that names name and has dnssec:
// required, or nil.
func requiringRule(p *policy.Policy, name dnsname.Name) *policy.Rule {
	for _, r := range p.Rules {
		if !r.DNSSECRequired {
			continue
		}
		for _, pat := range r.Names {
			if pat.Match(name) {
				return r
			}
		}
	}
	return nil
}

// dnssecError is resolve's error for an answer that failed validation.
type dnssecError struct{ res dnssec.Result }

func (e *dnssecError) Error() string { return "DNSSEC " + e.res.String() }

// learnedState is the DNSSEC verdict learned entries of x's answer carry
// (learn.Entry.DNSSEC): empty when the answer was not validated.
func (x *exchange) learnedState() string {
	if !x.validating {
		return ""
	}
	return x.dnssec.String()
}

func isDNSSECError(err error) bool {
	_, ok := err.(*dnssecError)
	return ok
}

// validating reports whether answers to a query admitted with zone (nil:
// not a forward zone's name) are validated under p: all but forward
// zones', when dns.dnssec is validate.
func validating(p *policy.Policy, zone *policy.ForwardZone) bool {
	return p.DNS.DNSSEC == policy.DNSSECValidate && zone == nil
}

// cacheKey is the cache key of a question for name (in lower case) asked
// with the client's DO and CD bits. When validating, the upstream is
// always asked with CD, so the client's CD does not split the cache; DO
// does, because the reply kept ready for the fast path holds RRSIGs for
// DO clients only.
func cacheKey(validate bool, name string, qtype uint16, do, cd bool) dnscache.Key {
	return dnscache.MakeKey(name, qtype, do, cd || validate)
}

// A cache entry's tag holds the answer's verdict in its low four bits and,
// above them, the informational EDE an insecure answer carries (tagInfo).
const (
	tagInfoAlg    = 1 << 4 // EDE 1, Unsupported DNSKEY Algorithm
	tagInfoDigest = 2 << 4 // EDE 2, Unsupported DS Digest Type
)

// entryTag is the cache tag of an answer in state with info, the
// validator's EDE for an insecure answer (0: none).
func entryTag(state validation, info uint16) uint8 {
	t := uint8(state)
	switch info {
	case dns.ExtendedErrorCodeUnsupportedDNSKEYAlgorithm:
		t |= tagInfoAlg
	case dns.ExtendedErrorCodeUnsupportedDSDigestType:
		t |= tagInfoDigest
	}
	return t
}

// tagState and tagInfo read entryTag's parts back.
func tagState(tag uint8) validation { return validation(tag & 0x0f) }

func tagInfo(tag uint8) uint16 {
	switch tag &^ 0x0f {
	case tagInfoAlg:
		return dns.ExtendedErrorCodeUnsupportedDNSKEYAlgorithm
	case tagInfoDigest:
		return dns.ExtendedErrorCodeUnsupportedDSDigestType
	}
	return 0
}

// usableEntry reports whether a cache entry stored with tag may answer
// while validate is (or is not) in force: validated answers only when
// validating, unvalidated ones only when not, so a reload that turns
// validation on never serves an answer that was not validated.
func usableEntry(validate bool, tag uint8) bool {
	s := tagState(tag)
	if validate {
		return s == validationSecure || s == validationInsecure
	}
	return s == validationOff
}

// validators holds the Validator for the trust anchors in force; its key
// cache survives reloads that keep the anchors.
type validators struct {
	mu  sync.Mutex // guards creating one
	cur atomic.Pointer[validatorFor]
}

type validatorFor struct {
	anchors *dnssec.Anchors // the policy's (nil: built-in)
	text    string          // anchorText of anchors
	v       *dnssec.Validator
}

// validator returns the Validator for p's trust anchors.
func (f *Firewall) validator(p *policy.Policy) (*dnssec.Validator, error) {
	if c := f.vals.cur.Load(); c != nil && c.anchors == p.DNS.Anchors {
		return c.v, nil
	}
	f.vals.mu.Lock()
	defer f.vals.mu.Unlock()
	c := f.vals.cur.Load()
	if c != nil && c.anchors == p.DNS.Anchors {
		return c.v, nil
	}
	text := anchorText(p.DNS.Anchors)
	if c != nil && c.text == text {
		// A reload read the same anchors again: keep the keys learnt.
		f.vals.cur.Store(&validatorFor{anchors: p.DNS.Anchors, text: text, v: c.v})
		return c.v, nil
	}
	v, err := dnssec.New(dnssec.Config{
		Anchors: p.DNS.Anchors,
		Exchanger: dnssec.ExchangerFunc(func(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
			r, _, err := f.exchanger.Exchange(ctx, q)
			return r, err
		}),
		Now:    f.now,
		MaxTTL: p.DNS.MaxTTL,
	})
	if err != nil {
		return nil, err
	}
	f.vals.cur.Store(&validatorFor{anchors: p.DNS.Anchors, text: text, v: v})
	return v, nil
}

// anchorText is a canonical form of a, to tell whether two loads read the
// same anchors.
func anchorText(a *dnssec.Anchors) string {
	if a == nil {
		return "built-in"
	}
	lines := a.Records()
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// validate judges m, the upstream's answer to up, for x, and counts the
// verdict. A secure answer gets AD and TTLs no longer than its signatures
// allow; any other loses AD, whatever the upstream said.
func (f *Firewall) validate(ctx context.Context, p *policy.Policy, up, m *dns.Msg, x *exchange) error {
	v, err := f.validator(p)
	if err != nil {
		return err
	}
	res := v.Validate(ctx, up, m)
	x.dnssec = validationOf(res.State)
	if res.State == dnssec.Insecure {
		x.dnssecInfo = res.EDE
	}
	f.metrics.dnssec.WithLabelValues(x.dnssec.String()).Inc()
	m.AuthenticatedData = res.State == dnssec.Secure
	switch res.State {
	case dnssec.Secure:
		capTTLs(m, res.MaxTTL)
	case dnssec.Insecure:
	default:
		return &dnssecError{res: res}
	}
	return nil
}

// capTTLs lowers every TTL of m's answer and authority sections to max
// (RFC 4035 section 5.3.3: what the signatures vouch for), so the cache,
// the clients and the learned set keep it no longer.
func capTTLs(m *dns.Msg, max uint32) {
	for _, sec := range [][]dns.RR{m.Answer, m.Ns} {
		for _, rr := range sec {
			if h := rr.Header(); h.Ttl > max {
				h.Ttl = max
			}
		}
	}
}

// stripDNSSEC removes RRSIG, NSEC and NSEC3 records that qtype did not ask
// for from m, for a client that did not set DO (RFC 4035 section 3.2.1).
func stripDNSSEC(m *dns.Msg, qtype uint16) {
	strip := func(rrs []dns.RR) []dns.RR {
		out := rrs[:0]
		for _, rr := range rrs {
			switch t := rr.Header().Rrtype; t {
			case dns.TypeRRSIG, dns.TypeNSEC, dns.TypeNSEC3:
				if t != qtype {
					continue
				}
			}
			out = append(out, rr)
		}
		clear(rrs[len(out):])
		return out
	}
	m.Answer, m.Ns = strip(m.Answer), strip(m.Ns)
}
