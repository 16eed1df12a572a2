package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"net/textproto"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// connPool sends forwarded requests that can be sent again, GET, HEAD,
// OPTIONS and TRACE without a body, over kept-alive upstream connections,
// writing the request and reading the response in the handler's own
// goroutine. http.Transport, which sends the rest, hands every request to
// a writer and a reader goroutine of its connection and back, through
// channels; for a small request and response that hand-over costs more
// than the work. The pool is the policy's (see upstreamPools) and keyed
// by the exact address dialled, like the transport's.
//
// What the client sees does not change: the request is written by
// Request.Write and the response read by http.ReadResponse, as the
// transport does; 1xx responses go to the request's httptrace
// (ReverseProxy passes them on); response heads are bounded as the
// transport bounds them; a connection is reused only once its response
// was read to the end and neither side asked to close; and a request that
// fails on a reused connection before any byte of a response came back is
// sent once more on a fresh one, as the transport retries requests that
// can be sent again. Idle connections are closed after
// upstreamIdleTimeout, and beyond maxIdleUpstreamsPerAddr per address or
// maxIdleUpstreams in all.
type connPool struct {
	mu     sync.Mutex // guards following
	idle   map[netip.AddrPort][]*upConn
	n      int // idle connections
	closed bool
	reaper *time.Timer // armed while any connection is idle
}

func newConnPool() *connPool {
	return &connPool{idle: make(map[netip.AddrPort][]*upConn)}
}

// pooledRequest reports whether r is one the pool sends.
func pooledRequest(r *http.Request) bool {
	if r.Body != nil && r.Body != http.NoBody || r.ContentLength > 0 || len(r.TransferEncoding) > 0 || r.Close {
		return false
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
	default:
		return false
	}
	_, expect := r.Header["Expect"]
	return !expect
}

// maxResponseHeaderBytes bounds a response head, as the transport's
// MaxResponseHeaderBytes.
const maxResponseHeaderBytes = 1 << 20

// roundTrip sends r to one of the addresses plan checked, over an idle
// connection to any of them or a fresh one dialled by plan, and records in
// plan the address it used. head, if not nil, is the request head to write
// instead of r (which then only needs its method and context). A nil pool
// dials every request afresh and closes the connection after it: head
// must then ask the server to close.
func (cp *connPool) roundTrip(r *http.Request, head []byte, plan *dialPlan) (*http.Response, error) {
	for {
		uc := cp.getAny(plan.addrs, plan.port)
		reused := uc != nil
		if reused {
			plan.mu.Lock()
			plan.dialled = uc.key
			plan.mu.Unlock()
		} else {
			c, ap, rerr := plan.p.dial(r.Context(), plan.pol, plan.addrs, plan.port)
			plan.mu.Lock()
			plan.dialled, plan.rerr = ap, rerr
			plan.mu.Unlock()
			if rerr != nil {
				return nil, rerr
			}
			uc = newUpConn(cp, ap, c, idleTimeout(plan.pol))
		}
		resp, answered, err := uc.roundTrip(r, head)
		if err == nil {
			return resp, nil
		}
		uc.c.Close()
		// A server may close an idle connection just as it is reused.
		if reused && !answered && r.Context().Err() == nil {
			continue
		}
		return nil, err
	}
}

// getAny takes an idle connection to any of addrs (at port), trying them
// in order, or returns nil.
func (cp *connPool) getAny(addrs []netip.Addr, port uint16) *upConn {
	for _, a := range addrs {
		if uc := cp.get(netip.AddrPortFrom(a, port)); uc != nil {
			return uc
		}
	}
	return nil
}

// get takes an idle connection to key, or returns nil.
func (cp *connPool) get(key netip.AddrPort) *upConn {
	if cp == nil {
		return nil
	}
	now := time.Now()
	cp.mu.Lock()
	defer cp.mu.Unlock()
	for {
		list := cp.idle[key]
		if len(list) == 0 {
			return nil
		}
		uc := list[len(list)-1]
		list[len(list)-1] = nil
		cp.idle[key] = list[:len(list)-1]
		cp.n--
		if now.Sub(uc.since) < upstreamIdleTimeout && uc.quiet() {
			return uc
		}
		uc.c.Close()
	}
}

