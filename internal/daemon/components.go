package daemon

import (
	"context"
	"errors"
	"net"

	"github.com/fqdngate/fqdngate/internal/admin"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// components are the long-lived parts built once at start; listeners come
// and go around them.
type components struct {
	d       *Daemon
	learned func() []learn.Entry
}

func newComponents(ctx context.Context, d *Daemon, p *policy.Policy) (*components, error) {
	c := &components{d: d}
	return c, nil
}

// apply hands a new policy to components that keep state derived from it
// (the nftables table). It runs before the policy is published.
func (c *components) apply(ctx context.Context, p *policy.Policy) error { return nil }

func (c *components) close() {}

// wait returns when every component goroutine has stopped.
func (c *components) wait() {}

// bind opens the sockets of one listener kind.
func (c *components) bind(kind, addr string) (serve func(context.Context) error, closeFn func(), actual string, err error) {
	switch kind {
	case "admin":
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, "", err
		}
		h := admin.Handler(admin.Config{
			Policy:     c.d.Policy,
			Generation: c.d.gen.Load,
			Ready:      c.d.ready,
			Learned:    c.learned,
			Gatherer:   c.d.reg,
		})
		return func(ctx context.Context) error { return admin.Serve(ctx, ln, h) }, func() { ln.Close() }, ln.Addr().String(), nil
	}
	return nil, nil, "", errors.New("not built yet")
}
