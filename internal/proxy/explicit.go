package proxy

import (
	"context"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// Serve runs the explicit proxy on ln until ctx is done: CONNECT tunnels
// and absolute-form HTTP requests. When ctx is done it stops accepting,
// lets in-flight requests and tunnels finish for up to DrainTimeout, then
// cuts what remains and returns nil. It closes ln.
//
// Connections are accepted by explicit_conn.go's loop, which answers
// CONNECT heads itself and hands every other connection to an
// http.Server, with the bytes it read replayed.
func (p *Proxy) Serve(ctx context.Context, ln net.Listener) error {
	p.addSelfAddr(ln.Addr())
	dr := newDrainer()
	defer dr.cut()
	h := &explicitHandler{p: p, dr: dr, hand: newHandoffListener(ln.Addr()), conns: newFastConns()}
	h.rp = &httputil.ReverseProxy{
		Rewrite:    func(*httputil.ProxyRequest) {}, // the URL is already absolute; no X-Forwarded-*
		Transport:  &forwardRoundTripper{fresh: p.forwardTransport(false)},
		BufferPool: bufferPool{},
		// Zero: ReverseProxy still flushes at once for streaming responses
		// (text/event-stream, or no Content-Length), so server-sent events
		// are not buffered; others go out in one write instead of two.
		FlushInterval:  0,
		ErrorHandler:   h.forwardError,
		ErrorLog:       log.New(io.Discard, "", 0),
		ModifyResponse: nil,
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: p.cfg.HeaderTimeout,
		MaxHeaderBytes:    p.cfg.MaxHeaderBytes,
		IdleTimeout:       explicitIdleTimeout,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		// Requests outlive ctx while draining; dr.hard ends them.
		BaseContext: func(net.Listener) context.Context { return dr.hard },
		// Each connection's id for its audit lines: the fast path's, for
		// a connection it handed over.
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			id := &connID{}
			if hc, ok := c.(*handoffConn); ok {
				id = hc.id
			}
			return context.WithValue(ctx, connIDKey{}, id)
		},
		ConnState: func(c net.Conn, s http.ConnState) {
			if s == http.StateClosed {
				p.release() // hijacked connections are released by their tunnel
			}
		},
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(h.hand) }()
	var closing atomic.Bool
	acceptc := make(chan error, 1)
	go func() { acceptc <- h.accept(ln, &closing) }()
	defer p.upstreams.closeAll()
	select {
	case err := <-acceptc:
		ln.Close()
		h.hand.Close()
		<-errc
		dr.wait(0)
		h.conns.wait(0)
		return err
	case <-ctx.Done():
	}
	closing.Store(true)
	ln.Close()
	<-acceptc
	h.conns.drain()
	// One deadline for everything in flight: forwarded requests (which
	// Shutdown waits for), hijacked tunnels (which it does not) and the
	// fast path's requests and tunnels.
	deadline := time.Now().Add(p.cfg.DrainTimeout)
	sctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	stop := context.AfterFunc(sctx, func() {
		dr.cut()
		h.conns.cut()
	})
	defer stop()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	<-errc
	dr.wait(time.Until(deadline))
	h.conns.wait(time.Until(deadline))
	return nil
}

// refuseRaw answers a connection that will not be served, then lingers
// briefly reading so closing does not reset the answer away.
func refuseRaw(c net.Conn, status int, reason string) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	body := "fqdngate: " + reason + "\n"
	io.WriteString(c, "HTTP/1.1 "+itoa(status)+" "+http.StatusText(status)+"\r\n"+
		"Content-Type: text/plain; charset=utf-8\r\n"+
		"X-Fqdngate-Reason: "+reason+"\r\n"+
		"Connection: close\r\n"+
		"Content-Length: "+itoa(len(body))+"\r\n\r\n"+body)
	if hc, ok := c.(halfCloser); ok {
		hc.CloseWrite()
	}
	io.Copy(io.Discard, io.LimitReader(c, 64<<10))
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for ; n > 0; n /= 10 {
		i--
		b[i] = byte('0' + n%10)
	}
	return string(b[i:])
}

