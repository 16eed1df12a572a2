package dnsfw

import (
	"context"
	"errors"
	"net"
	"net/netip"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/netaddr"
)

// LookupNetIP returns the IPv4 and IPv6 addresses of host, resolved the way
// the firewall resolves for its clients: through the cache and the
// upstreams, with rebinding protection and dns.max_ttl applied. It is how
// fqdngate's own components (the proxy) resolve, so they never see an
// address a client of the firewall would not. It does not consult the
// rules: the caller has decided already. An IP literal is returned as it
// is. Errors are *net.DNSError, IsNotFound when the name has no addresses.
func (f *Firewall) LookupNetIP(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil
	}
	name, err := dnsname.Parse(host)
	if err != nil {
		return nil, &net.DNSError{Err: err.Error(), Name: host, IsNotFound: true}
	}
	p := f.policy()
	fqdn := dns.Fqdn(string(name))

	type result struct {
		addrs   []netip.Addr
		dropped int
		local   int // of dropped, this host's own
		rcode   int
		err     error
		dnssec  validation
	}
	lookup := func(qtype uint16) result {
		req := new(dns.Msg).SetQuestion(fqdn, qtype)
		x := getExchange()
		defer putExchange(x)
		m, err := f.resolve(ctx, p, req, false, false, x)
		if err != nil {
			return result{err: err}
		}
		inspect(p, f.classes, fqdn, m, &x.in)
		r := result{rcode: m.Rcode, dropped: x.in.dropped, local: x.in.droppedLocal, dnssec: x.dnssec}
		for _, a := range x.in.addrs {
			r.addrs = append(r.addrs, a.addr)
		}
		return r
	}
	aaaa := make(chan result, 1)
	go func() { aaaa <- lookup(dns.TypeAAAA) }()
	r4 := lookup(dns.TypeA)
	r6 := <-aaaa

	// The caller's rule is not known here: if any rule naming host
	// requires DNSSEC, so does the lookup (fail closed).
	for _, r := range []result{r4, r6} {
		if rule := requiringRule(p, name); r.err == nil && rule != nil && !dnssecAllows(rule, r.dnssec) {
			return nil, &net.DNSError{Err: "the answer is DNSSEC-" + r.dnssec.String() + " and rule " + rule.Name + " has dnssec: required", Name: host}
		}
	}
	addrs := append(r4.addrs, r6.addrs...)
	if len(addrs) > 0 {
		return addrs, nil
	}
	switch {
	case r4.err != nil || r6.err != nil:
		err := errors.Join(r4.err, r6.err)
		return nil, &net.DNSError{Err: err.Error(), Name: host, IsTemporary: true, IsTimeout: errors.Is(err, context.DeadlineExceeded)}
	case r4.dropped+r6.dropped > 0:
		// Wrapped, so the proxy tells a refusal from a failure to resolve.
		ce := &netaddr.ClassError{Class: netaddr.Private}
		if r4.local+r6.local == r4.dropped+r6.dropped {
			ce.Class = netaddr.Local
		}
		return nil, &net.DNSError{Err: ce.Error() + " (rebinding protection); name the addresses in a CIDR rule to allow them", Name: host, UnwrapErr: ce}
	case r4.rcode == dns.RcodeServerFailure || r6.rcode == dns.RcodeServerFailure:
		return nil, &net.DNSError{Err: "server misbehaving", Name: host, IsTemporary: true}
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}
