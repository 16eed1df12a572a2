package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fqdngate/fqdngate/internal/admin"
	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/console"
	"github.com/fqdngate/fqdngate/internal/dnsfw"
	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/fleet"
	"github.com/fqdngate/fqdngate/internal/kube"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/localaddr"
	"github.com/fqdngate/fqdngate/internal/nft"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/proxy"
	"github.com/fqdngate/fqdngate/internal/resolver"
)

// components are the long-lived parts built once at start; listeners come
// and go around them, and reloads hand them the new policy.
type components struct {
	d     *Daemon
	ups   *upstreams
	dns   *dnsfw.Firewall
	proxy *proxy.Proxy
	// verifier checks upstream certificates for rules with tls.verify; the
	// proxy and the DNS firewall share it, and its cache.
	verifier *proxy.Verifier
	nft      *nft.Backend // nil unless firewall.backend is nftables
	learned  func(dnsname.Name) iter.Seq[learn.Entry]
	runOnce  sync.Once
	wg       sync.WaitGroup

	// local is this host's addresses, followed as they come and go: the
	// DNS firewall strips them from answers, the proxy never dials them.
	local *localaddr.Set

	// fleet shares learned addresses with the other gateways of a fleet
	// (a policy with a cluster section); nil for a standalone gateway.
	fleet *fleet.Fleet
	// fleetStop ends fleet.Run, which closes fleetDone when it returns;
	// both nil until run started it.
	fleetStop context.CancelFunc
	fleetDone chan struct{}
	// store holds a fleet gateway's learned addresses with backend none
	// (a standalone one's are the DNS firewall's own, dns.Learned).
	store *learn.Store

	// kube follows the cluster's pods (the kubernetes section of the boot
	// policy); nil without one. kubeUpdates counts the snapshots put in
	// force, by result.
	kube        *kube.Watcher
	kubeUpdates *prometheus.CounterVec

	// adminAuth and adminTLS protect the admin listener (the boot
	// policy's admin section); adminTLS nil: plain HTTP.
	adminAuth admin.Auth
	adminTLS  *tls.Config
	// live hands decisions to the console's browsers (an audit sink).
	live *console.Live
}

// newComponents builds the components for p. It changes nothing outside
// the process: the nftables backend adopts the table it finds, and the
// first commit programs it (see Daemon.commit).
func newComponents(d *Daemon, p *policy.Policy) (*components, error) {
	c := &components{d: d, verifier: proxy.NewVerifier(proxy.VerifierConfig{})}
	var err error
	if c.adminAuth, c.adminTLS, err = adminAuth(p); err != nil {
		return nil, err
	}
	if c.live, err = console.NewLive(d.reg); err != nil {
		return nil, err
	}
	d.audit.SetSink(c.live)
	c.kubeUpdates = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fqdngate_kubernetes_member_updates_total",
		Help: "Pod snapshots put in force (kernel pod sets, then the policy), by result (success, failure: the previous members stay).",
	}, []string{"result"})
	dnsMetrics, err := dnsfw.NewMetrics(d.reg)
	if err != nil {
		return nil, err
	}
	c.ups = &upstreams{observer: dnsMetrics}
	c.local, err = localaddr.New(localaddr.Config{})
	if err != nil {
		return nil, fmt.Errorf("reading this host's addresses: %w", err)
	}
	var publisher learn.Publisher
	if p.Firewall.Backend == policy.BackendNftables {
		cfg := NftConfig(p, d.log.With("component", "firewall"))
		cfg.OnDrop = c.auditDrop
		// Put the table back at once if someone else deletes or changes
		// it; readiness says so meanwhile (see ready).
		cfg.Watch = true
		cfg.OnAllow = c.auditAllow
		c.nft, err = nft.New(cfg)
		if err != nil {
			return nil, err
		}
		publisher = c.nft
		c.learned = c.nft.All
		registerFirewallMetrics(d.reg, c.nft)
	}
	if d.fl != nil {
		// A fleet gateway shares what it learns: the fleet programs this
		// gateway first, then etcd and every other gateway.
		if publisher, err = c.shareLearned(p, publisher); err != nil {
			c.close()
			return nil, err
		}
	}
	if err := c.startKube(p); err != nil {
		c.close()
		return nil, err
	}
	var verify func(context.Context, string, netip.Addr, uint16, *policy.TLS) error
	if c.nft != nil {
		// Verify before allow: a poisoned answer must not open the kernel
		// path that the proxy would refuse. Without the kernel backend
		// only the proxy connects, and it verifies itself.
		verify = c.verifier.Verify
	}
	c.dns, err = dnsfw.New(dnsfw.Config{
		Policy:        d.Policy,
		Publisher:     publisher,
		Verify:        verify,
		Exchanger:     c.ups,
		Forwarder:     c.ups,
		Audit:         d.audit,
		Logger:        d.log.With("component", "dns"),
		Metrics:       dnsMetrics,
		IsBusy:        func(err error) bool { return errors.Is(err, resolver.ErrBusy) },
		Local:         c.local,
		RefreshLeader: c.refreshLeader,
		// A fleet's hold may wait up to cluster.hold_timeout (at most 5s)
		// on top of programming this gateway: the answer must not fail
		// first.
		PublishTimeout: publishTimeout(p),
	})
	if err != nil {
		c.close()
		return nil, fmt.Errorf("starting the DNS firewall: %w", err)
	}
	if s := c.dns.Learned(); s != nil && c.learned == nil {
		c.learned = s.All
	}
	c.proxy, err = proxy.New(proxy.Config{
		Policy:     d.Policy,
		Resolver:   c.dns,
		Audit:      d.audit,
		Logger:     d.log.With("component", "proxy"),
		Registerer: d.reg,
		Self:       selfAddrs(p),
		Local:      c.local,
		Verifier:   c.verifier,
	})
	if err != nil {
		c.close()
		return nil, fmt.Errorf("starting the proxy: %w", err)
	}
	return c, nil
}

