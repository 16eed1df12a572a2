package daemon

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"

	"github.com/fqdngate/fqdngate/internal/admin"
	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/caps"
	"github.com/fqdngate/fqdngate/internal/cluster"
	"github.com/fqdngate/fqdngate/internal/gctune"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/resolver"
	"github.com/fqdngate/fqdngate/internal/sdnotify"
)

// Options configure Run.
type Options struct {
	// PolicyPath is the policy file; it is watched for changes.
	PolicyPath string
	// Logger receives operational messages (not decisions). If nil, they
	// are discarded.
	Logger *slog.Logger
	// Stdout receives the audit log unless the policy names a file.
	Stdout io.Writer
	// Reload delivers a value for every SIGHUP. If nil, only file changes
	// reload.
	Reload <-chan os.Signal
	// ShutdownTimeout bounds how long in-flight work may finish after ctx
	// is cancelled. If zero, 10s.
	ShutdownTimeout time.Duration
	// Ready, if not nil, is closed once every configured listener serves.
	Ready chan<- struct{}
	// DropCapabilities keeps only the capabilities fqdngate needs once its
	// sockets and netlink handles are open. The command sets it; tests that
	// run the daemon in-process must not.
	DropCapabilities bool
	// KubeClient, if not nil, is how the kubernetes section's watcher
	// reaches the API server (tests); if nil, it connects as
	// kubernetes.kubeconfig says.
	KubeClient kubernetes.Interface
	// Version and Revision are what fqdngate_build_info reports. If
	// Version is empty, "unknown"; if Revision is, the VCS revision Go
	// stamped into the binary, or "unknown".
	Version, Revision string
	// Notify, if not nil, tells systemd (Type=notify) READY=1 once
	// fqdngate is ready as /readyz says it, RELOADING=1 then READY=1
	// around a SIGHUP reload, and STOPPING=1 when it stops.
	Notify *sdnotify.Notifier
}

// readyPoll is how often a start that is not ready yet is checked again
// for systemd's READY=1.
const readyPoll = 100 * time.Millisecond

// flushInterval is how often buffered audit lines are written out.
const flushInterval = 100 * time.Millisecond

// Daemon is a running fqdngate.
type Daemon struct {
	opts    Options
	log     *slog.Logger
	pol     atomic.Pointer[policy.Policy]
	gen     atomic.Uint64
	lastSum [sha256.Size]byte // of the file last loaded; guarded by reloadMu
	// localData is the file in force (for a fleet gateway, its local
	// half, which a new shared revision is composed with); guarded by
	// reloadMu.
	localData []byte
	// fl links a fleet gateway (a policy with a cluster section) to its
	// etcd; nil for a standalone gateway. Set once by start.
	fl *fleetState
	// statusInterval and statusTTL, if not zero, replace the status
	// key's defaults (cluster.AnnouncerOptions); tests shorten them.
	statusInterval, statusTTL time.Duration

	reg   *prometheus.Registry
	m     *metrics
	audit *audit.Logger
	out   *reopenWriter
	// hist is the decision history; nil when off. Set once by start.
	hist *decisionHistory

	reloadMu sync.Mutex // serialises reloads and listener changes
	comps    *components
	// boot is the policy the components were built from, without its
	// rules (Policy.Settings): restart-only settings are in force as it
	// has them. Set once by start.
	boot *policy.Policy
	// pending lists the restart-only settings the policy in force changed.
	pending atomic.Pointer[[]admin.Pending]

	mu      sync.Mutex // guards following; never held across I/O
	running map[string]*listener

	fatal chan error // a listener that stopped serving on its own
	// policySet has a value after each policy put in force, for the
	// observe_until timer.
	policySet chan struct{}
	wg        sync.WaitGroup
}

