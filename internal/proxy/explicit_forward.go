package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fqdngate/fqdngate/internal/peek"
	"golang.org/x/net/http/httpguts"
)

// The fast path also forwards the commonest plain-HTTP request itself: a
// GET or HEAD in absolute form without a body, which is all a keep-alive
// client of an HTTP API sends. It does what net/http's server, ServeHTTP,
// forward and ReverseProxy do for one (the same decision, dial plan,
// connection pool, audit record and metrics) and sends the bytes they
// would send, less their per-request work: the request and its header
// map, the response writer, ReverseProxy's clone of the request.
// TestForwardFastPathMatchesNetHTTP and FuzzParseForward hold it to that.
//
// It takes a head only when it is "GET http://authority/path?query
// HTTP/1.1" (or HEAD) with an authority the CONNECT fast path would take
// (its port optional), a path and query of characters net/url gives back
// unchanged and ReverseProxy does not clean, exactly one Host field (of
// fastHost's characters), at most one Connection, Proxy-Authorization and
// User-Agent field, and no Content-Length, Transfer-Encoding, Expect, TE or Upgrade
// field. Anything else goes to net/http.

// Prefixes of the forwarded heads the fast path takes.
const (
	getPrefix  = "GET http://"
	headPrefix = "HEAD http://"
)

// forwardRequest is what the fast path needs from a GET or HEAD head.
type forwardRequest struct {
	method        string // GET or HEAD
	authority     string // of the URL: host, or host:port
	uri           string // origin form: path and query
	authorization string // Proxy-Authorization, or ""
	connection    string // the Connection field, whose tokens name fields not forwarded
	close         bool   // Connection: close
	fields        []peek.Field
}

// parseForward parses head (through its empty line) and reports whether
// the fast path takes it: see the comment at the top of this file. partial
// is for a head whose last lines are still to come: it is not refused for
// what those lines could still bring (its Host). fields is storage for the
// request's fields.
func parseForward(head string, fields []peek.Field, partial bool) (forwardRequest, bool) {
	r, err := peek.ParseRequest(head, fields[:0])
	if err != nil || r.Method != http.MethodGet && r.Method != http.MethodHead || r.Proto != "HTTP/1.1" {
		return forwardRequest{}, false
	}
	authority, uri, ok := originForm(r.Target)
	if !ok {
		return forwardRequest{}, false
	}
	hf, ok := scanFields(r.Fields, forwardRefused)
	// Request.Write sends only the first User-Agent; net/http answers a
	// head without Host with 400.
	if !ok || hf.agents > 1 || hf.hosts == 0 && !partial {
		return forwardRequest{}, false
	}
	return forwardRequest{
		method: r.Method, authority: authority, uri: uri,
		authorization: hf.authorization, connection: hf.connection, close: hf.close,
		fields: r.Fields,
	}, true
}

// forwardRefused are the fields that send a GET or HEAD to net/http: a
// body, an expectation, trailers asked for, an upgrade.
var forwardRefused = []string{"Content-Length", "Transfer-Encoding", "Expect", "Te", "Upgrade"}

// originForm splits an absolute http:// target into its authority and the
// origin-form target net/http would send for it, if the fast path takes
// it.
func originForm(target string) (authority, uri string, ok bool) {
	rest, ok := strings.CutPrefix(target, "http://")
	if !ok {
		return "", "", false
	}
	authority, uri = rest, "/"
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		authority, uri = rest[:i], rest[i:]
	}
	if !fastURLAuthority(authority) || strings.HasPrefix(uri, "//") {
		return "", "", false
	}
	path, query, _ := strings.Cut(uri, "?")
	for i := 0; i < len(path); i++ {
		if !isPathByte(path[i]) {
			return "", "", false
		}
	}
	for i := 0; i < len(query); i++ {
		// A ';' would have ReverseProxy rewrite the query.
		if c := query[i]; c == ';' || !isPathByte(c) && c != '?' {
			return "", "", false
		}
	}
	return authority, uri, true
}

// isPathByte reports whether c is a byte of a path net/url gives back as
// it was sent: unreserved, a sub-delimiter, ':', '@', '/' or the '%' of an
// escape (which peek has checked).
func isPathByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~!$&'()*+,;=:@/%", c) >= 0
}

