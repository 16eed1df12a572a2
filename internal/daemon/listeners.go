package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// Listener kinds, in the order they start.
var listenerKinds = []string{"admin", "dns", "proxy", "transparent"}

func listenAddr(kind string, l policy.Listen) string {
	switch kind {
	case "admin":
		return l.Admin
	case "dns":
		return l.DNS
	case "proxy":
		return l.Proxy
	case "transparent":
		return l.Transparent
	}
	return ""
}

// listener is one running listener of one kind.
type listener struct {
	addr    string
	cancel  context.CancelFunc
	done    chan struct{}
	serving atomic.Bool
}

// bound is a listener whose sockets are open, ready to serve.
type bound struct {
	kind, addr string
	actual     string // the bound address, which differs from addr for port 0
	serve      func(ctx context.Context) error
	close      func()
}

// bindListeners opens the sockets of every listener p configures at an
// address other than the running one's, and lists the running listeners
// that p moves or removes. Listeners whose address did not change are left
// alone. On error it closes what it opened. Callers hold reloadMu.
func (d *Daemon) bindListeners(p *policy.Policy) (binds []bound, stops []string, err error) {
	for _, kind := range listenerKinds {
		addr := listenAddr(kind, p.Listen)
		cur := d.listener(kind)
		if cur != nil && cur.addr == addr {
			continue
		}
		if cur != nil {
			stops = append(stops, kind)
		}
		if addr == "" {
			continue
		}
		serve, closeFn, actual, err := d.comps.bind(kind, addr)
		if err != nil {
			for _, b := range binds {
				b.close()
			}
			return nil, nil, fmt.Errorf("starting %s listener on %s: %w", kind, addr, err)
		}
		binds = append(binds, bound{kind, addr, actual, serve, closeFn})
	}
	return binds, stops, nil
}

// switchListeners starts the bound listeners, then stops the running ones
// of the kinds in stops: a moved listener's new address serves before its
// old one stops. It cannot fail. Callers hold reloadMu.
func (d *Daemon) switchListeners(ctx context.Context, binds []bound, stops []string) {
	old := make(map[string]*listener, len(stops))
	for _, kind := range stops {
		old[kind] = d.listener(kind)
	}
	for _, b := range binds {
		d.startListener(ctx, b)
	}
	for _, kind := range stops {
		d.stop(kind, old[kind])
	}
}

func (d *Daemon) startListener(ctx context.Context, b bound) {
	if ap, err := netip.ParseAddrPort(b.actual); err == nil {
		// The proxy adds its own listeners when they serve; it must never
		// connect to the others either, wherever a reload moved them.
		d.comps.proxy.AddSelf(ap)
	}
	lctx, cancel := context.WithCancel(ctx)
	l := &listener{addr: b.addr, cancel: cancel, done: make(chan struct{})}
	l.serving.Store(true)
	d.mu.Lock()
	d.running[b.kind] = l
	d.mu.Unlock()
	d.log.Info("listening", "component", b.kind, "addr", b.actual)
	go func() {
		defer close(l.done)
		err := b.serve(lctx)
		l.serving.Store(false)
		if lctx.Err() == nil {
			if err == nil {
				err = fmt.Errorf("%s listener on %s stopped", b.kind, b.addr)
			}
			select {
			case d.fatal <- fmt.Errorf("%s listener on %s: %w", b.kind, b.addr, err):
			default:
			}
		}
	}()
}

// stop stops l, a listener of kind, and forgets it unless another
// listener of its kind has taken its place.
func (d *Daemon) stop(kind string, l *listener) {
	l.cancel()
	<-l.done
	d.mu.Lock()
	if d.running[kind] == l {
		delete(d.running, kind)
	}
	d.mu.Unlock()
	d.log.Info("stopped listening", "component", kind, "addr", l.addr)
}

// stopAll stops every listener; each drains its in-flight work within the
// shutdown deadline the components enforce.
func (d *Daemon) stopAll() {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	for _, kind := range listenerKinds {
		if l := d.listener(kind); l != nil {
			l.cancel()
		}
	}
	for _, kind := range listenerKinds {
		if l := d.listener(kind); l != nil {
			<-l.done
			d.mu.Lock()
			delete(d.running, kind)
			d.mu.Unlock()
		}
	}
}

func (d *Daemon) listener(kind string) *listener {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.running[kind]
}
