package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// Refusal is why the proxy did not carry a connection through, beyond the
// policy decision itself. Checks that protect the network (private
// addresses, fqdngate's own listeners, spoofed SNI, certificates) are
// enforced in audit mode too: audit mode relaxes the policy, not the
// proxy's safety.
type Refusal uint8

const (
	NotRefused         Refusal = iota
	RefusedPolicy              // the policy denied; Decision.Reason says why
	RefusedPrivate             // every address of the destination is private
	RefusedSelf                // the destination is fqdngate's own listener
	RefusedSpoofed             // transparent: the original destination is not an address of the SNI/Host name
	RefusedNoSNI               // TLS without SNI, or with ECH while dns.strip_ech is off
	RefusedTLSVersion          // the client offers no TLS version the rule accepts
	RefusedVerify              // the upstream certificate failed verification
	RefusedPlainHTTP           // the rule requires verified TLS, and plain HTTP cannot be verified
	RefusedResolve             // the name did not resolve
	RefusedDial                // connecting upstream failed
	RefusedDialTimeout         // connecting upstream timed out
	RefusedBusy                // max_conns reached
	RefusedBadRequest          // the request could not be parsed
	RefusedAuth                // proxy credentials missing or wrong
	RefusedNoPolicy            // no policy is loaded
	RefusedOrigDst             // the original destination could not be read
	RefusedProtocol            // a connection's first bytes are neither TLS nor HTTP
	RefusedLocal               // the destination is an address of this host
	RefusedFronted             // a CONNECT tunnel's first bytes ask for another name than the one allowed
)

var refusalText = [...]string{
	NotRefused:         "",
	RefusedPolicy:      "denied by policy",
	RefusedPrivate:     "destination resolves only to private addresses",
	RefusedSelf:        "destination is fqdngate itself",
	RefusedSpoofed:     "original destination is not an address of the requested name",
	RefusedNoSNI:       "TLS without server name",
	RefusedTLSVersion:  "client offers no TLS version the rule accepts",
	RefusedVerify:      "upstream certificate verification failed",
	RefusedPlainHTTP:   "rule requires verified TLS; use CONNECT",
	RefusedResolve:     "destination name did not resolve",
	RefusedDial:        "upstream connection failed",
	RefusedDialTimeout: "upstream connection timed out",
	RefusedBusy:        "too many connections",
	RefusedBadRequest:  "bad request",
	RefusedAuth:        "proxy authentication required",
	RefusedNoPolicy:    "no policy loaded",
	RefusedOrigDst:     "original destination unknown",
	RefusedProtocol:    "neither TLS nor HTTP",
	RefusedLocal:       "destination is an address of this host",
	RefusedFronted:     "tunnel carries another name",
}

func (r Refusal) String() string {
	if int(r) < len(refusalText) {
		return refusalText[r]
	}
	return "unknown"
}

// refusalLabel is each Refusal's value of the reason label of
// fqdngate_proxy_refusals_total: short snake_case, where String is the
// human text of the audit line.
var refusalLabel = [...]string{
	NotRefused:         "",
	RefusedPolicy:      "policy",
	RefusedPrivate:     "private",
	RefusedSelf:        "self",
	RefusedSpoofed:     "spoofed",
	RefusedNoSNI:       "no_sni",
	RefusedTLSVersion:  "tls_version",
	RefusedVerify:      "verify",
	RefusedPlainHTTP:   "plain_http",
	RefusedResolve:     "resolve",
	RefusedDial:        "dial",
	RefusedDialTimeout: "dial_timeout",
	RefusedBusy:        "busy",
	RefusedBadRequest:  "bad_request",
	RefusedAuth:        "auth",
	RefusedNoPolicy:    "no_policy",
	RefusedOrigDst:     "orig_dst",
	RefusedProtocol:    "protocol",
	RefusedLocal:       "local",
	RefusedFronted:     "fronted",
}

// Label is r as a metric label value.
func (r Refusal) Label() string {
	if int(r) < len(refusalLabel) {
		return refusalLabel[r]
	}
	return "unknown"
}

