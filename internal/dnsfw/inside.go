package dnsfw

import (
	"net"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"
)

// fromInside reports whether a query from src, received at the local
// address local, may be answered: fqdngate serves DNS for its inside and
// this host only (policy.InsideConn, with Config.Local's addresses), even
// when a rule without from would allow the name to any source; tcp says
// that src completed a TCP handshake. A query from outside gets no answer
// at all (no open resolver, no reflection) and is counted, never audited:
// a flood must not become a flood of log lines. It is the first check a
// query meets, on every transport; a socket bound to a wildcard address
// passes that address as local.
func (f *Firewall) fromInside(src netip.AddrPort, local netip.Addr, tcp bool) bool {
	if f.policy().InsideConn(src.Addr(), local, f.local, tcp) {
		return true
	}
	f.metrics.outside.Inc()
	return false
}

// connFromInside is fromInside for an accepted TCP connection.
func (f *Firewall) connFromInside(c net.Conn) bool {
	return f.fromInside(addrPortOf(c.RemoteAddr()), addrPortOf(c.LocalAddr()).Addr(), true)
}

// addrPortOf reads a socket address; one it cannot read is the zero
// AddrPort, which is never inside.
func addrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort()
	case *net.TCPAddr:
		return a.AddrPort()
	}
	return netip.AddrPort{}
}

func newOutsideCounter() prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{
		Name: "fqdngate_dns_outside_dropped_total",
		Help: "DNS queries (and TCP connections) from outside the inside, dropped without an answer and not audited.",
	})
}