// Run loads the policy, starts every configured component and serves until
// ctx is cancelled, then drains and returns nil. A policy that does not load
// or a listener that cannot bind is an error: fqdngate never starts open.
func Run(ctx context.Context, opts Options) error {
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	d := newDaemon(opts)
	// Watch before the first read, so that no change is missed in between.
	watch := d.watch(runCtx)
	defer d.wg.Wait()
	defer cancel()
	if err := d.start(runCtx); err != nil {
		return err
	}
	p := d.Policy()
	if opts.DropCapabilities {
		d.dropCapabilities(p)
	}
	d.log.Info("policy loaded", "file", p.File, "rules", len(p.Rules), "mode", p.Mode.String(), "firewall", p.Firewall.Backend.String())
	if opts.Ready != nil {
		close(opts.Ready)
	}

	var fatal error
	flush := time.NewTicker(flushInterval)
	defer flush.Stop()
	n := d.newNotifier()
	readyC := n.poll()
	// Armed by the policySet value start's commit left, and after every
	// policy put in force since.
	var obs observeTimer
	defer obs.stop()
loop:
	for {
		select {
		case <-d.policySet:
			obs.arm(d)
		case <-obs.C:
			if d.observeEnded(runCtx) {
				obs.arm(d)
			} else {
				obs.after(observeRetry)
			}
		case <-readyC:
			readyC = n.poll()
		case <-flush.C:
			if err := d.out.Flush(); err != nil {
				d.log.Error("writing the audit log", "err", err)
			}
		case <-ctx.Done():
			break loop
		case err := <-d.fatal:
			fatal = err
			break loop
		case <-d.opts.Reload:
			n.reloading()
			d.reload(runCtx, "SIGHUP", true)
			n.reloaded()
		case <-watch:
			d.reload(runCtx, "file change", false)
		}
	}
	n.stopping()
	d.log.Info("shutting down", "deadline", d.opts.ShutdownTimeout.String())
	d.shutdown(cancel)
	return fatal
}

// shutdown stops what start started; cancel ends the components'
// background work.
func (d *Daemon) shutdown(cancel context.CancelFunc) {
	// A fleet gateway leaves the fleet first: no shared revision may
	// start listeners while they drain, and its status key goes at once.
	d.closeFleet()
	// Listeners drain first: their in-flight queries still publish to the
	// components, which stop after them.
	d.stopAll()
	cancel()
	d.close()
}

func newDaemon(opts Options) *Daemon {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Stdout == nil {
		opts.Stdout = io.Discard
	}
	if opts.ShutdownTimeout == 0 {
		opts.ShutdownTimeout = 10 * time.Second
	}
	if opts.Version == "" {
		opts.Version = "unknown"
	}
	if opts.Revision == "" {
		opts.Revision = stampedRevision()
	}
	d := &Daemon{
		opts:    opts,
		log:     opts.Logger,
		reg:     prometheus.NewRegistry(),
		running: map[string]*listener{},
		fatal:   make(chan error, 8),
		// policySet: one pending value is enough, the timer reads the
		// newest policy.
		policySet: make(chan struct{}, 1),
	}
	d.m = newMetrics(d.reg, opts.Version, opts.Revision)
	d.out = newReopenWriter(opts.Stdout)
	d.pending.Store(&[]admin.Pending{})
	return d
}