// reason is the policy.Reason the audit line carries for r, so its
// "reason" says what happened rather than what the policy would have said.
// RefusedPolicy keeps the policy's own reason and is not asked.
func (r Refusal) reason() policy.Reason {
	switch r {
	case RefusedPrivate:
		return policy.ReasonPrivate
	case RefusedSelf:
		return policy.ReasonSelf
	case RefusedLocal:
		return policy.ReasonLocal
	case RefusedSpoofed:
		return policy.ReasonSpoofed
	case RefusedNoSNI:
		return policy.ReasonNoSNI
	case RefusedTLSVersion:
		return policy.ReasonTLSVersion
	case RefusedVerify, RefusedPlainHTTP:
		// Plain HTTP under tls.verify is refused because it cannot be
		// verified; the refused attribute tells the two apart.
		return policy.ReasonVerify
	case RefusedResolve, RefusedDial, RefusedDialTimeout:
		return policy.ReasonUpstream
	case RefusedBusy:
		return policy.ReasonBusy
	case RefusedBadRequest, RefusedProtocol:
		return policy.ReasonBadRequest
	case RefusedAuth:
		return policy.ReasonAuth
	case RefusedFronted:
		return policy.ReasonFronted
	}
	// RefusedNoPolicy, RefusedOrigDst: no decision was made, because there
	// was no policy or no destination.
	return policy.ReasonUndecided
}

// status is the HTTP status an explicit client sees for r.
func (r Refusal) status() int {
	switch r {
	case RefusedVerify, RefusedResolve, RefusedDial:
		return http.StatusBadGateway
	case RefusedDialTimeout:
		return http.StatusGatewayTimeout
	case RefusedBusy, RefusedNoPolicy:
		return http.StatusServiceUnavailable
	case RefusedBadRequest:
		return http.StatusBadRequest
	case RefusedAuth:
		return http.StatusProxyAuthRequired
	}
	return http.StatusForbidden
}

// refusalError carries a Refusal and the underlying detail.
type refusalError struct {
	r   Refusal
	err error
}

func (e *refusalError) Error() string {
	if e.err == nil {
		return e.r.String()
	}
	return e.r.String() + ": " + e.err.Error()
}

func (e *refusalError) Unwrap() error { return e.err }

func refuse(r Refusal, err error) *refusalError { return &refusalError{r, err} }

// Listener names for the audit line.
const (
	explicitListener    = "explicit"
	transparentListener = "transparent"
)

// connRecord accumulates what the audit lines of a connection say: one
// line for a refusal or a forwarded request; for a tunnel, one when it
// opens and one when it ends.
type connRecord struct {
	listener string
	client   netip.AddrPort
	user     string
	target   Target
	sni      string // the name the first bytes asked for (SNI or Host), as sent
	ech      bool   // the ClientHello carried ECH; sni is its outer name
	decision policy.Decision
	refusal  Refusal
	detail   string
	dialled  netip.AddrPort
	start    time.Time
	up, down atomic.Int64
	id       string   // the connection's id, once it has one
	conn     *connID  // the client connection's id, for requests kept alive on it; nil: none
	opened   bool     // the opening line is written: the last line is the closing one
	ended    endCause // how a tunnel ended

	// The addresses as written in the first line, for a tunnel's second.
	clientStr, dialledStr string
}

func (c *connRecord) clientString() string {
	if c.clientStr == "" {
		c.clientStr = c.client.String()
	}
	return c.clientStr
}

func (c *connRecord) fail(e *refusalError) {
	c.refusal = e.r
	if e.err != nil {
		c.detail = e.err.Error()
	}
}

// action is the audit line's action for a connection the proxy refused
// with r: fail when it could not carry out what it would have allowed (the
// name did not resolve, the upstream could not be reached, max_conns),
// deny for every other refusal. Audit mode changes neither.
func (r Refusal) action() policy.Action {
	switch r {
	case RefusedResolve, RefusedDial, RefusedDialTimeout, RefusedBusy:
		return policy.Fail
	}
	return policy.Deny
}

// connIDs issues connection ids: a random prefix drawn once per process,
// so that ids of different runs never meet in one log, then a counter.
type connIDs struct {
	prefix [9]byte // 8 hex digits and '-'
	n      atomic.Uint64
}

func newConnIDs() *connIDs {
	ids := &connIDs{}
	var r [4]byte
	rand.Read(r[:])
	hex.Encode(ids.prefix[:8], r[:])
	ids.prefix[8] = '-'
	return ids
}

func (ids *connIDs) next() string {
	var b [32]byte
	return string(strconv.AppendUint(append(b[:0], ids.prefix[:]...), ids.n.Add(1), 10))
}

