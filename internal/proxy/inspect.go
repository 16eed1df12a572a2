package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/fqdngate/fqdngate/internal/netaddr"
	"github.com/fqdngate/fqdngate/internal/peek"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// A connection's first bytes are read here, for both listeners: the
// transparent listener decides a connection by the name they ask for, and
// a CONNECT tunnel, decided by the name in the CONNECT line, must carry
// that name (or another of the same rule's at the same address), so that a
// client cannot reach any site of a shared CDN address through an allowed
// one (domain fronting).

// peeked is what the first bytes of a connection said.
type peeked struct {
	target     Target // the name (or address) asked for, on the port connected to
	sent       string // the name as the client sent it, for the audit line
	tls        bool   // a ClientHello was read
	http       bool   // an HTTP request head was read
	ech        bool   // the ClientHello carries ECH (or ESNI)
	maxVersion uint16
	hostPort   uint16 // HTTP: the Host's port, 80 when it has none
	raw        []byte // every byte read, to replay upstream
}

// peekFirst reads the first message a client sends to dst: a TLS
// ClientHello or an HTTP/1.x request head (anything else is refused). r
// reads c under one deadline, PeekTimeout from now, armed only if a read
// must wait: a client trickling a byte a second, or sending nothing, is
// cut off, and holds no one else up. buf holds the bytes already read (a
// tunnel's early bytes) and lends its capacity to the read; the bytes read
// are returned in the peeked value, buf's included.
//
// What the bytes ask for is a name, or dst's address when they show none
// that could be checked: a hello without SNI, or with an encrypted name
// (ESNI, or ECH while dns.strip_ech is off), which proxy.allow_no_sni must
// allow unless byAddr says dst's address was itself what the connection
// was decided by (a CONNECT to an address). An HTTP Host must name dst's
// port (80 if it names none) and, when it is an address, dst's address;
// otherwise the bytes ask for another destination, refused as mismatch.
func (p *Proxy) peekFirst(r *headReader, buf []byte, dst netip.AddrPort, pol *policy.Policy, byAddr bool, mismatch Refusal) (peeked, *refusalError) {
	var out peeked
	out.target.Port = dst.Port()
	r.deadline = time.Now().Add(p.cfg.PeekTimeout)
	first, raw, err := peek.ReadFirst(r, buf, p.cfg.MaxHeaderBytes)
	r.disarm()
	out.raw = raw
	if err != nil {
		switch first.Protocol {
		case peek.TLS:
			return out, refuse(RefusedBadRequest, fmt.Errorf("reading the ClientHello: %w", err))
		case peek.HTTP:
			return out, refuse(RefusedBadRequest, fmt.Errorf("reading the HTTP request head: %w", err))
		}
		if errors.Is(err, peek.ErrUnknown) {
			return out, refuse(RefusedProtocol, errors.Unwrap(err))
		}
		return out, refuse(RefusedBadRequest, err)
	}
	if first.Protocol == peek.TLS {
		hello := first.Hello
		out.tls = true
		out.maxVersion = hello.MaxVersion()
		out.sent = string(hello.ServerName)
		out.ech = hello.ECH || hello.ESNI
		switch {
		case hello.ServerName == "":
			if !pol.Proxy.AllowNoSNI && !byAddr {
				return out, refuse(RefusedNoSNI, nil)
			}
			out.target.Addr = dst.Addr()
		case hello.ESNI || (hello.ECH && !pol.DNS.StripECH):
			if !pol.Proxy.AllowNoSNI && !byAddr {
				return out, refuse(RefusedNoSNI, errors.New("the ClientHello carries an encrypted server name and dns.strip_ech is off; the real server name may be hidden"))
			}
			out.target.Addr = dst.Addr()
		default:
			// An ECH extension alone does not deny while dns.strip_ech is
			// on. Chrome and Firefox send GREASE ECH on every connection,
			// byte for byte like the real thing, so refusing it would
			// refuse every browser. Real ECH needs an ECHConfig, which a
			// client only gets from HTTPS/SVCB records; fqdngate strips
			// them from every answer it gives, and default deny blocks
			// every other resolver. So the outer name is the name the
			// client talks to, and it decides, anti-spoofing included:
			// the destination must be one of its addresses. What remains
			// (an ECHConfig obtained out of band) reaches at most the
			// servers of an allowed name. ESNI has no GREASE form, so it
			// is still refused.
			out.target.Name = hello.ServerName
		}
		return out, nil
	}
	out.http = true
	out.sent = first.Host
	t, err := parseHost(first.Host)
	if err != nil {
		return out, refuse(RefusedBadRequest, err)
	}
	if t.Addr.IsValid() && netaddr.Unmap(t.Addr) != dst.Addr() {
		return out, refuse(mismatch, fmt.Errorf("Host %s is not the destination %s", t.Addr, dst.Addr()))
	}
	out.target.Name, out.target.Addr = t.Name, t.Addr
	// The server reads the port from Host too (absolute URLs it builds,
	// virtual hosts by port): a Host naming another port than the one
	// connected to is a request for another service.
	out.hostPort = 80
	if first.Port != "" {
		n, err := strconv.ParseUint(first.Port, 10, 16)
		if err != nil {
			return out, refuse(RefusedBadRequest, fmt.Errorf("Host port %q: %w", first.Port, err))
		}
		out.hostPort = uint16(n)
	}
	if out.hostPort != dst.Port() {
		return out, refuse(mismatch, fmt.Errorf("Host port %d is not the destination port %d", out.hostPort, dst.Port()))
	}
	return out, nil
}

