// Package proxy is fqdngate's egress proxy: explicit (CONNECT and
// absolute-form HTTP) and transparent listeners that decide every connection
// by the policy, dial only checked addresses, and write one audit line per
// proxied connection.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/netaddr"
	"github.com/fqdngate/fqdngate/internal/origdst"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// Resolver resolves a host name to addresses. In production it is the DNS
// firewall's own resolution path (cache, rebinding protection), so the proxy
// and the kernel path agree on what a name means.
type Resolver interface {
	LookupNetIP(ctx context.Context, host string) ([]netip.Addr, error)
}

// Config configures a Proxy. Policy and Resolver are required.
type Config struct {
	// Policy returns the policy in force. It is called once per connection
	// (once per request for forwarded HTTP), so a reload applies to the next
	// connection and never changes one half-way. A nil policy refuses
	// everything with 503.
	Policy func() *policy.Policy
	// Resolver resolves destination names.
	Resolver Resolver
	// Audit receives one event per proxied connection. If nil, decisions
	// are not recorded.
	Audit *audit.Logger
	// Logger receives operational messages (accept errors, shutdown). If
	// nil, they are discarded.
	Logger *slog.Logger
	// Registerer receives the proxy's metrics. If nil, metrics are kept but
	// not registered.
	Registerer prometheus.Registerer
	// Self lists fqdngate's own listeners. The proxy never connects to them:
	// a client could otherwise reach the admin API, or loop through the
	// proxy to launder its source address. Listeners passed to Serve and
	// ServeTransparent are added automatically.
	Self []netip.AddrPort
	// Local is the set of this host's own addresses, kept current as they
	// come and go (*localaddr.Set). The proxy never dials one unless a CIDR
	// rule names it, whatever proxy.deny_private says: it would reach the
	// gateway's own services. A client at one of them is this host, served
	// like loopback (policy.InsideConn). If nil, only fqdngate's listeners
	// (Self) and, under deny_private, loopback are kept from, and only
	// loopback clients are this host.
	Local netaddr.Host
	// Verifier checks upstream certificates for rules with tls.verify. If
	// nil, a Verifier with default cache bounds is used.
	Verifier *Verifier
	// OriginalDst returns the destination a transparently redirected
	// connection was headed for. If nil, origdst.Get (SO_ORIGINAL_DST).
	// Tests stub it; the anti-spoofing check applies to whatever it returns.
	OriginalDst func(*net.TCPConn) (netip.AddrPort, error)
	// DialContext opens an upstream TCP connection to address, always an
	// IP literal and port that every check has already passed; it must
	// return a *net.TCPConn. If nil, a net.Dialer whose Control marks
	// the socket (sockmark), so fqdngate's own nftables rules let it out.
	// Tests use it to dial from inside a network namespace.
	DialContext func(ctx context.Context, network, address string) (net.Conn, error)

	// HeaderTimeout bounds reading an explicit request head, and
	// PeekTimeout reading a transparent ClientHello or HTTP head: slow
	// clients are cut off. Zero means 10s and 5s.
	HeaderTimeout time.Duration
	PeekTimeout   time.Duration
	// MaxHeaderBytes bounds a request head. Zero means 32 KiB.
	MaxHeaderBytes int
	// DrainTimeout is how long Serve waits, once its context is done, for
	// in-flight tunnels to finish before cutting them. Zero means 30s.
	DrainTimeout time.Duration
}

// Proxy enforces the policy on proxied connections. Create it with New;
// Serve and ServeTransparent may run concurrently on one Proxy.
type Proxy struct {
	cfg       Config
	log       *slog.Logger
	verifier  *Verifier
	auth      *authenticator
	metrics   *metrics
	origDst   func(*net.TCPConn) (netip.AddrPort, error)
	dialer    *net.Dialer   // used when cfg.DialContext is nil
	upstreams upstreamPools // forwarded HTTP's idle upstream connections
	ids       *connIDs      // the audit lines' connection ids

	classes netaddr.Classifier // knows cfg.Local's addresses

	active atomic.Int64 // client connections counted against MaxConns

	// noFastPath sends every explicit connection to net/http, as before
	// the fast path; tests compare the two.
	noFastPath bool
	// onFastConnect, if set, is called for each CONNECT the fast path
	// answers, with its client connection.
	onFastConnect func(net.Conn)
	// onFastForward, if set, is called for each GET or HEAD the fast path
	// forwards, with its client connection.
	onFastForward func(net.Conn)
	// noConnPool sends every forwarded request through http.Transport,
	// as before connPool; tests compare the two.
	noConnPool bool

	mu   sync.Mutex // guards following
	self map[netip.AddrPort]bool
}

