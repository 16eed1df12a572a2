package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	"github.com/fqdngate/fqdngate/internal/netaddr"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// ServeTransparent runs the transparent proxy on ln until ctx is done.
// Connections arrive redirected by nftables; each is decided by the name in
// its TLS ClientHello (SNI) or HTTP Host header, and carried to its
// original destination only if that address is one fqdngate itself
// resolves for the name. When ctx is done it stops accepting, lets tunnels
// finish for up to DrainTimeout, cuts what remains and returns nil. It
// closes ln.
func (p *Proxy) ServeTransparent(ctx context.Context, ln net.Listener) error {
	p.addSelfAddr(ln.Addr())
	dr := newDrainer()
	defer dr.cut()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if retryableAccept(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				p.log.Warn("accept failed; retrying", "err", err, "in", backoff)
				time.Sleep(backoff)
				continue
			}
			dr.wait(0)
			return fmt.Errorf("transparent proxy: accepting: %w", err)
		}
		backoff = 0
		if !p.fromInside(c, transparentListener) {
			c.Close()
			continue
		}
		pol := p.cfg.Policy()
		if !p.acquire(pol) {
			p.record(context.Background(), &connRecord{listener: transparentListener, client: remoteAddrPort(c), start: time.Now(), refusal: RefusedBusy})
			c.Close()
			continue
		}
		dr.add()
		go func() {
			defer dr.done()
			defer p.release()
			p.handleTransparent(dr.hard, c, pol)
		}()
	}
	dr.wait(p.cfg.DrainTimeout)
	return nil
}

// retryableAccept reports accept errors worth retrying: running out of
// file descriptors must not stop the listener for good.
func retryableAccept(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS)
}

func (p *Proxy) handleTransparent(ctx context.Context, c net.Conn, pol *policy.Policy) {
	rec := &connRecord{listener: transparentListener, client: remoteAddrPort(c), start: time.Now()}
	defer func() { p.record(context.Background(), rec) }()
	closeClient := true
	defer func() {
		if closeClient {
			c.Close()
		}
	}()
	tc, ok := c.(*net.TCPConn)
	if !ok {
		rec.fail(refuse(RefusedOrigDst, errors.New("not a TCP connection")))
		return
	}
	if pol == nil {
		rec.fail(refuse(RefusedNoPolicy, nil))
		return
	}
	orig, err := p.origDst(tc)
	if err != nil {
		rec.fail(refuse(RefusedOrigDst, err))
		return
	}
	orig = netip.AddrPortFrom(netaddr.Unmap(orig.Addr()), orig.Port())
	rec.target = Target{Addr: orig.Addr(), Port: orig.Port()}

	// The first bytes are read into a pooled buffer, given back once
	// they are upstream (or, for plain HTTP, once the request is done).
	bp := headBufs.Get().(*[]byte)
	defer func() {
		if bp != nil {
			headBufs.Put(bp)
		}
	}()
	in, rerr := p.peekFirst(newHeadReader(tc), (*bp)[:0], orig, pol, false, RefusedSpoofed)
	rec.sni, rec.ech = in.sent, in.ech
	if in.target.Name != "" || in.target.Addr.IsValid() {
		rec.target = in.target
	}
	if rerr != nil {
		rec.fail(rerr)
		return
	}
	t := in.target
	var cr *clientReader
	var req *http.Request
	if in.http {
		cr = &clientReader{c: tc}
		var err error
		if req, err = readRequest(in.raw, cr); err != nil {
			rec.fail(refuse(RefusedBadRequest, err))
			return
		}
		// net/http parsed the head again: it must read the same host and
		// port as the peek that was decided, or the server could too.
		if !sameHost(req.Host, t, in.hostPort) {
			rec.fail(refuse(RefusedBadRequest, fmt.Errorf("the request head reads as Host %q to net/http", req.Host)))
			return
		}
	}

	q := policy.Query{Source: rec.client.Addr().Unmap(), Port: t.Port, Proto: policy.TCP}
	if t.Name != "" {
		q.Name = string(t.Name)
	} else {
		q.Addr = t.Addr
	}
	d := pol.Decide(q)
	rec.decision = d
	if !d.Action.Permits() {
		rec.refusal = RefusedPolicy
		return
	}
	if rerr := checkClientTLS(&in, d); rerr != nil {
		rec.fail(rerr)
		return
	}

	// Anti-spoofing: the client chose the address, we only trust the name
	// if our own resolution of it includes that address. Otherwise a client
	// could send an allowed SNI to any server it likes.
	if t.Name != "" {
		rctx, cancel := context.WithTimeout(ctx, connectTimeout(pol))
		res, err := p.cfg.Resolver.LookupNetIP(rctx, string(t.Name))
		cancel()
		if err != nil {
			rec.fail(refuse(RefusedResolve, err))
			return
		}
		if !containsAddr(res, orig.Addr()) {
			rec.fail(refuse(RefusedSpoofed, fmt.Errorf("%s does not resolve to %s", t.Name, orig.Addr())))
			p.log.Warn("possible SNI/Host spoofing", "client", rec.client, "name", t.Name, "dst", orig)
			return
		}
	}
	addrs, rerr := p.filter(pol, []netip.Addr{orig.Addr()}, orig.Port())
	if rerr != nil {
		rec.fail(rerr)
		return
	}
	up, ap, rerr := p.dialVerified(ctx, pol, d, t, addrs)
	rec.dialled = ap
	if rerr != nil {
		rec.fail(rerr)
		return
	}
	if req != nil {
		closeClient = false
		rec.ensureID(p.ids)
		p.forwardHTTP(ctx, tc, cr, req, up, idleTimeout(pol), rec)
		return
	}
	_, err = up.Write(in.raw)
	headBufs.Put(bp)
	bp = nil
	if err != nil {
		up.Close()
		rec.fail(refuse(RefusedDial, err))
		return
	}
	rec.up.Add(int64(len(in.raw)))
	p.metrics.carried(true, int64(len(in.raw)))
	closeClient = false
	p.opened(ctx, rec)
	rec.ended = p.tunnel(ctx, tc, up, idleTimeout(pol), &rec.up, &rec.down)
}

func containsAddr(list []netip.Addr, a netip.Addr) bool {
	for _, b := range list {
		if netaddr.Unmap(b) == a {
			return true
		}
	}
	return false
}

// sameHost reports whether the authority hp names t on port (80 when hp
// has none).
func sameHost(hp string, t Target, port uint16) bool {
	host, ps, hasPort, err := splitAuthority(hp)
	if err != nil {
		return false
	}
	got, err := parseHost(host)
	if err != nil || got.Name != t.Name || got.Addr != t.Addr {
		return false
	}
	if !hasPort {
		return port == 80
	}
	n, err := strconv.ParseUint(ps, 10, 16)
	return err == nil && uint16(n) == port
}