// start loads the policy and puts it in force the way a reload does:
// everything that can fail is prepared first (the components, the
// resolver, the audit file, every listener's sockets), then the kernel
// gets the ruleset, and only then does anything serve. On error nothing is
// left open, and a table adopted from a previous process keeps its rules.
// ctx bounds the components' background work and the listeners.
func (d *Daemon) start(ctx context.Context) error {
	data, err := os.ReadFile(d.opts.PolicyPath)
	if err != nil {
		return fmt.Errorf("reading policy: %w", err)
	}
	c, err := policy.ParseCluster(d.opts.PolicyPath, data)
	if err != nil {
		return fmt.Errorf("loading policy:\n%w", err)
	}
	if c != nil {
		if d.fl, err = newFleetState(ctx, d, c); err != nil {
			return err
		}
	}
	p, rev, err := d.compose(data)
	if err != nil && rev != nil {
		// The shared revision does not apply here. Start on the local
		// file alone, which allows nothing, rather than not at all: the
		// status key and readiness say why, and the next revision or a
		// fixed local file is applied as it comes.
		d.log.Error("shared policy revision refused; allowing nothing until one applies", "component", "fleet", "revision", rev.Number, "err", err)
		d.fl.failed(rev.Number, err)
		d.fl.applies.WithLabelValues("failure").Inc()
		p, err = policy.Compose(policy.Source{Name: d.opts.PolicyPath, Data: data}, nil)
		rev = nil
	}
	if err != nil {
		d.closeFleet()
		return fmt.Errorf("loading policy:\n%w", err)
	}
	d.audit = audit.New(d.out, p.Log.Format, d.m)
	d.audit.SetPodOf(d.podOf)
	d.openHistory(p)
	// The components read the policy while they are built; nothing serves
	// it before the commit below publishes it as generation 1.
	d.pol.Store(p)
	d.boot = p.Settings() // (its rules would stay alive until the daemon stops)
	d.comps, err = newComponents(d, p)
	if err != nil {
		d.closeFleet()
		d.closeHistory()
		return err
	}
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	ch, err := d.prepare(p)
	if err == nil {
		err = d.commit(ctx, ch)
	}
	if err != nil {
		d.comps.close()
		d.closeFleet()
		d.closeHistory()
		d.out.Close()
		return err
	}
	d.lastSum = sha256.Sum256(data)
	d.localData = data
	d.m.loaded(true, false, time.Now())
	if d.fl != nil {
		if rev != nil {
			d.fl.applied(rev)
			d.fl.applies.WithLabelValues("success").Inc()
		}
		d.fl.run(ctx, d)
	}
	return nil
}

// compose compiles the policy the local file data asks for: the file
// alone, or for a fleet gateway the file with the newest shared revision
// (rev, nil before one arrived).
func (d *Daemon) compose(data []byte) (p *policy.Policy, rev *cluster.Revision, err error) {
	if d.fl == nil {
		p, err = policy.Parse(d.opts.PolicyPath, data)
		return p, nil, err
	}
	shared, rev := d.fl.latestSource()
	p, err = policy.Compose(policy.Source{Name: d.opts.PolicyPath, Data: data}, shared)
	return p, rev, err
}

// closeFleet leaves the fleet: the shared learned state stops first, so
// that it revokes this gateway's lease (the others stop waiting for it at
// once, not when the lease expires) while the etcd client is still open;
// then the policy watch and the status key end and the client closes.
func (d *Daemon) closeFleet() {
	if d.fl != nil {
		if d.comps != nil {
			d.comps.stopFleet()
		}
		d.fl.close()
	}
}

// close waits for the components' background work, whose context must be
// cancelled once stopAll has returned, and releases what start opened.
func (d *Daemon) close() {
	d.closeFleet()
	d.comps.wait()
	d.comps.close()
	d.closeHistory()
	if err := d.out.Close(); err != nil {
		d.log.Error("writing the audit log", "err", err)
	}
}

func (d *Daemon) setPolicy(p *policy.Policy) {
	d.pol.Store(p)
	d.m.generation.Set(float64(d.gen.Add(1)))
	d.m.rules.Set(float64(len(p.Rules)))
	select {
	case d.policySet <- struct{}{}:
	default:
	}
}

// Policy returns the policy in force.
func (d *Daemon) Policy() *policy.Policy { return d.pol.Load() }

// restartPending lists the settings of the policy in force that wait for
// a restart.
func (d *Daemon) restartPending() []admin.Pending { return *d.pending.Load() }

