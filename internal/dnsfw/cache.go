package dnsfw

import (
	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/dnscache"
)

// Cache stores upstream answers for reuse; *dnscache.Cache is one. It
// holds answers as the upstream gave them, before this firewall inspects
// them: what a client may see depends on who it is and on the policy of the
// moment, and both are applied again to every answer the cache serves.
type Cache interface {
	// Get returns a copy, which the caller owns, of the answer stored for
	// k, with every TTL reduced by the time it spent in the cache.
	Get(k dnscache.Key) (*dns.Msg, bool)
	// Put offers resp, an upstream's answer to the query with key k; the
	// cache decides by rcode and TTLs whether and for how long to keep a
	// copy of it.
	Put(k dnscache.Key, resp *dns.Msg) bool
}
