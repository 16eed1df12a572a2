// Package dnsfw is fqdngate's DNS firewall: it answers the queries the
// policy allows by forwarding them upstream, refuses the rest, and publishes
// the addresses in every allowed answer before the client sees it.
//
// One query, in order:
//
//	validate ─▶ admit (source, rate limit, forward zone | Decide(source, name), record type) ─▶ cache | upstream + DNSSEC
//	   ─▶ inspect answer (rebinding, ECH, TTLs) ─▶ release (dnssec: required, CNAME chain, tls.verify)
//	   ─▶ publish learned ─▶ reply ─▶ audit
//
// The policy is checked on every query before the cache is consulted, so a
// cached answer never outlives the rule that allowed it, and a denied query
// is never sent upstream. A name in a forward zone (dns.forward) is
// admitted without a rule, sent to the zone's servers and relayed as they
// answer it: nothing in it is inspected or learned. admit and release (admit.go) make these
// decisions for the ordinary path and the fast path alike.
package dnsfw

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/dnscache"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/netaddr"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/resolver"
)

// Exchanger sends a query upstream and returns the answer and the upstream
// that gave it. Exchange must return in bounded time whatever the
// upstreams do: the firewall sets no timer of its own. *resolver.Resolver
// is one (each attempt bounded by dns.timeout, at most three upstreams).
type Exchanger interface {
	Exchange(ctx context.Context, m *dns.Msg) (*dns.Msg, policy.Upstream, error)
}

// Forwarder sends a query for a name in a forward zone (dns.forward) to the
// zone's servers, with the same bounds as an Exchanger.
// *resolver.Zones is one.
type Forwarder interface {
	Forward(ctx context.Context, z *policy.ForwardZone, m *dns.Msg) (*dns.Msg, policy.Upstream, error)
}

// Config wires a Firewall. Policy and Exchanger are required.
type Config struct {
	// Policy returns the policy in force. It is called once per query, so
	// a reload (an atomic swap behind this func) never splits one query
	// between two policies.
	Policy func() *policy.Policy
	// Exchanger forwards allowed queries upstream.
	Exchanger Exchanger
	// Forwarder sends queries for names in the policy's forward zones
	// (dns.forward) to the zones' servers. If nil, such queries fail
	// (SERVFAIL): they never go to the Exchanger's upstreams.
	Forwarder Forwarder
	// Cache holds upstream answers while Policy().DNS.Cache is on. If nil,
	// New makes a dnscache.Cache of Policy().DNS.CacheSize entries.
	Cache Cache
	// Publisher receives learned addresses before the client sees them. If
	// nil, they go to an in-memory learn.Store (backend none), which
	// Learned returns.
	Publisher learn.Publisher
	// Audit receives one decision per query. If nil, decisions are not
	// logged (they are still counted in Metrics).
	Audit *audit.Logger
	// Logger receives operational messages (failures to publish, serve).
	// If nil, they are discarded.
	Logger *slog.Logger
	// Metrics receive the firewall's series. If nil, New makes them and
	// registers them with Registerer.
	Metrics *Metrics
	// Registerer is where New registers Metrics it makes. If nil, they are
	// kept but not registered.
	Registerer prometheus.Registerer
	// IsBusy reports whether an Exchanger error means "too many queries in
	// flight", which is answered REFUSED rather than SERVFAIL so clients
	// back off rather than fail over. If nil, errors.Is(err,
	// resolver.ErrBusy).
	IsBusy func(error) bool
	// PublishTimeout bounds one Publish; the client gets SERVFAIL when it
	// runs out. If zero, 2s.
	PublishTimeout time.Duration
	// Verify checks that addr serves on port a certificate for name that
	// meets t: the handshake the proxy makes before it relays a client,
	// (*proxy.Verifier).Verify. When the rule that allows an answer has
	// tls.verify, every address of the answer (and of a refresh) is
	// verified before it is published or reaches the client, on the
	// rule's 443/tcp, else its first TCP port; addresses that fail are
	// removed from both, and the answer is SERVFAIL when none is left. In
	// audit mode failures are only logged. Verify is called concurrently,
	// within PublishTimeout, on every such answer, cached ones included, so
	// it should cache its results (proxy.Verifier does). If nil, nothing is
	// verified: right for backend none, where nothing but the proxy, which
	// verifies each connection itself, can reach the addresses; with
	// nftables it lets a poisoned answer open a kernel path the proxy
	// would refuse.
	Verify func(ctx context.Context, name string, addr netip.Addr, port uint16, t *policy.TLS) error
	// Local is the set of this host's own addresses, kept current as they
	// come and go (*localaddr.Set). Rebinding protection removes them from
	// answers as it removes loopback, and a query from one of them is this
	// host's own, served like loopback's (policy.InsideConn). If nil, only
	// loopback is either.
	Local HostAddrs
	// Now is the clock. If nil, time.Now.
	Now func() time.Time
	// RefreshLeader, if not nil, says whether this gateway runs the
	// refresh timers now: in a fleet one gateway re-resolves for all, and
	// the others receive the addresses through the fleet. Nil: always.
	RefreshLeader func() bool
}