// reload loads the file again and puts it in force, all or nothing: a
// policy that fails to load, or any part of it that cannot be applied,
// is logged with every error and the old policy stays in force, in
// userspace and in the kernel. force reloads even an unchanged file
// (SIGHUP also reopens the audit log).
func (d *Daemon) reload(ctx context.Context, why string, force bool) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	if force {
		if err := d.out.reopen(); err != nil {
			d.log.Error("reopening audit log", "file", d.out.path(), "err", err)
		}
	}
	data, err := os.ReadFile(d.opts.PolicyPath)
	if err == nil {
		sum := sha256.Sum256(data)
		if !force && sum == d.lastSum {
			return
		}
		if err = d.apply(ctx, why, data); err == nil {
			d.lastSum = sum
			return
		}
	} else {
		d.m.loaded(false, true, time.Now())
	}
	d.logRejected(why, err)
}

// apply composes the local file data (with the newest shared revision,
// for a fleet gateway) and puts the policy in force: the one path of a
// reload and of a new shared revision. On error what is in force stays.
// Callers hold reloadMu.
func (d *Daemon) apply(ctx context.Context, why string, data []byte) error {
	start := time.Now()
	// No collection until the new policy is in force or refused; then
	// one, which frees the old policy too.
	collect := gctune.Postpone()
	defer collect()
	var (
		p   *policy.Policy
		rev *cluster.Revision
		err error
	)
	inBackground(func() { p, rev, err = d.compose(data) })
	if err == nil {
		var ch *change
		if ch, err = d.prepare(p); err == nil {
			err = d.commit(ctx, ch)
		}
	}
	took := time.Since(start)
	d.m.reloadSeconds.Observe(took.Seconds())
	if err != nil {
		d.m.loaded(false, true, time.Now())
		if d.fl != nil {
			var n int64
			if rev != nil {
				n = rev.Number
			}
			d.fl.failed(n, err)
		}
		return err
	}
	d.localData = data
	d.m.loaded(true, true, time.Now())
	attrs := []any{"trigger", why, "file", p.File, "generation", d.gen.Load(), "rules", len(p.Rules), "mode", p.Mode.String(), "took_ms", took.Milliseconds(), "collect_ms", collect().Milliseconds()}
	if d.fl != nil {
		d.fl.applied(rev)
		if rev != nil {
			attrs = append(attrs, "shared_revision", rev.Number)
		}
	}
	if pending := d.restartPending(); len(pending) > 0 {
		attrs = append(attrs, "restart_pending", pendingKeys(pending))
	}
	d.log.Info("policy reloaded", attrs...)
	return nil
}

// logRejected logs why a policy was not put in force, one line per error.
func (d *Daemon) logRejected(why string, err error) {
	var list policy.ErrorList
	if errors.As(err, &list) {
		for _, e := range list {
			d.log.Error("policy reload rejected; the previous policy stays in force", "trigger", why, "error", e.Error())
		}
		return
	}
	d.log.Error("policy reload failed; the previous policy stays in force", "trigger", why, "err", err)
}

// change is what putting a policy in force takes, prepared: every part
// that can fail is built, and nothing in force is touched yet. commit puts
// it in force; abort undoes the preparation.
type change struct {
	p *policy.Policy
	// resolver, if not nil, replaces the one in force; resolverKey says
	// what it was built from.
	resolver    *resolver.Resolver
	resolverKey string
	// zones, if not nil, replace the forward zones' resolvers in force
	// (dns.forward); zonesKey says what they were built from.
	zones    *resolver.Zones
	zonesKey string
	// audit, if not nil, replaces the audit log's destination.
	audit *auditDest
	// binds are the sockets of listeners that start; stops the kinds of
	// running listeners that stop (moved or removed).
	binds []bound
	stops []string
	// pending are the restart-only settings p changes.
	pending []admin.Pending
}

