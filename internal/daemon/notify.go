package daemon

import (
	"fmt"
	"time"

	"github.com/fqdngate/fqdngate/internal/sdnotify"
)

// notifier keeps systemd's view of the daemon (Options.Notify): READY=1
// is sent once, when ready() first reports nil, the condition /readyz
// reports; until then STATUS says what is missing. It is used from Run's
// loop only.
type notifier struct {
	d      *Daemon
	n      *sdnotify.Notifier
	ready  bool   // READY=1 sent
	status string // last STATUS sent
	warned bool
}

func (d *Daemon) newNotifier() *notifier {
	return &notifier{d: d, n: d.opts.Notify}
}

func (n *notifier) send(state ...string) {
	if err := n.n.Send(state...); err != nil && !n.warned {
		n.warned = true
		n.d.log.Warn("systemd notification failed; systemd may not see fqdngate start or reload", "err", err)
	}
}

// poll sends READY=1 if the daemon is ready and returns nil, or else
// updates STATUS and returns when to look again.
func (n *notifier) poll() <-chan time.Time {
	if n.n == nil || n.ready {
		return nil
	}
	if err := n.d.ready(); err != nil {
		if s := "starting; not ready: " + err.Error(); s != n.status {
			n.status = s
			n.send(sdnotify.Status(s)...)
		}
		return time.After(readyPoll)
	}
	n.ready = true
	n.send(sdnotify.Ready(n.serving())...)
	return nil
}

func (n *notifier) serving() string {
	p := n.d.Policy()
	return fmt.Sprintf("serving %s: %d rules, mode %s, firewall %s", p.File, len(p.Rules), p.Mode, p.Firewall.Backend)
}

// reloading and reloaded bracket a SIGHUP reload, once READY=1 was sent
// (before, systemd is still waiting for the start). A rejected policy
// still ends the reload: the previous one stays in force.
func (n *notifier) reloading() {
	if n.n != nil && n.ready {
		n.send(sdnotify.Reloading()...)
	}
}

func (n *notifier) reloaded() {
	if n.n != nil && n.ready {
		n.send(sdnotify.Ready(n.serving())...)
	}
}

func (n *notifier) stopping() {
	if n.n != nil {
		n.send(sdnotify.Stopping()...)
	}
}
