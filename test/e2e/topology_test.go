package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/certs"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// Addresses of the forward topology (documentation ranges only):
//
//	client ns ── 192.0.2.0/25, 2001:db8:c::/64 ── gateway ns (fqdngate) ── 192.0.2.128/25, 2001:db8:e::/64 ── internet ns
//
// The internet ns answers on every address of 203.0.113.0/24,
// 198.51.100.0/24 and 2001:db8:100::/48 (AnyIP local routes), with HTTPS
// on ports 443 and 8443; its authoritative DNS server is at 192.0.2.130:53
// and [2001:db8:e::2]:53. Clients use .10 (group a) and .20 (group b).
//
// The output topology is the internet ns and one host ns, where fqdngate
// and the client share 192.0.2.129.
const (
	gwClient4 = "192.0.2.1"
	gwClient6 = "2001:db8:c::1"
	srcA      = "192.0.2.10"
	srcA6     = "2001:db8:c::10"
	srcB      = "192.0.2.20"
	srcB6     = "2001:db8:c::20"
	gwInet4   = "192.0.2.129"
	gwInet6   = "2001:db8:e::1"
	inet4     = "192.0.2.130"
	inet6     = "2001:db8:e::2"

	// authority is the authoritative DNS server, the gateway's upstream:
	// the "outside resolver" clients must not reach directly.
	authorityAddr  = inet4 + ":53"
	authorityAddr6 = "[" + inet6 + "]:53"
	// gatewayDNS is fqdngate's DNS listener on the forward topology.
	gatewayDNS = gwClient4 + ":53"
)

// The HTTPS servers' ports: allowed is in the rules, other never is.
const (
	allowedPort = 443
	otherPort   = 8443
)

// Waits: an expected drop costs dropWait, so it is short; expected
// successes get reachWait, long enough for -race on a loaded machine.
const (
	dropWait  = 400 * time.Millisecond
	reachWait = 5 * time.Second
)

// forwardNet is the gateway topology: the client namespace reaches the
// internet namespace only through the gateway, where fqdngate runs.
type forwardNet struct {
	client, gw *netns.NS
	inet       *internet
}

func newForwardNet(t *testing.T) *forwardNet {
	t.Helper()
	n := &forwardNet{client: netns.New(t), gw: netns.New(t)}
	netns.Veth(t, n.client, "c0", n.gw, "g0")
	for _, a := range []string{srcA + "/25", srcB + "/25", srcA6 + "/64", srcB6 + "/64"} {
		n.client.Addr("c0", a)
	}
	n.client.Route("default", gwClient4)
	n.client.Route("default", gwClient6)
	n.gw.Addr("g0", gwClient4+"/25")
	n.gw.Addr("g0", gwClient6+"/64")
	n.inet = newInternet(t, n.gw, "g1")
	n.gw.Route("default", inet4)
	n.gw.Route("default", inet6)
	n.gw.Forwarding()
	return n
}

// internet is the far side: an authoritative DNS server and HTTPS servers
// on every address of the test ranges.
type internet struct {
	ns   *netns.NS
	auth *authority
	ca   *certs.CA
}

// newInternet creates the internet namespace joined to peer (interface
// peerDev, which gets 192.0.2.129 and 2001:db8:e::1) and starts its
// servers.
func newInternet(t *testing.T, peer *netns.NS, peerDev string) *internet {
	t.Helper()
	in := &internet{ns: netns.New(t), auth: newAuthority(), ca: certs.NewCA(t)}
	netns.Veth(t, peer, peerDev, in.ns, "i0")
	peer.Addr(peerDev, gwInet4+"/25")
	peer.Addr(peerDev, gwInet6+"/64")
	in.serve(t, gwInet4, gwInet6)
	return in
}

// serve gives the internet namespace its addresses on i0 (already
// linked), its routes back through gw4 and gw6, and starts its servers.
func (in *internet) serve(t *testing.T, gw4, gw6 string) {
	t.Helper()
	in.ns.Addr("i0", inet4+"/25")
	in.ns.Addr("i0", inet6+"/64")
	in.ns.Route("default", gw4)
	in.ns.Route("default", gw6)
	// AnyIP: the namespace owns whole ranges, so a test can hand out a
	// fresh server address per query without assigning each one.
	in.ns.IP("route", "add", "local", "203.0.113.0/24", "dev", "lo")
	in.ns.IP("route", "add", "local", "198.51.100.0/24", "dev", "lo")
	in.ns.IP("-6", "route", "add", "local", "2001:db8:100::/48", "dev", "lo")

	in.auth.serve(t, in.ns)
	leaf := in.ca.Leaf(t, "example.com", "*.example.com", "*.burst.example.com")
	for _, port := range []int{allowedPort, otherPort} {
		serveHTTPS(t, in.ns, port, leaf)
	}
}

