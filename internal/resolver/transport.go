package resolver

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Connection reuse. A fresh UDP socket per query costs a dial and a close
// (socket, SO_MARK, connect, close: several system calls and some 20
// allocations), more than the round trip itself on loopback, so connected
// UDP sockets are pooled, each carrying one query at a time with a fresh
// random ID.
//
// The pool keeps every UDP socket handed back to it, up to the resolver's
// MaxInFlight (a query holds at most one socket of an upstream at a time),
// so it holds about as many as were recently in use at once. The number of
// queries at an upstream swings with load, and a pool smaller than the
// peak closes sockets in every dip only to dial them again at the next
// peak: with 32 kept and ~200 queries in flight, that was a dial for a
// third to a half of all queries. Sockets left over from a peak are closed
// when they reach udpMaxAge.
//
// Source ports still rotate, so the port an off-path attacker must guess
// along with the ID keeps changing: a socket is retired after udpMaxUses
// queries or once udpMaxAge old, whichever comes first. At 50,000
// queries/s over 200 sockets, 256 uses retire each about once a second,
// some 200 dials a second where there were tens of thousands; at lower
// rates the age bounds how long a port lives.
//
// Streams (TCP, TLS) are pooled so DNS-over-TLS is not a handshake per
// query.
const (
	udpMaxUses        = 256
	udpMaxAge         = 15 * time.Second
	streamMaxIdle     = 16
	streamIdleTimeout = 10 * time.Second
)

// udpReadSize is the buffer a UDP answer is read into. Upstreams are asked
// for at most 1,232 bytes (EDNS0) or 512 (without), so 4 KiB is ample; a
// datagram that fills the buffer may have been cut, and counts as too big:
// the query is retried over TCP, as after a truncated answer.
const udpReadSize = 4096

// errTooBig reports a UDP answer larger than udpReadSize.
var errTooBig = errors.New("UDP answer larger than " + strconv.Itoa(udpReadSize-1) + " bytes")

// bufPool holds read buffers large enough for any DNS message over a
// stream, so a large answer is never cut short.
var bufPool = sync.Pool{New: func() any {
	b := make([]byte, dns.MaxMsgSize)
	return &b
}}

var aLongTimeAgo = time.Unix(1, 0)

// unwatchedWait is how long a read waits before the exchange arranges for
// its context's cancellation to interrupt it; see wait.
const unwatchedWait = 20 * time.Millisecond

// wait bounds an exchange's reads on conn by deadline and ends them early
// when ctx is done. Arranging for a cancellation to interrupt a read
// (context.AfterFunc) costs five allocations, where the rest of a UDP
// exchange makes one, unpacking the answer aside; yet most answers arrive
// well within a millisecond. So reads first get a deadline unwatchedWait
// away, with no watch; only when that passes with neither ctx nor the
// exchange's deadline done does the exchange watch ctx and wait on to its
// deadline. Local and LAN upstreams, the case at capacity, answer well
// within unwatchedWait; a slower answer costs one more wake-up, little
// next to its wait. A cancellation ends the exchange within unwatchedWait
// at worst, and immediately once ctx is watched; a deadline (the
// exchange's includes ctx's) is exact.
type wait struct {
	ctx      context.Context
	conn     net.Conn
	deadline time.Time
	extended bool        // reads wait until deadline
	stop     func() bool // from context.AfterFunc, if ctx is watched
}

// begin sets conn's deadline for the first reads, and for writes too
// unless separateWrite, which gives them the exchange's. A write must not
// fail merely because the first reads' deadline passed before it (a
// goroutine may wait that long for a CPU): on a stream, where a write that
// times out may have sent part of a message (and corrupts a TLS
// connection), writes need separateWrite; a UDP write that times out sent
// nothing, and is tried again after extend.
func (w *wait) begin(now time.Time, separateWrite bool) error {
	short := now.Add(unwatchedWait)
	if !short.Before(w.deadline) {
		// The deadline comes first: it ends a wait soon enough.
		w.extended = true
		return w.conn.SetDeadline(w.deadline)
	}
	if !separateWrite {
		return w.conn.SetDeadline(short)
	}
	if err := w.conn.SetWriteDeadline(w.deadline); err != nil {
		return err
	}
	return w.conn.SetReadDeadline(short)
}

// extend reports whether a read (or UDP write) that failed with err
// should be tried again: the first deadline passed with neither ctx nor
// the exchange done. It then watches ctx and moves conn's deadline to the
// exchange's.
func (w *wait) extend(err error) bool {
	if w.extended || !isTimeout(err) || w.ctx.Err() != nil || !time.Now().Before(w.deadline) {
		return false
	}
	w.extended = true
	// The deadline first: if ctx is cancelled in between, the watch's
	// past deadline must win.
	if w.conn.SetDeadline(w.deadline) != nil {
		return false
	}
	if w.ctx.Done() != nil {
		c := w.conn
		w.stop = context.AfterFunc(w.ctx, func() { _ = c.SetDeadline(aLongTimeAgo) })
	}
	return true
}

// fail returns the error to report for err: ctx's, if it is done, as the
// caller gave up, not the upstream.
func (w *wait) fail(err error) error {
	if cerr := w.ctx.Err(); cerr != nil {
		return cerr
	}
	return err
}