func remoteAddrPort(c net.Conn) netip.AddrPort {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	return ap
}

type explicitHandler struct {
	p     *Proxy
	dr    *drainer
	rp    *httputil.ReverseProxy
	hand  *handoffListener // to the http.Server
	conns *fastConns       // served by the fast path
}

// writeRefusal answers with status and a short plain-text reason, also in
// X-Fqdngate-Reason so scripts need not parse the body.
func writeRefusal(w http.ResponseWriter, status int, reason, detail string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Fqdngate-Reason", reason)
	if status == http.StatusProxyAuthRequired {
		h.Set("Proxy-Authenticate", `Basic realm="fqdngate"`)
	}
	w.WriteHeader(status)
	msg := "fqdngate: " + reason
	if detail != "" {
		msg += ": " + strings.ReplaceAll(detail, "\n", " ")
	}
	io.WriteString(w, msg+"\n")
}

func (h *explicitHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := h.p
	// A forwarded response sets write deadlines (see countingWriter) that
	// net/http leaves on the connection: clear the last one.
	http.NewResponseController(w).SetWriteDeadline(time.Time{})
	client, _ := netip.ParseAddrPort(r.RemoteAddr)
	id, _ := r.Context().Value(connIDKey{}).(*connID)
	rec := &connRecord{listener: explicitListener, client: client, start: time.Now(), conn: id}
	tunnelled := false // a started tunnel writes the record when it ends
	defer func() {
		if !tunnelled {
			p.record(r.Context(), rec)
		}
	}()

	fail := func(e *refusalError) {
		a := failure(rec, e)
		writeRefusal(w, a.status, a.reason, a.detail)
	}

	t, terr := requestTarget(r)
	authorization := r.Header.Get("Proxy-Authorization")
	if r.Method != http.MethodConnect {
		rec.ensureID(p.ids)
		pol, addrs, a := h.admitForward(r.Context(), rec, t, terr, authorization)
		if a.status != 0 {
			writeRefusal(w, a.status, a.reason, a.detail)
			return
		}
		h.forward(w, r, pol, addrs, t, rec)
		return
	}
	pol, d, a := h.admit(r.Context(), rec, t, terr, authorization)
	if a.status != 0 {
		writeRefusal(w, a.status, a.reason, a.detail)
		return
	}
	tunnelled = h.connect(w, r, pol, d, t, rec, fail)
}

// admitForward is admit for a request to forward, which must also not need
// verified TLS and must resolve: it returns the candidates to dial.
func (h *explicitHandler) admitForward(ctx context.Context, rec *connRecord, t Target, terr error, authorization string) (*policy.Policy, []netip.Addr, answer) {
	pol, d, a := h.admit(ctx, rec, t, terr, authorization)
	if a.status != 0 {
		return nil, nil, a
	}
	if d.Rule != nil && d.Rule.TLS != nil && d.Rule.TLS.Verify {
		return nil, nil, failure(rec, refuse(RefusedPlainHTTP, nil))
	}
	addrs, rerr := h.p.candidates(ctx, pol, t)
	if rerr != nil {
		return nil, nil, failure(rec, rerr)
	}
	return pol, addrs, answer{}
}

// answer is a refusal as writeRefusal sends it; status 0 is no refusal.
type answer struct {
	status         int
	reason, detail string
}

// failure records e in rec and returns the answer that tells the client.
// The detail of an authentication failure is not given away.
func failure(rec *connRecord, e *refusalError) answer {
	rec.fail(e)
	detail := ""
	if e.err != nil && e.r != RefusedAuth {
		detail = e.err.Error()
	}
	return answer{e.r.status(), e.r.String(), detail}
}

