package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fqdngate/fqdngate/internal/peek"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// The explicit listener's connections are accepted here, not by net/http:
// request heads are read with peek's parser, and a CONNECT is decided,
// dialled, answered and tunnelled by this file's fast path, which saves
// net/http's per-connection work (its reader and writer, the request and
// its header map, contexts, the background read, Hijack) on every tunnel;
// a plain GET or HEAD is forwarded by explicit_forward.go. Anything else,
// and every head the fast path is not certain to answer exactly as
// net/http would, goes to the http.Server unchanged: its bytes already
// read are replayed, and its head keeps the deadline it had.
//
// The fast path takes a head only when it is a CONNECT whose request line
// is "CONNECT host:port HTTP/1.1" (host a name of letters, digits, '-',
// '.' and '_', or a bracketed IPv6 address) and whose header fields pass
// peek's checks, with at most one Host (of the same characters),
// Proxy-Authorization and Connection field, and no Content-Length,
// Transfer-Encoding or Expect. It then does what ServeHTTP and connect do
// and sends the bytes net/http would send. A head that is not whole
// within headBufSize bytes, HTTP/1.0, userinfo, percent-escapes and the
// like all go to net/http, which answers them as it always has (431 for
// oversized heads, 400 for malformed ones).

// headBufSize is the most the fast path reads looking for a request head.
// It is net/http's own first read, so handing a longer head over changes
// nothing about when net/http refuses it as too large.
const headBufSize = 4 << 10

var headBufs = sync.Pool{New: func() any { b := make([]byte, headBufSize); return &b }}

// explicitIdleTimeout is how long a kept-alive explicit connection may wait
// for its next request.
const explicitIdleTimeout = 2 * time.Minute

// connectPrefix starts every head the fast path takes.
const connectPrefix = "CONNECT "

// accept accepts connections on ln until it fails, applying max_conns, and
// serves each: CONNECT heads on the fast path, everything else through the
// http.Server behind h.hand. It returns nil once closing is set and ln is
// closed. Temporary errors (out of descriptors) are retried with the
// backoff http.Server uses.
func (h *explicitHandler) accept(ln net.Listener, closing *atomic.Bool) error {
	p := h.p
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if closing.Load() {
				return nil
			}
			//lint:ignore SA1019 the same test http.Server.Serve applies to accept errors
			if ne, ok := err.(net.Error); ok && ne.Temporary() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				p.log.Debug("http: Accept error; retrying", "error", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		if !p.fromInside(c, explicitListener) {
			c.Close()
			continue
		}
		if !p.acquire(p.cfg.Policy()) {
			rec := &connRecord{listener: explicitListener, client: remoteAddrPort(c), start: time.Now(), refusal: RefusedBusy}
			p.record(context.Background(), rec)
			h.dr.add()
			go func() {
				defer h.dr.done()
				refuseRaw(c, http.StatusServiceUnavailable, RefusedBusy.String())
			}()
			continue
		}
		tc, ok := c.(*net.TCPConn)
		if !ok || p.noFastPath {
			if !h.hand.deliver(c) {
				c.Close()
				p.release()
			}
			continue
		}
		f := &fastConn{c: tc}
		if !h.conns.add(f) {
			tc.Close()
			p.release()
			continue
		}
		go h.serveConn(f)
	}
}