// fastURLAuthority is fastAuthority for the authority of a URL, whose port
// is optional.
func fastURLAuthority(s string) bool {
	host, port, ok := cutLast(s, ':')
	if !ok || strings.HasSuffix(s, "]") {
		return fastAuthorityHost(s)
	}
	return fastPort(port) && fastAuthorityHost(host)
}

// hopHeaders are ReverseProxy's hop-by-hop headers: not passed on, either
// way.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// unforwardedFields are the request fields not sent upstream besides the
// hop-by-hop ones: those ReverseProxy strips when it has nothing to add
// to them, and Host, which is written first, from the URL.
var unforwardedFields = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Host"}

// forwarded reports whether a field named name is sent upstream.
func (r *forwardRequest) forwarded(name string) bool {
	for _, list := range [...][]string{hopHeaders, unforwardedFields} {
		for _, h := range list {
			if strings.EqualFold(name, h) {
				return false
			}
		}
	}
	if r.connection == "" {
		return true
	}
	for tok := range strings.SplitSeq(r.connection, ",") {
		if strings.EqualFold(textproto.TrimString(tok), name) {
			return false
		}
	}
	return true
}

// appendUpstreamHead appends the head sent upstream for r: what
// ReverseProxy's request would write, asking the server to close the
// connection after it if closeConn.
func appendUpstreamHead(b []byte, r *forwardRequest, closeConn bool) []byte {
	b = append(b, r.method...)
	b = append(b, ' ')
	b = append(b, r.uri...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, r.authority...)
	b = append(b, "\r\n"...)
	for _, f := range r.fields {
		// An empty User-Agent is how ReverseProxy says "none".
		if r.forwarded(f.Name) && (f.Value != "" || !strings.EqualFold(f.Name, "User-Agent")) {
			b = append(b, f.Name...)
			b = append(b, ": "...)
			b = append(b, f.Value...)
			b = append(b, "\r\n"...)
		}
	}
	if closeConn {
		b = append(b, "Connection: close\r\n"...)
	}
	return append(b, "\r\n"...)
}

