package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-ch
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// tunnelFixture runs p.tunnel between two loopback pairs and returns the
// outer ends: what the client and the server hold.
type tunnelFixture struct {
	client, server *net.TCPConn
	up, down       atomic.Int64
	done           chan struct{}
	ended          endCause // once done is closed
	cancel         context.CancelFunc
}

func startTunnel(t *testing.T, idle time.Duration) *tunnelFixture {
	t.Helper()
	p, err := New(Config{Policy: func() *policy.Policy { return nil }, Resolver: mapResolver{}})
	if err != nil {
		t.Fatal(err)
	}
	client, proxySide := tcpPair(t)
	proxyUp, server := tcpPair(t)
	f := &tunnelFixture{client: client, server: server, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	f.cancel = cancel
	go func() {
		defer close(f.done)
		f.ended = p.tunnel(ctx, proxySide, proxyUp, idle, &f.up, &f.down)
	}()
	return f
}

// TestTunnelEnds: how a tunnel ended, for its closing audit line.
func TestTunnelEnds(t *testing.T) {
	reset := func(c *net.TCPConn) {
		c.SetLinger(0) // close with a reset
		c.Close()
	}
	for _, tc := range []struct {
		name string
		idle time.Duration
		end  func(f *tunnelFixture)
		want endCause
	}{
		{"both sides finish", time.Minute, func(f *tunnelFixture) {
			f.client.CloseWrite()
			f.server.CloseWrite()
		}, endEOF},
		{"idle", 200 * time.Millisecond, func(*tunnelFixture) {}, endIdle},
		{"shutdown", time.Minute, func(f *tunnelFixture) { f.cancel() }, endShutdown},
		{"client resets", time.Minute, func(f *tunnelFixture) { reset(f.client) }, endClient},
		{"server resets", time.Minute, func(f *tunnelFixture) { reset(f.server) }, endUpstream},
	} {
		f := startTunnel(t, tc.idle)
		f.client.Write([]byte("hello"))
		b := make([]byte, 5)
		if _, err := io.ReadFull(f.server, b); err != nil {
			t.Fatal(err)
		}
		tc.end(f)
		select {
		case <-f.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the tunnel did not end", tc.name)
		}
		if f.ended != tc.want {
			t.Errorf("%s: ended %v, want %v", tc.name, f.ended, tc.want)
		}
	}
}

func TestTunnelBulkThenSmall(t *testing.T) {
	f := startTunnel(t, time.Minute)
	big := make([]byte, 3<<20+123) // several splice runs and a short tail
	rand.Read(big)
	go f.client.Write(big)
	got := make([]byte, len(big))
	if _, err := io.ReadFull(f.server, got); err != nil {
		t.Fatalf("reading the bulk transfer: %v", err)
	}
	if !bytes.Equal(got, big) {
		t.Fatal("bulk transfer: bytes differ from what was sent")
	}
	// After a pause the direction is back to user-space copies; both must
	// still carry small messages, in order.
	time.Sleep(bulkPause + 200*time.Millisecond)
	for i := range 3 {
		if _, err := f.client.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 4)
		if _, err := io.ReadFull(f.server, b); err != nil || string(b) != "ping" {
			t.Fatalf("small message %d up: got %q, %v; want ping", i, b, err)
		}
		f.server.Write([]byte("pong"))
		if _, err := io.ReadFull(f.client, b); err != nil || string(b) != "pong" {
			t.Fatalf("small message %d down: got %q, %v; want pong", i, b, err)
		}
	}
	// Half-close both ways, then the tunnel ends.
	f.client.CloseWrite()
	if rest, err := io.ReadAll(f.server); err != nil || len(rest) != 0 {
		t.Fatalf("after the client's half-close: server read %q, %v; want EOF", rest, err)
	}
	f.server.Write([]byte("bye"))
	f.server.CloseWrite()
	if rest, err := io.ReadAll(f.client); err != nil || string(rest) != "bye" {
		t.Fatalf("after the server's half-close: client read %q, %v; want bye", rest, err)
	}
	select {
	case <-f.done:
	case <-time.After(5 * time.Second):
		t.Fatal("tunnel still running after both directions ended")
	}
	if up, want := f.up.Load(), int64(len(big)+3*4); up != want {
		t.Errorf("bytes up: got %d, want %d", up, want)
	}
	if down, want := f.down.Load(), int64(3*4+3); down != want {
		t.Errorf("bytes down: got %d, want %d", down, want)
	}
}

