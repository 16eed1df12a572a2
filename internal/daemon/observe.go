package daemon

import (
	"context"
	"time"
)

// observeRetry is how soon a kernel re-apply that failed at an
// observe_until deadline is tried again.
const observeRetry = time.Second

// observeTimer fires at the next observe_until deadline of the policy in
// force. The kernel stops accepting that group's sources at the deadline
// by itself (its accept rule carries the deadline, internal/nft); the
// timer only tidies the expired rule away. Run owns it; arm follows every
// policy put in force.
type observeTimer struct {
	t *time.Timer
	C <-chan time.Time // nil when no group observes
}

// arm sets the timer to fire at the policy's next deadline, or never,
// and says which groups observe.
func (o *observeTimer) arm(d *Daemon) {
	o.stop()
	p, now := d.Policy(), d.now()
	for _, g := range p.Observed(now) {
		if g.Observing {
			d.log.Info("source group observes: what the policy denies it is let through and logged as would-deny", "group", g.Group, "until", g.Until.Format(time.RFC3339))
		}
	}
	if next, ok := p.NextObserveEnd(now); ok {
		o.after(next.Sub(now))
	}
}

func (o *observeTimer) after(dur time.Duration) {
	o.stop()
	o.t = time.NewTimer(dur)
	o.C = o.t.C
}

func (o *observeTimer) stop() {
	if o.t != nil {
		o.t.Stop()
	}
	o.t, o.C = nil, nil
}

// now is the daemon's clock; the policy's (policy.SetClock) is the same.
func (d *Daemon) now() time.Time { return d.Policy().Now() }

// observeEnded applies the policy in force to the kernel again, once an
// observe_until has passed: the ruleset is built at the time it is
// applied, so the group's accept, which no longer matches since the
// kernel's clock passed its deadline, is removed. Userspace needs
// nothing: Decide reads the clock. It reports whether the kernel took it;
// if not, the expired rule stays (it accepts nothing) and the caller
// tries again.
func (d *Daemon) observeEnded(ctx context.Context) bool {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	p := d.Policy()
	now := d.now()
	var ended []string
	for _, g := range p.Observed(now) {
		if !g.Observing {
			ended = append(ended, g.Group)
		}
	}
	if b := d.comps.nft; b != nil {
		if err := b.Apply(ctx, p); err != nil {
			d.log.Warn("observe_until passed and the kernel enforces the group (its accept rule carries the deadline), but removing that expired rule failed; trying again", "groups", ended, "err", err)
			return false
		}
	}
	d.log.Info("observe_until passed; the group is enforced", "groups", ended)
	return true
}
