package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/fqdngate/fqdngate/internal/netaddr"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/sockmark"
)

// happyEyeballsDelay is RFC 8305's recommended connection attempt delay.
const happyEyeballsDelay = 250 * time.Millisecond

// candidates returns the addresses the proxy may dial for t, in the order
// to try them. An address literal is its own candidate; a name is resolved
// once, and each address is checked here, on the exact value that will be
// dialled, so nothing can re-resolve to something else in between.
func (p *Proxy) candidates(ctx context.Context, pol *policy.Policy, t Target) ([]netip.Addr, *refusalError) {
	var addrs []netip.Addr
	if t.Addr.IsValid() {
		addrs = []netip.Addr{t.Addr}
	} else {
		rctx, cancel := context.WithTimeout(ctx, connectTimeout(pol))
		res, err := p.cfg.Resolver.LookupNetIP(rctx, string(t.Name))
		cancel()
		if err != nil {
			// A resolver that left every address out for its class (the
			// DNS firewall's rebinding protection) refused the destination;
			// that is not a failure to resolve.
			var ce *netaddr.ClassError
			switch {
			case errors.As(err, &ce) && ce.Class == netaddr.Local:
				return nil, refuse(RefusedLocal, err)
			case errors.As(err, &ce):
				return nil, refuse(RefusedPrivate, err)
			}
			return nil, refuse(RefusedResolve, err)
		}
		if len(res) == 0 {
			return nil, refuse(RefusedResolve, errors.New("no addresses"))
		}
		addrs = res
	}
	return p.filter(pol, addrs, t.Port)
}

// filter drops addresses the proxy must not dial: fqdngate's own
// listeners; this host's own addresses (netaddr.Local, whatever
// deny_private says) and, under deny_private, every address whose class is
// not public, unless a CIDR rule names it. The refusal names the first
// reason found.
func (p *Proxy) filter(pol *policy.Policy, addrs []netip.Addr, port uint16) ([]netip.Addr, *refusalError) {
	out := make([]netip.Addr, 0, len(addrs))
	var why *refusalError
	for _, a := range addrs {
		a = a.WithZone("")
		if a.Is4In6() {
			a = a.Unmap() // same host; dial and check the one spelling
		}
		if p.isSelf(netip.AddrPortFrom(a, port)) {
			if why == nil {
				why = refuse(RefusedSelf, fmt.Errorf("%s", netip.AddrPortFrom(a, port)))
			}
			continue
		}
		if c := p.classes.Classify(a); !c.IsPublic() && !pol.NamesAddr(a) {
			switch {
			case c == netaddr.Local:
				if why == nil {
					why = refuse(RefusedLocal, fmt.Errorf("%s is an address of this host; name it in a CIDR rule to allow it", a))
				}
				continue
			case pol.Proxy.DenyPrivate:
				if why == nil {
					why = refuse(RefusedPrivate, fmt.Errorf("%s is %s; name it in a rule to allow it", a, c))
				}
				continue
			}
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, why
	}
	return out, nil
}

// interleave orders addresses as RFC 8305 section 4 asks: IPv6 first, then
// alternating families, keeping the resolver's order within each family.
func interleave(addrs []netip.Addr) []netip.Addr {
	var v6, v4 []netip.Addr
	for _, a := range addrs {
		if a.Is6() {
			v6 = append(v6, a)
		} else {
			v4 = append(v4, a)
		}
	}
	out := make([]netip.Addr, 0, len(addrs))
	for i := 0; i < len(v6) || i < len(v4); i++ {
		if i < len(v6) {
			out = append(out, v6[i])
		}
		if i < len(v4) {
			out = append(out, v4[i])
		}
	}
	return out
}

// upstreamKeepAliveIdle is how long an upstream connection is idle before
// keep-alive probes start (then every clientKeepAliveInterval, at most
// clientKeepAliveCount).
const upstreamKeepAliveIdle = 30 * time.Second

// newDialer is how every upstream connection is opened: marked so
// fqdngate's own nftables rules let it out, with keep-alive set on the
// socket before it connects, where the setting arms no timer yet (after
// connecting, as net.Dialer does it, every call re-arms one).
func newDialer() *net.Dialer {
	return &net.Dialer{KeepAlive: -1, Control: dialControl}
}

func dialControl(network, address string, c syscall.RawConn) error {
	if err := sockmark.Control(network, address, c); err != nil {
		return err
	}
	return setKeepAlive(c, upstreamKeepAliveIdle)
}

// dial connects to one of addrs on port with Happy Eyeballs: attempts start
// in interleave order, each 250 ms after the previous one or as soon as it
// fails, and the first to connect wins. A single address (an IP literal,
// most names) is dialled inline, without the race's goroutine, channel and
// timer. It never resolves anything.
func (p *Proxy) dial(ctx context.Context, pol *policy.Policy, addrs []netip.Addr, port uint16) (*net.TCPConn, netip.AddrPort, *refusalError) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, connectTimeout(pol))
	defer cancel()
	if len(addrs) == 1 {
		ap := netip.AddrPortFrom(addrs[0], port)
		c, err := p.dialOne(ctx, ap)
		if err != nil {
			return nil, netip.AddrPort{}, dialRefusal(err)
		}
		p.metrics.dialled(time.Since(start))
		return c, ap, nil
	}
	order := interleave(addrs)
	type result struct {
		c   *net.TCPConn
		ap  netip.AddrPort
		err error
	}
	results := make(chan result, len(order))
	next, pending := 0, 0
	launch := func() {
		ap := netip.AddrPortFrom(order[next], port)
		next++
		pending++
		go func() {
			c, err := p.dialOne(ctx, ap)
			results <- result{c: c, ap: ap, err: err}
		}()
	}
	launch()
	timer := time.NewTimer(happyEyeballsDelay)
	defer timer.Stop()
	var firstErr error
	for pending > 0 {
		select {
		case r := <-results:
			pending--
			if r.err == nil {
				p.metrics.dialled(time.Since(start))
				// Losing attempts are cancelled by the deferred cancel;
				// close any that connected in the meantime.
				if pending > 0 {
					go func(n int) {
						for ; n > 0; n-- {
							if l := <-results; l.c != nil {
								l.c.Close()
							}
						}
					}(pending)
				}
				return r.c, r.ap, nil
			}
			if firstErr == nil {
				firstErr = r.err
			}
			if next < len(order) {
				launch()
				timer.Reset(happyEyeballsDelay)
			}
		case <-timer.C:
			if next < len(order) {
				launch()
				timer.Reset(happyEyeballsDelay)
			}
		}
	}
	return nil, netip.AddrPort{}, dialRefusal(firstErr)
}