// serveConn serves a connection from its first byte: request heads are
// read here, CONNECTs answered and tunnelled, anything else handed to
// net/http. A connection whose CONNECT was refused is kept alive for its
// next request, as net/http would.
func (h *explicitHandler) serveConn(f *fastConn) {
	p := h.p
	c := f.c
	bp := headBufs.Get().(*[]byte)
	buf := *bp
	n := 0 // buf[:n] is read and not yet used
	handed := false
	defer func() {
		if bp != nil {
			headBufs.Put(bp)
		}
		if !handed {
			h.conns.remove(f)
			c.Close()
			p.release()
		}
	}()
	r := newHeadReader(c)
	forwards := !p.noConnPool // the fast path forwards with the pool
	var fields [16]peek.Field
	for kept := false; ; kept = true {
		if kept && n == 0 {
			// Wait for the next request; its head has HeaderTimeout
			// from its first byte.
			r.deadline = time.Now().Add(explicitIdleTimeout)
			m, err := r.Read(buf)
			if err != nil {
				return
			}
			n = m
		}
		deadline := time.Now().Add(p.cfg.HeaderTimeout)
		r.deadline = deadline
		end, handoff := readFastHead(r, buf, &n, forwards)
		r.disarm()
		var req connectRequest
		var fr forwardRequest
		forward := false
		if end > 0 {
			var ok bool
			if forward = !isConnect(buf); forward {
				fr, ok = parseForward(string(buf[:end]), fields[:0], false)
			} else {
				req, ok = parseConnect(buf[:end])
			}
			handoff = !ok
		}
		if !handoff && end == 0 {
			return // nothing read: closed, reset or timed out
		}
		if handoff {
			if !h.conns.handOff(f) {
				return // shutting down: net/http would close it unanswered
			}
			hc := &handoffConn{TCPConn: c, buf: bytes.Clone(buf[:n]), clamp: deadline, id: &f.id}
			handed = true
			if !h.hand.deliver(hc) {
				c.Close()
				p.release()
			}
			return
		}
		ctx, cancel := context.WithCancel(context.Background())
		if !h.conns.busy(f, cancel) {
			cancel()
			return
		}
		if forward {
			keep := h.fastForward(ctx, cancel, c, &fr, &f.id)
			cancel()
			if !keep || !h.conns.waiting(f) {
				return
			}
			n = copy(buf, buf[end:n])
			continue
		}
		tun, keep := h.fastConnect(ctx, cancel, c, req, &f.id)
		if tun != nil {
			// A goroutine of its own carries the tunnel, so that this
			// one's stack, grown deep by the dial, is not kept for the
			// tunnel's life. It takes the buffer, holding the bytes sent
			// after the head, to read the tunnel's first bytes into.
			tun.r, tun.buf = r, bp
			tun.early = copy(buf, buf[end:n])
			bp = nil
			handed = true
			go h.carry(ctx, cancel, f, tun)
			return
		}
		cancel()
		if !keep || !h.conns.waiting(f) {
			return
		}
		n = copy(buf, buf[end:n])
	}
}

// carry opens and runs a tunnel the fast path answered, then ends f.
func (h *explicitHandler) carry(ctx context.Context, cancel context.CancelFunc, f *fastConn, t *fastTunnel) {
	p := h.p
	open, drain := p.openTunnel(ctx, f.c, t.r, (*t.buf)[:t.early], t.pol, t.d, t.target, t.up, t.rec)
	headBufs.Put(t.buf)
	if open {
		t.rec.ended = p.tunnel(ctx, f.c, t.up, idleTimeout(t.pol), &t.rec.up, &t.rec.down)
	} else {
		t.up.Close()
	}
	p.record(ctx, t.rec)
	if drain {
		drainClient(f.c)
	}
	cancel()
	h.conns.remove(f)
	f.c.Close()
	p.release()
}

// headReader reads a connection under a deadline it arms only when a read
// would wait: a head that has arrived by the time it is read, as most
// have, costs no timer.
type headReader struct {
	c        *net.TCPConn
	rc       syscall.RawConn
	readFn   func(fd uintptr) bool
	deadline time.Time // for reads from now on
	armed    time.Time // the connection's read deadline, if set by a read

	// Of the read in progress:
	b    []byte
	n    int
	rerr error
}

func newHeadReader(c *net.TCPConn) *headReader {
	r := &headReader{c: c}
	r.rc, _ = c.SyscallConn()
	r.readFn = r.read
	return r
}

func (r *headReader) Read(b []byte) (int, error) {
	if r.rc == nil {
		r.arm()
		return r.c.Read(b)
	}
	r.b, r.n, r.rerr = b, 0, nil
	if err := r.rc.Read(r.readFn); err != nil {
		return 0, err
	}
	switch {
	case r.rerr != nil:
		return 0, os.NewSyscallError("read", r.rerr)
	case r.n <= 0:
		return 0, io.EOF
	}
	return r.n, nil
}

