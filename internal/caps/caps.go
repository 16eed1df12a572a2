// Package caps drops the Linux capabilities fqdngate does not need once it
// has opened its sockets and netlink handles, so a compromise of the daemon
// is not a compromise of the host.
package caps

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The capabilities fqdngate may keep.
const (
	NetBindService = unix.CAP_NET_BIND_SERVICE // rebinding DNS on port 53 after a reload
	NetAdmin       = unix.CAP_NET_ADMIN        // nftables and SO_MARK
)

// ErrThreads means the capabilities could not be changed on every thread,
// which happens when fqdngate is built with cgo; the static release build
// has no cgo.
var ErrThreads = errors.New("cannot change capabilities on all threads of a cgo build")

// Keep reduces the process to the given capabilities: every other one is
// dropped from the bounding, ambient, inheritable, permitted and effective
// sets on every thread, and no_new_privs is set so no exec can regain them.
func Keep(keep ...int) error {
	var want uint64
	for _, c := range keep {
		want |= 1 << uint(c)
	}
	if err := prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0); err != nil {
		return fmt.Errorf("setting no_new_privs: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("reading capabilities: %w", err)
	}
	permitted := uint64(data[0].Permitted) | uint64(data[1].Permitted)<<32
	if permitted&^want == 0 {
		return nil // an unprivileged process: nothing more to drop
	}
	// The bounding set can only shrink while CAP_SETPCAP is still held.
	if permitted&(1<<unix.CAP_SETPCAP) != 0 {
		for c := 0; c <= lastCap(); c++ {
			if want&(1<<uint(c)) == 0 {
				if err := prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0); err != nil && !errors.Is(err, unix.EINVAL) {
					return fmt.Errorf("dropping capability %d from the bounding set: %w", c, err)
				}
			}
		}
	}
	if err := prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("clearing ambient capabilities: %w", err)
	}
	keepSet := want & permitted
	data[0] = unix.CapUserData{Effective: uint32(keepSet), Permitted: uint32(keepSet)}
	data[1] = unix.CapUserData{Effective: uint32(keepSet >> 32), Permitted: uint32(keepSet >> 32)}
	if _, _, errno := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); errno != 0 {
		if errno == unix.ENOTSUP {
			return ErrThreads
		}
		return fmt.Errorf("setting capabilities: %w", errno)
	}
	return nil
}

func prctl(option int, arg2, arg3 uintptr) error {
	_, _, errno := syscall.AllThreadsSyscall(unix.SYS_PRCTL, uintptr(option), arg2, arg3)
	if errno == unix.ENOTSUP {
		// cgo build: fall back to this thread only; Keep reports ErrThreads
		// when it reaches capset.
		return unix.Prctl(option, arg2, arg3, 0, 0)
	}
	if errno != 0 {
		return errno
	}
	return nil
}

// lastCap is the highest capability the running kernel knows.
func lastCap() int {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			return n
		}
	}
	return unix.CAP_LAST_CAP
}

// Effective returns the effective capability mask of this thread.
func Effective() (uint64, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return 0, err
	}
	return uint64(data[0].Effective) | uint64(data[1].Effective)<<32, nil
}
