package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Transparent plain HTTP carries one request per connection. Only the
// first request head is peeked and decided, so splicing the rest of a
// keep-alive connection would let a second request name any Host at the
// same address (a CDN serves thousands). Instead the first request is
// parsed with net/http, written upstream in canonical form with
// "Connection: close" and without hop-by-hop headers or Upgrade, and no
// further client byte is forwarded; when the response ends, both
// connections close, and the client's next request comes on a new
// connection that is decided afresh. This is simpler than parsing and
// re-deciding every request of a connection, and as cheap: plain HTTP
// through a transparent gateway is rare, and a new TCP connection on a
// LAN costs little. WebSockets need TLS (wss://), which is spliced.

// lingerTime bounds how long a client's unread bytes are drained after the
// response, so closing does not reset the response away.
const lingerTime = time.Second

// readRequest parses the request head already peeked into raw (and
// checked by the strict peek parser); its body, if any, is read on from
// rest. The head is entirely in raw, so this never waits for the client.
func readRequest(raw []byte, rest io.Reader) (*http.Request, error) {
	req, err := http.ReadRequest(bufio.NewReader(io.MultiReader(bytes.NewReader(raw), rest)))
	if err != nil {
		return nil, fmt.Errorf("parsing the HTTP request head: %w", err)
	}
	if req.Method == http.MethodConnect {
		return nil, errors.New("CONNECT on a transparent connection")
	}
	removeHopByHop(req.Header)
	// Upgrades would turn the rest of the connection into bytes we
	// forward unchecked; as on the explicit proxy, they are not carried.
	req.Header.Del("Upgrade")
	req.Close = true // "Connection: close": one request per connection
	if _, ok := req.Header["User-Agent"]; !ok {
		req.Header["User-Agent"] = []string{""} // Write must not add Go's own
	}
	return req, nil
}

// removeHopByHop deletes the headers meant for the next hop only, which
// is fqdngate, not the server: Connection and the headers it names.
func removeHopByHop(h http.Header) {
	for _, v := range h.Values("Connection") {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range []string{"Connection", "Proxy-Connection", "Keep-Alive"} {
		h.Del(name)
	}
}

// clientReader reads the rest of a transparent HTTP client's request,
// extending the read deadline by the idle timeout before each read, until
// stop fixes a last deadline.
type clientReader struct {
	c    *net.TCPConn
	idle time.Duration
	last *atomic.Int64 // unix nanoseconds of the last byte either way

	mu      sync.Mutex // guards following
	stopped bool
}

func (r *clientReader) Read(b []byte) (int, error) {
	r.mu.Lock()
	if !r.stopped {
		r.c.SetReadDeadline(time.Now().Add(r.idle))
	}
	r.mu.Unlock()
	n, err := r.c.Read(b)
	if n > 0 {
		r.last.Store(time.Now().UnixNano())
	}
	return n, err
}

// stop ends the idle extensions: reads fail once deadline passes.
func (r *clientReader) stop(deadline time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = true
	r.c.SetReadDeadline(deadline)
}

// upstreamWriter writes the request to the upstream under the idle
// timeout and counts what it carried.
type upstreamWriter struct {
	p    *Proxy
	c    *net.TCPConn
	idle time.Duration
	last *atomic.Int64
	n    *atomic.Int64
}

func (w *upstreamWriter) Write(b []byte) (int, error) {
	w.c.SetWriteDeadline(time.Now().Add(w.idle))
	n, err := w.c.Write(b)
	if n > 0 {
		w.last.Store(time.Now().UnixNano())
		w.n.Add(int64(n))
		w.p.metrics.bytesUp.Add(float64(n))
	}
	return n, err
}

// forwardHTTP writes req to up and carries the response back to client,
// then closes both. Nothing moving either way for idle, or ctx done, cuts
// both connections.
func (p *Proxy) forwardHTTP(ctx context.Context, client *net.TCPConn, cr *clientReader, req *http.Request, up *net.TCPConn, idle time.Duration, rec *connRecord) {
	p.metrics.active.Inc()
	defer p.metrics.active.Dec()
	t := &tunnelState{idle: idle, client: client, upstream: up}
	abort := t.closeBoth
	stop := context.AfterFunc(ctx, abort)
	defer stop()
	defer abort()
	t.touch()
	t.timer = time.AfterFunc(idle, t.check)
	defer t.timer.Stop()
	last := &t.last
	cr.idle, cr.last = idle, last

	var finishing atomic.Bool // the response is complete; errors are ours
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		// A *bufio.Writer lets Write flush the head before the body, so a
		// client waiting for "100 Continue" gets it.
		bw := bufio.NewWriter(&upstreamWriter{p: p, c: up, idle: idle, last: last, n: &rec.up})
		err := req.Write(bw)
		if err == nil {
			err = bw.Flush() // Write leaves a caller's bufio.Writer to it
		}
		if err != nil && !finishing.Load() {
			abort()
		}
		// Not CloseWrite: servers take a half-close for a client that
		// left, and may drop the response.
	}()
	if p.pipe(client, up, t, &rec.down, false) {
		// The response is complete and the client has its FIN. The
		// server may have answered before the body was all sent: let the
		// writer stop, and read what the client still sends for a
		// moment, so closing with unread bytes does not reset the
		// response away.
		finishing.Store(true)
		cr.stop(time.Now().Add(lingerTime))
		up.Close()
		<-sent
		io.Copy(io.Discard, io.LimitReader(cr, 64<<10))
	}
	abort()
	<-sent
}