func TestTunnelIdleAfterBulk(t *testing.T) {
	f := startTunnel(t, 300*time.Millisecond)
	go f.client.Write(make([]byte, 1<<20))
	if _, err := io.ReadFull(f.server, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.done:
	case <-time.After(5 * time.Second):
		t.Fatal("tunnel idle after a bulk transfer: still open, want it closed after 300ms")
	}
}

func TestTunnelTrickleIsNotIdle(t *testing.T) {
	// One byte every 100ms, for several idle periods: never idle. (The
	// idle period leaves room for a loaded machine's scheduling stalls.)
	f := startTunnel(t, time.Second)
	for range 30 {
		time.Sleep(100 * time.Millisecond)
		if _, err := f.client.Write([]byte{'x'}); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		f.server.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.ReadFull(f.server, b); err != nil {
			t.Fatalf("trickling tunnel cut: %v", err)
		}
	}
	select {
	case <-f.done:
		t.Fatal("trickling tunnel ended")
	default:
	}
}

// countPipes counts this process's pipe descriptors.
func countPipes(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "pipe:") {
			n++
		}
	}
	return n
}

func TestIdleTunnelsHoldNoPipes(t *testing.T) {
	before := countPipes(t)
	const n = 20
	for range n {
		f := startTunnel(t, time.Minute)
		f.client.Write([]byte("hello"))
		b := make([]byte, 5)
		if _, err := io.ReadFull(f.server, b); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond)
	if grew := countPipes(t) - before; grew >= n {
		t.Fatalf("%d idle tunnels: %d more pipe descriptors, want none held while idle", n, grew)
	}
}

func TestConnectEarlyBytesAndAudit(t *testing.T) {
	// A client that sends its first bytes with the CONNECT head: on the
	// fast path they are in its head buffer, through net/http in its
	// buffer at Hijack. The tunnel's inspection reads them first and the
	// rest of the request head after them; the whole head reaches the
	// server first, then the tunnel carries on after the handler returned,
	// and its closing audit line (written by the tunnel's goroutine)
	// counts every byte.
	echo := echoServer(t, "127.0.0.1:0")
	pol := fmt.Sprintf("proxy: {deny_private: false}\nrules:\n  - name: open\n    to: [open.test]\n    ports: [%d]\n", echo.Port())
	for _, ps := range []paths{{}, {slow: true}} {
		h := startExplicit(t, pol, mapResolver{"open.test": addrs("127.0.0.1")}, ps)
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		head := firstRequest(t, fmt.Sprintf("open.test:%d", echo.Port()))
		early, late := head[:20], head[20:]
		fmt.Fprintf(c, "CONNECT open.test:%d HTTP/1.1\r\nHost: open.test:%d\r\n\r\n%s", echo.Port(), echo.Port(), early)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("CONNECT: got %v, %v; want 200", resp, err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, late)
		got := make([]byte, len(head))
		if _, err := io.ReadFull(br, got); err != nil || string(got) != head {
			t.Fatalf("slow %v: echo of the early and later bytes: got %q, %v; want %q", ps.slow, got, err, head)
		}
		io.WriteString(c, "more")
		if _, err := io.ReadFull(br, got[:4]); err != nil || string(got[:4]) != "more" {
			t.Fatalf("slow %v: echo after the first bytes: got %q, %v; want more", ps.slow, got[:4], err)
		}
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, br)
		n := float64(len(head) + 4)
		checkAudit(t, h.auditOf(t, c), map[string]any{"action": "allow", "sni": "open.test", "bytes_up": n, "bytes_down": n, "ended": "eof"})
	}
}