func (r *headReader) read(fd uintptr) bool {
	for {
		r.n, r.rerr = syscall.Read(int(fd), r.b)
		if r.rerr != syscall.EINTR {
			break
		}
	}
	if r.rerr == syscall.EAGAIN {
		r.arm() // before RawConn.Read waits
		return false
	}
	return true
}

func (r *headReader) arm() {
	if !r.armed.Equal(r.deadline) {
		r.c.SetReadDeadline(r.deadline)
		r.armed = r.deadline
	}
}

// disarm clears the read deadline if a read set it.
func (r *headReader) disarm() {
	if !r.armed.IsZero() {
		r.c.SetReadDeadline(time.Time{})
		r.armed = time.Time{}
	}
}

// readFastHead reads into buf, which holds *n bytes already, until
// buf[:end] is a whole request head that starts as a CONNECT or, if
// forwards, as a GET or HEAD in absolute form. It hands the connection off
// (to net/http) as soon as the bytes so far cannot be a head the fast path
// takes, so that net/http answers a malformed line when it would have; and
// when the head does not fit in buf or the read fails after something was
// read, so that net/http meets the same end. It returns end 0 and no
// handoff when the connection ended before a byte was read.
func readFastHead(c io.Reader, buf []byte, n *int, forwards bool) (end int, handoff bool) {
	lines := 0 // buf[:lines] are whole lines, checked
	for {
		b := buf[:*n]
		if !maybeFast(b, forwards) {
			return 0, true
		}
		if end := peek.HeadLen(b); end >= 0 {
			return end, false
		}
		if i := bytes.LastIndexByte(b, '\n'); i >= 0 && i+1 > lines {
			// A line is complete (for net/http, whose lines may end in
			// a bare LF): it must fit a head the fast path takes, else
			// net/http may already have an answer for it.
			lines = i + 1
			if !takesPartialHead(append(b[:lines:lines], "\r\n"...)) {
				return 0, true
			}
		}
		if *n == len(buf) {
			return 0, true
		}
		m, err := c.Read(buf[*n:])
		*n += m
		if err != nil {
			return 0, *n > 0
		}
	}
}

// takesPartialHead reports whether the fast path may take a head that
// starts with these lines.
func takesPartialHead(head []byte) bool {
	if isConnect(head) {
		_, ok := parseConnect(head)
		return ok
	}
	var fields [16]peek.Field
	_, ok := parseForward(string(head), fields[:0], true)
	return ok
}

func isConnect(b []byte) bool { return bytes.HasPrefix(b, []byte(connectPrefix)) }

// maybeFast reports whether b could start a head the fast path takes: a
// CONNECT or, if forwards, a GET or HEAD in absolute form.
func maybeFast(b []byte, forwards bool) bool {
	if hasPrefixSoFar(b, connectPrefix) {
		return true
	}
	return forwards && (hasPrefixSoFar(b, getPrefix) || hasPrefixSoFar(b, headPrefix))
}

// hasPrefixSoFar reports whether b starts with prefix, or is the start of
// it.
func hasPrefixSoFar(b []byte, prefix string) bool {
	if len(b) >= len(prefix) {
		return string(b[:len(prefix)]) == prefix
	}
	return string(b) == prefix[:len(b)]
}

// connectRequest is what the fast path needs from a CONNECT head.
type connectRequest struct {
	authority     string // the request target
	authorization string // Proxy-Authorization, or ""
	close         bool   // Connection: close
}

// parseConnect parses head (through its empty line) and reports whether
// the fast path takes it: see the comment at the top of this file. Taken,
// net/http would read the same request with Host = authority and answer
// it through ServeHTTP.
func parseConnect(head []byte) (connectRequest, bool) {
	var fields [16]peek.Field
	r, err := peek.ParseRequest(string(head), fields[:0])
	if err != nil || r.Method != http.MethodConnect || r.Proto != "HTTP/1.1" || !fastAuthority(r.Target) {
		return connectRequest{}, false
	}
	hf, ok := scanFields(r.Fields, connectRefused)
	if !ok {
		return connectRequest{}, false
	}
	return connectRequest{authority: r.Target, authorization: hf.authorization, close: hf.close}, true
}

