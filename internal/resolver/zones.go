package resolver

import (
	"context"
	"fmt"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// Zones holds a Resolver for each forward zone of a policy (dns.forward):
// a zone's names go to its own servers, with the same failover, timeouts,
// TCP fallback and bound on queries in flight as the upstreams. It is
// safe for concurrent use.
type Zones struct {
	byZone map[dnsname.Name]*Resolver
}

// NewZones returns the resolvers for zones; cfg gives every zone's
// Timeout, MaxInFlight and Observer (its Upstreams are ignored: each zone
// has its own servers). It opens no sockets until the first query.
func NewZones(zones []policy.ForwardZone, cfg Config) (*Zones, error) {
	z := &Zones{byZone: make(map[dnsname.Name]*Resolver, len(zones))}
	for _, fz := range zones {
		c := cfg
		c.Upstreams = fz.To
		r, err := New(c)
		if err != nil {
			z.Close()
			return nil, fmt.Errorf("forward zone %s: %w", fz.Zone, err)
		}
		z.byZone[fz.Zone] = r
	}
	return z, nil
}

// Forward sends m to the servers of zone and returns as Resolver.Exchange
// does. A zone Zones was not built with is an error: the policy that
// admitted the query is not the one these resolvers were made for.
func (z *Zones) Forward(ctx context.Context, zone *policy.ForwardZone, m *dns.Msg) (*dns.Msg, policy.Upstream, error) {
	r := z.byZone[zone.Zone]
	if r == nil {
		return nil, policy.Upstream{}, fmt.Errorf("resolver: no servers for forward zone %s", zone.Zone)
	}
	return r.Exchange(ctx, m)
}

// Close closes every zone's resolver.
func (z *Zones) Close() error {
	for _, r := range z.byZone {
		r.Close()
	}
	return nil
}