// dialOne opens a connection to ap, a checked address: with
// Config.DialContext if set, else with the marking dialer. (Not
// net.Dialer.DialTCP, which would save formatting the address: it binds
// an explicit local address even when given none, and runs out of ports
// under load where connect's own port choice does not.)
func (p *Proxy) dialOne(ctx context.Context, ap netip.AddrPort) (*net.TCPConn, error) {
	dialContext := p.cfg.DialContext
	if dialContext == nil {
		dialContext = p.dialer.DialContext
	}
	c, err := dialContext(ctx, "tcp", ap.String())
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("dialling %s: got a %T, not a TCP connection", ap, c)
	}
	return tc, nil
}

// dialRefusal says whether a failed dial timed out or failed.
func dialRefusal(err error) *refusalError {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || isTimeout(err) {
		return refuse(RefusedDialTimeout, err)
	}
	return refuse(RefusedDial, err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// connect resolves, checks and dials t; for rules with tls.verify it also
// verifies the chosen address's certificate, on a connection of its own,
// before returning the connection the tunnel will use.
func (p *Proxy) connect(ctx context.Context, pol *policy.Policy, d policy.Decision, t Target) (*net.TCPConn, netip.AddrPort, *refusalError) {
	addrs, rerr := p.candidates(ctx, pol, t)
	if rerr != nil {
		return nil, netip.AddrPort{}, rerr
	}
	return p.dialVerified(ctx, pol, d, t, addrs)
}

func (p *Proxy) dialVerified(ctx context.Context, pol *policy.Policy, d policy.Decision, t Target, addrs []netip.Addr) (*net.TCPConn, netip.AddrPort, *refusalError) {
	c, ap, rerr := p.dial(ctx, pol, addrs, t.Port)
	if rerr != nil {
		return nil, ap, rerr
	}
	if d.Rule != nil && d.Rule.TLS != nil && d.Rule.TLS.Verify {
		vctx, cancel := context.WithTimeout(ctx, connectTimeout(pol))
		err := p.verifier.Verify(vctx, t.Host(), ap.Addr(), ap.Port(), d.Rule.TLS)
		cancel()
		if err != nil {
			c.Close()
			p.metrics.verifyFailure.Inc()
			return nil, ap, refuse(RefusedVerify, err)
		}
	}
	return c, ap, nil
}