// connectRefused are the fields that send a CONNECT to net/http: they give
// it a body or an expectation.
var connectRefused = []string{"Content-Length", "Transfer-Encoding", "Expect"}

// headFields is what the fast path reads from a head's fields.
type headFields struct {
	hosts, agents int    // Host and User-Agent fields
	authorization string // Proxy-Authorization, or ""
	connection    string // the Connection field, or ""
	close         bool   // Connection: close
}

// scanFields reads fields for the fast path. It reports false, for the
// head to go to net/http, on a second Host, Proxy-Authorization or
// Connection field, a Host net/http might read otherwise, or any field
// named in refused.
func scanFields(fields []peek.Field, refused []string) (headFields, bool) {
	var hf headFields
	var auths, conns int
	for _, f := range fields {
		switch {
		case strings.EqualFold(f.Name, "Host"):
			hf.hosts++
			if hf.hosts > 1 || !fastHost(f.Value) {
				return hf, false
			}
		case strings.EqualFold(f.Name, "User-Agent"):
			hf.agents++
		case strings.EqualFold(f.Name, "Proxy-Authorization"):
			auths++
			hf.authorization = f.Value
		case strings.EqualFold(f.Name, "Connection"):
			conns++
			hf.connection = f.Value
			hf.close = hasToken(f.Value, "close")
		default:
			for _, name := range refused {
				if strings.EqualFold(f.Name, name) {
					return hf, false
				}
			}
		}
	}
	return hf, auths <= 1 && conns <= 1
}

// fastAuthority reports whether a CONNECT target is host:port with a host
// of letters, digits, '-', '.' and '_', or [IPv6 address]:port: forms
// that net/http's URL parser gives back unchanged as the request's Host
// (FuzzParseConnect checks this).
func fastAuthority(s string) bool {
	host, port, ok := cutLast(s, ':')
	return ok && fastPort(port) && fastAuthorityHost(host)
}

func fastPort(port string) bool {
	if port == "" || len(port) > 5 {
		return false
	}
	for i := 0; i < len(port); i++ {
		if port[i] < '0' || port[i] > '9' {
			return false
		}
	}
	return true
}

// fastAuthorityHost is fastAuthority's test of the host.
func fastAuthorityHost(host string) bool {
	if v6, ok := strings.CutPrefix(host, "["); ok {
		s, ok := strings.CutSuffix(v6, "]")
		if !ok {
			return false
		}
		for i := 0; i < len(s); i++ {
			if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == ':' || c == '.') {
				return false
			}
		}
		a, err := netip.ParseAddr(s)
		return err == nil && a.Is6()
	}
	if host == "" {
		return false
	}
	for i := 0; i < len(host); i++ {
		if c := host[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

func cutLast(s string, sep byte) (before, after string, found bool) {
	if i := strings.LastIndexByte(s, sep); i >= 0 {
		return s[:i], s[i+1:], true
	}
	return s, "", false
}

// fastHost reports whether a Host field is made of characters net/http
// accepts in one (and the fast path does not care what it says: the
// CONNECT target is the request's host).
func fastHost(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || strings.IndexByte("-._:[]", c) >= 0) {
			return false
		}
	}
	return true
}

// hasToken is net/http's test of a Connection field for a token: a
// case-insensitive match bounded by the ends, spaces, tabs or commas.
func hasToken(v, token string) bool {
	if len(token) > len(v) || token == "" {
		return false
	}
	if v == token {
		return true
	}
	for sp := 0; sp <= len(v)-len(token); sp++ {
		if b := v[sp]; b != token[0] && b|0x20 != token[0] {
			continue
		}
		if sp > 0 && !isTokenBoundary(v[sp-1]) {
			continue
		}
		if end := sp + len(token); end != len(v) && !isTokenBoundary(v[end]) {
			continue
		}
		if strings.EqualFold(v[sp:sp+len(token)], token) {
			return true
		}
	}
	return false
}

