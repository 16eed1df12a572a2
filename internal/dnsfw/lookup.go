package dnsfw

import (
	"context"
	"errors"
	"net"
	"net/netip"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/dnsname"
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
		rcode   int
		err     error
	}
	lookup := func(qtype uint16) result {
		req := new(dns.Msg).SetQuestion(fqdn, qtype)
		x := exchangePool.Get().(*exchange)
		defer exchangePool.Put(x)
		x.reset()
		m, err := f.resolve(ctx, p, req, false, false, x)
		if err != nil {
			return result{err: err}
		}
		inspect(p, fqdn, m, &x.in)
		r := result{rcode: m.Rcode, dropped: x.in.dropped}
		for _, a := range x.in.addrs {
			r.addrs = append(r.addrs, a.addr)
		}
		return r
	}
	aaaa := make(chan result, 1)
	go func() { aaaa <- lookup(dns.TypeAAAA) }()
	r4 := lookup(dns.TypeA)
	r6 := <-aaaa

	addrs := append(r4.addrs, r6.addrs...)
	if len(addrs) > 0 {
		return addrs, nil
	}
	switch {
	case r4.err != nil || r6.err != nil:
		err := errors.Join(r4.err, r6.err)
		return nil, &net.DNSError{Err: err.Error(), Name: host, IsTemporary: true, IsTimeout: errors.Is(err, context.DeadlineExceeded)}
	case r4.dropped+r6.dropped > 0:
		return nil, &net.DNSError{Err: "every address is non-public (rebinding protection); name the addresses in a CIDR rule to allow them", Name: host}
	case r4.rcode == dns.RcodeServerFailure || r6.rcode == dns.RcodeServerFailure:
		return nil, &net.DNSError{Err: "server misbehaving", Name: host, IsTemporary: true}
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}
