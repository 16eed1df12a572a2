package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/peek"
)

// Run with: go test ./internal/proxy -run '^$' -fuzz FuzzParseConnect -fuzztime 60s -fuzzminimizetime 5s

// FuzzParseConnect checks the fast path's choice of heads against an
// http.Server: a head parseConnect takes must reach the server's handler
// as a CONNECT whose Host, Proxy-Authorization and wish to close are the
// ones the fast path read, so that answering it without net/http changes
// nothing.
func FuzzParseConnect(f *testing.F) {
	for _, s := range []string{
		"CONNECT a.example:443 HTTP/1.1\r\n\r\n",
		"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\nProxy-Authorization: Basic YTpi\r\n\r\n",
		"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nUser-Agent: x\r\nProxy-Connection: keep-alive\r\nConnection: keep-alive\r\n\r\n",
		"CONNECT a_b.example.:0443 HTTP/1.1\r\nConnection: x, close\r\nHost:\r\n\r\n",
		"CONNECT 127.1:80 HTTP/1.1\r\nhost: [::1]:80\r\n\r\n",
		"CONNECT ::1:443 HTTP/1.1\r\n\r\n",
		"CONNECT a.example:443 HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
	} {
		f.Add(s)
	}
	o := newOracle(f, func(_ http.ResponseWriter, r *http.Request) [2]string { return [2]string{describeRequest(r)} })
	f.Fuzz(func(t *testing.T, in string) {
		n := strings.Index(in, "\r\n\r\n")
		if n < 0 {
			return
		}
		head := in[:n+4]
		req, ok := parseConnect([]byte(head))
		if !ok {
			return
		}
		got, err := o.serve(head)
		if err != nil {
			t.Fatalf("the fast path takes %q, net/http: %v", head, err)
		}
		want := fmt.Sprintf("CONNECT %s auth=%q close=%v", req.authority, req.authorization, req.close)
		if got[0] != want {
			t.Fatalf("head %q: the fast path reads %s, net/http's handler gets %s", head, want, got)
		}
	})
}

// oracle is an http.Server whose handler reports what handle makes of
// each request it is given.
type oracle struct {
	conns chan net.Conn
	got   chan [2]string
}

func newOracle(tb testing.TB, handle func(http.ResponseWriter, *http.Request) [2]string) *oracle {
	o := &oracle{conns: make(chan net.Conn), got: make(chan [2]string, 1)}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.got <- handle(w, r)
	})}
	ln := &chanListener{conns: o.conns, done: make(chan struct{})}
	go srv.Serve(ln)
	tb.Cleanup(func() { srv.Close() })
	return o
}

// describeRequest is what an oracle reports of a request: its method, host,
// credentials and wish to close (as net/http's response would: Connection:
// close on the request, or HTTP/1.0 without keep-alive, closes after the
// answer).
func describeRequest(r *http.Request) string {
	closing := r.Close || hasToken(r.Header.Get("Connection"), "close")
	return fmt.Sprintf("%s %s auth=%q close=%v", r.Method, r.Host, r.Header.Get("Proxy-Authorization"), closing)
}

// serve sends head to the server and returns what its handler reported,
// or an error with the server's answer if the handler was not called.
func (o *oracle) serve(head string) ([2]string, error) {
	client, server := net.Pipe()
	defer client.Close()
	o.conns <- server
	go func() {
		client.SetWriteDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(client, head)
	}()
	reply := make(chan string, 1)
	go func() {
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(client)
		reply <- string(b)
	}()
	select {
	case g := <-o.got:
		return g, nil
	case r := <-reply:
		select {
		case g := <-o.got:
			return g, nil
		default:
		}
		return [2]string{}, fmt.Errorf("handler not called; answer %q", r)
	}
}

type chanListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{} }

// Run with: go test ./internal/proxy -run '^$' -fuzz FuzzParseForward -fuzztime 60s -fuzzminimizetime 5s