// prepare builds everything p needs that can fail, in the order of least
// cost to undo: the checks, the resolver, the audit file, the listeners'
// sockets. On error it undoes what it did. Callers hold reloadMu.
func (d *Daemon) prepare(p *policy.Policy) (_ *change, err error) {
	if err := checkFixed(d.boot, p); err != nil {
		return nil, err
	}
	if err := CheckHost(p); err != nil {
		return nil, err
	}
	// Rules that did not change keep counting where they were
	// (/v1/rules); a failed change leaves the old policy's counters as
	// they are.
	p.KeepUsage(d.Policy())
	ch := &change{p: p, pending: restartPending(d.boot, p)}
	defer func() {
		if err != nil {
			ch.abort()
		}
	}()
	ch.resolver, ch.resolverKey, err = d.comps.ups.prepare(p)
	if err != nil {
		return nil, err
	}
	ch.zones, ch.zonesKey, err = d.comps.ups.prepareZones(p)
	if err != nil {
		return nil, err
	}
	// A fleet gateway without a shared revision yet allows nothing, so
	// it needs no resolver until one arrives.
	waiting := p.Cluster != nil && p.SharedName == ""
	if p.Listen.DNS != "" && ch.resolver == nil && d.comps.ups.current() == nil && !waiting {
		return nil, errors.New("the DNS listener has no upstream resolvers: set dns.upstreams")
	}
	if path := p.Log.File; path != d.out.path() {
		if ch.audit, err = openAuditDest(path); err != nil {
			return nil, fmt.Errorf("opening audit log %s: %w", path, err)
		}
	}
	if ch.binds, ch.stops, err = d.bindListeners(p); err != nil {
		return nil, err
	}
	d.comps.prepareMembers(p)
	return ch, nil
}

// abort undoes prepare: the new sockets, resolver and audit file close;
// what is in force never changed.
func (ch *change) abort() {
	for _, b := range ch.binds {
		b.close()
	}
	ch.binds = nil
	if ch.resolver != nil {
		ch.resolver.Close()
		ch.resolver = nil
	}
	if ch.zones != nil {
		ch.zones.Close()
		ch.zones = nil
	}
	if ch.audit != nil {
		_ = ch.audit.close()
		ch.audit = nil
	}
}

// commit puts a prepared change in force. The kernel transaction is the
// only step left that can fail, so it goes first: the kernel applies it
// whole or not at all, and if it fails the old rules stand and abort
// undoes the preparation. Nothing after it can fail. Userspace then
// follows the kernel at once (a learned set the kernel no longer has
// cannot take a publication): the resolver, the audit destination and the
// policy pointer are swapped, then the new listeners serve, already bound,
// and last the ones they replace stop. Callers hold reloadMu.
func (d *Daemon) commit(ctx context.Context, ch *change) error {
	if b := d.comps.nft; b != nil {
		if err := b.Apply(ctx, ch.p); err != nil {
			ch.abort()
			return fmt.Errorf("programming nftables: %w", err)
		}
	}
	d.comps.run(ctx)
	if b := d.comps.nft; b != nil {
		// CheckHost vouched for the directory in prepare.
		b.SetStateFile(ch.p.Firewall.StateFile)
	}
	if ch.resolver != nil {
		// In-flight queries on the old resolver finish within its
		// attempts' timeouts.
		d.comps.ups.commit(ch.resolver, ch.resolverKey, 4*d.Policy().DNS.Timeout+time.Second)
	}
	if ch.zones != nil {
		d.comps.ups.commitZones(ch.zones, ch.zonesKey, 4*d.Policy().DNS.Timeout+time.Second)
	}
	if ch.audit != nil {
		d.out.swap(ch.audit)
	}
	d.setPolicy(ch.p)
	d.comps.acceptPolicy(ctx, ch.p)
	d.comps.commitMembers(ch.p)
	d.pending.Store(&ch.pending)
	d.m.restartPending.Set(float64(len(ch.pending)))
	for _, s := range ch.pending {
		attrs := []any{"key", s.Key, "in_force", s.InForce, "policy", s.Policy}
		if s.Part != "" {
			attrs = append(attrs, "part", s.Part)
		}
		d.log.Warn("setting takes effect only at the next restart; the value in force stays", attrs...)
	}
	d.switchListeners(ctx, ch.binds, ch.stops)
	return nil
}