// admit is what every explicit request goes through before anything is
// resolved or dialled, whichever way it came in: a policy must be loaded,
// the target t (or terr) must parse, the Proxy-Authorization header must
// be absent or name a user with the right password, and the policy must
// permit the request. It fills rec as it goes and returns the policy and
// its decision, or the answer that refuses the request.
func (h *explicitHandler) admit(ctx context.Context, rec *connRecord, t Target, terr error, authorization string) (*policy.Policy, policy.Decision, answer) {
	p := h.p
	pol := p.cfg.Policy()
	if pol == nil {
		return nil, policy.Decision{}, failure(rec, refuse(RefusedNoPolicy, nil))
	}
	if terr != nil {
		return nil, policy.Decision{}, failure(rec, refuse(RefusedBadRequest, terr))
	}
	rec.target = t

	user, err := p.auth.check(ctx, pol, authorization)
	if err != nil {
		return nil, policy.Decision{}, failure(rec, refuse(RefusedAuth, err))
	}
	rec.user = user

	q := policy.Query{Source: rec.client.Addr().Unmap(), User: user, Port: t.Port, Proto: policy.TCP}
	if t.Name != "" {
		q.Name = string(t.Name)
	} else {
		q.Addr = t.Addr
	}
	d := pol.Decide(q)
	rec.decision = d
	if !d.Action.Permits() {
		rec.refusal = RefusedPolicy
		// Credentials could change this answer: ask for them.
		if user == "" && d.Reason == policy.ReasonSource && len(pol.Users) > 0 {
			return nil, d, answer{http.StatusProxyAuthRequired, RefusedAuth.String(), d.Reason.String()}
		}
		return nil, d, answer{http.StatusForbidden, d.Reason.String(), ""}
	}
	return pol, d, answer{}
}

// requestTarget returns where an explicit request is going: the authority
// of a CONNECT, or the host of an absolute http:// URL (whose Host header
// RFC 9112 says to ignore).
func requestTarget(r *http.Request) (Target, error) {
	if r.Method == http.MethodConnect {
		return parseTarget(r.Host, 0)
	}
	switch {
	case !r.URL.IsAbs() || r.URL.Host == "":
		return Target{}, errors.New("this is a proxy: send an absolute URL (http://host/path) or CONNECT host:port")
	case r.URL.Scheme != "http":
		return Target{}, errors.New("only http:// URLs are forwarded; use CONNECT for " + r.URL.Scheme)
	}
	return parseTarget(r.URL.Host, 80)
}

// connect dials t and answers 200, then carries the tunnel in a goroutine
// of its own and returns true: the handler returns at once, so net/http
// releases the connection's buffers, request and deep stack instead of
// keeping them for the tunnel's life. The tunnel's goroutine then owns rec,
// the max_conns slot and a drainer count. On false, nothing was started
// and the caller writes rec.
func (h *explicitHandler) connect(w http.ResponseWriter, r *http.Request, pol *policy.Policy, d policy.Decision, t Target, rec *connRecord, fail func(*refusalError)) bool {
	p := h.p
	up, ap, rerr := p.connect(r.Context(), pol, d, t)
	rec.dialled = ap
	if rerr != nil {
		fail(rerr)
		return false
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		up.Close()
		fail(refuse(RefusedBadRequest, errors.New("connection cannot be hijacked")))
		return false
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		up.Close()
		rec.fail(refuse(RefusedDial, err))
		return false
	}
	// The bytes sent after the head, which a client may send (a
	// ClientHello) without waiting for our answer: those net/http has
	// buffered, then those the fast path had read and net/http had not.
	bp := headBufs.Get().(*[]byte)
	early := (*bp)[:0]
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		early = append(early, b...)
	}
	if hc, ok := conn.(*handoffConn); ok {
		var rest []byte
		rest, conn = hc.drain()
		early = append(early, rest...)
	}
	// The server stopped counting this connection at Hijack: release its
	// max_conns slot when the tunnel ends, or now.
	client, ok := conn.(*net.TCPConn)
	abort := func() bool {
		headBufs.Put(bp)
		p.release()
		conn.Close()
		up.Close()
		return false
	}
	if !ok {
		rec.fail(refuse(RefusedBadRequest, errors.New("client connection is not TCP")))
		return abort()
	}
	conn.SetDeadline(time.Time{})
	if _, err := io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return abort()
	}
	h.dr.add()
	go func() {
		defer h.dr.done()
		defer p.release()
		// The drain deadline cuts a client that is still to send its
		// first bytes, as the fast path's cut does by closing it.
		stop := context.AfterFunc(h.dr.hard, func() { client.SetReadDeadline(aLongTimeAgo) })
		open, drain := p.openTunnel(h.dr.hard, client, newHeadReader(client), early, pol, d, t, up, rec)
		stop()
		headBufs.Put(bp)
		if open {
			rec.ended = p.tunnel(h.dr.hard, client, up, idleTimeout(pol), &rec.up, &rec.down)
		} else {
			up.Close()
		}
		p.record(context.Background(), rec)
		if drain {
			drainClient(client)
		}
		client.Close()
	}()
	return true
}