// FuzzParseForward checks the fast path's forwarding against net/http and
// ReverseProxy: a head parseForward takes must reach an http.Server's
// handler as a request for the same host, with the same credentials and
// wish to close, and the head the fast path sends upstream must read back
// as the request ReverseProxy sends.
func FuzzParseForward(f *testing.F) {
	for _, s := range []string{
		"GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
		"GET http://a.example:8080/p/a%2Fb;x?q=1&r=%41 HTTP/1.1\r\nHost: a.example:8080\r\nUser-Agent: curl/8\r\nAccept: */*\r\nProxy-Connection: Keep-Alive\r\n\r\n",
		"HEAD http://[2001:db8::1]:80 HTTP/1.1\r\nhost: x\r\nConnection: close, X-A\r\nX-A: 1\r\nx-a: 2\r\nX-B: \r\n\r\n",
		"GET http://a.example/?x HTTP/1.1\r\nHost:\r\nProxy-Authorization: Basic YTpi\r\nX-Forwarded-For: 1.2.3.4\r\nForwarded: for=x\r\nKeep-Alive: 5\r\n\r\n",
		"GET http://a.example/ HTTP/1.1\r\nHost: a\r\nUser-Agent:\r\nUser-Agent: b\r\nTrailer: X\r\n\r\n",
		"GET http://A.Example./%7e HTTP/1.1\r\nHost: a\r\nCookie: a=b; c=d\r\nCookie: e=f\r\n\r\n",
	} {
		f.Add(s)
	}
	o := forwardOracle(f)
	f.Fuzz(func(t *testing.T, in string) {
		n := strings.Index(in, "\r\n\r\n")
		if n < 0 {
			return
		}
		head := in[:n+4]
		var fields [16]peek.Field
		req, ok := parseForward(head, fields[:0], false)
		if !ok {
			return
		}
		if _, ok := parseForward(head, fields[:0], true); !ok {
			t.Fatalf("head %q is taken whole but not as a partial head", head)
		}
		got, err := o.serve(head)
		if err != nil {
			t.Fatalf("the fast path takes %q, net/http: %v", head, err)
		}
		up := got[1]
		want := fmt.Sprintf("http %s %s %s auth=%q close=%v", req.authority, req.method, req.authority, req.authorization, req.close)
		if got[0] != want {
			t.Fatalf("head %q: the fast path reads %s, net/http's handler gets %s", head, want, got)
		}
		fast := string(appendUpstreamHead(nil, &req, false))
		if a, b := readHead(t, fast), readHead(t, up); a != b {
			t.Fatalf("head %q: the fast path sends\n%q (%s)\nReverseProxy sends\n%q (%s)", head, fast, a, up, b)
		}
	})
}

// readHead reads a request head as a server would and prints what it
// means.
func readHead(t *testing.T, head string) string {
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(head)))
	if err != nil {
		t.Fatalf("reading %q: %v", head, err)
	}
	return fmt.Sprintf("%s %s host=%q close=%v header=%q", r.Method, r.RequestURI, r.Host, r.Close, r.Header)
}

// forwardOracle is an oracle whose handler also runs ReverseProxy as
// forward does and reports the request it sends upstream.
func forwardOracle(tb testing.TB) *oracle {
	return newOracle(tb, func(w http.ResponseWriter, r *http.Request) [2]string {
		var up bytes.Buffer
		rp := &httputil.ReverseProxy{
			Rewrite: func(*httputil.ProxyRequest) {},
			Transport: roundTripFunc(func(out *http.Request) (*http.Response, error) {
				out.Write(&up)
				return &http.Response{StatusCode: 204, Body: http.NoBody, Header: http.Header{}, Request: out}, nil
			}),
		}
		// requestTarget reads the URL's host.
		got := r.URL.Scheme + " " + r.URL.Host + " " + describeRequest(r)
		out := r.Clone(r.Context())
		out.Header.Del("Upgrade") // as forward does
		rp.ServeHTTP(w, out)
		return [2]string{got, up.String()}
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
