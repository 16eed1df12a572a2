package importer

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// portRanges returns what protocol proto (TCP, UDP, or ANY for both) on
// ports lo..hi is in fqdngate terms, or why it cannot be said.
func portRanges(proto string, lo, hi int) ([]policy.PortRange, error) {
	if lo < 1 || hi > 65535 || lo > hi {
		return nil, fmt.Errorf("port range %d-%d is not within 1-65535", lo, hi)
	}
	r := policy.PortRange{Lo: uint16(lo), Hi: uint16(hi)}
	switch strings.ToUpper(proto) {
	case "TCP":
		r.Proto = policy.TCP
		return []policy.PortRange{r}, nil
	case "UDP":
		r.Proto = policy.UDP
		return []policy.PortRange{r}, nil
	case "ANY":
		u := r
		r.Proto, u.Proto = policy.TCP, policy.UDP
		return []policy.PortRange{r, u}, nil
	}
	return nil, fmt.Errorf("protocol %q: fqdngate rules cover TCP and UDP only", proto)
}

// portNumber parses a port given as a number or a numeric string. named
// is true for a named port (a container port's name), which has no
// meaning outside the cluster.
func portNumber(s string) (n int, named bool, err error) {
	n, err = strconv.Atoi(s)
	if err != nil {
		if s != "" && strings.IndexFunc(s, func(r rune) bool { return r >= '0' && r <= '9' }) != 0 {
			return 0, true, fmt.Errorf("named port %q: a name means a container port, which external destinations do not have", s)
		}
		return 0, false, fmt.Errorf("port %q is not a number", s)
	}
	return n, false, nil
}