// connIDKey carries a connection's *connID from ConnContext to its
// requests.
type connIDKey struct{}

// planKey carries a forwarded request's checked addresses from the handler
// to the transport's dial, so the transport dials exactly what was checked.
type planKey struct{}

type dialPlan struct {
	p     *Proxy
	pol   *policy.Policy
	addrs []netip.Addr
	port  uint16
	// conns is the connection pool of pol: requests it can send (see
	// connPool) go over an idle connection to any candidate, or a fresh
	// one kept for later. pooled is pol's keep-alive transport for the
	// others, when there is one candidate (the URL's host is rewritten to
	// it). Without either, the request dials a fresh connection.
	pooled *http.Transport
	conns  *connPool

	mu      sync.Mutex // guards following
	dialled netip.AddrPort
	rerr    *refusalError
}

// forwardRoundTripper sends a forwarded request through the transport its
// dial plan chose.
type forwardRoundTripper struct {
	fresh *http.Transport
}

func (f *forwardRoundTripper) RoundTrip(r *http.Request) (*http.Response, error) {
	plan, _ := r.Context().Value(planKey{}).(*dialPlan)
	switch {
	case plan == nil:
	case plan.conns != nil && pooledRequest(r) && !plan.p.noConnPool:
		return plan.conns.roundTrip(r, nil, plan)
	case plan.pooled != nil:
		return plan.pooled.RoundTrip(r)
	}
	return f.fresh.RoundTrip(r)
}

// bufferPool lends ReverseProxy the tunnels' copy buffers.
type bufferPool struct{}

func (bufferPool) Get() []byte { return *copyBufs.Get().(*[]byte) }

func (bufferPool) Put(b []byte) {
	if cap(b) == copyBufSize {
		b = b[:copyBufSize]
		copyBufs.Put(&b)
	}
}

// Bounds of the upstream connection pool of one policy.
const (
	maxIdleUpstreams        = 256
	maxIdleUpstreamsPerAddr = 64
	upstreamIdleTimeout     = 60 * time.Second
)

// upstreamPools keeps forwarded HTTP's idle upstream connections, keyed by
// the policy they were dialled under and the exact address dialled (the
// request URL's host is rewritten to it): a pooled connection is only
// taken for a request that was decided under that same policy and whose
// one checked candidate is that address. A reload starts a new pool and
// closes the old one's idle connections; the old transport closes the
// connections still in use as they come back.
type upstreamPools struct {
	p   *Proxy
	cur atomic.Pointer[policyTransport]
}

type policyTransport struct {
	pol   *policy.Policy
	t     *http.Transport
	conns *connPool
}

func (pt *policyTransport) closeIdle() {
	pt.t.CloseIdleConnections()
	pt.conns.closeIdle()
}