func isTokenBoundary(b byte) bool { return b == ' ' || b == ',' || b == '\t' }

// fastTunnel is a CONNECT the fast path answered 200: what is left is to
// inspect it (openTunnel), carry it and write its record.
type fastTunnel struct {
	up     *net.TCPConn
	rec    *connRecord
	pol    *policy.Policy
	d      policy.Decision
	target Target

	r     *headReader // the client's, for the tunnel's first bytes
	buf   *[]byte     // from headBufs: the bytes sent after the head, then the first bytes
	early int         // (*buf)[:early] were sent after the head
}

// fastConnect does for a CONNECT head what ServeHTTP and connect do for
// one read by net/http: decide, resolve, dial, answer. It returns the
// tunnel to carry once it has answered 200, or else whether the connection
// may be kept for another request; either way the audit record is written
// (by the tunnel, when it ends).
func (h *explicitHandler) fastConnect(ctx context.Context, cancel context.CancelFunc, c *net.TCPConn, req connectRequest, id *connID) (*fastTunnel, bool) {
	p := h.p
	if p.onFastConnect != nil {
		p.onFastConnect(c)
	}
	rec := &connRecord{listener: explicitListener, client: requestClient(c), start: time.Now(), conn: id}
	// net/http would notice a client that hangs up while we decide and
	// dial, and cancel the request's context: so do we, if it takes long.
	w := watchHangup(c, cancel)
	t, terr := parseTarget(req.authority, 0)
	pol, d, a := h.admit(ctx, rec, t, terr, req.authorization)
	var up *net.TCPConn
	if a.status == 0 {
		var ap netip.AddrPort
		var rerr *refusalError
		up, ap, rerr = p.connect(ctx, pol, d, t)
		rec.dialled = ap
		if rerr != nil {
			a = failure(rec, rerr)
		}
	}
	w.stop()
	if a.status != 0 {
		closeAfter := req.close || h.conns.isDraining()
		b := appendRefusal(make([]byte, 0, 512), a, closeAfter, time.Now())
		_, err := c.Write(b)
		p.record(ctx, rec)
		return nil, err == nil && !closeAfter
	}
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		up.Close()
		p.record(ctx, rec)
		return nil, false
	}
	return &fastTunnel{up: up, rec: rec, pol: pol, d: d, target: t}, false
}

// requestClient is the client's address as ServeHTTP reads it from
// Request.RemoteAddr, where an IPv4-mapped address is written as IPv4.
func requestClient(c net.Conn) netip.AddrPort {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		if ap.Addr().Is4In6() {
			ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		return ap
	}
	ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	return ap
}

// chunkSize is net/http's response buffer: a body longer than this, written
// at once by a handler, goes out chunked.
const chunkSize = 2048

// appendRefusal appends the bytes net/http sends when writeRefusal answers
// an HTTP/1.1 request with a: the handler's fields in sorted order, then
// Date, Content-Length (or chunking, for a body over chunkSize) and
// Connection: close when the connection is to be closed.
func appendRefusal(b []byte, a answer, closeAfter bool, now time.Time) []byte {
	body := "fqdngate: " + a.reason
	if a.detail != "" {
		body += ": " + strings.ReplaceAll(a.detail, "\n", " ")
	}
	body += "\n"
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(a.status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(a.status)...)
	b = append(b, "\r\nCache-Control: no-store\r\nContent-Type: text/plain; charset=utf-8\r\n"...)
	if a.status == http.StatusProxyAuthRequired {
		b = append(b, "Proxy-Authenticate: Basic realm=\"fqdngate\"\r\n"...)
	}
	b = append(b, "X-Fqdngate-Reason: "...)
	b = append(b, a.reason...)
	b = append(b, "\r\nDate: "...)
	b = now.UTC().AppendFormat(b, http.TimeFormat)
	b = append(b, "\r\n"...)
	if len(body) <= chunkSize {
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, int64(len(body)), 10)
		b = append(b, "\r\n"...)
		if closeAfter {
			b = append(b, "Connection: close\r\n"...)
		}
		b = append(b, "\r\n"...)
		return append(b, body...)
	}
	if closeAfter {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "Transfer-Encoding: chunked\r\n\r\n"...)
	for body != "" {
		chunk := body[:min(len(body), chunkSize)]
		body = body[len(chunk):]
		b = strconv.AppendInt(b, int64(len(chunk)), 16)
		b = append(b, "\r\n"...)
		b = append(b, chunk...)
		b = append(b, "\r\n"...)
	}
	return append(b, "0\r\n\r\n"...)
}