// connID is the id of an explicit client connection, which may carry
// several requests: drawn when the connection first needs one (its first
// forwarded request or tunnel), so that every line of the connection from
// then on carries it. A connection's requests come one after another, so
// it needs no lock.
type connID struct{ id string }

// ensureID gives c an id: its connection's, or a fresh one.
func (c *connRecord) ensureID(ids *connIDs) {
	switch {
	case c.id != "":
	case c.conn == nil:
		c.id = ids.next()
	default:
		if c.conn.id == "" {
			c.conn.id = ids.next()
		}
		c.id = c.conn.id
	}
}

// lineID is the id a line of c carries: its own, or its connection's if
// the connection has one already (a refusal after a forwarded request).
func (c *connRecord) lineID() string {
	if c.id == "" && c.conn != nil {
		return c.conn.id
	}
	return c.id
}

// opened writes the line of a tunnel about to carry traffic: the decision
// that allowed it, under the connection's id, which the closing line
// (record) repeats, so a long tunnel is in the log while it is open.
func (p *Proxy) opened(ctx context.Context, c *connRecord) {
	c.ensureID(p.ids)
	c.opened = true
	p.write(ctx, c, lineOpened)
}

// Kinds of audit line.
const (
	lineOnly   = iota // the one line of a refusal or a forwarded request
	lineOpened        // a tunnel opens
	lineClosed        // a tunnel ends
)

// record writes the line a connection ends with: its only line, or, for a
// tunnel whose opening was written, its totals and how it ended.
func (p *Proxy) record(ctx context.Context, c *connRecord) {
	if c.opened {
		p.write(ctx, c, lineClosed)
		return
	}
	p.write(ctx, c, lineOnly)
}

// write writes one audit line of c and, unless it closes a tunnel,
// counts the decision. A connection the proxy refused is a deny whatever
// the policy said, with the refusal's own reason. A deny names no rule: a
// rule that had allowed the connection moves to near_rule, so the reader
// sees which rule the refusal overrode without mistaking it for the rule
// that let the traffic through.
func (p *Proxy) write(ctx context.Context, c *connRecord, kind int) {
	d := c.decision
	if c.refusal != NotRefused && c.refusal != RefusedPolicy {
		if d.Rule != nil {
			d.NearRule = d.Rule
		}
		d.Action, d.Reason, d.Rule = c.refusal.action(), c.refusal.reason(), nil
	}
	attrs := make([]slog.Attr, 0, 14) // every attribute below: one allocation
	attrs = append(attrs,
		slog.String("listener", c.listener),
		slog.String("client", c.clientString()),
	)
	if id := c.lineID(); id != "" {
		attrs = append(attrs, slog.String("conn", id))
	}
	if c.user != "" {
		attrs = append(attrs, slog.String("user", c.user))
	}
	if c.sni != "" {
		attrs = append(attrs, slog.String("sni", c.sni))
	}
	if c.ech {
		attrs = append(attrs, slog.Bool("ech", true))
	}
	if c.dialled.IsValid() {
		if c.dialledStr == "" {
			c.dialledStr = c.dialled.String()
		}
		attrs = append(attrs, slog.String("dialled", c.dialledStr))
	}
	if d.NearRule != nil {
		attrs = append(attrs, slog.String("near_rule", d.NearRule.Name))
	}
	if c.refusal != NotRefused {
		attrs = append(attrs, slog.String("refused", c.refusal.String()))
	}
	if c.detail != "" {
		attrs = append(attrs, slog.String("error", c.detail))
	}
	now := time.Now() // one clock reading for the duration and the line
	if kind == lineClosed {
		attrs = append(attrs, slog.String("ended", c.ended.String()))
	}
	if kind != lineOpened {
		attrs = append(attrs,
			slog.Int64("bytes_up", c.up.Load()),
			slog.Int64("bytes_down", c.down.Load()),
			slog.Duration("duration", now.Sub(c.start)),
		)
	}
	p.cfg.Audit.Record(ctx, audit.Event{
		Component: audit.Proxy,
		Source:    c.client.Addr().Unmap(),
		Name:      c.target.Host(),
		Port:      c.target.Port,
		Decision:  d,
		Attrs:     attrs,
		Time:      now,
		Closed:    kind == lineClosed,
	})
	if kind != lineClosed {
		p.metrics.connection(c.listener, d, c.refusal)
	}
}