// run starts the components' background work, once: the nftables
// backend's flusher and drop reader, and the refresh of rules with
// refresh. The first commit calls it, after the kernel has the policy and
// before any listener serves.
func (c *components) run(ctx context.Context) {
	c.runOnce.Do(func() {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			if err := c.local.Run(ctx); err != nil {
				// A stale set could let the proxy dial an address added
				// since: stop rather than carry on without knowing.
				select {
				case c.d.fatal <- fmt.Errorf("following this host's addresses: %w", err):
				default:
				}
			}
		}()
		if c.nft != nil {
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				if err := c.nft.Run(ctx); err != nil {
					select {
					case c.d.fatal <- fmt.Errorf("nftables backend: %w", err):
					default:
					}
				}
			}()
		}
		if c.fleet != nil {
			fctx, cancel := context.WithCancel(ctx)
			done := make(chan struct{})
			c.fleetStop, c.fleetDone = cancel, done
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				defer close(done)
				if err := c.fleet.Run(fctx); err != nil {
					select {
					case c.d.fatal <- fmt.Errorf("fleet learned state: %w", err):
					default:
					}
				}
			}()
		}
		c.runKube(ctx)
		// Rules with refresh are re-resolved on their timers, also before
		// any client asks.
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			if err := c.dns.RunRefresh(ctx); err != nil {
				c.d.log.Error("refresh stopped", "component", "dns", "err", err)
			}
		}()
	})
}

// selfAddrs lists the listeners the proxy must never connect to.
func selfAddrs(p *policy.Policy) []netip.AddrPort {
	var out []netip.AddrPort
	for _, s := range []string{p.Listen.DNS, p.Listen.Proxy, p.Listen.Transparent, p.Listen.Admin} {
		if ap, err := netip.ParseAddrPort(s); err == nil {
			out = append(out, ap)
		}
	}
	return out
}

func (c *components) close() {
	c.ups.close()
	if c.nft != nil {
		c.nft.Close()
	}
}

// NftConfig is the nftables backend configuration a policy asks for. The
// backend takes mode and listener addresses from each policy it applies.
func NftConfig(p *policy.Policy, log *slog.Logger) nft.Config {
	return nft.Config{
		Table:     p.Firewall.Table,
		Hook:      p.Firewall.Hook,
		StateFile: p.Firewall.StateFile,
		Logger:    log,
	}
}

// auditDrop records a sampled kernel drop as a firewall decision, with the
// reason the policy gives for it.
func (c *components) auditDrop(src, dst netip.Addr, proto policy.Proto, port uint16) {
	p := c.d.Policy()
	dec := p.Decide(policy.Query{Source: src, Addr: dst, Port: port, Proto: proto})
	if dec.Action == policy.Allow {
		// A CIDR rule allows it, so the kernel dropped it for a reason the
		// policy does not know (a learned address expired, say).
		dec = policy.Decision{Reason: policy.ReasonNotAllowedIP}
	}
	// Enforced, as Decide has it: audit mode, or a source in a group that
	// observes, whose packets the kernel sampled and then accepted.
	if p.Enforced(&policy.Query{Source: src}) {
		dec.Action = policy.Deny
	} else {
		dec.Action = policy.WouldDeny
	}
	c.d.audit.Record(context.Background(), audit.Event{
		Component: audit.Firewall,
		Source:    src,
		Name:      dst.String(),
		Port:      port,
		Decision:  dec,
		Attrs:     []slog.Attr{slog.String("proto", proto.String()), slog.Bool("sampled", true)},
	})
}

