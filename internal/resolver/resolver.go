// Package resolver forwards DNS queries to upstream resolvers over UDP, TCP,
// DNS-over-TLS or DNS-over-HTTPS, failing over between them; the DNS firewall and the proxy
// share it.
//
// Upstreams are tried in configuration order, healthy ones first. One that
// times out or cannot be reached is marked sick and skipped for a back-off
// that doubles with each failure (500 ms up to 30 s); when its back-off
// ends, the next query is also sent to it in the background, as a probe, and
// a good answer makes it healthy again. So a dead upstream costs at most one
// timeout, not one per query. When every upstream is sick, each query goes
// to the one due back soonest, and fails within one Timeout.
package resolver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/sockmark"
)

// ErrBusy is returned by Exchange when MaxInFlight queries are already
// outstanding. The DNS firewall answers REFUSED.
var ErrBusy = errors.New("resolver: too many queries in flight")

// ErrClosed is returned by Exchange after Close.
var ErrClosed = errors.New("resolver: closed")

// maxAttempts bounds the upstreams one query tries, and with Timeout the
// time it can take: at most maxAttempts × Timeout.
const maxAttempts = 3

// Observer is told about every attempt at an upstream, for metrics. It is
// called synchronously from Exchange and from probes, concurrently, so it
// must be quick and safe for concurrent use.
type Observer interface {
	// ObserveExchange reports one attempt at upstream (as
	// policy.Upstream.String spells it) that took d. err is nil for a
	// usable answer, a *RcodeError for SERVFAIL or REFUSED, and the
	// network or protocol error otherwise.
	ObserveExchange(upstream string, d time.Duration, err error)
}

// RcodeError is what an Observer sees when an upstream answered SERVFAIL or
// REFUSED. Exchange then tries the next upstream, and returns the answer
// itself, not an error, if none does better.
type RcodeError struct{ Rcode int }

func (e *RcodeError) Error() string { return "upstream answered " + dns.RcodeToString[e.Rcode] }

// Config configures a Resolver.
type Config struct {
	// Upstreams are tried in this order while healthy. At least one.
	Upstreams []policy.Upstream
	// Timeout bounds one attempt at one upstream, including a retry over
	// TCP after a truncated answer and a TLS handshake. If zero, 2s.
	Timeout time.Duration
	// MaxInFlight bounds the queries outstanding at once; over it Exchange
	// returns ErrBusy at once. If zero, 1024.
	MaxInFlight int
	// Observer, if not nil, is told about every attempt.
	Observer Observer
}

// Resolver forwards queries upstream. It is safe for concurrent use.
type Resolver struct {
	ups         []*upstream
	timeout     time.Duration
	maxInFlight int64
	inFlight    atomic.Int64
	obs         Observer

	// Back-off of sick upstreams; fields so tests can shorten them.
	minBackoff, maxBackoff time.Duration

	ctx    context.Context // cancelled by Close, ends probes
	cancel context.CancelFunc

	closed atomic.Bool
	mu     sync.Mutex     // orders starting probes before waiting for them
	probes sync.WaitGroup // running probes
}