// put keeps uc for the next request to its address, or closes it. Bytes
// the server sent beyond its response (a body to a HEAD, say) would be
// read as the next response: such a connection is closed, as the
// transport closes one that speaks while idle.
func (cp *connPool) put(uc *upConn) {
	if cp == nil {
		uc.c.Close()
		return
	}
	uc.since = time.Now()
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.closed || uc.br.Buffered() > 0 || cp.n >= maxIdleUpstreams || len(cp.idle[uc.key]) >= maxIdleUpstreamsPerAddr {
		uc.c.Close()
		return
	}
	cp.idle[uc.key] = append(cp.idle[uc.key], uc)
	cp.n++
	if cp.reaper == nil {
		cp.reaper = time.AfterFunc(upstreamIdleTimeout, cp.reap)
	}
}

// reap closes connections idle for upstreamIdleTimeout.
func (cp *connPool) reap() {
	now := time.Now()
	cp.mu.Lock()
	defer cp.mu.Unlock()
	next := time.Duration(0)
	for key, list := range cp.idle {
		kept := list[:0]
		for _, uc := range list {
			if left := upstreamIdleTimeout - now.Sub(uc.since); left > 0 {
				kept = append(kept, uc)
				if next == 0 || left < next {
					next = left
				}
				continue
			}
			uc.c.Close()
			cp.n--
		}
		clear(list[len(kept):])
		if len(kept) == 0 {
			delete(cp.idle, key)
		} else {
			cp.idle[key] = kept
		}
	}
	cp.reaper = nil
	if cp.n > 0 && !cp.closed {
		cp.reaper = time.AfterFunc(next, cp.reap)
	}
}

// closeIdle closes the idle connections; those in use are closed when
// their requests end.
func (cp *connPool) closeIdle() {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.closed = true
	for key, list := range cp.idle {
		for _, uc := range list {
			uc.c.Close()
		}
		delete(cp.idle, key)
	}
	cp.n = 0
	if cp.reaper != nil {
		cp.reaper.Stop()
		cp.reaper = nil
	}
}

// upConn is an upstream connection of a connPool.
type upConn struct {
	pool  *connPool
	key   netip.AddrPort
	c     *abortConn
	lr    limitReader // under br: bounds response heads
	br    *bufio.Reader
	bw    *bufio.Writer
	since time.Time // idle since

	rc      syscall.RawConn
	peekFn  func(fd uintptr) bool
	peekErr error  // of the last peek: nil when there was nothing to read
	abortFn func() // c.abort, bound once
}

func newUpConn(cp *connPool, key netip.AddrPort, c *net.TCPConn, idle time.Duration) *upConn {
	ac := &abortConn{idleConn: idleConn{TCPConn: c, idle: idle}}
	uc := &upConn{pool: cp, key: key, c: ac}
	uc.lr.r = ac
	uc.lr.remain = -1
	uc.br = bufio.NewReader(&uc.lr)
	uc.bw = bufio.NewWriter(ac)
	uc.rc, _ = c.SyscallConn()
	uc.peekFn = uc.peek
	uc.abortFn = ac.abort
	return uc
}

// abortConn is an idleConn whose exchange can be aborted: once it is, every
// read and write fails at once, whatever deadline they would set.
type abortConn struct {
	idleConn
	aborted atomic.Bool
}

var errAborted = errors.New("request canceled")

func (c *abortConn) abort() {
	c.aborted.Store(true)
	c.TCPConn.SetDeadline(aLongTimeAgo)
}

func (c *abortConn) Read(b []byte) (int, error) {
	if c.aborted.Load() {
		return 0, errAborted
	}
	return c.idleConn.Read(b)
}

func (c *abortConn) Write(b []byte) (int, error) {
	if c.aborted.Load() {
		return 0, errAborted
	}
	return c.idleConn.Write(b)
}

// quiet reports whether an idle connection is still open and has said
// nothing: a server that closed it, or sent something unasked (a 408
// before closing), leaves it unfit for a request.
func (uc *upConn) quiet() bool {
	if uc.rc == nil {
		return true
	}
	if err := uc.rc.Read(uc.peekFn); err != nil {
		return false
	}
	return uc.peekErr == nil
}

func (uc *upConn) peek(fd uintptr) bool {
	var b [1]byte
	n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	switch {
	case err == syscall.EAGAIN:
		uc.peekErr = nil
	case err != nil:
		uc.peekErr = err
	case n == 0:
		uc.peekErr = io.EOF
	default:
		uc.peekErr = errors.New("unsolicited response on an idle connection")
	}
	return true
}

