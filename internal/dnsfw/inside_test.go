package dnsfw

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// TestOutsideGetsNoAnswer: queries from outside the inside get no answer
// on every way a query arrives (a socket bound to one address, read in
// batches; a wildcard socket; any other net.PacketConn; TCP, closed at
// accept), are counted and are not audited, though a rule without from
// allows the name to every source. The inside is answered on each; so is
// any source at a loopback address, which only this host can send to (the
// kernel redirects its DNS there from its own addresses).
//
// The addresses live on the loopback interface of a namespace, so a source
// and a listener can both be non-loopback addresses.
func TestOutsideGetsNoAnswer(t *testing.T) {
	const (
		listen  = "192.0.2.1"
		inside  = "192.0.2.2"
		outside = "192.0.2.3"
		host    = "192.0.2.4" // outside the inside too, but sending to loopback
	)
	ns := netns.New(t)
	for _, a := range []string{listen, inside, outside, host} {
		ns.IP("addr", "add", a+"/32", "dev", "lo")
	}
	e := newEnv(t, zone(), opts{rules: "inside: {ranges: [127.0.0.0/8, " + inside + "/32]}"})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 5)
	servers := []struct {
		name, network, addr string
		wrap                bool // a net.PacketConn that is not a *net.UDPConn
	}{
		{"bound udp", "udp", listen + ":5300", false},
		{"wildcard udp", "udp", "0.0.0.0:5301", false},
		{"packet conn", "udp", listen + ":5302", true},
		{"tcp", "tcp", listen + ":5300", false},
		{"loopback udp", "udp", "127.0.0.1:5303", false},
	}
	for _, s := range servers {
		if s.network == "tcp" {
			l := ns.Listen("tcp", s.addr)
			go func() { done <- e.fw.ServeTCP(ctx, l) }()
			continue
		}
		pc := ns.ListenPacket("udp", s.addr)
		if s.wrap {
			pc = struct{ net.PacketConn }{pc}
		}
		go func() { done <- e.fw.ServeUDP(ctx, pc) }()
	}
	t.Cleanup(func() {
		cancel()
		for range servers {
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
		}
	})

	ask := func(src, network, addr string, timeout time.Duration) (*dns.Msg, error) {
		var c net.Conn
		err := ns.Do(func() (err error) {
			c, err = (&net.Dialer{Timeout: timeout, LocalAddr: localAddr(network, src)}).Dial(network, addr)
			return err
		})
		if err != nil {
			return nil, err
		}
		defer c.Close()
		m := new(dns.Msg).SetQuestion("public.example.", dns.TypeA)
		r, _, err := (&dns.Client{Net: network, Timeout: timeout}).ExchangeWithConn(m, &dns.Conn{Conn: c})
		return r, err
	}
	dropped := 0.0
	for _, s := range servers {
		if s.name == "loopback udp" {
			continue
		}
		if r, err := ask(inside, s.network, s.addr, 3*time.Second); err != nil || len(answerAddrs(r)) != 1 {
			t.Errorf("%s: the inside's query: %v %v, want an answer", s.name, r, err)
		}
		if r, err := ask(outside, s.network, s.addr, 500*time.Millisecond); err == nil {
			t.Errorf("%s: the outside's query was answered: %s %v; want no answer", s.name, dns.RcodeToString[r.Rcode], r.Answer)
		}
		dropped++
		for deadline := time.Now().Add(2 * time.Second); testCounter(t, e.fw.metrics.outside) < dropped && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		if got := testCounter(t, e.fw.metrics.outside); got != dropped {
			t.Errorf("%s: %v queries from outside counted, want %v", s.name, got, dropped)
		}
	}
	if r, err := ask(host, "udp", "127.0.0.1:5303", 3*time.Second); err != nil || len(answerAddrs(r)) != 1 {
		t.Errorf("a query at a loopback address from %s (this host): %v %v, want an answer", host, r, err)
	}
	if strings.Contains(e.log.String(), `"source":"`+outside+`"`) {
		t.Errorf("queries from outside were audited; want them counted only:\n%s", e.log.String())
	}
}

func localAddr(network, ip string) net.Addr {
	if network == "tcp" {
		return &net.TCPAddr{IP: net.ParseIP(ip)}
	}
	return &net.UDPAddr{IP: net.ParseIP(ip)}
}
