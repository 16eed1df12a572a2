package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/fqdngate/fqdngate/internal/cluster"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// LearnedFleet is the fleet's shared learned state (internal/fleet) as the
// daemon's readiness sees it. The wiring of internal/fleet sets
// fleetState.learned; until then it is nil and only the shared policy and
// the status key are in etcd.
type LearnedFleet interface {
	// Loaded is closed once the full learned set was loaded from etcd.
	Loaded() <-chan struct{}
	// Degraded returns why etcd cannot be used now, or nil.
	Degraded() error
}

// fleetState is a fleet gateway's link to its etcd (policy.Cluster): the
// shared policy's revisions it follows, and the status key it keeps.
// Without a cluster section the daemon has none (Daemon.fl is nil).
type fleetState struct {
	// cluster is the section as at start: a change waits for a restart.
	cluster *policy.Cluster
	cli     *clientv3.Client
	store   *cluster.Store
	ann     *cluster.Announcer
	started time.Time
	// learned is the seam for internal/fleet: its Publisher wraps the
	// components' (nftables or the in-memory store) and the DNS firewall
	// publishes to it; readiness waits for Loaded and reports Degraded.
	// nil: no shared learned state.
	learned LearnedFleet

	applies  *prometheus.CounterVec
	revision prometheus.Gauge

	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once

	mu sync.Mutex // guards following
	// latest is the newest shared revision etcd handed over whole (nil:
	// none yet); inForce the one in force (nil: none, the policy allows
	// nothing).
	latest, inForce *cluster.Revision
	// rejected is the newest revision refused, lastErr why, or the last
	// failure to put a policy in force.
	rejected int64
	lastErr  string
	watchErr error // following the shared policy; nil when it works
}

// newFleetState dials the cluster's etcd and reads the shared revision in
// force, waiting at most cluster.DialTimeout: a gateway that cannot reach
// etcd starts on its local file alone and allows nothing until the shared
// policy arrives.
func newFleetState(ctx context.Context, d *Daemon, c *policy.Cluster) (*fleetState, error) {
	cli, err := cluster.Dial(c)
	if err != nil {
		return nil, err
	}
	fl := &fleetState{cluster: c, cli: cli, store: cluster.NewStore(cli, c.Prefix), started: time.Now().UTC()}
	fl.ann = cluster.NewAnnouncer(cli, cluster.AnnouncerOptions{
		Prefix: c.Prefix, Node: c.Node, Status: func() cluster.Status { return fl.status(d) },
		Interval: d.statusInterval, TTL: d.statusTTL,
	})
	fl.applies = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fqdngate_fleet_policy_applies_total",
		Help: "Shared policy revisions this gateway tried to put in force, by result (success, failure). A failure keeps the revision in force.",
	}, []string{"result"})
	fl.revision = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "fqdngate_fleet_policy_revision",
		Help: "The shared policy revision in force; 0 before one applied (the policy then allows nothing).",
	})
	degraded := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "fqdngate_fleet_status_degraded",
		Help: "1 while this gateway cannot write its status to etcd or follow the shared policy there (it keeps enforcing what it has), else 0.",
	}, func() float64 {
		if fl.etcdErr() != nil {
			return 1
		}
		return 0
	})
	d.reg.MustRegister(fl.applies, fl.revision, degraded)
	fl.applies.WithLabelValues("success")
	fl.applies.WithLabelValues("failure")

	rctx, cancel := context.WithTimeout(ctx, cluster.DialTimeout)
	defer cancel()
	r, err := fl.store.Current(rctx)
	switch {
	case err == nil:
		fl.latest = &r
	case errors.Is(err, cluster.ErrNoRevision):
		d.log.Warn("the fleet has no shared policy yet; allowing nothing until one is pushed", "component", "fleet")
	case errors.Is(err, cluster.ErrBadRevision):
		fl.rejected, fl.lastErr = r.Number, err.Error()
		d.log.Error("the shared policy revision in force cannot be read; allowing nothing until a good one is pushed", "component", "fleet", "revision", r.Number, "err", err)
	default:
		fl.watchErr = err
		d.log.Warn("etcd did not hand over the shared policy; allowing nothing until it does", "component", "fleet", "err", err)
	}
	return fl, nil
}

// run follows the shared policy and keeps the status key, until close.
// ctx is the daemon's: what a revision starts (listeners) lives under it.
func (fl *fleetState) run(ctx context.Context, d *Daemon) {
	wctx, cancel := context.WithCancel(ctx)
	fl.cancel = cancel
	fl.wg.Add(2)
	go func() {
		defer fl.wg.Done()
		fl.store.Watch(wctx, func(r cluster.Revision, err error) { d.applyShared(ctx, r, err) }, fl.setWatchErr)
	}()
	go func() {
		defer fl.wg.Done()
		_ = fl.ann.Run(wctx)
	}()
}

// close stops following etcd, withdraws the status key and closes the
// client. Only the first call does anything.
func (fl *fleetState) close() {
	fl.closeOnce.Do(func() {
		if fl.cancel != nil {
			fl.cancel()
		}
		fl.wg.Wait()
		fl.cli.Close()
	})
}