// serveHTTPS serves HTTPS on every address of ns on port; each response
// body is "served <address>:<port>", naming where the client arrived.
func serveHTTPS(t *testing.T, ns *netns.NS, port int, cert tls.Certificate) {
	t.Helper()
	// "[::]" listens on both families.
	ln := ns.Listen("tcp", fmt.Sprintf("[::]:%d", port))
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
			ap, _ := netip.ParseAddrPort(local.String())
			fmt.Fprintf(w, "served %s\n", netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
		}),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		// Probes that are cut off mid-handshake are expected.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(tls.NewListener(ln, srv.TLSConfig))
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
}

// question is one query the authority received.
type question struct {
	name  string // lower case, without the trailing dot
	qtype uint16
}

// authority is an authoritative DNS server whose records a test changes
// while it runs.
type authority struct {
	mu      sync.Mutex // guards following
	records map[string][]dns.RR
	dynamic func(name string, qtype uint16) []dns.RR
	seen    []question
}

func newAuthority() *authority {
	return &authority{records: make(map[string][]dns.RR)}
}

// Set replaces the records of name (no trailing dot) with rrs; no rrs
// removes the name.
func (a *authority) Set(name string, rrs ...dns.RR) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(rrs) == 0 {
		delete(a.records, name)
		return
	}
	a.records[name] = rrs
}

// SetDynamic answers names with no records through f; f returns nil for
// names it does not know.
func (a *authority) SetDynamic(f func(name string, qtype uint16) []dns.RR) {
	a.mu.Lock()
	a.dynamic = f
	a.mu.Unlock()
}

// Seen counts the queries received for name and qtype (0: any type).
func (a *authority) Seen(name string, qtype uint16) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, q := range a.seen {
		if q.name == name && (qtype == 0 || q.qtype == qtype) {
			n++
		}
	}
	return n
}

func (a *authority) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg).SetReply(r)
	m.Authoritative = true
	if len(r.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(m)
		return
	}
	q := r.Question[0]
	name := strings.TrimSuffix(strings.ToLower(q.Name), ".")
	a.mu.Lock()
	a.seen = append(a.seen, question{name, q.Qtype})
	rrs, ok := a.records[name]
	if !ok && a.dynamic != nil {
		rrs = a.dynamic(name, q.Qtype)
		ok = rrs != nil
	}
	a.mu.Unlock()
	if !ok {
		m.Rcode = dns.RcodeNameError
		_ = w.WriteMsg(m)
		return
	}
	// A CNAME answers every type: it goes into the answer, followed by
	// what the authority has for its target (a few hops at most).
	for hops := 0; hops < 8; hops++ {
		var next string
		for _, rr := range rrs {
			if c, ok := rr.(*dns.CNAME); ok && q.Qtype != dns.TypeCNAME {
				m.Answer = append(m.Answer, dns.Copy(rr))
				next = strings.TrimSuffix(strings.ToLower(c.Target), ".")
			} else if rr.Header().Rrtype == q.Qtype {
				m.Answer = append(m.Answer, dns.Copy(rr))
			}
		}
		if next == "" {
			break
		}
		a.mu.Lock()
		rrs = a.records[next]
		a.mu.Unlock()
	}
	_ = w.WriteMsg(m)
}

// serve answers on port 53 of the internet namespace's link addresses,
// over UDP and TCP, until the test ends.
func (a *authority) serve(t *testing.T, ns *netns.NS) {
	t.Helper()
	serveDNS(t, ns, a, authorityAddr, authorityAddr6)
}

// serveDNS answers with h on each address (ip:port) in ns, over UDP and
// TCP, from when it returns until the test ends.
func serveDNS(t *testing.T, ns *netns.NS, h dns.Handler, addrs ...string) {
	t.Helper()
	var servers []*dns.Server
	for _, addr := range addrs {
		servers = append(servers,
			&dns.Server{PacketConn: ns.ListenPacket("udp", addr), Net: "udp", Handler: h},
			&dns.Server{Listener: ns.Listen("tcp", addr), Net: "tcp", Handler: h})
	}
	var wg sync.WaitGroup
	for _, s := range servers {
		started := make(chan struct{})
		s.NotifyStartedFunc = sync.OnceFunc(func() { close(started) })
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.ActivateAndServe(); err != nil {
				t.Errorf("dns server on %s: %v", addrs, err)
			}
			s.NotifyStartedFunc()
		}()
		<-started
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, s := range servers {
			_ = s.ShutdownContext(ctx)
		}
		wg.Wait()
	})
}

// rrTXT builds a TXT record, which dnstest has no constructor for.
func rrTXT(name string, ttl uint32, txt string) dns.RR {
	return &dns.TXT{Hdr: dns.RR_Header{Name: dns.Fqdn(name), Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: ttl}, Txt: []string{txt}}
}