// release stops watching ctx and reports whether conn is still usable,
// that is whether ctx's cancellation did not touch its deadline.
func (w *wait) release() bool {
	return w.stop == nil || w.stop()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// udpPool holds connected UDP sockets to one upstream.
type udpPool struct {
	addr    string
	dialer  *net.Dialer
	maxIdle int           // the resolver's MaxInFlight
	maxUses int           // udpMaxUses; 1 in benchmarks measuring a socket per query
	maxAge  time.Duration // udpMaxAge; shorter in tests

	mu     sync.Mutex // guards following
	idle   []*udpConn // a stack: the most recently used on top
	swept  time.Time  // when idle was last rid of sockets past maxAge
	closed bool
}

type udpConn struct {
	*net.UDPConn
	uses int
	born time.Time
	buf  [udpReadSize]byte // answers are read here
}

// get returns an idle socket younger than maxAge, or dials one. Every
// maxAge/2 it also closes idle sockets past maxAge, which below the top of
// the stack may go unused for long after a peak.
func (p *udpPool) get(ctx context.Context, now time.Time) (*udpConn, error) {
	var c *udpConn
	var stale []*udpConn
	p.mu.Lock()
	if now.Sub(p.swept) >= p.maxAge/2 {
		p.swept = now
		live := p.idle[:0]
		for _, c := range p.idle {
			if now.Sub(c.born) < p.maxAge {
				live = append(live, c)
			} else {
				stale = append(stale, c)
			}
		}
		clear(p.idle[len(live):])
		p.idle = live
	}
	if n := len(p.idle); n > 0 {
		c = p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
	}
	p.mu.Unlock()
	for _, s := range stale {
		s.Close()
	}
	if c != nil {
		if now.Sub(c.born) < p.maxAge {
			return c, nil
		}
		c.Close()
	}
	nc, err := p.dialer.DialContext(ctx, "udp", p.addr)
	if err != nil {
		return nil, err
	}
	return &udpConn{UDPConn: nc.(*net.UDPConn), born: now}, nil
}

func (p *udpPool) put(c *udpConn) {
	c.uses++
	if c.uses >= p.maxUses {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.closed || len(p.idle) >= p.maxIdle {
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
// first datagram that answers it, or errTooBig if that is larger than
// udpReadSize. Datagrams that do not answer it (late answers to an earlier
// query, spoofs, garbage) are skipped: giving up on them would let anyone
// who can send a packet make the query fail.
func (p *udpPool) exchange(ctx context.Context, wire []byte, id uint16, q dns.Question, deadline time.Time) (*dns.Msg, error) {
	now := time.Now()
	c, err := p.get(ctx, now)
	if err != nil {
		return nil, err
	}
	w := wait{ctx: ctx, conn: c, deadline: deadline}
	m, err := c.roundTrip(&w, now, wire, id, q)
	if w.release() && (err == nil || err == errTooBig) {
		p.put(c)
	} else {
		c.Close()
	}
	return m, err
}

func (c *udpConn) roundTrip(w *wait, now time.Time, wire []byte, id uint16, q dns.Question) (*dns.Msg, error) {
	if err := w.begin(now, false); err != nil {
		return nil, err
	}
	for {
		_, err := c.Write(wire)
		if err == nil {
			break
		}
		if !w.extend(err) {
			return nil, w.fail(err)
		}
	}
	buf := c.buf[:]
	var skipped error
	for {
		n, err := c.Read(buf)
		if err != nil {
			if w.extend(err) {
				continue
			}
			err = w.fail(err)
			if skipped != nil {
				return nil, fmt.Errorf("%w (after ignoring a datagram: %v)", err, skipped)
			}
			return nil, err
		}
		if n == len(buf) {
			// Perhaps cut short: the header and question are intact, so
			// check them; the rest may be missing.
			if err := checkHeader(buf, id, q); err != nil {
				skipped = err
				continue
			}
			return nil, errTooBig
		}
		m, err := parseResponse(buf[:n], id, q)
		if err != nil {
			skipped = err
			continue
		}
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
	w := wait{ctx: ctx, conn: c, deadline: deadline}
	m, err := w.roundTrip(wire, id, q)
	if !w.release() && err == nil {
		// Cancelled as the answer came: the connection's deadline is
		// spoilt, and the caller has gone.
		return nil, ctx.Err()
	}
	return m, err
}

// roundTrip sends the query wire over the stream w.conn and reads the answer.
func (w *wait) roundTrip(wire []byte, id uint16, q dns.Question) (*dns.Msg, error) {
	if err := w.begin(time.Now(), true); err != nil {
		return nil, err
	}
	// One write for length and message: two would cost a segment each.
	out := make([]byte, 2+len(wire))
	binary.BigEndian.PutUint16(out, uint16(len(wire)))
	copy(out[2:], wire)
	if _, err := w.conn.Write(out); err != nil {
		return nil, w.fail(err)
	}
	if err := w.readFull(out[:2]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(out))
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := (*bp)[:n]
	if err := w.readFull(buf); err != nil {
		return nil, err
	}
	return parseResponse(buf, id, q)
}

// readFull reads len(b) bytes from w.conn, as io.ReadFull does.
func (w *wait) readFull(b []byte) error {
	for n := 0; n < len(b); {
		k, err := w.conn.Read(b[n:])
		n += k
		if err == nil || n == len(b) {
			continue
		}
		if w.extend(err) {
			continue
		}
		if err == io.EOF && n > 0 {
			err = io.ErrUnexpectedEOF
		}
		return w.fail(err)
	}
	return nil
}
