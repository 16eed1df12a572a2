package daemon

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/fleet"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// shareLearned wraps local, what enforces on this gateway (the nftables
// backend, or nil for an in-memory store made here), in the fleet's shared
// learned state, and returns what the DNS firewall publishes to. Elements
// from etcd are checked against the policy in force (fleet.Accept),
// updated at every commit (acceptPolicy).
func (c *components) shareLearned(p *policy.Policy, local learn.Publisher) (learn.Publisher, error) {
	d := c.d
	if local == nil {
		store := learn.NewStore(learn.StoreConfig{MaxPerName: p.DNS.MaxLearnedPerName})
		local, c.store, c.learned = store, store, store.All
	}
	cl := d.fl.cluster
	o := fleet.Options{
		Prefix:      cl.Prefix,
		Node:        cl.Node,
		Hold:        fleet.HoldPeers,
		HoldTimeout: cl.HoldTimeout,
		OnTimeout:   fleet.Release,
		Local:       local,
		Accept:      fleet.Accept(p, c.local),
		MaxPerName:  p.DNS.MaxLearnedPerName,
		Released:    c.auditReleased,
		Logger:      d.log.With("component", "fleet"),
		Registerer:  d.reg,
	}
	if cl.Hold == policy.HoldLocal {
		o.Hold = fleet.HoldLocal
	}
	if cl.OnHoldTimeout == policy.TimeoutServFail {
		o.OnTimeout = fleet.ServFail
	}
	f, err := fleet.New(d.fl.cli, o)
	if err != nil {
		return nil, err
	}
	c.fleet = f
	d.fl.learned = f
	return f, nil
}

// stopFleet ends the shared learned state's work and waits for it: it
// revokes this gateway's lease on the way out. Answers published after
// it are enforced here only.
func (c *components) stopFleet() {
	if c.fleetStop != nil {
		c.fleetStop()
		<-c.fleetDone
	}
}

// acceptPolicy makes p the policy elements from etcd are checked against,
// once p is in force (the kernel has its sets), and programs the elements
// etcd holds that p accepts and the previous policy did not: the learned
// set of a gateway that started on its local file alone, or of a rule or
// group a revision adds. It cannot fail (see fleet.Fleet.SetAccept).
func (c *components) acceptPolicy(ctx context.Context, p *policy.Policy) {
	if c.fleet != nil {
		c.fleet.SetAccept(ctx, fleet.Accept(p, c.local), p.DNS.MaxLearnedPerName)
	}
}

// refreshLeader reports whether this gateway runs the refresh timers of
// rules with refresh: always when standalone; in a fleet, when it is the
// gateway the fleet elected (or has lost etcd, and so refreshes for
// itself).
func (c *components) refreshLeader() bool {
	return c.fleet == nil || c.fleet.IsLeader()
}

// auditReleased writes an audit line for an answer a fleet hold released
// after cluster.hold_timeout, before every gateway enforced it: the
// answer's own line says it was allowed; this one says a connection
// through a lagging gateway may have been dropped, and why.
func (c *components) auditReleased(batch []learn.Entry, why string) {
	if len(batch) == 0 {
		return
	}
	e := batch[0]
	addrs := make([]string, 0, len(batch))
	for _, x := range batch {
		addrs = append(addrs, x.Addr.String())
	}
	c.d.audit.Record(context.Background(), audit.Event{
		Component: audit.DNS,
		Name:      string(e.Name),
		Decision:  policy.Decision{Action: policy.Allow, Rule: c.d.Policy().Rule(e.Rule)},
		Msg:       "hold_timeout",
		Attrs: []slog.Attr{
			slog.String("group", e.Group),
			slog.String("addresses", strings.Join(addrs, ",")),
			slog.String("why", why),
			slog.String("result", "released"),
		},
	})
}

// publishTimeout bounds one Publish of the DNS firewall: its default 2s,
// and for a fleet gateway the hold's timeout on top.
func publishTimeout(p *policy.Policy) time.Duration {
	const local = 2 * time.Second
	if p.Cluster == nil {
		return local
	}
	return local + p.Cluster.HoldTimeout
}