// hangupDelay is how long deciding and dialling may take before the fast
// path starts watching the client for a hang-up.
const hangupDelay = 20 * time.Millisecond

// hangupWatch cancels a request when its client hangs up before it is
// answered, as net/http's background read does. It starts watching only
// after hangupDelay, so a quick dial costs one timer and no read; once
// started it peeks, so the client's early bytes stay unread.
type hangupWatch struct {
	c      *net.TCPConn
	cancel context.CancelFunc
	timer  *time.Timer

	mu      sync.Mutex // guards following
	stopped bool
	done    chan struct{} // closed when a started watch has returned
}

func watchHangup(c *net.TCPConn, cancel context.CancelFunc) *hangupWatch {
	w := &hangupWatch{c: c, cancel: cancel}
	w.timer = time.AfterFunc(hangupDelay, w.start)
	return w
}

func (w *hangupWatch) start() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return
	}
	w.done = make(chan struct{})
	go w.watch(w.done)
}

func (w *hangupWatch) watch(done chan struct{}) {
	defer close(done)
	rc, err := w.c.SyscallConn()
	if err != nil {
		return
	}
	hungUp := false
	var b [1]byte
	rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case err == syscall.EAGAIN || err == syscall.EINTR:
			return false
		case err != nil || n == 0:
			hungUp = true
		}
		return true // data waits to be read: stop watching, as net/http does
	})
	if hungUp {
		w.cancel()
	}
}

// stop ends the watch and returns once nothing reads the connection.
func (w *hangupWatch) stop() {
	if w.timer.Stop() {
		return
	}
	w.mu.Lock()
	w.stopped = true
	done := w.done
	w.mu.Unlock()
	if done != nil {
		w.c.SetReadDeadline(aLongTimeAgo)
		<-done
		w.c.SetReadDeadline(time.Time{})
	}
}

var aLongTimeAgo = time.Unix(1, 0)

// fastConn is a connection the fast path serves.
type fastConn struct {
	c  *net.TCPConn
	id connID // for its audit lines, once it forwards or tunnels

	// Guarded by fastConns.mu:
	busy   bool               // deciding, dialling or tunnelling, not reading a head
	cancel context.CancelFunc // the request's, while busy
}

// fastConns tracks the fast path's connections for shutdown. When Serve's
// context is done, connections reading a head or waiting for one are
// closed (net/http answers no request read during shutdown), busy ones
// finish, and at the drain deadline every one is cancelled and closed.
type fastConns struct {
	draining atomic.Bool

	mu   sync.Mutex // guards following and the fastConns' guarded fields
	m    map[*fastConn]struct{}
	zero chan struct{} // closed when m empties while wait waits
}

func newFastConns() *fastConns { return &fastConns{m: make(map[*fastConn]struct{})} }

// add tracks f, reading its first head; false when shutting down.
func (s *fastConns) add(f *fastConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining.Load() {
		return false
	}
	s.m[f] = struct{}{}
	return true
}

func (s *fastConns) remove(f *fastConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, f)
	if len(s.m) == 0 && s.zero != nil {
		close(s.zero)
		s.zero = nil
	}
}

// busy marks f as serving a request that cancel cancels; false when
// shutting down, and the head just read must go unanswered.
func (s *fastConns) busy(f *fastConn, cancel context.CancelFunc) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining.Load() {
		return false
	}
	f.busy, f.cancel = true, cancel
	return true
}