// checkClientTLS applies a rule's tls.min_version to the versions a client
// offers, and refuses plain HTTP to a rule that requires verified TLS: the
// checks of a connection's first bytes that depend on the rule allowing it.
func checkClientTLS(in *peeked, d policy.Decision) *refusalError {
	if in.tls {
		minV := uint16(tls.VersionTLS12)
		if d.Rule != nil && d.Rule.TLS != nil && d.Rule.TLS.MinVersion != 0 {
			minV = d.Rule.TLS.MinVersion
		}
		if in.maxVersion < minV {
			return refuse(RefusedTLSVersion, fmt.Errorf("client offers at most %s, rule needs %s", tls.VersionName(in.maxVersion), tls.VersionName(minV)))
		}
		return nil
	}
	if d.Rule != nil && d.Rule.TLS != nil && d.Rule.TLS.Verify {
		return refuse(RefusedPlainHTTP, nil)
	}
	return nil
}

// inspectTunnel reads the first bytes of a CONNECT tunnel the proxy has
// answered 200 (t decided as d under pol, connected to dialled) and checks
// that they ask for what was allowed:
//
//   - the CONNECT name itself (an HTTP Host with the CONNECT port);
//   - or another name that the same rule allows for the same source, user
//     and port, and that the proxy's own resolver resolves to the address
//     dialled: a client may CONNECT to one name of a CDN and speak to
//     another it could have asked for, but to no name the rule does not
//     cover, and to no other server;
//   - or, when the bytes show no name (no SNI, or ECH under the settings
//     peekFirst follows), the address dialled, which the same rule must
//     allow: for a CONNECT to an address that is what was decided; for a
//     CONNECT to a name it takes a CIDR target of the rule, as on the
//     transparent listener.
//
// Then the rule's tls.min_version applies to the hello. rec gets the name
// seen. The bytes read are returned, to replay upstream, also when the
// tunnel is refused (for the 403 to an HTTP client).
func (p *Proxy) inspectTunnel(ctx context.Context, r *headReader, buf []byte, pol *policy.Policy, d policy.Decision, t Target, dialled netip.AddrPort, rec *connRecord) (peeked, *refusalError) {
	in, rerr := p.peekFirst(r, buf, dialled, pol, t.Addr.IsValid(), RefusedFronted)
	rec.sni, rec.ech = in.sent, in.ech
	if rerr != nil {
		return in, rerr
	}
	q := policy.Query{Source: rec.client.Addr().Unmap(), User: rec.user, Port: t.Port, Proto: policy.TCP}
	switch got := in.target; {
	case got.Name != "" && got.Name == t.Name:
	case got.Name != "":
		q.Name = string(got.Name)
		if !pol.RuleAllows(d.Rule, q) {
			return in, refuse(RefusedFronted, fmt.Errorf("the tunnel to %s asks for another name: %s", t.Host(), notAllowed(d.Rule, string(got.Name))))
		}
		rctx, cancel := context.WithTimeout(ctx, connectTimeout(pol))
		res, err := p.cfg.Resolver.LookupNetIP(rctx, string(got.Name))
		cancel()
		if err != nil {
			return in, refuse(RefusedResolve, fmt.Errorf("the tunnel to %s asks for %s: %w", t.Host(), got.Name, err))
		}
		if !containsAddr(res, dialled.Addr()) {
			return in, refuse(RefusedFronted, fmt.Errorf("the tunnel to %s asks for %s, which does not resolve to %s", t.Host(), got.Name, dialled.Addr()))
		}
	case t.Addr.IsValid():
		// A CONNECT to an address, and bytes that name none (or the same
		// address): what was decided is what is reached.
	default:
		q.Addr = dialled.Addr()
		if !pol.RuleAllows(d.Rule, q) {
			why := "shows no server name"
			if !in.tls {
				why = "asks for an address"
			}
			return in, refuse(RefusedFronted, fmt.Errorf("the tunnel to %s %s: %s", t.Host(), why, notAllowed(d.Rule, "the address "+dialled.Addr().String())))
		}
	}
	return in, checkClientTLS(&in, d)
}

