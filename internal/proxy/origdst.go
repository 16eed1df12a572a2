package proxy

import (
	"errors"
	"net"
	"net/netip"
)

// originalDst is the production OriginalDst until internal/origdst lands.
func originalDst(*net.TCPConn) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("reading the original destination is not supported yet")
}