// watch reports changes to the policy file. It watches the directory, not
// the file, because editors and Kubernetes ConfigMaps replace files rather
// than write them in place. Events are debounced.
func (d *Daemon) watch(ctx context.Context) <-chan struct{} {
	out := make(chan struct{}, 1)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		d.log.Warn("not watching the policy file; reload with SIGHUP", "err", err)
		return out
	}
	dir := filepath.Dir(d.opts.PolicyPath)
	if err := w.Add(dir); err != nil {
		w.Close()
		d.log.Warn("not watching the policy file; reload with SIGHUP", "dir", dir, "err", err)
		return out
	}
	base := filepath.Base(d.opts.PolicyPath)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer w.Close()
		var debounce <-chan time.Time
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if filepath.Base(ev.Name) == base || strings.HasPrefix(filepath.Base(ev.Name), "..") {
					debounce = time.After(200 * time.Millisecond)
				}
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				d.log.Warn("watching the policy file", "err", err)
			case <-debounce:
				select {
				case out <- struct{}{}:
				default:
				}
			}
		}
	}()
	return out
}

// ready reports nil when fqdngate serves and enforces what the policy in
// force asks for, or an error naming what does not. Each check is one
// condition; add one to the list for a new one.
func (d *Daemon) ready() error {
	for _, check := range []func() error{d.policyReady, d.fleetReady, d.firewallReady, d.kubeReady, d.listenersReady} {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

func (d *Daemon) policyReady() error {
	if d.pol.Load() == nil {
		return errors.New("no policy loaded")
	}
	return nil
}

// fleetReady reports a fleet gateway without a shared revision in force
// (its policy allows nothing) or without the fleet's learned set.
func (d *Daemon) fleetReady() error {
	if d.fl == nil {
		return nil
	}
	return d.fl.ready()
}

// degraded reports what works less well than configured without making
// fqdngate unready: a fleet gateway that cannot reach etcd, or an agent
// that cannot reach the kubernetes API, keeps enforcing what it has.
func (d *Daemon) degraded() error {
	var fleet error
	if d.fl != nil {
		fleet = d.fl.degraded()
	}
	return errors.Join(fleet, d.kubeDegraded())
}

// firewallReady reports a table the kernel does not enforce as programmed
// (deleted or changed by someone else, and not yet restored).
func (d *Daemon) firewallReady() error {
	// comps is set before any listener, the admin endpoint included, starts.
	if c := d.comps; c != nil && c.nft != nil {
		return c.nft.Enforcing()
	}
	return nil
}

// listenersReady reports listeners that stopped serving.
func (d *Daemon) listenersReady() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var down []string
	for name, l := range d.running {
		if !l.serving.Load() {
			down = append(down, name)
		}
	}
	if len(down) > 0 {
		sort.Strings(down)
		return fmt.Errorf("listeners not serving: %s", strings.Join(down, ", "))
	}
	return nil
}

// dropCapabilities keeps CAP_NET_BIND_SERVICE (a reload may move a listener
// to port 53) and, with the nftables backend, CAP_NET_ADMIN.
func (d *Daemon) dropCapabilities(p *policy.Policy) {
	keep := []int{caps.NetBindService}
	names := "CAP_NET_BIND_SERVICE"
	if p.Firewall.Backend == policy.BackendNftables {
		keep = append(keep, caps.NetAdmin)
		names += ", CAP_NET_ADMIN"
	}
	if err := caps.Keep(keep...); err != nil {
		d.log.Warn("could not drop capabilities; run fqdngate under the systemd unit or as a non-root user to limit them", "err", err)
		return
	}
	d.log.Info("dropped capabilities", "kept", names)
}