// auditAllow records a new connection the kernel allowed
// (firewall.log_allowed), naming the rule and group of the kernel rule
// that accepted it.
func (c *components) auditAllow(a nft.Allowed) {
	p := c.d.Policy()
	r := p.Rule(a.Rule)
	if r == nil {
		// Removed by a reload since the kernel accepted; the name stands.
		r = &policy.Rule{Name: a.Rule}
	}
	c.d.audit.Record(context.Background(), audit.Event{
		Component: audit.Firewall,
		Source:    a.Src,
		Name:      a.Dst.String(),
		Port:      a.Port,
		Decision:  policy.Decision{Action: policy.Allow, Reason: policy.ReasonMatched, Rule: r, Group: a.Group},
		Attrs:     []slog.Attr{slog.String("proto", a.Proto.String()), slog.String("group", a.Group), slog.Bool("sampled", a.Sampled)},
	})
}

// wait returns when every component goroutine has stopped.
func (c *components) wait() { c.wg.Wait() }

// bind opens the sockets of one listener kind.
func (c *components) bind(kind, addr string) (serve func(context.Context) error, closeFn func(), actual string, err error) {
	switch kind {
	case "admin":
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, "", err
		}
		if warn := exposedAdmin(c.d.boot, ln.Addr().String()); warn != "" {
			c.d.log.Warn(warn, "component", "admin")
		}
		if c.adminTLS != nil {
			ln = tls.NewListener(ln, c.adminTLS)
		}
		cfg := admin.Config{
			Policy:         c.d.Policy,
			Generation:     c.d.gen.Load,
			Ready:          c.d.ready,
			Learned:        c.learned,
			Gatherer:       c.d.reg,
			RestartPending: c.d.restartPending,
			Local:          c.local,
			Degraded:       c.d.degraded,
			History:        c.d.queryHistory(),
			Auth:           c.adminAuth,
			Logger:         c.d.log.With("component", "admin"),
		}
		if fl := c.d.fl; fl != nil {
			cfg.Fleet = fl.report
		}
		if cfg.UI, err = c.console(); err != nil {
			ln.Close()
			return nil, nil, "", err
		}
		h := admin.Handler(cfg)
		return func(ctx context.Context) error { return admin.Serve(ctx, ln, h, c.d.log.With("component", "admin")) }, func() { ln.Close() }, ln.Addr().String(), nil
	case "dns":
		pc, ln, err := listenDNS(addr)
		if err != nil {
			return nil, nil, "", err
		}
		serve := func(ctx context.Context) error {
			errc := make(chan error, 2)
			go func() { errc <- c.dns.ServeUDP(ctx, pc) }()
			go func() { errc <- c.dns.ServeTCP(ctx, ln) }()
			err := <-errc
			if ctx.Err() == nil {
				// One transport failed on its own; stop the other too.
				pc.Close()
				ln.Close()
			}
			return errors.Join(err, <-errc)
		}
		return serve, func() { pc.Close(); ln.Close() }, pc.LocalAddr().String(), nil
	case "proxy":
		ln, err := proxy.Listen(context.Background(), addr)
		if err != nil {
			return nil, nil, "", err
		}
		return func(ctx context.Context) error { return c.proxy.Serve(ctx, ln) }, func() { ln.Close() }, ln.Addr().String(), nil
	case "transparent":
		ln, err := proxy.Listen(context.Background(), addr)
		if err != nil {
			return nil, nil, "", err
		}
		return func(ctx context.Context) error { return c.proxy.ServeTransparent(ctx, ln) }, func() { ln.Close() }, ln.Addr().String(), nil
	}
	return nil, nil, "", fmt.Errorf("unknown listener kind %q", kind)
}

// upstreams is the resolver in force. A reload that changes dns.upstreams,
// dns.timeout or dns.max_inflight builds a new resolver before it commits
// anything, and swaps it in at the commit; the old one finishes its
// in-flight queries and is closed.
type upstreams struct {
	observer resolver.Observer
	cur      atomic.Pointer[resolver.Resolver]
	// build makes a resolver; if nil, resolver.New. Tests make it fail.
	build func(resolver.Config) (*resolver.Resolver, error)

	// zones are the forward zones' resolvers in force (dns.forward),
	// swapped with the policy like cur.
	zones atomic.Pointer[resolver.Zones]

	mu           sync.Mutex // guards following
	key          string
	retired      []*resolver.Resolver
	zonesKey     string
	retiredZones []*resolver.Zones
}