// HostAddrs is the set of this host's own addresses.
type HostAddrs interface {
	Contains(netip.Addr) bool
	// Version changes whenever the set does.
	Version() uint64
}

// Firewall is the DNS firewall. It is safe for concurrent use; one
// Firewall may serve any number of sockets.
type Firewall struct {
	policy     func() *policy.Policy
	exchanger  Exchanger
	forwarder  Forwarder // nil: forward zones fail
	cache      Cache
	wcache     *dnscache.Cache // cache, when it is one: the fast path's
	drops      DropCounter     // publisher, when it is one
	fastHits   atomic.Uint64   // answers the fast path sent
	handovers  atomic.Uint64   // queries the fast path admitted and handed to the ordinary path
	polEpoch   atomic.Pointer[policyEpoch]
	publisher  learn.Publisher
	store      *learn.Store // the publisher when Config.Publisher was nil
	audit      *audit.Logger
	log        *slog.Logger
	metrics    *Metrics
	isBusy     func(error) bool
	pubTimeout time.Duration
	now        func() time.Time
	verify     func(context.Context, string, netip.Addr, uint16, *policy.TLS) error
	limiter    *limiter
	budgets    *budgets
	local      HostAddrs          // nil: none known
	classes    netaddr.Classifier // knows local's addresses
	bufs       bufPool
	flight     verifyFlights
	vals       validators // dns.dnssec: validate
	// refreshLeader, if not nil, says whether RunRefresh resolves now
	// (Config.RefreshLeader).
	refreshLeader func() bool
	// refreshTick is how often RunRefresh reads the policy and looks for
	// names due; tests shorten it.
	refreshTick time.Duration
	// udpSessions serves every UDP socket as a wildcard one (IP_PKTINFO),
	// so tests reach that path on loopback.
	udpSessions bool
	// noBatch reads and writes UDP one datagram per system call, so tests
	// reach that path on a socket bound to one address.
	noBatch bool
	// noFast sends every UDP query the ordinary way, so tests can hold the
	// fast path's replies to the ordinary path's.
	noFast bool
}

// New returns a Firewall for c.
func New(c Config) (*Firewall, error) {
	if c.Policy == nil {
		return nil, errors.New("dnsfw: Config.Policy is nil; pass the daemon's current-policy func")
	}
	if c.Exchanger == nil {
		return nil, errors.New("dnsfw: Config.Exchanger is nil; pass the resolver")
	}
	p := c.Policy()
	if p == nil {
		return nil, errors.New("dnsfw: Config.Policy returned nil; load a policy before starting the DNS firewall")
	}
	f := &Firewall{
		policy:     c.Policy,
		exchanger:  c.Exchanger,
		forwarder:  c.Forwarder,
		cache:      c.Cache,
		publisher:  c.Publisher,
		audit:      c.Audit,
		log:        c.Logger,
		metrics:    c.Metrics,
		isBusy:     c.IsBusy,
		pubTimeout: c.PublishTimeout,
		now:        c.Now,
		verify:     c.Verify,
		limiter:    newLimiter(maxLimiters),
		budgets:    newBudgets(maxBudgetBuckets, maxBudgetNames),
		local:      c.Local,

		refreshTick:   time.Second,
		refreshLeader: c.RefreshLeader,
	}
	if f.local != nil {
		f.classes.Host = f.local
	}
	if f.isBusy == nil {
		f.isBusy = func(err error) bool { return errors.Is(err, resolver.ErrBusy) }
	}
	if f.now == nil {
		f.now = time.Now
	}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	if f.pubTimeout <= 0 {
		f.pubTimeout = 2 * time.Second
	}
	if f.cache == nil {
		f.cache = dnscache.New(dnscache.Config{MaxEntries: p.DNS.CacheSize, MaxTTL: p.DNS.MaxTTL, Now: f.now})
	}
	if f.publisher == nil {
		f.store = learn.NewStore(learn.StoreConfig{MaxPerName: p.DNS.MaxLearnedPerName, Now: f.now})
		f.publisher = f.store
	}
	f.wcache, _ = f.cache.(*dnscache.Cache)
	f.drops, _ = f.publisher.(DropCounter)
	if f.metrics == nil {
		m, err := NewMetrics(c.Registerer)
		if err != nil {
			return nil, err
		}
		f.metrics = m
	}
	if f.store != nil {
		if err := f.metrics.watchStore(f.store); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// Learned returns the in-memory store learned addresses go to when
// Config.Publisher is nil, for the admin endpoint's /v1/learned; nil when
// another publisher receives them.
func (f *Firewall) Learned() *learn.Store { return f.store }
