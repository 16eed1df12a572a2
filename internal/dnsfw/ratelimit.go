package dnsfw

import (
	"net/netip"
	"time"

	"golang.org/x/time/rate"

	"github.com/fqdngate/fqdngate/internal/ratelimit"
)

// maxLimiters bounds the per-client token buckets kept (ratelimit.Clients).
const maxLimiters = 1 << 16

// limiter is dns.rate_limit: a token bucket per client.
type limiter struct{ c *ratelimit.Clients }

func newLimiter(max int) *limiter { return &limiter{ratelimit.New(max)} }

// allow reports whether client may send a query at now, for a limit of qps
// queries per second with bursts of burst. qps ≤ 0 means no limit. A change
// of limit (a reload) starts every client with a fresh bucket.
func (l *limiter) allow(client netip.Addr, qps float64, burst int, now time.Time) bool {
	if qps <= 0 {
		return true
	}
	return l.c.Bucket(client, rate.Limit(qps), burst).AllowN(now, 1)
}

// clientKey is the unit a limit counts (ratelimit.ClientKey).
func clientKey(a netip.Addr) netip.Addr { return ratelimit.ClientKey(a) }