// waiting marks f as waiting for its next request; false when shutting
// down, and f must be closed.
func (s *fastConns) waiting(f *fastConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	f.busy, f.cancel = false, nil
	return !s.draining.Load()
}

// handOff stops tracking f, which net/http is to serve; false when
// shutting down, and f must be closed.
func (s *fastConns) handOff(f *fastConn) bool {
	s.remove(f)
	return !s.draining.Load()
}

func (s *fastConns) isDraining() bool { return s.draining.Load() }

// drain starts shutting down: connections that are not busy are closed.
func (s *fastConns) drain() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.draining.Store(true)
	for f := range s.m {
		if !f.busy {
			f.c.Close()
		}
	}
}

// cut cancels and closes every connection.
func (s *fastConns) cut() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.draining.Store(true)
	for f := range s.m {
		if f.cancel != nil {
			f.cancel()
		}
		f.c.Close()
	}
}

// wait waits for every connection to end, cutting them at timeout.
func (s *fastConns) wait(timeout time.Duration) {
	t := time.AfterFunc(timeout, s.cut)
	defer t.Stop()
	s.mu.Lock()
	if len(s.m) == 0 {
		s.mu.Unlock()
		return
	}
	ch := make(chan struct{})
	s.zero = ch
	s.mu.Unlock()
	<-ch
}

// handoffListener gives http.Server.Serve the connections the fast path
// hands over.
type handoffListener struct {
	addr   net.Addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newHandoffListener(addr net.Addr) *handoffListener {
	return &handoffListener{addr: addr, conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return l.addr }

// deliver passes c to Serve; false once the listener is closed.
func (l *handoffListener) deliver(c net.Conn) bool {
	select {
	case <-l.closed:
		return false
	default:
	}
	select {
	case l.conns <- c:
		return true
	case <-l.closed:
		return false
	}
}

// handoffConn is a connection handed to net/http after the fast path read
// its first bytes: reads return those first. Until net/http clears the
// read deadline of the head it reads, the deadlines it sets are held to
// clamp, the one the fast path set for that head, so the head's time is
// not extended by the handover.
type handoffConn struct {
	*net.TCPConn
	id *connID // the connection's, for the audit lines of what net/http serves

	mu    sync.Mutex // guards following
	buf   []byte
	clamp time.Time
}

func (c *handoffConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	if len(c.buf) > 0 {
		n := copy(b, c.buf)
		c.buf = c.buf[n:]
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	return c.TCPConn.Read(b)
}

// WriteTo, like Read, gives the replayed bytes first; the embedded
// connection's would skip them.
func (c *handoffConn) WriteTo(w io.Writer) (int64, error) {
	c.mu.Lock()
	buf := c.buf
	c.buf = nil
	c.mu.Unlock()
	n, err := w.Write(buf)
	if err != nil {
		return int64(n), err
	}
	m, err := c.TCPConn.WriteTo(w)
	return int64(n) + m, err
}

// SyscallConn would let a reader skip the replayed bytes: it is refused
// while there are any.
func (c *handoffConn) SyscallConn() (syscall.RawConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.buf) > 0 {
		return nil, errors.New("connection has replayed bytes unread")
	}
	return c.TCPConn.SyscallConn()
}

func (c *handoffConn) SetReadDeadline(t time.Time) error {
	return c.TCPConn.SetReadDeadline(c.clamped(t))
}

func (c *handoffConn) SetDeadline(t time.Time) error {
	if err := c.TCPConn.SetReadDeadline(c.clamped(t)); err != nil {
		return err
	}
	return c.TCPConn.SetWriteDeadline(t)
}

func (c *handoffConn) clamped(t time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.clamp.IsZero():
	case t.IsZero():
		c.clamp = time.Time{}
	case t.After(c.clamp):
		t = c.clamp
	}
	return t
}

// drain returns the replayed bytes not read yet, which are no longer
// replayed, and the connection itself, so a tunnel can read (and splice)
// it directly.
func (c *handoffConn) drain() ([]byte, *net.TCPConn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rest := c.buf
	c.buf = nil
	return rest, c.TCPConn
}
