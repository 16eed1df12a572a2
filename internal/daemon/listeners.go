package daemon

import (
	"context"
	"fmt"
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

// reconcileListeners starts, moves and stops listeners to match p. New
// sockets are all bound before any old one stops, so a reload whose new
// address cannot be bound changes nothing. Listeners whose address did not
// change keep running untouched. Callers hold reloadMu.
func (d *Daemon) reconcileListeners(ctx context.Context, p *policy.Policy) error {
	var news []bound
	for _, kind := range listenerKinds {
		addr := listenAddr(kind, p.Listen)
		if cur := d.listener(kind); cur != nil && cur.addr == addr {
			continue
		}
		if addr == "" {
			continue
		}
		serve, closeFn, actual, err := d.comps.bind(kind, addr)
		if err != nil {
			for _, b := range news {
				b.close()
			}
			return fmt.Errorf("starting %s listener on %s: %w", kind, addr, err)
		}
		news = append(news, bound{kind, addr, actual, serve, closeFn})
	}
	for _, kind := range listenerKinds {
		addr := listenAddr(kind, p.Listen)
		if cur := d.listener(kind); cur != nil && cur.addr != addr {
			d.stop(kind, cur)
		}
	}
	for _, b := range news {
		d.start(ctx, b)
	}
	return nil
}

func (d *Daemon) start(ctx context.Context, b bound) {
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

func (d *Daemon) stop(kind string, l *listener) {
	l.cancel()
	<-l.done
	d.mu.Lock()
	delete(d.running, kind)
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
