package proxy

import (
	"net"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"
)

// fromInside reports whether the proxy serves the client of c, which
// listener accepted: fqdngate proxies for its inside and this host only
// (policy.InsideConn, with Config.Local's addresses), even when a rule
// without from would allow the destination to any source. A connection from outside is closed at once
// by the caller, with no reply, and counted, never audited: a flood must
// not become a flood of log lines. Without a policy the connection goes on
// to be refused like any other.
func (p *Proxy) fromInside(c net.Conn, listener string) bool {
	pol := p.cfg.Policy()
	if pol == nil || pol.InsideConn(remoteAddrPort(c).Addr(), localAddr(c), p.cfg.Local, true) {
		return true
	}
	p.metrics.outside.WithLabelValues(listener).Inc()
	return false
}

// localAddr is the address c was accepted on; an unreadable one is the
// zero Addr, which is not loopback.
func localAddr(c net.Conn) netip.Addr {
	if ta, ok := c.LocalAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr()
	}
	return netip.Addr{}
}

func newOutsideCounter() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fqdngate_proxy_outside_refused_total",
		Help: "Connections from outside the inside, closed at accept without a reply and not audited, by listener.",
	}, []string{"listener"})
}
