package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	"github.com/fqdngate/fqdngate/internal/netaddr"
	"github.com/fqdngate/fqdngate/internal/peek"
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

	in, rerr := p.peekName(tc, orig, pol)
	rec.sni, rec.ech = in.sent, in.ech
	if in.target.Name != "" || in.target.Addr.IsValid() {
		rec.target = in.target
	}
	if rerr != nil {
		rec.fail(rerr)
		return
	}
	t := in.target

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
	if in.tls {
		minV := uint16(tls.VersionTLS12)
		if d.Rule != nil && d.Rule.TLS != nil && d.Rule.TLS.MinVersion != 0 {
			minV = d.Rule.TLS.MinVersion
		}
		if in.maxVersion < minV {
			rec.fail(refuse(RefusedTLSVersion, fmt.Errorf("client offers at most %s, rule needs %s", tls.VersionName(in.maxVersion), tls.VersionName(minV))))
			return
		}
	} else if d.Rule != nil && d.Rule.TLS != nil && d.Rule.TLS.Verify {
		rec.fail(refuse(RefusedPlainHTTP, nil))
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
	if in.req != nil {
		closeClient = false
		p.forwardHTTP(ctx, tc, in.cr, in.req, up, idleTimeout(pol), rec)
		return
	}
	if _, err := up.Write(in.raw); err != nil {
		up.Close()
		rec.fail(refuse(RefusedDial, err))
		return
	}
	rec.up.Add(int64(len(in.raw)))
	closeClient = false
	p.tunnel(ctx, tc, up, idleTimeout(pol), &rec.up, &rec.down)
}

func containsAddr(list []netip.Addr, a netip.Addr) bool {
	for _, b := range list {
		if netaddr.Unmap(b) == a {
			return true
		}
	}
	return false
}

// peeked is what the first bytes of a transparent connection said.
type peeked struct {
	target     Target // the name (or address) asked for, on the original port
	sent       string // the name as the client sent it, for the audit line
	tls        bool
	ech        bool // the ClientHello carries ECH (or ESNI)
	maxVersion uint16
	raw        []byte // every byte read, to replay upstream (TLS)
	// req is the plain HTTP request, whose body cr reads on; nil for TLS.
	req *http.Request
	cr  *clientReader
}

// peekName reads the ClientHello or HTTP head, bounded in bytes by the peek
// package and in time by PeekTimeout from now: a client trickling a byte a
// second is cut off, and since every connection has its own goroutine and
// deadline, slow clients cannot hold up anyone else.
func (p *Proxy) peekName(c *net.TCPConn, orig netip.AddrPort, pol *policy.Policy) (peeked, *refusalError) {
	var out peeked
	out.target.Port = orig.Port()
	c.SetReadDeadline(time.Now().Add(p.cfg.PeekTimeout))
	defer c.SetReadDeadline(time.Time{})
	var first [1]byte
	if _, err := io.ReadFull(c, first[:]); err != nil {
		return out, refuse(RefusedBadRequest, fmt.Errorf("reading the first byte: %w", err))
	}
	r := io.MultiReader(bytes.NewReader(first[:]), c)
	switch peek.Sniff(first[0]) {
	case peek.TLS:
		out.tls = true
		hello, raw, err := peek.ClientHello(r, p.cfg.MaxHeaderBytes)
		out.raw = raw
		if err != nil {
			return out, refuse(RefusedBadRequest, fmt.Errorf("reading the ClientHello: %w", err))
		}
		out.maxVersion = hello.MaxVersion()
		out.sent = string(hello.ServerName)
		out.ech = hello.ECH || hello.ESNI
		switch {
		case hello.ServerName == "":
			if !pol.Proxy.AllowNoSNI {
				return out, refuse(RefusedNoSNI, nil)
			}
			out.target.Addr = orig.Addr()
		case hello.ESNI || (hello.ECH && !pol.DNS.StripECH):
			if !pol.Proxy.AllowNoSNI {
				return out, refuse(RefusedNoSNI, errors.New("the ClientHello carries an encrypted server name and dns.strip_ech is off; the real server name may be hidden"))
			}
			out.target.Addr = orig.Addr()
		default:
			// An ECH extension alone does not deny while dns.strip_ech is
			// on. Chrome and Firefox send GREASE ECH on every connection,
			// byte for byte like the real thing, so refusing it would
			// refuse every browser. Real ECH needs an ECHConfig, which a
			// client only gets from HTTPS/SVCB records; fqdngate strips
			// them from every answer it gives, and default deny blocks
			// every other resolver. So the outer name is the name the
			// client talks to, and it decides, anti-spoofing included:
			// the original destination must be one of its addresses.
			// What remains (an ECHConfig obtained out of band) reaches at
			// most the servers of an allowed name. ESNI has no GREASE
			// form, so it is still refused.
			out.target.Name = hello.ServerName
		}
	case peek.HTTP:
		host, port, raw, err := peek.HTTPHost(r, p.cfg.MaxHeaderBytes)
		out.raw = raw
		if err != nil {
			return out, refuse(RefusedBadRequest, fmt.Errorf("reading the HTTP request head: %w", err))
		}
		out.sent = host
		t, err := parseHost(host)
		if err != nil {
			return out, refuse(RefusedBadRequest, err)
		}
		if t.Addr.IsValid() && netaddr.Unmap(t.Addr) != orig.Addr() {
			return out, refuse(RefusedSpoofed, fmt.Errorf("Host %s is not the original destination %s", t.Addr, orig.Addr()))
		}
		out.target.Name, out.target.Addr = t.Name, t.Addr
		// The server reads the port from Host too (absolute URLs it
		// builds, virtual hosts by port): a Host naming another port than
		// the one connected to is a request for another service.
		hostPort := uint16(80)
		if port != "" {
			n, err := strconv.ParseUint(port, 10, 16)
			if err != nil {
				return out, refuse(RefusedBadRequest, fmt.Errorf("Host port %q: %w", port, err))
			}
			hostPort = uint16(n)
		}
		if hostPort != orig.Port() {
			return out, refuse(RefusedSpoofed, fmt.Errorf("Host port %d is not the original destination port %d", hostPort, orig.Port()))
		}
		cr := &clientReader{c: c}
		req, err := readRequest(raw, cr)
		if err != nil {
			return out, refuse(RefusedBadRequest, err)
		}
		// net/http parsed the head again: it must read the same host and
		// port as the peek that was decided, or the server could too.
		if !sameHost(req.Host, t, hostPort) {
			return out, refuse(RefusedBadRequest, fmt.Errorf("the request head reads as Host %q to net/http", req.Host))
		}
		out.req, out.cr = req, cr
	default:
		return out, refuse(RefusedProtocol, fmt.Errorf("first byte %#02x", first[0]))
	}
	return out, nil
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
