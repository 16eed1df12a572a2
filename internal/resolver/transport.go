package resolver

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Connection reuse. A fresh UDP socket per query costs about 5 µs and 14
// allocations on loopback, more than the round trip itself, so connected
// UDP sockets are pooled. Each carries one query at a time with a fresh
// random ID, and is retired after udpMaxUses queries or udpMaxAge, so the
// source port an attacker must guess keeps changing. Streams (TCP, TLS) are
// pooled so DNS-over-TLS is not a handshake per query.
const (
	udpMaxIdle        = 32
	udpMaxUses        = 64
	udpMaxAge         = 30 * time.Second
	streamMaxIdle     = 16
	streamIdleTimeout = 10 * time.Second
)

// bufPool holds read buffers large enough for any DNS message, so a large
// EDNS answer is never cut short.
var bufPool = sync.Pool{New: func() any {
	b := make([]byte, dns.MaxMsgSize)
	return &b
}}

var aLongTimeAgo = time.Unix(1, 0)

// watch makes c's pending I/O fail when ctx is done. The returned stop
// reports whether c is still usable, that is whether ctx did not fire.
func watch(ctx context.Context, c net.Conn) (stop func() bool) {
	if ctx.Done() == nil {
		return func() bool { return true }
	}
	return context.AfterFunc(ctx, func() { _ = c.SetDeadline(aLongTimeAgo) })
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// udpPool holds connected UDP sockets to one upstream.
type udpPool struct {
	addr    string
	dialer  *net.Dialer
	maxUses int // udpMaxUses; 1 in benchmarks measuring a socket per query

	mu     sync.Mutex // guards following
	idle   []*udpConn
	closed bool
}

type udpConn struct {
	*net.UDPConn
	uses int
	born time.Time
}

func (p *udpPool) get(ctx context.Context) (*udpConn, error) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return c, nil
	}
	p.mu.Unlock()
	nc, err := p.dialer.DialContext(ctx, "udp", p.addr)
	if err != nil {
		return nil, err
	}
	return &udpConn{UDPConn: nc.(*net.UDPConn), born: time.Now()}, nil
}

func (p *udpPool) put(c *udpConn) {
	c.uses++
	if c.uses >= p.maxUses || time.Since(c.born) > udpMaxAge {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.closed || len(p.idle) >= udpMaxIdle {
		p.mu.Unlock()
		c.Close()
		return
	}
	p.idle = append(p.idle, c)
	p.mu.Unlock()
}

func (p *udpPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, c := range p.idle {
		c.Close()
	}
	p.idle = nil
}

// exchange sends the packed query wire, whose ID is id, and returns the
// first datagram that answers it. Datagrams that do not (late answers to
// an earlier query, spoofs, garbage) are skipped: giving up on them would
// let anyone who can send a packet make the query fail.
func (p *udpPool) exchange(ctx context.Context, wire []byte, id uint16, q dns.Question, deadline time.Time) (*dns.Msg, error) {
	c, err := p.get(ctx)
	if err != nil {
		return nil, err
	}
	reuse := false
	defer func() {
		if reuse {
			p.put(c)
		} else {
			c.Close()
		}
	}()
	if err := c.SetDeadline(deadline); err != nil {
		return nil, err
	}
	stop := watch(ctx, c)
	defer stop()
	if _, err := c.Write(wire); err != nil {
		return nil, err
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var skipped error
	for {
		n, err := c.Read(buf)
		if err != nil {
			if skipped != nil {
				return nil, fmt.Errorf("%w (after ignoring a datagram: %v)", err, skipped)
			}
			return nil, err
		}
		m, err := parseResponse(buf[:n], id, q)
		if err != nil {
			skipped = err
			continue
		}
		reuse = stop()
		return m, nil
	}
}

// streamPool holds TCP or TLS connections to one upstream, each carrying
// one query at a time.
type streamPool struct {
	addr   string
	dialer *net.Dialer
	tls    *tls.Config // nil for plain TCP

	mu     sync.Mutex // guards following
	idle   []*streamConn
	closed bool
}

type streamConn struct {
	net.Conn
	idleSince time.Time
}

// get returns an idle connection, reporting reused, or dials a new one;
// always a new one if fresh.
func (p *streamPool) get(ctx context.Context, deadline time.Time, fresh bool) (c *streamConn, reused bool, err error) {
	now := time.Now()
	p.mu.Lock()
	for !fresh && len(p.idle) > 0 {
		n := len(p.idle)
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		if now.Sub(c.idleSince) < streamIdleTimeout {
			p.mu.Unlock()
			return c, true, nil
		}
		c.Close()
	}
	p.mu.Unlock()

	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var nc net.Conn
	if p.tls != nil {
		d := &tls.Dialer{NetDialer: p.dialer, Config: p.tls}
		nc, err = d.DialContext(ctx, "tcp", p.addr)
	} else {
		nc, err = p.dialer.DialContext(ctx, "tcp", p.addr)
	}
	if err != nil {
		return nil, false, err
	}
	return &streamConn{Conn: nc}, false, nil
}

func (p *streamPool) put(c *streamConn) {
	c.idleSince = time.Now()
	p.mu.Lock()
	if p.closed || len(p.idle) >= streamMaxIdle {
		p.mu.Unlock()
		c.Close()
		return
	}
	p.idle = append(p.idle, c)
	p.mu.Unlock()
}

func (p *streamPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, c := range p.idle {
		c.Close()
	}
	p.idle = nil
}

// exchange sends the query over a pooled connection. A reused connection
// the server has closed in the meantime (servers close idle ones, or after
// a number of queries) fails on first use; the query is then retried once
// on a fresh connection, which is safe as DNS queries are idempotent. Not
// on another pooled one: the server may have closed them all at once.
func (p *streamPool) exchange(ctx context.Context, wire []byte, id uint16, q dns.Question, deadline time.Time) (*dns.Msg, error) {
	for retried := false; ; retried = true {
		c, reused, err := p.get(ctx, deadline, retried)
		if err != nil {
			return nil, err
		}
		m, err := roundTrip(ctx, c, wire, id, q, deadline)
		if err == nil {
			p.put(c)
			return m, nil
		}
		c.Close()
		if !reused || retried || isTimeout(err) || ctx.Err() != nil {
			return nil, err
		}
	}
}

func roundTrip(ctx context.Context, c net.Conn, wire []byte, id uint16, q dns.Question, deadline time.Time) (*dns.Msg, error) {
	if err := c.SetDeadline(deadline); err != nil {
		return nil, err
	}
	stop := watch(ctx, c)
	defer stop()

	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	// One write for length and message: two would cost a segment each.
	out := make([]byte, 2+len(wire))
	binary.BigEndian.PutUint16(out, uint16(len(wire)))
	copy(out[2:], wire)
	if _, err := c.Write(out); err != nil {
		return nil, err
	}
	if _, err := io.ReadFull(c, buf[:2]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(buf))
	if _, err := io.ReadFull(c, buf[:n]); err != nil {
		return nil, err
	}
	m, err := parseResponse(buf[:n], id, q)
	if err != nil {
		return nil, err
	}
	if !stop() {
		return nil, ctx.Err()
	}
	return m, nil
}