// forPolicy returns the pool of pol, or nil when pol is no longer the
// policy in force (a request decided just before a reload dials fresh).
func (u *upstreamPools) forPolicy(pol *policy.Policy) *policyTransport {
	for {
		cur := u.cur.Load()
		if cur != nil && cur.pol == pol {
			return cur
		}
		if u.p.cfg.Policy() != pol {
			return nil
		}
		next := &policyTransport{pol: pol, t: u.p.forwardTransport(true), conns: newConnPool()}
		if u.cur.CompareAndSwap(cur, next) {
			if cur != nil {
				cur.closeIdle()
			}
			return next
		}
		next.closeIdle()
	}
}

func (u *upstreamPools) closeAll() {
	if cur := u.cur.Swap(nil); cur != nil {
		cur.closeIdle()
	}
}

// forwardTransport returns the transport of forwarded requests. Either way
// it dials only the request's checked candidates, so its audit line names
// the address it reached. Without keepAlive every request dials a fresh
// connection; with it (one transport per policy, see upstreamPools),
// idle connections are kept, keyed by the address dialled. It never
// consults proxy environment variables.
func (p *Proxy) forwardTransport(keepAlive bool) *http.Transport {
	t := &http.Transport{
		Proxy:                  nil,
		DisableKeepAlives:      !keepAlive,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 1 << 20,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			plan, _ := ctx.Value(planKey{}).(*dialPlan)
			if plan == nil {
				return nil, errors.New("internal error: forwarded request without a dial plan")
			}
			if keepAlive && (len(plan.addrs) != 1 || netip.AddrPortFrom(plan.addrs[0], plan.port).String() != addr) {
				return nil, errors.New("internal error: pooled dial of an address that was not checked")
			}
			c, ap, rerr := plan.p.dial(ctx, plan.pol, plan.addrs, plan.port)
			plan.mu.Lock()
			plan.dialled, plan.rerr = ap, rerr
			plan.mu.Unlock()
			if rerr != nil {
				return nil, rerr
			}
			return &idleConn{TCPConn: c, idle: idleTimeout(plan.pol)}, nil
		},
	}
	if keepAlive {
		t.MaxIdleConns = maxIdleUpstreams
		t.MaxIdleConnsPerHost = maxIdleUpstreamsPerAddr
		t.IdleConnTimeout = upstreamIdleTimeout
	}
	return t
}

// idleConn gives a forwarded request's upstream connection the policy's
// idle timeout: a server that stops sending (or reading) for that long is
// cut off instead of holding the client forever. Forwarded HTTP is copied
// through user space anyway, so the wrapper costs no splice.
type idleConn struct {
	*net.TCPConn
	idle time.Duration
}

func (c *idleConn) Read(b []byte) (int, error) {
	c.TCPConn.SetReadDeadline(time.Now().Add(c.idle))
	return c.TCPConn.Read(b)
}

func (c *idleConn) Write(b []byte) (int, error) {
	c.TCPConn.SetWriteDeadline(time.Now().Add(c.idle))
	return c.TCPConn.Write(b)
}

// newDialPlan plans how a forwarded request reaches port on one of addrs:
// over an idle connection to one of them kept under this same policy, or
// a fresh one to be kept. A request decided under a policy no longer in
// force dials a fresh connection for itself alone.
func (h *explicitHandler) newDialPlan(pol *policy.Policy, addrs []netip.Addr, port uint16, rec *connRecord) *dialPlan {
	plan := &dialPlan{p: h.p, pol: pol, addrs: addrs, port: port}
	if pt := h.p.upstreams.forPolicy(pol); pt != nil {
		plan.conns = pt.conns
		if len(addrs) == 1 {
			plan.pooled = pt.t
			rec.dialled = plan.key()
		}
	}
	return plan
}

// key is the address a pooled plan's connections go to.
func (plan *dialPlan) key() netip.AddrPort { return netip.AddrPortFrom(plan.addrs[0], plan.port) }

