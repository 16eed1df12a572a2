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

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/caps"
	"github.com/fqdngate/fqdngate/internal/policy"
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
}

// flushInterval is how often buffered audit lines are written out.
const flushInterval = 100 * time.Millisecond

// Daemon is a running fqdngate.
type Daemon struct {
	opts    Options
	log     *slog.Logger
	pol     atomic.Pointer[policy.Policy]
	gen     atomic.Uint64
	lastSum [sha256.Size]byte // of the file last loaded; guarded by reloadMu
	reg     *prometheus.Registry
	m       *metrics
	audit   *audit.Logger
	out     *reopenWriter

	reloadMu sync.Mutex // serialises reloads and listener changes
	comps    *components

	mu      sync.Mutex // guards following; never held across I/O
	running map[string]*listener

	fatal chan error // a listener that stopped serving on its own
	wg    sync.WaitGroup
}

// Run loads the policy, starts every configured component and serves until
// ctx is cancelled, then drains and returns nil. A policy that does not load
// or a listener that cannot bind is an error: fqdngate never starts open.
func Run(ctx context.Context, opts Options) error {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Stdout == nil {
		opts.Stdout = io.Discard
	}
	if opts.ShutdownTimeout == 0 {
		opts.ShutdownTimeout = 10 * time.Second
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	d := &Daemon{
		opts:    opts,
		log:     opts.Logger,
		reg:     prometheus.NewRegistry(),
		running: map[string]*listener{},
		fatal:   make(chan error, 8),
	}
	// Watch before the first read, so that no change is missed in between.
	watch := d.watch(runCtx)
	defer d.wg.Wait()
	defer cancel()
	data, err := os.ReadFile(opts.PolicyPath)
	if err != nil {
		return fmt.Errorf("reading policy: %w", err)
	}
	d.lastSum = sha256.Sum256(data)
	p, err := policy.Parse(opts.PolicyPath, data)
	if err == nil {
		err = CheckHost(p)
	}
	if err != nil {
		return fmt.Errorf("loading policy:\n%w", err)
	}
	d.m = newMetrics(d.reg)
	d.out, err = newReopenWriter(p.Log.File, opts.Stdout)
	if err != nil {
		return fmt.Errorf("opening audit log %s: %w", p.Log.File, err)
	}
	defer d.out.Close()
	d.audit = audit.New(d.out, p.Log.Format, d.m)
	d.setPolicy(p)

	d.comps, err = newComponents(runCtx, d, p)
	if err != nil {
		return err
	}
	defer d.comps.close()

	d.reloadMu.Lock()
	err = d.reconcileListeners(runCtx, p)
	d.reloadMu.Unlock()
	if err != nil {
		d.stopAll()
		return err
	}
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
loop:
	for {
		select {
		case <-flush.C:
			if err := d.out.Flush(); err != nil {
				d.log.Error("writing the audit log", "err", err)
			}
		case <-ctx.Done():
			break loop
		case err := <-d.fatal:
			fatal = err
			break loop
		case <-opts.Reload:
			d.reload(runCtx, "SIGHUP", true)
		case <-watch:
			d.reload(runCtx, "file change", false)
		}
	}
	d.log.Info("shutting down", "deadline", opts.ShutdownTimeout.String())
	d.stopAll()
	cancel()
	d.comps.wait()
	return fatal
}

func (d *Daemon) setPolicy(p *policy.Policy) {
	d.pol.Store(p)
	d.m.generation.Set(float64(d.gen.Add(1)))
	d.m.rules.Set(float64(len(p.Rules)))
}

// Policy returns the policy in force.
func (d *Daemon) Policy() *policy.Policy { return d.pol.Load() }

// reload loads the file again. A policy that fails to load, or that a
// component cannot apply, is logged with every error and the old policy
// stays in force: never a half-loaded policy, never an open door. force
// reloads even an unchanged file (SIGHUP also reopens the audit log).
func (d *Daemon) reload(ctx context.Context, why string, force bool) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	old := d.pol.Load()
	if force {
		if err := d.out.reopen(old.Log.File); err != nil {
			d.log.Error("reopening audit log", "file", old.Log.File, "err", err)
		}
	}
	data, err := os.ReadFile(d.opts.PolicyPath)
	if err == nil {
		sum := sha256.Sum256(data)
		if !force && sum == d.lastSum {
			return
		}
		var p *policy.Policy
		p, err = policy.Parse(d.opts.PolicyPath, data)
		if err == nil {
			err = d.apply(ctx, old, p)
		}
		if err == nil {
			d.lastSum = sum
			d.setPolicy(p)
			d.m.reloads.WithLabelValues("success").Inc()
			d.log.Info("policy reloaded", "trigger", why, "file", p.File, "generation", d.gen.Load(), "rules", len(p.Rules), "mode", p.Mode.String())
			return
		}
	}
	d.m.reloads.WithLabelValues("failure").Inc()
	var list policy.ErrorList
	if errors.As(err, &list) {
		for _, e := range list {
			d.log.Error("policy reload rejected; the previous policy stays in force", "trigger", why, "error", e.Error())
		}
		return
	}
	d.log.Error("policy reload failed; the previous policy stays in force", "trigger", why, "err", err)
}

// apply makes components follow p before it is published. Settings that
// only take effect at start are reported, not silently ignored.
func (d *Daemon) apply(ctx context.Context, old, p *policy.Policy) error {
	if old.Firewall.Backend != p.Firewall.Backend || old.Firewall.Table != p.Firewall.Table || old.Firewall.Hook != p.Firewall.Hook {
		return errors.New("firewall.backend, firewall.table and firewall.hook cannot change on reload; restart fqdngate to change them")
	}
	if err := d.comps.apply(ctx, p); err != nil {
		return err
	}
	if err := d.reconcileListeners(ctx, p); err != nil {
		return err
	}
	if old.Log.File != p.Log.File {
		if err := d.out.reopen(p.Log.File); err != nil {
			return fmt.Errorf("opening audit log %s: %w", p.Log.File, err)
		}
	}
	if old.Log.Format != p.Log.Format {
		d.log.Warn("log.format changes take effect at the next restart", "now", old.Log.Format, "policy", p.Log.Format)
	}
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

// ready reports nil when the kernel enforces the table as programmed and
// every configured listener serves.
func (d *Daemon) ready() error {
	if d.pol.Load() == nil {
		return errors.New("no policy loaded")
	}
	// comps is set before any listener, the admin endpoint included, starts.
	if c := d.comps; c != nil && c.nft != nil {
		if err := c.nft.Enforcing(); err != nil {
			return err
		}
	}
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
