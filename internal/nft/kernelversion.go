package nft

import (
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// kernelRelease returns the running kernel's release ("6.18.0-1-amd64"),
// or "" if uname fails.
func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// timeoutUpdates reports whether a kernel of this release applies the
// timeout of an element added again to a set that holds it, which Linux
// does since 6.10; older kernels keep the old timeout. A release it cannot
// read counts as old.
func timeoutUpdates(release string) bool {
	major, rest, ok := strings.Cut(release, ".")
	if !ok {
		return false
	}
	end := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
	if end >= 0 {
		rest = rest[:end]
	}
	maj, err1 := strconv.Atoi(major)
	minor, err2 := strconv.Atoi(rest)
	if err1 != nil || err2 != nil {
		return false
	}
	return maj > 6 || maj == 6 && minor >= 10
}
