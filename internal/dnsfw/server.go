package dnsfw

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sync/errgroup"
)

const (
	// udpReadSize is the largest query read over UDP. Queries are small,
	// but EDNS padding (RFC 7830) and cookies can take one past 512.
	udpReadSize = 4096
	// tcpReadTimeout bounds the wait for a connection's first query;
	// tcpIdleTimeout the wait for each later one (RFC 7766 6.2.3 suggests
	// seconds, not minutes).
	tcpReadTimeout = 2 * time.Second
	tcpIdleTimeout = 10 * time.Second
	// MaxTCPConns bounds the TCP connections served at once per listener;
	// more are closed as soon as they are accepted.
	MaxTCPConns = 1024
	// shutdownGrace is how long queries in progress get to finish once the
	// serve context is done; then their upstream exchanges are cancelled.
	shutdownGrace = 5 * time.Second
)

// Serve answers DNS over UDP and TCP on addr (host:port) until ctx is done.
// It returns nil after a graceful stop, or the error that stopped it.
func (f *Firewall) Serve(ctx context.Context, addr string) error {
	var lc net.ListenConfig
	pc, err := lc.ListenPacket(ctx, "udp", addr)
	if err != nil {
		return fmt.Errorf("dnsfw: listening on %s/udp: %w; check listen.dns and that no other DNS server holds the port", addr, err)
	}
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		pc.Close()
		return fmt.Errorf("dnsfw: listening on %s/tcp: %w; check listen.dns and that no other DNS server holds the port", addr, err)
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return f.ServeUDP(ctx, pc) })
	g.Go(func() error { return f.ServeTCP(ctx, l) })
	return g.Wait()
}

// ServeUDP answers queries arriving on pc until ctx is done, lets the
// queries in progress finish, closes pc and returns nil; or returns the
// error reading pc failed with.
func (f *Firewall) ServeUDP(ctx context.Context, pc net.PacketConn) error {
	if uc, ok := pc.(*net.UDPConn); ok {
		return f.serveUDPConn(ctx, uc)
	}
	return f.run(ctx, &dns.Server{PacketConn: pc, Net: "udp", UDPSize: udpReadSize}, false)
}

// ServeTCP answers queries on connections accepted from l until ctx is
// done, lets the queries in progress finish, closes l and returns nil; or
// returns the error accepting failed with. A connection may carry any
// number of queries, answered in turn; it is closed after tcpIdleTimeout
// without one. At most MaxTCPConns are open at once.
func (f *Firewall) ServeTCP(ctx context.Context, l net.Listener) error {
	return f.run(ctx, &dns.Server{
		Listener:      &limitListener{Listener: l, sem: make(chan struct{}, MaxTCPConns), admit: f.connFromInside},
		Net:           "tcp",
		ReadTimeout:   tcpReadTimeout,
		IdleTimeout:   func() time.Duration { return tcpIdleTimeout },
		MaxTCPQueries: -1,
	}, true)
}

func (f *Firewall) run(ctx context.Context, srv *dns.Server, tcp bool) error {
	// Queries in progress outlive ctx by up to shutdownGrace, so a
	// graceful stop answers them instead of failing them.
	hctx, hcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hcancel()
	srv.Handler = &handler{f: f, ctx: hctx, tcp: tcp}
	srv.MsgAcceptFunc = acceptQuery
	started := make(chan struct{})
	srv.NotifyStartedFunc = sync.OnceFunc(func() { close(started) })
	served := make(chan error, 1)
	go func() { served <- srv.ActivateAndServe() }()

	select {
	case <-started:
	case err := <-served:
		return fmt.Errorf("dnsfw: serving DNS over %s: %w", srv.Net, err)
	}
	select {
	case err := <-served:
		if err == nil {
			return errors.New("dnsfw: DNS server over " + srv.Net + " stopped unexpectedly")
		}
		return fmt.Errorf("dnsfw: serving DNS over %s: %w", srv.Net, err)
	case <-ctx.Done():
	}
	sctx, scancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer scancel()
	if err := srv.ShutdownContext(sctx); err != nil {
		hcancel() // out of patience: end the exchanges still running
	}
	<-served
	return nil
}

// acceptQuery filters messages before they are unpacked: responses are
// ignored (answering them would make this a reflector), other opcodes are
// not implemented, and a query is one question with nothing in the answer
// and authority sections and at most OPT and TSIG in the additional one.
func acceptQuery(dh dns.Header) dns.MsgAcceptAction {
	const qr = 1 << 15
	if dh.Bits&qr != 0 {
		return dns.MsgIgnore
	}
	if opcode := int(dh.Bits>>11) & 0xF; opcode != dns.OpcodeQuery {
		return dns.MsgRejectNotImplemented
	}
	if dh.Qdcount != 1 || dh.Ancount != 0 || dh.Nscount != 0 || dh.Arcount > 2 {
		return dns.MsgReject
	}
	return dns.MsgAccept
}

// limitListener closes connections accepted beyond its capacity at once,
// rather than leaving them in the backlog: a client over the limit learns
// it quickly and can retry over UDP or later.
type limitListener struct {
	net.Listener
	sem chan struct{}
	// admit, if set, decides at once whether to serve a connection:
	// those it refuses are closed before they take a slot.
	admit func(net.Conn) bool
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.admit != nil && !l.admit(c) {
			c.Close()
			continue
		}
		select {
		case l.sem <- struct{}{}:
			return &limitConn{Conn: c, release: sync.OnceFunc(func() { <-l.sem })}, nil
		default:
			c.Close()
		}
	}
}

type limitConn struct {
	net.Conn
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}
