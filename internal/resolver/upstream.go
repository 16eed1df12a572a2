package resolver

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// upstream is one configured resolver, its connections and its health.
type upstream struct {
	cfg    policy.Upstream
	name   string      // cfg.String(), for errors and the Observer
	udp    *udpPool    // nil for DNS-over-TLS and DNS-over-HTTPS
	stream *streamPool // TCP, or TLS; nil for DNS-over-HTTPS
	doh    *dohClient  // nil unless DNS-over-HTTPS

	// Health, lock-free because every query reads it. fails counts
	// back-off steps since the last good answer, 0 meaning healthy;
	// downUntil (Unix ns) is when a sick upstream may be probed.
	fails     atomic.Int32
	downUntil atomic.Int64
	probing   atomic.Bool // a probe is in flight
}

// exchange asks u once: over UDP and, if the answer is truncated or too
// big for the UDP read buffer, over TCP; or over TLS; or HTTPS. It writes a fresh
// random ID into wire for each query sent (over HTTPS, ID 0).
func (u *upstream) exchange(ctx context.Context, wire []byte, q dns.Question, deadline time.Time) (*dns.Msg, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if u.doh != nil {
		return u.doh.exchange(ctx, wire, q, deadline)
	}
	id := randomID()
	setID(wire, id)
	if u.udp != nil {
		m, err := u.udp.exchange(ctx, wire, id, q, deadline)
		if err == nil && !m.Truncated || err != nil && err != errTooBig {
			return m, err
		}
		id = randomID()
		setID(wire, id)
	}
	return u.stream.exchange(ctx, wire, id, q, deadline)
}

func (u *upstream) succeeded() {
	// Load first: a healthy upstream's counter stays a shared, unwritten
	// cache line.
	if u.fails.Load() != 0 {
		u.fails.Store(0)
	}
}

// failed marks u sick. Queries that were already in flight when it died
// fail together; only the first in a back-off window lengthens the next
// one, so a burst does not jump straight to the longest back-off.
func (u *upstream) failed(now time.Time, minBackoff, maxBackoff time.Duration) {
	n := u.fails.Load()
	if n == 0 || now.UnixNano() >= u.downUntil.Load() {
		n = u.fails.Add(1)
	}
	backoff := minBackoff << min(n-1, 16)
	if backoff > maxBackoff || backoff <= 0 {
		backoff = maxBackoff
	}
	u.downUntil.Store(now.Add(backoff).UnixNano())
}

// close closes u's idle connections.
func (u *upstream) close() {
	if u.udp != nil {
		u.udp.close()
	}
	if u.stream != nil {
		u.stream.close()
	}
	if u.doh != nil {
		u.doh.close()
	}
}