// New returns a Resolver for cfg. It opens no sockets until the first query.
func New(cfg Config) (*Resolver, error) {
	if len(cfg.Upstreams) == 0 {
		return nil, errors.New("resolver: no upstreams; configure at least one upstream resolver")
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("resolver: timeout %v is negative; use a positive duration such as 2s", cfg.Timeout)
	}
	if cfg.MaxInFlight < 0 {
		return nil, fmt.Errorf("resolver: max in flight %d is negative; use a positive number or 0 for the default", cfg.MaxInFlight)
	}
	r := &Resolver{
		timeout:     cfg.Timeout,
		maxInFlight: int64(cfg.MaxInFlight),
		obs:         cfg.Observer,
		minBackoff:  500 * time.Millisecond,
		maxBackoff:  30 * time.Second,
	}
	if r.timeout == 0 {
		r.timeout = 2 * time.Second
	}
	if r.maxInFlight == 0 {
		r.maxInFlight = 1024
	}
	dialer := &net.Dialer{Control: sockmark.Control}
	for _, uc := range cfg.Upstreams {
		u, err := newUpstream(uc, dialer, int(r.maxInFlight))
		if err != nil {
			return nil, err
		}
		r.ups = append(r.ups, u)
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	return r, nil
}

// newUpstream returns uc's upstream, keeping up to maxIdle idle UDP sockets.
func newUpstream(uc policy.Upstream, dialer *net.Dialer, maxIdle int) (*upstream, error) {
	if !uc.Addr.IsValid() || uc.Addr.Port() == 0 {
		return nil, fmt.Errorf("resolver: upstream %q has no address and port; write it as ip:port", uc.String())
	}
	u := &upstream{cfg: uc, name: uc.String()}
	addr := uc.Addr.String()
	if !uc.TLS && !uc.HTTPS {
		u.udp = &udpPool{addr: addr, dialer: dialer, maxIdle: maxIdle, maxUses: udpMaxUses, maxAge: udpMaxAge}
		u.stream = &streamPool{addr: addr, dialer: dialer}
		return u, nil
	}
	tc, err := upstreamTLS(uc)
	if err != nil {
		return nil, err
	}
	if uc.HTTPS {
		if uc.TLS || uc.Path == "" || uc.Path[0] != '/' {
			return nil, fmt.Errorf("resolver: upstream %q: a DNS-over-HTTPS upstream needs an absolute path, like https://dns.example@192.0.2.53/dns-query", u.name)
		}
		u.doh, err = newDoHClient(uc, dialer, tc)
		if err != nil {
			return nil, fmt.Errorf("resolver: upstream %q: %w", u.name, err)
		}
		return u, nil
	}
	u.stream = &streamPool{addr: addr, dialer: dialer, tls: tc}
	return u, nil
}

// upstreamTLS returns the TLS configuration verifying uc: its server name
// (its IP address if it has none) and its CA file (the system roots if it
// has none).
func upstreamTLS(uc policy.Upstream) (*tls.Config, error) {
	tc := &tls.Config{
		ServerName:         uc.ServerName,
		MinVersion:         tls.VersionTLS12,
		ClientSessionCache: tls.NewLRUClientSessionCache(streamMaxIdle),
	}
	if tc.ServerName == "" {
		// Go verifies an IP ServerName against the certificate's IP SANs.
		tc.ServerName = uc.Addr.Addr().String()
	}
	if uc.CAFile != "" {
		pem, err := os.ReadFile(uc.CAFile)
		if err != nil {
			return nil, fmt.Errorf("resolver: reading CA file for upstream %s: %w", uc.String(), err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("resolver: CA file %s for upstream %s holds no PEM certificate", uc.CAFile, uc.String())
		}
	}
	return tc, nil
}

// Exchange sends q upstream and returns the answer, with q's ID, and the
// upstream that gave it. The answer's question is as the upstream wrote it,
// possibly in another case; callers restore their client's. q is not
// modified. An upstream's SERVFAIL or REFUSED is returned as an answer if no
// other upstream answers better. Exchange tries at most three upstreams,
// so it takes at most 3 × Timeout (one Timeout once every upstream is known
// to be sick), less if ctx ends first. ErrBusy means too many queries are
// in flight; a context error means the caller gave up, which says nothing
// about the upstream's health.
func (r *Resolver) Exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, policy.Upstream, error) {
	if len(q.Question) != 1 {
		return nil, policy.Upstream{}, fmt.Errorf("resolver: query has %d questions, want 1", len(q.Question))
	}
	if r.inFlight.Add(1) > r.maxInFlight {
		r.inFlight.Add(-1)
		return nil, policy.Upstream{}, ErrBusy
	}
	defer r.inFlight.Add(-1)
	if r.closed.Load() {
		return nil, policy.Upstream{}, ErrClosed
	}
	wire, err := q.Pack()
	if err != nil {
		return nil, policy.Upstream{}, fmt.Errorf("resolver: packing query: %w", err)
	}
	question := q.Question[0]

	var buf [maxAttempts]*upstream
	cands, probe := r.plan(buf[:0], time.Now())
	if probe != nil {
		r.startProbe(probe, wire, question)
	}

	var (
		rcodeAnswer *dns.Msg // the last SERVFAIL or REFUSED
		rcodeUp     *upstream
		lastErr     error
	)
	for _, u := range cands {
		start := time.Now()
		deadline := start.Add(r.timeout)
		ctxDeadline, bounded := ctx.Deadline()
		bounded = bounded && ctxDeadline.Before(deadline)
		if bounded {
			deadline = ctxDeadline
		}
		m, err := u.exchange(ctx, wire, question, deadline)
		d := time.Since(start)
		if err != nil && (ctx.Err() != nil || bounded && isTimeout(err)) {
			// The caller gave up, not the upstream: no health verdict.
			cerr := ctx.Err()
			if cerr == nil {
				cerr = context.DeadlineExceeded
			}
			r.observe(u, d, cerr)
			return nil, u.cfg, fmt.Errorf("resolver: asking %s: %w", u.name, cerr)
		}
		if err != nil {
			u.failed(time.Now(), r.minBackoff, r.maxBackoff)
			r.observe(u, d, err)
			lastErr = fmt.Errorf("asking %s: %w", u.name, err)
			continue
		}
		if m.Rcode == dns.RcodeServerFailure || m.Rcode == dns.RcodeRefused {
			// It is alive, so its health stands; the next one may know
			// better.
			r.observe(u, d, &RcodeError{Rcode: m.Rcode})
			rcodeAnswer, rcodeUp = m, u
			continue
		}
		u.succeeded()
		r.observe(u, d, nil)
		m.Id = q.Id
		return m, u.cfg, nil
	}
	if rcodeAnswer != nil {
		rcodeAnswer.Id = q.Id
		return rcodeAnswer, rcodeUp.cfg, nil
	}
	return nil, cands[len(cands)-1].cfg, fmt.Errorf("resolver: no upstream answered: %w", lastErr)
}

// plan picks the upstreams to try, healthy ones in order, and at most one
// sick upstream whose back-off has ended, to probe in the background.
func (r *Resolver) plan(buf []*upstream, now time.Time) (cands []*upstream, probe *upstream) {
	nowNS := now.UnixNano()
	for _, u := range r.ups {
		if u.fails.Load() == 0 {
			if len(buf) < maxAttempts {
				buf = append(buf, u)
			}
			continue
		}
		if probe == nil && nowNS >= u.downUntil.Load() && !u.probing.Load() {
			probe = u
		}
	}
	if len(buf) == 0 {
		// Nothing is healthy: ask the upstream due back soonest, and only
		// it, so the caller hears within one Timeout.
		best := r.ups[0]
		for _, u := range r.ups[1:] {
			if u.downUntil.Load() < best.downUntil.Load() {
				best = u
			}
		}
		return append(buf, best), nil
	}
	if probe != nil && !probe.probing.CompareAndSwap(false, true) {
		probe = nil
	}
	return buf, probe
}

// startProbe sends a copy of a client's query to a sick upstream in the
// background; only its health learns from the answer.
func (r *Resolver) startProbe(u *upstream, wire []byte, q dns.Question) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed.Load() {
		u.probing.Store(false)
		return
	}
	w := append([]byte(nil), wire...)
	r.probes.Add(1)
	go func() {
		defer r.probes.Done()
		defer u.probing.Store(false)
		start := time.Now()
		m, err := u.exchange(r.ctx, w, q, start.Add(r.timeout))
		if r.ctx.Err() != nil {
			return // closing; no verdict
		}
		d := time.Since(start)
		switch {
		case err != nil:
			u.failed(time.Now(), r.minBackoff, r.maxBackoff)
			r.observe(u, d, err)
		case m.Rcode == dns.RcodeServerFailure || m.Rcode == dns.RcodeRefused:
			u.failed(time.Now(), r.minBackoff, r.maxBackoff)
			r.observe(u, d, &RcodeError{Rcode: m.Rcode})
		default:
			u.succeeded()
			r.observe(u, d, nil)
		}
	}()
}

