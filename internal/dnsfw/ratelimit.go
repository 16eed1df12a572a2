package dnsfw

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxLimiters bounds the per-client token buckets kept. A flood of queries
// from spoofed sources makes a bucket per source; beyond the bound the
// oldest generation of buckets is forgotten, which at worst hands an
// evicted client a full bucket again: the limit softens, memory does not
// grow.
const maxLimiters = 1 << 16

// limiter is a token bucket per client, in two generations: buckets used
// since the last rotation (cur) and those used in the one before (prev).
// A rotation, when cur is full, drops prev, so clients seen recently keep
// their bucket and the map never holds more than max.
type limiter struct {
	max int

	mu    sync.Mutex // guards following
	limit rate.Limit
	burst int
	cur   map[netip.Addr]*rate.Limiter
	prev  map[netip.Addr]*rate.Limiter
}

func newLimiter(max int) *limiter {
	return &limiter{max: max, cur: make(map[netip.Addr]*rate.Limiter)}
}

// allow reports whether client may send a query at now, for a limit of qps
// queries per second with bursts of burst. qps ≤ 0 means no limit. A change
// of limit (a reload) starts every client with a fresh bucket.
func (l *limiter) allow(client netip.Addr, qps float64, burst int, now time.Time) bool {
	if qps <= 0 {
		return true
	}
	key := clientKey(client)
	l.mu.Lock()
	if rate.Limit(qps) != l.limit || burst != l.burst {
		l.limit, l.burst = rate.Limit(qps), burst
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
	l.mu.Unlock()
	return b.AllowN(now, 1)
}

// len returns the number of buckets kept.
func (l *limiter) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.cur) + len(l.prev)
}

// clientKey is the unit a bucket limits: an IPv4 address, or an IPv6 /64,
// since one IPv6 host usually has a whole /64 to send from.
func clientKey(a netip.Addr) netip.Addr {
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}