func (u *upstreams) current() *resolver.Resolver { return u.cur.Load() }

// Exchange implements dnsfw.Exchanger.
func (u *upstreams) Exchange(ctx context.Context, m *dns.Msg) (*dns.Msg, policy.Upstream, error) {
	r := u.cur.Load()
	if r == nil {
		return nil, policy.Upstream{}, errors.New("no upstream resolvers configured")
	}
	return r.Exchange(ctx, m)
}

// Forward implements dnsfw.Forwarder.
func (u *upstreams) Forward(ctx context.Context, z *policy.ForwardZone, m *dns.Msg) (*dns.Msg, policy.Upstream, error) {
	zs := u.zones.Load()
	if zs == nil {
		return nil, policy.Upstream{}, errors.New("no forward zones configured")
	}
	return zs.Forward(ctx, z, m)
}

// prepareZones builds the forward zones' resolvers p asks for, or returns
// nil when those in force already are them. Nothing changes until
// commitZones.
func (u *upstreams) prepareZones(p *policy.Policy) (*resolver.Zones, string, error) {
	key := fmt.Sprint(p.DNS.Forward, p.DNS.Timeout, p.DNS.MaxInFlight)
	u.mu.Lock()
	same := key == u.zonesKey && u.zones.Load() != nil
	u.mu.Unlock()
	if same {
		return nil, "", nil
	}
	zs, err := resolver.NewZones(p.DNS.Forward, resolver.Config{
		Timeout:     p.DNS.Timeout,
		MaxInFlight: p.DNS.MaxInFlight,
		Observer:    u.observer,
	})
	if err != nil {
		return nil, "", fmt.Errorf("dns.forward: %w", err)
	}
	return zs, key, nil
}

// commitZones puts zs, made by prepareZones for key, in force; the old
// ones are closed after drain.
func (u *upstreams) commitZones(zs *resolver.Zones, key string, drain time.Duration) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.zonesKey = key
	old := u.zones.Swap(zs)
	if old == nil {
		return
	}
	u.retiredZones = append(u.retiredZones, old)
	time.AfterFunc(drain, func() {
		old.Close()
		u.mu.Lock()
		u.retiredZones = slices.DeleteFunc(u.retiredZones, func(z *resolver.Zones) bool { return z == old })
		u.mu.Unlock()
	})
}

// prepare builds the resolver p asks for. It returns nil when the one in
// force already is that resolver, or when p names no upstreams (then the
// one in force, if any, stays). Nothing changes until commit.
func (u *upstreams) prepare(p *policy.Policy) (*resolver.Resolver, string, error) {
	if len(p.DNS.Upstreams) == 0 {
		return nil, "", nil
	}
	key := fmt.Sprint(p.DNS.Upstreams, p.DNS.Timeout, p.DNS.MaxInFlight)
	u.mu.Lock()
	same := key == u.key
	u.mu.Unlock()
	if same {
		return nil, "", nil
	}
	build := u.build
	if build == nil {
		build = resolver.New
	}
	r, err := build(resolver.Config{
		Upstreams:   slices.Clone(p.DNS.Upstreams),
		Timeout:     p.DNS.Timeout,
		MaxInFlight: p.DNS.MaxInFlight,
		Observer:    u.observer,
	})
	if err != nil {
		return nil, "", fmt.Errorf("dns.upstreams: %w", err)
	}
	return r, key, nil
}

// commit puts r, made by prepare for key, in force. Queries in flight on
// the old resolver finish within drain; it is closed after that.
func (u *upstreams) commit(r *resolver.Resolver, key string, drain time.Duration) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.key = key
	old := u.cur.Swap(r)
	if old == nil {
		return
	}
	u.retired = append(u.retired, old)
	// Forget it once closed, so that many reloads do not pile up retired
	// resolvers.
	time.AfterFunc(drain, func() {
		old.Close()
		u.mu.Lock()
		u.retired = slices.DeleteFunc(u.retired, func(r *resolver.Resolver) bool { return r == old })
		u.mu.Unlock()
	})
}