// latestSource is the shared half to compose with: the newest revision, or
// nil before one arrived.
func (fl *fleetState) latestSource() (*policy.Source, *cluster.Revision) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.latest == nil {
		return nil, nil
	}
	src := fl.latest.Document()
	return &src, fl.latest
}

// offer records r as the newest revision. It reports whether r is newer
// than the one in force, that is whether there is something to apply.
func (fl *fleetState) offer(r cluster.Revision) bool {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.latest == nil || r.Number > fl.latest.Number {
		fl.latest = &r
	}
	return fl.inForce == nil || fl.latest.Number != fl.inForce.Number
}

// applied records that the policy composed with r (nil: no shared half)
// is in force.
func (fl *fleetState) applied(r *cluster.Revision) {
	fl.mu.Lock()
	fl.inForce = r
	if r != nil && r.Number >= fl.rejected {
		fl.rejected = 0
	}
	fl.lastErr = ""
	n := int64(0)
	if r != nil {
		n = r.Number
	}
	fl.mu.Unlock()
	fl.revision.Set(float64(n))
	fl.ann.Poke()
}

// failed records that putting a policy in force failed: composed with
// revision rev (0: none) when the shared half was the newest.
func (fl *fleetState) failed(rev int64, err error) {
	fl.mu.Lock()
	if cur := fl.inForce; rev > 0 && (cur == nil || rev > cur.Number) {
		fl.rejected = max(fl.rejected, rev)
	}
	fl.lastErr = oneLine(err)
	fl.mu.Unlock()
	fl.ann.Poke()
}

func (fl *fleetState) setWatchErr(err error) {
	fl.mu.Lock()
	fl.watchErr = err
	fl.mu.Unlock()
}

// etcdErr returns why this gateway cannot use etcd now, or nil.
func (fl *fleetState) etcdErr() error {
	fl.mu.Lock()
	err := fl.watchErr
	fl.mu.Unlock()
	if err != nil {
		return err
	}
	return fl.ann.Err()
}

// status is what the announcer writes.
func (fl *fleetState) status(d *Daemon) cluster.Status {
	st := cluster.Status{Started: fl.started, Version: d.opts.Version}
	if c := d.comps; c != nil {
		st.Learned = c.learnedCount()
	}
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.inForce != nil {
		st.PolicyRevision, st.PolicySHA256 = fl.inForce.Number, fl.inForce.SHA256
	}
	st.RejectedRevision, st.LastError = fl.rejected, fl.lastErr
	return st
}

// ready reports what keeps a fleet gateway from being ready: no shared
// revision in force yet, or the learned set not loaded.
func (fl *fleetState) ready() error {
	fl.mu.Lock()
	inForce, why := fl.inForce, fl.lastErr
	if why == "" && fl.watchErr != nil {
		why = "etcd: " + fl.watchErr.Error()
	}
	fl.mu.Unlock()
	if inForce == nil {
		if why == "" {
			why = "waiting for etcd"
		}
		return fmt.Errorf("no shared policy revision applied yet (%s)", why)
	}
	if fl.learned != nil {
		select {
		case <-fl.learned.Loaded():
		default:
			return errors.New("loading the fleet's learned addresses from etcd")
		}
	}
	return nil
}

// degraded reports that etcd cannot be used now: the gateway keeps
// enforcing what it has, and stays ready.
func (fl *fleetState) degraded() error {
	if err := fl.etcdErr(); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	if fl.learned != nil {
		if err := fl.learned.Degraded(); err != nil {
			return fmt.Errorf("etcd: %w", err)
		}
	}
	return nil
}

// report is what /v1/fleet serves: the fleet as etcd shows it.
func (fl *fleetState) report(ctx context.Context) (any, error) {
	ctx, cancel := context.WithTimeout(ctx, cluster.DialTimeout)
	defer cancel()
	return cluster.ReadFleet(ctx, fl.cli, fl.cluster.Prefix)
}

// oneLine writes err on one line, bounded, for the status key.
func oneLine(err error) string {
	s := strings.ReplaceAll(err.Error(), "\n", "; ")
	if len(s) > 2000 {
		s = s[:2000] + "..."
	}
	return s
}

// applyShared puts a revision the watch delivered in force, the way a
// reload does; err says the revision cannot be used at all.
func (d *Daemon) applyShared(ctx context.Context, r cluster.Revision, err error) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	why := fmt.Sprintf("shared revision %d", r.Number)
	if err != nil {
		d.fl.failed(r.Number, err)
		d.fl.applies.WithLabelValues("failure").Inc()
		d.log.Error("shared policy revision refused; the policy in force stays", "component", "fleet", "revision", r.Number, "err", err)
		return
	}
	if !d.fl.offer(r) {
		return
	}
	if err := d.apply(ctx, why, d.localData); err != nil {
		d.fl.applies.WithLabelValues("failure").Inc()
		d.logRejected(why, err)
		return
	}
	d.fl.applies.WithLabelValues("success").Inc()
}

// learnedCount is how many learned addresses this gateway enforces,
// counted without listing them.
func (c *components) learnedCount() int {
	if c.nft != nil {
		return c.nft.Stats().Learned
	}
	if c.store != nil {
		return c.store.Len()
	}
	if s := c.dns.Learned(); s != nil {
		return s.Len()
	}
	return 0
}
