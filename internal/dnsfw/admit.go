package dnsfw

import (
	"errors"
	"net/netip"
	"strconv"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// The DNS firewall makes two kinds of decision about a client's query, and
// each is made by one function here, whichever path serves the query:
//
//   - admit: may the query be answered at all, and how is it refused if
//     not (the source, the rate limit, the policy's decision, the record
//     type). It runs once per query, before anything is looked up or sent
//     upstream. The fast path (fast.go) admits the queries it reads; when
//     it cannot answer one itself it hands the admission to the ordinary
//     path (handler.go), which carries on from it rather than deciding
//     again.
//   - release: may an answer for an admitted query go to this client as it
//     is, or does it need something first (a CNAME chain the client may not
//     follow, tls.verify, a publication). The ordinary path calls it on each
//     inspected answer and does what it asks; the fast path calls it on the
//     reply kept with a cache entry, and hands the query over for anything
//     but "as it is".
//
// A check added to either function applies to both paths at once.
//
// A third decision, admitUpstream, is made only where a client's query
// leaves for the upstream (resolve, on a cache miss): the fast path never
// sends a query upstream, and an answer from the cache carries nothing
// out, so it costs nothing.

// refusal is how admit refused a query, if it did.
type refusal uint8

const (
	admitted      refusal = iota // answer it (in audit mode, what enforce would refuse too)
	refusedLoad                  // REFUSED: over dns.rate_limit; counted, not audited
	refusedPolicy                // dns.deny_with: no rule allows the name for this client
	refusedQType                 // REFUSED: the record type is not in dns.qtypes
)

// admission is admit's verdict on one query.
type admission struct {
	// pol is the policy the query was admitted under; it is answered
	// under the same one, even if a reload swaps it meanwhile.
	pol *policy.Policy
	// at is when the query was admitted.
	at time.Time
	// dec is the decision the audit line records: the policy's, or the
	// refusal the firewall made on top of it.
	dec policy.Decision
	// allow is the policy's decision when a rule allows the name for the
	// client (in audit mode too): its Rule and Group are what the answer's
	// addresses are learned for. Rule is nil otherwise.
	allow   policy.Decision
	refusal refusal
	// zone is the forward zone the name is in (dns.forward), nil if
	// none: the query goes to the zone's servers, and its answer is
	// relayed without inspection and never learned.
	zone *policy.ForwardZone
	note string // the audit line's dns_reason
	// quiet refusals are counted but not audited: load shedding must not
	// turn a flood into a flood of log lines.
	quiet bool
}

// admit decides whether the query for name (any case, with or without the
// trailing dot) and qtype from src, received at now, may be answered under
// p, and writes the verdict to a. It does not allocate.
func (f *Firewall) admit(a *admission, p *policy.Policy, src netip.Addr, name string, qtype uint16, now time.Time) {
	*a = admission{pol: p, at: now}

	// The source: checks of where a query comes from go here, first, so
	// that nothing else is spent on a source fqdngate does not serve.

	// Load: a client over dns.rate_limit is refused whatever it asks.
	if !f.limiter.allow(src, p.DNS.RateLimit, p.DNS.RateBurst, now) {
		a.dec = policy.Decision{Action: policy.Fail, Reason: policy.ReasonBusy}
		a.refusal, a.note, a.quiet = refusedLoad, noteRateLimit, true
		f.metrics.refused.WithLabelValues("rate_limit").Inc()
		return
	}

	// A forward zone's names are the zone's servers' to answer, without
	// rules: internal names (a cluster's, a directory's) that are no
	// egress, so nothing in their answers is learned. Zone transfers are
	// no stub's query, and one reply could not carry them.
	if z := p.Forwarded(name); z != nil {
		a.zone = z
		a.dec = policy.Decision{Action: policy.Allow, Reason: policy.ReasonForwarded, Pattern: string(z.Zone)}
		if qtype == dns.TypeAXFR || qtype == dns.TypeIXFR {
			a.note = noteTransfer
			a.dec = refuse(a.dec, policy.ReasonQType, policy.Deny)
			a.refusal = refusedQType
		}
		return
	}

	// The policy, before any cache is looked at: a cached answer never
	// outlives the rule that allowed it, and a denied name is never sent
	// upstream.
	a.dec = p.Decide(policy.Query{Source: src, Name: name, AnyPort: true})
	switch a.dec.Action {
	case policy.Deny:
		a.refusal = refusedPolicy
		return
	case policy.Allow:
		a.allow = a.dec
	}

	// The record type, for names a rule allows (and, in audit mode or for
	// a group that observes, for those it would not).
	if !typeAllowed(p, qtype) {
		a.note = noteQType
		if p.Enforced(&policy.Query{Source: src}) {
			a.dec = refuse(a.dec, policy.ReasonQType, policy.Deny)
			a.refusal = refusedQType
			return
		}
		a.dec = refuse(a.dec, policy.ReasonQType, policy.WouldDeny)
		a.dec.Observing = p.ObservedBy(&policy.Query{Source: src})
	}
}

// release is what an answer for an admitted query needs before it may go
// to the client; the zero value means "send it as it is".
type release struct {
	// cname is the first name of the answer's CNAME chain that the policy
	// does not allow this client (dns.inspect_cname), and cnameDec its
	// decision (Deny, or WouldDeny in audit mode).
	cname    string
	cnameDec policy.Decision
	// verify: the answer's addresses must pass tls.verify first.
	verify bool
	// publish: the answer's addresses must be published (again) first.
	publish bool
	// insecure: the allowing rule has dnssec: required and the answer is
	// not secure; refused (would-deny in audit mode).
	insecure bool
}

// release returns what an answer needs before it may go to src under p:
// chain holds the CNAME targets of the answer from the question name, in
// order; allow is the admission's allow; state the answer's DNSSEC
// verdict (bogus ones never get here: resolve refuses them). pub describes
// what was published for the answer before, if anything (nil: nothing
// known, so publish).
func (f *Firewall) release(p *policy.Policy, src netip.Addr, allow policy.Decision, chain []string, state validation, pub *publication, now time.Time) release {
	var r release
	r.insecure = !dnssecAllows(allow.Rule, state)
	if p.DNS.InspectCNAME {
		for _, name := range chain {
			d := p.Decide(policy.Query{Source: src, Name: name, AnyPort: true})
			if d.Action != policy.Allow {
				r.cname, r.cnameDec = name, d
				break
			}
		}
	}
	if allow.Rule == nil {
		return r
	}
	r.verify = f.mustVerify(allow.Rule)
	r.publish = pub == nil || !pub.holds(f, p, allow, now)
	return r
}

// publication is what release needs to know of an earlier publication of
// an answer's addresses: the reply kept with its cache entry (whose
// publications it records) and how many whole seconds its TTLs have run
// down since.
type publication struct {
	r   *ready
	age uint32
}

// holds reports whether the publisher still holds every address of the
// answer for allow's rule and group at least as long as an answer sent at
// now needs: published for them until then or within publishSlack of it,
// and nothing dropped early since.
func (pub *publication) holds(f *Firewall, p *policy.Policy, allow policy.Decision, now time.Time) bool {
	drops, ok := f.dropped()
	if !ok {
		return false
	}
	until, ok := pub.r.publishedUntil(allow.Rule.Name, allow.Group, drops)
	if !ok {
		return false
	}
	maxTTL := pub.r.maxTTL
	return !learnedExpiry(p, now, maxTTL-min(pub.age, maxTTL)).After(until.Add(publishSlack))
}

// errOverBudget is resolve's error for a query admitUpstream kept from the
// upstream.
var errOverBudget = errors.New("over dns.wildcard_budget")

// admitUpstream decides whether x, a client's admitted query for name (in
// lower case), may go to the upstream at now: a name allowed by a wildcard
// pattern is charged to the client's budget of new names under that
// pattern (dns.wildcard_budget), since the name of a query that reaches
// the upstream is how DNS tunnelling carries data out. A name the client
// sent in the window already is free. Over the budget it returns false in
// enforce mode; audit mode lets the query through and notes it.
func (f *Firewall) admitUpstream(x *exchange, name string, now time.Time) bool {
	a := &x.adm
	if a.pol == nil || a.pol.DNS.WildcardBudget <= 0 {
		return true // not a client's query (a refresh, the proxy's lookups), or no budget
	}
	pattern := a.allow.WildcardPattern()
	if pattern == "" || f.budgets.charge(x.src.Addr(), pattern, name, a.pol.DNS.WildcardBudget, now) {
		return true
	}
	f.metrics.budget.WithLabelValues(a.allow.Rule.Name).Inc()
	x.note = noteBudget + strconv.Itoa(a.pol.DNS.WildcardBudget) + " new names a minute under " + pattern
	if a.pol.Enforced(&policy.Query{Source: x.src.Addr()}) {
		x.dec = refuse(x.dec, policy.ReasonBudget, policy.Deny)
		return false
	}
	x.dec = refuse(x.dec, policy.ReasonBudget, policy.WouldDeny)
	x.dec.Observing = a.pol.ObservedBy(&policy.Query{Source: x.src.Addr()})
	return true
}
