package dnsfw

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
	"weak"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// refreshParallel bounds the names RunRefresh re-resolves at once.
const refreshParallel = 16

// RunRefresh keeps the addresses of every rule with refresh learned even
// when no client asks, the way cloud firewalls' "FQDN objects" do, so a
// host whose application caches DNS for hours keeps working. Each exact
// name of such a rule (Rule.ExactNames) is resolved, A and AAAA, at once
// when RunRefresh starts, so the kernel has its addresses before any client
// asks, and then again after min(refresh, the answer's TTL raised to
// dns.min_ttl), or min(refresh, dns.min_ttl) after a failure, counted
// from when the resolution started.
//
// A refresh takes the path of a client's query, without the cache for the
// query itself (the answer then refreshes the cache): CNAME chain and
// rebinding inspection, tls.verify through Config.Verify, and Publish, for
// each source group in the rule's from (for every source when it has
// none), with the expiry a client's answer would give. Each resolution is
// one audit line with no source, transport refresh.
//
// The policy is read every tick (a second): names of rules added, removed
// or changed by a reload are resolved, dropped or resolved afresh within
// one. RunRefresh returns nil when ctx is done; it belongs to the daemon's
// errgroup.
func (f *Firewall) RunRefresh(ctx context.Context) error {
	r := &refresher{f: f, targets: make(map[refreshKey]*refreshTarget), sem: make(chan struct{}, refreshParallel)}
	defer r.wg.Wait()
	t := time.NewTicker(f.refreshTick)
	defer t.Stop()
	for {
		r.tick(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// refresher is RunRefresh's state. Resolutions run in goroutines of their
// own, so a slow upstream never holds up the tick that reads the policy.
type refresher struct {
	f *Firewall
	// pol is the policy targets were built from, compared with the one
	// in force at each tick. Weak: a reload's old policy (rules, index
	// and all) must not stay alive until the next tick because of it.
	pol     weak.Pointer[policy.Policy]
	targets map[refreshKey]*refreshTarget
	sem     chan struct{} // bounds resolutions in progress
	wg      sync.WaitGroup

	mu sync.Mutex // guards the due and running fields of targets
}

type refreshKey struct {
	rule string
	name dnsname.Name
}

type refreshTarget struct {
	rule    *policy.Rule
	sig     string // what of the rule a refresh depends on; a change resolves afresh
	due     time.Time
	running bool
}

// tick starts resolving the names that are due, as many as the bound
// allows; the rest wait for the next tick.
func (r *refresher) tick(ctx context.Context) {
	p := r.f.policy()
	if p == nil || ctx.Err() != nil {
		return
	}
	if r.f.refreshLeader != nil && !r.f.refreshLeader() {
		// Another gateway of the fleet refreshes; its addresses arrive
		// through the fleet. Targets due meanwhile resolve at once when
		// this one takes over.
		return
	}
	if weak.Make(p) != r.pol {
		r.sync(p)
	}
	now := r.f.now()
	for k, t := range r.targets {
		r.mu.Lock()
		start := !t.running && !now.Before(t.due)
		t.running = t.running || start
		r.mu.Unlock()
		if !start {
			continue
		}
		select {
		case r.sem <- struct{}{}:
		default:
			r.mu.Lock()
			t.running = false
			r.mu.Unlock()
			return
		}
		r.wg.Go(func() {
			defer func() { <-r.sem }()
			next := r.f.refreshName(ctx, p, t.rule, k.name)
			// Counted from when the resolution started, not from
			// when it ended: the answer's TTL began to run no
			// earlier than the question, and the schedule does
			// not slip by each resolution's duration (nor, under
			// a test's clock, by when a goroutine got to run).
			r.mu.Lock()
			t.due, t.running = now.Add(next), false
			r.mu.Unlock()
		})
	}
}

// sync makes the targets those of p: new names and names of changed rules
// are due now, names no rule refreshes any more are forgotten.
func (r *refresher) sync(p *policy.Policy) {
	now := r.f.now()
	next := make(map[refreshKey]*refreshTarget)
	for _, rule := range p.Rules {
		if rule.Refresh <= 0 {
			continue
		}
		sig := refreshSig(rule)
		for _, n := range rule.ExactNames() {
			k := refreshKey{rule.Name, n}
			t, ok := r.targets[k]
			if !ok || t.sig != sig {
				// A resolution of the old target still running
				// finishes on its own; this one starts now.
				t = &refreshTarget{rule: rule, sig: sig, due: now}
			}
			// Read by the goroutines resolving, so replaced rather
			// than written: an unchanged rule keeps its target.
			next[k] = t
		}
	}
	r.targets, r.pol = next, weak.Make(p)
}

func refreshSig(r *policy.Rule) string {
	s := fmt.Sprint(r.Refresh, r.From, r.Ports)
	if r.TLS != nil {
		s += fmt.Sprint(*r.TLS)
	}
	return s
}

// refreshName resolves name's A and AAAA records for rule and returns when
// to do it again.
func (f *Firewall) refreshName(ctx context.Context, p *policy.Policy, rule *policy.Rule, name dnsname.Name) time.Duration {
	fqdn := dns.Fqdn(string(name))
	aaaa := make(chan time.Duration, 1)
	go func() { aaaa <- f.refreshQuery(ctx, p, rule, fqdn, dns.TypeAAAA) }()
	d := f.refreshQuery(ctx, p, rule, fqdn, dns.TypeA)
	return min(d, <-aaaa)
}

// refreshQuery resolves one name and type for rule, publishes what it
// learned, audits it, and returns when to ask again.
func (f *Firewall) refreshQuery(ctx context.Context, p *policy.Policy, rule *policy.Rule, fqdn string, qtype uint16) time.Duration {
	x := getExchange()
	defer putExchange(x)
	x.start = f.now()
	x.refresh = true
	x.decided = true
	x.dec = policy.Decision{Action: policy.Allow, Reason: policy.ReasonMatched, Rule: rule, Pattern: strings.TrimSuffix(fqdn, ".")}
	x.allow = x.dec
	req := new(dns.Msg).SetQuestion(fqdn, qtype)

	rcode, groups := f.refreshAnswer(ctx, p, req, x)
	f.record(ctx, req, x, rcode, groups...)

	retry := min(rule.Refresh, p.DNS.MinTTL)
	switch {
	case !x.dec.Action.Permits():
		f.metrics.refreshes.WithLabelValues("failed").Inc()
		return retry
	case len(x.in.addrs) == 0:
		f.metrics.refreshes.WithLabelValues("empty").Inc()
		return rule.Refresh
	}
	f.metrics.refreshes.WithLabelValues("learned").Inc()
	ttl := x.in.addrs[0].ttl
	for _, a := range x.in.addrs[1:] {
		ttl = min(ttl, a.ttl)
	}
	return min(rule.Refresh, max(time.Duration(ttl)*time.Second, p.DNS.MinTTL))
}

// refreshAnswer is answer for a refresh: no client, every source group of
// the rule. It returns the answer's rcode and the groups published for.
func (f *Firewall) refreshAnswer(ctx context.Context, p *policy.Policy, req *dns.Msg, x *exchange) (int, []string) {
	rule := x.allow.Rule
	m, err := f.resolve(ctx, p, req, false, true, x)
	if err != nil {
		x.note = noteUpstream + ": " + err.Error()
		reason := policy.ReasonUpstream
		switch {
		case f.isBusy(err):
			x.note, reason = noteBusy, policy.ReasonBusy
		case isDNSSECError(err):
			x.note, reason = noteBogus+err.(*dnssecError).res.String(), policy.ReasonBogus
		}
		x.dec = refuse(x.dec, reason, policy.Fail)
		return dns.RcodeServerFailure, nil
	}
	if m.Rcode == dns.RcodeServerFailure || m.Rcode == dns.RcodeRefused {
		x.note = noteUpstream + ": upstream answered " + rcodeString(m.Rcode)
		x.dec = refuse(x.dec, policy.ReasonUpstream, policy.Fail)
		return m.Rcode, nil
	}
	if !dnssecAllows(rule, x.dnssec) {
		x.note = noteInsecure
		if p.Mode == policy.Enforce {
			x.dec = refuse(x.dec, policy.ReasonInsecure, policy.Deny)
			return dns.RcodeRefused, nil
		}
		x.dec = refuse(x.dec, policy.ReasonInsecure, policy.WouldDeny)
	}
	qname := req.Question[0].Name
	inspect(p, f.classes, qname, m, &x.in)
	if x.in.dropped > 0 && len(x.in.addrs) == 0 {
		x.note = noteRebinding
		x.dec = refuse(x.dec, policy.ReasonRebinding, policy.Deny)
		return dns.RcodeServerFailure, nil
	}
	if x.in.wouldDrop > 0 {
		x.note = noteWouldRebnd
	}
	if x.in.capped > 0 {
		f.metrics.capHits.Inc()
	}
	groups := rule.From
	if groups == nil {
		groups = []string{""} // every source
	}
	if p.DNS.InspectCNAME {
		// inspect checks a chain for one client; a refresh has none, so
		// each group the rule publishes for is checked here.
		var bad string
		groups, bad = chainAllowed(p, m, groups)
		if bad != "" {
			x.note = noteCNAME + bad
			if len(groups) == 0 {
				if p.Mode == policy.Enforce {
					x.dec = refuse(x.dec, policy.ReasonCNAME, policy.Deny)
					return dns.RcodeNameError, nil
				}
				groups = rule.From // audit mode: learn what enforce would not
				if groups == nil {
					groups = []string{""}
				}
			}
		}
	}
	if len(x.in.addrs) > 0 && f.mustVerify(rule) {
		if !f.verifyAnswer(ctx, p, qname, m, x) {
			x.dec = refuse(x.dec, policy.ReasonVerify, policy.Deny)
			return dns.RcodeServerFailure, nil
		}
	}
	if len(x.in.addrs) == 0 {
		return m.Rcode, groups
	}
	name, err := dnsname.Parse(qname)
	if err != nil {
		return dns.RcodeServerFailure, nil // a policy name; does not happen
	}
	now := f.now()
	batch := make([]learn.Entry, 0, len(x.in.addrs)*len(groups))
	for _, g := range groups {
		for _, a := range x.in.addrs {
			batch = append(batch, learn.Entry{Name: name, Rule: rule.Name, Group: g, Addr: a.addr, Expires: learnedExpiry(p, now, a.ttl), DNSSEC: x.learnedState()})
		}
	}
	if err := f.publishBatch(ctx, batch); err != nil {
		x.note = notePublish + ": " + err.Error()
		x.dec = refuse(x.dec, policy.ReasonPublish, policy.Fail)
		f.metrics.publishFailures.Inc()
		f.log.Warn("publishing refreshed addresses failed", "name", qname, "rule", rule.Name, "error", err)
		return dns.RcodeServerFailure, nil
	}
	return m.Rcode, groups
}

// chainAllowed returns the groups of groups ("" for every source) for which
// every name in m's CNAME chain is allowed by some rule, and the first name
// that is not allowed for one of them. inspect has left only the chain's
// records in m, so every CNAME target in it is on the chain.
func chainAllowed(p *policy.Policy, m *dns.Msg, groups []string) (ok []string, bad string) {
	ok = groups
	for _, rr := range m.Answer {
		c, isCNAME := rr.(*dns.CNAME)
		if !isCNAME {
			continue
		}
		n, err := dnsname.Parse(c.Target)
		var keep []string
		for _, g := range ok {
			if err == nil && nameAllowedFor(p, g, n) {
				keep = append(keep, g)
			} else if bad == "" {
				bad = c.Target
			}
		}
		ok = keep
	}
	return ok, bad
}

// nameAllowedFor reports whether a rule allows every member of group g
// (every source, for "") to resolve n.
func nameAllowedFor(p *policy.Policy, g string, n dnsname.Name) bool {
	for _, r := range p.Rules {
		if r.From != nil && (g == "" || !slices.Contains(r.From, g)) {
			continue
		}
		for _, pat := range r.Names {
			if pat.Match(n) {
				return true
			}
		}
	}
	return false
}