// notAllowed says, for a refusal's detail, that rule r (which allowed
// the CONNECT) does not allow what as well.
func notAllowed(r *policy.Rule, what string) string {
	if r == nil {
		return "only the CONNECT name may pass, which audit mode let through without a rule; not " + what
	}
	return "rule " + r.Name + " does not allow " + what + " for this client and port"
}

// openTunnel does what follows the 200 of a CONNECT, on either path: unless
// the rule has inspect_tunnels: false, the first bytes are inspected
// (inspectTunnel); then they go upstream and the tunnel's opening is
// audited. buf holds the bytes the client sent before the 200 and lends
// its capacity to the peek. It reports whether the tunnel is open and to
// be carried; if not, rec says why and the caller writes it and closes
// both connections, after draining the client (drainClient) when drain
// says it was sent a refusal: an HTTP client gets one, with the reason.
func (p *Proxy) openTunnel(ctx context.Context, c *net.TCPConn, r *headReader, buf []byte, pol *policy.Policy, d policy.Decision, t Target, up *net.TCPConn, rec *connRecord) (open, drain bool) {
	raw := buf
	if d.Rule == nil || !d.Rule.UninspectedTunnels {
		in, rerr := p.inspectTunnel(ctx, r, buf, pol, d, t, rec.dialled, rec)
		if rerr != nil {
			a := failure(rec, rerr)
			if !in.http {
				return false, false
			}
			c.SetWriteDeadline(time.Now().Add(lingerTime))
			_, err := c.Write(appendRefusal(make([]byte, 0, 512), a, true, time.Now()))
			return false, err == nil && c.CloseWrite() == nil
		}
		raw = in.raw
	}
	if len(raw) > 0 {
		if _, err := up.Write(raw); err != nil {
			rec.fail(refuse(RefusedDial, err))
			return false, false
		}
		rec.up.Add(int64(len(raw)))
		p.metrics.carried(true, int64(len(raw)))
	}
	p.opened(ctx, rec)
	return true, false
}

// drainClient reads what a client sent a refusal still sends, for a
// moment, so that closing with unread bytes does not reset the refusal
// away.
func drainClient(c *net.TCPConn) {
	c.SetReadDeadline(time.Now().Add(lingerTime))
	var sink [512]byte
	for {
		if _, err := c.Read(sink[:]); err != nil {
			return
		}
	}
}