// New validates cfg and returns a Proxy.
func New(cfg Config) (*Proxy, error) {
	if cfg.Policy == nil {
		return nil, errors.New("proxy: Config.Policy is required")
	}
	if cfg.Resolver == nil {
		return nil, errors.New("proxy: Config.Resolver is required")
	}
	if cfg.HeaderTimeout <= 0 {
		cfg.HeaderTimeout = 10 * time.Second
	}
	if cfg.PeekTimeout <= 0 {
		cfg.PeekTimeout = 5 * time.Second
	}
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = 32 << 10
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 30 * time.Second
	}
	p := &Proxy{
		cfg:      cfg,
		log:      cfg.Logger,
		verifier: cfg.Verifier,
		auth:     newAuthenticator(time.Now),
		origDst:  cfg.OriginalDst,
		dialer:   newDialer(),
		classes:  netaddr.Classifier{Host: cfg.Local},
		self:     make(map[netip.AddrPort]bool),
		ids:      newConnIDs(),
	}
	p.upstreams.p = p
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.log = p.log.With("component", "proxy")
	if p.verifier == nil {
		p.verifier = NewVerifier(VerifierConfig{})
	}
	if p.origDst == nil {
		p.origDst = origdst.Get
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("proxy: registering metrics: %w", err)
	}
	p.metrics = m
	for _, s := range cfg.Self {
		p.addSelf(s)
	}
	return p, nil
}

// AddSelf adds one of fqdngate's own listeners to those the proxy never
// connects to: the daemon calls it for the listeners it starts after New
// (the actual address of a port-0 listener, a listener a reload moved).
func (p *Proxy) AddSelf(ap netip.AddrPort) { p.addSelf(ap) }

func (p *Proxy) addSelf(ap netip.AddrPort) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.self[netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())] = true
}

func (p *Proxy) addSelfAddr(a net.Addr) {
	if ta, ok := a.(*net.TCPAddr); ok {
		p.addSelf(ta.AddrPort())
	}
}

// isSelf reports whether dialling ap would reach one of fqdngate's own
// listeners. A listener on an unspecified address is reached through any
// local address.
func (p *Proxy) isSelf(ap netip.AddrPort) bool {
	a := ap.Addr().Unmap().WithZone("")
	p.mu.Lock()
	exact := p.self[netip.AddrPortFrom(a, ap.Port())]
	wild := p.self[netip.AddrPortFrom(netip.IPv4Unspecified(), ap.Port())] ||
		p.self[netip.AddrPortFrom(netip.IPv6Unspecified(), ap.Port())]
	p.mu.Unlock()
	if exact {
		return true
	}
	if !wild {
		return false
	}
	if a.IsLoopback() || a.IsUnspecified() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return true // cannot tell: refusing is the safe answer
	}
	for _, ia := range addrs {
		if n, ok := ia.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == a {
				return true
			}
		}
	}
	return false
}

// acquire counts a new client connection; it reports false when the
// policy's max_conns is reached, and the caller must refuse the connection.
func (p *Proxy) acquire(pol *policy.Policy) bool {
	n := p.active.Add(1)
	if pol != nil && pol.Proxy.MaxConns > 0 && n > int64(pol.Proxy.MaxConns) {
		p.active.Add(-1)
		return false
	}
	return true
}

func (p *Proxy) release() { p.active.Add(-1) }

// connectTimeout and idleTimeout apply the policy's values, with defaults
// for a policy that leaves them zero.
func connectTimeout(pol *policy.Policy) time.Duration {
	if pol.Proxy.ConnectTimeout > 0 {
		return pol.Proxy.ConnectTimeout
	}
	return 10 * time.Second
}

func idleTimeout(pol *policy.Policy) time.Duration {
	if pol.Proxy.IdleTimeout > 0 {
		return pol.Proxy.IdleTimeout
	}
	return 5 * time.Minute
}

// drainer lets in-flight tunnels finish after shutdown starts, up to a
// deadline, then cuts them. Unlike a WaitGroup, work may start while wait
// is waiting (a request hijacked just as shutdown began): it sees hard
// already done and ends at once.
type drainer struct {
	hard context.Context // done at the drain deadline
	cut  context.CancelFunc

	mu   sync.Mutex // guards following
	n    int
	zero chan struct{} // closed when n drops to 0 while wait waits
}

func newDrainer() *drainer {
	ctx, cancel := context.WithCancel(context.Background())
	return &drainer{hard: ctx, cut: cancel}
}

func (d *drainer) add() {
	d.mu.Lock()
	d.n++
	d.mu.Unlock()
}

func (d *drainer) done() {
	d.mu.Lock()
	d.n--
	if d.n == 0 && d.zero != nil {
		close(d.zero)
		d.zero = nil
	}
	d.mu.Unlock()
}

// wait waits for tracked work, cutting it when timeout passes.
func (d *drainer) wait(timeout time.Duration) {
	t := time.AfterFunc(timeout, d.cut)
	defer t.Stop()
	defer d.cut()
	d.mu.Lock()
	if d.n == 0 {
		d.mu.Unlock()
		return
	}
	ch := make(chan struct{})
	d.zero = ch
	d.mu.Unlock()
	<-ch
}