var (
	upHeadBufs    = sync.Pool{New: func() any { b := make([]byte, 0, headBufSize+256); return &b }}
	clientWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

// idleWriter writes to a client that must take each write within idle: a
// client that stops reading a response is cut off like an idle tunnel,
// instead of holding its upstream connection for ever. Like headReader, it
// arms the deadline only when a write would wait, so a client that reads
// costs no timer.
type idleWriter struct {
	c     *net.TCPConn
	rc    syscall.RawConn
	idle  time.Duration
	armed bool

	// Of the write in progress:
	b    []byte
	n    int
	werr error
	fn   func(fd uintptr) bool
}

func newIdleWriter(c *net.TCPConn, idle time.Duration) *idleWriter {
	w := &idleWriter{c: c, idle: idle}
	w.rc, _ = c.SyscallConn()
	w.fn = w.write
	return w
}

func (w *idleWriter) Write(b []byte) (int, error) {
	if w.rc == nil {
		w.c.SetWriteDeadline(time.Now().Add(w.idle))
		w.armed = true
		return w.c.Write(b)
	}
	w.b, w.n, w.werr = b, 0, nil
	if err := w.rc.Write(w.fn); err != nil {
		return w.n, err
	}
	if w.werr != nil {
		return w.n, os.NewSyscallError("write", w.werr)
	}
	return w.n, nil
}

func (w *idleWriter) write(fd uintptr) bool {
	for len(w.b) > 0 {
		n, err := syscall.Write(int(fd), w.b)
		switch {
		case n > 0:
			w.n += n
			w.b = w.b[n:]
		case err == syscall.EINTR:
		case err == syscall.EAGAIN:
			// The client's window is full: it has idle to make room,
			// from now (RawConn.Write waits under the deadline).
			w.c.SetWriteDeadline(time.Now().Add(w.idle))
			w.armed = true
			return false
		default:
			if err == nil {
				err = io.ErrShortWrite
			}
			w.werr = err
			return true
		}
	}
	return true
}

// disarm clears the write deadline if a write set it.
func (w *idleWriter) disarm() {
	if w.armed {
		w.c.SetWriteDeadline(time.Time{})
		w.armed = false
	}
}

// fastForward does for a GET or HEAD head what ServeHTTP, forward and
// ReverseProxy do for one read by net/http: decide, resolve, send it
// upstream and pass the response on. It reports whether the connection
// may be kept for another request; the audit record is written either way.
func (h *explicitHandler) fastForward(ctx context.Context, cancel context.CancelFunc, c *net.TCPConn, fr *forwardRequest, id *connID) bool {
	p := h.p
	if p.onFastForward != nil {
		p.onFastForward(c)
	}
	rec := &connRecord{listener: explicitListener, client: requestClient(c), start: time.Now(), conn: id}
	rec.ensureID(p.ids)
	defer func() { p.record(ctx, rec) }()
	bw := clientWriters.Get().(*bufio.Writer)
	bw.Reset(c)
	defer func() {
		bw.Reset(nil)
		clientWriters.Put(bw)
	}()
	// net/http would notice a client that hangs up before the answer, and
	// cancel the request: so do we.
	w := watchHangup(c, cancel)
	t, terr := parseTarget(fr.authority, 80)
	pol, addrs, a := h.admitForward(ctx, rec, t, terr, fr.authorization)
	var resp *http.Response
	if a.status == 0 {
		iw := newIdleWriter(c, idleTimeout(pol))
		bw.Reset(iw)
		defer iw.disarm()
		plan := h.newDialPlan(pol, addrs, t.Port, rec)
		hb := upHeadBufs.Get().(*[]byte)
		head := appendUpstreamHead((*hb)[:0], fr, plan.conns == nil)
		req := (&http.Request{Method: fr.method}).WithContext(httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			Got1xxResponse: func(code int, header textproto.MIMEHeader) error {
				return writeInformational(bw, code, http.Header(header))
			},
		}))
		var err error
		resp, err = plan.conns.roundTrip(req, head, plan)
		*hb = head
		upHeadBufs.Put(hb)
		plan.finish(rec)
		if err != nil {
			re := forwardRefusal(err)
			if rec.refusal == NotRefused {
				rec.fail(re)
			}
			a = answer{re.r.status(), re.r.String(), errorDetail(re)}
		}
	}
	closeAfter := fr.close || h.conns.isDraining()
	if a.status != 0 {
		w.stop()
		bw.Write(appendRefusal(bw.AvailableBuffer(), a, closeAfter, time.Now()))
		return bw.Flush() == nil && !closeAfter
	}
	// The watch goes on while the body is passed on: a client that leaves
	// must not leave the upstream connection waiting.
	err := writeResponse(bw, fr.method, resp, closeAfter, rec)
	w.stop()
	p.metrics.carried(true, 0)
	p.metrics.carried(false, rec.down.Load())
	return err == nil && !closeAfter
}

// writeInformational passes on a 1xx response as net/http's server writes
// the one ReverseProxy relays: its fields as they came, but no framing.
func writeInformational(bw *bufio.Writer, code int, header http.Header) error {
	writeStatusLine(bw, code)
	header.WriteSubset(bw, excludedNoBody)
	bw.WriteString("\r\n")
	return bw.Flush()
}

var excludedNoBody = map[string]bool{"Content-Length": true, "Transfer-Encoding": true}

// writeStatusLine writes the status line net/http's server writes for
// code: with Go's reason phrase, not the upstream's.
func writeStatusLine(bw *bufio.Writer, code int) {
	bw.WriteString("HTTP/1.1 ")
	if text := http.StatusText(code); text != "" {
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(code), 10))
		bw.WriteByte(' ')
		bw.WriteString(text)
		bw.WriteString("\r\n")
		return
	}
	b := strconv.AppendInt(bw.AvailableBuffer(), int64(code), 10)
	b = append(b, " status code "...)
	b = strconv.AppendInt(b, int64(code), 10)
	bw.Write(append(b, "\r\n"...))
}

