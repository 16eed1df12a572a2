package dnsfw

import (
	"context"
	"errors"
	"net/netip"
	"sync"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// verifyParallel bounds the handshakes one answer has in progress at once.
// Answers rarely hold more than eight addresses; a hostile one holding
// max_learned_per_name of them is verified eight at a time, and what the
// publish timeout leaves unverified is removed.
const verifyParallel = 8

// errNoTCPPort fails every address of a tls.verify rule that allows no TCP
// port: there is nothing to verify on, and an unverified address must not
// reach the kernel.
var errNoTCPPort = errors.New("the rule allows no TCP port to verify its certificate on")

// mustVerify reports whether the addresses learned for r must pass the
// Verify hook first.
func (f *Firewall) mustVerify(r *policy.Rule) bool {
	return f.verify != nil && r.TLS != nil && r.TLS.Verify
}

// verifyAnswer verifies the addresses in x.in.addrs for qname under
// x.allow's rule. In enforce mode those that fail are removed from m and
// from x.in.addrs; in audit mode they are only noted. It returns false when
// it removed every address: the caller answers SERVFAIL.
func (f *Firewall) verifyAnswer(ctx context.Context, p *policy.Policy, qname string, m *dns.Msg, x *exchange) bool {
	bad, err := f.verifyAddrs(ctx, qname, x.allow.Rule, x.in.addrs, &x.unverified)
	if len(bad) == 0 {
		return true
	}
	f.metrics.verifyFailures.Add(float64(len(bad)))
	note := noteUnverified
	if p.Mode != policy.Enforce {
		note = noteWouldVerif
	} else {
		x.in.addrs = dropLearned(x.in.addrs, bad)
		removeAddrs(m, bad)
		if len(x.in.addrs) == 0 {
			note = noteNoVerified
		}
	}
	if x.note != "" {
		x.note += "; "
	}
	x.note += note + err.Error()
	return len(x.in.addrs) > 0
}

// verifyAddrs verifies every address of addrs for qname against r's tls
// requirement, concurrently and within the publish timeout, and appends
// those that failed to *bad, returning it and the first failure.
func (f *Firewall) verifyAddrs(ctx context.Context, qname string, r *policy.Rule, addrs []learnedAddr, bad *[]netip.Addr) ([]netip.Addr, error) {
	out := (*bad)[:0]
	defer func() { *bad = out }()
	n, err := dnsname.Parse(qname)
	if err != nil {
		return out, err // decided on this name, so this does not happen
	}
	name := string(n)
	port := verifyPort(r)
	if port == 0 {
		for _, a := range addrs {
			out = append(out, a.addr)
		}
		return out, errNoTCPPort
	}
	ctx, cancel := context.WithTimeout(ctx, f.pubTimeout)
	defer cancel()

	var first error
	if len(addrs) == 1 {
		// The common case, and a cached one costs a map lookup: no
		// goroutine.
		if err := f.verifyOne(ctx, name, addrs[0].addr, port, r.TLS); err != nil {
			out = append(out, addrs[0].addr)
			first = err
		}
		return out, first
	}
	errs := make([]error, len(addrs))
	sem := make(chan struct{}, verifyParallel)
	var wg sync.WaitGroup
	for i, a := range addrs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			errs[i] = f.verifyOne(ctx, name, a.addr, port, r.TLS)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			out = append(out, addrs[i].addr)
			if first == nil {
				first = err
			}
		}
	}
	return out, first
}

// verifyOne calls the Verify hook, once for all the queries that need the
// same verification at the same moment: a popular name's first answer must
// not cost its server one handshake per client.
func (f *Firewall) verifyOne(ctx context.Context, name string, addr netip.Addr, port uint16, t *policy.TLS) error {
	k := flightKey{name: name, ap: netip.AddrPortFrom(addr, port), tls: t}
	f.flight.mu.Lock()
	if c, ok := f.flight.calls[k]; ok {
		c.shared++
		f.flight.mu.Unlock()
		select {
		case <-c.done:
			return c.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c := &flightCall{done: make(chan struct{})}
	if f.flight.calls == nil {
		f.flight.calls = make(map[flightKey]*flightCall)
	}
	f.flight.calls[k] = c
	f.flight.mu.Unlock()

	c.err = f.verify(ctx, name, addr, port, t)
	f.flight.mu.Lock()
	delete(f.flight.calls, k)
	f.flight.mu.Unlock()
	close(c.done)
	return c.err
}

// verifyFlights are the verifications in progress. A key holds the
// requirement's pointer: a reload makes new ones, so a changed requirement
// never shares a result with the old.
type verifyFlights struct {
	mu    sync.Mutex // guards following
	calls map[flightKey]*flightCall
}

type flightKey struct {
	name string
	ap   netip.AddrPort
	tls  *policy.TLS
}

type flightCall struct {
	done   chan struct{}
	err    error // set before done is closed
	shared int   // callers waiting for it; guarded by verifyFlights.mu
}

// verifyPort is the port r's addresses are verified on: 443 when r allows
// 443/tcp, else r's first TCP port; 0 when it has none.
func verifyPort(r *policy.Rule) uint16 {
	for _, pr := range r.Ports {
		if pr.Contains(443, policy.TCP) {
			return 443
		}
	}
	for _, pr := range r.Ports {
		if pr.Proto == policy.TCP {
			return pr.Lo
		}
	}
	return 0
}

func joinAddrs(addrs []netip.Addr) string {
	var b []byte
	for i, a := range addrs {
		if i > 0 {
			b = append(b, ' ')
		}
		b = a.AppendTo(b)
	}
	return string(b)
}
