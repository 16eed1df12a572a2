package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
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
	srv := newOracle(f)
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
		got, err := srv.serve(head)
		if err != nil {
			t.Fatalf("the fast path takes %q, net/http: %v", head, err)
		}
		want := fmt.Sprintf("CONNECT %s auth=%q close=%v", req.authority, req.authorization, req.close)
		if got != want {
			t.Fatalf("head %q: the fast path reads %s, net/http's handler gets %s", head, want, got)
		}
	})
}

// oracle is an http.Server whose handler reports what it was given.
type oracle struct {
	conns chan net.Conn
	got   chan string
}

func newOracle(tb testing.TB) *oracle {
	o := &oracle{conns: make(chan net.Conn), got: make(chan string, 1)}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// As net/http's response would: Connection: close on the request
		// (or HTTP/1.0 without keep-alive) closes after the answer.
		closing := r.Close || hasToken(r.Header.Get("Connection"), "close")
		o.got <- fmt.Sprintf("%s %s auth=%q close=%v", r.Method, r.Host, r.Header.Get("Proxy-Authorization"), closing)
	})}
	ln := &chanListener{conns: o.conns, done: make(chan struct{})}
	go srv.Serve(ln)
	tb.Cleanup(func() { srv.Close() })
	return o
}

// serve sends head to the server and returns what its handler was given,
// or an error with the server's answer if the handler was not called.
func (o *oracle) serve(head string) (string, error) {
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
		return "", fmt.Errorf("handler not called; answer %q", r)
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
