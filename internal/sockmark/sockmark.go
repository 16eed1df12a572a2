// Package sockmark marks fqdngate's own sockets so the nftables ruleset it
// installs can let its upstream DNS queries and proxy connections through
// while every other process on the host is held to the policy.
package sockmark

import (
	"errors"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Mark is the SO_MARK value on every socket fqdngate opens towards the
// outside. The nftables backend accepts output traffic carrying it.
const Mark = 0x66716467 // "fqdg"

// unpermitted is set once setting a mark has been refused.
var unpermitted atomic.Bool

// Control is a net.Dialer / net.ListenConfig Control hook that sets Mark.
// Setting a mark needs CAP_NET_ADMIN; without it the socket stays unmarked,
// which only matters when the nftables backend runs, and that refuses to
// start without the same capability. A capability dropped stays dropped,
// so after one refusal Control stops asking: it saves a failing system call
// on every connection of a proxy without the nftables backend.
func Control(network, address string, c syscall.RawConn) error {
	if unpermitted.Load() {
		return nil
	}
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, Mark)
	}); err != nil {
		return err
	}
	if errors.Is(serr, unix.EPERM) {
		unpermitted.Store(true)
		return nil
	}
	return serr
}