// limitReader reads r, at most remain bytes while remain >= 0.
type limitReader struct {
	r      io.Reader
	remain int64
	read   int64 // bytes read since remain was set
}

var errHeadersTooLong = fmt.Errorf("net/http: server response headers exceeded %d bytes; aborted", maxResponseHeaderBytes)

func (l *limitReader) Read(b []byte) (int, error) {
	if l.remain == 0 {
		return 0, errHeadersTooLong
	}
	if l.remain > 0 && int64(len(b)) > l.remain {
		b = b[:l.remain]
	}
	n, err := l.r.Read(b)
	l.read += int64(n)
	if l.remain > 0 {
		l.remain -= int64(n)
	}
	return n, err
}

// roundTrip writes r, or head if not nil, and reads the response head. answered reports
// whether any byte of a response came back (a failed request that got
// none may be sent again on a fresh connection). On error the caller
// closes the connection.
func (uc *upConn) roundTrip(r *http.Request, head []byte) (resp *http.Response, answered bool, err error) {
	ctx := r.Context()
	// The request's end (the client went away) aborts the exchange, as
	// it does the transport's.
	stop := context.AfterFunc(ctx, uc.abortFn)
	fail := func(err error) (*http.Response, bool, error) {
		stop()
		if ctxErr := ctx.Err(); ctxErr != nil {
			err = ctxErr
		}
		return nil, uc.lr.read > 0, err
	}
	if head != nil {
		if _, err := uc.c.Write(head); err != nil {
			return fail(err)
		}
	} else {
		if err := r.Write(uc.bw); err != nil {
			return fail(err)
		}
		if err := uc.bw.Flush(); err != nil {
			return fail(err)
		}
	}
	uc.lr.remain, uc.lr.read = maxResponseHeaderBytes, 0
	// The transport's errors: the read error itself when no byte came
	// back, else the connection is broken.
	if _, err := uc.br.Peek(1); err != nil {
		return fail(err)
	}
	broken := func(err error) (*http.Response, bool, error) {
		if uc.lr.remain == 0 {
			err = errHeadersTooLong
		}
		return fail(fmt.Errorf("net/http: HTTP/1.x transport connection broken: %w", err))
	}
	trace := httptrace.ContextClientTrace(ctx)
	for {
		resp, err = http.ReadResponse(uc.br, r)
		if err != nil {
			return broken(err)
		}
		code := resp.StatusCode
		if code < 100 || code > 199 || code == http.StatusSwitchingProtocols {
			break
		}
		// Informational: passed on, each under its own bound; else the
		// bound covers them all and the final head.
		if trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(code, textproto.MIMEHeader(resp.Header)); err != nil {
				return fail(err)
			}
			uc.lr.remain = maxResponseHeaderBytes
		}
	}
	uc.lr.remain = -1
	reuse := !resp.Close && resp.StatusCode != http.StatusSwitchingProtocols
	if resp.Body == http.NoBody {
		uc.done(stop, reuse)
		return resp, true, nil
	}
	resp.Body = &upBody{uc: uc, body: resp.Body, stop: stop, reuse: reuse}
	return resp, true, nil
}

// done ends an exchange: the connection goes back to the pool if reuse
// and the request's end did not reach it, else it is closed.
func (uc *upConn) done(stop func() bool, reuse bool) {
	if stop() && reuse {
		uc.pool.put(uc)
		return
	}
	uc.c.Close()
}

// upBody is a response body from a pooled connection: read to its end,
// it gives the connection back.
type upBody struct {
	uc    *upConn
	body  io.ReadCloser
	stop  func() bool
	reuse bool

	mu    sync.Mutex // guards following
	ended bool
}

func (b *upBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	if err == io.EOF {
		b.end(true)
	}
	return n, err
}

// Close before the end closes the connection rather than reading the
// rest of the body, as the transport's does.
func (b *upBody) Close() error {
	if b.end(false) {
		return nil
	}
	return b.body.Close() // at its end: reads nothing
}

// end ends the exchange once; it reports whether this call did.
func (b *upBody) end(eof bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ended {
		return false
	}
	b.ended = true
	b.uc.done(b.stop, b.reuse && eof)
	return true
}
