package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fqdngate/fqdngate/internal/kube"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// The kubernetes section's wiring: a kube.Watcher follows the cluster's
// pods from start (when the boot policy has the section) and hands each
// snapshot to the kernel's pod sets, then to the policy in force. A reload
// computes the new policy's snapshot from the informers' cache in prepare;
// commit applies it with the rest of the ruleset and then points the
// watcher at the new policy. Snapshots are taken under reloadMu, so a
// reload and a snapshot never interleave.

// startKube builds the watcher for p's kubernetes section, if it has one.
// It does not run until the first commit (components.run).
func (c *components) startKube(p *policy.Policy) error {
	k := p.Kubernetes
	if k == nil {
		return nil
	}
	client := c.d.opts.KubeClient
	if client == nil {
		var err error
		if client, err = kube.NewClient(k.Kubeconfig); err != nil {
			return err
		}
	}
	node := k.Node
	w, err := kube.New(kube.Config{
		Client:    client,
		Node:      node,
		Policy:    p,
		OnMembers: c.onMembers,
		Logger:    c.d.log.With("component", "kubernetes"),
	})
	if err != nil {
		return fmt.Errorf("following the kubernetes cluster: %w", err)
	}
	c.kube = w
	c.d.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "fqdngate_kubernetes_synced",
			Help: "1 once every pod and namespace was listed; until then groups that select pods have no members.",
		}, func() float64 { return b2f(w.Status().Synced) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "fqdngate_kubernetes_api_failing",
			Help: "1 from a failed list or watch of the kubernetes API until every informer lists or watches successfully again; the last known pods stay in force meanwhile.",
		}, func() float64 { return b2f(w.Status().APIError != "") }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "fqdngate_kubernetes_pod_addresses",
			Help: "Pod addresses in the snapshot in force.",
		}, func() float64 { return float64(c.d.Policy().Members().Len()) }),
		c.kubeUpdates,
	)
	return nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// onMembers puts a snapshot in force: the kernel's pod sets first, then
// the policy's decisions. The kernel goes first so that an address that
// left a group (its pod went, or a new pod has it) is out of the group's
// set before anything stops treating it as a member; an address joining
// a group is let through by the kernel a moment before the DNS firewall
// answers for it, which opens nothing by itself. A snapshot of a policy
// no longer in force is dropped: the watcher follows with one of the
// new policy (SetPolicy).
func (c *components) onMembers(m *policy.Members) {
	d := c.d
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	p := d.Policy()
	if !m.For(p) {
		return
	}
	if b := c.nft; b != nil {
		ch, err := b.SetMembers(context.Background(), m)
		if err != nil {
			// The kernel keeps the previous members; the policy must
			// not get ahead of it.
			c.kubeUpdates.WithLabelValues("failure").Inc()
			d.log.Error("could not update the pod sets; the previous members stay in force", "component", "kubernetes", "err", err)
			return
		}
		if ch.Added+ch.Removed > 0 {
			d.log.Debug("pod sets updated", "component", "kubernetes", "added", ch.Added, "removed", ch.Removed)
		}
	}
	if err := p.SetMembers(m); err != nil {
		return
	}
	c.kubeUpdates.WithLabelValues("success").Inc()
}

// prepareMembers gives p its snapshot before commit, from what the watcher
// knows now: the kernel's pod sets and the decisions start from it.
func (c *components) prepareMembers(p *policy.Policy) {
	if c.kube == nil || len(p.Pods) == 0 {
		return
	}
	_ = p.SetMembers(c.kube.Prepare(p)) // of p, so never refused
}

// commitMembers points the watcher at p, once p is in force.
func (c *components) commitMembers(p *policy.Policy) {
	if c.kube != nil {
		c.kube.SetPolicy(p)
	}
}

// runKube runs the watcher under the components' context.
func (c *components) runKube(ctx context.Context) {
	if c.kube == nil {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if err := c.kube.Run(ctx); err != nil {
			select {
			case c.d.fatal <- fmt.Errorf("following the kubernetes cluster: %w", err):
			default:
			}
		}
	}()
}

// kubeReady reports a watcher that has not listed the cluster yet: the
// groups that select pods have no members, so their pods get nothing.
func (d *Daemon) kubeReady() error {
	if c := d.comps; c != nil && c.kube != nil && len(d.Policy().Pods) > 0 && !c.kube.Synced() {
		return errors.New("kubernetes not synced: the groups that select pods have no members yet")
	}
	return nil
}

// kubeDegraded reports a kubernetes API that cannot be listed or watched:
// the last known pods stay in force, and new pods get nothing.
func (d *Daemon) kubeDegraded() error {
	if c := d.comps; c != nil && c.kube != nil {
		if st := c.kube.Status(); st.APIError != "" {
			what := "failing"
			if st.Unreachable {
				what = "unreachable"
			}
			return fmt.Errorf("kubernetes API %s since %s, keeping the last known state (%s)", what, st.Since.UTC().Format(time.RFC3339), st.APIError)
		}
	}
	return nil
}

// podOf names the pod that has address a, by the policy in force, for
// audit lines.
func (d *Daemon) podOf(a netip.Addr) (string, bool) {
	p := d.Policy()
	if p == nil || len(p.Pods) == 0 {
		return "", false
	}
	ref, ok := p.PodOf(a)
	if !ok {
		return "", false
	}
	return ref.String(), true
}