// finish records in rec the address the request reached, and why its dial
// failed if it did.
func (plan *dialPlan) finish(rec *connRecord) {
	plan.mu.Lock()
	defer plan.mu.Unlock()
	if plan.pooled == nil || plan.dialled.IsValid() || plan.rerr != nil {
		// A request over the pooled transport that reused a connection
		// reached its one address, already in rec.
		rec.dialled = plan.dialled
	}
	if plan.rerr != nil && rec.refusal == NotRefused {
		rec.fail(plan.rerr)
	}
}

func (h *explicitHandler) forward(w http.ResponseWriter, r *http.Request, pol *policy.Policy, addrs []netip.Addr, t Target, rec *connRecord) {
	plan := h.newDialPlan(pol, addrs, t.Port, rec)
	ctx := context.WithValue(r.Context(), planKey{}, plan)
	out := r.WithContext(ctx)
	if plan.pooled != nil {
		var buf [len("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535")]byte
		if host := plan.key().AppendTo(buf[:0]); string(host) != r.URL.Host {
			u := *r.URL
			u.Host = string(host)
			out.URL = &u
		}
		if out.Host == "" {
			out.Host = r.URL.Host
		}
	}
	// WebSocket and other upgrades go through CONNECT; a hijacked upgrade
	// here would escape connection accounting and the idle timeout.
	out.Header.Del("Upgrade")
	if r.Body != nil && r.Body != http.NoBody {
		out.Body = &countingReader{r: r.Body, n: &rec.up}
	}
	cw := &countingWriter{ResponseWriter: w, rec: rec, idle: idleTimeout(pol)}
	h.dr.add()
	defer h.dr.done()
	h.rp.ServeHTTP(cw, out)
	// net/http flushes what is left after we return: under a fresh deadline.
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(cw.idle))
	plan.finish(rec)
	h.p.metrics.carried(true, rec.up.Load())
	h.p.metrics.carried(false, rec.down.Load())
}

// forwardError answers a failed forward with 502 or 504 and the reason.
func (h *explicitHandler) forwardError(w http.ResponseWriter, r *http.Request, err error) {
	re := forwardRefusal(err)
	if cw, ok := w.(*countingWriter); ok {
		if cw.rec.refusal == NotRefused {
			cw.rec.fail(re)
		}
		w = cw.ResponseWriter // our answer is not bytes carried
	}
	writeRefusal(w, re.r.status(), re.r.String(), errorDetail(re))
}

// forwardRefusal is the refusal of a forward that failed with err.
func forwardRefusal(err error) *refusalError {
	var re *refusalError
	if !errors.As(err, &re) {
		r := RefusedDial
		if isTimeout(err) || errors.Is(err, context.DeadlineExceeded) {
			r = RefusedDialTimeout
		}
		re = refuse(r, err)
	}
	return re
}

func errorDetail(e *refusalError) string {
	if e.err == nil {
		return ""
	}
	return e.err.Error()
}

type countingReader struct {
	r io.ReadCloser
	n interface{ Add(int64) int64 }
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }

// countingWriter counts response body bytes, and gives the client idle to
// take each write (a client that stops reading is cut off like an idle
// tunnel); Unwrap keeps flushing available to http.ResponseController.
type countingWriter struct {
	http.ResponseWriter
	rec  *connRecord
	idle time.Duration
}

// WriteHeader keeps net/http from adding a Content-Type the upstream did
// not send: a proxy passes the response on as it came.
func (c *countingWriter) WriteHeader(code int) {
	if h := c.Header(); code >= 200 {
		if _, ok := h["Content-Type"]; !ok {
			h["Content-Type"] = nil
		}
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(b []byte) (int, error) {
	http.NewResponseController(c.ResponseWriter).SetWriteDeadline(time.Now().Add(c.idle))
	n, err := c.ResponseWriter.Write(b)
	c.rec.down.Add(int64(n))
	return n, err
}

func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }
