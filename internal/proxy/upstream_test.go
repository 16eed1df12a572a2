package proxy

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// scriptedBackend is an HTTP/1.1 server of raw bytes: each request's path
// picks the bytes it answers with and whether it then closes. A HEAD gets
// the reply up to its first blank line, the head alone, as from any
// server, unless the script says otherwise. It counts the connections it
// accepted.
type scriptedBackend struct {
	addr  netip.AddrPort
	conns atomic.Int32
}

type script struct {
	reply    string
	close    bool // close the connection after the reply
	headBody bool // answer a HEAD with the body too, against RFC 9110
}

func newScriptedBackend(t *testing.T, scripts map[string]script) *scriptedBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	b := &scriptedBackend{addr: ln.Addr().(*net.TCPAddr).AddrPort()}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.conns.Add(1)
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					s, ok := scripts[req.URL.Path]
					if !ok {
						s = script{reply: "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"}
					}
					if strings.Contains(s.reply, "%s") {
						s.reply = fmt.Sprintf(s.reply, req.Method+" "+req.URL.Path)
					}
					if head, _, ok := strings.Cut(s.reply, "\r\n\r\n"); ok && req.Method == http.MethodHead && !s.headBody {
						s.reply = head + "\r\n\r\n"
					}
					if _, err := io.WriteString(c, s.reply); err != nil || s.close {
						return
					}
				}
			}()
		}
	}()
	return b
}

// TestConnPoolMatchesTransport sends the same requests through the proxy
// three ways: forwarded by the fast path, by net/http over the connection
// pool, and by net/http with http.Transport alone. What the client
// receives, the audit lines and the upstream connections opened must be
// the same, and the fast path must send the very bytes net/http sends.
func TestConnPoolMatchesTransport(t *testing.T) {
	big := strings.Repeat("x", maxResponseHeaderBytes)
	scripts := map[string]script{
		"/ok":           {reply: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok"},
		"/echo":         {reply: "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"},
		"/chunked":      {reply: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: v\r\n\r\n"},
		"/until-close":  {reply: "HTTP/1.1 200 OK\r\n\r\nbody until close", close: true},
		"/no-content":   {reply: "HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n"},
		"/not-modified": {reply: "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"},
		"/early-hints":  {reply: "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
		"/continue":     {reply: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
		"/many-1xx":     {reply: strings.Repeat("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", 6) + "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
		"/close":        {reply: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"},
		"/close-after":  {reply: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", close: true},
		"/http10":       {reply: "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"},
		"/http10-ka":    {reply: "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"},
		"/big-header":   {reply: "HTTP/1.1 200 OK\r\nX-Big: " + big + "\r\nContent-Length: 2\r\n\r\nok"},
		"/garbage":      {reply: "garbage\r\n\r\n", close: true},
		"/hang-up":      {reply: "", close: true},
		"/half-head":    {reply: "HTTP/1.1 200 OK\r\nContent-Le", close: true},
		"/short-body":   {reply: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", close: true},
		"/bad-chunk":    {reply: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", close: true},
		"/switch":       {reply: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n"},
		"/switch-bare":  {reply: "HTTP/1.1 101 Switching Protocols\r\n\r\nraw bytes"},
		"/streaming":    {reply: "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nevent\r\n0\r\n\r\n"},
		"/head-body":    {reply: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", headBody: true},
	}
	type run struct {
		name   string
		reqs   []string // paths, sent in turn on one client connection
		method string
		extra  string // header lines for the requests
		conns  bool   // compare the upstream connections opened
		racy   bool   // what net/http sends varies: compare the audit only
		// http.Transport alone races: leave it out. (Whether it reuses
		// a connection the server spoke on while idle depends on
		// whether its reader saw the bytes before the next request
		// took the connection.)
		noTransport bool
		wantConns   int32 // if not 0, the upstream connections each way opens
	}
	runs := []run{
		{name: "reuse", reqs: []string{"/ok", "/ok", "/chunked", "/ok"}, conns: true},
		{name: "HEAD", reqs: []string{"/ok", "/ok"}, method: "HEAD", conns: true},
		// The bytes after the head are not the next response: the
		// connection is not reused.
		{name: "HEAD answered with a body", reqs: []string{"/head-body", "/head-body"}, method: "HEAD", conns: true, noTransport: true, wantConns: 2},
		{name: "OPTIONS", reqs: []string{"/ok"}, method: "OPTIONS", conns: true},
		{name: "POST goes to the transport", reqs: []string{"/ok", "/ok"}, method: "POST", extra: "Content-Length: 3\r\n", conns: true},
		{name: "DELETE without body", reqs: []string{"/ok"}, method: "DELETE", conns: true},
		{name: "client asks to close", reqs: []string{"/ok"}, extra: "Connection: close\r\n", conns: true},
		{name: "Expect", reqs: []string{"/ok"}, extra: "Expect: 100-continue\r\n", conns: true},
		{name: "until close", reqs: []string{"/until-close", "/ok"}, conns: true},
		{name: "no content", reqs: []string{"/no-content", "/not-modified", "/ok"}, conns: true},
		{name: "1xx", reqs: []string{"/early-hints", "/continue", "/ok"}, conns: true},
		{name: "too many 1xx", reqs: []string{"/many-1xx"}},
		{name: "close", reqs: []string{"/close", "/ok"}, conns: true},
		{name: "close after", reqs: []string{"/close-after", "/ok"}, conns: true},
		{name: "HTTP/1.0", reqs: []string{"/http10", "/http10-ka", "/ok"}, conns: true},
		{name: "big header", reqs: []string{"/big-header"}},
		{name: "garbage", reqs: []string{"/garbage"}},
		{name: "hang-up", reqs: []string{"/hang-up"}},
		{name: "half head", reqs: []string{"/half-head"}},
		{name: "short body", reqs: []string{"/short-body"}},
		// net/http sends the head or not, as ReverseProxy's first flush
		// (a timer) and the failing read race.
		{name: "bad chunk", reqs: []string{"/bad-chunk"}, racy: true},
		{name: "switch", reqs: []string{"/switch"}},
		{name: "switch without Upgrade", reqs: []string{"/switch-bare"}},
		{name: "streaming", reqs: []string{"/streaming"}},
		{name: "trace", reqs: []string{"/ok"}, method: "TRACE"},
	}
	for _, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			var replies, raws, audits [3]string
			var opened [3]int32
			modes := []struct{ fast, pool bool }{{true, true}, {false, true}, {false, false}}
			if r.noTransport {
				modes = modes[:2]
			}
			for i, v := range modes {
				b := newScriptedBackend(t, scripts)
				pol := fmt.Sprintf("proxy: {deny_private: false}\nrules:\n  - name: web\n    to: [web.test]\n    ports: [%d]\n", b.addr.Port())
				var forwarded atomic.Int32
				ps := paths{slow: !v.fast, noPool: !v.pool, onForward: func(net.Conn) { forwarded.Add(1) }}
				h := startExplicit(t, pol, mapResolver{"web.test": addrs("127.0.0.1")}, ps)
				c := dialFrom(t, h.addr, "")
				c.SetDeadline(time.Now().Add(20 * time.Second))
				var raw strings.Builder
				br := bufio.NewReader(io.TeeReader(c, &raw))
				var got strings.Builder
				method := r.method
				if method == "" {
					method = "GET"
				}
				for _, path := range r.reqs {
					body := ""
					if strings.Contains(r.extra, "Content-Length: 3") {
						body = "abc"
					}
					fmt.Fprintf(c, "%s http://web.test:%d%s HTTP/1.1\r\nHost: web.test:%d\r\n%s\r\n%s", method, b.addr.Port(), path, b.addr.Port(), r.extra, body)
					resp, err := http.ReadResponse(br, &http.Request{Method: method})
					if err != nil {
						fmt.Fprintf(&got, "<%v>", err)
						break
					}
					resp.Header.Del("Date")
					data, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					fmt.Fprintf(&got, "%s %v %q %q %v|", resp.Status, resp.Header, data, resp.Trailer, err)
					for resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != 101 {
						resp, err = http.ReadResponse(br, &http.Request{Method: method})
						if err != nil {
							fmt.Fprintf(&got, "<%v>", err)
							break
						}
						resp.Header.Del("Date")
						data, err := io.ReadAll(resp.Body)
						resp.Body.Close()
						fmt.Fprintf(&got, "%s %v %q %v|", resp.Status, resp.Header, data, err)
					}
					if resp.Close {
						break
					}
				}
				c.Close()
				if fast := v.fast && v.pool && (method == "GET" || method == "HEAD") && !strings.Contains(r.extra, "Expect"); (forwarded.Load() > 0) != fast {
					t.Errorf("fast path forwarded %d requests; want some: %v", forwarded.Load(), fast)
				}
				replies[i] = got.String()
				raws[i] = dateRE.ReplaceAllString(raw.String(), "Date: DATE\r\n")
				time.Sleep(50 * time.Millisecond)
				opened[i] = b.conns.Load()
				lines := auditFor(t, h, c.LocalAddr().String())
				for _, l := range lines {
					delete(l, "dialled") // the backends' ports differ
					delete(l, "port")
				}
				a, _ := json.Marshal(lines)
				audits[i] = string(a)
			}
			names := [3]string{"the fast path", "net/http with the pool", "net/http with the transport alone"}
			if r.racy {
				replies = [3]string{}
				raws = [3]string{}
			}
			if raws[0] != raws[1] {
				t.Errorf("%s sends\n%q\n%s sends\n%q", names[0], raws[0], names[1], raws[1])
			}
			for i := 1; i < len(modes); i++ {
				if replies[0] != replies[i] {
					t.Errorf("with %s the client gets\n%s\nwith %s\n%s", names[0], replies[0], names[i], replies[i])
				}
				if audits[0] != audits[i] {
					t.Errorf("audit with %s\n%s\nwith %s\n%s", names[0], audits[0], names[i], audits[i])
				}
				if r.conns && opened[0] != opened[i] {
					t.Errorf("upstream connections: %d with %s, %d with %s", opened[0], names[0], opened[i], names[i])
				}
			}
			if r.wantConns != 0 && opened[0] != r.wantConns {
				t.Errorf("upstream connections: %d, want %d", opened[0], r.wantConns)
			}
			if testing.Verbose() {
				t.Logf("%s\n%s\nconnections %d", replies[0], audits[0], opened[0])
			}
		})
	}
}

func TestConnPoolRetriesClosedIdle(t *testing.T) {
	// The backend closes every connection after a moment idle: a request
	// on a pooled connection the server has closed is sent again on a
	// fresh one, without the client noticing.
	var mu sync.Mutex
	var conns []net.Conn
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() {
				br := bufio.NewReader(c)
				for {
					if _, err := http.ReadRequest(br); err != nil {
						return
					}
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				}
			}()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	h := startProxy(t, webPolicy(fmt.Sprint(port)), mapResolver{"web.test": addrs("127.0.0.1")})
	client := proxyClient(h.addr, nil)
	get := func() {
		t.Helper()
		resp, err := client.Get(fmt.Sprintf("http://web.test:%d/", port))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "ok" {
			t.Fatalf("GET: %d %q", resp.StatusCode, b)
		}
	}
	get()
	mu.Lock()
	for _, c := range conns { // the server drops its idle connections
		c.Close()
	}
	mu.Unlock()
	time.Sleep(50 * time.Millisecond)
	get()
	mu.Lock()
	defer mu.Unlock()
	if len(conns) != 2 {
		t.Errorf("upstream connections: got %d, want 2 (the second after the first was closed)", len(conns))
	}
}

func TestConnPoolClientGoneMidBody(t *testing.T) {
	// A client that leaves while the response streams: the upstream
	// connection is closed, not kept with half a body unread.
	closed := make(chan struct{})
	port := oneShotBackend(t, func(c net.Conn, br *bufio.Reader) {
		// More than the proxy buffers, so that the client sees it.
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nfirst"+strings.Repeat("x", 100<<10))
		io.Copy(io.Discard, br) // until the proxy closes
		close(closed)
	})
	h := startProxy(t, webPolicy(fmt.Sprint(port)), mapResolver{"web.test": addrs("127.0.0.1")})
	c := dialFrom(t, h.addr, "")
	fmt.Fprintf(c, "GET http://web.test:%d/ HTTP/1.1\r\nHost: web.test:%d\r\n\r\n", port, port)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, b); err != nil || string(b) != "first" {
		t.Fatalf("first bytes: %q, %v", b, err)
	}
	c.Close()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream connection stayed open after the client left")
	}
}

func TestConnPoolReap(t *testing.T) {
	cp := newConnPool()
	tc, tb := tcpPair(t)
	key := netip.MustParseAddrPort("127.0.0.1:1")
	uc := newUpConn(cp, key, tc, time.Minute)
	cp.put(uc)
	if got := cp.get(key); got != uc {
		t.Fatalf("get after put: got %p, want %p", got, uc)
	}
	cp.put(uc)
	uc.since = time.Now().Add(-upstreamIdleTimeout - time.Second)
	cp.reap()
	if cp.n != 0 || len(cp.idle) != 0 {
		t.Fatalf("after reaping a connection idle too long: %d idle", cp.n)
	}
	tb.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := tb.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("reaped connection: peer read %v, want EOF", err)
	}
	cp.closeIdle()
	tc2, _ := tcpPair(t)
	cp.put(newUpConn(cp, key, tc2, time.Minute))
	if cp.n != 0 {
		t.Errorf("a closed pool kept a connection")
	}
}

func TestConnPoolClientGoneBeforeResponse(t *testing.T) {
	// A client that leaves while the upstream has not answered yet: the
	// request is cancelled and the upstream connection closed at once.
	closed := make(chan struct{})
	got := make(chan struct{})
	port := oneShotBackend(t, func(c net.Conn, br *bufio.Reader) {
		close(got)
		io.Copy(io.Discard, br) // no answer; until the proxy closes
		close(closed)
	})
	h := startProxy(t, webPolicy(fmt.Sprint(port)), mapResolver{"web.test": addrs("127.0.0.1")})
	c := dialFrom(t, h.addr, "")
	fmt.Fprintf(c, "GET http://web.test:%d/ HTTP/1.1\r\nHost: web.test:%d\r\n\r\n", port, port)
	<-got
	c.Close()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream connection stayed open after the client left")
	}
	line := h.auditLine(t, `"name":"web.test"`)
	if line["error"] != "context canceled" {
		t.Errorf("audit error: got %v, want context canceled", line["error"])
	}
}

// oneShotBackend accepts one connection on loopback, reads one request
// head from it and hands the connection to serve, then closes it. It
// returns the port.
func oneShotBackend(t *testing.T, serve func(c net.Conn, br *bufio.Reader)) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		serve(c, br)
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestForwardStreamHeadAtOnce: the head of a response of unknown length
// reaches the client before its first bytes of body do, on both paths, so
// a client of server-sent events knows the stream is open while it waits
// for the first event.
func TestForwardStreamHeadAtOnce(t *testing.T) {
	for _, ps := range []paths{{}, {slow: true}} {
		t.Run(fmt.Sprintf("slow=%v", ps.slow), func(t *testing.T) {
			release := make(chan struct{})
			port := oneShotBackend(t, func(c net.Conn, _ *bufio.Reader) {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
				<-release
				io.WriteString(c, "b\r\ndata: 1\r\n\r\n\r\n0\r\n\r\n")
			})
			defer close(release)
			var forwarded atomic.Int32
			ps.onForward = func(net.Conn) { forwarded.Add(1) }
			h := startExplicit(t, webPolicy(fmt.Sprint(port)), mapResolver{"web.test": addrs("127.0.0.1")}, ps)
			c := dialFrom(t, h.addr, "")
			fmt.Fprintf(c, "GET http://web.test:%d/events HTTP/1.1\r\nHost: web.test:%d\r\n\r\n", port, port)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no head while the first event is held back: %v", err)
			}
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
				t.Fatalf("head: %d %v", resp.StatusCode, resp.Header)
			}
			release <- struct{}{}
			body, err := io.ReadAll(resp.Body)
			if err != nil || string(body) != "data: 1\r\n\r\n" {
				t.Fatalf("body %q, %v", body, err)
			}
			if got, want := forwarded.Load() == 1, !ps.slow; got != want {
				t.Errorf("forwarded by the fast path: %v, want %v", got, want)
			}
		})
	}
}

// TestForwardSeveralAddresses: a name with several addresses reuses a kept
// connection to any of them (the first is dialled with Happy Eyeballs over
// all), on both paths alike.
func TestForwardSeveralAddresses(t *testing.T) {
	var replies, audits [2]string
	for i, ps := range []paths{{}, {slow: true}} {
		b := newScriptedBackend(t, map[string]script{
			"/ok": {reply: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
		})
		pol := fmt.Sprintf("proxy: {deny_private: false}\nrules:\n  - name: web\n    to: [web.test]\n    ports: [%d]\n", b.addr.Port())
		var forwarded atomic.Int32
		ps.onForward = func(net.Conn) { forwarded.Add(1) }
		// 127.0.0.2 refuses: Happy Eyeballs reaches the backend first or
		// after it.
		h := startExplicit(t, pol, mapResolver{"web.test": addrs("127.0.0.1", "127.0.0.2")}, ps)
		c := dialFrom(t, h.addr, "")
		c.SetDeadline(time.Now().Add(20 * time.Second))
		br := bufio.NewReader(c)
		var got strings.Builder
		for range 3 {
			fmt.Fprintf(c, "GET http://web.test:%d/ok HTTP/1.1\r\nHost: web.test\r\n\r\n", b.addr.Port())
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			data, err := io.ReadAll(resp.Body)
			fmt.Fprintf(&got, "%s %q %v|", resp.Status, data, err)
		}
		c.Close()
		replies[i] = got.String()
		if n := b.conns.Load(); n != 1 {
			t.Errorf("slow=%v: %d upstream connections for 3 requests, want 1", ps.slow, n)
		}
		if got, want := forwarded.Load(), map[bool]int32{false: 3, true: 0}[ps.slow]; got != want {
			t.Errorf("slow=%v: the fast path forwarded %d requests, want %d", ps.slow, got, want)
		}
		lines := auditFor(t, h, c.LocalAddr().String())
		for _, l := range lines {
			delete(l, "port")
			if d, _ := l["dialled"].(string); !strings.HasPrefix(d, "127.0.0.1:") {
				t.Errorf("slow=%v: dialled %q", ps.slow, d)
			}
			delete(l, "dialled")
		}
		a, _ := json.Marshal(lines)
		audits[i] = string(a)
	}
	if replies[0] != replies[1] || audits[0] != audits[1] {
		t.Errorf("the fast path: %s\n%s\nnet/http: %s\n%s", replies[0], audits[0], replies[1], audits[1])
	}
}

// TestForwardClientStopsReading: a client that stops reading a response
// is cut off after the idle timeout, on both paths, and the upstream
// connection is closed with it rather than held for ever.
func TestForwardClientStopsReading(t *testing.T) {
	for _, ps := range []paths{{}, {slow: true}} {
		t.Run(fmt.Sprintf("slow=%v", ps.slow), func(t *testing.T) {
			const size = 64 << 20 // far more than the sockets buffer
			upErr := make(chan error, 1)
			port := oneShotBackend(t, func(c net.Conn, _ *bufio.Reader) {
				c.SetWriteDeadline(time.Now().Add(30 * time.Second))
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", size)
				_, err := io.Copy(c, io.LimitReader(zeros{}, size))
				upErr <- err
			})
			pol := fmt.Sprintf("proxy: {deny_private: false, idle_timeout: 300ms}\nrules:\n  - name: web\n    to: [web.test]\n    ports: [%d]\n", port)
			h := startExplicit(t, pol, mapResolver{"web.test": addrs("127.0.0.1")}, ps)
			c := dialFrom(t, h.addr, "")
			defer c.Close()
			fmt.Fprintf(c, "GET http://web.test:%d/big HTTP/1.1\r\nHost: web.test\r\n\r\n", port)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil {
				t.Fatal(err)
			}
			// Read nothing more.
			select {
			case err := <-upErr:
				if err == nil {
					t.Fatal("the upstream wrote the whole body to a client that does not read")
				}
				if isTimeout(err) {
					t.Fatalf("the proxy held the upstream connection until the backend gave up: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("the upstream connection is still held")
			}
			line := h.auditLine(t, `"name":"web.test"`)
			if n, _ := line["bytes_down"].(float64); n <= 0 || n >= size {
				t.Errorf("bytes_down %v, want part of the body", line["bytes_down"])
			}
		})
	}
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}