func (u *upstreams) close() {
	if r := u.cur.Load(); r != nil {
		r.Close()
	}
	if zs := u.zones.Load(); zs != nil {
		zs.Close()
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, r := range u.retired {
		r.Close()
	}
	for _, zs := range u.retiredZones {
		zs.Close()
	}
}

// listenDNS opens UDP and TCP on one address, of its family only for an
// IPv4 address (policy.ListenNetwork). For port 0 the TCP port must
// be the one UDP was given, which another socket may hold: try a few.
func listenDNS(addr string) (net.PacketConn, net.Listener, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, nil, err
	}
	var lastErr error
	for range 10 {
		pc, err := net.ListenPacket(policy.ListenNetwork("udp", addr), addr)
		if err != nil {
			return nil, nil, err
		}
		ln, err := net.Listen(policy.ListenNetwork("tcp", addr), pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		lastErr = err
		if ap.Port() != 0 {
			break
		}
	}
	return nil, nil, lastErr
}

// registerFirewallMetrics exposes the nftables backend's counters.
func registerFirewallMetrics(reg prometheus.Registerer, b *nft.Backend) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "fqdngate_firewall_learned",
			Help: "Learned addresses the kernel's sets hold (one per rule, group and address).",
		}, func() float64 { return float64(b.Stats().Learned) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "fqdngate_firewall_cap_evictions_total",
			Help: "Learned addresses removed from the kernel because their name reached dns.max_learned_per_name.",
		}, func() float64 { return float64(b.Stats().CapEvictions) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "fqdngate_firewall_drop_samples_total",
			Help: "Sampled packets dropped (or, in audit mode, that would be dropped) by default deny, each written to the audit log.",
		}, func() float64 { return float64(b.Stats().DropSamples) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "fqdngate_firewall_drop_samples_lost_total",
			Help: "Drop samples lost before fqdngate could read them.",
		}, func() float64 { return float64(b.Stats().DropSamplesLost) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "fqdngate_firewall_restores_total",
			Help: "Times the nftables table was put back, with every learned address, after another process deleted or changed it.",
		}, func() float64 { return float64(b.Stats().Restores) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "fqdngate_firewall_restore_failures_total",
			Help: "Attempts to put the nftables table back that failed (each is retried; /readyz reports not ready until one succeeds).",
		}, func() float64 { return float64(b.Stats().RestoreFailures) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "fqdngate_firewall_watch_overruns_total",
			Help: "Times nftables change notifications were lost (the socket buffer overflowed) and the table was checked as a whole instead.",
		}, func() float64 { return float64(b.Stats().WatchOverruns) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "fqdngate_firewall_state_write_failures_total",
			Help: "Failed writes of firewall.state_file; learned addresses written last survive a restart, later ones do not.",
		}, func() float64 { return float64(b.Stats().StateWriteFailures) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "fqdngate_firewall_allow_logs_total",
			Help: "New connections the kernel allowed that were written to the audit log (firewall.log_allowed).",
		}, func() float64 { return float64(b.Stats().AllowLogs) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "fqdngate_firewall_allow_logs_lost_total",
			Help: "Allowed connections the kernel logged that fqdngate could not read or attribute to a rule.",
		}, func() float64 { return float64(b.Stats().AllowLogsLost) }),
		newDropsCollector(b),
	)
}

// dropsCollector reads the kernel's counters of the packets the table
// drops before the policy (nft.Drops) when /metrics is scraped: they are
// the kernel's, and no packet reaches fqdngate to be counted otherwise.
type dropsCollector struct {
	b                    *nft.Backend
	reversePath, outside *prometheus.Desc
}

func newDropsCollector(b *nft.Backend) dropsCollector {
	return dropsCollector{
		b: b,
		reversePath: prometheus.NewDesc("fqdngate_firewall_reverse_path_drops_total",
			"Packets the kernel dropped because their source address does not route back the way they came (firewall.reverse_path; in audit mode counted, not dropped).", nil, nil),
		outside: prometheus.NewDesc("fqdngate_firewall_outside_drops_total",
			"Packets for fqdngate's listeners (dns, proxy, transparent) from outside the inside, dropped by the kernel.", []string{"listener"}, nil),
	}
}

func (c dropsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.reversePath
	ch <- c.outside
}

// Collect reports the counts; when the table cannot be read (it is being
// put back, say), the last counts read, which the next scrape catches up on.
func (c dropsCollector) Collect(ch chan<- prometheus.Metric) {
	d, _ := c.b.Drops()
	ch <- prometheus.MustNewConstMetric(c.reversePath, prometheus.CounterValue, float64(d.ReversePath))
	for l, n := range d.Outside {
		ch <- prometheus.MustNewConstMetric(c.outside, prometheus.CounterValue, float64(n), l)
	}
}
