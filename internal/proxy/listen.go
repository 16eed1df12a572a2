package proxy

import (
	"context"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// Client keep-alive probes: the values net/http and net.Listen give every
// accepted connection (idle 15 s, then every 15 s, 9 unanswered end it).
const (
	clientKeepAliveIdle     = 15 * time.Second
	clientKeepAliveInterval = 15 * time.Second
	clientKeepAliveCount    = 9
)

// Listen opens a TCP listener for the explicit or transparent proxy. Its
// connections have TCP keep-alive on with the usual settings, but set once
// on the listening socket, whose options Linux copies to every connection
// it accepts, instead of with four setsockopt calls per connection as
// net.Listen does: a short tunnel makes about 35 system calls in all, so
// that is a tenth of them. An IPv4 address, 0.0.0.0 included, receives
// IPv4 only (policy.ListenNetwork).
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{
		KeepAlive: -1, // the socket's own settings, inherited
		Control: func(_, _ string, c syscall.RawConn) error {
			return setKeepAlive(c, clientKeepAliveIdle)
		},
	}
	return lc.Listen(ctx, policy.ListenNetwork("tcp", addr), addr)
}

// setKeepAlive turns keep-alive on for socket c, idle before the first
// probe.
func setKeepAlive(c syscall.RawConn, idle time.Duration) error {
	var serr error
	if err := c.Control(func(fd uintptr) { serr = setKeepAliveFD(int(fd), idle) }); err != nil {
		return err
	}
	return serr
}

func setKeepAliveFD(fd int, idle time.Duration) error {
	for _, o := range []struct{ level, opt, v int }{
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(idle / time.Second)},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(clientKeepAliveInterval / time.Second)},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, clientKeepAliveCount},
	} {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
			return &net.OpError{Op: "setsockopt", Net: "tcp", Err: err}
		}
	}
	return nil
}
