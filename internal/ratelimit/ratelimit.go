// Package ratelimit keeps a token bucket per client, in bounded memory.
package ratelimit

import (
	"net/netip"
	"sync"

	"golang.org/x/time/rate"
)

// Clients is a token bucket per client, in two generations: buckets used
// since the last rotation (cur) and those used in the one before (prev).
// A rotation, when cur is full, drops prev, so clients seen recently keep
// their bucket and the map never holds more than max. A flood from
// spoofed or many sources makes a bucket per source; beyond the bound the
// oldest generation is forgotten, which at worst hands an evicted client
// a full bucket again: the limit softens, memory does not grow.
type Clients struct {
	max int

	mu    sync.Mutex // guards following
	limit rate.Limit
	burst int
	cur   map[netip.Addr]*rate.Limiter
	prev  map[netip.Addr]*rate.Limiter
}

// New returns buckets for at most max clients.
func New(max int) *Clients {
	return &Clients{max: max, cur: make(map[netip.Addr]*rate.Limiter)}
}

// Bucket returns client's bucket (its ClientKey's) for a limit of limit
// tokens a second with bursts of burst. A change of limit or burst (a
// reload) starts every client with a fresh bucket.
func (l *Clients) Bucket(client netip.Addr, limit rate.Limit, burst int) *rate.Limiter {
	key := ClientKey(client)
	l.mu.Lock()
	defer l.mu.Unlock()
	if limit != l.limit || burst != l.burst {
		l.limit, l.burst = limit, burst
		clear(l.cur)
		l.prev = nil
	}
	b := l.cur[key]
	if b == nil {
		if b = l.prev[key]; b != nil {
			delete(l.prev, key)
		} else {
			b = rate.NewLimiter(l.limit, l.burst)
		}
		if len(l.cur) >= l.max/2 {
			l.prev, l.cur = l.cur, make(map[netip.Addr]*rate.Limiter, len(l.cur))
		}
		l.cur[key] = b
	}
	return b
}

// Len returns the number of buckets kept.
func (l *Clients) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.cur) + len(l.prev)
}

// ClientKey is the unit a bucket limits: an IPv4 address, or an IPv6 /64,
// since one IPv6 host usually has a whole /64 to send from.
func ClientKey(a netip.Addr) netip.Addr {
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}