// writeResponse sends resp to the client of a method request as
// ReverseProxy and net/http's server would: without hop-by-hop fields,
// with Go's status text, a Date if the upstream sent none, the upstream's
// Content-Length if it sent one and chunked otherwise, trailers after a
// chunked body, and Connection: close if closeAfter. A body of unknown
// length, or server-sent events, is passed on as it comes. It counts the body in
// rec and closes resp's body. An error means the client connection must
// be closed (the response may be cut short, as net/http cuts it when
// ReverseProxy aborts).
func writeResponse(bw *bufio.Writer, method string, resp *http.Response, closeAfter bool, rec *connRecord) error {
	body := resp.Body
	defer body.Close()
	code := resp.StatusCode
	if code == http.StatusSwitchingProtocols {
		// We sent no Upgrade: ReverseProxy refuses the switch.
		var err error
		switch up := upgradeType(resp.Header); {
		case !isPrint(up):
			err = fmt.Errorf("backend tried to switch to invalid protocol %q", up)
		case up != "":
			err = fmt.Errorf("backend tried to switch protocol %q when %q was requested", up, "")
		default:
			err = errors.New("internal error: 101 switching protocols response with non-writable body")
		}
		re := forwardRefusal(err)
		rec.fail(re)
		bw.Write(appendRefusal(bw.AvailableBuffer(), answer{re.r.status(), re.r.String(), errorDetail(re)}, closeAfter, time.Now()))
		return bw.Flush()
	}
	hdr := resp.Header
	removeHopHeaders(hdr)
	noBody := method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified || code < 200
	chunked := false
	switch {
	case code == http.StatusNotModified:
		delete(hdr, "Content-Type")
		fallthrough
	case code == http.StatusNoContent || code < 200:
		delete(hdr, "Content-Length")
	case noBody: // HEAD: the upstream's Content-Length, if any, stands
	default:
		chunked = hdr.Get("Content-Length") == ""
	}
	// ReverseProxy flushes every write of a body of unknown length or of
	// server-sent events; others go out as net/http's buffer fills.
	streaming := chunked || isEventStream(hdr)
	if len(resp.Trailer) > 0 {
		keys := make([]string, 0, len(resp.Trailer))
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		hdr["Trailer"] = []string{strings.Join(keys, ", ")}
	}
	writeStatusLine(bw, code)
	hdr.Write(bw)
	if _, ok := hdr["Date"]; !ok {
		bw.WriteString("Date: ")
		bw.Write(time.Now().UTC().AppendFormat(bw.AvailableBuffer(), http.TimeFormat))
		bw.WriteString("\r\n")
	}
	if closeAfter {
		bw.WriteString("Connection: close\r\n")
	}
	if chunked {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	bw.WriteString("\r\n")
	if noBody {
		return bw.Flush()
	}
	ub, _ := body.(*upBody)
	if streaming && (ub == nil || ub.uc.br.Buffered() == 0) {
		// ReverseProxy sends a stream's head at once, not with its first
		// event; when the body is already here they go out together.
		if err := bw.Flush(); err != nil {
			return err
		}
	}
	cb := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(cb)
	buf := *cb
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if chunked {
				bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(n), 16))
				bw.WriteString("\r\n")
			}
			if _, err := bw.Write(buf[:n]); err != nil {
				return err
			}
			if chunked {
				bw.WriteString("\r\n")
			}
			rec.down.Add(int64(n))
			if streaming {
				if err := bw.Flush(); err != nil {
					return err
				}
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return rerr // what is buffered is not sent, as net/http's abort
		}
	}
	if chunked {
		bw.WriteString("0\r\n")
		resp.Trailer.Write(bw)
		bw.WriteString("\r\n")
	}
	return bw.Flush()
}

// isEventStream reports whether h is the head of server-sent events.
func isEventStream(h http.Header) bool {
	ct := h.Get("Content-Type")
	if !strings.HasPrefix(ct, "text/event-stream") && !strings.HasPrefix(strings.ToLower(ct), "text/event-stream") {
		return false
	}
	mt, _, _ := mime.ParseMediaType(ct)
	return mt == "text/event-stream"
}

// upgradeType is the protocol a response switches to, as ReverseProxy
// reads it.
func upgradeType(h http.Header) string {
	if !httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

func isPrint(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// removeHopHeaders deletes ReverseProxy's hop-by-hop headers from h.
func removeHopHeaders(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, f := range hopHeaders {
		delete(h, f)
	}
}
