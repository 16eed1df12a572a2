// Package origdst recovers the address a client meant to reach before
// nftables or iptables redirected its TCP connection to us.
package origdst

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// ip6tSoOriginalDst is IP6T_SO_ORIGINAL_DST from
// linux/netfilter_ipv6/ip6_tables.h, which x/sys/unix does not define. It has
// the same value as SO_ORIGINAL_DST but lives at level SOL_IPV6.
const ip6tSoOriginalDst = 80

// ErrNotRedirected means the connection reached us directly: conntrack has
// no entry for it, or its original destination is our own address. A
// transparent proxy that spliced such a connection would dial itself.
var ErrNotRedirected = errors.New("connection was not redirected")

// Get returns the original destination of c, which must be an accepted
// connection that netfilter NAT (nftables "redirect" or "dnat", iptables
// REDIRECT or DNAT) rewrote. IPv4 connections accepted on a dual-stack IPv6
// socket are handled; the address returned is never IPv4-mapped.
func Get(c *net.TCPConn) (netip.AddrPort, error) {
	la, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("reading original destination: local address %v is not TCP", c.LocalAddr())
	}
	local := la.AddrPort()
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("reading original destination: %w", err)
	}
	var orig netip.AddrPort
	var serr error
	err = rc.Control(func(fd uintptr) {
		// The conntrack lookup is by the packet's family, not the socket's:
		// an IPv4 client on a dual-stack socket needs the SOL_IP option.
		if local.Addr().Is4() {
			orig, serr = get4(int(fd))
		} else {
			orig, serr = get6(int(fd))
		}
	})
	if err == nil {
		err = serr
	}
	switch {
	case errors.Is(err, unix.ENOENT):
		return netip.AddrPort{}, fmt.Errorf("%w: no conntrack entry for the connection to %v (%w)", ErrNotRedirected, local, err)
	case err != nil:
		return netip.AddrPort{}, fmt.Errorf("reading original destination of the connection to %v: %w", local, err)
	case orig == local:
		return netip.AddrPort{}, fmt.Errorf("%w: it was addressed to %v, our own address", ErrNotRedirected, local)
	}
	return orig, nil
}

// get4 reads a struct sockaddr_in. x/sys/unix offers no getsockopt into a
// caller's buffer, so this borrows the helper for a 20-byte struct; the kernel
// writes only the 16 bytes of sockaddr_in into it.
func get4(fd int) (netip.AddrPort, error) {
	m, err := unix.GetsockoptIPv6Mreq(fd, unix.SOL_IP, unix.SO_ORIGINAL_DST)
	if err != nil {
		return netip.AddrPort{}, os.NewSyscallError("getsockopt SO_ORIGINAL_DST", err)
	}
	b := m.Multiaddr[:]
	if f := binary.NativeEndian.Uint16(b[0:2]); f != unix.AF_INET {
		return netip.AddrPort{}, fmt.Errorf("SO_ORIGINAL_DST returned address family %d, want AF_INET", f)
	}
	addr := netip.AddrFrom4([4]byte(b[4:8]))
	return netip.AddrPortFrom(addr, binary.BigEndian.Uint16(b[2:4])), nil
}

// get6 reads a struct sockaddr_in6, borrowing the helper for IPv6MTUInfo,
// which begins with one.
func get6(fd int) (netip.AddrPort, error) {
	info, err := unix.GetsockoptIPv6MTUInfo(fd, unix.SOL_IPV6, ip6tSoOriginalDst)
	if err != nil {
		return netip.AddrPort{}, os.NewSyscallError("getsockopt IP6T_SO_ORIGINAL_DST", err)
	}
	sa := info.Addr
	if sa.Family != unix.AF_INET6 {
		return netip.AddrPort{}, fmt.Errorf("IP6T_SO_ORIGINAL_DST returned address family %d, want AF_INET6", sa.Family)
	}
	// Port is in network byte order in memory; undo the native-endian read.
	var p [2]byte
	binary.NativeEndian.PutUint16(p[:], sa.Port)
	addr := netip.AddrFrom16(sa.Addr).Unmap()
	return netip.AddrPortFrom(addr, binary.BigEndian.Uint16(p[:])), nil
}
