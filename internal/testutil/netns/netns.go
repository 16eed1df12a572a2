// Package netns gives tests throw-away Linux network namespaces joined by
// veth pairs, so firewall code can be exercised against a real kernel.
package netns

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// RequireRoot skips t when the process cannot create namespaces. Under CI
// (CI=true) it fails instead: a kernel test that silently skips in CI is a
// test that never runs.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("needs root for network namespaces, and CI=true forbids skipping")
	}
	t.Skip("needs root for network namespaces")
}

// NS is a named network namespace that exists until the test ends.
type NS struct {
	Name string
	file *os.File // keeps an fd open for Fd and Do
	t    testing.TB
}

var seq atomic.Int64

// New creates a namespace with a unique name and loopback up; it is deleted
// when t ends.
func New(t testing.TB) *NS {
	t.Helper()
	RequireRoot(t)
	name := fmt.Sprintf("fqdngate-test-%d-%d", os.Getpid(), seq.Add(1))
	mustRun(t, "ip", "netns", "add", name)
	ns := &NS{Name: name, t: t}
	t.Cleanup(func() {
		if ns.file != nil {
			ns.file.Close()
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("deleting namespace %s: %v: %s", name, err, out)
		}
	})
	f, err := os.Open("/run/netns/" + name)
	if err != nil {
		t.Fatalf("opening namespace %s: %v", name, err)
	}
	ns.file = f
	ns.IP("link", "set", "lo", "up")
	// Duplicate address detection would leave fresh IPv6 addresses,
	// link-local ones included, unusable for a second or more.
	ns.MustExec("sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	return ns
}

// Fd returns a file descriptor referring to the namespace, valid until the
// test ends (for nftables.WithNetNSFd).
func (ns *NS) Fd() int { return int(ns.file.Fd()) }

// IP runs `ip -n <ns> args...` and fails the test on error.
func (ns *NS) IP(args ...string) string {
	ns.t.Helper()
	return mustRun(ns.t, "ip", append([]string{"-n", ns.Name}, args...)...)
}

// Exec runs a command inside the namespace and returns its combined output.
func (ns *NS) Exec(name string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...).CombinedOutput()
	return string(out), err
}

// MustExec is Exec that fails the test on error.
func (ns *NS) MustExec(name string, args ...string) string {
	ns.t.Helper()
	out, err := ns.Exec(name, args...)
	if err != nil {
		ns.t.Fatalf("in %s: %s %s: %v\n%s", ns.Name, name, strings.Join(args, " "), err, out)
	}
	return out
}

// Addr assigns prefix (e.g. "192.0.2.1/24") to dev and sets dev up. IPv6
// addresses skip duplicate address detection so they are usable at once.
func (ns *NS) Addr(dev, prefix string) {
	ns.t.Helper()
	args := []string{"addr", "add", prefix, "dev", dev}
	if strings.Contains(prefix, ":") {
		args = append(args, "nodad")
	}
	ns.IP(args...)
	ns.IP("link", "set", dev, "up")
}

// Route adds a route to dst via gw ("default" is a valid dst).
func (ns *NS) Route(dst, gw string) {
	ns.t.Helper()
	if strings.Contains(gw, ":") {
		ns.IP("-6", "route", "add", dst, "via", gw)
		return
	}
	ns.IP("route", "add", dst, "via", gw)
}

// Forwarding turns on IPv4 and IPv6 forwarding, making ns a router.
func (ns *NS) Forwarding() {
	ns.t.Helper()
	ns.MustExec("sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
}

// Veth joins a (interface aDev) and b (interface bDev) with a veth pair.
func Veth(t testing.TB, a *NS, aDev string, b *NS, bDev string) {
	t.Helper()
	mustRun(t, "ip", "-n", a.Name, "link", "add", aDev, "type", "veth", "peer", "name", bDev, "netns", b.Name)
	a.MustExec("sysctl", "-q", "-w", "net.ipv6.conf."+aDev+".accept_dad=0")
	b.MustExec("sysctl", "-q", "-w", "net.ipv6.conf."+bDev+".accept_dad=0")
	a.IP("link", "set", aDev, "up")
	b.IP("link", "set", bDev, "up")
}

// Do runs f on an OS thread switched into the namespace. Sockets created by
// f stay in the namespace after Do returns; goroutines f starts do not run
// in it.
func (ns *NS) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := unix.Setns(ns.Fd(), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering namespace %s: %w", ns.Name, err)
			return
		}
		ferr := f()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: the runtime kills a locked thread
			// when its goroutine exits, so it never runs other code.
			errc <- fmt.Errorf("leaving namespace %s: %w", ns.Name, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Listen opens a listener inside the namespace; it is closed when the test
// ends.
func (ns *NS) Listen(network, addr string) net.Listener {
	ns.t.Helper()
	var ln net.Listener
	err := ns.Do(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		ns.t.Fatalf("listening on %s %s in %s: %v", network, addr, ns.Name, err)
	}
	ns.t.Cleanup(func() { ln.Close() })
	return ln
}

// ListenPacket opens a packet listener inside the namespace; it is closed
// when the test ends.
func (ns *NS) ListenPacket(network, addr string) net.PacketConn {
	ns.t.Helper()
	var pc net.PacketConn
	err := ns.Do(func() (err error) {
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	if err != nil {
		ns.t.Fatalf("listening on %s %s in %s: %v", network, addr, ns.Name, err)
	}
	ns.t.Cleanup(func() { pc.Close() })
	return pc
}

// Dial connects from inside the namespace, optionally from a given local
// address ("" lets the kernel choose), giving up after timeout.
func (ns *NS) Dial(network, local, remote string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	if local != "" {
		var err error
		switch network {
		case "udp", "udp4", "udp6":
			d.LocalAddr, err = net.ResolveUDPAddr(network, net.JoinHostPort(local, "0"))
		default:
			d.LocalAddr, err = net.ResolveTCPAddr(network, net.JoinHostPort(local, "0"))
		}
		if err != nil {
			return nil, err
		}
	}
	return ns.DialWith(&d, network, remote)
}

// DialWith connects from inside the namespace with d (for a Control hook
// or a local address); d.Timeout bounds the attempt.
func (ns *NS) DialWith(d *net.Dialer, network, remote string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		// The socket is created, and the connect started, on this thread,
		// so it belongs to the namespace.
		c, err = d.Dial(network, remote)
		return err
	})
	return c, err
}

func mustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