func (r *Resolver) observe(u *upstream, d time.Duration, err error) {
	if r.obs != nil {
		r.obs.ObserveExchange(u.name, d, err)
	}
}

// Status is an upstream's health, for readiness checks and the admin API.
type Status struct {
	Upstream policy.Upstream
	Healthy  bool
	// Failures counts back-off steps since the last good answer.
	Failures int
	// RetryAt is when a sick upstream is probed next.
	RetryAt time.Time
}

// Status returns the health of every upstream, in configuration order.
func (r *Resolver) Status() []Status {
	out := make([]Status, len(r.ups))
	for i, u := range r.ups {
		n := int(u.fails.Load())
		out[i] = Status{Upstream: u.cfg, Healthy: n == 0, Failures: n}
		if n > 0 {
			out[i].RetryAt = time.Unix(0, u.downUntil.Load())
		}
	}
	return out
}

// Close stops probes and closes idle connections. Exchanges in progress
// finish within their Timeout; later ones return ErrClosed.
func (r *Resolver) Close() error {
	r.mu.Lock()
	if r.closed.Swap(true) {
		r.mu.Unlock()
		return nil
	}
	r.mu.Unlock()
	r.cancel()
	r.probes.Wait()
	for _, u := range r.ups {
		u.close()
	}
	return nil
}
