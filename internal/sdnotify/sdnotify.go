// Package sdnotify tells the service manager how fqdngate is doing, with
// the sd_notify(3) protocol: one datagram of newline-separated
// VARIABLE=value lines to the unix datagram socket named by
// $NOTIFY_SOCKET. systemd's Type=notify waits for READY=1 before it
// counts the service as started.
//
// It is a few lines over a unixgram socket, so fqdngate needs neither
// libsystemd nor go-systemd.
package sdnotify

import (
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Notifier sends states to one socket. The nil *Notifier, which FromEnv
// returns outside systemd, sends nothing.
type Notifier struct {
	addr *net.UnixAddr
}

// FromEnv returns a Notifier for $NOTIFY_SOCKET, or nil when it is unset
// (not started by systemd with Type=notify). A name starting with @ is
// an abstract socket, as systemd passes it.
func FromEnv() *Notifier {
	return New(os.Getenv("NOTIFY_SOCKET"))
}

// New returns a Notifier for the socket at path, or nil if path is empty.
func New(path string) *Notifier {
	if path == "" {
		return nil
	}
	// Go's net package reads a leading @ as the abstract namespace.
	return &Notifier{addr: &net.UnixAddr{Name: path, Net: "unixgram"}}
}

// Send sends the assignments (such as "READY=1") as one datagram.
func (n *Notifier) Send(state ...string) error {
	if n == nil || len(state) == 0 {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("notifying the service manager at %s: %w", n.addr.Name, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(strings.Join(state, "\n") + "\n")); err != nil {
		return fmt.Errorf("notifying the service manager at %s: %w", n.addr.Name, err)
	}
	return nil
}

// Ready says the service is up (or, after Reloading, that the reload is
// done), with a status line for systemctl status.
func Ready(status string) []string {
	return []string{"READY=1", "STATUS=" + oneLine(status)}
}

// Reloading says a reload started. MONOTONIC_USEC is the time of the
// request on CLOCK_MONOTONIC, which systemd uses to match the READY=1
// that ends it.
func Reloading() []string {
	return []string{"RELOADING=1", fmt.Sprintf("MONOTONIC_USEC=%d", monotonicUsec())}
}

// Stopping says the service is shutting down.
func Stopping() []string { return []string{"STOPPING=1", "STATUS=stopping"} }

// Status is a free-form status line, such as why it is not ready yet.
func Status(s string) []string { return []string{"STATUS=" + oneLine(s)} }

// oneLine keeps a status to one assignment: a newline would start a new
// variable.
func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / int64(time.Microsecond)
}
